"""Named task variants from YAML (configs/tasks/flenqa.yaml, configs/tasks/ruler.yaml): `load_variant(name)` turns
"flenqa-pir-different" or "ruler-niah_single_2" into a task object whose `sample(length, seed, ...)` is a pure
function of its arguments."""
from __future__ import annotations

from pathlib import Path

import yaml

from .flenqa import FlenqaTask
from .ruler import RulerTask

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "tasks"
FAMILIES = ("flenqa", "ruler")


def variants(family: str, config_dir: Path | None = None) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; allowed: {', '.join(FAMILIES)}")
    path = Path(config_dir or CONFIG_DIR) / f"{family}.yaml"
    if not path.is_file():
        raise ValueError(f"task variants file {path} not found; it ships in the repository's configs/tasks/")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "task" in v for v in data.values()):
        raise ValueError(f"{path}: expected 'name: {{task: ..., knob: value}}' entries")
    return data


def load_variant(name: str, haystack_sentences: list[str] | None = None, config_dir: Path | None = None):
    """('flenqa-<variant>' | 'ruler-<variant>') -> (task object, sample keyword arguments)."""
    family, sep, variant = name.partition("-")
    table = variants(family, config_dir) if sep else {}
    if variant not in table:
        known = [f"{f}-{v}" for f in FAMILIES for v in variants(f, config_dir)]
        raise ValueError(f"unknown task variant {name!r}; known: {', '.join(known)}")
    knobs = dict(table[variant])
    task = knobs.pop("task")
    if family == "flenqa":
        placement = knobs.pop("placement", "random")
        return FlenqaTask(task, haystack_sentences=haystack_sentences, **knobs), {"placement": placement}
    depth = knobs.pop("depth", None)
    return RulerTask(task, haystack_sentences, **knobs), {"depth": depth}


def is_text_task(spec: str) -> bool:
    """True for flenqa:VARIANT,... and ruler:VARIANT,... specs."""
    return spec.split(":")[0].strip().lower() in FAMILIES


def parse_text_spec(spec: str) -> list[str]:
    """'ruler:niah_single_2,vt' -> ['ruler-niah_single_2', 'ruler-vt'] (variant names, checked)."""
    family, sep, rest = spec.partition(":")
    family = family.strip().lower()
    names = [f"{family}-{v.strip()}" for v in rest.split(",") if v.strip()]
    if family not in FAMILIES or not sep or not names:
        raise ValueError(f"text task spec must be flenqa:VARIANT[,VARIANT...] or ruler:VARIANT[,...], got {spec!r}")
    table = variants(family)
    bad = [n for n in names if n.partition("-")[2] not in table]
    if bad:
        known = [f"{family}-{v}" for v in table]
        raise ValueError(f"unknown task variant(s) {bad}; known: {', '.join(known)}")
    return names


class TokenTextTask:
    """A FLenQA / RULER variant as memlab token samples, for models trained here: the text, then the answer words
    fed in one at a time (teacher forcing), each predicted from the position before it. A sample counts as right
    when every answer word is (exact match). Seeds are offset by `seed_base`, so training (base 0, seeds < 2^31)
    and held-out samples (base 2^31) never meet."""

    def __init__(self, name: str, tokenizer, haystack_sentences: list[str] | None = None, seed_base: int = 0):
        self.name, self.tokenizer, self.seed_base = name, tokenizer, seed_base
        self.task, self.kw = load_variant(name, haystack_sentences)

    @staticmethod
    def answers(sample) -> list[str]:
        return [sample.answer] if hasattr(sample, "answer") else list(sample.answers)

    def text_sample(self, length: int, seed: int):
        return self.task.sample(length, self.seed_base + seed, **self.kw)

    def tokens(self, length: int, seed: int) -> tuple[list[int], list[int]]:
        """(tokens, targets): targets -100 except at the answer positions."""
        return self.encode(self.tokenizer, self.text_sample(length, seed), self.name)

    @classmethod
    def encode(cls, tokenizer, sample, name: str = "task") -> tuple[list[int], list[int]]:
        """A text sample (FLenQA or RULER) in memlab tokens -> (tokens, targets), as `tokens` makes them."""
        from .text import UNK_ID

        ids = tokenizer.encode(sample.text)
        answer = tokenizer.encode(" ".join(cls.answers(sample)))
        if UNK_ID in answer:
            raise ValueError(f"{name}: answer {cls.answers(sample)} has words the tokenizer lacks; build the tokenizer "
                             "with the task's words (memlab train does)")
        return ids + answer[:-1], [-100] * (len(ids) - 1) + answer

    def words(self, n: int = 200, length: int = 1000) -> list[str]:
        """The words of the task itself (needles or key paragraphs, questions, answers; not the padding) over n
        samples: what a tokenizer must hold."""
        from .text import tokenize_words

        out: dict = {}
        for seed in range(n):
            s = self.text_sample(length, seed)
            if hasattr(s, "key_char_spans"):  # FLenQA: the key paragraphs
                parts = [s.text[a:b] for a, b in s.key_char_spans]
            elif s.meta.get("task") == "cwe":  # the whole word list is the task (its rare words included)
                parts = [s.text]
            else:
                parts = list(s.meta["needles"])
            for p in parts + [s.question, " ".join(self.answers(s)), "true false"]:
                out.update(dict.fromkeys(tokenize_words(p)))
        return list(out)
