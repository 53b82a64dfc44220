"""Checkpoints: a directory with config.json, model.safetensors, tokenizer.json and (for training)
trainer_state.pt (optimizer, scheduler step, RNG states). Written into a temporary sibling directory
and renamed into place, so a crash never leaves a half-written checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .models.registry import build_model, config_from_dict


class CheckpointError(ValueError):
    pass


def atomic_write_text(path: Path, text: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(directory, model, tokenizer=None, trainer_state: dict | None = None, extra: dict | None = None):
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2))
        save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        if extra is not None:
            (tmp / "train_info.json").write_text(json.dumps(extra, indent=2))
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(directory, with_trainer_state: bool = False):
    """Returns (model, tokenizer or None, trainer_state or None). Clear errors for a malformed checkpoint."""
    from .tasks.text import WordTokenizer

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} is not a directory; pass a directory written by `memlab train` (config.json + model.safetensors)")
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {d} has no {p.name}; it is incomplete or not a memlab checkpoint — retrain or point to another directory")
    try:
        config = config_from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {d}: malformed config.json ({e}); fix the file or retrain") from e
    model = build_model(config)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint {d}: cannot read model.safetensors ({e}); the file is corrupt — retrain") from e
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {d}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    tokenizer = WordTokenizer.load(d) if (d / "tokenizer.json").is_file() else None
    trainer_state = None
    if with_trainer_state and (d / "trainer_state.pt").is_file():
        trainer_state = torch.load(d / "trainer_state.pt", weights_only=False, map_location="cpu")
    return model, tokenizer, trainer_state
