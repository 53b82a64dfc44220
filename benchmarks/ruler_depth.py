"""Needle in a haystack, the classic sweep: accuracy of memlab checkpoints trained on a RULER single-needle variant,
by context length and needle depth (the fraction of the context before the needle; 1.0 puts it just before the
question), on held-out samples (seeds training never draws). A recurrent memory that forgets shows as a fall at
small depths of long contexts; attention that does not carry past its training length shows as a fall across a
whole row.

    python benchmarks/ruler_depth.py --checkpoints runs/rmt-ruler-niah runs/rmt-ruler-niah-long \
        --lengths 4096,16384,65536 --depths 0,0.25,0.5,0.75,1 --samples 20
    # -> benchmarks/results/ruler_depth.json and .png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, books, check_name, write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.stream import unroll  # noqa: E402
from memlab.tasks.text import load_haystack  # noqa: E402
from memlab.tasks.variants import TokenTextTask  # noqa: E402
from memlab.train import pad_batch  # noqa: E402

HELDOUT = 2**31  # TokenTextTask's held-out seed base, as memlab train's held-out checks use


@torch.no_grad()
def cell(model, task, length: int, depth: float, samples: int, batch: int, compile: bool) -> dict:
    task.kw["depth"] = depth
    right = 0
    for b in range(0, samples, batch):
        x, y = pad_batch(*zip(*(task.tokens(length, s) for s in range(b, min(b + batch, samples)))))
        _, acc, cnt = unroll(model, x, y, compile=compile)
        right += round(float(acc) * cnt)
    lo, hi = wilson_interval(right, samples)
    return {"length": length, "depth": depth, "samples": samples, "right": right, "accuracy": right / samples,
            "ci_low": round(lo, 3), "ci_high": round(hi, 3)}


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # object API: no global backend state

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(4.2 * len(names) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for k, (ax, name) in enumerate(zip(axes, names)):
        mine = [r for r in rows if r["model"] == name]
        lengths = sorted({r["length"] for r in mine})
        depths = sorted({r["depth"] for r in mine})
        grid = [[next((r["accuracy"] for r in mine if r["length"] == L and r["depth"] == d), float("nan"))
                 for d in depths] for L in lengths]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)), [f"{L:,}" for L in lengths])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("needle depth (0 = first, 1 = last)")
        if k == 0:
            ax.set_ylabel("context length (tokens)")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="accuracy")
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", help="memlab checkpoints trained on the variant")
    p.add_argument("--variant", default="niah_single_2", help="a RULER single-needle variant (configs/tasks/ruler.yaml)")
    p.add_argument("--lengths", default="4096,16384,65536")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--samples", type=int, default=20, help="held-out samples per (length, depth) cell")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="fixed-state models through torch.compile (~2x faster)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="ruler_depth", help="results name: benchmarks/results/OUT.json and .png")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from the stored OUT.json")
    a = p.parse_args(argv)
    if a.replot:
        stored = RESULTS / f"{check_name(a.out)}.json"
        if not stored.is_file():
            raise SystemExit(f"ruler_depth.py --replot: {stored} does not exist; run the sweep first")
        return plot(json.loads(stored.read_text())["cells"], RESULTS / f"{a.out}.png")
    check_name(a.out)
    if not a.checkpoints:
        raise SystemExit("ruler_depth.py: give --checkpoints CKPT... (or --replot to redraw a stored sweep)")
    torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    if not a.variant.startswith("niah_single"):
        raise SystemExit(f"ruler_depth.py: --variant must be a single-needle variant (niah_single_*), got {a.variant!r}; "
                         "a depth places one needle")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise SystemExit(f"ruler_depth.py: depths are fractions in [0, 1], got {a.depths}")
    sentences = load_haystack(books()).sentences()
    rows = []
    for ck in a.checkpoints:
        model, tok, _ = load_checkpoint(ck)
        model.eval()
        compile = a.compile and getattr(model, "fixed_state", False)
        task = TokenTextTask(f"ruler-{a.variant}", tok, sentences, seed_base=HELDOUT)
        for L in lengths:
            for d in depths:
                t0 = time.perf_counter()
                r = {"model": Path(ck).name, **cell(model, task, L, d, a.samples, a.batch, compile),
                     "seconds": round(time.perf_counter() - t0, 1)}
                print(f"{r['model']} {L} depth {d:g}: {r['right']}/{r['samples']} "
                      f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] {r['seconds']}s", flush=True)
                rows.append(r)
    path = write_result(a.out, {"variant": a.variant, "checkpoints": a.checkpoints, "cells": rows})
    plot(rows, RESULTS / f"{a.out}.png")
    print(f"wrote {path} and {a.out}.png")


if __name__ == "__main__":
    main()
