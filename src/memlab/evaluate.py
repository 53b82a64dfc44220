"""`memlab eval`: exact-match accuracy of checkpoints on BABILong-style tasks across lengths, streamed
through the one runner, with a budget preflight for attention, results in a SQLite store (re-runs skip
finished cells; an interrupted sweep resumes)."""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .metrics import wilson_interval
from .models.base import state_nbytes
from .store import Cell, ResultStore
from .stream import stream


class BudgetError(RuntimeError):
    """A cell the machine cannot hold or finish in the time budget; carries the estimate."""

    def __init__(self, message: str, estimate: dict):
        super().__init__(message)
        self.estimate = estimate


def mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


_PEAK_FLOPS: float | None = None


def measured_flops() -> float:
    """fp32 matmul throughput of this machine, measured once (about 0.3 s)."""
    global _PEAK_FLOPS
    if _PEAK_FLOPS is None:
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        a @ b
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.3:
            a @ b
            n += 1
        _PEAK_FLOPS = 2 * 512**3 * n / (time.perf_counter() - t0)
    return _PEAK_FLOPS


def estimate_cost(model, length: int, batch: int) -> dict:
    """State bytes and FLOPs of streaming `batch` samples of `length` tokens (forward only)."""
    c = model.config
    d, layers = c.d_model, getattr(c, "n_layers", 1)
    dense = 2 * length * (model.num_params() - c.vocab_size * d)  # matmuls in the blocks
    kind = getattr(c, "kind", "")
    if kind == "transformer":
        span = length if c.window is None else min(length, c.window)
        state = 2 * layers * span * d * 4
        attn = 4 * layers * d * (length * span - (span * span) / 2 if c.window else length * length / 2)
    else:
        state = None
        attn = 4 * layers * d * length * (2 * getattr(c, "num_mem", 0) + getattr(c, "segment_len", 512))
    return {"state_bytes": state, "flops": batch * (dense + attn)}


def preflight(model, length: int, batch: int, time_budget: float, samples: int) -> dict:
    """Refuse an attention cell whose KV cache does not fit in memory or whose projected time exceeds the budget."""
    est = estimate_cost(model, length, batch)
    flops_s = measured_flops() * 0.3  # streaming reaches a fraction of the matmul peak
    projected = est["flops"] / flops_s * samples / batch
    out = {"kv_bytes": est["state_bytes"], "projected_seconds": round(projected, 1),
           "projected_seconds_per_token": projected / (samples * length), "mem_available": mem_available_bytes()}
    if est["state_bytes"] is not None and est["state_bytes"] * batch * 3 > out["mem_available"]:
        out["reason"] = f"KV cache of {est['state_bytes'] * batch / 2**30:.1f} GiB (x3 working memory) exceeds the {out['mem_available'] / 2**30:.1f} GiB available"
        raise BudgetError(out["reason"], out)
    if projected > time_budget:
        out["reason"] = f"projected {projected:.0f}s exceeds the time budget of {time_budget:.0f}s"
        raise BudgetError(out["reason"], out)
    return out


def _reset_peak_rss():
    try:  # Linux: writing 5 to clear_refs resets VmHWM, so each cell reports its own peak
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class EvalSpec:
    tasks: list  # qa numbers
    lengths: list  # tokens per sample
    samples: int = 100  # samples per cell
    batch_size: int = 8  # samples streamed together
    seed: int = 0  # sample seeds derive from this
    haystack: list | None = None  # book files (None = procedural)
    babi_dir: str | None = None  # original bAbI files for questions (None = generated held-out)
    time_budget: float = 900.0  # seconds per cell before the preflight refuses an attention cell
    force: bool = False  # run cells the preflight refuses
    max_samples_long: int | None = None  # cap samples for lengths >= 1M (stated in the cell)


def evaluate_checkpoint(name: str, model, tokenizer, spec: EvalSpec, store: ResultStore, log=print, on_cell=None):
    """Evaluate one model on every (task, length) cell not yet in the store."""
    from .tasks.babi import generate_babi, read_babi_dir
    from .tasks.babilong import BabilongTask
    from .tasks.text import TokenizedHaystack, load_haystack

    model.eval()
    hay = None
    for task in spec.tasks:
        task_name = f"babilong:qa{task}"
        questions = None
        for length in spec.lengths:
            n = spec.samples
            if spec.max_samples_long and length >= 1_000_000:
                n = min(n, spec.max_samples_long)
            if store.has(name, task_name, length, min_samples=n):
                log(f"{name} {task_name} {length}: done already, skipped")
                continue
            try:
                est = preflight(model, length, min(spec.batch_size, n), spec.time_budget, n) if not spec.force else {}
            except BudgetError as e:
                cell = store.put(Cell(name, task_name, length, 0, None, None, None, None, None, None, e.estimate["kv_bytes"], None, "out_of_budget", e.estimate))
                log(f"{name} {task_name} {length}: refused by preflight: {e} (use --force to run anyway)")
                on_cell and on_cell(cell)
                continue
            if hay is None:
                hay = TokenizedHaystack(tokenizer, load_haystack(spec.haystack or None))
            if questions is None:
                questions = read_babi_dir(spec.babi_dir, task) if spec.babi_dir else generate_babi(task, 2000, seed=10**6 + task)
                bt = BabilongTask(task, questions, tokenizer, hay)
            cell = run_cell(name, task_name, bt, model, length, n, spec, est)
            store.put(cell)
            log(f"{name} {task_name} {length}: accuracy {cell.accuracy:.3f} [{cell.ci_low:.3f}, {cell.ci_high:.3f}] "
                f"n={n} {cell.tokens_per_s:.0f} tok/s state {cell.state_bytes} B")
            on_cell and on_cell(cell)


def run_cell(name, task_name, bt, model, length, n, spec: EvalSpec, estimate: dict | None = None) -> Cell:
    _reset_peak_rss()
    correct, t0, state_bytes = 0, time.perf_counter(), 0
    for b in range(0, n, spec.batch_size):
        samples = [bt.sample(length, spec.seed * 1_000_003 + i) for i in range(b, min(b + spec.batch_size, n))]
        tokens = np.stack([s.tokens for s in samples])
        res = stream(model, tokens, [length - 1] if length else [tokens.shape[1] - 1])
        pred = res.logits[:, 0].argmax(-1)
        correct += sum(int(p) == s.answer for p, s in zip(pred.tolist(), samples))
        state_bytes = state_nbytes(res.state) // len(samples)
        del tokens, res
    secs = time.perf_counter() - t0
    lo, hi = wilson_interval(correct, n)
    extra = {"estimate": estimate} if estimate else None
    return Cell(name, task_name, length, n, correct / n, lo, hi, secs, secs / n, n * length / secs, state_bytes, _peak_rss(), "ok", None, extra)


def model_name(checkpoint_dir) -> str:
    return Path(checkpoint_dir).resolve().name


def threads_default():
    return int(os.environ.get("MEMLAB_THREADS", "0")) or None
