"""Every model on another device (a CUDA GPU): one training step, and a streamed sample whose logits match the
CPU's. Exits non-zero on the first model that fails, so a GPU session can stop before spending its time.
With --compile, the fixed-state models also stream through torch.compile on the device (inductor's kernels for
that device, compiled on first use), checked against the CPU's eager logits the same way.

    python benchmarks/device_check.py --device cuda [--compile]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from memlab.models.registry import build_model, make_config
from memlab.stream import _COMPILED, stream, unroll

MODELS = {  # small configurations of every kind trained on the device
    "rmt": {"num_mem": 4, "segment_len": 32, "conv": 4, "recency": True, "mem_gate": True},
    "armt": {"num_mem": 4, "segment_len": 32, "num_sink": 2},
    "titans": {"variant": "mac", "segment_len": 32, "chunk": 16, "attn_conv": 4, "recency": True},
    "titans-mag": {"variant": "mag", "segment_len": 32, "chunk": 16, "window": 32},
    "fam": {"block": 16, "segment_len": 32, "num_fam": 4, "conv": 4, "recency": True},
    "sleep": {"segment_len": 32, "sleep_passes": 2, "train_passes": [1, 2], "conv": 4, "recency": True},
    "transformer": {"window": 64},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="also stream the fixed-state models compiled on the device")
    p.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead"],
                   help="with --compile: torch.compile's mode (reduce-overhead records CUDA graphs)")
    p.add_argument("--models", default="", help="comma-separated names of MODELS to check (default: all)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 200, (4, 150), generator=g)
    y = torch.full_like(x, -100)
    y[:, -1] = x[:, 0]
    wanted = [m for m in a.models.split(",") if m]
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        p.error(f"unknown --models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name, args in MODELS.items():
        if wanted and name not in wanted:
            continue
        t0 = time.time()
        kind = name.split("-")[0]
        torch.manual_seed(0)
        cpu = build_model(make_config(kind, vocab_size=256, d_model=64, n_layers=2, n_heads=4, **args)).eval()
        model = copy.deepcopy(cpu).to(dev)
        model.train()
        loss, _, _ = unroll(model, x, y)  # (before streaming: inference-mode caches cannot enter autograd)
        loss.backward()
        model.eval()
        want = stream(cpu, x, [100, 149]).logits
        got = stream(model, x, [100, 149]).logits.cpu()
        err = (want - got).abs().max().item()
        how = ""
        if a.compile and getattr(model, "fixed_state", False):
            got_c = stream(model, x, [100, 149], compile=True, compile_mode=a.compile_mode).logits.cpu()
            err = max(err, (want - got_c).abs().max().item())
            # stream() falls back to eager (with a warning) where inductor fails: say so, it is not a compiled result
            how = " (eager, compiled)" if _COMPILED.get(model, {}).get(a.compile_mode) is not model else " (eager; compile FAILED, ran eager)"
        grads = [q.grad for q in model.parameters() if q.grad is not None]
        ok = err < 1e-3 and torch.isfinite(loss) and grads and all(gr.device.type == dev.type for gr in grads)
        print(f"{name:12s} stream max |cpu - {dev}{how}| = {err:.2e}  loss {loss.item():.3f}  {len(grads)} grads  "
              f"{time.time() - t0:.1f}s  {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
