import json
import sqlite3

import pytest

from memlab.metrics import METRICS, exact_match, get_metric, wilson_interval
from memlab.report import format_bytes, format_length, write_report
from memlab.store import Cell, ResultStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_cell(model="rmt", task="qa1", length=1000, samples=10, accuracy=0.5, **kw) -> Cell:
    base = dict(model=model, task=task, length=length, samples=samples, accuracy=accuracy,
                ci_low=None if accuracy is None else max(0.0, accuracy - 0.1),
                ci_high=None if accuracy is None else min(1.0, accuracy + 0.1),
                seconds=2.0, seconds_per_sample=0.2, tokens_per_s=5000.0,
                state_bytes=4096, peak_rss_bytes=300 * 2**20)
    base.update(kw)
    return Cell(**base)


# ---- metrics ------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # wider z -> wider interval; interval always contains the point estimate
    lo99, hi99 = wilson_interval(50, 100, z=2.576)
    assert lo99 < 0.4038 and hi99 > 0.5962
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_exact_match_and_registry():
    assert exact_match("  Kitchen \n", "kitchen")
    assert not exact_match("kitchen", "garden")
    assert get_metric("exact_match") is exact_match and "exact_match" in METRICS
    with pytest.raises(KeyError, match="exact_match"):
        get_metric("f1_fuzzy")


# ---- store --------------------------------------------------------------------------------


def test_store_round_trip_and_to_json(tmp_path):
    path = tmp_path / "sub" / "dir" / "results.sqlite"  # parent dirs are created
    cell = make_cell(extra={"segment_len": 512, "notes": ["a", "b"]})
    with ResultStore(path) as store:
        stored = store.put(cell)
        got = store.get("rmt", "qa1", 1000)
    assert got == stored
    assert got.created and stored.created.startswith("20")
    assert got.extra == {"segment_len": 512, "notes": ["a", "b"]}
    assert cell.created == ""  # put does not mutate its argument
    d = got.to_json()
    assert set(d) == {"model", "task", "length", "samples", "accuracy", "ci_low", "ci_high",
                      "seconds", "seconds_per_sample", "tokens_per_s", "state_bytes",
                      "peak_rss_bytes", "status", "estimate", "extra", "created"}
    assert json.loads(json.dumps(d)) == d
    assert Cell(**d) == got


