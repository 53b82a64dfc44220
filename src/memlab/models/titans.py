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
