"""Shared helpers for benchmark scripts: machine description and atomic JSON results."""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository


def books() -> list[str]:
    """The four book files of ../shared/data/books, in a fixed order (the haystack of every recipe here)."""
    return sorted(str(f) for f in (DATA / "books").glob("*.txt"))


def checkpoint_args(p, lengths: str, samples: int, out: str) -> None:
    """The options every single-checkpoint RULER script takes: --checkpoint, --lengths, --samples, --threads, --out."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lengths", default=lengths)
    p.add_argument("--samples", type=int, default=samples)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=out, help="results name: benchmarks/results/OUT.json")


def open_checkpoint(a):
    """After checkpoint_args: check the results name first, set the threads, load the model in eval mode;
    returns (model, tokenizer)."""
    import torch

    from memlab.checkpoint import load_checkpoint

    check_name(a.out)
    torch.set_num_threads(a.threads)
    model, tok, _ = load_checkpoint(a.checkpoint)
    return model.eval(), tok


def qa1_task(tokenizer):
    """BABILong qa1 with the real bAbI file and the four books of ../shared/data as haystack."""
    from memlab.tasks.babi import read_babi_dir
    from memlab.tasks.babilong import BabilongTask
    from memlab.tasks.text import TokenizedHaystack, load_haystack

    return BabilongTask(1, read_babi_dir(DATA / "babi", 1), tokenizer, TokenizedHaystack(tokenizer, load_haystack(books())))


def titans_args(p, samples: int, out: str) -> None:
    """The options the Titans probes share (titans_retention.py, titans_transplant.py)."""
    root = Path(__file__).resolve().parents[1]
    p.add_argument("--checkpoints", nargs="+", default=[str(root / "checkpoints" / "titans-qa1")])
    p.add_argument("--lengths", default="65536,1000000")
    p.add_argument("--samples", type=int, default=samples, help="samples per length (one batch)")
    p.add_argument("--seed", type=int, default=20000, help="sample i is BabilongTask.sample(length, seed + i)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=out, help="results name: benchmarks/results/OUT.json")


def titans_checkpoints(paths, script: str, variants=None):
    """(name, model in eval mode, its qa1 task) for each Titans checkpoint in `paths`; anything else (or another
    variant than `variants`) stops the script with a message."""
    from memlab.checkpoint import load_checkpoint

    for ck in paths:
        model, tok, _ = load_checkpoint(ck)
        if type(model).__name__ != "Titans" or (variants and model.config.variant not in variants):
            kind = f"Titans {'/'.join(variants)}" if variants else "Titans"
            variant = getattr(model.config, "variant", "")
            raise SystemExit(f"{script}: {ck} is a {type(model).__name__}{' ' + variant if variant else ''} model, "
                             f"not a {kind} model")
        yield Path(ck).name, model.eval(), qa1_task(tok)


def machine() -> dict:
    from memlab.demo import machine_info

    return machine_info()


def check_name(name: str) -> str:
    """A results name is a plain name: benchmarks/results/NAME.json (check it before a long run, not after)."""
    if not name or Path(name).name != name:
        raise SystemExit(f"results name {name!r} must be a plain name (it becomes benchmarks/results/NAME.json), "
                         "not a path")
    return name


def write_result(name: str, payload: dict) -> Path:
    check_name(name)
    payload = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of fn, after one warm-up call (for compiled runs: the compile)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
