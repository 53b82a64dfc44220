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
    prev = torch.cat([t.reshape(B, -1).float() for t in tree_leaves(state)], 1)
    out = np.zeros((B, len(bounds)))
    for j, (s, e) in enumerate(bounds):
        state = model(x[:, s:e], state, return_logits=False).state
        cur = torch.cat([t.reshape(B, -1).float() for t in tree_leaves(state)], 1)
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
