"""TransformerFAM (arXiv:2404.09173): block sliding-window attention plus feedback attention memory."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from memlab.models.base import state_nbytes
from memlab.models.blocks import apply_rotary, rotary_tables
from memlab.models.registry import build_model, make_config
from memlab.stream import segment_bounds, stream

from helpers import assert_compiled_unroll_equals_eager, assert_write_decision_trains

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, block=4, segment_len=8, num_fam=3)


def _fam(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(make_config("fam", **{**TINY, **kw})).eval()


def _block_swa_reference(m, x):
    """Block sliding-window attention over the whole sequence at once, with an explicit mask: token i sees
    token j <= i when j's block is i's block or one of the mem_blocks before it."""
    T = x.shape[1]
    block_of = torch.zeros(T, dtype=torch.long)
    for b, (s, e) in enumerate(segment_bounds(T, m.config.block)):
        block_of[s:e] = b
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (block_of[None, :] >= block_of[:, None] - m.config.mem_blocks)
    rope = rotary_tables(torch.arange(T), m.config.d_model // m.config.n_heads)
    h = m.embed(x)
    for layer in m.blocks:
        hn = layer.norm1(h)
        if layer.conv is not None:  # a causal depthwise conv over the whole sequence
            hn = hn + F.conv1d(F.pad(hn.transpose(1, 2), (layer.conv.kernel - 1, 0)), layer.conv.weight.flip(-1).unsqueeze(1),
                               groups=hn.shape[-1]).transpose(1, 2)
        q, k, v = rearrange(layer.attn.qkv(hn), "b t (three h d) -> three b h t d", three=3, h=m.config.n_heads)
        bias = torch.zeros(T, T).masked_fill(~mask, float("-inf"))
        if layer.attn.recency is not None:  # -slope * (i - j), by absolute positions
            bias = bias - layer.attn.recency.exp()[:, None, None] * (i - j).float()
        y = F.scaled_dot_product_attention(apply_rotary(q, *rope), apply_rotary(k, *rope), v, attn_mask=bias)
        h = h + layer.attn.proj(rearrange(y, "b h t d -> b t (h d)"))
        h = h + layer.mlp(layer.norm2(h))
    return m.lm_head(m.norm(h))


@pytest.mark.parametrize("mem_blocks, extra", [(0, {}), (1, {}), (2, {}), (1, dict(conv=3, recency=True))])
def test_without_fam_it_is_block_sliding_window_attention(mem_blocks, extra):
    """conv, recency (the RMT recipe's options): a short conv before attention, and -slope * distance."""
    m = _fam(num_fam=0, mem_blocks=mem_blocks, **extra)
    if m.blocks[0].attn.recency is not None:  # distinct, non-trivial slopes so that the test means something
        for b in m.blocks:
            b.attn.recency.data = torch.tensor([-1.0, 0.3])
    x = torch.randint(0, 61, (2, 23))
    torch.testing.assert_close(m(x).logits, _block_swa_reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, dict(mem_blocks=2, num_fam=4), dict(conv=4, recency=True)])
def test_streaming_equals_one_whole_sequence_pass_and_state_stops_growing(kw):
    m = _fam(**kw)
    x = torch.randint(0, 61, (2, 29))
    whole = m(x)
    res = stream(m, x, list(range(29)))
    torch.testing.assert_close(res.logits, whole.logits.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.state.fam, whole.state.fam.detach(), atol=1e-5, rtol=1e-5)
    sizes = {state_nbytes(stream(m, torch.randint(0, 61, (2, L)), [L - 1]).state) for L in (64, 200, 400)}
    assert len(sizes) == 1  # FAM plus the memory segment: the same size at every length


def test_fam_carries_information_beyond_the_window():
    """With no memory segment a block sees only itself and the FAM: a change in the first block still
    reaches the last block's output, through the feedback memory alone; without FAM it cannot."""
    x = torch.randint(3, 61, (1, 24))
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 61
    with torch.no_grad():
        m = _fam(mem_blocks=0)
        assert (m(x).logits[:, -4:] - m(y).logits[:, -4:]).abs().max() > 1e-5
        m0 = _fam(mem_blocks=0, num_fam=0)
        torch.testing.assert_close(m0(x).logits[:, -4:], m0(y).logits[:, -4:])


