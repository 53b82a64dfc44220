"""Sleep consolidation (arXiv:2605.26099): the gated delta rule, the passes, eviction, FLOPs accounting."""
import pytest
import torch
import torch.nn.functional as F

from memlab.models import sleep as sleep_mod
from memlab.models.base import state_nbytes
from memlab.models.registry import build_model, make_config
from memlab.models.sleep import FastWeightState, gated_delta_chunk, gated_delta_reference
from memlab.stream import segment_bounds, stream

from helpers import embedding_grads

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, fw_heads=2, segment_len=8)


def _inputs(B=2, H=3, T=13, K=5, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, K, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, H, T, K, generator=g), dim=-1)
    v = torch.randn(B, H, T, V, generator=g)
    alpha = 0.5 + 0.5 * torch.rand(B, H, T, generator=g)
    beta = torch.rand(B, H, T, generator=g)
    return torch.randn(B, H, V, K, generator=g), q, k, v, alpha, beta


def test_chunked_gated_delta_rule_equals_the_token_by_token_definition():
    args = [t.double() for t in _inputs()]
    ref_reads, ref_S = gated_delta_reference(*args)
    reads, S = gated_delta_chunk(*args)
    torch.testing.assert_close(reads, ref_reads, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(S, ref_S, atol=1e-12, rtol=1e-10)
    r32, S32 = gated_delta_chunk(*_inputs())  # float32, as the model runs it
    torch.testing.assert_close(r32, ref_reads.float(), atol=1e-5, rtol=1e-5)


def test_delta_rule_with_full_write_and_no_decay_stores_the_value():
    """alpha = beta = 1: writing v under a unit key k makes S k = v, whatever S held."""
    S, q, k, v, _, _ = _inputs(T=1)
    ones = torch.ones(2, 3, 1)
    _, S1 = gated_delta_chunk(S, q, k, v, ones, ones)
    torch.testing.assert_close((S1 @ k[:, :, 0, :, None])[..., 0], v[:, :, 0], atol=1e-5, rtol=1e-5)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(make_config("sleep", **{**TINY, **kw})).eval()


def _manual(model, x, passes=None):
    state, outs = model.init_state(x.shape[0]), []
    for s, e in segment_bounds(x.shape[1], model.config.segment_len):
        out = model(x[:, s:e], state, passes=passes)
        state, outs = out.state, outs + [out.logits]
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("kw", [{}, dict(conv=4, recency=True, window=5)])
def test_streaming_equals_whole_sequence_pass_and_state_is_only_S(kw):
    """stream() (no autograd) equals full forwards of every chunk; the state is S per layer and head only,
    the same size at every length (the chunk's keys and values are gone)."""
    m = _model(sleep_passes=2, **kw)
    x = torch.randint(0, 61, (2, 29))
    full, state = _manual(m, x)
    res = stream(m, x, [0, 12, 28])
    torch.testing.assert_close(res.logits, full[:, [0, 12, 28]].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.state.S, state.S.detach(), atol=1e-5, rtol=1e-5)
    assert [f for f in vars(res.state)] == ["S"] and res.state.S.shape == (2, 2, 2, 16, 16)
    assert state_nbytes(stream(m, torch.randint(0, 61, (2, 300)), [299]).state) == state_nbytes(res.state)


def test_zero_passes_is_the_plain_hybrid(monkeypatch):
    """N = 0: each chunk runs the stack once. Checked against the same stack run with the token-by-token
    delta rule; and the predictions of a chunk never depend on its own sleep (wake-time latency)."""
    m = _model()
    x = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        zero, S0 = _manual(m, x, passes=0)
        monkeypatch.setattr(sleep_mod, "gated_delta_chunk", gated_delta_reference)
        ref, S_ref = _manual(m, x, passes=0)
        monkeypatch.undo()
        torch.testing.assert_close(zero, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S0.S, S_ref.S, atol=1e-5, rtol=1e-5)
        first = m(x[:, :8], passes=3).logits  # sleeping after a chunk leaves that chunk's predictions alone
        torch.testing.assert_close(first, zero[:, :8])


def test_more_passes_change_S_and_what_later_chunks_see():
    m = _model()
    x = torch.randint(0, 61, (1, 16))
    with torch.no_grad():
        states = [m(x[:, :8], passes=n).state for n in (0, 1, 2, 4)]
        for a, b in zip(states, states[1:]):
            assert (a.S - b.S).abs().max() > 1e-4
        later = [m(x[:, 8:], s, passes=0).logits for s in states]
        assert (later[0] - later[2]).abs().max() > 1e-4


def test_the_state_after_a_chunk_depends_only_on_S():
    """Continuing from a copy of S alone (a fresh FastWeightState) gives exactly what continuing the stream
    gives: nothing else of the evicted chunk survives."""
    m = _model(sleep_passes=2)
    x = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        s1 = m(x[:, :8]).state
        cont = m(x[:, 8:], s1).logits
        copied = m(x[:, 8:], FastWeightState(s1.S.clone())).logits
        other = m(x[:, 8:], m(torch.randint(0, 61, (2, 8))).state).logits
    torch.testing.assert_close(copied, cont)
    assert (other - cont).abs().max() > 1e-4  # and S does carry the chunk


def test_flops_are_reported_apart_and_summed_by_the_runner():
    m = _model(sleep_passes=3)
    out = m(torch.randint(0, 61, (2, 8)))
    assert out.aux["passes"] == 3 and out.aux["flops_sleep"] == 3 * out.aux["flops_predict"] > 0
    res = stream(m, torch.randint(0, 61, (2, 24)), [23])
    assert res.totals["flops_predict"] == pytest.approx(3 * out.aux["flops_predict"])
    assert res.totals["flops_sleep"] == pytest.approx(3 * res.totals["flops_predict"])


def test_training_draws_passes_from_the_range_and_gradients_cross_chunks():
    m = _model(train_passes=[1, 3], sleep_passes=2).train()
    drawn = {m(torch.randint(0, 61, (1, 8))).aux["passes"] for _ in range(40)}
    assert drawn == {1, 2, 3}
    assert m.eval()(torch.randint(0, 61, (1, 8))).aux["passes"] == 2
    m.train()
    assert embedding_grads(m, torch.randint(3, 61, (2, 24)))[0] > 0  # the first chunk reaches the answer only through S


@pytest.mark.parametrize("bad, msg", [(dict(sleep_passes=-1), "sleep_passes"), (dict(window=9), "window"),
                                      (dict(fw_heads=0), "fw_heads"), (dict(train_passes=[3, 1]), "train_passes")])
def test_bad_options(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build_model(make_config("sleep", **{**TINY, **bad}))
    with pytest.raises(ValueError, match="passes must be >= 0"):
        _model()(torch.randint(0, 61, (1, 8)), passes=-2)


def test_sleep_trains_and_evaluates_end_to_end_with_flops_in_the_store(tmp_path, books):
    """`memlab train` (N drawn from train_passes) then `memlab eval`: the cell keeps the FLOPs per sample of
    prediction and of consolidation apart, consolidation = N x prediction at evaluation."""
    import contextlib
    import io
    import json

    from memlab.cli import main
    from memlab.store import ResultStore

    book = min(books, key=lambda p: p.stat().st_size)
    args = json.dumps({"d_model": 32, "n_layers": 1, "n_heads": 2, "fw_heads": 2, "segment_len": 32,
                       "sleep_passes": 2, "train_passes": [0, 2]})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("train_pool: 200\nvocab_size: 300\neval_samples: 4\nwarmup: 1\nstage_steps: 2\nseed: 1\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--recipe", str(recipe), "--model", "sleep", "--model-args", args, "--task", "babilong:qa1",
                     "--lengths", "0,128", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "ck"),
                     "--no-progress", "--haystack", str(book)]) == 0
        assert main(["eval", str(tmp_path / "ck"), "--task", "babilong:qa1", "--lengths", "256", "--samples", "2",
                     "--batch-size", "2", "--store", str(tmp_path / "s.sqlite"), "--haystack", str(book)]) == 0
    with ResultStore(tmp_path / "s.sqlite") as store:
        (cell,) = store.cells()
    predict, sleep = cell.extra["flops_predict_per_sample"], cell.extra["flops_sleep_per_sample"]
    assert predict > 0 and sleep == pytest.approx(2 * predict)


