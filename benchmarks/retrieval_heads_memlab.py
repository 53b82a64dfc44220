"""Retrieval heads (Wu et al., arXiv:2404.15574) in memlab's own attention model: the shipped transformer-qa1
(3 layers x 4 heads) answering BABILong qa1 in book text. The answer is one word copied from the supporting fact
(the needle), so a trial has one decoding step: a head hits when its top attention at the answer position lands
on a supporting-fact token equal to the predicted word; its score is its hit rate over the trials answered right.
Then accuracy with the top-K heads made uniform (not zeroed) against K random other heads, and how many wrong
answers are still a place (a fluent answer of the task) rather than another word.

    python benchmarks/retrieval_heads_memlab.py     # -> benchmarks/results/retrieval_heads_memlab.json, .png
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402
from retrieval_heads import heatmap  # noqa: E402

from memlab.analysis.retrieval_heads import answer_with_heads, memlab_heads, retrieval_heads, retrieval_scores  # noqa: E402
from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.evaluate import sample_seed  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.tasks.babi import read_babi_dir  # noqa: E402
from memlab.tasks.babilong import BabilongTask  # noqa: E402
from memlab.tasks.text import TokenizedHaystack, load_haystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "transformer-qa1"))
    p.add_argument("--length", type=int, default=1000, help="tokens per sample (one segment: the model's 1,024)")
    p.add_argument("--samples", type=int, default=200, help="scoring trials; masking uses as many other samples")
    p.add_argument("--ks", default="1,2,3")
    p.add_argument("--random-draws", type=int, default=3, help="random head sets per K")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, _ = load_checkpoint(a.checkpoint)
    model.eval()
    questions = read_babi_dir(str(DATA / "babi"), 1)
    task = BabilongTask(1, questions, tok, TokenizedHaystack(tok, load_haystack(sorted(str(p) for p in (DATA / "books").glob("*.txt")))))
    places = {tok.token_id(q.answer) for q in questions}

    def needle(s):
        return {j for i in s.meta["supporting"] for j in range(*s.fact_spans[i])}

    L, H = model.config.n_layers, model.config.n_heads
    scored = []
    with memlab_heads(model) as ctl:
        for i in range(a.samples):
            s = task.sample(a.length, sample_seed(0, i))
            pred, h = answer_with_heads(model, ctl, s.tokens, needle(s))
            scored.append((h, 1, pred == s.answer))  # one answer word: one token copied
        right = sum(ok for _, _, ok in scored)
        scores = retrieval_scores(scored)
        order = np.argsort(-scores, axis=None)
        trials = [task.sample(a.length, sample_seed(1, i)) for i in range(a.samples)]

        def accuracy(masked: dict) -> dict:
            ctl.masked = masked
            preds = [answer_with_heads(model, ctl, s.tokens, needle(s))[0] for s in trials]
            ctl.masked = {}
            ok = sum(p == s.answer for p, s in zip(preds, trials))
            wrong_place = sum(p != s.answer and p in places for p, s in zip(preds, trials))
            lo, hi = wilson_interval(ok, len(trials))
            return {"accuracy": ok / len(trials), "ci": [round(lo, 3), round(hi, 3)],
                    "wrong_but_a_place": wrong_place, "wrong": len(trials) - ok}

        def as_dict(flat):
            out = {}
            for f in flat:
                out.setdefault(int(f // H), []).append(int(f % H))
            return out

        masking = {"none": accuracy({})}
        rng = random.Random(0)
        for k in (int(x) for x in a.ks.split(",")):
            top = [int(f) for f in order[:k]]
            masking[f"top{k}"] = {"heads": [[f // H, f % H] for f in top], **accuracy(as_dict(top))}
            rest = [int(f) for f in order[k:]]
            draws = [accuracy(as_dict(rng.sample(rest, k))) for _ in range(a.random_draws)]
            masking[f"random{k}"] = {"draws": draws, "accuracy_mean": round(float(np.mean([d["accuracy"] for d in draws])), 4)}
            print(k, masking[f"top{k}"]["accuracy"], masking[f"random{k}"]["accuracy_mean"], flush=True)
    heatmap(scores, RESULTS / "retrieval_heads_memlab.png", Path(a.checkpoint).name)
    print(write_result("retrieval_heads_memlab", {
        "checkpoint": Path(a.checkpoint).name, "layers": L, "heads": H, "length": a.length, "scoring_trials": a.samples,
        "scoring_trials_right": right, "threshold": 0.1, "heads_above_threshold": len(retrieval_heads(scores)),
        "share_above": len(retrieval_heads(scores)) / (L * H), "scores": np.round(scores, 4).tolist(),
        "top_heads": [[int(f // H), int(f % H), round(float(scores.flat[f]), 4)] for f in order],
        "masking": masking, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