def test_store_upsert_replaces_and_orders(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(make_cell(length=4000, accuracy=0.2))
        store.put(make_cell(length=1000, accuracy=0.9))
        store.put(make_cell(model="armt", length=1000))
        store.put(make_cell(length=4000, accuracy=0.7, samples=20))  # replaces
        assert len(store) == 3
        got = store.get("rmt", "qa1", 4000)
        assert got.accuracy == 0.7 and got.samples == 20
        keys = [(c.model, c.task, c.length) for c in store.cells()]
        assert keys == [("armt", "qa1", 1000), ("rmt", "qa1", 1000), ("rmt", "qa1", 4000)]
        assert [c.length for c in store.cells(model="rmt")] == [1000, 4000]
        assert store.cells(task="qa2") == []
        assert store.get("rmt", "qa1", 123) is None


def test_store_has_semantics(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert not store.has("rmt", "qa1", 1000)
        store.put(make_cell(samples=10))
        assert store.has("rmt", "qa1", 1000)
        assert store.has("rmt", "qa1", 1000, min_samples=10)
        assert not store.has("rmt", "qa1", 1000, min_samples=11)
        store.put(make_cell(samples=0, accuracy=None))
        assert not store.has("rmt", "qa1", 1000)
        store.put(make_cell(length=10**6, samples=0, accuracy=None, status="out_of_budget",
                            estimate={"kv_bytes": 2**34, "reason": "KV cache exceeds budget"}))
        assert store.has("rmt", "qa1", 10**6, min_samples=100)
        with pytest.raises(ValueError, match="status"):
            store.put(make_cell(status="crashed"))


def test_store_persists_across_reopen(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(make_cell(estimate=None, extra={"k": 1}))
    with ResultStore(path) as store:
        got = store.get("rmt", "qa1", 1000)
        assert got is not None and got.extra == {"k": 1} and got.accuracy == 0.5


def test_store_put_is_atomic_on_bad_value(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(make_cell(accuracy=0.5))
        with pytest.raises(TypeError):
            store.put(make_cell(accuracy=0.9, extra={"bad": object()}))
        assert store.get("rmt", "qa1", 1000).accuracy == 0.5


def test_store_accepts_numpy_scalars(tmp_path):
    np = pytest.importorskip("numpy")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(make_cell(length=np.int64(2000), accuracy=np.float32(0.25),
                            state_bytes=np.int64(10), extra={"x": np.float64(1.5)}))
        got = store.get("rmt", "qa1", 2000)
        assert got.accuracy == 0.25 and got.state_bytes == 10 and got.extra == {"x": 1.5}


def test_store_rejects_non_sqlite_file(tmp_path):
    bad = tmp_path / "results.sqlite"
    bad.write_text("this is not a database\n" * 100)
    with pytest.raises(ValueError) as err:
        ResultStore(bad)
    msg = str(err.value)
    assert str(bad) in msg and "delete it" in msg and "--store" in msg


def test_store_rejects_foreign_sqlite_schema(tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE cells (a INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="--store"):
        ResultStore(path)


# ---- report -------------------------------------------------------------------------------


def test_format_helpers():
    assert format_length(1000) == "1k"
    assert format_length(1500) == "1.5k"
    assert format_length(4000) == "4k"
    assert format_length(1_000_000) == "1M"
    assert format_length(11_000_000) == "11M"
    assert format_length(999_999) == "1M"
    assert format_length(512) == "512"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(2**20) == "1 MiB"
    assert format_bytes(3 * 2**30) == "3 GiB"
    assert format_bytes(None) == "-"


def synthetic_store(path) -> ResultStore:
    store = ResultStore(path)
    lengths = [1000, 4000, 16000, 64000, 1_000_000]
    for task in ("qa1", "qa2"):
        for m, (model, drop) in enumerate([("transformer", 0.2), ("rmt", 0.08), ("armt", 0.03)]):
            for j, L in enumerate(lengths):
                if model == "transformer" and L >= 64000:
                    store.put(make_cell(model, task, L, samples=0, accuracy=None, ci_low=None,
                                        ci_high=None, seconds=None, seconds_per_sample=None,
                                        tokens_per_s=None, state_bytes=None, status="out_of_budget",
                                        estimate={"kv_bytes": 2 * 2 * 64 * L * 4,
                                                  "projected_seconds_per_token": 1e-5 * L / 1000,
                                                  "reason": "KV cache over budget"}))
                    continue
                if model == "armt" and task == "qa2" and L == 16000:
                    continue  # a missing cell
                acc = max(0.0, 0.97 - drop * j)
                store.put(make_cell(model, task, L, samples=50, accuracy=acc,
                                    tokens_per_s=1e5 / (1 + (L / 1000 if model == "transformer" else 1)),
                                    state_bytes=(2 * 2 * 64 * L * 4 if model == "transformer" else 65536)))
    return store


def test_report_writes_all_files(tmp_path):
    with synthetic_store(tmp_path / "r.sqlite") as store:
        paths = write_report(store, tmp_path / "out", title="demo <report>")
    assert set(paths) == {"accuracy_heatmap", "state_bytes", "time_per_token", "report_md",
                          "report_html"}
    for name in ("accuracy_heatmap", "state_bytes", "time_per_token"):
        data = paths[name].read_bytes()
        assert paths[name].suffix == ".png"
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    md = paths["report_md"].read_text()
    assert md.startswith("# demo <report>")
    for model in ("transformer", "rmt", "armt"):
        assert model in md
    for fname in ("accuracy_heatmap.png", "state_bytes.png", "time_per_token.png"):
        assert f"]({fname})" in md
    oob_rows = [line for line in md.splitlines() if "out_of_budget" in line and "transformer" in line]
    assert oob_rows and "KV" in oob_rows[0]
    assert "0.970 [" in md  # accuracy with its interval
    page = paths["report_html"].read_text()
    assert "demo &lt;report&gt;" in page and "<report>" not in page
    assert 'src="state_bytes.png"' in page and "http" not in page
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["accuracy_heatmap.png", "state_bytes.png", "time_per_token.png", "report.md", "report.html"])


def test_report_only_out_of_budget_cells(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(make_cell(samples=0, accuracy=None, status="out_of_budget", tokens_per_s=None,
                            state_bytes=None, estimate={"reason": "too slow"}))
        paths = write_report(store, tmp_path / "out")
    assert "too slow" in paths["report_md"].read_text()
    assert paths["state_bytes"].read_bytes()[:8] == PNG_MAGIC


def test_report_empty_store_is_clear_error(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="no results in .*run memlab eval first"):
            write_report(store, tmp_path / "out")


def test_report_plots_accuracy_against_consolidation_only_when_cells_report_it(tmp_path):
    with ResultStore(tmp_path / "plain.sqlite") as store:
        store.put(make_cell())
    assert "consolidation" not in write_report(tmp_path / "plain.sqlite", tmp_path / "plain")
    with ResultStore(tmp_path / "sleep.sqlite") as store:
        for n, acc in ((0, 0.3), (1, 0.4), (4, 0.6)):
            store.put(make_cell(model=f"sleep-qa2@N={n}", task="babilong:qa2", accuracy=acc,
                                extra={"flops_predict_per_sample": 1e9, "flops_sleep_per_sample": n * 1e9}))
    paths = write_report(tmp_path / "sleep.sqlite", tmp_path / "sleep")
    assert paths["consolidation"].read_bytes().startswith(PNG_MAGIC)
    assert "accuracy_vs_consolidation.png" in paths["report_md"].read_text()
    assert "accuracy_vs_consolidation.png" in paths["report_html"].read_text()


def test_report_analyses_page_from_benchmark_results(tmp_path):
    """`memlab report --analyses DIR`: a section per result file found, its numbers and plot."""
    import json
    import shutil

    from memlab.analysis.pages import sections
    from memlab.cli import main
    from memlab.store import Cell, ResultStore

    res = tmp_path / "results"
    res.mkdir()
    (res / "memory_keeps.json").write_text(json.dumps({
        "command": "memory_keeps.py", "date": "2026-11-26T00:00:00", "task": "babilong:qa1", "length": 16000, "samples": 20,
        "measure": "relative state change", "models": {"rmt-qa1": {"ratio": 13.9, "share_of_samples_above_1": 1.0}}}))
    shutil.copyfile(__file__, res / "memory_keeps.png")  # any file stands for the plot
    assert [s.title for s in sections(res)] == ["What recurrent memory keeps"]
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.put(Cell("m", "babilong:qa1", 1000, 10, 0.5, 0.2, 0.8, 1.0, 0.1, 1e4, 100, 1e6, "ok", None, None))
    assert main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "rep"), "--analyses", str(res)]) in (0, None)
    md = (tmp_path / "rep" / "analyses.md").read_text()
    assert "| rmt-qa1 | 13.90 | 1.00 | - |" in md and "![What recurrent memory keeps](memory_keeps.png)" in md
    assert (tmp_path / "rep" / "memory_keeps.png").is_file() and (tmp_path / "rep" / "analyses.html").is_file()
    assert main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "rep2"), "--analyses",
                 str(tmp_path / "none")]) == 2


