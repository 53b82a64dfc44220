import numpy as np
import pytest
import torch

from memlab.models.base import state_nbytes, tree_map
from memlab.models.registry import build_model, known_models, make_config
from memlab.stream import segment_bounds, stream, unroll

from helpers import assert_compiled_unroll_equals_eager, embedding_grads

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2)


def _stream_manually(model, x, seg):
    state, outs = model.init_state(x.shape[0]), []
    for s, e in segment_bounds(x.shape[1], seg):
        out = model(x[:, s:e], state)
        state = out.state
        outs.append(out.logits)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("seg", [1, 7, 16, 50])
def test_full_attention_streaming_equals_full_forward(seg):
    torch.manual_seed(0)
    m = build_model(make_config("transformer", **TINY)).eval()
    x = torch.randint(0, 61, (2, 50))
    with torch.no_grad():
        full = m(x).logits
        streamed, state = _stream_manually(m, x, seg)
    assert torch.allclose(full, streamed, atol=1e-5), (full - streamed).abs().max()  # tolerance: 1e-5 (fp32)
    assert state.keys[0].shape[2] == 50  # the KV cache holds every past token


@pytest.mark.parametrize("window,seg", [(5, 3), (8, 8), (8, 20), (1, 4)])
def test_sliding_window_state_bounded_and_streaming_equal(window, seg):
    torch.manual_seed(0)
    m = build_model(make_config("transformer", window=window, **TINY)).eval()
    x = torch.randint(0, 61, (2, 47))
    with torch.no_grad():
        full = m(x).logits
        state, outs = m.init_state(2), []
        for s in range(0, 47, seg):
            out = m(x[:, s : s + seg], state)
            state = out.state
            outs.append(out.logits)
            assert all(k.shape[2] <= window for k in state.keys)
    assert torch.allclose(full, torch.cat(outs, 1), atol=1e-5)
    # a token outside the window cannot influence the last position
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % 61
    with torch.no_grad():
        assert torch.allclose(m(x).logits[:, -1], m(x2).logits[:, -1], atol=1e-6)


def test_window_changes_output_versus_full():
    torch.manual_seed(0)
    full = build_model(make_config("transformer", **TINY)).eval()
    win = build_model(make_config("transformer", window=4, **TINY)).eval()
    win.load_state_dict(full.state_dict())
    x = torch.randint(0, 61, (1, 20))
    with torch.no_grad():
        assert torch.allclose(full(x).logits[:, :4], win(x).logits[:, :4], atol=1e-6)
        assert not torch.allclose(full(x).logits[:, -1], win(x).logits[:, -1], atol=1e-4)


def test_segments_are_cut_from_the_end():
    assert segment_bounds(37, 8) == [(0, 5), (5, 13), (13, 21), (21, 29), (29, 37)]
    assert segment_bounds(16, 8) == [(0, 8), (8, 16)] and segment_bounds(3, 8) == [(0, 3)]


def test_rmt_runner_matches_manual_loop_and_state_is_fixed_size():
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY)).eval()
    x = torch.randint(0, 61, (3, 37))
    with torch.no_grad():
        manual, state = _stream_manually(m, x, 8)
        res = stream(m, x, [0, 9, 36])
    assert torch.allclose(res.logits, manual[:, [0, 9, 36]], atol=1e-5)
    assert state_nbytes(res.state) == 3 * 4 * 32 * 4
    long = stream(m, torch.randint(0, 61, (3, 400)), [399])
    assert state_nbytes(long.state) == state_nbytes(res.state)  # does not grow with length


def test_rmt_memory_carries_information_across_segments():
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY)).eval()
    a = torch.randint(0, 61, (1, 16))
    b = a.clone()
    b[:, 0] = (b[:, 0] + 1) % 61  # change only the first segment
    with torch.no_grad():
        la, lb = m(a[:, 8:], m(a[:, :8]).state).logits, m(b[:, 8:], m(b[:, :8]).state).logits
    assert not torch.allclose(la, lb)


def _first_segment_grad(model, depth, n_seg=4, seg=8):
    return embedding_grads(model, torch.randint(3, 61, (2, n_seg * seg)), depth)


@pytest.mark.parametrize("kind", ["rmt", "transformer"])
def test_truncated_bptt_depth(kind):
    torch.manual_seed(0)
    kw = dict(num_mem=4, segment_len=8) if kind == "rmt" else dict(segment_len=8)
    m = build_model(make_config(kind, **kw, **TINY))
    full = _first_segment_grad(m, None)
    assert all(g is not None and g > 0 for g in full), full  # full BPTT reaches the first segment
    two = _first_segment_grad(m, 2)
    assert [g is not None and g > 0 for g in two] == [False, False, True, True], two  # stops after 2 segments


