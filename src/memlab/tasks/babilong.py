"""BABILong (Kuratov et al., arXiv:2402.10790): bAbI facts hidden in long haystack text.

The facts of one bAbI question are inserted, in order, at random sentence boundaries of haystack
text; the question comes last. A sample has exactly `length` tokens (of the tokenizer under test);
the model must predict the answer word from the logits at the last position.
"""
from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from memlab.tasks.babi import TASKS, Question
from memlab.tasks.text import TokenizedHaystack, WordTokenizer, UNK_ID


@dataclass
class Sample:
    tokens: np.ndarray  # [L] int64 token ids: haystack with the facts inside, then the question (lazy: SplicedTokens)
    answer: int  # answer token id (predicted from the logits at answer_pos)
    answer_text: str
    answer_pos: int  # L - 1: the last token, whose next-token logits predict the answer
    fact_spans: list[tuple[int, int]]  # (start, end) token offsets of each inserted fact, in order
    question_span: tuple[int, int]  # (start, end) of the question tokens, end == L
    meta: dict = field(default_factory=dict)  # task, length, seed, supporting, supporting_spans, ...


class SplicedTokens:
    """The token ids of a BABILong sample, read a slice at a time: haystack text (a `HaystackCut`) with each fact
    inserted at its haystack offset, then the question. It holds the haystack and the facts, not the sample, so a
    100M-token sample costs no more memory than a 1k one; `np.asarray(t)` builds it whole (int64)."""

    dtype = np.dtype(np.int64)

    def __init__(self, cut, facts: list[np.ndarray], positions, question: np.ndarray):
        """cut: a `HaystackCut`, or None for no haystack; positions: each fact's haystack offset, ascending."""
        self.pieces: list[tuple[int, int, object]] = []  # (start in the sample, length, haystack offset or ids)
        n_hay = cut.n_tokens if cut is not None else 0
        dst = src = 0
        for f, p in zip(facts, positions):
            p = int(p)
            self.pieces += [(dst, p - src, src), (dst + p - src, len(f), f)]
            dst, src = dst + p - src + len(f), p
        self.pieces += [(dst, n_hay - src, src), (dst + n_hay - src, len(question), question)]
        self.cut, self.length = cut, dst + n_hay - src + len(question)
        self.fact_spans = [(d, d + n) for d, n, x in self.pieces[1:-2:2]]
        self.question_span = (self.length - len(question), self.length)
        self.starts = [start for start, _, _ in self.pieces]

    def __len__(self) -> int:
        return self.length

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"SplicedTokens takes a contiguous slice such as t[a:b], got {key!r}; np.asarray(t) builds it whole")
        a, b, _ = key.indices(self.length)
        out = np.empty(max(b - a, 0), dtype=np.int64)
        first = max(bisect.bisect_right(self.starts, a) - 1, 0)  # the piece holding a (a sample has ~2 per fact)
        for start, n, x in itertools.islice(self.pieces, first, None):
            if start >= b:
                break
            lo, hi = max(a, start), min(b, start + n)
            if lo >= hi:
                continue
            out[lo - a:hi - a] = x[lo - start:hi - start] if isinstance(x, np.ndarray) else self.cut.tokens(x + lo - start, x + hi - start)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def make_sample(question: Question, length: int, tokenizer: WordTokenizer, haystack: TokenizedHaystack | None,
                rng: np.random.Generator, facts_before: int | None = None, lazy: bool = False) -> Sample:
    """Insert the question's facts in order at random sentence boundaries of `length - (facts + question)`
    haystack tokens, then append the question. With haystack=None, the sample is facts + question.
    facts_before: every fact must end before this token index of the sample (e.g. length - segment_len puts
    them all before the question's segment, so a recurrent model can only answer from its memory).
    lazy: `tokens` is a `SplicedTokens` (sliced on demand, memory flat in length) instead of an array; the
    same ids either way."""
    facts = [np.asarray(tokenizer.encode(f), dtype=np.int64) for f in question.facts]
    q = np.asarray(tokenizer.encode(question.question), dtype=np.int64)
    answer = tokenizer.token_id(question.answer)
    if answer == UNK_ID:
        raise ValueError(f"answer {question.answer!r} is not in the tokenizer's vocabulary; build it with the task's words (task_words(task))")
    needed = sum(len(f) for f in facts) + len(q)
    if haystack is None:
        cut, positions = None, np.zeros(len(facts), dtype=np.int64)
    else:
        if length < needed:
            raise ValueError(f"length {length} is shorter than the facts and question of this sample ({needed} tokens); use a length >= {needed} (or fewer facts, e.g. generate_babi(..., max_facts=...))")
        cut = haystack.cut(rng, length - needed)
        at_most = None
        if facts_before is not None:
            at_most = facts_before - (needed - len(q))  # latest haystack offset at which the facts still fit
            if at_most < 0:
                raise ValueError(f"the facts of this sample ({needed - len(q)} tokens) cannot all end before token {facts_before}; use a longer length or a later facts_before")
        k = cut.n_bounds(at_most)  # with none, every fact goes at offset 0
        pick = rng.integers(0, max(k, 1), size=len(facts))
        positions = np.sort(cut.bound(pick) if k else np.zeros(len(facts), dtype=np.int64))
    tokens = SplicedTokens(cut, facts, positions, q)
    total = len(tokens)
    sup = tuple(question.supporting)
    return Sample(
        tokens=tokens if lazy else np.asarray(tokens),
        answer=answer,
        answer_text=question.answer,
        answer_pos=total - 1,
        fact_spans=tokens.fact_spans,
        question_span=tokens.question_span,
        meta={
            "task": question.task,
            "length": total,
            "supporting": sup,
            "supporting_spans": [tokens.fact_spans[i] for i in sup],
            "n_facts": len(facts),
            "question": question.question,
        },
    )


