"""Streaming cost against length: RMT's tokens/s and peak memory at 10k-1M tokens (flat state), and
full attention's time per token and KV-cache bytes until it becomes impractical.

RMT is measured at its own segment length, or at each `--rmt-segments` length (positions restart every
segment, so a model runs on other segment lengths too, at an accuracy to measure separately). RMT is
measured eager and with `stream(compile=True)` (torch.compile of the segment forward); the compile itself is
timed apart, as `compile_seconds` of the first compiled row of each batch size and segment length.

    python benchmarks/streaming.py                    # -> benchmarks/results/streaming.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.evaluate import _peak_rss, _reset_peak_rss  # noqa: E402
from memlab.models.base import state_nbytes  # noqa: E402
from memlab.stream import stream  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_compiled_for: set = set()  # (batch, segment_len) already compiled in this process


def measure(model, length: int, batch: int, vocab: int, segment_len: int | None = None, compile: bool = False) -> dict:
    tokens = np.random.default_rng(0).integers(3, vocab, size=(batch, length))
    seg = segment_len or model.config.segment_len
    compile_secs = None
    if compile and (batch, seg) not in _compiled_for:  # compile (first call) outside the timed run
        t0 = time.perf_counter()
        stream(model, tokens[:, : 3 * seg], [3 * seg - 1], segment_len=seg, compile=True)
        compile_secs = round(time.perf_counter() - t0, 2)
        _compiled_for.add((batch, seg))
    _reset_peak_rss()
    t0 = time.perf_counter()
    res = stream(model, tokens, [length - 1], segment_len=segment_len, compile=compile)
    secs = time.perf_counter() - t0
    return {"length": length, "batch": batch, "segment_len": seg, "compiled": compile, "compile_seconds": compile_secs,
            "seconds": round(secs, 3), "tokens_per_s": round(batch * length / secs),
            "seconds_per_token": secs / (batch * length), "state_bytes_per_sample": state_nbytes(res.state) // batch,
            "peak_rss_bytes": _peak_rss()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rmt", default=str(ROOT / "checkpoints" / "rmt-qa1"))
    p.add_argument("--transformer", default=str(ROOT / "checkpoints" / "transformer-qa1"))
    p.add_argument("--rmt-lengths", default="10000,100000,1000000")
    p.add_argument("--attn-lengths", default="1000,2000,4000,8000,16000")
    p.add_argument("--rmt-segments", default=None, help="segment lengths to stream RMT with (default: the checkpoint's own)")
    p.add_argument("--modes", default="eager,compile", help="RMT runner modes: eager and/or compile")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as the memlab CLI does
    out = {"rmt": [], "transformer": []}
    rmt, tok, _ = load_checkpoint(a.rmt)
    rmt.eval()
    for seg in [int(x) for x in a.rmt_segments.split(",")] if a.rmt_segments else [rmt.config.segment_len]:
        for L in [int(x) for x in a.rmt_lengths.split(",")]:
            for b in (1, 8) if L <= 100_000 else (1,):  # batch 8 at 1M would take minutes; batch 1 is the target
                for mode in a.modes.split(","):
                    r = measure(rmt, L, b, len(tok), seg, compile=mode == "compile")
                    out["rmt"].append(r)
                    print("rmt", r, flush=True)
    tf, tok, _ = load_checkpoint(a.transformer)
    tf.eval()
    for L in [int(x) for x in a.attn_lengths.split(",")]:
        r = measure(tf, L, 1, len(tok))
        out["transformer"].append(r)
        print("transformer", r, flush=True)
    out["rmt_config"], out["transformer_config"] = vars(rmt.config), vars(tf.config)
    print(write_result("streaming", out))


if __name__ == "__main__":
    main()
