"""How long a gated RMT's memory keeps what it holds: the write gate g (mem <- mem + g * (write - mem)) on
segments of pure haystack against segments that hold a fact, and per memory entry (slot, dim) the half-life
in segments of the identity path, log(0.5) / mean log(1 - g) over haystack segments. A fact that must cross
~7,800 segments (1M tokens at 128-token segments) survives through that path only where the half-life is in
the thousands; otherwise it must be re-encoded by every write.

    python benchmarks/gate_retention.py --checkpoints checkpoints/rmt-qa1 runs/rmt-qa1
        # -> benchmarks/results/gate_retention.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import qa1_task, write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.stream import stream  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def gate_stats(model, task, length: int, n: int) -> dict:
    if getattr(model, "gate", None) is None:
        raise SystemExit("gate_retention: this checkpoint has no write gate (mem_gate: false); nothing to measure")
    gates, writes = [], []
    hooks = [model.gate.register_forward_hook(lambda _m, _i, out: gates.append(torch.sigmoid(out)))]
    if getattr(model, "skip", None) is not None:  # write_skip: an entry with u = 0 is kept exactly (g counts as 0)
        hooks.append(model.skip.register_forward_hook(lambda _m, _i, out: writes.append((out > 0).float())))
    samples = [task.sample(length, 10_000 + i) for i in range(n)]
    try:
        res = stream(model, np.stack([s.tokens for s in samples]), [length - 1])
    finally:
        for h in hooks:
            h.remove()
    g = torch.stack(gates, 1)  # [B, segments, M, D]
    u = torch.stack(writes, 1) if writes else torch.ones_like(g[..., :1])  # [B, segments, M, 1]: entry written
    g = g * u
    seg = model.config.segment_len
    fact = torch.zeros(g.shape[:2], dtype=torch.bool)
    for b, s in enumerate(samples):
        for a, e in s.fact_spans:
            fact[b, a // seg : (e - 1) // seg + 1] = True
    hay = g[~fact]  # [N, M, D]
    per_entry = torch.log1p(-hay.clamp(max=1 - 1e-7)).mean(0)  # mean log retention per segment, [M, D]
    half = (np.log(0.5) / per_entry.clamp(max=-1e-12)).flatten().numpy()  # ~7e11: never rewritten on haystack
    ok = [p == s.answer for p, s in zip(res.logits[:, 0].argmax(-1).tolist(), samples)]
    return {"length": length, "samples": n, "accuracy": round(float(np.mean(ok)), 3),
            "gate_mean_haystack_segments": round(float(hay.mean()), 4),
            "gate_mean_fact_segments": round(float(g[fact].mean()), 4),
            "half_life_segments_quantiles": {f"q{q}": round(float(v), 1) for q, v in
                                             zip((10, 50, 90, 99, 100), np.percentile(half, [10, 50, 90, 99, 100]))},
            "entries_with_half_life_over_1000_segments": int((half > 1000).sum()), "entries": int(half.size),
            "write_fraction_haystack_segments": round(float(u[~fact].mean()), 4),  # 1.0 without write_skip
            "write_fraction_fact_segments": round(float(u[fact].mean()), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", default=[str(ROOT / "checkpoints" / "rmt-qa1")])
    p.add_argument("--lengths", default="16384,65536")
    p.add_argument("--samples", type=int, default=8, help="samples per length (one batch)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for ck in a.checkpoints:
        model, tok, _ = load_checkpoint(ck)
        model.eval()
        task = qa1_task(tok)
        for L in [int(v) for v in a.lengths.split(",")]:
            row = {"checkpoint": Path(ck).name, **gate_stats(model, task, L, a.samples)}
            rows.append(row)
            print(row, flush=True)
    print(write_result("gate_retention", {"rows": rows}))


if __name__ == "__main__":
    main()
