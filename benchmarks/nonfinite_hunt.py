"""Where does a checkpoint's forward pass stop being finite on one device but not on another?

Titans (MAC) trained on a GPU gave NaN losses and 0.000 held-out accuracy at 256 tokens (two segments) from
step ~410, while the same weights on the CPU scored 0.74 (benchmarks/results/gpu_session2/). This script runs a
checkpoint's held-out batch through the training unroll on the CPU and on `--device`, with a forward hook on
every module, and prints the first module (in call order) whose output is not finite on either device, and
the largest difference between the devices' outputs before it.

    python benchmarks/nonfinite_hunt.py runs/titans-qa1-stage1 --length 256 --batch 32 --device cuda

With `--steps A:B` it instead rebuilds the training batches of steps A..B-1 of the checkpoint's own recipe
(the trainer's seeds: the same samples, lengths and memory_only draws) and runs them on `--device` alone; for
each batch whose loss is not finite it prints the first module with a non-finite output. Steps the trainer
logged as "non-finite gradient, update skipped" can so be looked at on the CPU:

    python benchmarks/nonfinite_hunt.py runs/titans-qa1-cpu --steps 0:500 --device cpu
"""
from __future__ import annotations

import argparse
import copy
import random
import json
import sys
from pathlib import Path

import torch

from memlab.checkpoint import load_checkpoint
from memlab.stream import unroll
from memlab.train import TaskData, TrainConfig, evaluate_heldout, length_for


def traced(model, x, y):
    """(loss, [(module name, output tensor or None)] in call order) for one unroll, no gradients."""
    calls, hooks = [], []
    for name, mod in model.named_modules():
        def hook(_m, _inp, out, name=name):
            t = out[0] if isinstance(out, tuple) else out
            calls.append((name, t.detach().float().cpu() if isinstance(t, torch.Tensor) else None))
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            loss, acc, _ = unroll(model, x, y)
    finally:
        for h in hooks:
            h.remove()
    return float(loss), acc, calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--babi-dir", default="../shared/data/babi")
    p.add_argument("--steps", help="A:B: scan the recipe's training batches of steps A..B-1 on --device alone")
    a = p.parse_args(argv)
    model, tok, _ = load_checkpoint(a.checkpoint)
    info = json.loads((Path(a.checkpoint) / "train_info.json").read_text())["train_config"]
    fields = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in info.items() if k in fields})
    cfg.babi_dir, cfg.haystack = a.babi_dir, [h for h in cfg.haystack if Path(h).is_file()] or None
    data = TaskData(cfg, tok)
    if a.steps:
        return scan(model.to(a.device).eval(), data, cfg, *map(int, a.steps.split(":")), a.device)
    x, y = data.batch(data.heldout, a.length, a.batch, 12345, memory_only=0.0)
    model.eval()
    other = copy.deepcopy(model).to(a.device).eval()
    res = {}
    for dev, m in (("cpu", model), (a.device, other)):
        loss, acc, calls = traced(m, x, y)
        res[dev] = calls
        print(f"{dev}: loss {loss:.4f}  answer accuracy {acc:.3f}  held-out (128 samples) "
              f"{evaluate_heldout(m, data, a.length, 128):.3f}")
    worst = 0.0
    for (name, c), (_, g) in zip(res["cpu"], res[a.device]):
        if c is None or g is None or c.shape != g.shape:
            continue
        bad = [d for d, t in (("cpu", c), (a.device, g)) if not torch.isfinite(t).all()]
        if bad:
            print(f"first non-finite output: module {name!r} on {', '.join(bad)} "
                  f"(largest |cpu - {a.device}| before it: {worst:.2e})")
            return 1
        worst = max(worst, (c - g).abs().max().item())
    print(f"every output finite on both devices; largest |cpu - {a.device}| = {worst:.2e}")
    return 0


def first_nonfinite(calls) -> str | None:
    return next((name for name, t in calls if t is not None and not torch.isfinite(t).all()), None)


def scan(model, data, cfg, lo: int, hi: int, device) -> int:
    """The training batches of steps lo..hi-1 (as the trainer draws them), forward only: report the non-finite."""
    bad = 0
    for step in range(lo, hi):
        rng = random.Random(cfg.seed * 7919 + step)  # the trainer's draw order: length, then the batch seed
        length = length_for(cfg, step, rng)
        x, y = data.batch(data.train, length, cfg.batch_size, rng.randrange(2**31), cfg.memory_only)
        with torch.no_grad():
            loss = float(unroll(model, x.to(device), y.to(device))[0])
        if not torch.isfinite(torch.tensor(loss)):
            bad += 1
            calls = traced(model, x.to(device), y.to(device))[2]  # again, with a hook on every module
            print(f"step {step + 1} (length {length}): loss {loss}; first non-finite output: {first_nonfinite(calls)!r}",
                  flush=True)
    print(f"{bad} of {hi - lo} batches non-finite (steps {lo + 1}..{hi}, numbered as the trainer logs them)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
