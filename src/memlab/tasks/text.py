"""Word tokenizer and haystack sources (book files or a procedural generator).

A haystack source is anything with `sentences() -> list[str]`. `TokenizedHaystack` turns one into a
flat int32 token array plus sentence start offsets, and `take` cuts any number of tokens out of it
(wrapping around cyclically) without Python loops over tokens.
"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

# ----------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[^\sa-z0-9]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def tokenize_words(text: str) -> list[str]:
    """Lowercase words (with one inner apostrophe), numbers, and each punctuation char as its own token."""
    return _TOKEN.findall(text.lower().translate(_QUOTES))


PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"
SPECIALS = (PAD, UNK, SEP)
_ATTACH = set(".,?!;:)]}'\"")


class WordTokenizer:
    """A word-level vocabulary: specials, then task words (always kept), then frequent haystack words."""

    FILE = "tokenizer.json"

    def __init__(self, vocab: list[str]):
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {list(vocab[:3])}")
        if len(set(vocab)) != len(vocab):
            dup = [w for w, c in Counter(vocab).items() if c > 1][:5]
            raise ValueError(f"duplicate words in vocabulary: {dup}")
        self.vocab: list[str] = list(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    pad_id, unk_id, sep_id = 0, 1, 2

    @classmethod
    def build(cls, task_words: list[str], haystack_texts: Iterable[str] = (), max_size: int = 4096) -> "WordTokenizer":
        vocab = list(SPECIALS)
        seen = set(vocab)
        for w in task_words:
            w = w.lower()
            if w not in seen:
                vocab.append(w)
                seen.add(w)
        counts: Counter = Counter()
        for text in haystack_texts:
            counts.update(tokenize_words(text))
        for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            if len(vocab) >= max_size:
                break
            if w not in seen:
                vocab.append(w)
                seen.add(w)
        return cls(vocab)

    def extended(self, words: Iterable[str]) -> "WordTokenizer":
        """This vocabulary with the words it lacks appended (existing ids unchanged)."""
        new = [w.lower() for w in words if w.lower() not in self._index]
        return WordTokenizer(self.vocab + list(dict.fromkeys(new)))

    def __len__(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        return self._index.get(word.lower(), UNK_ID)

    def encode_words(self, words: Iterable[str]) -> list[int]:
        get = self._index.get
        return [get(w, UNK_ID) for w in words]

    def encode(self, text: str) -> list[int]:
        return self.encode_words(tokenize_words(text))

    def decode(self, ids) -> str:
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == PAD_ID:
                continue
            w = self.vocab[i] if 0 <= i < len(self.vocab) else UNK
            if out and w in _ATTACH:
                out[-1] += w
            else:
                out.append(w)
        return " ".join(out)

    def save(self, directory) -> Path:
        """Write `tokenizer.json` into directory atomically (tmp file in the same dir, then os.replace)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.FILE
        fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"type": "word", "vocab": self.vocab}, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, directory_or_file) -> "WordTokenizer":
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / cls.FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist; save one with WordTokenizer.save(directory)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            vocab = data["vocab"]
            if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
                raise TypeError("'vocab' must be a list of strings")
            return cls(vocab)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {path} is malformed ({type(e).__name__}: {e}); expected JSON {{\"vocab\": [\"<pad>\", \"<unk>\", \"<sep>\", ...]}} as written by WordTokenizer.save") from e


PAD_ID, UNK_ID, SEP_ID = 0, 1, 2

# ----------------------------------------------------------------------------- haystack sources


class HaystackError(ValueError):
    """A haystack file cannot be used; the message names the file, the problem and the fix."""


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF.*$", re.MULTILINE)
_BOUNDARY = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "messrs", "mme", "capt", "col", "gen", "rev", "prof", "sr", "jr", "vs", "etc", "no"}
_MIN_WORDS = 3


def strip_gutenberg(text: str) -> str:
    """Keep the text between the '*** START OF' and '*** END OF' lines when present."""
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    return text


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at . ! ? followed by whitespace (and at blank lines); collapse
    whitespace; drop fragments with fewer than 3 words."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        start = 0
        for m in _BOUNDARY.finditer(para):
            word = para[:m.start()].rsplit(" ", 1)[-1].lstrip("\"'(\u201c\u2018_").lower()
            if word in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue  # "Mr. Darcy", initials
            out.append(para[start:m.end()].strip())
            start = m.end()
        out.append(para[start:].strip())
    return [s for s in out if len(re.findall(r"[A-Za-z]+", s)) >= _MIN_WORDS]


