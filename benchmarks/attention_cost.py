"""Full attention's cost curve to its limit, beside RMT: time per token and state bytes against length, measured
at batch 1 with the shipped checkpoints; where `memlab eval`'s preflight stops attention; and attention's time
and KV-cache memory projected to 1M and 11M tokens from a fit of the measured points.

Time per token of a causal pass over L tokens grows like a + b * L (the blocks' matmuls are per token, the
attention scores grow with the context), so total time is quadratic. The fit uses the measured points of the
longer half; its projection is a lower bound (at 1M tokens the KV cache alone, 3 GB per layer-set here, leaves
the caches the small points ran in). KV bytes are exact: 2 (k, v) x layers x L x d_model x 4 bytes.

    python benchmarks/attention_cost.py          # -> benchmarks/results/attention_cost.json, .png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402
from streaming import measure  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.evaluate import BudgetError, estimate_cost, mem_available_bytes, preflight  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def preflight_limit(model, batch: int, samples: int, budget: float) -> dict:
    """The shortest length (powers of two from 1k) that the preflight refuses, with its reason."""
    L = 1024
    while L < 2**40:
        try:
            preflight(model, L, batch, budget, samples)
        except BudgetError as e:
            return {"batch": batch, "samples": samples, "time_budget_s": budget, "refused_from_length": L,
                    "last_admitted_length": L // 2, "reason": str(e)}
        L *= 2
    return {"batch": batch, "samples": samples, "time_budget_s": budget, "refused_from_length": None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transformer", default=str(ROOT / "checkpoints" / "transformer-qa1"))
    p.add_argument("--rmt", default=str(ROOT / "checkpoints" / "rmt-qa1"))
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    lengths = [int(x) for x in a.lengths.split(",")]
    tf, tok, _ = load_checkpoint(a.transformer)
    rmt, rtok, _ = load_checkpoint(a.rmt)
    tf.eval(), rmt.eval()
    rows = {"transformer": [], "rmt": []}
    for L in lengths:
        for name, model, vocab in (("transformer", tf, len(tok)), ("rmt", rmt, len(rtok))):
            r = measure(model, L, 1, vocab)
            rows[name].append(r)
            print(name, r, flush=True)
    # fit seconds per token = a + b * L on the longer half of attention's points
    pts = rows["transformer"][len(lengths) // 2 - 1 :]
    Ls = np.array([r["length"] for r in pts], dtype=float)
    spt = np.array([r["seconds_per_token"] for r in pts])
    b, a0 = np.polyfit(Ls, spt, 1)
    c = tf.config
    projections = {}
    for L in (1_000_000, 11_000_000):
        est = estimate_cost(tf, L, 1)
        projections[str(L)] = {"seconds": round(L * (a0 + b * L)), "hours": round(L * (a0 + b * L) / 3600, 1),
                               "kv_bytes": 2 * c.n_layers * L * c.d_model * 4, "estimate_kv_bytes": est["state_bytes"],
                               "rmt_state_bytes": rows["rmt"][-1]["state_bytes_per_sample"],
                               "rmt_seconds_at_measured_rate": round(L * rows["rmt"][-1]["seconds_per_token"], 1)}
    limits = {"eval_defaults": preflight_limit(tf, 8, 100, 900.0),  # memlab eval: 100 samples, batch 8, 900 s per cell
              "one_sample": preflight_limit(tf, 1, 1, 900.0)}
    for k, v in limits.items():
        print("preflight", k, v, flush=True)
    for k, v in projections.items():
        print("projection", k, v, flush=True)
    fit = {"seconds_per_token": f"{a0:.3g} + {b:.3g} * L", "a": a0, "b": b, "points": [int(x) for x in Ls]}
    png = plot(rows, projections, limits, fit)
    print(write_result("attention_cost", {"rows": rows, "fit": fit, "projections": projections, "preflight": limits,
                                          "mem_available_bytes": mem_available_bytes(), "plot": png.name,
                                          "transformer_config": vars(tf.config), "rmt_config": vars(rmt.config)}))


def plot(rows, projections, limits, fit) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    far = np.geomspace(1024, 11_000_000, 60)
    for name, style in (("transformer", "o-"), ("rmt", "s-")):
        L = [r["length"] for r in rows[name]]
        ax1.plot(L, [r["seconds_per_token"] * 1e6 for r in rows[name]], style, label=f"{name} (measured)")
        ax2.plot(L, [r["state_bytes_per_sample"] for r in rows[name]], style, label=f"{name} (measured)")
    ax1.plot(far, (fit["a"] + fit["b"] * far) * 1e6, "--", color="C0", alpha=0.6, label="attention, fitted")
    ax1.axhline(rows["rmt"][-1]["seconds_per_token"] * 1e6, ls="--", color="C1", alpha=0.6, label="RMT, flat")
    ax2.plot(far, [2 * 3 * x * 128 * 4 for x in far], "--", color="C0", alpha=0.6, label="KV cache, exact formula")
    ax2.axhline(rows["rmt"][-1]["state_bytes_per_sample"], ls="--", color="C1", alpha=0.6)
    stop = limits["eval_defaults"]["refused_from_length"]
    for ax in (ax1, ax2):
        if stop:
            ax.axvline(stop, color="red", lw=1, label=f"preflight refuses (eval defaults) from {stop:,}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.grid(alpha=0.3, which="both")
    ax1.set_ylabel("microseconds per token (batch 1)")
    ax2.set_ylabel("state bytes per sample")
    ax1.set_title("time per token")
    ax2.set_title("state size")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / "attention_cost.png"
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    main()
