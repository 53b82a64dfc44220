"""Accuracy against consolidation passes: a sleep checkpoint evaluated with N = 0, 1, 2, 4, 8 passes per chunk
(its window fixed by its segment length), on BABILong tasks or RULER / FLenQA variants at fixed lengths, with 95%
intervals and the FLOPs each point spends on prediction and on consolidation per sample.

    python benchmarks/sleep_curve.py runs/sleep-qa2 --tasks 2,3 --lengths 1k,2k --samples 100
        # -> benchmarks/results/sleep_curve.json (cells also in benchmarks/results/sleep_curve.sqlite)
    python benchmarks/sleep_curve.py runs/sleep-vt --task ruler:vt,vt_2chains --lengths 1k,4k --samples 100
        # variable tracking (RULER), exact match of the whole answer, in the checkpoint's own tokens
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, check_name, write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.cli import _books_default  # noqa: E402
from memlab.evaluate import EvalSpec, evaluate_checkpoint, model_name, with_passes  # noqa: E402
from memlab.store import ResultStore  # noqa: E402
from memlab.tasks.babilong import parse_lengths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--passes", default="0,1,2,4,8")
    p.add_argument("--tasks", default="2,3", help="bAbI task numbers")
    p.add_argument("--task", help="text tasks instead of bAbI: ruler:VARIANT[,VARIANT] or flenqa:VARIANT[,...]")
    p.add_argument("--lengths", default="1k,2k")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--babi-dir", default=str(ROOT.parent / "shared" / "data" / "babi"))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="sleep_curve", help="result name under benchmarks/results/")
    p.add_argument("--store", default=str(ROOT / "benchmarks" / "results" / "sleep_curve.sqlite"))
    a = p.parse_args(argv)
    check_name(a.out)
    model, tok, _ = load_checkpoint(a.checkpoint)
    if model.config.kind != "sleep":
        raise SystemExit(f"{a.checkpoint} is a {model.config.kind!r} checkpoint; this benchmark needs a 'sleep' one")
    model.to(a.device)
    base = model_name(a.checkpoint)
    passes = [int(x) for x in a.passes.split(",")]
    if any(n < 0 for n in passes):
        raise SystemExit(f"--passes must be >= 0 (0 = no consolidation), got {a.passes}")
    if a.task:
        family, sep, rest = a.task.partition(":")
        if family.strip().lower() not in ("ruler", "flenqa") or not rest.strip():
            raise SystemExit(f"--task takes ruler:VARIANT[,...] or flenqa:VARIANT[,...] (bAbI: --tasks 2,3), got {a.task!r}")
        from memlab.evaluate import evaluate_token_text
        from memlab.tasks.text import load_haystack

        books = _books_default()
        sentences = load_haystack(books).sentences() if books else None
        variants = [f"{family.strip().lower()}-{v.strip()}" for v in rest.split(",") if v.strip()]
        lengths = parse_lengths(a.lengths)

        def run(name, store):
            evaluate_token_text(name, model, tok, variants, lengths, a.samples, 0, store, sentences)
    else:
        spec = EvalSpec([int(t) for t in a.tasks.split(",")], parse_lengths(a.lengths), a.samples, a.batch_size, 0,
                        _books_default() or None, a.babi_dir if Path(a.babi_dir).is_dir() else None)

        def run(name, store):
            evaluate_checkpoint(name, model, tok, spec, store)
    rows = []
    with ResultStore(a.store) as store:
        for n in passes:
            run(with_passes(base, model, n), store)
        for c in store.cells():
            if c.model.startswith(base + "@N="):
                rows.append({"passes": int(c.model.split("=")[-1]), "task": c.task, "length": c.length, "samples": c.samples,
                             "accuracy": c.accuracy, "ci_low": c.ci_low, "ci_high": c.ci_high, **(c.extra or {})})
    rows.sort(key=lambda r: (r["task"], r["length"], r["passes"]))
    for r in rows:
        print(r)
    print(write_result(a.out, {"checkpoint": a.checkpoint, "window": model.config.segment_len, "rows": rows}))
    plot(rows, RESULTS / f"{a.out}.png", f"{base} (window {model.config.segment_len} tokens)")
    print(RESULTS / f"{a.out}.png")


def plot(rows, path, title):
    """Accuracy (95% interval) against N, one line per task and length; the top axis gives the consolidation
    FLOPs per sample of the first line's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines = {}
    for r in rows:
        lines.setdefault((r["task"], r["length"]), []).append(r)
    for (task, length), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["passes"])
        x = [r["passes"] for r in rs]
        y = [r["accuracy"] for r in rs]
        err = [[max(0.0, v - r["ci_low"]) for v, r in zip(y, rs)], [max(0.0, r["ci_high"] - v) for v, r in zip(y, rs)]]  # rounding
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{task.split(':')[-1]} @ {length:,}")
    ax.set_xlabel("consolidation passes N per chunk")
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_ylim(0, 1.02)
    first = sorted(next(iter(sorted(lines.items())))[1], key=lambda r: r["passes"]) if lines else []
    if first and first[0].get("flops_sleep_per_sample") is not None:
        top = ax.secondary_xaxis("top")
        top.set_xticks([r["passes"] for r in first], [f"{r['flops_sleep_per_sample']:.2g}" for r in first], fontsize=7)
        top.set_xlabel("consolidation FLOPs per sample (first line)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
