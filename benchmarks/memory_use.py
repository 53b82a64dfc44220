"""Does the RMT use its memory? Accuracy split by where the supporting fact lies (in the question's segment or
earlier), with the memory carried as trained and with the memory reset at every segment.

    python benchmarks/memory_use.py            # -> benchmarks/results/memory_use.json
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
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.stream import segment_bounds  # noqa: E402
from memlab.tasks.babi import read_babi_dir  # noqa: E402
from memlab.tasks.babilong import BabilongTask  # noqa: E402
from memlab.tasks.text import TokenizedHaystack, load_haystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@torch.inference_mode()
def predict(model, x: torch.Tensor, reset: bool) -> torch.Tensor:
    B, L = x.shape
    state = model.init_state(B)
    for a, b in segment_bounds(L, model.config.segment_len):
        out = model(x[:, a:b], model.init_state(B) if reset else state, return_logits=False)
        state = out.state
    return model.logits(out.hidden[:, -1]).argmax(-1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "rmt-qa1"))
    p.add_argument("--lengths", default="1024,4096")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--name", default="memory_use", help="result file name under benchmarks/results/")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok, _ = load_checkpoint(a.checkpoint)
    model.eval()
    hay = TokenizedHaystack(tok, load_haystack(sorted(str(f) for f in (DATA / "books").glob("*.txt"))))
    task = BabilongTask(1, read_babi_dir(DATA / "babi", 1), tok, hay)
    rows = []
    for L in (int(v) for v in a.lengths.split(",")):
        S = [task.sample(L, i) for i in range(a.samples)]
        x = torch.from_numpy(np.stack([s.tokens for s in S]))
        ans = torch.tensor([s.answer for s in S])
        seg_start = segment_bounds(L, model.config.segment_len)[-1][0]
        in_last = torch.tensor([s.fact_spans[s.meta["supporting"][0]][0] >= seg_start for s in S])
        for reset in (False, True):
            ok = predict(model, x, reset) == ans
            for where, m in (("question segment", in_last), ("earlier segment", ~in_last)):
                c, n = int(ok[m].sum()), int(m.sum())
                lo, hi = wilson_interval(c, n)
                row = {"length": L, "memory": "reset every segment" if reset else "carried", "fact": where,
                       "samples": n, "accuracy": round(c / max(n, 1), 3), "ci": [round(lo, 3), round(hi, 3)]}
                rows.append(row)
                print(row, flush=True)
    print(write_result(a.name, {"checkpoint": Path(a.checkpoint).name, "rows": rows}))


if __name__ == "__main__":
    main()
