"""How much of this machine the recurrent models' streaming uses: achieved GFLOP/s against the measured fp32 matmul
peak. FLOPs are counted, not estimated: torch's FlopCounterMode on one segment's forward (matmuls and attention),
times the segments streamed. The peak is the best of square fp32 matmuls of 512-4096 on the same threads, measured
before and after the models (the better reading counts).

Models: the shipped qa1 checkpoints (rmt-qa1, armt-qa1, titans-qa1, fam-qa1, sleep-qa1). Every fixed-state model
is timed eagerly and through torch.compile (`stream(..., compile=True)`).

    python benchmarks/utilisation.py            # -> benchmarks/results/utilisation.json
    python benchmarks/utilisation.py --batches 16,32 --models titans,fam --out utilisation_large_batch
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.stream import stream  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_gflops(threads: int) -> dict:
    out = {}
    for n in (512, 1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            a @ b
            k += 1
        out[n] = 2 * n**3 * k / (time.perf_counter() - t0) / 1e9
    return {"by_size": {str(k): round(v, 1) for k, v in out.items()}, "peak": round(max(out.values()), 1), "threads": threads}


@torch.no_grad()  # (FlopCounterMode's module tracker does not work under inference_mode)
def segment_flops(model, batch: int) -> int:
    seg = model.config.segment_len
    x = torch.randint(3, model.config.vocab_size, (batch, seg))
    state = model.init_state(batch)
    state = model(x, state, return_logits=False).state  # a warm state (second segment: caches present)
    with FlopCounterMode(display=False) as fc:
        model(x, state, return_logits=False)
    return fc.get_total_flops()


def models():
    for name in ("rmt-qa1", "armt-qa1", "titans-qa1", "fam-qa1", "sleep-qa1"):
        m, _, _ = load_checkpoint(ROOT / "checkpoints" / name)
        yield name, m


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=65536, help="tokens streamed per measurement")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="", help="comma-separated substrings of the model names to measure (default: all)")
    p.add_argument("--out", default="utilisation", help="results name: benchmarks/results/OUT.json")
    a = p.parse_args(argv)
    wanted = [w for w in a.models.split(",") if w]
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    peak = peak_gflops(a.threads)
    print("peak", peak, flush=True)
    rows = []
    for name, model in models():
        if wanted and not any(w in name for w in wanted):
            continue
        model.eval()
        seg = model.config.segment_len
        L = a.tokens // seg * seg
        for b in (int(x) for x in a.batches.split(",")):
            flops = segment_flops(model, b) * (L // seg)
            tokens = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(b, L))
            for compile in (False, True) if getattr(model, "fixed_state", False) else (False,):
                stream(model, tokens[:, : 3 * seg], [3 * seg - 1], compile=compile)  # warm-up / compile
                t0 = time.perf_counter()
                stream(model, tokens, [L - 1], compile=compile)
                secs = time.perf_counter() - t0
                g = flops / secs / 1e9
                row = {"model": name, "batch": b, "compiled": compile, "tokens": L, "segment_len": seg,
                       "seconds": round(secs, 2), "tokens_per_s": round(b * L / secs), "flops_per_token": round(flops / (b * L)),
                       "gflops_per_s": round(g, 1), "utilisation": round(g / peak["peak"], 3)}
                rows.append(row)
                print(row, flush=True)
    # the peak again after the models: this VM's speed drifts (one reading of 82 GFLOP/s, with 136-154 around it
    # the same day), and a ratio is only fair against the better of the two readings around it
    after = peak_gflops(a.threads)
    print("peak after", after, flush=True)
    best = max(peak["peak"], after["peak"])
    for row in rows:
        row["utilisation"] = round(row["gflops_per_s"] / best, 3)
    peak = {**peak, "before": peak["peak"], "after": after["peak"], "after_by_size": after["by_size"], "peak": best}
    print(write_result(a.out, {"peak_gflops": peak, "rows": rows,
                                       "counted": "torch.utils.flop_counter.FlopCounterMode on one warm segment"}))


if __name__ == "__main__":
    main()
