"""What a recurrent memory keeps: how strongly each segment changes the state, at segments that hold a fact
against segments of haystack alone. A ratio above 1 is the measured form of "keeps facts, forgets noise".

The update of segment t is ||s_t - s_{t-1}|| / ||s_{t-1}||, over every tensor of the state together (RMT's memory
vectors, ARMT's A and z, Titans' memory weights and momenta, the sleep model's fast weights). The measure is the
same for every model with a fixed-size state. It is per segment because that is where the contract writes state.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.base import tree_leaves
from ..stream import _as_tensor, model_device, segment_bounds


@torch.inference_mode()
def state_updates(model, tokens, segment_len: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Relative state change per segment for each sample: ([B, segments], segment bounds)."""
    if not getattr(model, "fixed_state", False):
        raise ValueError(f"{type(model).__name__} has a state that grows with the context; its per-segment update "
                         "is the new keys and values, not a change of a fixed memory")
    x = _as_tensor(tokens, model_device(model))
    B, L = x.shape
    bounds = segment_bounds(L, segment_len or model.config.segment_len)
    state = model.init_state(B, x.device)
    # the memory: the whole state, or the fields a model names (FAM: its feedback memory, not its attention window)
    fields = getattr(model, "memory_fields", None)
    flat = lambda st: torch.cat([t.reshape(B, -1).float() for t in tree_leaves(  # noqa: E731
        st if fields is None else [getattr(st, f) for f in fields])], 1)
    prev = flat(state)
    out = np.zeros((B, len(bounds)))
    for j, (s, e) in enumerate(bounds):
        state = model(x[:, s:e], state, return_logits=False).state
        cur = flat(state)
        out[:, j] = ((cur - prev).norm(dim=1) / prev.norm(dim=1).clamp_min(1e-12)).cpu().numpy()
        prev = cur
    return out, bounds


def fact_segments(bounds, fact_spans) -> np.ndarray:
    """Boolean per segment: does any fact token fall in it."""
    has = np.zeros(len(bounds), dtype=bool)
    for a, b in fact_spans:
        for j, (s, e) in enumerate(bounds):
            if a < e and b > s:
                has[j] = True
    return has


def fact_noise_ratio(updates: np.ndarray, masks: list[np.ndarray], skip_last: bool = True) -> dict:
    """Mean update of fact segments over mean update of haystack-only segments, pooled over samples (each
    sample's segments weighted equally), with the per-sample ratios. The last segment (the question's) is left
    out by default: it holds the question, not just a fact or noise. So is the first: it changes the initial state
    (ARMT's starts at zero, so its relative change is unbounded)."""
    fact, noise, per = [], [], []
    for u, m in zip(updates, masks):
        u, m = (u[1:-1], m[1:-1]) if skip_last else (u[1:], m[1:])
        if m.any() and (~m).any():
            fact.append(u[m].mean())
            noise.append(u[~m].mean())
            per.append(u[m].mean() / max(u[~m].mean(), 1e-12))
    if not per:
        raise ValueError("no sample has both fact segments and haystack-only segments; use longer samples")
    per = np.array(per)
    return {"ratio": float(np.mean(fact) / max(np.mean(noise), 1e-12)), "fact_update": float(np.mean(fact)),
            "noise_update": float(np.mean(noise)), "per_sample_ratio_mean": float(per.mean()),
            "per_sample_ratio_sem": float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else None,
            "share_of_samples_above_1": float((per > 1).mean()), "samples": len(per)}


# ---- inside the write: per-token surprise (Titans), fast-weight writes (sleep), write gates (ARMT) ---------------

class _Recorder:
    """Patches a module-level function for the duration of a `with`, recording what `probe(original, *args)`
    derives from each call."""

    def __init__(self, module, name: str, probe):
        self.module, self.name, self.probe, self.calls = module, name, probe, []

    def __enter__(self):
        self.orig = getattr(self.module, self.name)

        def wrapped(*args, **kw):
            out = self.orig(*args, **kw)
            self.calls.append(self.probe(self.orig, *args, **kw))
            return out

        setattr(self.module, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.orig)


def _titans_probe(memory_chunks, W, S, k, v, q, theta, eta, alpha, chunk):
    """Per token of a memory_chunks call: the surprise ||grad l(M; x_t)|| at its chunk's starting weights and the
    write theta_t * surprise (what the step moves). Re-runs the chunk recursion one chunk at a time (analysis only)."""
    from ..models.titans import token_grads

    T, surprise = k.shape[1], []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        grads = token_grads(W, k[:, s:e], v[:, s:e])  # each gradient is outer(err, act): its norm is |err| |act|
        surprise.append(sum((err.norm(dim=-1) * act.norm(dim=-1)) ** 2 for err, act in grads).sqrt())
        _, W, S = memory_chunks(W, S, k[:, s:e], v[:, s:e], q[:, s:e], theta[:, s:e], eta[:, s:e], alpha[:, s:e], chunk)
    u = torch.cat(surprise, 1)
    return {"surprise": u, "write": theta * u}


