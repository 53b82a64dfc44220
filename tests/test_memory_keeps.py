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
