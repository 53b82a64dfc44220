"""`memlab demo`, the main job: attention and RMT on BABILong qa1 from 1k to 1M tokens of book text,
their cost curves, and the report. Uses the checkpoints shipped in checkpoints/ (or retrains them with
the recipes in configs/ when asked or when they are missing)."""
from __future__ import annotations

import time
from pathlib import Path

from .cli import REPO_ROOT, _books_default

DEMO_MODELS = ["rmt-qa1", "transformer-qa1"]  # checkpoints/<name>, trained by configs/<name>.yaml
FULL = dict(lengths=[1000, 4000, 16000, 64000, 256000, 1000000], samples=100, long_samples=20, time_budget=240.0)
QUICK = dict(lengths=[1000, 4000, 16000], samples=20, long_samples=20, time_budget=60.0)


def shared_babi_dir() -> str | None:
    d = REPO_ROOT.parent / "shared" / "data" / "babi"
    return str(d) if d.is_dir() else None


def samples_for(length: int, plan: dict) -> int:
    return plan["samples"] if length < 256_000 else plan["long_samples"]


def run_demo(out: Path, retrain: bool = False, quick: bool = False, log=print):
    from .checkpoint import load_checkpoint
    from .evaluate import EvalSpec, evaluate_checkpoint
    from .report import write_report
    from .store import ResultStore
    from .train import load_recipe, train

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    books = _books_default()
    if not books:
        log("demo: ../shared/data/books not found; using the procedural haystack")
    plan = QUICK if quick else FULL
    ckpts = {}
    for name in DEMO_MODELS:
        shipped = REPO_ROOT / "checkpoints" / name
        if retrain or not (shipped / "model.safetensors").is_file():
            cfg = load_recipe(REPO_ROOT / "configs" / f"{name}.yaml")
            cfg.haystack = books
            target = out / "checkpoints" / name
            log(f"demo: training {name} -> {target} ({cfg.steps} steps)")
            train(cfg, target, resume=True, log=log)
            ckpts[name] = target
        else:
            ckpts[name] = shipped
    store_path = out / "results.sqlite"
    with ResultStore(store_path) as store:
        for name, path in ckpts.items():
            model, tok, _ = load_checkpoint(path)
            for length in plan["lengths"]:
                spec = EvalSpec([1], [length], samples_for(length, plan), 8, 0, books or None, shared_babi_dir(),
                                plan["time_budget"])
                evaluate_checkpoint(name, model, tok, spec, store, log=log)
    paths = write_report(store_path, out / "report")
    log(f"demo: done in {time.time() - t0:.0f}s; report: {paths['report_md']}")
    return paths
