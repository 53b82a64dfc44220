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
