"""Retrieval heads (Wu et al., arXiv:2404.15574) in a Hugging Face causal LM, and what masking them does.

Retrieval score: while the model copies a needle during greedy decoding, a head scores a hit at a step when its
top attention (the last query's largest weight) lands on a needle token equal to the token being generated; its
score in a trial is hits / needle tokens, averaged over the trials whose answer is right. Heads above 0.1 are
retrieval heads.

Masking replaces a head's attention by uniform attention over the keys it may see (not zeros), through an
attention function registered with transformers (`memlab_heads`) that otherwise computes plain attention. The
same function records each head's top key at every decoding step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

IMPL = "memlab_heads"


@dataclass
class HeadControl:
    """Per-model settings read by the attention function: heads to mask {layer: [heads]}, and whether to
    record the top key of every head for single-token (decoding) steps."""

    masked: dict = field(default_factory=dict)
    record: bool = False
    top: dict = field(default_factory=dict)  # layer -> LongTensor [H] of the last decoding step


def _repeat_kv(x, groups):
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def heads_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention ([B, H, Q, K]) with masked heads set to uniform over their visible keys."""
    ctl: HeadControl | None = getattr(module, "_memlab_heads", None)
    groups = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
    Q, K = query.shape[2], k.shape[2]
    if attention_mask is None:  # causal over the last Q of K positions
        vis = torch.ones(Q, K, dtype=torch.bool, device=query.device).tril(K - Q)
        bias = torch.zeros(Q, K, dtype=query.dtype, device=query.device).masked_fill(~vis, float("-inf"))[None, None]
    else:
        bias = attention_mask[:, :, :, :K]
    w = ((query @ k.transpose(-1, -2)) * scaling + bias).float().softmax(-1).to(query.dtype)
    layer = getattr(module, "layer_idx", None)
    if ctl is not None and ctl.masked.get(layer):
        heads = list(ctl.masked[layer])
        uniform = bias.float().softmax(-1).to(query.dtype).expand(w.shape[0], len(heads), Q, K)
        w = w.clone()
        w[:, heads] = uniform
    if ctl is not None and ctl.record:  # the last query's top key per head (the one that predicts the next token)
        ctl.top[layer] = w[0, :, -1].argmax(-1).cpu()
    out = (w @ v).transpose(1, 2).contiguous()
    return out, w


def install(model) -> HeadControl:
    """Route the model's attention through `heads_attention`; returns the control object (no heads masked)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPL, heads_attention)
    AttentionMaskInterface.register(IMPL, eager_mask)
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers with q_proj and layer_idx (Llama-style); "
                         "the head analysis needs a model whose attention module it can route")
    ctl = HeadControl()
    for m in layers:
        m._memlab_heads = ctl
    model.set_attn_implementation(IMPL)
    return ctl


def step_hits(top: dict, generated: int, prompt_ids: list[int], needle: set) -> np.ndarray:
    """[layers, heads] 1 where the head's top key is a needle position holding the generated token."""
    L = max(top) + 1
    H = len(next(iter(top.values())))
    hits = np.zeros((L, H))
    for layer, idx in top.items():
        for h, j in enumerate(idx.tolist()):
            if j in needle and j < len(prompt_ids) and prompt_ids[j] == generated:
                hits[layer, h] = 1.0
    return hits


def retrieval_scores(trials) -> np.ndarray:
    """Every head's retrieval score from needle trials, each (hits [layers, heads] summed over its decoding steps,
    tokens copied, answered right): hits / tokens copied, averaged over the trials answered right.
    Raises ValueError when no trial was answered right (no score is defined then)."""
    right = [np.asarray(h, dtype=float) / max(n, 1) for h, n, ok in trials if ok]
    if not right:
        raise ValueError(f"none of the {len(trials)} needle trials was answered right: retrieval scores are averaged "
                         "over right answers only; use shorter inputs or a model that copies the needle")
    return np.mean(right, axis=0)


