"""RULER-style synthetic long-context tasks (Hsieh et al., "RULER", arXiv:2404.06654), with keys and values drawn
from word lists so that they suit a word-level vocabulary (RULER's numbers and UUIDs would be unknown words to
memlab's tokenizer). Every sample is a pure function of (task knobs, length, seed), has exactly `length` word
tokens (`tokenize_words`), records the token span of every needle, and is scored by string match.

Tasks:

- `niah_single`: one needle "One of the special magic words for KEY is: VALUE." in noise; `noise="repeat"` is
  RULER's repeated "The grass is green..." text, `noise="book"` the haystack's sentences; `value_words` = 2 asks
  for a two-word value (RULER's third single-needle variant uses UUIDs for a harder copy).
- `niah_multikey`: `n_keys` needles with distinct keys, one of them asked. `key_pool` (default all 32) draws the keys
  from the first `key_pool` key words only: a training curriculum knob (few distinct keys first).
- `niah_multivalue`: `n_values` needles with the same key and different values, all asked.
- `niah_multiquery`: `n_queries` needles with distinct keys, all asked. The question lists the keys in the order of
  the text (`query_order="text"`), so the answers can be read off in order without matching a key;
  `query_order="random"` lists them shuffled, and the answers follow the question's order: each one needs its key.
- `vt` (variable tracking): `n_chains` chains of `n_hops` assignments "VAR B = VAR A." after "VAR A = VALUE.";
  the answer is every variable of the asked chain (`ask="variables"`, RULER's form). Read in order, each answer
  word is one look-up from the one before it. `ask="value"` asks instead the value of the asked chain's last
  variable, one word that needs all `n_hops` look-ups composed (multi-hop retrieval; `n_hops` = 0 asks a value
  directly). `order="shuffled"` puts the assignments in a random order (by default each chain keeps its own), so a
  single left-to-right read cannot resolve a chain as it goes.
- `cwe` (common words extraction): a numbered word list in which `n_common` words appear `freq_common` times and
  the others `freq_uncommon` times; the answer is the common words. The list fills the length (no noise); its rare
  words come from a built-in list, then from the haystack sentences' words when given.

`depth` (0..1) places a single needle at that fraction of the context (the needle-in-a-haystack sweep); without
it, needles go to random sentence boundaries, in order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .flenqa import count_tokens, fill_tokens, tokenize_words, truncate_tokens

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEYS = ("apple", "river", "candle", "forest", "harbor", "lantern", "meadow", "pepper", "saddle", "tunnel", "violin",
        "window", "anchor", "basket", "castle", "desert", "engine", "feather", "garden", "hammer", "island", "jacket",
        "kettle", "ladder", "mirror", "needle", "orchard", "pillow", "quarry", "ribbon", "shovel", "temple")
VALUES = ("amber", "bronze", "cobalt", "crimson", "ebony", "emerald", "golden", "indigo", "ivory", "jade", "lilac",
          "magenta", "maroon", "olive", "pearl", "plum", "ruby", "saffron", "scarlet", "silver", "teal", "topaz",
          "violet", "walnut", "azure", "copper", "coral", "ochre", "rose", "slate", "tan", "umber")
VARIABLES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
             "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
             "whiskey", "xray", "yankee", "zulu")
WORDS = ("table", "chair", "spoon", "cloud", "stone", "bread", "paper", "glass", "horse", "sheep", "train", "plant",
         "money", "music", "night", "ocean", "queen", "smile", "storm", "sugar", "tiger", "tooth", "voice", "water",
         "wheel", "world", "youth", "zebra", "beach", "brick", "chain", "dream", "field", "flame", "grape", "heart",
         "juice", "knife", "lemon", "metal", "nurse", "onion", "piano", "radio", "salad", "shirt", "skirt", "snake",
         "sword", "thumb", "tower", "truck", "uncle", "wagon", "whale", "wrist", "cabin", "canal", "cliff", "crown")
DEFAULTS = {
    "niah_single": {"noise": "book", "value_words": 1},
    "niah_multikey": {"noise": "book", "n_keys": 4, "key_pool": len(KEYS)},
    "niah_multivalue": {"noise": "book", "n_values": 4},
    "niah_multiquery": {"noise": "book", "n_queries": 4, "query_order": "text"},
    "vt": {"noise": "repeat", "n_chains": 1, "n_hops": 4, "ask": "variables", "order": "chain"},
    "cwe": {"n_common": 10, "freq_common": 30, "freq_uncommon": 3},
}


@dataclass
class RulerSample:
    text: str  # context, then the question
    question: str
    answers: list[str]  # every string the reply must contain
    needle_token_spans: list[tuple[int, int]]  # word-token spans of the needles (cwe: each common word's occurrences)
    length: int
    meta: dict = field(default_factory=dict)


class RulerTask:
    """One RULER-style task with its knobs (DEFAULTS, overridable); `sample(length, seed, depth=None)`."""

    def __init__(self, task: str, haystack_sentences: list[str] | None = None, **knobs):
        if task not in TASKS:
            raise ValueError(f"unknown RULER task {task!r}; allowed: {', '.join(TASKS)}")
        bad = sorted(set(knobs) - set(DEFAULTS[task]))
        if bad:
            raise ValueError(f"RULER task {task!r} has no knob(s) {bad}; its knobs: {sorted(DEFAULTS[task])}")
        self.task, self.knobs = task, {**DEFAULTS[task], **knobs}
        k = self.knobs
        if k.get("query_order", "text") not in ("text", "random"):
            raise ValueError(f"query_order must be 'text' or 'random', got {k['query_order']!r}")
        if k.get("ask", "variables") not in ("variables", "value"):
            raise ValueError(f"ask must be 'variables' or 'value', got {k['ask']!r}")
        if k.get("order", "chain") not in ("chain", "shuffled"):
            raise ValueError(f"order must be 'chain' or 'shuffled', got {k['order']!r}")
        if k.get("noise", "repeat") not in ("repeat", "book"):
            raise ValueError(f"noise must be 'repeat' or 'book', got {k['noise']!r}")
        if k.get("noise") == "book" and not haystack_sentences:
            raise ValueError(f"RULER {task} with noise 'book' needs haystack sentences (BookHaystack(paths).sentences())")
        limits = {"n_keys": len(KEYS), "n_values": len(VALUES), "n_queries": len(KEYS), "value_words": 4,
                  "n_hops": len(VARIABLES) - 1, "n_chains": len(VALUES), "n_common": len(WORDS) // 2, "key_pool": len(KEYS)}
        for name, hi in limits.items():
            lo = 0 if (name == "n_hops" and k.get("ask") == "value") else 1  # 0 hops: "VAR A = VALUE.", asked directly
            if name in k and not (isinstance(k[name], int) and lo <= k[name] <= hi):
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {k[name]!r}")
        if task == "niah_multikey" and k["n_keys"] > k["key_pool"]:
            raise ValueError(f"niah_multikey: n_keys = {k['n_keys']} distinct keys cannot come from a key_pool of "
                             f"{k['key_pool']}; use key_pool >= n_keys")
        if task == "vt" and k["n_chains"] * (k["n_hops"] + 1) > len(VARIABLES):
            raise ValueError(f"vt: n_chains * (n_hops + 1) = {k['n_chains'] * (k['n_hops'] + 1)} variables, "
                             f"but only {len(VARIABLES)} names exist; use fewer chains or hops")
        if task == "cwe" and not k["freq_common"] > k["freq_uncommon"] >= 1:
            raise ValueError("cwe: need freq_common > freq_uncommon >= 1")
        self.sentences = haystack_sentences
        if task == "cwe":  # rare words: the list's own, then the haystack's words (longer lists need more words)
            extra = {w for t in (haystack_sentences or ()) for w in re.findall(r"[a-z]{4,}", t.lower())}
            self.rare_pool = sorted(set(WORDS)) + sorted(extra - set(WORDS))

    # -- needles and question per task --------------------------------------------------------------------
    def _needles(self, rng):
        k, t = self.knobs, self.task
        needle = "One of the special magic words for {} is: {}."
        if t == "niah_single":
            key, value = str(rng.choice(KEYS)), " ".join(rng.choice(VALUES, k["value_words"], replace=False))
            return [needle.format(key, value)], f"What is the special magic word for {key} mentioned in the provided text?", [value]
        if t in ("niah_multikey", "niah_multiquery"):
            n = k["n_keys"] if t == "niah_multikey" else k["n_queries"]
            keys, values = rng.choice(KEYS[: k.get("key_pool", len(KEYS))], n, replace=False), rng.choice(VALUES, n, replace=False)
            needles = [needle.format(a, b) for a, b in zip(keys, values)]
            if t == "niah_multikey":
                i = int(rng.integers(n))
                return needles, f"What is the special magic word for {keys[i]} mentioned in the provided text?", [str(values[i])]
            asked = rng.permutation(n) if k["query_order"] == "random" else range(n)
            return (needles, f"What are the special magic words for {', '.join(str(keys[i]) for i in asked)} mentioned in the "
                    "provided text?", [str(values[i]) for i in asked])
        if t == "niah_multivalue":
            key, values = str(rng.choice(KEYS)), rng.choice(VALUES, k["n_values"], replace=False)
            return ([needle.format(key, v) for v in values],
                    f"What are all the special magic words for {key} mentioned in the provided text?", [str(v) for v in values])
        if t == "vt":
            names = rng.choice(VARIABLES, k["n_chains"] * (k["n_hops"] + 1), replace=False).reshape(k["n_chains"], -1)
            values = rng.choice(VALUES, k["n_chains"], replace=False)
            chains = [[f"VAR {c[0]} = {v}."] + [f"VAR {c[j + 1]} = VAR {c[j]}." for j in range(k["n_hops"])]
                      for c, v in zip(names, values)]
            # interleave the chains, each in its own order
            order = rng.permutation(np.repeat(np.arange(k["n_chains"]), k["n_hops"] + 1))
            pos = [0] * k["n_chains"]
            needles = []
            for c in order:
                needles.append(chains[c][pos[c]])
                pos[c] += 1
            if k["order"] == "shuffled":
                needles = [needles[i] for i in rng.permutation(len(needles))]
            ask = int(rng.integers(k["n_chains"]))
            if k["ask"] == "value":
                return needles, f"What is the value of VAR {names[ask][-1]} in the text above?", [str(values[ask])]
            return (needles, f"Find all variables that are assigned the value {values[ask]} in the text above.",
                    [str(x) for x in names[ask]])
        raise AssertionError(t)

    def _noise(self, rng):
        if self.knobs.get("noise") == "book":
            start = int(rng.integers(len(self.sentences)))
            for i in range(10**12):
                yield self.sentences[(start + i) % len(self.sentences)]
        else:
            while True:
                yield NOISE

    def sample(self, length: int, seed: int, depth: float | None = None) -> RulerSample:
        rng = np.random.default_rng([seed, 0])
        if self.task == "cwe":
            return self._cwe(length, seed, rng)
        needles, question, answers = self._needles(rng)
        need = sum(map(count_tokens, needles)) + count_tokens(question)
        if length < need:
            raise ValueError(f"length {length} is shorter than this RULER {self.task} sample's needles and question "
                             f"({need} word tokens); use a length of at least {need}")
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1] (fraction of the context before the needle), got {depth}")
        budget = length - need
        pad = fill_tokens(self._noise(np.random.default_rng([seed, 1, length])), budget)
        cum = np.cumsum([0] + [count_tokens(u) for u in pad])
        if depth is not None:
            at = [int(np.argmin(np.abs(cum - depth * budget)))] * len(needles)
        else:
            at = sorted(np.random.default_rng([seed, 2, length]).integers(0, len(pad) + 1, size=len(needles)).tolist())
        parts, spans, tok, j = [], [], 0, 0

        def add(u):  # parts joined once at the end: growing one string here costs time quadratic in the length
            nonlocal tok
            parts.append(u)
            n = count_tokens(u)
            tok += n
            return tok - n, tok

        for i in range(len(pad) + 1):
            while j < len(needles) and at[j] == i:
                spans.append(add(needles[j]))
                j += 1
            if i < len(pad):
                add(pad[i])
        add(question)
        assert tok == length, (tok, length)
        text = " ".join(parts)
        return RulerSample(text, question, answers, spans, length,
                           {"task": self.task, "seed": seed, "depth": depth, "knobs": dict(self.knobs), "needles": needles})

    def _cwe(self, length, seed, rng):
        k = self.knobs
        question = f"What are the {k['n_common']} most common words in the above list?"
        common = rng.choice(WORDS, k["n_common"], replace=False).tolist()
        pool = [w for w in self.rare_pool if w not in common]
        rare = [pool[i] for i in rng.permutation(len(pool))]
        items = [w for w in common for _ in range(k["freq_common"])]
        # rare words as the length allows (each item "N. word" is 3 tokens; the list is cut to the exact length)
        per = 3 * k["freq_uncommon"]
        n_rare = max(0, min(len(rare), -(-(length - count_tokens(question) - 3 * len(items)) // per) + 1))
        items += [w for w in rare[:n_rare] for _ in range(k["freq_uncommon"])]
        items = [items[i] for i in rng.permutation(len(items))]
        body = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        budget = length - count_tokens(question)
        if count_tokens(body) < budget:
            raise ValueError(f"cwe: length {length} needs more distinct words than are available ({len(pool)}); give "
                             f"haystack sentences, raise freq_uncommon or lower the length (at most ~{count_tokens(body) + count_tokens(question)})")
        body = truncate_tokens(body, budget)
        kept = re.findall(r"\d+\. (\w+)", body)
        if any(kept.count(c) <= k["freq_uncommon"] for c in common):
            raise ValueError(f"cwe: length {length} is too short to show every common word {k['freq_common']} times "
                             f"(needs about {3 * len(common) * k['freq_common'] + count_tokens(question)} word tokens)")
        text = body + " " + question
        assert count_tokens(text) == length
        # the key facts: every occurrence of a common word in the list ("N . word"), one word token each
        toks, low = tokenize_words(body), {c.lower(): c for c in common}
        at = [i for i, t in enumerate(toks) if t in low and i > 0 and toks[i - 1] == "."]
        return RulerSample(text, question, common, [(i, i + 1) for i in at], length,
                           {"task": "cwe", "seed": seed, "knobs": dict(k), "needles": [low[toks[i]] for i in at]})


def score(reply: str, answers: list[str]) -> float:
    """RULER's string match: the share of the expected strings found in the reply (case-insensitive, whole words)."""
    low = reply.lower()
    return sum(bool(re.search(rf"\b{re.escape(a.lower())}\b", low)) for a in answers) / len(answers)
