"""The one runner: streams any length through any model, segment by segment, and the one training unroll
(truncated backprop through time) shared by every model."""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import detach_state, tree_map

# torch.compile'd forward per model (compiled once per process and model; inductor also caches on disk)
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


COMPILE_MODES = ("default", "reduce-overhead")


def compiled_forward(model, mode: str = "default"):
    """The model's forward under torch.compile (static shapes). Only for models with a fixed-size state
    (`fixed_state = True`): a growing KV cache would change shapes, and so recompile, at every segment.
    mode "reduce-overhead" also records CUDA graphs (on a GPU; on the CPU it is the default mode): a small model is
    bound by kernel launches there, and a graph replays a segment's hundreds of kernels in one launch."""
    if not getattr(model, "fixed_state", False):
        raise ValueError(f"{type(model).__name__} has a state that grows with the context; stream it without compile")
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    per_mode = _COMPILED.setdefault(model, {})
    if mode not in per_mode:
        per_mode[mode] = torch.compile(model, dynamic=False, mode=None if mode == "default" else mode)
    return per_mode[mode]


def compiled_call(model, *args, mode: str = "default", **kwargs):
    """`compiled_forward(model, mode)(*args, **kwargs)`; where compiling fails (e.g. no C++ compiler) it warns once
    and the model runs eagerly from then on."""
    try:
        return compiled_forward(model, mode)(*args, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        warnings.warn(f"torch.compile failed ({str(err).splitlines()[0][:200]}); running eagerly instead "
                      "(install a C++ compiler such as g++ to use compile)")
        _COMPILED[model][mode] = model
        return model(*args, **kwargs)


_WARM: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> segment shapes whose caches are filled


def _prepare_compiled(model, segment, state, mode: str = "default", **kwargs) -> None:
    """Before compiled calls on segments shaped like `segment` (a full segment; None where there is none): checks
    that the model's state has a fixed shape, then runs one throwaway eager forward per model, segment shape and
    keyword arguments (those of the compiled calls to come). A model's per-length caches (rotary tables,
    distances) are so always computed eagerly: filled inside a compiled graph they can differ in the last bit (a
    resumed run would no longer equal an uninterrupted one), and the graph's guards would see them change (one
    needless recompile)."""
    compiled_forward(model, mode)
    if segment is None:
        return
    done = _WARM.setdefault(model, set())
    key = (tuple(segment.shape), str(segment.device), repr(sorted(kwargs.items())))
    if key not in done:
        with torch.no_grad():
            model(segment, detach_state(state), return_logits=False, **kwargs)
        done.add(key)


def _dense_strides(shape) -> tuple:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def packed(t):
    """t (a tensor; anything else as it is) with the strides of a freshly allocated tensor. A compiled graph guards on
    its inputs' strides; `contiguous()` is not enough: it keeps the stride of a size-1 dimension, so a batch-1 state
    sliced from a larger tensor (Titans' conv tails) would not match the graph and recompile."""
    if not isinstance(t, torch.Tensor) or (t.is_contiguous() and t.stride() == _dense_strides(t.shape)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def segment_bounds(length: int, segment_len: int) -> list[tuple[int, int]]:
    """Segments cut from the end: the last segment (which holds the question) is always full and the first
    takes the remainder, so a recurrent model sees its question at the same in-segment position at every
    length (measured: RMT-qa1 scored 0.48 at 1000 tokens cut from the start, 0.65 at 1024)."""
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    first = length % segment_len or min(segment_len, length)
    return [(0, first)] + [(s, s + segment_len) for s in range(first, length, segment_len)] if length else []


def _as_tensor(tokens, device=None) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(tokens)) if not isinstance(tokens, torch.Tensor) else tokens
    return t.to(device=device, dtype=torch.long)


READ_AHEAD = 1 << 16  # tokens per row that `_slicer` builds and moves to the device at once


def _slicer(tokens, device):
    """(B, L, get) with get(s, e) = tokens[:, s:e] as a long tensor on device. tokens: [B, L] (numpy or torch), or a
    list of B equal-length rows that slice to arrays (e.g. lazy BABILong samples' `SplicedTokens`), of which only
    a window of `READ_AHEAD` tokens per row is built at a time. The window moves to the device in one copy: a
    copy per segment from pageable memory would wait for the GPU to finish all queued work every segment."""
    if not isinstance(tokens, (list, tuple)):
        x = _as_tensor(tokens, device)
        return x.shape[0], x.shape[1], lambda s, e: x[:, s:e]
    lengths = {len(r) for r in tokens}
    if len(lengths) != 1:
        raise ValueError(f"the rows of a batch must have one length, got lengths {sorted(lengths)}; batch samples of one length")
    L = lengths.pop()
    window = {"start": 0, "end": 0, "x": None}

    def get(s, e):
        if not (window["start"] <= s and e <= window["end"]):
            end = max(e, min(s + READ_AHEAD, L))
            block = torch.from_numpy(np.stack([np.asarray(r[s:end]) for r in tokens])).long()
            if device is not None and torch.device(device).type == "cuda":
                block = block.pin_memory().to(device, non_blocking=True)
            window.update(start=s, end=end, x=block)
        return window["x"][:, s - window["start"] : e - window["start"]]
    return len(tokens), L, get


def model_device(model) -> torch.device:
    """The device of the model's weights (inputs are moved there)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class StreamResult:
    logits: torch.Tensor  # [B, P, V] logits at the requested positions only
    state: object  # the state after the last segment
    tokens: int  # tokens processed per sample
    totals: dict = field(default_factory=dict)  # numbers the model reports in aux (e.g. FLOPs), summed over segments


def add_numbers(totals: dict, aux: dict) -> None:
    """Add the numbers of `aux` (e.g. FLOPs a model reports) into `totals`, key by key."""
    for k, v in aux.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            totals[k] = totals.get(k, 0) + v


@torch.inference_mode()
def stream(model, tokens, positions, segment_len: int | None = None, state=None, compile: bool = False,
           progress=None, compile_mode: str = "default", start: int = 0, snapshot=None) -> StreamResult:
    """Run `tokens` ([B, L], numpy or torch, or a list of B rows read a window at a time, see `_slicer`) through
    `model` segment by segment and keep the logits at `positions` (indices into L, shared by the batch) only: a
    million-token sample never materialises more than one segment of hidden states.
    compile: run the full-length segments that hold no kept position (all but a few) through
    `compiled_forward(model, compile_mode)`; the first call per batch size compiles (seconds to tens of seconds).
    With compile_mode "reduce-overhead" on a GPU each such segment is one CUDA graph replay.
    progress: called as progress(tokens_done, L) after every segment (on a GPU, the segments queued so far).
    start, snapshot: resuming a long stream. `snapshot(tokens_done, state, totals)` is called after every segment
    that keeps no logits; a caller that saves what it gets can later pass `start=tokens_done, state=state` and
    continue from there (the segments before `start` are skipped: `start` must be a segment boundary, and no kept
    position may lie before it). `totals` then counts the resumed part only."""
    device = model_device(model)
    B, L, get = _slicer(tokens, device)
    seg = segment_len or model.config.segment_len
    positions = sorted(int(p) for p in positions)
    if positions and not (0 <= positions[0] and positions[-1] < L):
        raise ValueError(f"positions must lie in [0, {L}), got {positions[0]}..{positions[-1]}")
    bounds = segment_bounds(L, seg)
    if start:
        if start not in {s for s, _ in bounds}:
            raise ValueError(f"start={start} is not a segment boundary of a {L}-token stream in segments of {seg} "
                             f"(resume from a tokens_done that snapshot reported, or 0)")
        if state is None or (positions and positions[0] < start):
            raise ValueError(f"start={start} needs the state after those tokens (state=) and no kept position before "
                             f"it (got positions from {positions[0] if positions else None})")
        bounds = [(s, e) for s, e in bounds if s >= start]
    # copied here (to the model's device: a resumed state may come from a file): every state the loop sees is then
    # an inference tensor (a compiled forward would otherwise recompile once for the initial state, a view of a parameter)
    state = tree_map(lambda t: t.to(device, copy=True), state if state is not None else model.init_state(B, device))
    kept, p, totals = [], 0, {}
    keep_ok = getattr(model, "accepts_keep", False)  # the model can skip the positions we do not need
    if compile:
        _prepare_compiled(model, get(L - seg, L) if L >= seg else None, state, mode=compile_mode,
                          **({"keep": []} if keep_ok else {}))
    compiled_once, graphs = False, compile_mode == "reduce-overhead"
    for s, e in bounds:
        idx = []
        while p < len(positions) and positions[p] < e:
            idx.append(positions[p] - s)
            p += 1
        if compile and not idx and e - s == seg:  # one graph for all these segments (no answer)
            # packed copies: the strides of a slice (of [B, L], or a state sliced from a segment's hidden states)
            # would make the graph guard on them
            segment = packed(get(s, e))
            # after this stream's first compiled call, every call has the same shapes: evaluate only the
            # guards that tell cached graphs apart (saves ~0.3 ms of guard checks per segment, measured)
            if graphs:  # a new step: the graphs may reuse the memory of the last replay's outputs
                torch.compiler.cudagraph_mark_step_begin()
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=compiled_once):
                out = compiled_call(model, segment, tree_map(packed, state), return_logits=False, mode=compile_mode,
                                    **({"keep": []} if keep_ok else {}))
            compiled_once = True
            # a replay's outputs live in memory the next replay overwrites: the state is copied out of it
            state = tree_map(torch.clone, out.state) if graphs else out.state
            add_numbers(totals, out.aux)
            if progress:
                progress(e, L)
            if snapshot and not kept:  # (after a kept logit a resume would lose it)
                snapshot(e, state, totals)
            continue
        if keep_ok:
            out = model(get(s, e), state, return_logits=False, keep=idx)
            hidden = out.hidden
        else:
            out = model(get(s, e), state, return_logits=False)
            hidden = out.hidden[:, idx]
        state = out.state
        add_numbers(totals, out.aux)
        if idx:
            kept.append(model.logits(hidden))
        if progress:
            progress(e, L)
        if snapshot and not kept:
            snapshot(e, state, totals)
    logits = torch.cat(kept, dim=1) if kept else torch.zeros(B, 0, model.config.vocab_size, device=device)
    return StreamResult(logits.float(), state, L, totals)


def unroll(model, tokens, targets, bptt_depth: int | None = None, segment_len: int | None = None, lm_weight: float = 0.0,
           write_cost: float = 0.0, compile: bool = False, per_sample: bool = False):
    """Training unroll with truncated BPTT.

    tokens: [B, L]; targets: [B, L] long with -100 where there is no answer to predict (the answer
    position holds the answer id). Gradients from a loss in segment j reach back through at most
    `bptt_depth` segments (None = full BPTT): the state is detached at segment boundaries counted from
    the last segment, so the final (answer) segment always gets the full depth.
    lm_weight > 0 adds next-token language-model loss on every position (an auxiliary objective).
    write_cost > 0 adds write_cost * the mean write gate (the fraction of memory rewritten per segment, over the
    segments that get gradients) of a model that reports one (`aux["write_gate"]`: rmt with mem_gate, fam or titans
    with write_skip): a price on rewriting memory, so that segments with nothing to store learn to leave it as it is.
    compile: full-length segments go through `compiled_forward(model)` (fixed-state models; forward and backward
    compiled by torch.compile, the same parameters); a partial first segment runs eagerly.
    Returns (loss, answer accuracy, number of answer targets): the accuracy over answer words. per_sample: the
    accuracy and count are over samples instead, a sample right when every one of its answer words is (exact
    match, as `memlab eval` scores; the same for one-word answers)."""
    device = model_device(model)
    x, y = _as_tensor(tokens, device), _as_tensor(targets, device)
    B, L = x.shape
    seg = segment_len or model.config.segment_len
    bounds = segment_bounds(L, seg)
    n = len(bounds)
    state = model.init_state(B, x.device)
    if compile:
        _prepare_compiled(model, x[:, L - seg :] if L >= seg else None, state)
    total, correct, count, lm_total, lm_count = 0.0, 0, 0, 0.0, 0
    gates, wrong = [], torch.zeros(B, dtype=torch.long, device=x.device)
    cut = [bptt_depth is not None and j > 0 and (n - j) % bptt_depth == 0 for j in range(n)]
    # a segment needs a graph only if a loss after it, before the next cut, can reach it: long samples whose
    # answers sit at the end run their early windows without autograd (same losses and gradients)
    needs, reach = [False] * n, False
    for j in reversed(range(n)):
        reach = reach or lm_weight > 0 or bool((y[:, bounds[j][0] : bounds[j][1]] != -100).any())
        needs[j] = reach
        reach = reach and not cut[j]
    for j, (s, e) in enumerate(bounds):
        if cut[j]:
            state = detach_state(state)
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs[j]):
            if compile and e - s == seg:  # packed copies: the strides of a slice (the segment of [B, L], a state
                # written by a shorter segment) would make the graph guard on them, and recompile per length
                out = compiled_call(model, packed(x[:, s:e]), tree_map(packed, state), return_logits=False)
            else:
                out = model(x[:, s:e], state, return_logits=False)
        state = out.state
        if write_cost > 0:
            if "write_gate" not in out.aux:
                raise ValueError(f"write_cost needs a model with a gated memory write (rmt with mem_gate: true, or fam or titans "
                                 f"with write_skip: true); {type(model).__name__} reports none: set write_cost to 0")
            if out.aux["write_gate"].requires_grad:
                gates.append(out.aux["write_gate"].mean())
        mask = y[:, s:e] != -100
        if mask.any():
            logits = model.logits(out.hidden[mask])
            tgt = y[:, s:e][mask]
            total = total + F.cross_entropy(logits.float(), tgt, reduction="sum")
            hit = logits.argmax(-1) == tgt
            correct += hit.sum().item()
            count += int(mask.sum())
            wrong.index_add_(0, mask.nonzero()[:, 0], (~hit).long())
        if lm_weight > 0:
            nxt = x[:, s + 1 : e + 1]
            h = out.hidden[:, : nxt.shape[1]]
            lm_total = lm_total + F.cross_entropy(model.logits(h).flatten(0, 1).float(), nxt.flatten(), reduction="sum")
            lm_count += nxt.numel()
    loss = total / max(count, 1)
    if lm_weight > 0 and lm_count:
        loss = loss + lm_weight * lm_total / lm_count
    if gates:
        loss = loss + write_cost * torch.stack(gates).mean()
    if per_sample:
        asked = (y != -100).any(1)
        samples = int(asked.sum())
        return loss, int(((wrong == 0) & asked).sum()) / max(samples, 1), samples
    return loss, correct / max(count, 1), count
