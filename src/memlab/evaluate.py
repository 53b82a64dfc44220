"""`memlab eval`: exact-match accuracy of checkpoints on BABILong-style tasks across lengths, streamed
through the one runner, with a budget preflight for attention, results in a SQLite store (re-runs skip
finished cells; an interrupted sweep resumes)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dist import rank_world
from .metrics import wilson_interval
from .models.base import state_nbytes, tree_leaves, tree_map
from .report import format_bytes
from .store import Cell, ResultStore
from .stream import COMPILE_MODES, add_numbers, model_device, stream


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
    seg = getattr(c, "segment_len", 512)
    if kind == "transformer":
        span = length if c.window is None else min(length, c.window)
        state = 2 * layers * span * d * 4
        attn = 4 * layers * d * (length * span - (span * span) / 2 if c.window else length * length / 2)
        keys = span + min(seg, length)
    else:
        state = None
        attn = 4 * layers * d * length * (2 * getattr(c, "num_mem", 0) + seg)
        keys = seg + 2 * getattr(c, "num_mem", 0)
    # attention scores of one segment ([B, H, T, S] floats, x3 for softmax temporaries)
    work = 3 * 4 * batch * getattr(c, "n_heads", 1) * min(seg, length) * keys
    return {"state_bytes": state, "work_bytes": work, "flops": batch * (dense + attn)}


def preflight(model, length: int, batch: int, time_budget: float, samples: int) -> dict:
    """Refuse an attention cell whose KV cache does not fit in memory or whose projected time exceeds the budget.
    Models with a fixed-size state (recurrent memory, sliding window) cost linear time and flat memory: they
    are never refused, whatever the length."""
    est = estimate_cost(model, length, batch)
    if est["state_bytes"] is None or getattr(model.config, "window", None) is not None:
        return {"kv_bytes": est["state_bytes"], "work_bytes": est["work_bytes"]}
    flops_s = measured_flops() * 0.3  # streaming reaches a fraction of the matmul peak
    projected = est["flops"] / flops_s * samples / batch
    out = {"kv_bytes": est["state_bytes"], "projected_seconds": round(projected, 1),
           "projected_seconds_per_token": projected / (samples * length), "mem_available": mem_available_bytes()}
    need = (est["state_bytes"] or 0) * batch + est["work_bytes"]
    out["work_bytes"] = est["work_bytes"]
    if need * 2 > out["mem_available"]:
        out["reason"] = (f"KV cache of {format_bytes((est['state_bytes'] or 0) * batch)} plus {format_bytes(est['work_bytes'])} "
                         f"of attention scores needs more than half the {format_bytes(out['mem_available'])} of memory available")
        raise BudgetError(out["reason"], out)
    if projected > time_budget:
        out["reason"] = f"projected {projected:.3g}s exceeds the time budget of {time_budget:g}s (--time-budget)"
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
    compile: bool = False  # stream fixed-state models through torch.compile (compile time counts in the cell)
    compile_mode: str = "default"  # or "reduce-overhead": CUDA graphs on a GPU (see `stream.compiled_forward`)
    save_every: float = 300.0  # seconds between saves of an unfinished cell's progress (`CellProgress`); 0 = never

    def __post_init__(self):
        checks = [(self.samples >= 1, f"samples must be >= 1, got {self.samples}"),
                  (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
                  (self.time_budget > 0, f"time budget must be > 0 seconds, got {self.time_budget}"),
                  (self.save_every >= 0, f"save-every must be >= 0 seconds (0 = never save progress), got {self.save_every}"),
                  (self.max_samples_long is None or self.max_samples_long >= 1,
                   f"max samples at long lengths must be >= 1, got {self.max_samples_long}"),
                  (self.compile_mode in COMPILE_MODES,
                   f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def samples_at(self, length: int) -> int:
        if self.max_samples_long and length >= 1_000_000:
            return min(self.samples, self.max_samples_long)
        return self.samples


def task_questions(spec: EvalSpec, task: int) -> list:
    """The held-out questions of a task: original bAbI files if given, else generated (seed-determined)."""
    from .tasks.babi import generate_babi, read_babi_dir

    return read_babi_dir(spec.babi_dir, task) if spec.babi_dir else generate_babi(task, 2000, seed=10**6 + task)


def _sample_seed(spec: EvalSpec, i: int) -> int:
    return sample_seed(spec.seed, i)


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample i of a cell: the same samples at every length and for every model."""
    return seed * 1_000_003 + i


