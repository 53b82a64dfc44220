"""Speed of memlab's RMT beside `recurrent-memory-transformer-pytorch` 0.7.0 (lucidrains), the implementation users
would otherwise pick, at equal configuration in one process: width 128, 3 layers, 4 heads of 32, MLP 4x (theirs
GEGLU at 2/3 of the width, so equal parameters), 16 memory tokens, 128-token segments, rotary positions, the
same vocabulary. Their extras that have no counterpart here are off: Transformer-XL memories and hyper-connections
(num_residual_streams=1); memlab's recipe extras (short conv, recency bias, write gate) are off too, and timed
separately as "memlab (qa1 recipe)".

- training: one forward+backward over a batch of sequences with a next-token loss at every position and full
  BPTT through all segments (theirs: `RecurrentMemoryTransformerWrapper(..., return_loss=True)`; memlab:
  `unroll(..., lm_weight=1)`). With --compile (default) also compiled: memlab's `unroll(..., compile=True)` (what
  `memlab train --compile` runs) against `torch.compile` of their whole wrapper (they ship no compile option; this
  is the best a user of theirs could do in one line), each timed after its compile.
- the bound: both training steps' matrix products counted (FlopCounterMode; the same 49 GFLOP at the defaults) and
  the machine's best fp32 matmul measured in the same run: memlab's step can be no faster than its matmuls at that
  peak, so peer_compiled_seconds / that floor is the most any memlab step could gain on the compiled peer.
- streaming: a long sequence segment by segment at batch 1, the memory carried, under no_grad, keeping the
  logits at the last position only. memlab's runner computes no logits elsewhere; theirs has no way to skip
  them, so it is timed as it ships and once more with its output head replaced by an identity (its best case).

    pip install --no-deps recurrent-memory-transformer-pytorch==0.7.0 hyper-connections packaging torch-einops-utils
    python benchmarks/rmt_peer_speed.py        # -> benchmarks/results/rmt_peer_speed.json
    python benchmarks/rmt_peer_speed.py --profile   # where memlab's compiled training step spends its time
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_result  # noqa: E402
from utilisation import peak_gflops  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from memlab.models.registry import build_model, make_config  # noqa: E402
from memlab.stream import stream, unroll  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--train-length", type=int, default=1024)
    p.add_argument("--stream-length", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time compiled training: memlab's `unroll(compile=True)` and torch.compile of the peer")
    p.add_argument("--profile", action="store_true",
                   help="only print torch.profiler's table of one memlab training step (compiled unless --no-compile)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import recurrent_memory_transformer_pytorch as peer
    from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer, RecurrentMemoryTransformerWrapper

    dims = dict(d_model=128, n_layers=3, n_heads=4, mlp_mult=4, num_mem=16, segment_len=128)
    ours = build_model(make_config("rmt", vocab_size=a.vocab, **dims))
    recipe = build_model(make_config("rmt", vocab_size=a.vocab, **dims, conv=8, recency=True, memory_always_near=True, mem_gate=True))
    theirs = RecurrentMemoryTransformer(128, num_tokens=a.vocab, depth=3, heads=4, dim_head=32, ff_mult=4, num_memory_tokens=16,
                                        seq_len=128, use_xl_memories=False, num_residual_streams=1, rotary_pos_emb=True,
                                        abs_pos_emb=False)
    wrapper = RecurrentMemoryTransformerWrapper(theirs)
    x = torch.randint(0, a.vocab, (a.batch, a.train_length + 1))
    no_answers = torch.full((a.batch, a.train_length), -100)
    long = torch.randint(0, a.vocab, (1, a.stream_length))

    def train_memlab(model, compile=False):
        def f():
            loss, _, _ = unroll(model, x[:, :-1], no_answers, lm_weight=1.0, compile=compile)  # next-token loss everywhere
            loss.backward()
        return f

    def train_theirs(w=wrapper):
        loss, _ = w(x, return_loss=True)
        loss.backward()

    def stream_memlab(model, compile=False):
        return lambda: stream(model, long, [a.stream_length - 1], compile=compile)

    @torch.no_grad()
    def stream_theirs():
        mem = None
        for s in range(0, a.stream_length, 128):
            logits, mem, _ = theirs(long[:, s : s + 128], mem)
        return logits[:, -1]

    head = theirs.to_logits

    def stream_theirs_headless():
        theirs.to_logits = torch.nn.Identity()
        try:
            stream_theirs()
        finally:
            theirs.to_logits = head

    for m in (ours, recipe, theirs):
        m.train()
    if a.profile:  # where memlab's step spends its time (matmuls, the attention kernel, the rest)
        from torch.profiler import ProfilerActivity, profile

        f = train_memlab(ours, compile=a.compile)
        timed(f, a.repeats)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    rows = {"training_step": {}, "streaming": {}}
    rows["training_step"]["memlab_seconds"] = timed(train_memlab(ours), a.repeats)
    rows["training_step"]["memlab_recipe_seconds"] = timed(train_memlab(recipe), a.repeats)
    rows["training_step"]["peer_seconds"] = timed(train_theirs, a.repeats)
    if a.compile:  # `memlab train --compile` against torch.compile of their whole wrapper (they ship no such option)
        rows["training_step"]["memlab_compiled_seconds"] = timed(train_memlab(ours, compile=True), a.repeats)
        rows["training_step"]["memlab_recipe_compiled_seconds"] = timed(train_memlab(recipe, compile=True), a.repeats)
        try:
            compiled = torch.compile(wrapper)
            rows["training_step"]["peer_compiled_seconds"] = timed(lambda: train_theirs(compiled), a.repeats)
        except Exception as e:  # reported, not hidden: the row is then absent and the error is in the result
            rows["training_step"]["peer_compiled_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    # what bounds the ratio: both steps do the same matrix products (counted), and no step can run them faster
    # than this machine's best fp32 matmul (measured now)
    flops = {}
    for n, f in (("memlab", train_memlab(ours)), ("peer", train_theirs)):
        with FlopCounterMode(display=False) as fc:
            f()
        flops[n] = fc.get_total_flops()
    for m in (ours, recipe, theirs):
        m.zero_grad(set_to_none=True)
    peak = peak_gflops(a.threads)
    tr = rows["training_step"]
    tr["memlab_gflop_per_step"] = flops["memlab"] / 1e9  # matmuls; memlab's attention (one fused kernel) is not counted
    tr["peer_gflop_per_step"] = flops["peer"] / 1e9  # matmuls and the attention's batched matmuls
    tr["matmul_peak_gflops"] = peak["peak"]
    tr["memlab_matmul_floor_seconds"] = flops["memlab"] / 1e9 / peak["peak"]
    for m in (ours, recipe, theirs):
        m.eval()
    st = rows["streaming"]
    st["memlab_seconds"] = timed(stream_memlab(ours), a.repeats)
    st["memlab_compiled_seconds"] = timed(stream_memlab(ours, compile=True), a.repeats)
    st["memlab_recipe_seconds"] = timed(stream_memlab(recipe), a.repeats)
    st["peer_seconds"] = timed(stream_theirs, a.repeats)
    st["peer_without_head_seconds"] = timed(stream_theirs_headless, a.repeats)
    tr = rows["training_step"]
    tr["speedup"] = tr["peer_seconds"] / tr["memlab_seconds"]
    tr["speedup_recipe"] = tr["peer_seconds"] / tr["memlab_recipe_seconds"]
    if "memlab_compiled_seconds" in tr:
        tr["speedup_compiled_vs_peer"] = tr["peer_seconds"] / tr["memlab_compiled_seconds"]
        tr["speedup_recipe_compiled_vs_peer"] = tr["peer_seconds"] / tr["memlab_recipe_compiled_seconds"]
        if "peer_compiled_seconds" in tr:
            tr["speedup_compiled_vs_peer_compiled"] = tr["peer_compiled_seconds"] / tr["memlab_compiled_seconds"]
            # the most memlab could gain on the compiled peer: its matmuls at peak and nothing else
            tr["speedup_bound_vs_peer_compiled"] = tr["peer_compiled_seconds"] / tr["memlab_matmul_floor_seconds"]
            tr["speedup_recipe_compiled_vs_peer_compiled"] = tr["peer_compiled_seconds"] / tr["memlab_recipe_compiled_seconds"]
    for k in ("memlab_seconds", "memlab_compiled_seconds", "memlab_recipe_seconds", "peer_seconds", "peer_without_head_seconds"):
        st[k.replace("seconds", "tokens_per_s")] = a.stream_length / st[k]
    st["speedup"] = st["peer_seconds"] / st["memlab_seconds"]
    st["speedup_vs_peer_without_head"] = st["peer_without_head_seconds"] / st["memlab_seconds"]
    st["speedup_compiled"] = st["peer_seconds"] / st["memlab_compiled_seconds"]
    rows = {k: {n: v if isinstance(v, str) else round(v, 4 if "seconds" in n else 2 if "speedup" in n else 0)
                for n, v in r.items()} for k, r in rows.items()}
    for k, r in rows.items():
        print(k, r, flush=True)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("memlab", ours), ("memlab_recipe", recipe), ("peer", theirs))}
    version = getattr(peer, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v
        version = _v("recurrent-memory-transformer-pytorch")
    print(write_result("rmt_peer_speed", {"config": vars(a), "peer": f"recurrent-memory-transformer-pytorch {version}",
                                          "parameters": params, "results": rows}))


if __name__ == "__main__":
    main()
