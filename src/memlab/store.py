"""Results store: one SQLite row per (model, task, length) cell, upserted atomically.

A cell is one point of the evaluation grid: a model run on `samples` samples of one task at one
context length. Runs that would not fit the time or memory budget are stored as
status='out_of_budget' with an `estimate` of what they would have cost, so the report can show
them instead of leaving a hole.

    with ResultStore("results/memlab.sqlite") as store:
        if not store.has("rmt", "babilong_qa1", 16_000, min_samples=100):
            store.put(Cell(model="rmt", task="babilong_qa1", length=16_000, samples=100, ...))
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATUSES = ("ok", "out_of_budget")


@dataclass
class Cell:
    model: str                          # model name as registered
    task: str                           # task (variant) name
    length: int                         # context length in the model's tokens
    samples: int                        # number of samples evaluated
    accuracy: float | None              # exact-match accuracy in [0, 1]
    ci_low: float | None                # Wilson 95% interval, lower bound
    ci_high: float | None               # Wilson 95% interval, upper bound
    seconds: float | None               # total wall time of the cell
    seconds_per_sample: float | None    # mean wall time per sample
    tokens_per_s: float | None          # tokens streamed per second
    state_bytes: int | None             # size of the model state at the end of a sample
    peak_rss_bytes: int | None          # peak resident memory of the process
    status: str = "ok"                  # 'ok' or 'out_of_budget'
    estimate: dict | None = None        # out_of_budget: {'kv_bytes', 'projected_seconds', 'reason', ...}
    extra: dict | None = None           # anything else worth keeping (JSON-serialisable)
    created: str = ""                   # ISO-8601 UTC timestamp, filled on put

    def to_json(self) -> dict:
        """The cell as a plain JSON-serialisable dict with exactly the dataclass fields."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


_FIELDS = [f.name for f in dataclasses.fields(Cell)]
_INT_FIELDS = {"length", "samples", "state_bytes", "peak_rss_bytes"}
_FLOAT_FIELDS = {"accuracy", "ci_low", "ci_high", "seconds", "seconds_per_sample", "tokens_per_s"}
_JSON_FIELDS = {"estimate", "extra"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    length INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    accuracy REAL,
    ci_low REAL,
    ci_high REAL,
    seconds REAL,
    seconds_per_sample REAL,
    tokens_per_s REAL,
    state_bytes INTEGER,
    peak_rss_bytes INTEGER,
    status TEXT NOT NULL DEFAULT 'ok',
    estimate TEXT,
    extra TEXT,
    created TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (model, task, length)
)
"""

# per-sample results of cells that take long (a reader asks a language model many times per sample): an
# interrupted cell resumes from its finished samples
_SAMPLES_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    length INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (model, task, length, idx)
)
"""


def _jsonable(x: Any) -> Any:
    """Turn numpy/torch scalars and arrays (anything with .item()/.tolist()) into plain Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store value of type {type(x).__name__} in a Cell: {x!r}")


class ResultStore:
    """SQLite-backed store of evaluation cells keyed by (model, task, length)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # a sweep shared by several processes writes to one store: wait for a writer instead of failing
            self._conn = sqlite3.connect(str(self.path), timeout=120)
        except sqlite3.Error as e:
            raise ValueError(f"cannot open results store {self.path}: {e}") from e
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self._conn:
                self._conn.execute(_SCHEMA)
                self._conn.execute(_SAMPLES_SCHEMA)
            cols = [r[1] for r in self._conn.execute("PRAGMA table_info(cells)")]
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ValueError(
                f"{self.path} is not a memlab results store (SQLite said: {e}); "
                f"delete it or pass another --store"
            ) from e
        missing = [f for f in _FIELDS if f not in cols]
        if missing:
            self._conn.close()
            raise ValueError(
                f"{self.path} has a 'cells' table without columns {missing}: not a memlab results "
                f"store of this version; delete it or pass another --store"
            )

    # ---- writing -------------------------------------------------------------------------

    def put(self, cell: Cell) -> Cell:
        """Insert or replace the cell (one transaction). Returns the stored cell, `created` set to now."""
        if cell.status not in STATUSES:
            raise ValueError(f"cell status must be one of {STATUSES}, got {cell.status!r}")
        stored = dataclasses.replace(cell, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        row = [self._encode(name, getattr(stored, name)) for name in _FIELDS]
        cols = ", ".join(_FIELDS)
        marks = ", ".join("?" for _ in _FIELDS)
        updates = ", ".join(f"{c}=excluded.{c}" for c in _FIELDS if c not in ("model", "task", "length"))
        sql = (f"INSERT INTO cells ({cols}) VALUES ({marks}) "
               f"ON CONFLICT(model, task, length) DO UPDATE SET {updates}")
        with self._conn:  # commits on success, rolls back on any exception
            self._conn.execute(sql, row)
        return stored

    def put_sample(self, model: str, task: str, length: int, idx: int, data: dict) -> None:
        """Keep one sample's result (a JSON-able dict) of a cell in progress (one transaction)."""
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?)",
                               (model, task, int(length), int(idx), json.dumps(_jsonable(data))))

    def get_samples(self, model: str, task: str, length: int) -> dict[int, dict]:
        """The kept sample results of a cell, by sample index."""
        cur = self._conn.execute("SELECT idx, data FROM samples WHERE model=? AND task=? AND length=?",
                                 (model, task, int(length)))
        return {int(i): json.loads(d) for i, d in cur}

    # ---- reading -------------------------------------------------------------------------

    def get(self, model: str, task: str, length: int) -> Cell | None:
        cur = self._conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM cells WHERE model=? AND task=? AND length=?",
            (model, task, int(length)),
        )
        row = cur.fetchone()
        return None if row is None else self._decode(row)

    def has(self, model: str, task: str, length: int, min_samples: int = 1) -> bool:
        """True if the cell is done: status 'ok' with >= min_samples samples, or out_of_budget."""
        cell = self.get(model, task, length)
        if cell is None:
            return False
        if cell.status == "out_of_budget":
            return True
        return cell.status == "ok" and cell.samples >= min_samples

    def cells(self, model: str | None = None, task: str | None = None) -> list[Cell]:
        """All cells (optionally filtered), ordered by model, task, length."""
        where, args = [], []
        if model is not None:
            where.append("model=?")
            args.append(model)
        if task is not None:
            where.append("task=?")
            args.append(task)
        sql = f"SELECT {', '.join(_FIELDS)} FROM cells"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY model, task, length"
        return [self._decode(r) for r in self._conn.execute(sql, args)]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # ---- encoding ------------------------------------------------------------------------

    @staticmethod
    def _encode(name: str, value: Any) -> Any:
        if value is None:
            return None
        if name in _JSON_FIELDS:
            return json.dumps(_jsonable(value), sort_keys=True)
        if name in _INT_FIELDS:
            return int(value)
        if name in _FLOAT_FIELDS:
            return float(value)
        return str(value)

    @staticmethod
    def _decode(row: tuple) -> Cell:
        kw = dict(zip(_FIELDS, row))
        for name in _JSON_FIELDS:
            if kw[name] is not None:
                kw[name] = json.loads(kw[name])
        return Cell(**kw)