def test_sleep_flops_are_reported_on_text_tasks_too(tmp_path):
    """evaluate_token_text (RULER / FLenQA cells of memlab checkpoints, as benchmarks/sleep_curve.py --task uses)
    keeps the FLOPs of prediction and of consolidation apart per sample, like the bAbI cells: consolidation =
    N x prediction, and N = 0 spends none."""
    from memlab.evaluate import evaluate_token_text
    from memlab.store import ResultStore
    from memlab.tasks.text import WordTokenizer
    from memlab.tasks.variants import TokenTextTask

    tok = WordTokenizer.build(TokenTextTask("ruler-vt", None, None).words())
    torch.manual_seed(0)
    model = build_model(make_config("sleep", **{**TINY, "vocab_size": len(tok), "segment_len": 32}))
    with ResultStore(tmp_path / "s.sqlite") as store:
        for n in (0, 3):
            model.config.sleep_passes = n
            evaluate_token_text(f"m@N={n}", model, tok, ["ruler-vt"], [96], 2, 0, store, None, log=lambda m: None)
        cells = {c.model: c for c in store.cells()}
    assert set(cells) == {"m@N=0", "m@N=3"}
    for n in (0, 3):
        extra = cells[f"m@N={n}"].extra
        assert extra["flops_predict_per_sample"] > 0
        assert extra["flops_sleep_per_sample"] == pytest.approx(n * extra["flops_predict_per_sample"])


