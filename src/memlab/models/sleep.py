"""Sleep consolidation ("Language Models Need Sleep", arXiv:2605.26099) on a hybrid of attention and fast weights.

Every layer has causal attention over the current chunk only (the context window) beside fast weights S, a
matrix per head updated token by token by the gated delta rule

    S_t = alpha_t S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T,    read out as S_t q_t,

with alpha_t (decay) and beta_t (write strength) in (0, 1) computed from the token, and q, k unit length.
A segment of the runner is one chunk:
- wake: the chunk's tokens run through the stack once; their predictions come from this pass, and S is
  updated along the way;
- sleep: before the chunk is evicted, the stack runs N more passes with no new tokens. Pass n takes the hidden
  states pass n-1 produced (the wake pass's for n = 1) as its input, attends over them and keeps updating S;
- eviction: the keys and values of the chunk are dropped. Only S (one per layer) crosses to the next chunk.
N = 0 is the plain hybrid. Training draws N from `train_passes` per chunk; evaluation uses `sleep_passes`.
Every forward reports the FLOPs of its wake pass and of its sleep passes apart (aux), so accuracy can be set
against consolidation compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import ModelOutput, SequenceModel, check_options
from .blocks import MLP, Attention, RecencyFeatures, ShortConv, init_weights, masked_distance, rotary_tables


@dataclass
class SleepConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # hybrid blocks (attention + fast weights each)
    n_heads: int = 4  # attention heads per block
    fw_heads: int = 4  # fast-weight heads per block (each S is [d_model/fw_heads]^2)
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    segment_len: int = 64  # the chunk: tokens the attention sees before they are evicted
    window: int | None = None  # sliding attention window inside the chunk (None = the whole chunk)
    sleep_passes: int = 1  # N consolidation passes per chunk at evaluation
    train_passes: list | None = None  # [lo, hi]: N drawn uniformly per chunk in training (None = sleep_passes)
    conv: int = 0  # short causal depthwise conv kernel before attention, within a chunk (0 = none)
    recency: bool = False  # learned per-head recency bias on attention scores (ALiBi-initialised)
    rope_base: float = 10000.0  # rotary base
    kind: str = field(default="sleep")  # registry name, saved in config.json


@dataclass
class FastWeightState:
    S: torch.Tensor  # [B, L, H, Dv, Dk] fast weights per layer and head


def gated_delta_reference(S, q, k, v, alpha, beta):
    """The definition, one token at a time. S [B, H, Dv, Dk]; q, k [B, H, T, Dk]; v [B, H, T, Dv];
    alpha, beta [B, H, T]. Returns the reads S_t q_t [B, H, T, Dv] and the last S."""
    outs = []
    for t in range(q.shape[2]):
        kt = k[:, :, t]
        err = v[:, :, t] - (S @ kt[..., None])[..., 0]
        S = alpha[:, :, t, None, None] * S + beta[:, :, t, None, None] * err[..., None] * kt[:, :, None, :]
        outs.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, 2), S


def gated_delta_chunk(S, q, k, v, alpha, beta):
    """The same as gated_delta_reference for a whole chunk at once (exact up to rounding). With c_t the
    cumulative sum of log alpha, the errors e_t = v_t - S_{t-1} k_t solve a unit lower-triangular system
    (I + L) E = V - exp(c_{t-1}) K S_0^T, L_tj = exp(c_{t-1} - c_j) beta_j k_t.k_j (j < t); then
    S_t = exp(c_t) S_0 + sum_{j<=t} exp(c_t - c_j) beta_j e_j k_j^T gives the reads and the last state."""
    T = q.shape[2]
    c = torch.log(alpha).cumsum(-1)  # [B, H, T]
    c_prev = F.pad(c[..., :-1], (1, 0))  # c_{t-1}, 0 for the first token
    strict = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(-1)
    incl = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay_prev = (c_prev[..., :, None] - c[..., None, :]).masked_fill(~strict, float("-inf")).exp()  # [B, H, T, T]
    L = decay_prev * beta[..., None, :] * (k @ k.transpose(-1, -2))
    rhs = v - c_prev.exp()[..., None] * (k @ S.transpose(-1, -2))
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    E = torch.linalg.solve_triangular(eye + L, rhs, upper=False, unitriangular=True)  # [B, H, T, Dv]
    BE = beta[..., None] * E
    decay = (c[..., :, None] - c[..., None, :]).masked_fill(~incl, float("-inf")).exp()
    reads = c.exp()[..., None] * (q @ S.transpose(-1, -2)) + (decay * (q @ k.transpose(-1, -2))) @ BE
    w = (c[..., -1:] - c).exp()  # exp(c_T - c_j)
    S_new = c[..., -1].exp()[..., None, None] * S + (w[..., None] * BE).transpose(-1, -2) @ k
    return reads, S_new


class FastWeights(nn.Module):
    """One layer's fast-weight branch: q, k, v (SiLU; q, k unit length per head), alpha and beta per head, an
    output projection. forward(h [B, T, D], S [B, H, Dv, Dk]) -> (reads projected [B, T, D], new S)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gates = nn.Linear(d_model, 2 * heads)  # decay and write strength
        self.proj = nn.Linear(d_model, d_model, bias=False)
        with torch.no_grad():  # start remembering: decay sigmoid(5) = 0.993 per token, 0.65 over 64 tokens
            self.gates.bias[:heads] = 5.0
            self.gates.bias[heads:] = 0.0

    def forward(self, h, S):
        q, k, v = rearrange(F.silu(self.qkv(h)), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        a, b = rearrange(torch.sigmoid(self.gates(h)), "b t (two h) -> two b h t", two=2)
        reads, S = gated_delta_chunk(S, q, k, v, a, b)
        return self.proj(rearrange(reads, "b h t d -> b t (h d)")), S


class HybridBlock(nn.Module):
    """x + attn(norm x) + fast_weights(norm x), then x + mlp(norm x)."""

    def __init__(self, c: SleepConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model)
        self.conv = ShortConv(c.d_model, c.conv) if c.conv > 1 else None
        self.attn = Attention(c.d_model, c.n_heads, c.rope_base, c.recency)
        self.fw = FastWeights(c.d_model, c.fw_heads)
        self.mlp = MLP(c.d_model, c.mlp_mult)

    def forward(self, x, S, rope, mask, dist):
        h = self.norm1(x)
        if self.conv is not None:
            h, _ = self.conv(h)
        a, _ = self.attn(h, rope, None, mask, dist)
        f, S = self.fw(h, S)
        x = x + a + f
        return x + self.mlp(self.norm2(x)), S


class SleepHybrid(SequenceModel):
    fixed_state = True  # S only: the same size after every chunk

    def __init__(self, config: SleepConfig):
        super().__init__()
        c = self.config = config
        lo_hi = c.train_passes
        checks = [(c.fw_heads >= 1 and c.d_model % c.fw_heads == 0,
                   f"fw_heads must be >= 1 and divide d_model ({c.d_model}); got {c.fw_heads} (memory size zero is not a memory)"),
                  (c.sleep_passes >= 0, f"sleep_passes must be >= 0 (a number of passes), got {c.sleep_passes}"),
                  (lo_hi is None or (len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1]),
                   f"train_passes must be [lo, hi] with 0 <= lo <= hi, got {lo_hi}"),
                  (c.window is None or 1 <= c.window <= c.segment_len,
                   f"window must lie in [1, segment_len={c.segment_len}] (attention never sees past the chunk), got {c.window}")]
        check_options(checks)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(HybridBlock(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        init_weights(self, c.n_layers)
        self._pos_cache: dict = {}

    def init_state(self, batch_size: int, device=None) -> FastWeightState:
        c = self.config
        d = c.d_model // c.fw_heads
        return FastWeightState(torch.zeros(batch_size, c.n_layers, c.fw_heads, d, d, device=device))

    def _positions(self, T: int, device):
        key = (T, str(device))
        if key not in self._pos_cache:
            c = self.config
            pos = torch.arange(T, device=device)
            rope = rotary_tables(pos, c.d_model // c.n_heads, c.rope_base)
            windowed = c.window is not None and c.window < T
            mask = dist = None
            if c.recency:
                dist = masked_distance(pos, pos, c.window) if windowed else RecencyFeatures.make(T, 0, device)
            elif windowed:
                mask = (pos[:, None] - pos[None, :] >= 0) & (pos[:, None] - pos[None, :] < c.window)
            self._pos_cache[key] = (rope, mask, dist)
        return self._pos_cache[key]

    def passes(self) -> int:
        """N for this chunk: drawn from train_passes in training mode, else sleep_passes."""
        lo_hi = self.config.train_passes
        if self.training and lo_hi is not None:
            return int(torch.randint(lo_hi[0], lo_hi[1] + 1, ()).item())
        return self.config.sleep_passes

    def pass_flops(self, B: int, T: int) -> float:
        """FLOPs (2 per multiply-add) of one pass of the stack over T tokens: the linear layers, attention's
        scores and mixing, and the chunked delta rule (K K^T, Q K^T, the mixing, the triangular solve, and the
        products with S). Element-wise work is not counted."""
        c = self.config
        D, H = c.d_model, c.fw_heads
        d = D // H
        linear = (4 + 4 + 2 * c.mlp_mult) * D * D + 2 * H * D  # attention qkv + out, fast-weight qkv + out, MLP, gates
        attention = 4 * T * min(T, c.window or T) * D
        delta = H * (7 * T * T * d + 6 * T * d * d)
        return float(B * c.n_layers * (2 * T * linear + attention + delta))

    def forward(self, tokens: torch.Tensor, state: FastWeightState | None = None, return_logits: bool = True,
                passes: int | None = None) -> ModelOutput:
        """tokens: [B, T], one chunk (T <= segment_len). passes: N for this chunk (default: see passes())."""
        B, T = tokens.shape
        state = state if state is not None else self.init_state(B, tokens.device)
        rope, mask, dist = self._positions(T, tokens.device)
        S = list(state.S.unbind(1))
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):  # wake: the predictions
            x, S[i] = block(x, S[i], rope, mask, dist)
        h = self.norm(x)
        n = self.passes() if passes is None else passes
        if n < 0:
            raise ValueError(f"passes must be >= 0, got {n}")
        for _ in range(n):  # sleep: no new tokens; each pass reads what the previous one produced
            for i, block in enumerate(self.blocks):
                x, S[i] = block(x, S[i], rope, mask, dist)
        aux = {"flops_predict": self.pass_flops(B, T), "flops_sleep": n * self.pass_flops(B, T), "passes": n}
        return ModelOutput(self.lm_head(h) if return_logits else None, FastWeightState(torch.stack(S, 1)), h, aux)