def test_analyses_scale_section_lists_the_gpu_sessions_long_cells(tmp_path):
    """Cells of a million tokens or more from gpu_session*/results.json and streaming_100m/*.jsonl (the CPU's long
    runs) enter the scale section, each row naming its source (and CUDA graphs where a cell ran through them);
    shorter cells and refused ones do not."""
    import json

    from memlab.analysis.pages import sections

    cell = dict(model="rmt-qa1", task="babilong:qa1", samples=20, accuracy=0.5, ci_low=0.3, ci_high=0.7,
                tokens_per_s=1.18e6, state_bytes=8192, status="ok")
    g = tmp_path / "gpu_session9"
    g.mkdir()
    (g / "results.json").write_text(json.dumps({"date": "2026-11-26T11:00:00", "machine": {"gpu": "H100"}, "cells": [
        {**cell, "length": 11_000_000}, {**cell, "length": 4000}, {**cell, "length": 2_000_000, "status": "refused"},
        {**cell, "length": 1_000_000, "extra": {"compile_mode": "reduce-overhead"}}]}))
    c = tmp_path / "streaming_100m"  # the CPU's long runs: JSON lines of cells
    c.mkdir()
    (c / "rmt_11m.jsonl").write_text("\n".join(json.dumps(x) for x in (
        {**cell, "length": 11_000_000, "samples": 8, "accuracy": 1.0, "ci_low": 0.68, "ci_high": 1.0, "tokens_per_s": 66871,
         "created": "2026-11-27T13:28:00+00:00"}, {**cell, "length": 64_000})) + "\n")
    (s,) = sections(tmp_path)
    assert s.table[1:] == [["rmt-qa1", "11,000,000", "20", "0.50 [0.30, 0.70]", "1,180,000", "8,192 B",
                            "gpu_session9 (H100, 2026-11-26)"],
                           ["rmt-qa1", "1,000,000", "20", "0.50 [0.30, 0.70]", "1,180,000", "8,192 B",
                            "gpu_session9 (H100, 2026-11-26, CUDA graphs)"],
                           ["rmt-qa1", "11,000,000", "8", "1.00 [0.68, 1.00]", "66,871", "8,192 B",
                            "streaming_100m/rmt_11m.jsonl (CPU, 2026-11-27)"]]


