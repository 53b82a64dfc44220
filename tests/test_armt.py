"""ARMT (arXiv:2407.04841): the associative memory's delta rule, and the model on the (segment, state) contract."""
import pytest
import torch
import torch.nn.functional as F

from memlab.models.armt import assoc_read, delta_write, dpfp
from memlab.models.base import state_nbytes
from memlab.models.registry import build_model, make_config
from memlab.stream import segment_bounds, stream

from helpers import assert_write_decision_trains, embedding_grads

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, num_mem=3, d_mem=8, segment_len=8)


def _empty(H=1, Fdim=6, V=4):
    return torch.zeros(1, H, Fdim, V), torch.zeros(1, H, Fdim)


def test_delta_rule_returns_values_stored_under_orthogonal_keys():
    """Unit-length orthogonal keys written with gate 1 come back exactly, one after another or all at once."""
    A, z = _empty()
    keys = torch.eye(6)[[0, 2, 5]].view(1, 1, 3, 6)
    values = torch.randn(1, 1, 3, 4)
    ones = torch.ones(1, 1, 1, 1)
    A1, z1 = A, z
    for i in range(3):  # one per segment
        A1, z1 = delta_write(A1, z1, keys[:, :, i : i + 1], values[:, :, i : i + 1], ones)
    torch.testing.assert_close(assoc_read(A1, z1, keys), values, atol=1e-4, rtol=1e-4)
    A2, z2 = delta_write(A, z, keys, values, torch.ones(1, 1, 3, 1))  # one segment, three memory tokens
    torch.testing.assert_close(assoc_read(A2, z2, keys), values, atol=1e-4, rtol=1e-4)
    assert assoc_read(A2, z2, torch.eye(6)[[1]].view(1, 1, 1, 6)).abs().max() < 1e-6  # an unwritten key: nothing


def test_delta_rule_rewriting_a_key_replaces_its_value():
    """Writing v2 under a key that holds v1 leaves v2 (not v1 + v2), and the normaliser does not count the
    key twice; a plain additive (linear-attention) update would return the mean or the sum instead."""
    A, z = _empty()
    k = F.normalize(torch.rand(1, 1, 1, 6), dim=-1)
    v1, v2 = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4)
    one = torch.ones(1, 1, 1, 1)
    A, z = delta_write(A, z, k, v1, one)
    A, z = delta_write(A, z, k, v2, one)
    torch.testing.assert_close(assoc_read(A, z, k), v2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((z * k[:, :, 0]).sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    half = torch.full((1, 1, 1, 1), 0.5)  # a half-open gate moves the value half-way
    A, z = delta_write(A, z, k, v1, half)
    torch.testing.assert_close(assoc_read(A, z, k), (v1 + v2) / 2, atol=1e-4, rtol=1e-4)


def test_dpfp_is_non_negative_unit_length_with_the_paper_width():
    f = dpfp(torch.randn(2, 5, 8), nu=3)
    assert f.shape == (2, 5, 2 * 3 * 8) and (f >= 0).all()
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2, 5))


def _manual(model, x, seg):
    state, outs = model.init_state(x.shape[0]), []
    for s, e in segment_bounds(x.shape[1], seg):
        out = model(x[:, s:e], state)
        state, outs = out.state, outs + [out.logits]
    return torch.cat(outs, dim=1), state


def _trained_looking(seed=0, **kw):
    """An ARMT with random (non-zero) value projections: at init they are zero, so the memory is silent."""
    torch.manual_seed(seed)
    m = build_model(make_config("armt", **{**TINY, **kw})).eval()
    for a in m.assoc:
        torch.nn.init.normal_(a.v.weight, std=0.3)
    return m


@pytest.mark.parametrize("kw", [{}, dict(conv=4, recency=True, assoc_heads=2, num_sink=2)])
def test_armt_streaming_equals_whole_sequence_pass_and_state_is_fixed(kw):
    """stream() (no autograd, only the kept rows in the last block) equals full forwards of every segment
    with autograd; the state is (A, z) per layer and does not grow with length."""
    m = _trained_looking(**kw)
    x = torch.randint(0, 61, (2, 43))
    full, state = _manual(m, x, 8)
    res = stream(m, x, [0, 9, 42])
    torch.testing.assert_close(res.logits, full[:, [0, 9, 42]].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.state.A, state.A.detach(), atol=1e-5, rtol=1e-5)
    c = m.config
    feats = 2 * c.dpfp_nu * c.d_mem // c.assoc_heads
    assert state_nbytes(res.state) == 2 * c.n_layers * c.assoc_heads * feats * (c.d_model // c.assoc_heads + 1) * 4
    assert state_nbytes(stream(m, torch.randint(0, 61, (2, 400)), [399]).state) == state_nbytes(res.state)


def test_armt_memory_carries_the_first_segment_and_gradients_reach_it():
    """Changing only the first segment changes the last segment's output (through A alone: the memory tokens
    are not carried), and the loss at the end gives the first segment's embeddings and the write projections
    a gradient through the inner updates."""
    m = _trained_looking()
    a = torch.randint(3, 61, (1, 24))
    b = a.clone()
    b[:, 0] = (b[:, 0] + 1) % 61
    la, lb = _manual(m, a, 8)[0][:, -1], _manual(m, b, 8)[0][:, -1]
    assert not torch.allclose(la, lb, atol=1e-5)
    assert embedding_grads(m, a)[0] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for a_ in m.assoc for p in (a_.k.weight, a_.v.weight, a_.beta.weight))


