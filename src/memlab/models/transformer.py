"""Causal transformer with rotary positions. Its state is the KV cache: every past token (full) or the
last `window` tokens (sliding window). Streaming segment by segment equals one full forward."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import ModelOutput, SequenceModel
from .blocks import Block, RecencyFeatures, attention_mask, init_weights, masked_distance, rotary_tables


@dataclass
class TransformerConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    window: int | None = None  # None: full attention (KV cache grows); W: keep only the last W keys/values
    conv: int = 0  # short causal depthwise conv kernel before attention (0 = none)
    recency: bool = False  # learned per-head recency bias on attention scores (ALiBi-initialised)
    rope_base: float = 10000.0  # rotary base
    segment_len: int = 512  # tokens per segment when streamed by the runner
    kind: str = field(default="transformer")  # registry name, saved in config.json


@dataclass
class KVState:
    keys: list  # per layer [B, H, S, K]; S = all past tokens, or <= window
    values: list  # per layer [B, H, S, K]
    conv: list | None = None  # per layer [B, conv-1, D]: inputs the short conv still needs (None without conv)
    pos: int = 0  # absolute position of the next token


class Transformer(SequenceModel):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.window is not None and config.window < 1:
            raise ValueError(f"window must be >= 1 or None (full attention), got {config.window}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_mult, c.rope_base, c.conv, c.recency) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        init_weights(self, c.n_layers)

    def init_state(self, batch_size: int, device=None) -> KVState:
        c, hd = self.config, self.config.d_model // self.config.n_heads
        empty = lambda: torch.zeros(batch_size, c.n_heads, 0, hd, device=device)  # noqa: E731
        conv = [torch.zeros(batch_size, c.conv - 1, c.d_model, device=device) for _ in range(c.n_layers)] if c.conv > 1 else None
        return KVState([empty() for _ in range(c.n_layers)], [empty() for _ in range(c.n_layers)], conv, 0)

    def forward(self, tokens: torch.Tensor, state: KVState | None = None, return_logits: bool = True) -> ModelOutput:
        """tokens: [B, T]; state from init_state or the previous segment."""
        B, T = tokens.shape
        state = state if state is not None else self.init_state(B, tokens.device)
        S = state.keys[0].shape[2]
        q_pos = torch.arange(state.pos, state.pos + T, device=tokens.device)
        k_pos = torch.arange(state.pos - S, state.pos + T, device=tokens.device)
        rope = rotary_tables(q_pos, self.config.d_model // self.config.n_heads, self.config.rope_base)
        plain_causal = S == 0 and (self.config.window is None or self.config.window >= T)
        mask = None if plain_causal else attention_mask(q_pos, k_pos, self.config.window)
        dist = None
        if self.config.recency:  # fused into causal SDPA when nothing is cached (training, first segment)
            dist = RecencyFeatures.make(T, 0, tokens.device) if plain_causal else masked_distance(q_pos, k_pos, self.config.window)
        x = self.embed(tokens)
        keys, values, convs = [], [], []
        for i, block in enumerate(self.blocks):
            x, (k, v), tail = block(x, rope, (state.keys[i], state.values[i]), mask, state.conv[i] if state.conv else None, dist)
            convs.append(tail)
            if self.config.window is not None:
                k, v = k[:, :, -self.config.window :], v[:, :, -self.config.window :]
            keys.append(k)
            values.append(v)
        h = self.norm(x)
        return ModelOutput(self.lm_head(h) if return_logits else None, KVState(keys, values, convs if state.conv else None, state.pos + T), h)