def test_analyses_side_by_side_section_puts_every_shipped_model_on_one_table(tmp_path):
    """The demo's cells and each model folder's own cells make one table (a model row, a length column); a
    model's cells come from the first folder that has them, refused cells say so, missing ones are '-'."""
    import json

    from memlab.analysis.pages import sections

    def cell(model, length, acc, status="ok"):
        return dict(model=model, task="babilong:qa1", length=length, samples=100, accuracy=acc,
                    state_bytes=length * 3 if model == "transformer-qa1" else 8192, status=status)

    for name, cells in (("demo", [cell("rmt-qa1", 1000, 1.0), cell("transformer-qa1", 1000, 0.97),
                                  cell("transformer-qa1", 16000, None, "out_of_budget")]),
                        ("titans", [cell("titans-qa1", 1000, 0.9), cell("titans-qa1", 16000, 0.74),
                                    cell("rmt-qa1", 1000, 0.5)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"date": "2026-11-26", "cells": cells}))
    (s,) = sections(tmp_path)
    assert s.table == [["model", "1,000", "16,000", "state per sample (shortest to longest)"],
                       ["rmt-qa1", "1.00 (100)", "-", "8,192 B"],
                       ["transformer-qa1", "0.97 (100)", "refused", "3,000 B to 48,000 B"],
                       ["titans-qa1", "0.90 (100)", "0.74 (100)", "8,192 B"]]


def test_analyses_page_reads_every_committed_result_file():
    """The analyses page builds from the benchmark results committed in this repository (each result file's
    current format): a format change in a benchmark script must not break `memlab report --analyses`."""
    from pathlib import Path

    from memlab.analysis.pages import sections

    res = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    titles = [s.title for s in sections(res)]
    for expected in ("What recurrent memory keeps", "FLenQA", "Every shipped model on the demo's samples"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)


