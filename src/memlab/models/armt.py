"""Associative Recurrent Memory Transformer (Rodkin et al., arXiv:2407.04841), decoder form on memlab's blocks.

Each segment is [sink (S, optional) | segment tokens (T) | memory tokens (M)] under one causal mask, so the
memory tokens see the whole segment. Every layer l owns an associative memory: a matrix A_l with a normaliser z_l.
- Read: before block l, every position adds A_l phi(q) / (z_l . phi(q)), phi = DPFP (a non-negative feature
  map, normalised to unit length).
- Write: after block l, the memory tokens' outputs m give keys phi(k), values v and gates beta; the delta rule
  adds only what A_l does not already return for that key: A_l += phi(k) (beta (v - A_l phi(k) / z_l . phi(k)))^T,
  and z_l += gamma phi(k) with gamma = clip(1 - z_l . phi(k), 0, 1), so a key written again does not count twice.
The memory tokens are the same learned vectors in every segment (they are not carried): the state is (A, z)
per layer, fixed size, and segment s reads what segments < s wrote.

`write_skip` (not in the paper; as RMT's): a hard write-or-keep decision per memory token, layer and segment,
u = 1[sigmoid(w . rms(m) + b) > 1/2] (straight-through); u scales both beta and gamma, so a segment whose tokens all
keep leaves (A, z) exactly as they were. The soft gate beta alone never reaches zero: over a million tokens its
small writes of book text add up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import ModelOutput, SequenceModel, check_options
from .blocks import Block, RecencyFeatures, hard_decision, init_weights, rotary_tables

EPS = 1e-5  # keeps the normaliser away from zero where nothing was written


@dataclass
class ARMTConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # transformer blocks (each with its own associative memory)
    n_heads: int = 4  # attention heads per block
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    num_mem: int = 16  # M memory tokens that write into the associative memories
    num_sink: int = 0  # S learned tokens at the start of every segment (an attention sink; the reference code's
    # use_sink); with recency they are always at distance 0
    d_mem: int = 32  # key width before the feature map (DPFP makes it 2 * nu * d_mem / assoc_heads per head)
    dpfp_nu: int = 3  # DPFP order nu
    assoc_heads: int = 1  # heads of the associative memory (each with its own A, z)
    conv: int = 0  # short causal depthwise conv kernel before attention, within a segment (0 = none)
    recency: bool = False  # learned per-head recency bias on attention scores (ALiBi-initialised)
    segment_len: int = 128  # tokens per segment (positions restart in every segment)
    rope_base: float = 10000.0  # rotary base
    write_skip: bool = False  # a hard write-or-keep decision per memory token, layer and segment (straight-through)
    kind: str = field(default="armt")  # registry name, saved in config.json


@dataclass
class AssociativeState:
    A: torch.Tensor  # [B, L, H, F, D/H] associative matrices, F = 2 * nu * d_mem / H features per key
    z: torch.Tensor  # [B, L, H, F] normalisers


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection (Schlag et al., 2021): [.., d] -> [.., 2 d nu], non-negative,
    products of the rectified features with their cyclic shifts 1..nu; then scaled to unit length."""
    r = torch.cat((F.relu(x), F.relu(-x)), dim=-1)
    f = torch.cat([r * r.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return F.normalize(f, dim=-1)


def assoc_read(A: torch.Tensor, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A [B, H, F, V], z [B, H, F], features f [B, H, N, F] -> [B, H, N, V]: A^T f / (z . f)."""
    return (f @ A) / ((f * z[:, :, None]).sum(-1, keepdim=True) + EPS)


def delta_write(A, z, f, v, beta, u=None):
    """The delta rule for keys f [B, H, M, F] (unit length), values v [B, H, M, V], gates beta [B, H, M, 1]:
    each key adds beta * (v - what A returns for it); z grows by gamma f, gamma = clip(1 - z . f, 0, 1) (no
    gradient), the share of the key not yet counted. All M keys are written at once, against the old A.
    u [B, 1 or H, M, 1] (write_skip's 0/1 decisions) scales beta and gamma: a key with u = 0 writes nothing."""
    gamma = (1 - (f * z[:, :, None]).sum(-1, keepdim=True)).clamp(0, 1).detach()
    if u is not None:
        beta, gamma = beta * u, gamma * u
    new_A = A + f.transpose(-1, -2) @ (beta * (v - assoc_read(A, z, f)))
    return new_A, z + (gamma * f).sum(-2)


class AssociativeMemory(nn.Module):
    """One layer's read and write projections: q, k (d_model -> d_mem), v (d_model -> d_model, zero at init, so
    an untrained memory returns nothing), and the write gate beta (one per head)."""

    def __init__(self, d_model: int, d_mem: int, heads: int, nu: int, write_skip: bool = False):
        super().__init__()
        self.heads, self.nu = heads, nu
        self.q = nn.Linear(d_model, d_mem, bias=False)
        self.k = nn.Linear(d_model, d_mem, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.beta = nn.Linear(d_model, heads)
        self.skip = nn.Linear(d_model, 1) if write_skip else None  # write_skip's decision, one per memory token

    def features(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return dpfp(rearrange(proj(x), "b n (h k) -> b h n k", h=self.heads), self.nu)

    def read(self, x, A, z):
        """x [B, N, D] -> what the memory returns for every position, [B, N, D]."""
        return rearrange(assoc_read(A, z, self.features(self.q, x)), "b h n v -> b n (h v)")

    def write(self, m, A, z):
        """m [B, M, D]: the memory tokens' outputs -> the new (A, z), and with write_skip the decisions'
        probabilities p and the written share beta * u, both [B, H or 1, M, 1] (else None, None)."""
        v = rearrange(self.v(m), "b m (h v) -> b h m v", h=self.heads)
        beta = rearrange(torch.sigmoid(self.beta(m)), "b m h -> b h m ()")
        if self.skip is None:
            return *delta_write(A, z, self.features(self.k, m), v, beta), None, None
        p = rearrange(torch.sigmoid(self.skip(F.rms_norm(m, m.shape[-1:]))), "b m one -> b one m ()")
        u = hard_decision(p)
        return *delta_write(A, z, self.features(self.k, m), v, beta, u), p, beta * u


class ARMT(SequenceModel):
    accepts_keep = True  # stream() may pass keep=: the positions whose hidden states it needs
    fixed_state = True  # the state has the same shape after every segment (stream(compile=True) can use it)
    # warm start from an RMT (train's init_from): its initial memory is what its write tokens hold in a first
    # segment and what its segment tokens read, so it seeds both the memory tokens and the sink
    init_aliases = {"memory": "mem_init", "sink": "mem_init"}

    def __init__(self, config: ARMTConfig):
        super().__init__()
        c = self.config = config
        checks = [(c.num_mem >= 1, f"num_mem must be >= 1 (memory tokens write the memory), got {c.num_mem}"),
                  (c.d_mem >= 1 and c.assoc_heads >= 1 and c.d_mem % c.assoc_heads == 0,
                   f"d_mem ({c.d_mem}) must be >= 1 and divisible by assoc_heads ({c.assoc_heads})"),
                  (c.d_model % c.assoc_heads == 0, f"d_model ({c.d_model}) must be divisible by assoc_heads ({c.assoc_heads})"),
                  (c.dpfp_nu >= 1, f"dpfp_nu must be >= 1, got {c.dpfp_nu}")]
        checks.append((c.num_sink >= 0, f"num_sink must be >= 0, got {c.num_sink}"))
        check_options(checks)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.memory = nn.Parameter(torch.randn(c.num_mem, c.d_model) * 0.02)
        self.sink = nn.Parameter(torch.randn(c.num_sink, c.d_model) * 0.02) if c.num_sink else None
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_mult, c.rope_base, c.conv, c.recency) for _ in range(c.n_layers))
        self.assoc = nn.ModuleList(AssociativeMemory(c.d_model, c.d_mem, c.assoc_heads, c.dpfp_nu, c.write_skip)
                                   for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        init_weights(self, c.n_layers)
        for a in self.assoc:
            nn.init.zeros_(a.v.weight)
            if a.skip is not None:
                nn.init.constant_(a.skip.bias, 1.0)  # start by writing everywhere (p ~ 0.73): the paper's ARMT
        self._pos_cache: dict = {}

    warm_start_fields = ("write_skip",)  # init_from may switch these on (not off): the new module starts as built

    @property
    def features(self) -> int:
        return 2 * self.config.dpfp_nu * self.config.d_mem // self.config.assoc_heads

    def init_state(self, batch_size: int, device=None) -> AssociativeState:
        c = self.config
        shape = (batch_size, c.n_layers, c.assoc_heads, self.features)
        return AssociativeState(torch.zeros(*shape, c.d_model // c.assoc_heads, device=device), torch.zeros(*shape, device=device))

    def _positions(self, n: int, device):
        key = (n, str(device))
        if key not in self._pos_cache:
            rope = rotary_tables(torch.arange(n, device=device), self.config.d_model // self.config.n_heads, self.config.rope_base)
            dist = RecencyFeatures.make(n, self.config.num_sink, device) if self.config.recency else None
            self._pos_cache[key] = (rope, dist)
        return self._pos_cache[key]

    def forward(self, tokens: torch.Tensor, state: AssociativeState | None = None, return_logits: bool = True,
                keep: list[int] | None = None) -> ModelOutput:
        """tokens: [B, T] with T <= segment_len. keep: segment positions whose hidden states are needed (the
        last block then runs only for them and the memory tokens; same result)."""
        B, T = tokens.shape
        S, M = self.config.num_sink, self.config.num_mem
        state = state if state is not None else self.init_state(B, tokens.device)
        parts = [self.embed(tokens), self.memory.expand(B, -1, -1)]
        x = torch.cat([self.sink.expand(B, -1, -1)] + parts if S else parts, dim=1)  # [B, S+T+M, D]
        rope, dist = self._positions(S + T + M, x.device)
        rows = None
        if keep is not None:
            key = (T, tuple(keep), str(x.device))
            if key not in self._pos_cache:
                self._pos_cache[key] = torch.tensor([S + p for p in keep] + list(range(S + T, S + T + M)), device=x.device)
            rows = self._pos_cache[key]
        new_A, new_z, ps, written = [], [], [], []
        for i, (block, mem) in enumerate(zip(self.blocks, self.assoc)):
            A, z = state.A[:, i], state.z[:, i]
            x = x + mem.read(x, A, z)
            x, _, _ = block(x, rope, dist=dist, rows=rows if i == len(self.blocks) - 1 else None)
            A, z, p, w = mem.write(x[:, -M:], A, z)
            new_A.append(A)
            new_z.append(z)
            if p is not None:
                ps.append(p)
                written.append(w)
        h = self.norm(x[:, :-M] if keep is not None else x[:, S:-M])  # the kept rows, or the T segment positions
        # with write_skip: write_p [B, L, 1, M, 1] and write_gate [B, L, H, M, 1] (beta * u: unroll's write_cost)
        aux = {"write_p": torch.stack(ps, 1), "write_gate": torch.stack(written, 1)} if ps else {}
        return ModelOutput(self.lm_head(h) if return_logits else None,
                           AssociativeState(torch.stack(new_A, 1), torch.stack(new_z, 1)), h, aux)