@pytest.mark.parametrize("bad, msg", [(dict(num_fam=5), "num_fam"), (dict(block=3), "divide segment_len"),
                                      (dict(mem_blocks=-1), "mem_blocks")])
def test_fam_bad_options(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build_model(make_config("fam", **{**TINY, **bad}))


def test_fam_write_skip_keeps_unwritten_fam_tokens_exactly_and_trains_the_decision():
    """write_skip (not in the paper): a FAM token whose decision is "keep" comes out of the block exactly as it went
    in; "write" everywhere equals the paper's FAM; the decision gets gradient (straight-through) from the task and
    from write_cost; a FAM without it hands every weight to one with it (init_from's warm start)."""
    from memlab.train import transfer_weights

    plain = _fam(mem_blocks=0)
    m = _fam(mem_blocks=0, write_skip=True)
    taken, fresh = transfer_weights(plain, m)
    assert sorted(fresh) == [f"blocks.{i}.skip.{w}" for i in range(2) for w in ("bias", "weight")]
    x = torch.randint(3, 61, (2, 8))
    state = m.init_state(2)
    with torch.no_grad():
        for layer in m.blocks:
            layer.skip.bias.fill_(20.0)  # every FAM token writes: the paper's FAM
        torch.testing.assert_close(m(x, state).state.fam, plain(x, state).state.fam, atol=1e-5, rtol=1e-5)
        for layer in m.blocks:
            layer.skip.bias.fill_(-20.0)  # none writes: the FAM is kept bit for bit, however long the input
        assert torch.equal(m(torch.randint(3, 61, (2, 40)), state).state.fam, state.fam)
        for layer in m.blocks:
            layer.skip.bias.zero_()
            layer.skip.weight.zero_()
            layer.skip.weight[0, 0] = 1.0  # write the FAM tokens whose new value has a positive first coordinate
        out = m(x[:, :4], state)  # one block: the decisions of every layer
    written = (out.aux["write_p"] > 0.5).squeeze(-1)  # [B, layers, F] (one block): as state.fam [B, layers, F, D]
    assert written.any() and (~written).any()
    assert torch.equal(out.state.fam[~written], state.fam[~written])
    assert not torch.equal(out.state.fam[written], state.fam[written])
    assert_write_decision_trains(m, [layer.skip for layer in m.blocks], torch.randint(3, 61, (2, 24)))


def _compile_fam():
    return _fam(conv=3, recency=True, write_skip=True, segment_len=4, n_layers=1), torch.randint(0, 61, (2, 4 * 9))  # 9 segments


def test_fam_compiled_stream_equals_eager_with_one_graph():
    """FAM's state has one shape from the start (the memory segment's slots are allocated full and masked until
    filled; the position is a tensor), so stream(compile=True) runs every segment through one compiled graph and
    gives the eager logits and state."""
    from torch._dynamo.utils import counters

    m, x = _compile_fam()
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = stream(m, x, [5, 35]), stream(m, x, [5, 35], compile=True)
    assert counters["stats"]["unique_graphs"] == 1  # the first segment's empty memory is the same shape as later ones
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.state.fam, eager.state.fam, atol=1e-4, rtol=1e-4)
    assert int(compiled.state.pos) == int(eager.state.pos) == 36


@pytest.mark.slow  # compiling FAM's backward takes minutes on 2 cores; the compiled unroll itself is tested on RMT
def test_fam_compiled_training_unroll_equals_eager():
    """unroll(compile=True) on FAM (write_skip, write_cost, truncated BPTT): the eager loss and gradients."""
    m, x = _compile_fam()
    m.train()
    y = torch.full_like(x, -100)
    y[:, 35], y[:, 20] = 7, 9
    grads = assert_compiled_unroll_equals_eager(m, x, y, bptt_depth=3, write_cost=0.5)
    assert len(grads) > 10  # (fam_init: none, the first segments are past the BPTT depth)