def test_eval_passes_sets_n_and_names_the_cells(tmp_path):
    """`memlab eval --passes N` on a sleep checkpoint evaluates with N passes per chunk and stores the cell as
    NAME@N=N, so that different N never share a cell. On the shipped one-block model 2-hop chains need the passes:
    16 held-out samples at 128 tokens, N = 0 near the blind pick (measured 0.51 on 100), N = 4 near all (0.99).
    Bad input: a negative N, and --passes on a model that is not a sleep model, are refused."""
    import contextlib
    import io
    from pathlib import Path

    from memlab.cli import main
    from memlab.store import ResultStore

    ck = str(Path(__file__).resolve().parents[1] / "checkpoints" / "sleep-vt-hops")
    store = tmp_path / "s.sqlite"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for n in (0, 4):
            assert main(["eval", ck, "--task", "ruler:vt_value_h2", "--lengths", "128", "--samples", "16",
                         "--passes", str(n), "--store", str(store)]) == 0
    with ResultStore(store) as s:
        acc = {c.model: c.accuracy for c in s.cells()}
    assert set(acc) == {"sleep-vt-hops@N=0", "sleep-vt-hops@N=4"}
    assert acc["sleep-vt-hops@N=4"] >= 0.9 and acc["sleep-vt-hops@N=0"] <= 0.75, acc
    err = io.StringIO()
    rmt = str(Path(ck).parent / "rmt-qa1")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", ck, "--task", "ruler:vt_value_h2", "--lengths", "128", "--passes", "-1", "--store", str(store)]) == 2
        assert main(["eval", rmt, "--lengths", "1k", "--passes", "2", "--store", str(store)]) == 2
    assert "--passes must be >= 0" in err.getvalue() and "sleep checkpoints only" in err.getvalue()
