"""Titans' neural long-term memory (Behrouz et al., arXiv:2501.00663, section 3), the memory that learns at
test time.

The memory is an MLP M (weights W_1..W_L, L >= 1) trained online on the associative loss
l(M; x_t) = ||M(k_t) - v_t||^2. Its surprise is the gradient u_t of that loss; with data-dependent gates
theta_t (step size), eta_t (momentum decay) and alpha_t (forgetting):

    S_t = eta_t S_{t-1} - theta_t u_t,        M_t = (1 - alpha_t) M_{t-1} + S_t.

Retrieval is a forward pass with no update: y_t = M(q_t). Section 3.2's chunked form, used here: the
tokens of a chunk of b take their gradients at the weights M had at the chunk's start, and read with those
weights too (so the chunk's own tokens are never read back before the chunk ends, as with b = 1, where
y_t = M_{t-1}(q_t)). Because every gradient is an outer product (error x activation), the chunk's weighted
sum of gradients is a matrix product; the momentum and forgetting recurrences reduce to per-token weights
computed from cumulative products of the gates. `memory_reference` is the definition token by token
(gradients by autograd), `memory_chunks_reference` the chunked definition; tests hold the fast form to both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mlp_forward(W: list, x: torch.Tensor) -> torch.Tensor:
    """The memory MLP: W = [W_1 .. W_L] each [B, out, in] (per sample); x [B, N, in] -> [B, N, out].
    SiLU between layers, none after the last."""
    for i, w in enumerate(W):
        x = x @ w.transpose(-1, -2)
        if i < len(W) - 1:
            x = F.silu(x)
    return x


def _silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def token_grads(W: list, k: torch.Tensor, v: torch.Tensor):
    """Per-token gradients of ||M(k_t) - v_t||^2 with respect to each W_l, as factors: for layer l, the
    gradient of token t is outer(err_l[t], act_l[t]). Returns [(err_l [B, N, out], act_l [B, N, in])]."""
    acts, zs, x = [], [], k
    for i, w in enumerate(W):
        acts.append(x)
        z = x @ w.transpose(-1, -2)
        zs.append(z)
        x = F.silu(z) if i < len(W) - 1 else z
    g = 2 * (x - v)  # d loss / d output
    out = [None] * len(W)
    for i in range(len(W) - 1, -1, -1):
        out[i] = (g, acts[i])
        if i > 0:
            g = (g @ W[i]) * _silu_grad(zs[i - 1])
    return out


def _gate_weights(eta: torch.Tensor, alpha: torch.Tensor):
    """For one chunk of gates [B, b]: weights that turn the surprises -theta_i u_i of the chunk into the
    momentum and the weights at its end:
        S_end = prod(eta) S_0 + sum_i ws_i (-theta_i u_i),   ws_i = prod_{j>i} eta_j
        M_end = prod(1-alpha) M_0 + wm0 S_0 + sum_i wm_i (-theta_i u_i),
    with c_t = prod_{j>t}(1-alpha_j), P[t, i] = prod_{i<j<=t} eta_j: wm_i = sum_{t>=i} c_t P[t, i] and
    wm0 = sum_t c_t prod_{j<=t} eta_j. Returns (prod eta, ws, prod(1-alpha), wm0, wm)."""
    b = eta.shape[-1]
    le = torch.log(eta.clamp_min(1e-30))
    la = torch.log((1 - alpha).clamp_min(1e-30))
    ce, ca = le.cumsum(-1), la.cumsum(-1)  # inclusive cumulative logs
    incl = torch.ones(b, b, dtype=torch.bool, device=eta.device).tril()
    P = (ce[..., :, None] - ce[..., None, :]).masked_fill(~incl, float("-inf")).exp()  # [B, t, i]
    c = (ca[..., -1:] - ca).exp()  # prod_{j>t} (1 - alpha_j)
    wm = (c[..., :, None] * P).sum(-2)  # [B, i]
    wm0 = (c * ce.exp()).sum(-1)
    ws = (ce[..., -1:] - ce).exp()
    return ce[..., -1].exp(), ws, ca[..., -1].exp(), wm0, wm


def memory_chunks(W: list, S: list, k, v, q, theta, eta, alpha, chunk: int):
    """The chunked neural memory over a sequence. W, S: per-layer weights and momenta [B, out, in];
    k, v, q [B, T, d]; theta, eta, alpha [B, T] in [0, 1]. Returns (reads [B, T, d_out], W, S) where the
    tokens of each chunk read with the weights at its start."""
    T = k.shape[1]
    reads = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        reads.append(mlp_forward(W, q[:, s:e]))
        grads = token_grads(W, k[:, s:e], v[:, s:e])
        pe, ws, pa, wm0, wm = _gate_weights(eta[:, s:e], alpha[:, s:e])
        th = theta[:, s:e]
        new_W, new_S = [], []
        for (err, act), w, m in zip(grads, W, S):
            # sum_i weight_i * (-theta_i) * outer(err_i, act_i) as one product [B, out, b] @ [B, b, in]
            surprise_S = -(err * (ws * th)[..., None]).transpose(-1, -2) @ act
            surprise_M = -(err * (wm * th)[..., None]).transpose(-1, -2) @ act
            new_S.append(pe[:, None, None] * m + surprise_S)
            new_W.append(pa[:, None, None] * w + wm0[:, None, None] * m + surprise_M)
        W, S = new_W, new_S
    return torch.cat(reads, 1), W, S


def _autograd_grads(W: list, k_t, v_t):
    """Gradients of ||M(k_t) - v_t||^2 at W (per sample) by autograd: the independent check of token_grads."""
    with torch.enable_grad():
        Wd = [w.detach().requires_grad_(True) for w in W]
        loss = (mlp_forward(Wd, k_t[:, None]) - v_t[:, None]).pow(2).sum()  # samples are independent: sum
        return torch.autograd.grad(loss, Wd)


def memory_reference(W: list, S: list, k, v, q, theta, eta, alpha):
    """The definition, one token at a time: y_t = M_{t-1}(q_t), u_t = grad l(M_{t-1}; x_t),
    S_t = eta_t S_{t-1} - theta_t u_t, M_t = (1 - alpha_t) M_{t-1} + S_t."""
    reads = []
    for t in range(k.shape[1]):
        reads.append(mlp_forward(W, q[:, t : t + 1]))
        u = _autograd_grads(W, k[:, t], v[:, t])
        g = lambda x: x[:, t, None, None]  # noqa: E731
        S = [g(eta) * s - g(theta) * ut for s, ut in zip(S, u)]
        W = [(1 - g(alpha)) * w + s for w, s in zip(W, S)]
    return torch.cat(reads, 1), W, S


def memory_chunks_reference(W: list, S: list, k, v, q, theta, eta, alpha, chunk: int):
    """The chunked definition, one token at a time: within a chunk every gradient is taken at the chunk's
    starting weights W0 and every read uses W0; the recurrences run token by token."""
    reads = []
    for s in range(0, k.shape[1], chunk):
        W0 = W
        for t in range(s, min(s + chunk, k.shape[1])):
            reads.append(mlp_forward(W0, q[:, t : t + 1]))
            u = _autograd_grads(W0, k[:, t], v[:, t])
            g = lambda x: x[:, t, None, None]  # noqa: E731
            S = [g(eta) * m - g(theta) * ut for m, ut in zip(S, u)]
            W = [(1 - g(alpha)) * w + m for w, m in zip(W, S)]
    return torch.cat(reads, 1), W, S


# ---- the model: neural memory per block, the variants on the (segment, state) contract ----------------------

from dataclasses import dataclass, field  # noqa: E402

from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402

from .base import ModelOutput, SequenceModel, check_options  # noqa: E402
from .blocks import (MLP, Attention, ShortConv, apply_rotary, attention_mask, hard_decision, init_weights,  # noqa: E402
                     rotary_tables)

VARIANTS = ("mac", "mag", "mal", "lmm")


@dataclass
class TitansConfig:
    vocab_size: int = 4096  # word-level vocabulary of the task tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 3  # blocks, each with its own neural memory
    n_heads: int = 4  # attention heads per block
    mlp_mult: int = 4  # MLP hidden = mlp_mult * d_model
    variant: str = "mac"  # mac: memory as context; mag: as a gate; mal: as a layer; lmm: the memory alone
    window: int = 128  # mag, mal: sliding attention window (keys/values of the last window tokens are state)
    mem_depth: int = 2  # layers of the memory MLP (>= 1)
    mem_mult: int = 2  # hidden width of the memory MLP = mem_mult * d_model
    chunk: int = 16  # tokens per chunk of the parallel form (must divide segment_len)
    num_persistent: int = 4  # learned persistent memory tokens every query attends to (mac, mag, mal)
    conv: int = 4  # depthwise causal conv kernel after the q, k, v projections of the memory (1 = none)
    max_lr: float = 0.02  # the inner step size theta_t = max_lr * sigmoid(.) (the memory diverges when it is too large)
    segment_len: int = 128  # tokens per segment (mac attends within a segment)
    attn_conv: int = 0  # short causal depthwise conv before attention, as RMT's recipe (0 = none; conv is the memory's)
    recency: bool = False  # learned per-head recency bias on attention (ALiBi-initialised); persistent tokens: distance 0
    write_skip: bool = False  # a hard learn-or-keep decision per token and memory (straight-through); not in the paper:
    # a token that does not write leaves the memory's weights exactly as they were (its momentum restarts at zero)
    rope_base: float = 10000.0  # rotary base
    kind: str = field(default="titans")  # registry name, saved in config.json


@dataclass
class TitansState:
    W: list  # per block: the memory MLP's weights, [B, out, in] each
    S: list  # per block: their momenta
    tails: list  # per block: {stream name: [B, conv-1, D]} inputs the memory's convolutions still need
    keys: list | None = None  # mag, mal: per block [B, H, <= window, K] rotated keys of the last tokens
    values: list | None = None  # mag, mal: per block, their values
    pos: int = 0  # mag, mal: absolute position of the next token (mac, lmm: always 0, positions restart every segment)


def causal_dwconv(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor):
    """Depthwise causal convolution: x [B, T, D], weight [D, K] (weight[:, 0] on the current token), tail
    [B, K-1, D] the inputs before x. Returns (y [B, T, D], new tail)."""
    xp = torch.cat((tail, x), dim=1)
    y = (xp.unfold(1, weight.shape[1], 1) * weight.flip(-1)).sum(-1)
    return y, xp[:, xp.shape[1] - (weight.shape[1] - 1):]


class NeuralMemory(nn.Module):
    """One block's long-term memory: q, k, v projections (depthwise causal conv, SiLU; q, k unit length,
    section 4.4), the gates theta, eta, alpha from the input, the learned initial weights M_0, and an output
    projection."""

    STREAMS = ("q_read", "q", "k", "v")  # the sequences the convolutions see (their tails are state)

    def __init__(self, c: TitansConfig):
        super().__init__()
        D, H = c.d_model, c.mem_mult * c.d_model
        dims = [D] + [H] * (c.mem_depth - 1) + [D]
        self.init_weights = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in zip(dims, dims[1:]))
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.kernel = max(c.conv, 1)
        self.convs = nn.ParameterDict({s: nn.Parameter(torch.empty(D, self.kernel)) for s in ("q", "k", "v")})
        self.gates = nn.Linear(D, 3)  # theta, eta, alpha
        self.out = nn.Linear(D, D, bias=False)
        self.chunk, self.max_lr = c.chunk, c.max_lr
        # learn-or-keep, as RMT's write_skip (Skip RNN, arXiv:1708.06834): u_t = 1[sigmoid(w . x_t + b) > 1/2] scales
        # theta_t, eta_t and alpha_t, so u_t = 0 gives S_t = 0 and M_t = M_{t-1}: the weights cross any stretch of
        # unsurprising text exactly. The soft gates cannot: (1 - alpha)^n shrinks M over the ~1M tokens.
        self.skip = nn.Linear(D, 1) if c.write_skip else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """M_0 ~ N(0, 1/fan_in); convolutions start as the identity (weight 1 on the current token); gates
        start at step max_lr / 2, momentum 0.88, forgetting 3e-4 per token (at 0.018 a memory is wiped
        within a few thousand tokens, and a deep MLP at zero weights gets zero gradients: it never learns again)."""
        for w in self.init_weights:
            nn.init.normal_(w, std=w.shape[1] ** -0.5)
        for w in self.convs.values():
            w.zero_()[:, 0] = 1.0
        self.gates.bias.copy_(torch.tensor([0.0, 2.0, -8.0]))
        if self.skip is not None:  # start by writing everywhere (p ~ 0.73): the paper's memory
            nn.init.normal_(self.skip.weight, std=0.02)
            nn.init.constant_(self.skip.bias, 1.0)

    def init_state(self, B, device=None):
        W = [w.to(device).unsqueeze(0).expand(B, -1, -1) for w in self.init_weights]
        tails = {s: torch.zeros(B, self.kernel - 1, self.q.in_features, device=device) for s in self.STREAMS}
        return W, [torch.zeros_like(w) for w in W], tails

    def _proj(self, lin, name, x, tails, stream):
        y, tails[stream] = causal_dwconv(lin(x), self.convs[name], tails[stream])
        return F.silu(y)

    def retrieve(self, x, W, tails):
        """M*(q) with the current weights, no update: x [B, T, D] -> [B, T, D]."""
        q = F.normalize(self._proj(self.q, "q", x, tails, "q_read"), dim=-1)
        return self.out(mlp_forward(W, q))

    def update(self, x, W, S, tails):
        """Learn x [B, T, D] chunk by chunk; every token reads with its chunk's starting weights.
        Returns (reads [B, T, D], W, S, p): p [B, T] the probability of learning from each token (write_skip;
        else None)."""
        q = F.normalize(self._proj(self.q, "q", x, tails, "q"), dim=-1)
        k = F.normalize(self._proj(self.k, "k", x, tails, "k"), dim=-1)
        v = self._proj(self.v, "v", x, tails, "v")
        theta, eta, alpha = torch.sigmoid(self.gates(x)).unbind(-1)
        theta = self.max_lr * theta  # the inner step size stays in (0, max_lr): larger steps diverge
        p = None
        if self.skip is not None:
            p = torch.sigmoid(self.skip(x)).squeeze(-1)
            u = hard_decision(p)
            theta, eta, alpha = theta * u, eta * u, alpha * u
        reads, W, S = memory_chunks(W, S, k, v, q, theta, eta, alpha, self.chunk)
        return self.out(reads), W, S, p


def persistent_attention(attn: Attention, h, P, rope, cache=None, mask=None, dist=None):
    """Attention of h [B, T, D] over the persistent tokens P [Np, D] (position-free: scored with the
    unrotated queries, always visible) and over [cache | h] (rotary, causal or `mask` [T, S+T]).
    cache: (k, v) [B, H, S, K] of earlier tokens (rotated). dist: float [T, S+T] query-key distances for
    the recency bias -slope * dist (attn.recency; the persistent tokens are at distance 0).
    Returns (y [B, T, D], (k, v) of [cache | h])."""
    H = attn.n_heads
    q, k, v = rearrange(attn.qkv(h), "b t (three h d) -> three b h t d", three=3, h=H)
    qr, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    if cache is not None:
        k, v = torch.cat((cache[0], k), 2), torch.cat((cache[1], v), 2)
    pk, pv = rearrange(attn.qkv(P)[:, attn.qkv.in_features:], "n (two h d) -> two h n d", two=2, h=H)
    T, S = q.shape[2], k.shape[2]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=h.device).tril(S - T)
    scale = attn.head_dim**-0.5
    seen = (qr @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf")) * scale
    if attn.recency is not None:  # the bias is added before the persistent scores are joined (no slice of the join)
        seen = seen + -attn.recency.exp()[:, None, None] * dist.clamp(min=0)  # [H, T, S]; negative = masked anyway
    w = torch.cat(((q @ pk.transpose(-1, -2)) * scale, seen), -1).softmax(-1)
    y = w[..., : pk.shape[1]] @ pv + w[..., pk.shape[1]:] @ v
    return attn.proj(rearrange(y, "b h t d -> b t (h d)")), (k, v)


class TitansBlock(nn.Module):
    def __init__(self, c: TitansConfig):
        super().__init__()
        self.variant, self.window = c.variant, c.window
        self.norm1, self.norm2, self.norm3 = nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model)
        self.memory = NeuralMemory(c)
        attends = c.variant != "lmm"
        self.attn = Attention(c.d_model, c.n_heads, c.rope_base, c.recency) if attends else None
        self.conv = ShortConv(c.d_model, c.attn_conv) if attends and c.attn_conv > 1 else None
        self.persistent = nn.Parameter(torch.randn(c.num_persistent, c.d_model) * 0.02) if attends else None
        self.mlp = MLP(c.d_model, c.mlp_mult)

    def _conv(self, h, tails):
        """The short conv before attention (its tail is state, under tails["attn"])."""
        if self.conv is None:
            return h
        h, tails["attn"] = self.conv(h, tails["attn"])
        return h

    def forward(self, x, W, S, tails, rope, cache=None, mask=None, dist=None):
        """Returns (x, W, S, (k, v) or None, p): p the memory's write probabilities (write_skip) or None."""
        kv = None
        if self.variant == "lmm":  # x + M(x), the memory learning from the block's input
            reads, W, S, p = self.memory.update(self.norm1(x), W, S, tails)
            x = x + reads
        elif self.variant == "mac":  # retrieve -> attend over [persistent | retrieved | segment] -> learn from y
            h = self.norm1(x)
            retrieved = self.memory.retrieve(h, W, tails)  # h_t = M*_{t-1}(q_t)
            a = self._attend_mac(self._conv(h, tails), retrieved, rope)
            y = x + a
            reads, W, S, p = self.memory.update(self.norm2(y), W, S, tails)  # M_t = M_{t-1}(y_t)
            x = y + a * reads  # o_t = y_t (x) M*_t(y_t), into the residual stream
        elif self.variant == "mag":  # sliding-window attention and the memory side by side, gated
            h = self.norm1(x)
            a, kv = persistent_attention(self.attn, self._conv(h, tails), self.persistent, rope, cache, mask, dist)
            reads, W, S, p = self.memory.update(h, W, S, tails)
            x = x + a * torch.sigmoid(reads)  # o = y (x) M(x)
        else:  # mal: the memory as a layer, then sliding-window attention over its output
            reads, W, S, p = self.memory.update(self.norm1(x), W, S, tails)
            x = x + reads
            a, kv = persistent_attention(self.attn, self._conv(self.norm2(x), tails), self.persistent, rope, cache, mask, dist)
            x = x + a
        if kv is not None:
            kv = (kv[0][:, :, -self.window:], kv[1][:, :, -self.window:])
        return x + self.mlp(self.norm3(x)), W, S, kv, p

    def _attend_mac(self, h, retrieved, rope):
        """Segment tokens attend over the persistent tokens (always), the retrieved memory up to their own
        position, and the segment causally. (The paper's mask shows the retrieved tokens fully visible; they
        are read with later tokens' queries, so a causal model must not see them early.) Retrieved token j
        has segment token j's position."""
        T = h.shape[1]
        q, k, v = rearrange(self.attn.qkv(torch.cat((retrieved, h), 1)), "b n (three h d) -> three b h n d", three=3,
                            h=self.attn.n_heads)
        cached = (apply_rotary(k[:, :, :T], *rope), v[:, :, :T])  # the retrieved memory as if it were cached
        i, j = torch.arange(T, device=h.device)[:, None], torch.arange(T, device=h.device)[None, :]
        d = (i - j).float()
        # (cat, not repeat: a repeat's modular index fused with the persistent tokens' offset broke inductor's
        # CUDA code generation, "ModularIndexing((-4), 1, T) is not comparable", with torch 2.11)
        dist = torch.cat((d, d), 1) if self.attn.recency is not None else None
        y, _ = persistent_attention(self.attn, h, self.persistent, rope, cached, torch.cat((j <= i, j <= i), 1), dist)
        return y