def test_unroll_per_sample_scores_a_sample_right_only_when_every_answer_word_is():
    """Answers of several words: per-word accuracy counts each word, per_sample (what held-out checks during
    training report, as memlab eval does) needs all of a sample's words; a sample with no answer is not counted."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY)).eval()
    x = torch.randint(3, 61, (3, 30))
    with torch.no_grad():
        pred = stream(m, x, [19, 20, 27]).logits.argmax(-1)  # the model's words at three answer positions
    y = torch.full_like(x, -100)
    y[:, [19, 20, 27]] = pred
    y[0, 20] = (pred[0, 1] + 1) % 61  # sample 0: one of its three words wrong
    y[2] = -100  # sample 2: no answer
    with torch.no_grad():
        _, word_acc, words = unroll(m, x, y)
        _, sample_acc, samples = unroll(m, x, y, per_sample=True)
    assert (word_acc, words) == (5 / 6, 6)
    assert (sample_acc, samples) == (1 / 2, 2)


@pytest.mark.parametrize("depth", [None, 2, 3])
def test_unroll_without_graph_where_no_loss_reaches_gives_same_gradients(depth):
    """unroll skips autograd for windows that no answer can reach; losses and gradients equal a reference
    unroll that records every segment and only detaches at the same cuts."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY))
    x = torch.randint(3, 61, (2, 7 * 8 - 3))
    y = torch.full_like(x, -100)
    y[:, -1], y[:, 20] = 5, 7  # answers in segment 2 and in the last one
    loss, _, _ = unroll(m, x, y, bptt_depth=depth)
    got = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    bounds = segment_bounds(x.shape[1], 8)
    state, total = m.init_state(2), 0.0
    for j, (s, e) in enumerate(bounds):
        if depth is not None and j > 0 and (len(bounds) - j) % depth == 0:
            state = type(state)(state.memory.detach())
        out = m(x[:, s:e], state, return_logits=False)
        state, mask = out.state, y[:, s:e] != -100
        if mask.any():
            total = total + torch.nn.functional.cross_entropy(m.logits(out.hidden[mask]), y[:, s:e][mask], reduction="sum")
    ref = total / 4
    want = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    assert torch.allclose(loss, ref)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.allclose(g, w, atol=1e-6)


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="known models: .*rmt.*transformer"):
        make_config("gpt5")
    with pytest.raises(ValueError, match="num_mem"):
        build_model(make_config("rmt", num_mem=0, **TINY))
    with pytest.raises(ValueError, match="no option"):
        make_config("transformer", num_mem=3)
    with pytest.raises(ValueError, match=r"rope_base must be a number, got the text '1.0e9'.*1.0e\+9"):
        make_config("transformer", rope_base="1.0e9")  # what YAML makes of `rope_base: 1.0e9`
    with pytest.raises(ValueError, match="recency must be true or false"):
        make_config("rmt", recency="yes")
    assert make_config("transformer", rope_base=1.0e9).rope_base == 1.0e9
    assert {"rmt", "transformer", "hf-rmt"} <= set(known_models())


@pytest.mark.parametrize("window", [None, 6])
def test_short_conv_streaming_equals_full_forward(window):
    torch.manual_seed(0)
    m = build_model(make_config("transformer", conv=4, window=window, **TINY)).eval()
    for blk in m.blocks:  # non-zero conv weights so the test means something
        torch.nn.init.normal_(blk.conv.weight, std=0.5)
    x = torch.randint(0, 61, (2, 29))
    with torch.no_grad():
        full = m(x).logits
        streamed, state = _stream_manually(m, x, 5)
    assert torch.allclose(full, streamed, atol=1e-5)
    assert state.conv[0].shape == (2, 3, 32)


@pytest.mark.parametrize("window", [None, 7])
def test_recency_bias_streaming_equals_full_forward(window):
    torch.manual_seed(0)
    m = build_model(make_config("transformer", recency=True, conv=3, window=window, **TINY)).eval()
    x = torch.randint(0, 61, (2, 33))
    with torch.no_grad():
        full = m(x).logits
        streamed, _ = _stream_manually(m, x, 6)
    assert torch.allclose(full, streamed, atol=1e-5)
    r = build_model(make_config("rmt", recency=True, conv=3, num_mem=2, segment_len=8, **TINY)).eval()
    with torch.no_grad():
        assert torch.isfinite(stream(r, x, [32]).logits).all()