def _sleep_probe(_, S, q, k, v, alpha, beta):
    """Per token: the strength of its fast-weight write, beta_t ||v_t - S_{t-1} k_t|| (k unit length), summed
    over heads; the recursion S_t = alpha_t S_{t-1} + beta_t e_t k_t^T run token by token (analysis only)."""
    w = []
    for t in range(q.shape[2]):
        kt = k[:, :, t]
        err = v[:, :, t] - (S @ kt[..., None])[..., 0]
        S = alpha[:, :, t, None, None] * S + beta[:, :, t, None, None] * err[..., None] * kt[:, :, None, :]
        w.append((beta[:, :, t] * err.norm(dim=-1)).sum(1))
    return {"write": torch.stack(w, 1)}


def _armt_probe(_, A, z, f, v, beta, u=None):
    """Per segment (one delta write per layer): the mean write gate over heads and memory tokens (with write_skip,
    beta * u: what is written)."""
    return {"gate": (beta if u is None else beta * u).mean(dim=(1, 2, 3))}


@torch.inference_mode()
def token_writes(model, tokens, segment_len: int | None = None) -> dict:
    """What each token (Titans, sleep) or segment (ARMT) writes into the memory, from the models' own internals:
    Titans: 'surprise' and 'write' per token [B, L] (summed over memory layers); sleep: 'write' per token [B, L]
    (wake pass and consolidation passes, summed over layers); ARMT: 'gate' per segment [B, segments] (the write
    gate, averaged over layers, heads and memory tokens)."""
    from ..models import armt, sleep, titans

    kind = getattr(model.config, "kind", "")
    x = _as_tensor(tokens, model_device(model))
    B, L = x.shape
    bounds = segment_bounds(L, segment_len or model.config.segment_len)
    if kind == "titans":
        rec = _Recorder(titans, "memory_chunks", _titans_probe)
    elif kind == "sleep":
        rec = _Recorder(sleep, "gated_delta_chunk", _sleep_probe)
    elif kind == "armt":
        rec = _Recorder(armt, "delta_write", _armt_probe)
    else:
        raise ValueError(f"token_writes reads the memory internals of titans, sleep and armt models, not {kind!r}; "
                         "use state_updates for the per-segment state change of any fixed-state model")
    out: dict = {}
    state = model.init_state(B, x.device)
    with rec:
        for s, e in bounds:
            rec.calls.clear()
            state = model(x[:, s:e], state, return_logits=False).state
            for key in rec.calls[0]:
                parts = [c[key].float() for c in rec.calls]
                if kind == "armt":  # one value per layer per segment
                    out.setdefault(key, []).append(torch.stack(parts, 0).mean(0)[:, None])
                    continue
                total = torch.zeros(B, e - s, device=x.device)
                for p in parts:  # every call covers the segment's tokens (one layer, one pass)
                    if p.shape[1] != e - s:
                        raise ValueError(f"a memory call saw {p.shape[1]} positions in a segment of {e - s}")
                    total += p
                out.setdefault(key, []).append(total)
    return {k: torch.cat(v, 1).cpu().numpy() for k, v in out.items()} | {"bounds": bounds}


def token_fact_ratio(values: np.ndarray, fact_spans_per_sample, question_starts) -> dict:
    """Mean per-token value at fact tokens over the mean at haystack tokens (the question and what follows it
    left out), pooled, with the share of samples whose own ratio is above 1."""
    fact, noise, per = [], [], []
    for row, spans, q in zip(values, fact_spans_per_sample, question_starts):
        m = np.zeros(len(row), dtype=bool)
        for a, b in spans:
            m[a:b] = True
        hay = ~m
        hay[q:] = False
        m[q:] = False
        if m.any() and hay.any():
            fact.append(row[m].mean())
            noise.append(row[hay].mean())
            per.append(row[m].mean() / max(row[hay].mean(), 1e-12))
    if not per:
        raise ValueError("no sample has both fact tokens and haystack tokens before its question")
    return {"ratio": float(np.mean(fact) / max(np.mean(noise), 1e-12)), "fact_mean": float(np.mean(fact)),
            "noise_mean": float(np.mean(noise)), "share_of_samples_above_1": float((np.array(per) > 1).mean()),
            "samples": len(per)}
