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
