"""Titans' neural memory (arXiv:2501.00663, section 3): the chunked form against the definitions."""
import pytest
import torch
import torch.nn.functional as F

from memlab.models.titans import (memory_chunks, memory_chunks_reference, memory_reference, mlp_forward,
                                  token_grads)


def _setup(depth=2, B=2, T=12, d=6, h=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    dims = [d] + [h] * (depth - 1) + [d]
    W = [torch.randn(B, o, i, generator=g, dtype=dtype) * 0.4 for i, o in zip(dims, dims[1:])]
    S = [torch.randn(w.shape, generator=g, dtype=dtype) * 0.1 for w in W]
    k = F.normalize(torch.randn(B, T, d, generator=g, dtype=dtype), dim=-1)
    q = F.normalize(torch.randn(B, T, d, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, T, d, generator=g, dtype=dtype)
    theta = 0.2 * torch.rand(B, T, generator=g, dtype=dtype)
    eta = torch.rand(B, T, generator=g, dtype=dtype)
    alpha = 0.2 * torch.rand(B, T, generator=g, dtype=dtype)
    return W, S, k, v, q, theta, eta, alpha


def _close(a, b, tol=1e-12):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_chunk_size_one_equals_the_token_by_token_definition(depth):
    args = _setup(depth)
    reads, W, S = memory_chunks(*args, chunk=1)
    ref_reads, ref_W, ref_S = memory_reference(*args)
    torch.testing.assert_close(reads, ref_reads, atol=1e-12, rtol=1e-12)
    _close(W, ref_W)
    _close(S, ref_S)


@pytest.mark.parametrize("chunk", [4, 5, 12])
def test_chunked_form_equals_the_chunked_definition(chunk):
    """Gradients and reads at each chunk's starting weights; 5 does not divide 12 (a short last chunk)."""
    args = _setup(2)
    reads, W, S = memory_chunks(*args, chunk=chunk)
    ref_reads, ref_W, ref_S = memory_chunks_reference(*args, chunk=chunk)
    torch.testing.assert_close(reads, ref_reads, atol=1e-12, rtol=1e-12)
    _close(W, ref_W)
    _close(S, ref_S)
    other, _, _ = memory_chunks(*args, chunk=1)
    assert (other - reads).abs().max() > 1e-6  # the chunk size does matter


def test_manual_gradients_equal_autograd():
    W, _, k, v, _, _, _, _ = _setup(3, T=5)
    Wd = [w.clone().requires_grad_(True) for w in W]
    for t in range(5):
        loss = (mlp_forward(Wd, k[:, t : t + 1]) - v[:, t : t + 1]).pow(2).sum()
        auto = torch.autograd.grad(loss, Wd)
        manual = [err[:, t, :, None] * act[:, t, None, :] for err, act in token_grads(W, k, v)]
        _close(manual, auto, 1e-12)


def test_zero_momentum_gives_plain_surprise_updates():
    """eta = 0: S_t = -theta_t u_t, so M_t = (1 - alpha_t) M_{t-1} - theta_t u_t."""
    W, S, k, v, q, theta, _, alpha = _setup(2, T=1)
    _, W1, S1 = memory_chunks(W, S, k, v, q, theta, torch.zeros_like(theta), alpha, chunk=1)
    u = [err[:, 0, :, None] * act[:, 0, None, :] for err, act in token_grads(W, k, v)]
    _close(S1, [-theta[:, 0, None, None] * g for g in u])
    _close(W1, [(1 - alpha[:, 0, None, None]) * w - theta[:, 0, None, None] * g for w, g in zip(W, u)])


def test_full_forgetting_erases_the_memory():
    """alpha = 1 (no momentum carried): M_t = S_t. With no step (theta = 0) the weights become zero; with a
    step they hold only the last token's surprise (taken at the chunk's starting weights)."""
    W, S, k, v, q, theta, eta, _ = _setup(2, T=4)
    one, no = torch.ones_like(theta), torch.zeros_like(theta)
    zero_S = [torch.zeros_like(s) for s in S]
    _, W0, _ = memory_chunks(W, zero_S, k, v, q, no, no, one, chunk=4)
    assert all(w.abs().max() < 1e-25 for w in W0)  # gates of exactly 0 enter as 1e-30 (the log-space products)
    _, W1, _ = memory_chunks(W, zero_S, k, v, q, theta, no, one, chunk=4)
    u_last = [err[:, -1, :, None] * act[:, -1, None, :] for err, act in token_grads(W, k, v)]
    _close(W1, [-theta[:, -1, None, None] * g for g in u_last])


def test_outer_parameters_get_gradients_through_the_inner_updates():
    """A loss on what the memory returns after learning a first chunk reaches the keys, values and the
    three gates of that chunk."""
    W, S, k, v, q, theta, eta, alpha = _setup(2, dtype=torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (k, v, theta, eta, alpha)]
    kk, vv, th, et, al = leaves
    reads, _, _ = memory_chunks(W, S, kk, vv, q, th, et, al, chunk=6)
    reads[:, 6:].pow(2).sum().backward()  # the second chunk reads weights learned from the first
    for t in leaves:
        assert t.grad is not None and t.grad[:, :6].abs().sum() > 0


# ---- the model -----------------------------------------------------------------------------------------------

from memlab.models.base import state_nbytes  # noqa: E402
from memlab.models.registry import build_model, make_config  # noqa: E402
from memlab.stream import stream  # noqa: E402

from helpers import assert_write_decision_trains, embedding_grads  # noqa: E402

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, segment_len=8, chunk=4)


def _titans(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(make_config("titans", **{**TINY, **kw})).eval()


@pytest.mark.parametrize("kw", [dict(variant="mac"), dict(variant="lmm"), dict(variant="mac", mem_depth=3, chunk=2),
                                dict(variant="mag", window=5), dict(variant="mal", window=12),
                                dict(variant="mac", attn_conv=4, recency=True)])
def test_titans_streaming_equals_one_whole_sequence_pass(kw):
    """One call over 29 tokens (the model cuts its segments itself) equals the runner streaming 8-token
    segments: the memory weights, momenta and conv tails carry everything across segments."""
    m = _titans(**kw)
    x = torch.randint(0, 61, (2, 29))
    whole = m(x)
    res = stream(m, x, [0, 13, 28])
    torch.testing.assert_close(res.logits, whole.logits[:, [0, 13, 28]].detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(res.state.W, whole.state.W):
        for wa, wb in zip(a, b):
            torch.testing.assert_close(wa, wb.detach(), atol=1e-5, rtol=1e-5)
    assert state_nbytes(stream(m, torch.randint(0, 61, (2, 200)), [199]).state) == state_nbytes(res.state)


def test_titans_compiled_stream_equals_eager():
    """MAC streamed through torch.compile (stream(compile=True): every segment without an answer) gives the eager
    logits and state. Its state holds no position (mac restarts positions each segment): a changing Python int
    there would be baked into the graph, and the compiled stream's state would go wrong. At batch 1 too: there the
    conv tails, sliced from a segment, have a stride that `contiguous()` keeps and the graph guards on: after a first
    compiled segment from the (dense) initial state, the stream crashed with "Recompilation triggered with
    skip_guard_eval_unsafe stance" until states were packed."""
    m = _titans(variant="mac", attn_conv=4, recency=True)
    for batch, kept in ((2, [5, 95]), (1, [95])):  # (1, [95]): the first compiled segment starts from init_state
        x = torch.randint(0, 61, (batch, 8 * 12))
        eager, compiled = stream(m, x, kept), stream(m, x, kept, compile=True)
        torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-4, rtol=1e-4)
        for a, b in zip(compiled.state.W + compiled.state.S, eager.state.W + eager.state.S):
            for wa, wb in zip(a, b):
                torch.testing.assert_close(wa, wb, atol=1e-4, rtol=1e-4)
        assert compiled.state.pos == eager.state.pos == 0


def test_titans_outer_parameters_learn_through_the_memory():
    """A loss at the end of the third segment reaches the first segment's embeddings (only through the
    memory: mac attends within a segment) and every memory projection and gate."""
    m = _titans().train()
    assert embedding_grads(m, torch.randint(3, 61, (2, 24)))[0] > 0
    for b in m.blocks:
        mem = b.memory
        for p in (mem.k.weight, mem.v.weight, mem.gates.weight, mem.init_weights[0]):
            assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["mac", "mag"])
def test_titans_recency_bias_acts_by_distance(variant):
    """A vanishing slope gives the model without the bias (same weights); a steep one makes each query
    attend to distance 0 only (itself, and for mac its own retrieved memory), so an earlier token of the
    segment no longer changes a later output through attention."""
    plain = _titans(variant=variant, window=8)
    biased = _titans(variant=variant, window=8, recency=True)
    biased.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randint(0, 61, (1, 8))
    for b in biased.blocks:
        b.attn.recency.data.fill_(-30.0)
    torch.testing.assert_close(biased(x).logits, plain(x).logits, atol=1e-5, rtol=1e-5)
    for b in biased.blocks:
        b.attn.recency.data.fill_(6.0)  # slope e^6 ~ 400 per token
    y = biased(x).logits[0, 6]
    x2 = x.clone()
    x2[0, 2] = (x[0, 2] + 1) % 61
    # token 2 still reaches token 6 through the memory (updated chunk by chunk): compare with the plain model
    changed_biased = (biased(x2).logits[0, 6] - y).abs().max()
    changed_plain = (plain(x2).logits[0, 6] - plain(x).logits[0, 6]).abs().max()
    assert changed_biased < 0.1 * changed_plain


@pytest.mark.parametrize("bad, msg", [(dict(chunk=3), "chunk"), (dict(variant="lmm", recency=True), "recency needs attention"), (dict(variant="mag2"), "allowed: mac, mag, mal, lmm"),
                                      (dict(mem_depth=0), "mem_depth"), (dict(max_lr=0.0), "max_lr")])
def test_titans_bad_options(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build_model(make_config("titans", **{**TINY, **bad}))


@pytest.mark.parametrize("variant, extra", [("lmm", {}), ("mag", {}), ("mal", {}),
                                            ("mag", dict(attn_conv=3, recency=True)), ("mal", dict(attn_conv=3, recency=True))])
def test_titans_one_long_segment_equals_streaming_short_segments(variant, extra):
    """Without mac's segment-local attention the segment length is only a runner setting: one 32-token
    segment (one attention window over it, chunks of 4) equals streaming 8-token segments, the sliding
    window's keys/values, the memory and the conv tails carried across (with the recency bias: distances
    by absolute position across the cache)."""
    m = _titans(variant=variant, segment_len=32, window=6, **extra)
    for b in m.blocks:
        if extra.get("recency"):
            b.attn.recency.data = torch.tensor([-1.0, 0.5])
    x = torch.randint(0, 61, (2, 32))
    whole = m(x).logits
    res = stream(m, x, list(range(32)), segment_len=8)
    torch.testing.assert_close(res.logits, whole.detach(), atol=1e-5, rtol=1e-5)


def test_titans_memory_starts_as_initialised_and_bounds_its_step():
    """The model-wide GPT-2 init must not overwrite the memory's own: convolutions start as the identity, the
    gates at step max_lr / 2 and slow forgetting; the step stays below max_lr whatever the gate's input."""
    m = _titans(max_lr=0.02)
    for b in m.blocks:
        for w in b.memory.convs.values():
            assert torch.equal(w[:, 0], torch.ones(w.shape[0])) and not w[:, 1:].any()
        theta, eta, alpha = torch.sigmoid(b.memory.gates.bias).tolist()
        assert theta == pytest.approx(0.5) and eta > 0.8 and alpha < 1e-3
    seen = []
    orig = memory_chunks.__globals__["memory_chunks"]
    mod = __import__("memlab.models.titans", fromlist=["x"])
    mod.memory_chunks = lambda W, S, k, v, q, th, *a, **kw: (seen.append(th.max().item()), orig(W, S, k, v, q, th, *a, **kw))[1]
    try:
        with torch.no_grad():
            m.blocks[0].memory.gates.bias.fill_(50.0)
            m(torch.randint(0, 61, (2, 8)))
    finally:
        mod.memory_chunks = orig
    assert seen and max(seen) <= 0.02 + 1e-9


def test_titans_memory_stays_finite_over_a_long_stream():
    """At initialisation, 4k tokens of varied input through the memory: the weights stay finite and are not
    wiped to zero (a zero deep memory gets zero gradients and never learns again)."""
    m = _titans(segment_len=64, chunk=16)
    res = stream(m, torch.randint(0, 61, (2, 4096)), [4095])
    for W in res.state.W:
        for w in W:
            assert torch.isfinite(w).all() and w.norm() > 1e-2
    assert torch.isfinite(res.logits).all()


def test_titans_write_skip_keeps_the_memory_exactly_and_trains_the_decision():
    """write_skip (not in the paper): tokens whose decision is "keep" leave the memory's weights exactly as they
    were (and its momentum at zero); "write" everywhere equals the paper's memory; the decision gets gradient
    (straight-through) from the task and from write_cost; a Titans without it hands every weight to one with it."""
    from memlab.train import transfer_weights

    plain = _titans(variant="mac")
    m = _titans(variant="mac", write_skip=True)
    _, fresh = transfer_weights(plain, m)
    assert sorted(fresh) == sorted(f"blocks.{i}.memory.skip.{w}" for i in range(2) for w in ("bias", "weight"))
    x = torch.randint(3, 61, (2, 24))
    with torch.no_grad():
        for b in m.blocks:
            b.memory.skip.bias.fill_(20.0)  # every token writes: the paper's memory
        out, ref = m(x), plain(x)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
        for a, b in zip(out.state.W, ref.state.W):
            for wa, wb in zip(a, b):
                torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-5)
        for b in m.blocks:
            b.memory.skip.bias.fill_(-20.0)  # no token writes: M stays at M_0, bit for bit
        out, start = m(x), m.init_state(2)
        assert all(torch.equal(wa, wb) for a, b in zip(out.state.W, start.W) for wa, wb in zip(a, b))
        assert all((s == 0).all() for layer in out.state.S for s in layer)
        for b in m.blocks:
            b.memory.skip.bias.zero_()
            b.memory.skip.weight.zero_()
            b.memory.skip.weight[0, 0] = 1.0  # some tokens write, some keep
        out = m(x)
    assert out.aux["write_p"].shape == (2, 2, 24)
    written = out.aux["write_p"] > 0.5
    assert written.any() and (~written).any()
    assert_write_decision_trains(m, [b.memory.skip for b in m.blocks], x)