def test_analyses_page_has_a_flenqa_section_per_curve(tmp_path):
    """benchmarks/flenqa_curve.py writes flenqa_curve.json for a Hugging Face model and flenqa_curve_<name>.json
    for a memlab checkpoint (--checkpoint): the analyses page shows each, with its own plot and mean by length."""
    import json

    from memlab.analysis.pages import sections

    rows = lambda accs: [{"task": "flenqa:pir-similar-random", "length": n, "samples": 32, "accuracy": a}  # noqa: E731
                         for n, a in accs]
    (tmp_path / "flenqa_curve.json").write_text(json.dumps({"model": "smollm2", "mode": "likelihood",
                                                            "rows": rows([(250, 0.5)])}))
    (tmp_path / "flenqa_curve_rmt-flenqa.json").write_text(json.dumps({"checkpoint": "runs/rmt-flenqa",
                                                                       "rows": rows([(250, 1.0), (250, 0.5), (500, 0.75)])}))
    found = {s.title: s for s in sections(tmp_path)}
    assert set(found) == {"FLenQA: smollm2 (likelihood)", "FLenQA: memlab checkpoint runs/rmt-flenqa"}
    ours = found["FLenQA: memlab checkpoint runs/rmt-flenqa"]
    assert ours.image == "flenqa_curve_rmt-flenqa.png"
    assert ours.table[1:] == [["250", "2", "0.75"], ["500", "1", "0.75"]]


def test_analyses_page_has_a_sleep_section_per_shipped_curve(tmp_path):
    """benchmarks/sleep_curve.py writes sleep_curve_<name>.json: the analyses page shows the curves of shipped
    checkpoints (checkpoints/...), one row per task and length, one column per N with its interval, and the
    consolidation FLOPs each N costs; the diagnostic runs' curves (runs/...) are left to their README."""
    import json

    from memlab.analysis.pages import sections

    def row(task, n, acc, flops):
        return {"task": task, "length": 128, "passes": n, "samples": 100, "accuracy": acc, "ci_low": acc - 0.1,
                "ci_high": min(1.0, acc + 0.05), "flops_sleep_per_sample": flops}

    rows = [row("ruler:vt_value_h3", 1, 0.72, 8e7), row("ruler:vt_value_h3", 4, 0.99, 3.2e8), row("ruler:vt_value_h4", 1, 0.62, 8e7)]
    (tmp_path / "sleep_curve_sleep-vt-hops.json").write_text(json.dumps({"checkpoint": "checkpoints/sleep-vt-hops", "window": 64, "rows": rows}))
    (tmp_path / "sleep_curve_diag.json").write_text(json.dumps({"checkpoint": "runs/diag", "window": 64, "rows": rows}))
    (s,) = [s for s in sections(tmp_path) if s.title.startswith("Sleep")]
    assert s.title == "Sleep: accuracy against consolidation passes, checkpoints/sleep-vt-hops"
    assert s.image == "sleep_curve_sleep-vt-hops.png"
    assert s.table == [["task @ length", "N=1", "N=4"],
                       ["ruler:vt_value_h3 @ 128", "0.72 [0.62, 0.77]", "0.99 [0.89, 1.00]"],
                       ["ruler:vt_value_h4 @ 128", "0.62 [0.52, 0.67]", "-"],
                       ["consolidation FLOPs per sample (first row)", "8e+07", "3.2e+08"]]
    assert "64 tokens" in s.notes[0] and "100 samples" in s.notes[0]


def test_analyses_page_has_the_sleep_hops_probe(tmp_path):
    """benchmarks/sleep_hops_probe.py's result: one table per length, hops from the value by N, the plot once."""
    import json

    from memlab.analysis.pages import sections

    rows = [{"length": L, "passes": n, "depth": dp, "asked": 200, "accuracy": a}
            for L in (128, 512) for n, dp, a in ((0, 0, 0.99), (0, 1, 0.6), (4, 0, 0.39), (4, 1, 0.56))]
    (tmp_path / "sleep_hops_probe.json").write_text(json.dumps({"checkpoint": "checkpoints/sleep-vt-hops", "hops": 1,
                                                                "rows": rows}))
    found = [s for s in sections(tmp_path) if s.title.startswith("Sleep: what the passes")]
    assert [s.title.split(", ")[-1] for s in found] == ["128 tokens", "512 tokens"] and found[0].image == "sleep_hops_probe.png"
    assert found[1].image is None
    assert found[0].table == [["hops from the value", "N=0", "N=4"], ["0", "0.99", "0.39"], ["1", "0.60", "0.56"]]
    assert "200 questions" in found[0].notes[0]
