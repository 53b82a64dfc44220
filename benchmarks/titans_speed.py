"""Speed of memlab's Titans neural memory beside titans-pytorch's NeuralMemory, the implementation users would
otherwise pick, at equal configuration in one process: model width, a 2-layer memory MLP of the same hidden
width, one head, the same chunk size, momentum on; forward+backward over a batch of sequences (training) and
streaming segment by segment with the state carried (inference). Reports seconds and the ratio.

The two differ in details the configuration cannot align (titans-pytorch adds RMSNorms and a residual inside
its memory MLP, memlab a depthwise convolution after q, k, v); both are counted as they ship.

    pip install titans-pytorch==0.5.5 torch==2.13.0   # not a memlab dependency; the pin keeps the CPU torch
    python benchmarks/titans_speed.py                  # -> benchmarks/results/titans_speed.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_result  # noqa: E402

from memlab.models.titans import NeuralMemory, TitansConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--mult", type=int, default=2, help="memory MLP hidden width = mult * dim")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--segment", type=int, default=128, help="streaming segment length")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from titans_pytorch import NeuralMemory as TheirMemory

    ours = NeuralMemory(TitansConfig(d_model=a.dim, mem_depth=2, mem_mult=a.mult, chunk=a.chunk, segment_len=a.segment))
    theirs = TheirMemory(dim=a.dim, chunk_size=a.chunk, heads=1, momentum=True,
                         default_model_kwargs=dict(depth=2, expansion_factor=float(a.mult)))
    x = torch.randn(a.batch, a.length, a.dim)

    def ours_train():
        W, S, tails = ours.init_state(a.batch)
        reads, _, _, _ = ours.update(x, W, S, tails)
        reads.sum().backward()

    def theirs_train():
        retrieved, _ = theirs(x)
        retrieved.sum().backward()

    @torch.no_grad()
    def ours_stream():
        W, S, tails = ours.init_state(a.batch)
        for s in range(0, a.length, a.segment):
            _, W, S, _ = ours.update(x[:, s : s + a.segment], W, S, tails)

    @torch.no_grad()
    def theirs_stream():
        state = None
        for s in range(0, a.length, a.segment):
            _, state = theirs(x[:, s : s + a.segment], state=state)

    rows = {}
    for name, f_ours, f_theirs in (("forward_backward", ours_train, theirs_train), ("streaming", ours_stream, theirs_stream)):
        t_ours, t_theirs = timed(f_ours, a.repeats), timed(f_theirs, a.repeats)
        rows[name] = {"memlab_seconds": round(t_ours, 4), "titans_pytorch_seconds": round(t_theirs, 4),
                      "speedup": round(t_theirs / t_ours, 2)}
        print(name, rows[name], flush=True)
    import titans_pytorch

    params = {"memlab": sum(p.numel() for p in ours.parameters()), "titans_pytorch": sum(p.numel() for p in theirs.parameters())}
    print(write_result("titans_speed", {"config": vars(a), "titans_pytorch_version": getattr(titans_pytorch, "__version__", "0.5.5"),
                                        "parameters": params, "results": rows}))


if __name__ == "__main__":
    main()
