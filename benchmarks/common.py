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


def machine() -> dict:
    from memlab.demo import machine_info

    return machine_info()


def write_result(name: str, payload: dict) -> Path:
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