class BookHaystack:
    """Sentences of UTF-8 text files (Project Gutenberg header/footer stripped), in file order."""

    def __init__(self, paths: list):
        if not paths:
            raise HaystackError("BookHaystack got no files; pass a list of UTF-8 .txt paths, or use ProceduralHaystack / load_haystack(None)")
        self.paths = [Path(p) for p in paths]
        self._sentences: list[str] = []
        for p in self.paths:
            self._sentences.extend(self._read(p))

    @staticmethod
    def _read(path: Path) -> list[str]:
        fix = "pass a plain UTF-8 text file (e.g. a Project Gutenberg .txt), or no paths to use the procedural haystack"
        if not path.exists():
            raise HaystackError(f"haystack file {path} does not exist; check the path or {fix}")
        if path.is_dir():
            raise HaystackError(f"haystack path {path} is a directory, not a file; pass the text files inside it (e.g. {path}/*.txt)")
        data = path.read_bytes()
        if not data.strip():
            raise HaystackError(f"haystack file {path} is empty; {fix}")
        if b"\x00" in data:
            raise HaystackError(f"haystack file {path} looks binary (it contains NUL bytes); {fix}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HaystackError(f"haystack file {path} is not valid UTF-8 (bad byte at offset {e.start}); convert it to UTF-8 or {fix}") from None
        sentences = split_sentences(strip_gutenberg(text.lstrip("\ufeff")))
        if not sentences:
            raise HaystackError(f"haystack file {path} holds no sentences (of at least {_MIN_WORDS} words); {fix}")
        return sentences

    def sentences(self) -> list[str]:
        return list(self._sentences)


class ProceduralHaystack:
    """An endless deterministic stream of plain English filler from a small grammar.

    Its vocabulary avoids the bAbI names, places, objects and movement verbs, so the filler never
    looks like a fact."""

    SUBJECTS = ("the old farmer", "a young sailor", "the merchant", "the captain", "her cousin", "the painter",
                "a quiet stranger", "the teacher", "the miller", "his neighbour", "the widow", "a tired soldier",
                "the doctor", "the shepherd", "a clever girl", "the baker")
    VERBS = ("watched", "repaired", "described", "admired", "forgot", "remembered", "counted", "polished",
             "ignored", "studied", "praised", "carried", "measured", "borrowed", "mended", "noticed")
    OBJECTS = ("the fence", "a lantern", "the letters", "an old map", "the boat", "a wooden chair", "the clock",
               "the sheep", "a basket of bread", "the river", "the window", "a small painting", "the harvest",
               "the roof", "a silver ring", "the ledger")
    ADVERBS = ("slowly", "carefully", "at last", "without a word", "with great patience", "once again",
               "in silence", "with some pride", "as usual", "for a long while")
    TIMES = ("in the morning", "after supper", "before the storm", "that winter", "on sunday", "at dusk",
             "during the fair", "the next day", "late at night", "in early spring")
    WEATHER = ("the wind was cold over the hills", "rain fell on the village all day", "the sky turned grey and heavy",
               "a thin fog lay upon the fields", "the sun was warm on the stones", "snow covered the road to the mill")
    THOUGHTS = ("nobody could say why it mattered so much", "it seemed a small thing at the time",
                "the whole village spoke of it for weeks", "there was little else to be done",
                "such things were common in those days", "it was not the first time")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def stream(self) -> Iterator[str]:
        rng = random.Random(self.seed)
        c = rng.choice
        while True:
            r = rng.random()
            if r < 0.45:
                s = f"{c(self.SUBJECTS)} {c(self.VERBS)} {c(self.OBJECTS)} {c(self.ADVERBS)}."
            elif r < 0.65:
                s = f"{c(self.TIMES)}, {c(self.SUBJECTS)} {c(self.VERBS)} {c(self.OBJECTS)}."
            elif r < 0.8:
                s = f"{c(self.WEATHER)} {c(self.TIMES)}."
            elif r < 0.9:
                s = f"{c(self.SUBJECTS)} {c(self.VERBS)} {c(self.OBJECTS)}, and {c(self.THOUGHTS)}."
            else:
                s = f"{c(self.THOUGHTS)}, said {c(self.SUBJECTS)}."
            yield s[0].upper() + s[1:]

    def sentences(self, n: int = 20000) -> list[str]:
        it = self.stream()
        return [next(it) for _ in range(n)]


def load_haystack(paths: list | None):
    """BookHaystack over `paths` if any are given, else a ProceduralHaystack."""
    return BookHaystack(paths) if paths else ProceduralHaystack()


# ----------------------------------------------------------------------------- tokenized haystack


class TokenizedHaystack:
    """All sentences of a source, tokenized and concatenated.

    tokens: [N] int32, starts: [S] int64 (offset of each sentence in tokens, ascending, starts[0] == 0)."""

    def __init__(self, tokenizer: WordTokenizer, source):
        ids: list[int] = []
        starts: list[int] = []
        for s in source.sentences():
            t = tokenizer.encode(s)
            if t:
                starts.append(len(ids))
                ids.extend(t)
        if not ids:
            raise HaystackError(f"haystack source {type(source).__name__} gave no tokens; give it some text")
        self.tokens = np.asarray(ids, dtype=np.int32)
        self.starts = np.asarray(starts, dtype=np.int64)

    @classmethod
    def from_arrays(cls, tokens, starts) -> "TokenizedHaystack":
        self = cls.__new__(cls)
        self.tokens = np.asarray(tokens, dtype=np.int32)
        self.starts = np.asarray(starts, dtype=np.int64)
        if len(self.tokens) == 0 or len(self.starts) == 0 or self.starts[0] != 0:
            raise ValueError("a tokenized haystack needs tokens and sentence starts beginning at 0")
        return self

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, rng: np.random.Generator, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """n_tokens of haystack from a random sentence start, wrapping around cyclically.

        Returns (tokens [n_tokens] int32, boundaries [K] int64): the offsets in the returned array where
        a sentence starts (0 included when n_tokens > 0), ascending."""
        cut = self.cut(rng, n_tokens)
        return cut.tokens(0, n_tokens).copy(), cut.bound(np.arange(cut.n_bounds(), dtype=np.int64))

    def cut(self, rng: np.random.Generator, n_tokens: int) -> "HaystackCut":
        """What `take` returns, without building it: n_tokens of haystack from a random sentence start (the same
        draw as `take`), read a slice at a time. Its memory is the haystack's, at any n_tokens."""
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
        return HaystackCut(self, int(self.starts[rng.integers(len(self.starts))]), n_tokens)


class HaystackCut:
    """n_tokens of a tokenized haystack read cyclically from offset `first` (a sentence start): `tokens(a, b)` is
    the slice [a, b) of that text, and its sentence starts (offsets relative to the cut, ascending) are a virtual
    array of `n_bounds()` entries read with `bound(i)`."""

    def __init__(self, haystack: TokenizedHaystack, first: int, n_tokens: int):
        self.haystack, self.first, self.n_tokens = haystack, first, n_tokens
        self.cycle = len(haystack.tokens)
        self.rel = np.sort((haystack.starts - first) % self.cycle)  # sentence starts within one cycle, 0 first

    def tokens(self, a: int, b: int) -> np.ndarray:
        """Token ids [a, b) of the cut (int32; a view of the haystack where they do not wrap around)."""
        if not 0 <= a <= b <= self.n_tokens:
            raise ValueError(f"slice [{a}, {b}) is outside the cut of {self.n_tokens} tokens")
        i = (self.first + a) % self.cycle
        if i + b - a <= self.cycle:  # no wrap (nearly every segment): a view
            return self.haystack.tokens[i:i + b - a]
        return np.take(self.haystack.tokens, np.arange(i, i + b - a, dtype=np.int64), mode="wrap")

    def n_bounds(self, at_most: int | None = None) -> int:
        """How many sentence starts lie in the cut (and, given at_most, at offsets <= at_most)."""
        if self.n_tokens == 0:
            return 0
        last = self.n_tokens - 1 if at_most is None else min(at_most, self.n_tokens - 1)
        if last < 0:
            return 0
        return int((last // self.cycle) * len(self.rel) + np.searchsorted(self.rel, last % self.cycle, side="right"))

    def bound(self, i) -> np.ndarray:
        """The offsets of sentence starts number i (an int array, each in [0, n_bounds()))."""
        i = np.asarray(i, dtype=np.int64)
        return (i // len(self.rel)) * self.cycle + self.rel[i % len(self.rel)]