def test_armt_untrained_memory_is_silent():
    """The value projections start at zero, so a fresh ARMT returns nothing from memory: the last segment's
    output does not depend on earlier segments (training starts from the plain segment model)."""
    torch.manual_seed(0)
    m = build_model(make_config("armt", **TINY)).eval()
    a = torch.randint(3, 61, (1, 24))
    b = a.clone()
    b[:, :16] = torch.randint(3, 61, (1, 16))
    torch.testing.assert_close(_manual(m, a, 8)[0][:, -8:], _manual(m, b, 8)[0][:, -8:])


@pytest.mark.parametrize("bad, msg", [(dict(num_mem=0), "num_mem"), (dict(d_mem=0), "d_mem"),
                                      (dict(d_mem=8, assoc_heads=3), "divisible"), (dict(dpfp_nu=0), "dpfp_nu"),
                                      (dict(num_sink=-1), "num_sink")])
def test_armt_bad_options(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build_model(make_config("armt", **{**TINY, **bad}))


def test_armt_compiled_stream_equals_eager():
    m = _trained_looking(conv=4, recency=True)
    x = torch.randint(0, 61, (2, 50))
    eager, compiled = stream(m, x, [7, 49]), stream(m, x, [7, 49], compile=True)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.state.A, eager.state.A, atol=1e-4, rtol=1e-4)


def test_armt_warm_started_from_an_rmt_equals_it_on_a_first_segment():
    """transfer_weights copies the shared blocks and seeds the sink and memory tokens with the RMT's initial
    memory: with its associative memories still silent, the ARMT computes what the RMT computes on a first
    segment, at every segment (the warm start of configs/armt-qa1.yaml)."""
    from memlab.models.base import transfer_weights

    torch.manual_seed(0)
    shared = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, num_mem=3, segment_len=8, conv=4, recency=True)
    rmt = build_model(make_config("rmt", memory_always_near=True, mem_gate=True, **shared)).eval()
    armt = build_model(make_config("armt", num_sink=3, d_mem=8, **shared)).eval()
    taken, fresh = transfer_weights(rmt, armt)
    assert "memory" in taken and "sink" in taken and "blocks.0.attn.qkv.weight" in taken
    assert sorted(fresh) == sorted(k for k in armt.state_dict() if k.startswith("assoc."))
    x = torch.randint(0, 61, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(armt(x).logits, rmt(x).logits, atol=1e-6, rtol=1e-6)
        later = armt(x, armt(torch.randint(0, 61, (2, 8))).state).logits  # memory silent: same again
        torch.testing.assert_close(later, rmt(x).logits, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="share no weights"):
        transfer_weights(torch.nn.Linear(2, 2), armt)


def test_armt_write_skip_keeps_the_memory_exactly_and_trains_the_decision():
    """write_skip (not in the paper, as RMT's): decisions "write" everywhere give the paper's ARMT; "keep"
    everywhere leaves (A, z) bit for bit as they were, however long the input; a mixed decision writes only the
    chosen keys (delta_write with u); the decision gets gradient from the task (straight-through) and from write_cost; an ARMT
    without it hands every weight to one with it (init_from's warm start)."""
    from memlab.models.base import transfer_weights
    plain = _trained_looking()
    m = _trained_looking(write_skip=True)
    taken, fresh = transfer_weights(plain, m)
    assert sorted(fresh) == [f"assoc.{i}.skip.{w}" for i in range(2) for w in ("bias", "weight")]
    x = torch.randint(3, 61, (2, 8))
    with torch.no_grad():
        start = plain(x).state  # a memory with something in it
        for a in m.assoc:
            a.skip.bias.fill_(20.0)  # every memory token writes: the paper's ARMT
        torch.testing.assert_close(m(x, start).state.A, plain(x, start).state.A, atol=1e-6, rtol=1e-6)
        for a in m.assoc:
            a.skip.bias.fill_(-20.0)  # none writes
        kept = start
        for s in range(0, 40, 8):
            kept = m(torch.randint(3, 61, (2, 8)), kept).state
        assert torch.equal(kept.A, start.A) and torch.equal(kept.z, start.z)
        out = m(x, start)
    assert (out.aux["write_p"] < 0.5).all() and out.aux["write_gate"].shape == (2, 2, 1, 3, 1)
    assert (out.aux["write_gate"] == 0).all()
    # a mixed decision: of two orthogonal keys only the one with u = 1 is stored (and counted in z)
    A, z = _empty(V=2)
    keys, values = torch.eye(6)[None, None, :2], torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    A, z = delta_write(A, z, keys, values, torch.ones(1, 1, 2, 1), u=torch.tensor([1.0, 0.0]).view(1, 1, 2, 1))
    torch.testing.assert_close(assoc_read(A, z, keys)[0, 0, 0], values[0, 0, 0], atol=1e-4, rtol=1e-4)  # (EPS)
    assert torch.equal(assoc_read(A, z, keys)[0, 0, 1], torch.zeros(2)) and z[0, 0, 1] == 0
    with torch.no_grad():
        for a in m.assoc:
            a.skip.bias.fill_(1.0)
    assert_write_decision_trains(m, [a.skip for a in m.assoc], torch.randint(3, 61, (2, 24)))
