"""What makes the RMT lose a fact at long lengths: the distance from the last supporting fact to the question,
or bAbI names ("Mary", "John", places) in the haystack between them? Accuracy split both ways, on the book
haystack and on the procedural one (which has fewer such words).

    python benchmarks/forgetting.py            # -> benchmarks/results/forgetting.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.stream import stream  # noqa: E402
from memlab.tasks.babi import read_babi_dir  # noqa: E402
from memlab.tasks.babilong import BabilongTask  # noqa: E402
from memlab.tasks.text import TokenizedHaystack, load_haystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NAMES = "mary john daniel sandra".split()


def split(ok: np.ndarray, mask: np.ndarray) -> dict:
    return {"samples": int(mask.sum()), "accuracy": round(float(ok[mask].mean()), 3) if mask.any() else None}


def haystack_names(s, names) -> int:
    """bAbI names in the haystack text (not in the story's own facts) between the last supporting fact and
    the question."""
    hay = np.ones(len(s.tokens), dtype=bool)
    for a, b in s.fact_spans:
        hay[a:b] = False
    lo, hi = s.meta["supporting_spans"][-1][1], s.question_span[0]
    return int((np.isin(s.tokens[lo:hi], names) & hay[lo:hi]).sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "rmt-qa1"))
    p.add_argument("--lengths", default="16384,65536")
    p.add_argument("--samples", default="64,32", help="samples per length (one number per length)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lengths, counts = [int(v) for v in a.lengths.split(",")], [int(v) for v in a.samples.split(",")]
    if len(lengths) != len(counts):
        p.error(f"--samples needs one number per length ({len(lengths)}), got {a.samples}")
    model, tok, _ = load_checkpoint(a.checkpoint)
    model.eval()
    names = [tok.token_id(w) for w in NAMES]
    books = sorted(str(f) for f in (DATA / "books").glob("*.txt"))
    rows = []
    for hay_name, source in (("books", books), ("procedural", None)):
        task = BabilongTask(1, read_babi_dir(DATA / "babi", 1), tok, TokenizedHaystack(tok, load_haystack(source)))
        for L, n in zip(lengths, counts):
            S = [task.sample(L, 10_000 + i) for i in range(n)]
            preds = []
            for b in range(0, n, a.batch_size):
                chunk = S[b : b + a.batch_size]
                res = stream(model, np.stack([s.tokens for s in chunk]), [L - 1])
                preds += res.logits[:, 0].argmax(-1).tolist()
            ok = np.array([p == s.answer for p, s in zip(preds, S)])
            dist = np.array([s.question_span[0] - s.meta["supporting_spans"][-1][1] for s in S])
            in_between = np.array([haystack_names(s, names) for s in S])
            row = {"haystack": hay_name, "length": L, "samples": n, "accuracy": round(float(ok.mean()), 3),
                   "median_distance": int(np.median(dist)),
                   "nearer_half": split(ok, dist <= np.median(dist)), "farther_half": split(ok, dist > np.median(dist)),
                   "no_name_between": split(ok, in_between == 0), "some_name_between": split(ok, in_between > 0),
                   "names_per_1k_tokens": round(float(in_between.sum() / max(dist.sum(), 1) * 1000), 3)}
            rows.append(row)
            print(row, flush=True)
    print(write_result("forgetting", {"checkpoint": Path(a.checkpoint).name, "rows": rows}))


if __name__ == "__main__":
    main()
