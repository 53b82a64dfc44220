"""TransformerFAM (Hwang et al., arXiv:2404.09173): block sliding-window attention plus feedback attention
memory, a transformer's working memory made of its own activations (no new weights but the initial FAM).

The sequence is processed in blocks of `block` tokens. In every layer l, for block tau:
- block queries attend to [the previous FAM of layer l | the memory segment (keys/values of the last
  `mem_blocks` blocks at layer l) | the current block, causally];
- the F FAM queries (the previous FAM of layer l) attend to [the previous FAM | the current block] and pass
  through the layer's own feed-forward: the result is layer l's FAM for block tau + 1 (Algorithm 2).
FAM tokens sit at positions just after the block they summarise. The initial FAM is learned. The state is
the FAM activations per layer plus the memory segment's keys/values, held at their full size from the start
(slots before the sequence's first token are masked out) and the position as a tensor, so that every segment sees
the same shapes and `torch.compile` can run it (`fixed_state`). With F = 0 this is block sliding-window attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import ModelOutput, SequenceModel, check_options
from .blocks import MLP, Attention, ShortConv, apply_rotary, hard_decision, init_weights, rotary_tables


@dataclass
class FAMConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # blocks of the transformer
    n_heads: int = 4  # attention heads per layer
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    block: int = 64  # tokens per attention block
    mem_blocks: int = 1  # previous blocks whose keys/values every block also attends to (the memory segment)
    num_fam: int = 8  # F feedback-memory tokens per layer (0 = block sliding-window attention)
    segment_len: int = 128  # tokens per runner segment (a multiple of block)
    rope_base: float = 10000.0  # rotary base
    conv: int = 0  # short causal depthwise conv kernel before attention, as RMT's recipe (0 = none)
    recency: bool = False  # learned per-head recency bias (ALiBi-initialised); FAM keys count as distance 0
    write_skip: bool = False  # a hard write-or-keep decision per FAM token, layer and block (straight-through); not in
    # the paper (one new linear map per layer): a FAM token that does not write is carried over bit for bit
    kind: str = field(default="fam")  # registry name, saved in config.json


@dataclass
class FAMState:
    fam: torch.Tensor  # [B, L, F, D] each layer's FAM (its input for the next block)
    keys: list  # per layer [B, H, mem_blocks * block, K] rotated keys of the memory segment (the last slots of the
    # sequence so far; slots before its first token are zeros, masked out)
    values: list  # per layer, their values
    pos: torch.Tensor  # 0-d long: absolute position of the next token (a tensor: compiled graphs do not specialise on it)
    conv: list | None = None  # per layer [B, conv-1, D]: inputs the short conv still needs (None without conv)


class FAMLayer(nn.Module):
    def __init__(self, c: FAMConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model)
        self.conv = ShortConv(c.d_model, c.conv) if c.conv > 1 else None
        self.attn = Attention(c.d_model, c.n_heads, c.rope_base, c.recency)
        self.mlp = MLP(c.d_model, c.mlp_mult)
        # write-or-keep, as RMT's write_skip (Skip RNN, arXiv:1708.06834): u = 1[sigmoid(w . rms(new FAM) + b) > 1/2]
        self.skip = nn.Linear(c.d_model, 1) if c.write_skip else None

    def forward(self, x, fam, cache, rope_x, rope_fam_prev, rope_fam_new, conv_tail=None, filled=None):
        """x [B, T, D] one block; fam [B, F, D]; cache (k, v) of the memory segment, `filled` [M] bool: which of its
        slots hold a token (None: all); conv_tail: the short
        conv's preceding inputs. Returns the block's output, the next FAM, the block's own (k, v), the tail and,
        with write_skip, the decision's probability p [B, F, 1] and the straight-through decision u (else None)."""
        H, T, Fn = self.attn.n_heads, x.shape[1], fam.shape[1]
        h, hf = self.norm1(x), self.norm1(fam)
        if self.conv is not None:  # block tokens only: the FAM is not a sequence
            h, conv_tail = self.conv(h, conv_tail)
        q, k, v = rearrange(self.attn.qkv(h), "b t (three h d) -> three b h t d", three=3, h=H)
        qf, kf, vf = rearrange(self.attn.qkv(hf), "b t (three h d) -> three b h t d", three=3, h=H)
        q, k = apply_rotary(q, *rope_x), apply_rotary(k, *rope_x)
        kf = apply_rotary(kf, *rope_fam_prev)
        qf = apply_rotary(qf, *rope_fam_new)  # the FAM queries sit after the block they summarise
        M = cache[0].shape[2]
        keys, vals = torch.cat((kf, cache[0], k), 2), torch.cat((vf, cache[1], v), 2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        ones = lambda n, m: torch.ones(n, m, dtype=torch.bool, device=x.device)  # noqa: E731
        block_mask = torch.cat((ones(T, Fn), ones(T, M) if filled is None else filled.expand(T, M), causal), 1)
        y = self._attend(q, keys, vals, block_mask, Fn, M, T)
        x = x + self.attn.proj(rearrange(y, "b h t d -> b t (h d)"))
        x = x + self.mlp(self.norm2(x))
        p = u = None
        if Fn:  # FAM queries over [previous FAM | current block]; the same feed-forward
            yf = self._attend(qf, torch.cat((kf, k), 2), torch.cat((vf, v), 2), None, Fn, 0, T)
            new = fam + self.attn.proj(rearrange(yf, "b h t d -> b t (h d)"))
            new = new + self.mlp(self.norm2(new))
            if self.skip is not None:  # u = 0 keeps the FAM token exactly as it was
                p = torch.sigmoid(self.skip(F.rms_norm(new, new.shape[-1:])))
                u = hard_decision(p)
                new = fam + u * (new - fam)
            fam = new
        return x, fam, (k, v), conv_tail, p, u

    def _attend(self, q, keys, vals, mask, Fn, M, T):
        """q over keys [FAM (Fn) | memory segment (M) | block (T)]. mask None: the FAM queries, which sit
        after the block. With the recency bias, -slope * distance; FAM keys are at distance 0."""
        if self.attn.recency is None:
            return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
        n_q = q.shape[2]
        q_pos = torch.arange(n_q, device=q.device) + (T if mask is None else 0)  # block starts at 0
        k_pos = torch.arange(-M, T, device=q.device)
        dist = (q_pos[:, None] - k_pos[None, :]).float()
        dist = torch.cat((dist.new_zeros(n_q, Fn), dist), 1)
        bias = -self.attn.recency.exp()[:, None, None] * dist  # [H, queries, keys], added to the scaled scores
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        # one fused kernel instead of matmul, bias, mask, softmax, matmul (measured 1.2x eager; compiled the same)
        return F.scaled_dot_product_attention(q, keys, vals, attn_mask=bias)


class FAM(SequenceModel):
    def __init__(self, config: FAMConfig):
        super().__init__()
        c = self.config = config
        checks = [(c.block >= 1 and c.segment_len % c.block == 0,
                   f"block ({c.block}) must be >= 1 and divide segment_len ({c.segment_len})"),
                  (0 <= c.num_fam <= c.block, f"num_fam (F) must lie in [0, block={c.block}], got {c.num_fam}"),
                  (c.mem_blocks >= 0, f"mem_blocks must be >= 0, got {c.mem_blocks}")]
        check_options(checks)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.fam_init = nn.Parameter(torch.randn(c.n_layers, c.num_fam, c.d_model) * 0.02)  # the only new weights
        self.blocks = nn.ModuleList(FAMLayer(c) for _ in range(c.n_layers))  # named as RMT's: warm starts carry over
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        init_weights(self, c.n_layers)
        for layer in self.blocks:
            if layer.skip is not None:
                nn.init.constant_(layer.skip.bias, 1.0)  # start by writing everywhere (p ~ 0.73): the paper's FAM

    warm_start_fields = ("write_skip",)  # init_from may switch these on (not off): the new module starts as built

    def init_state(self, batch_size: int, device=None) -> FAMState:
        c, hd = self.config, self.config.d_model // self.config.n_heads
        empty = lambda: torch.zeros(batch_size, c.n_heads, c.mem_blocks * c.block, hd, device=device)  # noqa: E731
        fam = self.fam_init.to(device).unsqueeze(0).expand(batch_size, -1, -1, -1)
        conv = [torch.zeros(batch_size, c.conv - 1, c.d_model, device=device) for _ in self.blocks] if c.conv > 1 else None
        pos = torch.zeros((), dtype=torch.long, device=device)
        return FAMState(fam, [empty() for _ in self.blocks], [empty() for _ in self.blocks], pos, conv)

    fixed_state = True  # every segment sees the same state shapes (stream and unroll can compile it)
    memory_fields = ("fam",)  # what analyses of the memory look at (the rest is the attention window and position)

    def _rope(self, start: torch.Tensor, n: int, device):
        return rotary_tables(torch.arange(n, device=device) + start, self.config.d_model // self.config.n_heads,
                             self.config.rope_base)

    def forward(self, tokens: torch.Tensor, state: FAMState | None = None, return_logits: bool = True) -> ModelOutput:
        """tokens [B, T], any T: processed in blocks of `block` cut from the end, as the runner cuts its
        segments (a whole number of blocks), so that streaming equals one whole-sequence pass."""
        from ..stream import segment_bounds

        c = self.config
        B, T = tokens.shape
        state = state if state is not None else self.init_state(B, tokens.device)
        fam, keys, values, pos = list(state.fam.unbind(1)), list(state.keys), list(state.values), state.pos
        tails = list(state.conv) if state.conv is not None else [None] * len(self.blocks)
        x_all, outs, ps, us = self.embed(tokens), [], [], []
        keep = c.mem_blocks * c.block
        slots = torch.arange(-keep, 0, device=tokens.device)  # the memory segment's slots, relative to pos
        for s, e in segment_bounds(T, c.block):  # cut from the end, as the runner cuts its segments
            x, n = x_all[:, s:e], e - s
            rx = self._rope(pos, n, tokens.device)
            rf_prev = self._rope(pos - c.num_fam, c.num_fam, tokens.device)  # after the previous block
            rf_new = self._rope(pos + n, c.num_fam, tokens.device)  # after this one
            filled = slots + pos >= 0
            for i, layer in enumerate(self.blocks):
                x, fam[i], (k, v), tails[i], p, u = layer(x, fam[i], (keys[i], values[i]), rx, rf_prev, rf_new, tails[i],
                                                         filled)
                if p is not None:
                    ps.append(p)
                    us.append(u)
                keys[i] = torch.cat((keys[i], k), 2)[:, :, -keep:] if keep else k[:, :, :0]
                values[i] = torch.cat((values[i], v), 2)[:, :, -keep:] if keep else v[:, :, :0]
            outs.append(x)
            pos = pos + n
        h = self.norm(torch.cat(outs, 1))
        new = FAMState(torch.stack(fam, 1), keys, values, pos, tails if state.conv is not None else None)
        aux = {}
        if ps:  # [B, blocks * layers, F, 1]; write_gate: the fraction of FAM tokens written (unroll's write_cost)
            aux = {"write_p": torch.stack(ps, 1), "write_gate": torch.stack(us, 1)}
        return ModelOutput(self.lm_head(h) if return_logits else None, new, h, aux)
