"""Do gradients through a checkpoint's recurrent state explode? The gradient norm of one answer loss against the
BPTT depth.

For each depth d it unrolls d + 1 segments of random tokens (batch 2, fixed seed) with one answer at the end,
backpropagates through the last d segments (`unroll(..., bptt_depth=d)`) and prints the norm of the gradient over
all parameters. A healthy recurrence gives norms of one order at every depth; norms that grow by orders of
magnitude per doubling end as inf/NaN, which `memlab train` reports as "non-finite gradient, update skipped".

    python benchmarks/grad_depth.py runs/fam-qa1-skip checkpoints/fam-qa1 --depths 4,8,16,32
"""
from __future__ import annotations

import argparse
import json

import torch

from memlab.checkpoint import load_checkpoint
from memlab.stream import unroll


def grad_norms(model, depths, batch: int = 2, seed: int = 0) -> dict[int, float]:
    seg = model.config.segment_len
    write_cost = 1.0 if getattr(model.config, "write_skip", False) or getattr(model.config, "mem_gate", False) else 0.0
    out = {}
    for d in depths:
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, model.config.vocab_size, (batch, seg * (d + 1)), generator=g)
        y = torch.full(x.shape, -100)
        y[:, -1] = 5
        model.zero_grad(set_to_none=True)
        loss, _, _ = unroll(model, x, y, bptt_depth=d, write_cost=write_cost)
        loss.backward()
        sq = sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)
        out[d] = float(torch.sqrt(sq))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--depths", default="4,8,16,32", help="BPTT depths in segments, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    depths = [int(d) for d in a.depths.split(",")]
    for ck in a.checkpoints:
        model = load_checkpoint(ck)[0]
        print(json.dumps({"checkpoint": ck, "grad_norm_by_bptt_depth": grad_norms(model, depths)}))


if __name__ == "__main__":
    main()