class BabilongTask:
    """Samples of one bAbI task at any length; `sample(length, seed)` is a pure function of (seed, length).

    The question is chosen by seed alone (the same question at every length); the haystack cut and the
    fact positions depend on (seed, length)."""

    def __init__(self, task: int, questions: list[Question], tokenizer: WordTokenizer, haystack: TokenizedHaystack | None):
        if not questions:
            raise ValueError(f"BabilongTask qa{task} got no questions; pass read_babi_dir(...) or generate_babi(...) output")
        self.task, self.questions, self.tokenizer, self.haystack = task, questions, tokenizer, haystack

    def sample(self, length: int, seed: int, facts_before: int | None = None, lazy: bool = False) -> Sample:
        """lazy: tokens as a `SplicedTokens` read a slice at a time (what streaming evaluation uses)."""
        qi = int(np.random.default_rng([seed, 0]).integers(len(self.questions)))
        rng = np.random.default_rng([seed, 1, length])
        s = make_sample(self.questions[qi], length, self.tokenizer, self.haystack, rng, facts_before, lazy)
        s.meta.update(task=self.task, seed=seed, question_index=qi, requested_length=length)
        return s

    def samples(self, length: int, n: int, seed: int) -> list[Sample]:
        """n samples; sample i is `sample(length, seed + i)`."""
        return [self.sample(length, seed + i) for i in range(n)]


FAMILIES = {"babilong": TASKS}


def _known() -> str:
    return ", ".join(f"{fam}:qa{t}" for fam, ts in FAMILIES.items() for t in ts)


def parse_task_spec(spec: str) -> list[tuple[str, int]]:
    """'babilong:qa1' -> [('babilong', 1)]; 'babilong:qa1,qa2' -> two entries."""
    fam, sep, rest = spec.strip().partition(":")
    fam = fam.strip().lower()
    if fam not in FAMILIES or not sep:
        raise ValueError(f"unknown task spec {spec!r}; known tasks: {_known()} (several as 'babilong:qa1,qa2')")
    out: list[tuple[str, int]] = []
    for part in rest.split(","):
        m = re.fullmatch(r"qa(\d+)", part.strip().lower())
        if m is None or int(m.group(1)) not in FAMILIES[fam]:
            raise ValueError(f"unknown task {part.strip()!r} in {spec!r}; known tasks: {_known()}")
        if (fam, int(m.group(1))) not in out:
            out.append((fam, int(m.group(1))))
    return out


_LENGTH = re.compile(r"(\d+(?:\.\d+)?)([kKmM]?)")


def parse_length(s: str) -> int:
    """'1k' -> 1000, '1M' -> 1_000_000, '1024' -> 1024 (k = 1000, M = 1_000_000)."""
    m = _LENGTH.fullmatch(str(s).strip().replace("_", ""))
    if m is None:
        raise ValueError(f"bad length {s!r}; write a token count like 1024, 4k, 1M or 11M")
    value = float(m.group(1)) * {"": 1, "k": 1000, "m": 1_000_000}[m.group(2).lower()]
    if value != int(value) or value <= 0:
        raise ValueError(f"bad length {s!r}: it must be a positive whole number of tokens (e.g. 1k, 4k, 1M)")
    return int(value)


def parse_lengths(s: str) -> list[int]:
    """'1k,4k,1M' -> [1000, 4000, 1000000]."""
    parts = [p for p in str(s).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"bad lengths {s!r}; write a comma-separated list like 1k,4k,1M")
    return [parse_length(p) for p in parts]


@dataclass
class TextBabilong:
    """A BABILong sample as plain text, for language models that read words rather than memlab tokens."""

    document: str  # book sentences with the facts inserted in order
    question: str
    answer: str
    length: int  # word tokens (tokenize_words) of document + question: the sample's length
    fact_sentences: list[int]  # indices, among the document's sentences, of the inserted facts
    meta: dict = field(default_factory=dict)


def text_sample(question: Question, length: int, sentences: list[str], seed: int, paragraph: int = 6) -> TextBabilong:
    """The facts of `question` inserted in order at random sentence boundaries of consecutive book sentences
    (from a random start) so that document + question hold exactly `length` word tokens; a blank line every
    `paragraph` sentences."""
    from .flenqa import count_tokens, fill_tokens

    if not sentences:
        raise ValueError("no haystack sentences: pass book files (e.g. ../shared/data/books/*.txt)")
    need = sum(count_tokens(f) for f in question.facts) + count_tokens(question.question)
    if length < need:
        raise ValueError(f"length {length} is shorter than the facts and question of this sample ({need} word tokens); "
                         f"use a length >= {need}")
    rng = np.random.default_rng([seed, 2, length])
    start = int(rng.integers(len(sentences)))
    hay = fill_tokens((sentences[(start + i) % len(sentences)] for i in range(10**9)), length - need) if length > need else []
    slots = np.sort(rng.integers(0, len(hay) + 1, size=len(question.facts)))
    units, facts_at = [], []
    h = 0
    for fact, slot in zip(question.facts, slots):
        units += hay[h:slot]
        h = int(slot)
        facts_at.append(len(units))
        units.append(fact)
    units += hay[h:]
    paras = [" ".join(units[i : i + paragraph]) for i in range(0, len(units), paragraph)]
    return TextBabilong("\n\n".join(paras), question.question, question.answer, length, facts_at,
                        {"task": question.task, "seed": seed, "supporting": tuple(question.supporting)})