def retrieval_heads(scores, threshold: float = 0.1) -> list[tuple[int, int, float]]:
    """(layer, head, score) of the heads above threshold, highest first (Wu et al.'s retrieval heads at 0.1)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, axis=None, kind="stable")
    H = scores.shape[1]
    return [(int(i // H), int(i % H), float(scores.flat[i])) for i in order if scores.flat[i] > threshold]


@torch.inference_mode()
def greedy_with_heads(model, ctl: HeadControl, prompt_ids: list[int], needle: set, max_new_tokens: int, eos=()):
    """Greedy decoding that scores every step: returns (generated ids, [layers, heads] hit counts), where a step's
    hits compare each head's top key with the token that step generates."""
    ctl.record, ctl.top = True, {}
    try:
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        hits, gen = step_hits(ctl.top, nxt, prompt_ids, needle), []
        while nxt not in eos and len(gen) < max_new_tokens:
            gen.append(nxt)
            if len(gen) == max_new_tokens:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
            nxt = int(out.logits[0, -1].argmax())
            hits += step_hits(ctl.top, nxt, prompt_ids, needle)
    finally:
        ctl.record = False
    return gen, hits


# ---- memlab's own attention models ------------------------------------------------------------------------------

def _explicit_attention(attn, ctl: HeadControl, layer: int):
    """A forward for memlab's blocks.Attention that writes the attention weights out (same result as the fused
    paths), makes the masked heads uniform over their visible keys, and records each head's top key for the
    last query."""
    from einops import rearrange

    from ..models.blocks import RecencyFeatures, apply_rotary

    def forward(x, rope, cache=None, mask=None, dist=None, rows=None):
        if rows is not None:
            raise ValueError("the head analysis runs whole segments (rows=None)")
        q, k, v = rearrange(attn.qkv(x), "b t (three h k) -> three b h t k", three=3, h=attn.n_heads)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None and cache[0].shape[2] > 0:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-1, -2)) * attn.head_dim**-0.5
        if isinstance(dist, RecencyFeatures):  # causal square segment
            scores = scores + attn.recency.exp()[:, None, None] * (dist.query @ dist.key.T)
            neg = torch.zeros(T, S, device=x.device).masked_fill(torch.ones(T, S, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        elif dist is not None:
            d, neg = dist
            scores = scores - attn.recency.exp()[:, None, None] * d
        elif mask is None:
            neg = torch.zeros(T, S, device=x.device).masked_fill(torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1), float("-inf"))
        else:
            neg = torch.zeros(mask.shape, device=x.device).masked_fill(~mask, float("-inf"))
        w = (scores + neg).softmax(-1)
        heads = list(ctl.masked.get(layer, ()))
        if heads:
            w = w.clone()
            w[:, heads] = neg.softmax(-1).expand(w.shape[0], len(heads), T, S)
        if ctl.record:
            ctl.top[layer] = w[0, :, -1].argmax(-1).cpu()
        return attn.proj(rearrange(w @ v, "b h t k -> b t (h k)")), (k, v)

    return forward


class memlab_heads:
    """Context manager: route every attention layer of a memlab model (transformer, RMT, ...: any model whose
    blocks hold `attn`) through `_explicit_attention`; yields the HeadControl. The model is restored on exit."""

    def __init__(self, model):
        blocks = getattr(model, "blocks", None)
        if not blocks or not all(hasattr(b, "attn") for b in blocks):
            raise ValueError(f"{type(model).__name__} has no blocks with an `attn` module: the head analysis needs "
                             "memlab's transformer blocks")
        self.model, self.ctl = model, HeadControl()

    def __enter__(self) -> HeadControl:
        for i, b in enumerate(self.model.blocks):
            b.attn.forward = _explicit_attention(b.attn, self.ctl, i)
        return self.ctl

    def __exit__(self, *exc):
        for b in self.model.blocks:
            del b.attn.forward  # back to the class's method


@torch.inference_mode()
def answer_with_heads(model, ctl: HeadControl, tokens, needle: set) -> tuple[int, np.ndarray]:
    """One memlab sample streamed whole (one segment); returns (predicted answer id, [layers, heads] hits): a
    head hits when its top key at the answer position is a needle position holding the predicted token."""
    from ..stream import stream

    x = torch.as_tensor(np.asarray(tokens))[None]
    ctl.record, ctl.top = True, {}
    try:
        res = stream(model, x, [x.shape[1] - 1], segment_len=x.shape[1])
    finally:
        ctl.record = False
    pred = int(res.logits[0, 0].argmax())
    return pred, step_hits(ctl.top, pred, x[0].tolist(), needle)
