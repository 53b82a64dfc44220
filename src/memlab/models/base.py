"""The one contract every memlab model follows: a model is a function of (segment, state).

    state = model.init_state(batch_size)
    for segment in segments(tokens, segment_len):      # segment: [B, T] token ids
        out = model(segment, state)                   # out.logits [B, T, V] (or None), out.state, out.aux
        state = out.state

A state is a small pytree (dataclass / tuple / dict / list of tensors). `state_nbytes` measures it,
`detach_state` cuts the autograd graph between segments (truncated BPTT).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [B, T, V]; None when called with return_logits=False
    state: Any  # the state to pass with the next segment
    hidden: torch.Tensor | None = None  # [B, T, D] final normalised hidden states (before the LM head)
    aux: dict = field(default_factory=dict)  # model-specific diagnostics (never required by the runner)


def tree_map(fn, tree):
    """Apply fn to every tensor leaf of a state pytree (dataclass, tuple, list, dict, None)."""
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree)})
    if isinstance(tree, tuple):
        return type(tree)(*(tree_map(fn, t) for t in tree)) if hasattr(tree, "_fields") else tuple(tree_map(fn, t) for t in tree)
    if isinstance(tree, list):
        return [tree_map(fn, t) for t in tree]
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return tree


def tree_leaves(tree) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    tree_map(lambda t: out.append(t) or t, tree)
    return out


def state_nbytes(state) -> int:
    """Bytes held by a state: the measured size of attention's KV cache or a recurrent memory."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(state))


def detach_state(state):
    return tree_map(lambda t: t.detach(), state)


class SequenceModel(nn.Module):
    """Base class: subclasses implement init_state and forward(segment, state, return_logits)."""

    config: Any

    def init_state(self, batch_size: int, device=None):  # pragma: no cover - interface
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head applied to final hidden states [.., D] -> [.., V]; lets the runner score only answer positions."""
        return self.lm_head(hidden)

    def grow_vocab(self, new_size: int) -> None:
        """Append rows to the token embedding (tied to the LM head) for words added to the tokenizer; the
        existing rows are unchanged, the new ones random at the scale of the trained ones."""
        emb, head = getattr(self, "embed", None), getattr(self, "lm_head", None)
        if not isinstance(emb, nn.Embedding) or head is None or head.weight is not emb.weight:
            raise ValueError(f"{type(self).__name__} has no tied word embedding to grow; train it from scratch on the new task")
        old = emb.weight.data
        if new_size < old.shape[0]:
            raise ValueError(f"grow_vocab cannot shrink the vocabulary ({old.shape[0]} -> {new_size})")
        extra = torch.randn(new_size - old.shape[0], old.shape[1], dtype=old.dtype, device=old.device) * old.std()
        emb.weight = head.weight = nn.Parameter(torch.cat((old, extra)))
        emb.num_embeddings, head.out_features = new_size, new_size
        self.config.vocab_size = new_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def transfer_weights(src: nn.Module, dst: nn.Module) -> tuple[list[str], list[str]]:
    """Copy into dst every parameter/buffer of src with the same name and shape (a warm start from another
    model kind that shares the blocks, e.g. ARMT from an RMT), and, for names src lacks, those dst.init_aliases
    maps to a src name ({dst name: src name}); returns (copied names, names left as built)."""
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    aliases = getattr(dst, "init_aliases", {})
    name = {k: k if k in src_sd else aliases.get(k, k) for k in dst_sd}  # the same kind keeps its own tensors
    taken = [k for k, v in dst_sd.items() if name[k] in src_sd and src_sd[name[k]].shape == v.shape]
    if not taken:
        raise ValueError(f"{type(src).__name__} and {type(dst).__name__} share no weights (same name and shape)")
    dst.load_state_dict({**dst_sd, **{k: src_sd[name[k]] for k in taken}})
    return taken, [k for k in dst_sd if k not in set(taken)]


def check_options(checks) -> None:
    """Raise ValueError with the message of the first (ok, message) pair that is not ok."""
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
