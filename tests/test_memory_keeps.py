"""What memory keeps: per-segment state updates and the fact / noise ratio, on a constructed model with a
known answer and on a real RMT."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from memlab.analysis.memory_keeps import fact_noise_ratio, fact_segments, state_updates
from memlab.models.base import ModelOutput
from memlab.models.registry import build_model, make_config


@dataclass
class Cfg:
    segment_len: int = 4


class Counter(torch.nn.Module):
    """State = 1 + 0.1 per segment + 1 per token 7 seen: fact segments (with a 7) change it most."""
    fixed_state = True
    config = Cfg()

    def init_state(self, B, device=None):
        return torch.ones(B, 1, device=device)

    def forward(self, tokens, state, return_logits=True):
        return ModelOutput(None, state + 0.1 + (tokens == 7).sum(1, keepdim=True).float(), None)


def test_updates_and_ratio_on_a_constructed_model():
    # segments: first (left out), noise, fact, noise, question (left out)
    x = torch.tensor([[1, 1, 1, 1, 1, 2, 3, 4, 7, 5, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2]])
    upd, bounds = state_updates(Counter(), x)
    s = [1.0, 1.1, 1.2, 2.3, 2.4, 2.5]
    np.testing.assert_allclose(upd[0], [(b - a) / a for a, b in zip(s, s[1:])], rtol=1e-5)
    mask = fact_segments(bounds, [(8, 9)])
    assert mask.tolist() == [False, False, True, False, False]
    r = fact_noise_ratio(upd, [mask])
    assert r["ratio"] == pytest.approx((1.1 / 1.2) / ((0.1 / 1.1 + 0.1 / 2.3) / 2), rel=1e-5) and r["ratio"] > 1
    with pytest.raises(ValueError, match="no sample has both"):
        fact_noise_ratio(upd, [np.ones(5, dtype=bool)])


def test_updates_on_a_real_rmt_and_refused_for_attention():
    torch.manual_seed(0)
    m = build_model(make_config("rmt", vocab_size=40, d_model=16, n_layers=1, n_heads=2, num_mem=2, segment_len=8)).eval()
    upd, bounds = state_updates(m, torch.randint(0, 40, (2, 37)))
    assert upd.shape == (2, len(bounds)) == (2, 5) and np.isfinite(upd).all() and (upd > 0).all()
    tf = build_model(make_config("transformer", vocab_size=40, d_model=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="grows with the context"):
        state_updates(tf, torch.randint(0, 40, (1, 20)))


def test_fam_updates_measure_its_feedback_memory_only():
    """FAM's state also holds its attention window and position; the analysis measures the FAM tokens' change."""
    torch.manual_seed(0)
    m = build_model(make_config("fam", vocab_size=40, d_model=16, n_layers=2, n_heads=2, block=4, segment_len=8,
                                num_fam=2)).eval()
    x = torch.randint(0, 40, (2, 24))
    upd, bounds = state_updates(m, x)
    s0 = m.init_state(2)
    s1 = m(x[:, :8], s0, return_logits=False).state
    want = ((s1.fam - s0.fam).reshape(2, -1).norm(dim=1) / s0.fam.reshape(2, -1).norm(dim=1)).detach().numpy()
    np.testing.assert_allclose(upd[:, 0], want, rtol=1e-5)
    assert upd.shape == (2, 3) and (upd > 0).all()


def test_titans_surprise_is_the_gradient_norm_at_the_chunk_start():
    from memlab.analysis.memory_keeps import _titans_probe
    from memlab.models.titans import _autograd_grads, memory_chunks

    torch.manual_seed(0)
    B, T, d = 2, 6, 8
    W = [torch.randn(B, 16, d) * 0.3, torch.randn(B, d, 16) * 0.3]
    S = [torch.zeros_like(w) for w in W]
    k, v, q = torch.randn(B, T, d), torch.randn(B, T, d), torch.randn(B, T, d)
    theta, eta, alpha = torch.rand(B, T) * 0.1, torch.rand(B, T), torch.rand(B, T) * 0.01
    got = _titans_probe(memory_chunks, W, S, k, v, q, theta, eta, alpha, T)  # one chunk: every gradient at W
    for t in range(T):
        g = _autograd_grads(W, k[:, t], v[:, t])
        want = torch.sqrt(sum(x.flatten(1).norm(dim=1) ** 2 for x in g))
        assert torch.allclose(got["surprise"][:, t], want, rtol=1e-4)
    assert torch.allclose(got["write"], theta * got["surprise"])


def test_sleep_write_is_the_delta_rule_error_times_its_gate():
    from memlab.analysis.memory_keeps import _sleep_probe

    torch.manual_seed(0)
    B, H, T, D = 1, 2, 2, 4
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D), dim=-1)
    v = torch.randn(B, H, T, D)
    ones = torch.ones(B, H, T)
    w = _sleep_probe(None, torch.zeros(B, H, D, D), k, k, v, ones, 0.5 * ones)["write"]
    assert torch.allclose(w[:, 0], 0.5 * v[:, :, 0].norm(dim=-1).sum(1))  # empty memory: the whole value
    # after writing 0.5 v0 k0^T, token 1's error is v1 - 0.5 v0 (k0 . k1)
    err = v[:, :, 1] - 0.5 * v[:, :, 0] * (k[:, :, 0] * k[:, :, 1]).sum(-1, keepdim=True)
    assert torch.allclose(w[:, 1], 0.5 * err.norm(dim=-1).sum(1), atol=1e-6)


def test_token_writes_read_the_internals_and_leave_the_models_unchanged():
    from memlab.analysis.memory_keeps import token_fact_ratio, token_writes
    from memlab.models import armt, sleep, titans
    from memlab.models.registry import build_model, make_config
    from memlab.stream import stream

    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 96))
    originals = (titans.memory_chunks, sleep.gated_delta_chunk, armt.delta_write)
    for name, extra, keys in (("titans", {"chunk": 8}, {"surprise", "write"}), ("sleep", {}, {"write"}), ("armt", {}, {"gate"})):
        m = build_model(make_config(name, vocab_size=50, d_model=32, n_layers=2, n_heads=2, segment_len=32, **extra)).eval()
        ref = stream(m, x, [95]).logits
        w = token_writes(m, x)
        assert set(w) == keys | {"bounds"} and len(w["bounds"]) == 3
        for k in keys:
            assert w[k].shape == ((2, 96) if name != "armt" else (2, 3)) and (w[k] >= 0).all()
        assert torch.equal(stream(m, x, [95]).logits, ref)
    assert (titans.memory_chunks, sleep.gated_delta_chunk, armt.delta_write) == originals
    with pytest.raises(ValueError, match="not 'rmt'"):
        token_writes(build_model(make_config("rmt", vocab_size=50, d_model=32, n_layers=1, n_heads=2, segment_len=32)), x)
    vals = np.array([[1.0, 5, 5, 1, 1, 9], [1, 1, 1, 4, 1, 9]])
    r = token_fact_ratio(vals, [[(1, 3)], [(3, 4)]], [5, 5])  # the question (position 5 on) left out
    assert r["ratio"] == pytest.approx(4.5 / 1.0) and r["share_of_samples_above_1"] == 1.0
