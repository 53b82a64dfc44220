"""FLenQA (Levy, Jacoby and Goldberg, "Same Task, More Tokens", arXiv:2402.14848): one True/False reasoning
question over two key facts, padded to any length, so that only the length changes.

Three tasks, each needing both key facts:

- `monorel` (Monotone Relations): "A is richer than B." "B is richer than C." Is A richer than C? (True), or
  is C richer than A? (False).
- `pir` (People In Rooms): "X is in the old library." "The old library has marble floors." Is X in a room with
  marble floors? False samples put the floors in another room, so only the link between the facts decides.
- `ruletaker` (simplified RuleTaker): the rule "If someone is A and B, then they are C." comes with the question;
  the facts are "X is A." and "X is B." (True) or "X is A." and "Y is B." (False, under the closed-world
  assumption of RuleTaker).

Each key sentence is expanded into a key paragraph. The paper used GPT-4 for this; here neutral sentences about
the fact's subject are placed around it, and they say nothing about the relation, room or attribute asked. The
padding has three kinds:

- `duplicate`: the key paragraphs again and again;
- `similar`: key paragraphs of other samples of the same task, whose entities are disjoint from this sample's;
- `different`: unrelated text, book sentences from the haystack source.

The two key paragraphs go `first`, in the `middle`, `last` (just before the question), or at `random` padding
boundaries, in order. A sample is a pure function of (task, length, padding, placement, seed). Labels alternate
with the seed (an even seed is True), so consecutive seeds are balanced. Lengths are exact in memlab's word
tokens (`tokenize_words`); other tokenizers measure their own lengths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .text import _QUOTES, _TOKEN, tokenize_words

TASKS = ("monorel", "pir", "ruletaker")
PADDINGS = ("duplicate", "similar", "different")
PLACEMENTS = ("first", "middle", "last", "random")

NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo", "Maya",
         "Noah", "Olive", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Xena", "Yusuf", "Zoe",
         "Alice", "Boris", "Chloe", "Daniel", "Elena", "Frank", "Gina", "Hugo", "Ivy", "Jonas", "Lena", "Marco",
         "Nina", "Oscar", "Petra", "Ruth", "Simon", "Theo", "Uma", "Victor", "Wendy", "Yara")
RELATIONS = ("richer", "older", "taller", "stronger", "faster", "happier", "wiser", "busier", "calmer", "braver")
ROOMS = ("library", "kitchen", "study", "attic", "cellar", "gallery", "workshop", "greenhouse", "ballroom",
         "pantry", "nursery", "chapel", "parlour", "laundry", "armoury", "office")
ROOM_ADJ = ("old", "new", "small", "large", "quiet", "bright", "narrow", "long")
PROPERTIES = ("marble floors", "wooden floors", "a high ceiling", "blue walls", "large windows", "a fireplace",
              "a piano", "a stone arch", "green curtains", "a glass roof", "a red carpet", "a brass chandelier")
ATTRIBUTES = ("kind", "clever", "quiet", "generous", "curious", "honest", "patient", "polite", "cheerful", "careful",
              "gentle", "humble")
PERSON_FILLER = ("{e} grew up in a village by a slow river.", "{e} spends most evenings reading old letters.",
                 "Friends say that {e} laughs at almost every joke.", "{e} once took a long train journey across the country.",
                 "{e} keeps a small garden behind the house.", "On weekends {e} likes to cook for the neighbours.",
                 "{e} writes everything down in a notebook.", "Every morning {e} walks the same path to the station.",
                 "{e} has a cat that sleeps on the windowsill.", "Last winter {e} learned to play chess.",
                 "{e} never misses the market on Saturdays.", "{e} collects postcards from distant cities.")
ROOM_FILLER = ("The {e} is at the end of a long corridor.", "Few guests have seen the {e} at night.",
               "The {e} smells faintly of cedar and dust.", "A map of the estate hangs near the door of the {e}.",
               "The {e} was last repainted many years ago.", "Children are not allowed in the {e} without a guide.",
               "The door of the {e} creaks when it opens.", "Old photographs of the family line the way to the {e}.")


@dataclass
class TextSample:
    text: str  # the padded context, then the question (one string)
    question: str  # the question block (the last `question_tokens` word tokens of text)
    answer: str  # "true" or "false"
    key_char_spans: list[tuple[int, int]]  # character spans of the key paragraphs in text
    key_token_spans: list[tuple[int, int]]  # their spans in word tokens (tokenize_words)
    length: int  # word tokens of text
    meta: dict = field(default_factory=dict)


def count_tokens(text: str) -> int:
    return len(tokenize_words(text))


def truncate_tokens(text: str, n: int) -> str:
    """The prefix of `text` holding exactly its first n word tokens (as `tokenize_words` counts them)."""
    if n <= 0:
        return ""
    norm = text.translate(_QUOTES).lower()
    if len(norm) != len(text):  # a character whose lower case is longer: match on the text itself
        norm = text
    for i, m in enumerate(_TOKEN.finditer(norm)):
        if i == n - 1:
            return text[: m.end()]
    return text


def fill_tokens(units, budget: int) -> list[str]:
    """Text units taken from the iterator `units` until they hold exactly `budget` word tokens (the last one cut)."""
    out, got = [], 0
    while got < budget:
        unit = next(units)
        n = count_tokens(unit)
        if got + n > budget:
            unit, n = truncate_tokens(unit, budget - got), budget - got
        out.append(unit)
        got += n
    return out


def _facts(task: str, label: bool, rng: np.random.Generator, avoid: set = frozenset()):
    """(two key facts, the subject of each, question, entities used) for one sample."""
    names = [n for n in NAMES if n not in avoid]
    if task == "monorel":
        rel = RELATIONS[rng.integers(len(RELATIONS))]
        a, b, c = rng.choice(names, 3, replace=False).tolist()
        facts = [f"{a} is {rel} than {b}.", f"{b} is {rel} than {c}."]
        subjects = [a, b]
        question = f"Is {a} {rel} than {c}?" if label else f"Is {c} {rel} than {a}?"
        ents = {a, b, c}
    elif task == "pir":
        rooms = [r for r in ROOMS if r not in avoid]
        x = str(rng.choice(names))
        r1, r2 = rng.choice(rooms, 2, replace=False).tolist()
        room, other = f"{ROOM_ADJ[rng.integers(len(ROOM_ADJ))]} {r1}", f"{ROOM_ADJ[rng.integers(len(ROOM_ADJ))]} {r2}"
        prop = PROPERTIES[rng.integers(len(PROPERTIES))]
        facts = [f"{x} is in the {room}.", f"The {room if label else other} has {prop}."]
        subjects = [x, room if label else other]
        question = f"Is {x} in a room with {prop}?"
        ents = {x, r1, r2}
    elif task == "ruletaker":
        x, y = rng.choice(names, 2, replace=False).tolist()
        a1, a2, a3 = rng.choice(ATTRIBUTES, 3, replace=False).tolist()
        facts = [f"{x} is {a1}.", f"{x if label else y} is {a2}."]
        subjects = [x, x if label else y]
        question = f"If someone is {a1} and {a2}, then they are {a3}. Is {x} {a3}?"
        ents = {x, y}
    else:
        raise ValueError(f"unknown FLenQA task {task!r}; allowed: {', '.join(TASKS)}")
    order = rng.permutation(2)
    return [facts[i] for i in order], [subjects[i] for i in order], question, ents


def key_paragraph(fact: str, subject: str, rng: np.random.Generator, sentences: int = 4) -> str:
    """The key sentence among `sentences - 1` neutral sentences about its subject (a person or a room)."""
    pool = ROOM_FILLER if subject.split()[-1] in ROOMS else PERSON_FILLER
    fill = [pool[i].format(e=subject) for i in rng.choice(len(pool), sentences - 1, replace=False)]
    fill = [s[0].upper() + s[1:] for s in fill]
    at = int(rng.integers(sentences))
    return " ".join(fill[:at] + [fact] + fill[at:])


class FlenqaTask:
    """FLenQA samples of one task with one padding kind; `sample(length, seed, placement)` is a pure function
    of its arguments (and of the haystack source for `different` padding)."""

    def __init__(self, task: str, padding: str = "different", haystack_sentences: list[str] | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown FLenQA task {task!r}; allowed: {', '.join(TASKS)}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown FLenQA padding {padding!r}; allowed: {', '.join(PADDINGS)}")
        if padding == "different" and not haystack_sentences:
            raise ValueError("FLenQA padding 'different' needs haystack sentences (e.g. BookHaystack(paths).sentences())")
        self.task, self.padding, self.sentences = task, padding, haystack_sentences

    def _padding_units(self, rng, keys: list[str], ents: set):
        """An endless stream of padding paragraphs / sentences."""
        if self.padding == "duplicate":
            while True:
                yield from keys
        elif self.padding == "similar":
            while True:
                label = bool(rng.integers(2))
                facts, subjects, _, _ = _facts(self.task, label, rng, avoid=ents)
                yield from (key_paragraph(f, s, rng) for f, s in zip(facts, subjects))
        else:
            start = int(rng.integers(len(self.sentences)))
            for i in range(10**12):
                yield self.sentences[(start + i) % len(self.sentences)]

    def sample(self, length: int, seed: int, placement: str = "random") -> TextSample:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown FLenQA placement {placement!r}; allowed: {', '.join(PLACEMENTS)}")
        label = seed % 2 == 0
        rng = np.random.default_rng([seed, 0])
        facts, subjects, question, ents = _facts(self.task, label, rng)
        keys = [key_paragraph(f, s, rng) for f, s in zip(facts, subjects)]
        key_n = [count_tokens(k) for k in keys]
        q_n = count_tokens(question)
        need = sum(key_n) + q_n
        if length < need:
            raise ValueError(f"length {length} is shorter than this FLenQA {self.task} sample's key paragraphs and "
                             f"question ({need} word tokens); use a length of at least {need}")
        budget = length - need
        pad = fill_tokens(self._padding_units(np.random.default_rng([seed, 1, length]), keys, ents), budget)
        prng = np.random.default_rng([seed, 2, length])
        if placement == "first":
            at = [0, 0]
        elif placement == "last":
            at = [len(pad), len(pad)]
        elif placement == "middle":
            cum = np.cumsum([0] + [count_tokens(u) for u in pad])
            mid = int(np.argmin(np.abs(cum - budget / 2)))
            at = [mid, mid]
        else:
            at = sorted(prng.integers(0, len(pad) + 1, size=2).tolist())
        units, roles = [], []
        for i in range(len(pad) + 1):
            for k in range(2):
                if at[k] == i:
                    units.append(keys[k])
                    roles.append(k)
            if i < len(pad):
                units.append(pad[i])
                roles.append(None)
        units.append(question)
        roles.append("q")
        text, char_spans, tok_spans, tok = "", [None, None], [None, None], 0
        for u, r in zip(units, roles):
            if text:
                text += " "
            start = len(text)
            text += u
            n = count_tokens(u)
            if isinstance(r, int):
                char_spans[r], tok_spans[r] = (start, len(text)), (tok, tok + n)
            tok += n
        assert tok == length, (tok, length)
        return TextSample(text, question, "true" if label else "false", char_spans, tok_spans, length,
                          {"task": self.task, "padding": self.padding, "placement": placement, "seed": seed,
                           "label": label, "facts": facts})


def score_answer(generated: str, answer: str) -> bool:
    """As the paper scores: the last 'true' or 'false' in the model's reply is its answer."""
    found = re.findall(r"\b(true|false)\b", generated.lower())
    return bool(found) and found[-1] == answer
