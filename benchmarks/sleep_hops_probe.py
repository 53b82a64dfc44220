"""Which hops the sleep passes have composed: one sample's fast weights asked about every variable of its chains.

A RULER vt_value sample (two chains of h hops, assignments shuffled, in the first chunk) is kept as it is, and its
question is rewritten to ask each variable of both chains in turn ("What is the value of VAR x ..."): the variable
whose assignment names the value is 0 hops from it, the one that copies that variable 1 hop, and so on. The text
has the same length and the chains are evicted the same way; only the asked name changes. Accuracy by hop depth
(rows) and passes N (columns) then shows how far along each chain the consolidation has carried the value after N
passes, inside one memory state, rather than across separately trained tasks.

    python benchmarks/sleep_hops_probe.py checkpoints/sleep-vt-hops --hops 4 --lengths 128,512 --passes 0,1,2,3,4,6
        # -> benchmarks/results/sleep_hops_probe.json, .png
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, check_name, write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.stream import unroll  # noqa: E402
from memlab.tasks.babilong import parse_lengths  # noqa: E402
from memlab.tasks.ruler import RulerTask  # noqa: E402
from memlab.tasks.variants import TokenTextTask  # noqa: E402
from memlab.train import pad_batch  # noqa: E402

ASSIGN = re.compile(r"VAR (\w+) = (?:VAR (\w+)|(\w+))\.")


def hop_depths(needles: list[str]) -> dict[str, tuple[int, str]]:
    """variable -> (hops from its chain's value, the value), from the assignments "VAR x = VAR y." / "VAR x = v."."""
    rhs = {}
    for n in needles:
        m = ASSIGN.fullmatch(n.strip())
        if m is None:
            raise ValueError(f"not a vt assignment: {n!r}")
        rhs[m.group(1)] = (m.group(2), m.group(3))

    def resolve(x, seen=()):
        var, value = rhs[x]
        if value is not None:
            return 0, value
        if var in seen:
            raise ValueError(f"cyclic chain at {x}")
        d, v = resolve(var, seen + (x,))
        return d + 1, v

    return {x: resolve(x) for x in rhs}


def probe_items(tokenizer, hops: int, length: int, samples: int):
    """(depth, tokens, targets) for every variable of every held-out sample (seeds 2^31 + i, as evaluation uses)."""
    task = RulerTask("vt", noise="repeat", n_chains=2, n_hops=hops, ask="value", order="shuffled")
    items = []
    for i in range(samples):
        s = task.sample(length, 2**31 + i, depth=0.0)
        body = s.text[: len(s.text) - len(s.question)]
        depths = hop_depths(s.meta["needles"])
        asked_var = re.search(r"VAR (\w+)", s.question).group(1)
        if depths[asked_var] != (hops, s.answers[0]):  # the sample's own question is the deepest variable's
            raise AssertionError(f"seed {2**31 + i}: asked {asked_var} is {depths[asked_var]}, expected ({hops}, {s.answers})")
        for var, (depth, value) in depths.items():
            q = re.sub(r"VAR \w+", f"VAR {var}", s.question, count=1)
            asked = dataclasses.replace(s, text=body + q, question=q, answers=[value])
            ids, targets = TokenTextTask.encode(tokenizer, asked, "vt probe")
            items.append((depth, ids, targets))
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--hops", type=int, default=4, help="hops per chain in the samples")
    p.add_argument("--lengths", default="128")
    p.add_argument("--passes", default="0,1,2,3,4,6")
    p.add_argument("--samples", type=int, default=100, help="samples per length (each asked 2 x (hops + 1) times)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--out", default="sleep_hops_probe")
    a = p.parse_args(argv)
    check_name(a.out)
    passes = [int(x) for x in a.passes.split(",")]
    if any(n < 0 for n in passes):
        raise SystemExit(f"--passes must be >= 0, got {a.passes}")
    model, tok, _ = load_checkpoint(a.checkpoint)
    if model.config.kind != "sleep":
        raise SystemExit(f"{a.checkpoint} is a {model.config.kind!r} checkpoint; this probe needs a 'sleep' one")
    model.eval()
    rows = []
    for length in parse_lengths(a.lengths):
        items = probe_items(tok, a.hops, length, a.samples)
        for n in passes:
            model.config.sleep_passes = n
            for depth in range(a.hops + 1):
                group = [(ids, t) for d, ids, t in items if d == depth]
                right = 0
                for b in range(0, len(group), a.batch_size):
                    x, y = pad_batch(*zip(*group[b : b + a.batch_size]))
                    with torch.no_grad():
                        _, acc, count = unroll(model, x, y, per_sample=True)
                    right += round(float(acc) * count)
                lo, hi = wilson_interval(right, len(group))
                rows.append({"length": length, "passes": n, "depth": depth, "asked": len(group),
                             "accuracy": right / len(group), "ci_low": lo, "ci_high": hi})
                print(rows[-1], flush=True)
    out = write_result(a.out, {"checkpoint": a.checkpoint, "hops": a.hops, "samples": a.samples, "rows": rows})
    print(out)
    plot(rows, RESULTS / f"{a.out}.png", f"{Path(a.checkpoint).name}: chains of {a.hops} hops")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.8), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        rs = [r for r in rows if r["length"] == L]
        ns, ds = sorted({r["passes"] for r in rs}), sorted({r["depth"] for r in rs})
        grid = [[next(r["accuracy"] for r in rs if r["passes"] == n and r["depth"] == d) for n in ns] for d in ds]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for i, d in enumerate(ds):
            for j, n in enumerate(ns):
                ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i][j] < 0.6 else "black")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_yticks(range(len(ds)), [str(d) for d in ds])
        ax.set_xlabel("consolidation passes N")
        ax.set_ylabel("hops from the value")
        ax.set_title(f"{L:,} tokens", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
