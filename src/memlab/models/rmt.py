"""Recurrent Memory Transformer (Bulatov et al., arXiv:2207.06881 / 2304.11062), decoder form.

Each segment is processed as [read memory (M) | segment tokens (T) | write memory (M)] under one causal
mask: segment tokens read the memory written by the previous segment, the write tokens see the whole
segment, and their final hidden states become the next memory. The state is M vectors: fixed size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import ModelOutput, SequenceModel
from .blocks import Block, RecencyFeatures, hard_decision, init_weights, rotary_tables


@dataclass
class RMTConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    num_mem: int = 16  # M memory vectors (the whole state)
    conv: int = 0  # short causal depthwise conv kernel before attention, within a segment (0 = none)
    recency: bool = False  # learned per-head recency bias on attention scores (ALiBi-initialised)
    memory_always_near: bool = False  # with recency: read-memory keys get distance 0 (memory is never "far back")
    mem_gate: bool = False  # gated write: mem <- mem + g * (write - mem), g = sigmoid(W write); False = plain RMT
    write_skip: bool = False  # with mem_gate: a hard write-or-keep decision per entry and segment (straight-through)
    segment_len: int = 128  # tokens per segment (positions restart in every segment)
    rope_base: float = 10000.0  # rotary base
    kind: str = field(default="rmt")  # registry name, saved in config.json


@dataclass
class MemoryState:
    memory: torch.Tensor  # [B, M, D]


class RMT(SequenceModel):
    def __init__(self, config: RMTConfig):
        super().__init__()
        if config.num_mem < 1:
            raise ValueError(f"num_mem must be >= 1 (memory size zero leaves nothing to recur), got {config.num_mem}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.mem_init = nn.Parameter(torch.randn(c.num_mem, c.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_mult, c.rope_base, c.conv, c.recency) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        self.gate = nn.Linear(c.d_model, c.d_model) if c.mem_gate else None
        if c.write_skip and not c.mem_gate:
            raise ValueError("write_skip gates the gated write: set mem_gate: true as well (or write_skip: false)")
        # write-or-keep (as in Skip RNN, Campos et al., arXiv:1708.06834): u = 1[sigmoid(w . write + b) > 1/2] per
        # memory entry, with the sigmoid's gradient (straight-through); u = 0 leaves the entry exactly as it was, so a
        # fact can cross any number of segments that do not write over it. A soft gate cannot: 1M tokens are ~7,800
        # segments of 128.
        self.skip = nn.Linear(c.d_model, 1) if c.write_skip else None
        init_weights(self, c.n_layers)
        if self.skip is not None:
            nn.init.constant_(self.skip.bias, 1.0)  # start by writing everywhere (p ~ 0.73), as the soft gate did
        self._pos_cache: dict = {}

    def _positions(self, n: int, device):
        """Rotary tables and masked distances for one [M+T+M] segment; positions restart every segment,
        so they are computed once per length and reused."""
        key = (n, str(device))
        if key not in self._pos_cache:
            pos = torch.arange(n, device=device)
            rope = rotary_tables(pos, self.config.d_model // self.config.n_heads, self.config.rope_base)
            dist = None
            if self.config.recency:  # the bias -slope * distance, fused into causal SDPA
                dist = RecencyFeatures.make(n, self.config.num_mem if self.config.memory_always_near else 0, device)
            self._pos_cache[key] = (rope, dist)
        return self._pos_cache[key]

    def init_state(self, batch_size: int, device=None) -> MemoryState:
        return MemoryState(self.mem_init.to(device).unsqueeze(0).expand(batch_size, -1, -1))

    warm_start_fields = ("write_skip",)  # init_from may switch these on (not off): the new module starts as built
    accepts_keep = True  # stream() may pass keep=: the positions whose hidden states it needs
    fixed_state = True  # the state has the same shape after every segment (stream(compile=True) can use it)

    def forward(self, tokens: torch.Tensor, state: MemoryState | None = None, return_logits: bool = True,
                keep: list[int] | None = None) -> ModelOutput:
        """tokens: [B, T] with T <= segment_len; state.memory: [B, M, D].
        keep: segment positions whose hidden states are needed (hidden/logits come back for these only); the
        last block then runs only for them and the write memory (same result; measured 11% faster streaming)."""
        B, T = tokens.shape
        M = self.config.num_mem
        mem = (state if state is not None else self.init_state(B, tokens.device)).memory
        x = torch.cat((mem, self.embed(tokens), mem), dim=1)  # [B, M+T+M, D]
        rope, dist = self._positions(x.shape[1], x.device)
        rows = None
        if keep is not None:
            key = (T, tuple(keep), str(x.device))
            if key not in self._pos_cache:
                self._pos_cache[key] = torch.tensor([M + p for p in keep] + list(range(M + T, M + T + M)), device=x.device)
            rows = self._pos_cache[key]
        for i, block in enumerate(self.blocks):
            x, _, _ = block(x, rope, dist=dist, rows=rows if i == len(self.blocks) - 1 else None)
        h = self.norm(x)
        if keep is not None:
            out_h, new_mem = h[:, : len(keep)], h[:, len(keep) :]
        else:
            out_h, new_mem = h[:, M : M + T], h[:, M + T :]
        aux = {}
        if self.gate is not None:  # keep what the write does not replace: noise segments can leave memory as it is
            g = torch.sigmoid(self.gate(new_mem))
            if self.skip is not None:
                p = torch.sigmoid(self.skip(new_mem))  # [B, M, 1]
                g = g * hard_decision(p)
                aux["write_p"] = p
            new_mem = mem + g * (new_mem - mem)
            aux["write_gate"] = g  # [B, M, D]: the fraction of each memory entry rewritten (unroll's write_cost)
        return ModelOutput(self.lm_head(out_h) if return_logits else None, MemoryState(new_mem), out_h, aux)