def check_lengths(tokenizer, spec: EvalSpec) -> None:
    """Raise ValueError, before any work, if a length cannot hold the facts and question of its samples."""
    from .tasks.babilong import BabilongTask

    for task in spec.tasks:
        bare = BabilongTask(task, task_questions(spec, task), tokenizer, None)  # facts + question only
        need = [len(bare.sample(0, _sample_seed(spec, i)).tokens) for i in range(max(map(spec.samples_at, spec.lengths)))]
        for length in spec.lengths:
            needed = max(need[: spec.samples_at(length)])
            if length < needed:
                raise ValueError(f"length {length} is too short for babilong:qa{task}: its samples need up to {needed} "
                                 f"tokens for the facts and question alone; use --lengths of at least {needed}")


def evaluate_checkpoint(name: str, model, tokenizer, spec: EvalSpec, store: ResultStore, log=print, on_cell=None):
    """Evaluate one model on every (task, length) cell not yet in the store. Under torchrun the processes take
    turns over the cells (each process evaluates every WORLD_SIZE-th cell into the shared store)."""
    from .tasks.babilong import BabilongTask
    from .tasks.text import TokenizedHaystack, load_haystack

    check_lengths(tokenizer, spec)  # bad lengths fail before any cell is computed or stored
    model.eval()
    hay = None
    mine = _my_cells()
    for task in spec.tasks:
        task_name = f"babilong:qa{task}"
        bt = None
        for length in spec.lengths:
            if not next(mine):
                continue
            n = spec.samples_at(length)
            done = store.get(name, task_name, length)
            _check_seed(store, done, spec.seed)
            if done is not None and done.status == "ok" and done.samples >= n:
                log(f"{name} {task_name} {length}: done already, skipped")
                continue
            try:  # a refused cell is re-checked on every run: a larger --time-budget or --force may now admit it
                est = preflight(model, length, min(spec.batch_size, n), spec.time_budget, n) if not spec.force else {}
            except BudgetError as e:
                if done is not None and done.status == "out_of_budget":
                    log(f"{name} {task_name} {length}: refused by preflight already, skipped ({e}; use --force to run anyway)")
                    continue
                cell = store.put(Cell(name, task_name, length, 0, None, None, None, None, None, None, e.estimate["kv_bytes"], None, "out_of_budget", e.estimate))
                log(f"{name} {task_name} {length}: refused by preflight: {e} (use --force to run anyway)")
                on_cell and on_cell(cell)
                continue
            if hay is None:
                hay = TokenizedHaystack(tokenizer, load_haystack(spec.haystack or None))
            if bt is None:
                bt = BabilongTask(task, task_questions(spec, task), tokenizer, hay)
            cell = run_cell(name, task_name, bt, model, length, n, spec, est, log=log, store=store,  # stored: `created` set
                            progress_dir=Path(f"{store.path}.progress"))
            log(f"{name} {task_name} {length}: accuracy {cell.accuracy:.3f} [{cell.ci_low:.3f}, {cell.ci_high:.3f}] "
                f"n={n} {cell.tokens_per_s:.0f} tok/s state {cell.state_bytes} B")
            on_cell and on_cell(cell)


def _check_seed(store: ResultStore, cell, seed: int, stored=None) -> None:
    """A stored cell is keyed by model, task and length; one measured on other samples (another --seed) must not pass
    for this run's. Cells stored before the seed was recorded are taken as they are. stored: the seed recorded
    elsewhere (a kept sample of an unfinished cell) where there is no cell yet."""
    if stored is None:
        stored = (cell.extra or {}).get("seed") if cell is not None else None
    if stored is not None and stored != seed:
        where = f"{cell.model} {cell.task} {cell.length}" if cell is not None else "a cell"
        raise ValueError(f"{where}: the store {store.path} holds this cell (or samples of it) measured with --seed "
                         f"{stored}, and this run asks --seed {seed}; cells are keyed by model, task and length, so use "
                         f"another --store for other samples (or the same --seed to resume)")


def _done(store: ResultStore, name: str, task: str, length: int, samples: int, seed: int, log) -> bool:
    """True (and said) when the store already holds this cell with at least `samples` samples (of this seed)."""
    cell = store.get(name, task, length)
    _check_seed(store, cell, seed)
    if cell is not None and cell.status == "ok" and cell.samples >= samples:
        log(f"{name} {task} {length}: done already, skipped")
        return True
    return False


def _my_cells():
    """True for the cells this process evaluates, in sweep order: all of them outside torchrun."""
    rank, world = rank_world()
    k = 0
    while True:
        yield k % world == rank
        k += 1


