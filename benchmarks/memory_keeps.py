"""What recurrent memory keeps: per-segment state updates at fact segments against haystack-only segments, on
BABILong samples (held-out bAbI questions in book text), for every fixed-state checkpoint given.

    python benchmarks/memory_keeps.py                       # the shipped qa1 checkpoints: RMT, ARMT, Titans, FAM, sleep
    python benchmarks/memory_keeps.py CK1 CK2 --length 16k --samples 20
        # -> benchmarks/results/memory_keeps.json, memory_keeps.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from memlab.analysis.memory_keeps import (fact_noise_ratio, fact_segments, state_updates, token_fact_ratio,  # noqa: E402
                                          token_writes)
from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.evaluate import EvalSpec, task_questions  # noqa: E402
from memlab.tasks.babilong import BabilongTask, parse_length  # noqa: E402
from memlab.tasks.text import TokenizedHaystack, load_haystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHIPPED = ("rmt-qa1", "armt-qa1", "titans-qa1", "fam-qa1", "sleep-qa1")  # every recurrent model's shipped qa1 checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", default=[str(ROOT / "checkpoints" / n) for n in SHIPPED])
    p.add_argument("--task", type=int, default=1)
    p.add_argument("--length", default="16k")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    length = parse_length(a.length)
    books = sorted((DATA / "books").glob("*.txt"))
    if not books:
        raise SystemExit("../shared/data/books not found")
    spec = EvalSpec([a.task], [length], babi_dir=str(DATA / "babi"))
    out, curves = {}, {}
    for ck in a.checkpoints:
        model, tok, _ = load_checkpoint(ck)
        model.eval()
        bt = BabilongTask(a.task, task_questions(spec, a.task), tok, TokenizedHaystack(tok, load_haystack(books)))
        samples = [bt.sample(length, i) for i in range(a.samples)]
        upd, bounds = state_updates(model, np.stack([s.tokens for s in samples]))
        masks = [fact_segments(bounds, s.fact_spans) for s in samples]
        name = Path(ck).name
        out[name] = {**fact_noise_ratio(upd, masks), "kind": model.config.kind, "segments": len(bounds)}
        curves[name] = (upd[0], masks[0])
        if model.config.kind in ("titans", "sleep", "armt"):  # inside the write: the models' own internals
            inner = token_writes(model, np.stack([s.tokens for s in samples]))
            for key, vals in inner.items():
                if key == "bounds":
                    continue
                if model.config.kind == "armt":  # per segment: the write gate at fact segments against haystack
                    out[name][f"write_gate_{key}"] = fact_noise_ratio(vals, masks)
                else:
                    out[name][f"per_token_{key}"] = token_fact_ratio(vals, [s.fact_spans for s in samples],
                                                                     [s.question_span[0] for s in samples])
        print(name, out[name], flush=True)
        write_result("memory_keeps.partial", {"models": out, "complete": False})  # kept if a later model is cut short
    plot(curves, RESULTS / "memory_keeps.png", length)
    print(write_result("memory_keeps", {"task": f"babilong:qa{a.task}", "length": length, "samples": a.samples,
                                        "measure": "||s_t - s_(t-1)|| / ||s_(t-1)|| per segment; question segment left out",
                                        "inner_measures": "per_token_surprise / per_token_write (Titans: ||grad|| and "
                                                          "theta * ||grad|| per token), per_token_write (sleep: beta * "
                                                          "||v - S k|| per token), write_gate_gate (ARMT: mean write "
                                                          "gate per segment); fact over haystack",
                                        "models": out}))
    (RESULTS / "memory_keeps.partial.json").unlink(missing_ok=True)  # the complete result replaces it


def plot(curves, path, length):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 2.6 * len(curves)), squeeze=False)
    for ax, (name, (u, m)) in zip(axes[:, 0], curves.items()):
        ax.plot(u, lw=0.8, color="grey", label="state update")
        idx = np.flatnonzero(m)
        ax.scatter(idx, u[idx], color="crimson", zorder=3, s=18, label="segment with a fact")
        ax.set_yscale("log")
        ax.set_title(f"{name}: state update per segment, one qa1 sample of {length} tokens")
        ax.set_xlabel("segment")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
