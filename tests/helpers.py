"""Helpers shared by the model tests."""
import torch

from memlab.stream import unroll


def embedding_grads(model, x, bptt_depth=None, answer=5):
    """Unroll x with one loss, at its last position; per segment, the summed |gradient| that reaches its token
    embeddings (None for a segment that ran without autograd because no loss can reach it)."""
    captured = []

    def keep(mod, inp, out):
        if out.requires_grad:
            out.retain_grad()
        captured.append(out)

    hook = model.embed.register_forward_hook(keep)
    y = torch.full_like(x, -100)
    y[:, -1] = answer
    try:
        loss, _, _ = unroll(model, x, y, bptt_depth=bptt_depth)
        loss.backward()
    finally:
        hook.remove()
    return [None if c.grad is None else c.grad.abs().sum().item() for c in captured]


def assert_write_decision_trains(model, skips, x, answer=3):
    """write_skip's decision layers (`skips`, nn.Linear each) get gradient from a task loss at x's last position
    (straight-through) and, from write_cost, a positive bias gradient: the price pushes towards keeping."""
    model.train()
    y = torch.full_like(x, -100)
    y[:, -1] = answer
    model.zero_grad()
    unroll(model, x, y)[0].backward()
    assert all(s.weight.grad is not None and s.weight.grad.abs().sum() > 0 for s in skips)
    model.zero_grad()
    (unroll(model, x, y, write_cost=1.0)[0] - unroll(model, x, y)[0]).backward()
    assert all(s.bias.grad > 0 for s in skips)


def assert_compiled_unroll_equals_eager(model, x, y, **kw):
    """unroll(compile=True) gives the eager unroll's loss, accuracy, answer count and every gradient; returns the
    eager gradients by parameter name."""
    runs = []
    for compile in (False, True):
        model.zero_grad()
        loss, acc, n = unroll(model, x, y, compile=compile, **kw)
        loss.backward()
        runs.append((loss.detach(), acc, n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (l0, a0, n0, g0), (l1, a1, n1, g1) = runs
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    assert (a1, n1) == (a0, n0) and g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-4, msg=k)
    return g0