def progress_logger(label: str, log, every: float = 60.0, batch: int = 1, start: int = 0):
    """A `stream(progress=...)` callback that logs how far a long cell has got, at most once per `every` seconds:
    a cell cut short (a time limit, a lent machine given back) still tells its throughput. start: the tokens a
    resumed stream skipped (not counted in its speed)."""
    t0 = last = time.perf_counter()

    def report(done: int, total: int):
        nonlocal last
        now = time.perf_counter()
        if now - last >= every:
            last = now
            log(f"{label}: {done:,} of {total:,} tokens ({100 * done / total:.0f}%) after {now - t0:.0f} s, "
                f"{batch * (done - start) / (now - t0):,.0f} tokens/s over the batch of {batch}")
    return report


class CellProgress:
    """An unfinished cell on disk, so that a cell interrupted mid-way (a killed process, a session's end) resumes
    instead of starting again: the batches it finished (answers right, totals, seconds) and, for the batch in
    flight, the tokens done and the model's state after them. Written atomically (a temporary file, then a rename)
    at most once per `spec.save_every` seconds of the cell, so short cells never write; removed once the cell is
    stored. The file is named by what decides the samples (model name, task, length, samples, batch size, seed) and
    holds a hash of the weights; progress of other weights is never taken. `fingerprint` (the weights' hash) is only
    called when a file exists or is written, so short cells do not hash the weights."""

    def __init__(self, directory, key: dict, fingerprint):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = Path(directory) / f"{digest}.pt"
        self._fingerprint, self._weights = fingerprint, None
        self.data = {"key": key, "weights": None, "batches": {}, "current": None}
        self.resumed = False
        if self.path.is_file():
            try:
                data = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file: say which and how to start afresh
                raise ValueError(f"cannot read the saved progress {self.path} ({e}); delete it to run the cell from "
                                 f"its start") from e
            if data.get("key") == key and data.get("weights") == self.weights():
                self.data, self.resumed = data, True

    def weights(self) -> str:
        if self._weights is None:
            self._weights = self._fingerprint()
        return self._weights

    def seconds(self) -> float:
        cur = self.data["current"]
        return sum(b["seconds"] for b in self.data["batches"].values()) + (cur["seconds"] if cur else 0.0)

    def save(self) -> None:
        self.data["weights"] = self.weights()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(self.data, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _state_from_leaves(model, batch: int, leaves: list):
    """The state saved as its tensor leaves (`CellProgress`), rebuilt in the shape of the model's own state."""
    it = iter(leaves)
    template = model.init_state(batch, torch.device("cpu"))
    if [tuple(t.shape) for t in tree_leaves(template)] != [tuple(t.shape) for t in leaves]:
        raise ValueError("the saved progress holds a state of another shape than this model's; delete the "
                         ".progress file next to the store to run the cell from its start")
    return tree_map(lambda t: next(it), template)


def weights_fingerprint(model) -> str:
    """A hash of a model's weights (names, shapes and values): resumed progress must come from the same weights."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def run_cell(name, task_name, bt, model, length, n, spec: EvalSpec, estimate: dict | None = None, log=None,
             progress_dir=None, store: ResultStore | None = None) -> Cell:
    """Stream n samples of one (task, length) and score them. progress_dir: where an unfinished cell keeps its
    progress (`CellProgress`, every `spec.save_every` seconds) and resumes from it; None: no saving. store: put
    the cell there (then the saved progress is removed) and return the stored cell."""
    _reset_peak_rss()
    device = model_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = None
    if progress_dir is not None and spec.save_every > 0:
        saved = CellProgress(progress_dir, {"model": name, "task": task_name, "length": length, "samples": n,
                                            "batch_size": spec.batch_size, "seed": spec.seed},
                             lambda: weights_fingerprint(model))
        if saved.resumed and log:
            cur = saved.data["current"]
            log(f"{name} {task_name} {length}: resuming from {saved.path} ({len(saved.data['batches'])} batch(es) done"
                + (f", samples {cur['batch']}-{min(cur['batch'] + spec.batch_size, n) - 1} at {cur['done']:,} tokens"
                   if cur else "") + ")")
    correct, state_bytes, totals = 0, 0, {}
    t0, last_save = time.perf_counter(), time.perf_counter()
    before = saved.seconds() if saved else 0.0  # seconds spent on this cell by earlier processes

    for b in range(0, n, spec.batch_size):
        done_b = saved.data["batches"].get(b) if saved else None
        if done_b is not None:  # finished by an earlier process
            correct += done_b["correct"]
            state_bytes = done_b["state_bytes"]
            add_numbers(totals, done_b["totals"])
            continue
        cur = saved.data["current"] if saved else None
        # lazy samples: the runner reads them a segment at a time, so memory stays flat in length
        samples = [bt.sample(length, _sample_seed(spec, i), lazy=True) for i in range(b, min(b + spec.batch_size, n))]
        start, state0, totals0, secs0 = (cur["done"], _state_from_leaves(model, len(samples), cur["state"]), cur["totals"],
                                         cur["seconds"]) if cur and cur["batch"] == b else (0, None, {}, 0.0)
        tokens = [s.tokens for s in samples]
        progress = progress_logger(f"{name} {task_name} {length}: samples {b}-{b + len(samples) - 1}", log,
                                   batch=len(samples), start=start) if log else None
        tb = time.perf_counter()

        def snapshot(done, state, part, b=b, tb=tb, totals0=totals0, secs0=secs0):
            nonlocal last_save
            now = time.perf_counter()
            if now - last_save >= spec.save_every:
                last_save = now
                merged = dict(totals0)
                add_numbers(merged, part)
                saved.data["current"] = {"batch": b, "done": done, "totals": merged, "seconds": secs0 + now - tb,
                                         "state": [t.detach().to("cpu", copy=True) for t in tree_leaves(state)]}
                saved.save()

        res = stream(model, tokens, [len(tokens[0]) - 1], compile=spec.compile and getattr(model, "fixed_state", False),
                     progress=progress, compile_mode=spec.compile_mode, start=start, state=state0,
                     snapshot=snapshot if saved and getattr(model, "fixed_state", False) else None)
        pred = res.logits[:, 0].argmax(-1)
        right = sum(int(p) == s.answer for p, s in zip(pred.tolist(), samples))
        correct += right
        state_bytes = state_nbytes(res.state) // len(samples)
        batch_totals = dict(totals0)
        add_numbers(batch_totals, res.totals)
        add_numbers(totals, batch_totals)  # e.g. the sleep model's FLOPs of prediction and of consolidation
        if saved:
            saved.data["batches"][b] = {"correct": right, "state_bytes": state_bytes, "totals": batch_totals,
                                        "seconds": secs0 + time.perf_counter() - tb}
            saved.data["current"] = None
            if time.perf_counter() - t0 + before >= spec.save_every or saved.path.is_file():
                saved.save()
        del tokens, res
    secs = before + time.perf_counter() - t0
    lo, hi = wilson_interval(correct, n)
    extra = {"seed": spec.seed, **({"estimate": estimate} if estimate else {})}  # the seed: which samples these are
    if saved and saved.resumed:
        extra["resumed"] = True  # seconds add up every process's share; peak memory is the last process's
    if spec.compile and getattr(model, "fixed_state", False):
        extra["compile_mode"] = spec.compile_mode
    extra.update(flops_per_sample(totals, n))
    if device.type == "cuda":  # the time and memory of this cell are the GPU's, not this CPU's
        extra.update({"device": torch.cuda.get_device_name(device), "peak_device_bytes": torch.cuda.max_memory_allocated(device)})
    cell = Cell(name, task_name, length, n, correct / n, lo, hi, secs, secs / n, n * length / secs, state_bytes, _peak_rss(), "ok", None, extra)
    if store is not None:
        cell = store.put(cell)  # stored (its `created` set) before the saved progress goes
        if saved:
            saved.remove()
    return cell


def flops_per_sample(totals: dict, n: int) -> dict:
    """The FLOPs counts a model reported (summed over a cell's samples), per sample, for the cell's extra."""
    return {f"{k}_per_sample": v / n for k, v in totals.items() if k.startswith("flops")}


def model_name(checkpoint_dir) -> str:
    return Path(checkpoint_dir).resolve().name


def with_passes(name: str, model, n: int) -> str:
    """Set a sleep model to n consolidation passes per chunk at evaluation; returns the store name of its cells,
    NAME@N=n, so that cells of different N never share a key (the report labels its points by it)."""
    model.config.sleep_passes = n
    return f"{name}@N={n}"


def evaluate_text(name: str, lm, tasks, lengths, samples: int, seed: int, store: ResultStore, log=print, on_cell=None):
    """A prompted LM (memlab.lm.PromptedLM) on text tasks: tasks = [(spec name, task object, sample kwargs)].
    FLenQA is scored by likelihood (True against False); RULER by string match of a greedy reply (the share of
    the expected words found, averaged)."""
    from .tasks.flenqa import FlenqaTask
    from .tasks.ruler import score

    mine = _my_cells()
    for spec_name, task, kw in tasks:
        for length in lengths:
            if not next(mine):
                continue
            if _done(store, name, spec_name, length, samples, seed, log):
                continue
            t0, total, toks = time.perf_counter(), 0.0, 0
            for i in range(samples):
                s = task.sample(length, sample_seed(seed, i), **kw)
                if isinstance(task, FlenqaTask):
                    pred, info = lm.answer_flenqa(s)
                    total += pred == s.answer
                    toks += info["prompt_tokens"]
                else:
                    ids = lm.prompt_ids(s.text, "")
                    total += score(lm.generate(ids, 8 * len(s.answers) + 8), s.answers)
                    toks += len(ids)
            secs = time.perf_counter() - t0
            correct = round(total)  # for the interval (RULER's partial scores are rounded to whole samples)
            lo, hi = wilson_interval(correct, samples)
            cell = store.put(Cell(name, spec_name, length, samples, total / samples, lo, hi, secs, secs / samples,
                                  toks / secs, None, None, "ok", None, {"seed": seed, "model_tokens_mean": toks / samples}))
            log(f"{name} {spec_name} {length}: accuracy {cell.accuracy:.3f} [{lo:.3f}, {hi:.3f}] n={samples}")
            on_cell and on_cell(cell)


def answer_token_text(model, ids: list[int], targets: list[int]):
    """One text sample in memlab tokens (`TokenTextTask.encode`) streamed through `model` at batch 1 ->
    (every answer word right, the predicted ids at the answer positions, the stream result)."""
    pos = [j for j, t in enumerate(targets) if t != -100]
    res = stream(model, np.asarray([ids]), pos)
    pred = res.logits[0].argmax(-1).tolist()
    return pred == [targets[j] for j in pos], pred, res


def evaluate_token_text(name: str, model, tokenizer, variants: list[str], lengths, samples: int, seed: int, store: ResultStore,
                        sentences=None, time_budget: float = 900.0, force: bool = False, log=print, on_cell=None):
    """A memlab checkpoint on FLenQA / RULER variants (names like 'ruler-niah_single_2') in its own tokens: the text
    streamed through the runner, then the answer words teacher-forced; a sample is right when every answer word
    is predicted (exact match). Held-out seeds (tasks.variants.TokenTextTask with seed_base 2^31), as training's
    held-out evaluation uses."""
    from .tasks.variants import TokenTextTask

    model.eval()
    mine = _my_cells()
    for variant in variants:
        task = TokenTextTask(variant, tokenizer, sentences, seed_base=2**31)
        task_name = variant.replace("-", ":", 1)
        for length in lengths:
            if not next(mine):
                continue
            if _done(store, name, task_name, length, samples, seed, log):
                continue
            try:
                est = preflight(model, length, 1, time_budget, samples) if not force else {}
            except BudgetError as e:
                cell = store.put(Cell(name, task_name, length, 0, None, None, None, None, None, None, e.estimate["kv_bytes"],
                                      None, "out_of_budget", e.estimate))
                log(f"{name} {task_name} {length}: refused by preflight: {e} (use --force to run anyway)")
                on_cell and on_cell(cell)
                continue
            _reset_peak_rss()
            t0, correct, state_bytes, toks, totals = time.perf_counter(), 0, 0, 0, {}
            for i in range(samples):
                ids, targets = task.tokens(length, sample_seed(seed, i))
                right, _, res = answer_token_text(model, ids, targets)
                correct += right
                state_bytes, toks = state_nbytes(res.state), toks + len(ids)
                add_numbers(totals, res.totals)
            secs = time.perf_counter() - t0
            lo, hi = wilson_interval(correct, samples)
            extra = {"seed": seed, **({"estimate": est} if est else {})}
            extra.update(flops_per_sample(totals, samples))
            cell = store.put(Cell(name, task_name, length, samples, correct / samples, lo, hi, secs, secs / samples,
                                  toks / secs, state_bytes, _peak_rss(), "ok", None, extra))
            log(f"{name} {task_name} {length}: accuracy {cell.accuracy:.3f} [{lo:.3f}, {hi:.3f}] n={samples} "
                f"{cell.tokens_per_s:.0f} tok/s state {state_bytes} B")
            on_cell and on_cell(cell)
