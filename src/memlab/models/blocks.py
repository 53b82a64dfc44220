"""Shared building blocks: rotary positions, attention with a KV cache and an optional window, MLP, block.

Legend: B batch, T segment length, S cached keys, H heads, K head dim, D model dim.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def rotary_tables(positions: torch.Tensor, dim: int, base: float = 10000.0):
    """cos, sin of shape [T, dim/2] for absolute integer positions [T] (float64 angles: exact up to 1e9+)."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, K]; rotates pairs (x[..., :K/2], x[..., K/2:]) by the position angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def masked_distance(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None):
    """For the recency bias: float [T, S] query-key distances (0 where masked) and an additive mask
    [T, S] (0 where the query may attend, -inf elsewhere). Kept apart so that no inf meets a gradient."""
    keep = attention_mask(q_pos, k_pos, window)
    dist = (q_pos[:, None] - k_pos[None, :]).float().masked_fill(~keep, 0.0)
    return dist, torch.zeros(keep.shape).masked_fill(~keep, float("-inf")).to(dist.device)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [T, S] mask, True where query at q_pos may attend key at k_pos (causal, within window)."""
    diff = q_pos[:, None] - k_pos[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    return mask


class RecencyFeatures(NamedTuple):
    """The recency bias -slope * (i - j) as a dot product of position features, so that causal SDPA (flash,
    no [T, S] score matrix) can apply it: softmax ignores the per-query term -slope * i, leaving
    slope * query[i] . key[j]. Plain keys: query [1, 0], key [j, 0] -> slope * j. Keys that are always
    near (distance 0, like RMT's read memory): key [0, 1], query [., i] -> slope * i, i.e. distance 0.
    Only for a causal square segment (no cache): T == S."""

    query: torch.Tensor  # [T, 2]
    key: torch.Tensor  # [S, 2]
    relative: torch.Tensor | None = None  # [T, S] query . key, -inf above the diagonal (short segments only)

    @staticmethod
    def make(n: int, near: int = 0, device=None) -> "RecencyFeatures":
        """n positions 0..n-1 of one segment; the first `near` keys are always at distance 0."""
        pos = torch.arange(n, dtype=torch.float32, device=device)
        query = torch.stack((torch.ones_like(pos), pos), -1)
        key = torch.stack((pos, torch.zeros_like(pos)), -1)
        key[:near] = torch.tensor([0.0, 1.0], device=device)
        relative = None
        if n <= 512:  # small enough to keep the written-out scores' bias: [n, n]
            relative = (query @ key.T).masked_fill(torch.ones(n, n, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return RecencyFeatures(query, key, relative)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's geometric slopes 2^(-8 h / H), h = 1..H (Press et al., 2021)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope_base: float = 10000.0, recency: bool = False):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.head_dim, self.rope_base = n_heads, d_model // n_heads, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        # learned per-head recency bias -slope_h * distance, initialised at ALiBi's slopes
        self.recency = nn.Parameter(alibi_slopes(n_heads).log()) if recency else None

    def forward(self, x, rope, cache=None, mask=None, dist=None, rows=None):
        """x: [B, T, D]; rope: (cos, sin) for the T new positions or None; cache: (k, v) [B, H, S, K] of
        past keys (already rotated) or None; mask: bool [T, S+T] or None for plain causal; dist: with the
        recency bias, (distances, additive mask) [T, S+T] from masked_distance, used instead of mask, or
        RecencyFeatures (same bias, fused into causal SDPA; no cache).
        rows: long [R], no cache: compute the output of these query rows only (plain causal, or recency
        given as RecencyFeatures).
        Returns y [B, T or R, D] and the new (k, v) = cache + this segment's keys and values."""
        q, k, v = rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None and cache[0].shape[2] > 0:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        if rows is not None:  # a few query rows: small [R, S] scores, written out
            scores = (q[:, :, rows] @ k.transpose(-1, -2)) * self.head_dim**-0.5
            if self.recency is not None:
                scores = scores + self.recency.exp()[:, None, None] * (dist.query[rows] @ dist.key.T)
            allowed = torch.arange(k.shape[2], device=x.device)[None, :] <= rows[:, None]
            y = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v
        elif self.recency is not None and isinstance(dist, RecencyFeatures) and dist.relative is not None \
                and not torch.is_grad_enabled():
            # inference on a short segment (an RMT segment): scores written out; on this CPU at T = 160, 1.3x
            # faster than SDPA eager, and torch.compile fuses bias and softmax
            bias = self.recency.exp()[:, None, None] * dist.relative
            y = ((q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + bias).softmax(dim=-1) @ v
        elif self.recency is not None and isinstance(dist, RecencyFeatures):  # fused: no [T, S] scores in memory
            slope = self.recency.exp()[:, None, None]  # [H, 1, 1]
            qf = (slope * dist.query).expand(q.shape[0], -1, -1, -1)  # [B, H, T, E]
            kf = dist.key.expand(k.shape[0], self.n_heads, -1, -1)  # [B, H, S, E]
            E = qf.shape[-1]
            q2, k2 = torch.cat((q * self.head_dim**-0.5, qf), -1), torch.cat((k, kf), -1)
            y = F.scaled_dot_product_attention(q2, k2, F.pad(v, (0, E)), is_causal=True, scale=1.0)[..., : self.head_dim]
        elif self.recency is not None:  # dist = (distances, additive -inf mask) from masked_distance
            # written out (with a KV cache or window): on CPU ~2x faster than SDPA with a float mask (its math path)
            d, neg = dist
            scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 - self.recency.exp()[:, None, None] * d + neg
            y = scores.softmax(dim=-1) @ v
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(y, "b h t k -> b t (h k)")), (k, v)


def hard_decision(p: torch.Tensor) -> torch.Tensor:
    """Straight-through write-or-keep: forward 1[p > 1/2] exactly (0 or 1), backward the gradient of p
    (as in Skip RNN, arXiv:1708.06834). Used by the write_skip options of rmt, armt, fam and titans."""
    return (p > 0.5).to(p.dtype) + p - p.detach()


class MLP(nn.Module):
    def __init__(self, d_model: int, mult: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, mult * d_model, bias=False)
        self.proj = nn.Linear(mult * d_model, d_model, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class ShortConv(nn.Module):
    """Causal depthwise convolution over the last `kernel` positions (H3 / Based / Mamba style "short conv").
    It hands each token its neighbours directly, so attention can match on (token, context) in one hop.
    x: [B, T, D]; tail: [B, kernel-1, D] inputs preceding x (zeros at the start of a sequence)."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        # random init (as nn.Conv1d): every token starts with a random mix of its neighbours
        self.weight = nn.Parameter(torch.empty(d_model, kernel).uniform_(-kernel**-0.5, kernel**-0.5))

    def forward(self, x, tail=None):
        B, T, D = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.kernel - 1, D)
        xp = torch.cat((tail, x), dim=1)  # [B, K-1+T, D]
        # y_t = sum_k weight[:, k] * x_{t-k} over a sliding-window view [B, T, D, K] (oldest first): at these
        # widths ~1.7x faster on CPU than F.conv1d(groups=D) (measured), and torch.compile fuses it
        y = (xp.unfold(1, self.kernel, 1) * self.weight.flip(-1)).sum(-1)
        return x + y, xp[:, xp.shape[1] - (self.kernel - 1) :]


class Block(nn.Module):
    """Pre-norm residual block: x + attn(conv(norm(x))), then x + mlp(norm(x)). conv=0: no short conv."""

    def __init__(self, d_model: int, n_heads: int, mlp_mult: int = 4, rope_base: float = 10000.0, conv: int = 0,
                 recency: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.conv = ShortConv(d_model, conv) if conv > 1 else None
        self.attn = Attention(d_model, n_heads, rope_base, recency)
        self.mlp = MLP(d_model, mlp_mult)

    def forward(self, x, rope, cache=None, mask=None, conv_tail=None, dist=None, rows=None):
        """rows: output only these positions (no cache; see Attention)."""
        h = self.norm1(x)
        if self.conv is not None:
            h, conv_tail = self.conv(h, conv_tail)
        a, kv = self.attn(h, rope, cache, mask, dist, rows)
        x = (x if rows is None else x[:, rows]) + a
        return x + self.mlp(self.norm2(x)), kv, conv_tail


def init_weights(module: nn.Module, n_layers: int, std: float = 0.02):
    """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers)."""
    for name, p in module.named_parameters():
        if p.dim() < 2 or name.endswith("conv.weight") or name.endswith("recency"):
            continue
        scale = 1 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 1.0
        nn.init.normal_(p, mean=0.0, std=std * scale)
