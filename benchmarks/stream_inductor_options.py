"""1M tokens at batch 1 through the shipped RMT, `stream(compile=True)` with inductor options; one option set per
process (inductor caches compiled code on disk by options, so each process measures its own variant). Prints one
JSON line: the options, compile seconds (first call), streaming seconds, tokens/s, and the largest difference from
the eager runner's logits on 4k tokens.

    python benchmarks/stream_inductor_options.py '{"max_autotune": true}'   # one variant
    for o in '{}' '{"max_autotune": true}' '{}' '{"max_autotune": true}'; do python benchmarks/stream_inductor_options.py "$o"; done
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from memlab import stream as S
from memlab.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = json.loads(argv[0]) if argv else {}
    ckpt = argv[1] if len(argv) > 1 else str(ROOT / "checkpoints" / "rmt-qa1")
    L = int(argv[2]) if len(argv) > 2 else 1_000_000
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    m, tok, _ = load_checkpoint(ckpt)
    m.eval()
    S._COMPILED[m] = {"default": torch.compile(m, dynamic=False, options=opts or None)}  # the runner's compiled forward, with options
    x = np.random.default_rng(0).integers(3, len(tok), size=(1, L))
    t0 = time.perf_counter()
    S.stream(m, x[:, :384], [383], compile=True)
    comp = time.perf_counter() - t0
    ref = S.stream(m, x[:, :4096], [4095]).logits  # eager
    got = S.stream(m, x[:, :4096], [4095], compile=True).logits
    t0 = time.perf_counter()
    S.stream(m, x, [L - 1], compile=True)
    secs = time.perf_counter() - t0
    print(json.dumps({"opts": opts, "compile_s": round(comp, 1), "seconds": round(secs, 2), "tok_s": round(L / secs),
                      "max_abs_diff_vs_eager_4k": float((ref - got).abs().max())}), flush=True)


if __name__ == "__main__":
    main()