@pytest.mark.parametrize("kind", ["rmt", "transformer"])
def test_recency_and_conv_gradients_are_finite(kind):
    torch.manual_seed(0)
    kw = dict(num_mem=2, memory_always_near=True) if kind == "rmt" else dict(window=5)
    m = build_model(make_config(kind, recency=True, conv=4, segment_len=8, **kw, **TINY))
    x = torch.randint(3, 61, (2, 24))
    y = torch.full_like(x, -100)
    y[:, -1] = 7
    loss, _, _ = unroll(m, x, y)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert all(blk.attn.recency.grad.abs().sum() > 0 for blk in m.blocks)


def test_rmt_gated_memory_can_keep_its_state():
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, mem_gate=True, **TINY)).eval()
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.fill_(-30.0)  # gate closed: the memory must pass through unchanged
        state = m.init_state(2)
        out = m(torch.randint(0, 61, (2, 8)), state)
        assert torch.allclose(out.state.memory, state.memory, atol=1e-6)
        m.gate.bias.fill_(30.0)  # gate open: plain RMT write
        plain = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY)).eval()
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("gate")})
        x = torch.randint(0, 61, (2, 8))
        assert torch.allclose(m(x, state).state.memory, plain(x, state).state.memory, atol=1e-5)


def test_write_cost_adds_the_mean_write_gate_and_trains_the_gate():
    """unroll(write_cost=c) adds c * the mean write gate of the segments that get gradients; the gate's
    weights then get gradient from it; a model with no gated write is refused with the fix named."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, mem_gate=True, **TINY))
    x = torch.randint(0, 61, (2, 24))
    y = torch.full((2, 24), -100)
    y[:, -1] = 3
    seen = []
    hook = m.gate.register_forward_hook(lambda _m, _i, out: seen.append(torch.sigmoid(out).mean()))
    base, _, _ = unroll(m, x, y)
    seen.clear()
    priced, _, _ = unroll(m, x, y, write_cost=0.5)
    hook.remove()
    assert len(seen) == 3  # three segments, all inside the (full) BPTT window
    assert torch.allclose(priced - base, 0.5 * torch.stack(seen).mean(), atol=1e-6)
    m.zero_grad()
    y[:] = -100  # no answers: the price alone must still reach the gate
    y[:, 7] = 3
    only, _, _ = unroll(m, x[:, :8], y[:, :8], write_cost=1.0)
    (only - unroll(m, x[:, :8], y[:, :8])[0]).backward()
    assert m.gate.bias.grad is not None and (m.gate.bias.grad > 0).all()  # every gate is pushed to close
    plain = build_model(make_config("rmt", num_mem=4, segment_len=8, **TINY))
    with pytest.raises(ValueError, match="mem_gate: true.*write_cost to 0"):
        unroll(plain, x, y, write_cost=0.1)


def test_write_skip_keeps_unwritten_entries_exactly_and_trains_the_decision():
    """write_skip: an entry whose decision is "keep" (sigmoid(skip) <= 1/2) leaves the segment exactly as it came
    in; "write" equals the gated RMT; the decision's weights get gradient (straight-through) from the task and
    from write_cost; write_skip without mem_gate is refused with the fix named."""
    torch.manual_seed(0)
    gated = build_model(make_config("rmt", num_mem=4, segment_len=8, mem_gate=True, **TINY))
    m = build_model(make_config("rmt", num_mem=4, segment_len=8, mem_gate=True, write_skip=True, **TINY))
    m.load_state_dict({**m.state_dict(), **gated.state_dict()})
    x = torch.randint(0, 61, (2, 8))
    state = m.init_state(2)
    with torch.no_grad():
        m.skip.bias.fill_(20.0)  # every entry writes: the gated RMT
        assert torch.allclose(m(x, state).state.memory, gated(x, state).state.memory, atol=1e-6)
        m.skip.bias.fill_(-20.0)  # no entry writes: the memory is kept bit for bit
        assert torch.equal(m(x, state).state.memory, state.memory)
        m.skip.bias.zero_()
        m.skip.weight.zero_()
        m.skip.weight[0, 0] = 1.0  # write exactly the entries whose write has a positive first coordinate
        out = m(x, state)
    written = (out.aux["write_p"] > 0.5).squeeze(-1)  # [B, M]
    assert written.any() and (~written).any()
    assert torch.equal(out.state.memory[~written], state.memory[~written])
    assert not torch.equal(out.state.memory[written], state.memory[written])
    y = torch.full((2, 24), -100)
    y[:, -1] = 3
    xx = torch.randint(0, 61, (2, 24))
    m.zero_grad()
    unroll(m, xx, y)[0].backward()
    assert m.skip.weight.grad is not None and m.skip.weight.grad.abs().sum() > 0
    m.zero_grad()
    y[:] = -100
    y[:, 7] = 3
    (unroll(m, xx[:, :8], y[:, :8], write_cost=1.0)[0] - unroll(m, xx[:, :8], y[:, :8])[0]).backward()
    assert m.skip.bias.grad is not None and m.skip.bias.grad > 0  # the price pushes towards keeping
    with pytest.raises(ValueError, match="mem_gate: true"):
        build_model(make_config("rmt", write_skip=True, **TINY))


@pytest.mark.parametrize("near", [False, True])
def test_rmt_fused_recency_equals_explicit_distances(near):
    """RMT applies the recency bias through causal SDPA (RecencyFeatures); it must equal the written-out
    scores - slope * distance with an explicit distance matrix (read memory at distance 0 when `near`)."""
    from memlab.models.blocks import masked_distance

    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8,
                                conv=4, recency=True, memory_always_near=near)).eval()
    for b in m.blocks:  # spread the slopes so that the bias matters
        b.attn.recency.data = torch.tensor([-3.0, -1.0, 0.0, 0.5])
    x = torch.randint(0, 64, (2, 8))
    state = m.init_state(2)
    fused = m(x, state)
    n = 8 + 2 * 3
    pos = torch.arange(n)
    dist = masked_distance(pos, pos, None)
    if near:
        dist[0][:, :3] = 0.0
    m._pos_cache[(n, "cpu")] = (m._pos_cache[(n, "cpu")][0], dist)
    explicit = m(x, state)
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.state.memory, explicit.state.memory, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recency", [False, True])
def test_rmt_keep_computes_only_needed_rows_with_the_same_result(recency):
    """stream() passes keep= so the last block runs only for the asked positions and the write memory; the
    logits and the final memory must equal those of full segment forwards."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8,
                                conv=4 if recency else 0, recency=recency, memory_always_near=recency, mem_gate=recency)).eval()
    x = torch.randint(0, 64, (2, 29))
    with torch.no_grad():
        manual, state = _stream_manually(m, x, 8)
        res = stream(m, x, [0, 3, 4, 20, 28])
    torch.testing.assert_close(res.logits, manual[:, [0, 3, 4, 20, 28]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.state.memory, state.memory, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("near", [False, True])
def test_rmt_written_out_recency_at_inference_equals_fused_sdpa(near):
    """Without autograd a short segment's scores are written out with the bias (faster on CPU); with
    autograd the bias is fused into causal SDPA. Both must give the same logits and memory."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8,
                                conv=4, recency=True, memory_always_near=near, mem_gate=True)).eval()
    for b in m.blocks:
        b.attn.recency.data = torch.tensor([-3.0, -1.0, 0.0, 0.5])
    x, state = torch.randint(0, 64, (2, 8)), m.init_state(2)
    fused = m(x, state)
    assert fused.logits.requires_grad  # the SDPA path ran
    with torch.no_grad():
        written = m(x, state)
    torch.testing.assert_close(written.logits, fused.logits.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(written.state.memory, fused.state.memory.detach(), atol=1e-5, rtol=1e-5)


def test_short_conv_equals_depthwise_conv1d():
    """ShortConv (a sliding-window view, multiply, sum) is the causal depthwise convolution over the inputs
    with the tail before them."""
    import torch.nn.functional as F

    from memlab.models.blocks import ShortConv

    torch.manual_seed(0)
    conv = ShortConv(6, 4)
    x, tail = torch.randn(2, 9, 6), torch.randn(2, 3, 6)
    y, new_tail = conv(x, tail)
    xp = torch.cat((tail, x), dim=1).transpose(1, 2)  # [B, D, K-1+T]
    ref = x + F.conv1d(xp, conv.weight.flip(-1).unsqueeze(1), groups=6).transpose(1, 2)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new_tail, x[:, -3:])


def test_compiled_stream_equals_eager_stream_and_refuses_growing_state():
    """stream(compile=True) runs the segments without an answer through torch.compile; the kept logits and
    the final state must match the eager runner. Attention's KV cache grows, so it is refused."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8,
                                conv=4, recency=True, memory_always_near=True, mem_gate=True)).eval()
    x = torch.randint(0, 64, (2, 61))
    eager = stream(m, x, [5, 60])
    compiled = stream(m, x, [5, 60], compile=True)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.state.memory, eager.state.memory, atol=1e-4, rtol=1e-4)
    # mode reduce-overhead (CUDA graphs on a GPU; here the same kernels, through its own compiled forward and the
    # state copied out of each call): the same numbers
    graphs = stream(m, x, [5, 60], compile=True, compile_mode="reduce-overhead")
    torch.testing.assert_close(graphs.logits, eager.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(graphs.state.memory, eager.state.memory, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="compile mode must be one of default, reduce-overhead"):
        stream(m, x, [60], compile=True, compile_mode="max-autotune")
    for B in (3, 2):  # another batch size, then the first again: after its first call a stream skips most guard
        # checks, so each must still run the graph compiled for its own shapes
        xb = torch.randint(0, 64, (B, 61))
        torch.testing.assert_close(stream(m, xb, [60], compile=True).logits, stream(m, xb, [60]).logits, atol=1e-4, rtol=1e-4)
    tf = build_model(make_config("transformer", **TINY))
    with pytest.raises(ValueError, match="grows with the context"):
        stream(tf, x, [60], compile=True)


def test_stream_reads_a_list_of_rows_a_window_at_a_time_with_the_same_result(monkeypatch):
    """A batch given as rows that slice (lazy samples) streams exactly as the stacked [B, L] array, eager and
    compiled; each row is only ever sliced to a window of READ_AHEAD tokens (moved to the device in one copy), or
    to one segment where that is smaller; rows of different lengths are refused."""
    import memlab.stream as S

    class Rows:
        def __init__(self, a):
            self.a, self.widest = a, 0

        def __len__(self):
            return len(self.a)

        def __getitem__(self, key):
            self.widest = max(self.widest, key.stop - key.start)
            return self.a[key]

    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8)).eval()
    x = np.random.default_rng(0).integers(0, 64, (2, 61))
    for compile, read_ahead in ((False, 1), (True, 1), (False, 20), (True, 20), (True, S.READ_AHEAD)):
        monkeypatch.setattr(S, "READ_AHEAD", read_ahead)
        rows = [Rows(r) for r in x]
        got, ref = stream(m, rows, [5, 60], compile=compile), stream(m, x, [5, 60], compile=compile)
        torch.testing.assert_close(got.logits, ref.logits, atol=0, rtol=0)
        torch.testing.assert_close(got.state.memory, ref.state.memory, atol=0, rtol=0)
        assert got.tokens == 61 and max(r.widest for r in rows) == min(max(read_ahead, 8), 61)
    with pytest.raises(ValueError, match="one length"):
        stream(m, [x[0], x[1, :60]], [5])