class Titans(SequenceModel):
    def __init__(self, config: TitansConfig):
        super().__init__()
        c = self.config = config
        checks = [(c.variant in VARIANTS, f"unknown Titans variant {c.variant!r}; allowed: {', '.join(VARIANTS)}"),
                  (c.mem_depth >= 1, f"mem_depth must be >= 1, got {c.mem_depth}"),
                  (c.chunk >= 1 and c.segment_len % c.chunk == 0,
                   f"chunk ({c.chunk}) must divide segment_len ({c.segment_len}) so that chunks never straddle segments"),
                  (c.num_persistent >= 0 and c.conv >= 1, "num_persistent must be >= 0 and conv >= 1"),
                  (c.window >= 1, f"window must be >= 1, got {c.window}"),
                  (c.attn_conv >= 0 and (c.attn_conv <= 1 or c.variant != "lmm"),
                   f"attn_conv must be >= 0, and needs attention (variant mac, mag or mal), got {c.attn_conv} with {c.variant!r}"),
                  (not c.recency or c.variant != "lmm", "recency needs attention: variant mac, mag or mal, not 'lmm'"),
                  (0 < c.max_lr <= 1, f"max_lr must be in (0, 1], got {c.max_lr}")]
        check_options(checks)
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(TitansBlock(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        init_weights(self, c.n_layers)
        for b in self.blocks:  # init_weights re-draws every matrix: restore the memory's own initialisation
            b.memory.reset_parameters()
        self._rope: dict = {}

    warm_start_fields = ("write_skip",)  # init_from may switch these on (not off): the new module starts as built

    @property
    def fixed_state(self) -> bool:
        """mac, lmm: the same state size after every segment; mag, mal: until the window has filled."""
        return self.config.variant in ("mac", "lmm")

    def init_state(self, batch_size: int, device=None) -> TitansState:
        Ws, Ss, tails = zip(*(b.memory.init_state(batch_size, device) for b in self.blocks))
        for b, tail in zip(self.blocks, tails):
            if b.conv is not None:
                tail["attn"] = torch.zeros(batch_size, b.conv.kernel - 1, self.config.d_model, device=device)
        keys = values = None
        if self.config.variant in ("mag", "mal"):
            c = self.config
            empty = lambda: torch.zeros(batch_size, c.n_heads, 0, c.d_model // c.n_heads, device=device)  # noqa: E731
            keys, values = [empty() for _ in self.blocks], [empty() for _ in self.blocks]
        return TitansState(list(Ws), list(Ss), list(tails), keys, values, 0)

    def forward(self, tokens: torch.Tensor, state: TitansState | None = None, return_logits: bool = True) -> ModelOutput:
        """tokens [B, T]. Longer than segment_len: cut into segments as the runner cuts them (from the end), so
        one call over a whole sequence equals streaming it (mac attends within a segment)."""
        from ..stream import segment_bounds

        state = state if state is not None else self.init_state(tokens.shape[0], tokens.device)
        hs, ps = [], []
        for s, e in segment_bounds(tokens.shape[1], self.config.segment_len):
            h, state, p = self._segment(tokens[:, s:e], state)
            hs.append(h)
            ps.append(p)
        h = torch.cat(hs, 1)
        aux = {}
        if ps[0] is not None:  # write_skip: the probabilities [B, layers, T] and the decisions (unroll's write_cost)
            p = torch.cat(ps, 2)
            aux = {"write_p": p, "write_gate": hard_decision(p)}
        return ModelOutput(self.lm_head(h) if return_logits else None, state, h, aux)

    def _segment(self, tokens, state):
        c, T = self.config, tokens.shape[1]
        windowed = state.keys is not None
        if windowed:  # absolute positions: the cached keys are rotated at theirs
            cached = state.keys[0].shape[2]
            q_pos = torch.arange(state.pos, state.pos + T, device=tokens.device)
            k_pos = torch.arange(state.pos - cached, state.pos + T, device=tokens.device)
            rope = rotary_tables(q_pos, c.d_model // c.n_heads, c.rope_base)
            mask = attention_mask(q_pos, k_pos, c.window)
            dist = (q_pos[:, None] - k_pos[None, :]).float() if c.recency else None
        else:  # positions restart every segment
            key = (T, str(tokens.device))
            if key not in self._rope:
                self._rope[key] = rotary_tables(torch.arange(T, device=tokens.device), c.d_model // c.n_heads, c.rope_base)
            rope, mask, dist = self._rope[key], None, None
        x = self.embed(tokens)
        Ws, Ss, tails, keys, values, ps = [], [], [], [], [], []
        for i, block in enumerate(self.blocks):
            tail = dict(state.tails[i])
            cache = (state.keys[i], state.values[i]) if windowed else None
            x, W, S, kv, p = block(x, state.W[i], state.S[i], tail, rope, cache, mask, dist)
            ps.append(p)
            Ws.append(W)
            Ss.append(S)
            tails.append(tail)
            if windowed:
                keys.append(kv[0])
                values.append(kv[1])
        # mac and lmm restart positions every segment: they carry no position, so the state holds no Python int
        # that changes from segment to segment (a compiled forward would bake one in: torch.compile, stream.py)
        new = TitansState(Ws, Ss, tails, keys if windowed else None, values if windowed else None,
                          state.pos + T if windowed else 0)
        return self.norm(x), new, torch.stack(ps, 1) if ps[0] is not None else None