def test_compiled_training_unroll_equals_eager_in_loss_and_gradients():
    """unroll(compile=True) (TrainConfig.compile): the full-length segments run forward and backward through
    torch.compile, the partial first one eagerly; loss, accuracy and every gradient must match the eager unroll,
    with truncated BPTT (windows without autograd, then with) and with write_skip and write_cost."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8,
                                conv=4, recency=True, memory_always_near=True, mem_gate=True, write_skip=True))
    x = torch.randint(0, 64, (3, 61))
    y = torch.full_like(x, -100)
    y[:, 60], y[:, 30] = 7, 9
    assert len(assert_compiled_unroll_equals_eager(m, x, y, bptt_depth=3, write_cost=0.5)) > 10


def test_a_stream_resumed_from_a_snapshot_equals_the_uninterrupted_one():
    """stream(snapshot=...) hands out (tokens done, state) after segments that keep no logits; stream(start=, state=)
    from any of them gives exactly the uninterrupted logits and state, eager and compiled, also for a state saved to
    the CPU; a start that is not a segment boundary, or that lies after a kept position, is refused."""
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=64, d_model=32, n_layers=2, n_heads=4, num_mem=3, segment_len=8)).eval()
    x = np.random.default_rng(1).integers(0, 64, (2, 61))  # a first segment of 5 tokens, then 7 of 8
    for compile in (False, True):
        ref = stream(m, x, [60], compile=compile)
        snaps = []
        stream(m, x, [60], compile=compile, snapshot=lambda done, st, tot: snaps.append((done, tree_map(torch.clone, st))))
        assert [d for d, _ in snaps] == [5, 13, 21, 29, 37, 45, 53]  # not after the last segment, which keeps a logit
        for done, st in snaps[::3]:
            got = stream(m, x, [60], compile=compile, start=done, state=tree_map(lambda t: t.cpu(), st))
            torch.testing.assert_close(got.logits, ref.logits, atol=0, rtol=0)
            torch.testing.assert_close(got.state.memory, ref.state.memory, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a segment boundary"):
        stream(m, x, [60], start=6, state=snaps[0][1])
    with pytest.raises(ValueError, match="kept position"):
        stream(m, x, [4, 60], start=13, state=snaps[1][1])
