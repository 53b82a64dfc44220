"""The `memlab` command end to end: help, babi, a tiny train, eval (JSON, store, skip, resume, preflight),
report, and bad input (exit 2, one clear message, nothing half-written)."""
import contextlib
import io
import json
import shutil

import pytest
import torch

import memlab.evaluate
from memlab.cli import main
from memlab.report import format_bytes
from memlab.store import ResultStore
from memlab.tasks.babi import generate_babi, parse_babi

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_KEYS = {"model": str, "task": str, "length": int, "samples": int, "accuracy": float, "ci_low": float,
             "ci_high": float, "seconds": float, "tokens_per_s": float, "state_bytes": int, "peak_rss_bytes": int}
TINY = {
    "rmt": '{"d_model": 32, "n_layers": 1, "n_heads": 2, "num_mem": 2, "segment_len": 32}',
    "transformer": '{"d_model": 32, "n_layers": 1, "n_heads": 2, "segment_len": 64}',
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def fails(cmd, *argv, match):
    """Run a command that must fail cleanly: exit 2, nothing on stdout, one error line naming the problem."""
    code, out, err = run(cmd, *argv)
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"memlab {cmd}: error: ")]
    assert len(errors) == 1 and err.startswith(errors[0]), err  # one message, first (YAML's may add a pointer below)
    for m in [match] if isinstance(match, str) else match:
        assert m in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def book(books):
    return min(books, key=lambda p: p.stat().st_size)  # the smallest book keeps the tests fast


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny RMT and full-attention transformer checkpoints, trained once through `memlab train`."""
    root = tmp_path_factory.mktemp("ckpts")
    recipe = root / "tiny.yaml"
    recipe.write_text("train_pool: 200\nvocab_size: 300\neval_samples: 8\nwarmup: 1\nstage_steps: 2\nseed: 1\n")
    out = {}
    for name, args in TINY.items():
        code, stdout, err = run("train", "--recipe", recipe, "--model", name, "--model-args", args, "--task", "babilong:qa1",
                                "--lengths", "0,128", "--steps", "3", "--batch-size", "4", "--out", root / name, "--no-progress")
        assert code == 0, err
        res = json.loads(stdout)
        assert res["checkpoint"] == str(root / name) and res["final_eval"]["step"] == 3
        out[name] = root / name
    return out


def eval_args(ckpt, store, book, *extra, lengths="200,400"):
    return ["eval", ckpt, "--task", "babilong:qa1", "--lengths", lengths, "--samples", "4", "--batch-size", "2",
            "--store", store, "--json", "--haystack", book, *extra]


def cells_of(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def evaluated(ckpts, book, tmp_path_factory):
    """Both checkpoints evaluated at 200 and 400 tokens into one store."""
    store = tmp_path_factory.mktemp("eval") / "results.sqlite"
    runs = {}
    for name in ckpts:
        code, out, err = run(*eval_args(ckpts[name], store, book))
        assert code == 0, err
        runs[name] = cells_of(out)
    return store, runs


# ---- help, models, babi -----------------------------------------------------------------


OPTIONS = {
    "train": ["--recipe", "--model", "--task", "--model-args", "--lengths", "--steps", "--batch-size", "--out", "--resume"],
    "eval": ["--task", "--lengths", "--samples", "--batch-size", "--store", "--time-budget", "--force", "--json", "--haystack",
             "--compile"],
    "report": ["--store", "--out"],
    "demo": ["--out", "--train", "--quick"],
    "babi": ["--task", "--n", "--seed"],
    "models": [],
}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in OPTIONS:
        assert cmd in out


@pytest.mark.parametrize("cmd", list(OPTIONS))
def test_command_help_mentions_its_options(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: memlab {cmd}")
    for opt in OPTIONS[cmd]:
        assert opt in out, opt


def test_models_lists_the_registry():
    code, out, _ = run("models")
    assert code == 0 and {"rmt", "transformer"} <= set(out.split())


def test_babi_prints_the_original_format():
    code, out, err = run("babi", "--task", "1", "--n", "5")
    assert code == 0, err
    questions = parse_babi(out, task=1)
    assert len(questions) == 5
    assert questions == generate_babi(1, 5, seed=0)
    fails("babi", "--task", "9", match=["unknown bAbI task", "qa1..qa5"])


# ---- train ----------------------------------------------------------------------------------


def test_train_writes_loadable_checkpoints(ckpts):
    for name, d in ckpts.items():
        assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"} <= {p.name for p in d.iterdir()}
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["kind"] == name and cfg["d_model"] == 32 and cfg["n_layers"] == 1 and cfg["vocab_size"] <= 300
        info = json.loads((d / "train_info.json").read_text())
        assert info["step"] == 3 and info["train_config"]["train_pool"] == 200  # the recipe, with the options over it


# ---- eval -----------------------------------------------------------------------------------


def test_eval_json_cells_and_store(evaluated):
    store, runs = evaluated
    for name, cells in runs.items():
        assert [c["length"] for c in cells] == [200, 400]
        for c in cells:
            for key, typ in CELL_KEYS.items():
                assert isinstance(c[key], typ), (key, c[key])
            assert c["model"] == name and c["task"] == "babilong:qa1" and c["samples"] == 4 and c["status"] == "ok"
            assert 0 <= c["ci_low"] <= c["accuracy"] <= c["ci_high"] <= 1
            assert c["seconds"] > 0 and c["tokens_per_s"] > 0 and c["state_bytes"] > 0 and c["peak_rss_bytes"] > 0
    with ResultStore(store) as s:
        stored = {(c.model, c.length): c for c in s.cells()}
    assert set(stored) == {(m, n) for m in runs for n in (200, 400)}
    for name, cells in runs.items():
        for c in cells:
            assert stored[name, c["length"]].accuracy == c["accuracy"] and stored[name, c["length"]].created == c["created"]
    # the point of memlab, measured: recurrent state is fixed, the KV cache grows with the context
    assert stored["rmt", 200].state_bytes == stored["rmt", 400].state_bytes
    assert stored["transformer", 400].state_bytes == 2 * stored["transformer", 200].state_bytes


def test_eval_rerun_skips_finished_cells(evaluated, ckpts, book, monkeypatch):
    store, _ = evaluated
    with ResultStore(store) as s:
        before = {(c.model, c.length): c.created for c in s.cells()}

    def no_recompute(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(memlab.evaluate, "run_cell", no_recompute)
    code, out, err = run(*eval_args(ckpts["rmt"], store, book))
    assert code == 0, err
    assert out == "" and err.count("skipped") == 2
    with ResultStore(store) as s:
        assert {(c.model, c.length): c.created for c in s.cells()} == before


def test_eval_refuses_a_stored_cell_of_another_seed(evaluated, ckpts, book):
    """The store keys cells by model, task and length: a run on other samples (--seed 1) must not skip the cells
    of seed 0 as done, nor overwrite them."""
    store, _ = evaluated
    with ResultStore(store) as s:
        before = {(c.model, c.length): (c.created, c.extra["seed"]) for c in s.cells()}
    assert {seed for _, seed in before.values()} == {0}
    code, out, err = run(*eval_args(ckpts["rmt"], store, book, "--seed", "1"))
    assert code == 2 and out == ""
    assert "measured with --seed 0, and this run asks --seed 1" in err and "another --store" in err
    with ResultStore(store) as s:
        assert {(c.model, c.length): (c.created, c.extra["seed"]) for c in s.cells()} == before


def test_eval_interrupted_sweep_resumes(ckpts, book, tmp_path, evaluated, monkeypatch):
    store = tmp_path / "r.sqlite"
    code, out, err = run(*eval_args(ckpts["rmt"], store, book, lengths="200"))
    assert code == 0, err
    computed = []
    real = memlab.evaluate.run_cell
    monkeypatch.setattr(memlab.evaluate, "run_cell", lambda *a, **k: computed.append(a[4]) or real(*a, **k))
    code, out, err = run(*eval_args(ckpts["rmt"], store, book))
    assert code == 0, err
    assert computed == [400] and [c["length"] for c in cells_of(out)] == [400]
    assert "200: done already, skipped" in err
    # samples are a function of (seed, length): the same cell as in the other store
    with ResultStore(store) as a, ResultStore(evaluated[0]) as b:
        for n in (200, 400):
            assert a.get("rmt", "babilong:qa1", n).accuracy == b.get("rmt", "babilong:qa1", n).accuracy


def test_eval_cell_killed_mid_stream_resumes_from_its_saved_progress(ckpts, book, tmp_path, evaluated, monkeypatch):
    """--save-every: a cell killed mid-stream (here: in its second batch, right after a save) leaves its progress
    next to the store; the re-run skips the finished batch, resumes the other from the saved state and stores the
    cell an uninterrupted run stores (seconds of both runs added, marked resumed); the progress file is then gone."""
    store, progress = tmp_path / "r.sqlite", tmp_path / "r.sqlite.progress"
    real_save, real_stream = memlab.evaluate.CellProgress.save, memlab.evaluate.stream

    class Killed(Exception):
        pass

    def save_then_die(self):
        real_save(self)
        if self.data["batches"] and self.data["current"] and self.data["current"]["done"] > 64:
            raise Killed(self.data["current"]["done"])

    monkeypatch.setattr(memlab.evaluate.CellProgress, "save", save_then_die)
    with pytest.raises(Killed) as killed:
        run(*eval_args(ckpts["rmt"], store, book, "--save-every", "1e-9", lengths="400"))
    assert len(list(progress.glob("*.pt"))) == 1 and not ResultStore(store).cells()
    monkeypatch.setattr(memlab.evaluate.CellProgress, "save", real_save)
    starts = []
    monkeypatch.setattr(memlab.evaluate, "stream", lambda *a, **k: starts.append(k["start"]) or real_stream(*a, **k))
    code, out, err = run(*eval_args(ckpts["rmt"], store, book, "--save-every", "1e-9", lengths="400"))
    assert code == 0, err
    assert "resuming from" in err and "1 batch(es) done" in err
    assert starts == [killed.value.args[0]]  # batch 0 was done; batch 1 went on from the saved tokens
    (cell,) = cells_of(out)
    with ResultStore(evaluated[0]) as ref:
        whole = ref.get("rmt", "babilong:qa1", 400)
    assert (cell["samples"], cell["accuracy"], cell["state_bytes"]) == (whole.samples, whole.accuracy, whole.state_bytes)
    assert cell["extra"]["resumed"] is True and cell["seconds"] > 0
    assert not list(progress.glob("*"))  # removed once the cell is stored
    # progress of other weights is never taken: a cell of another model starts afresh
    code, out, err = run(*eval_args(ckpts["rmt"], tmp_path / "s.sqlite", book, "--save-every", "0", lengths="400"))
    assert code == 0 and "resuming" not in err and not (tmp_path / "s.sqlite.progress").exists()


def test_eval_logs_progress_inside_a_cell(ckpts, book, tmp_path, monkeypatch):
    """A long cell reports how far it has got while it runs, so a run cut short still tells its throughput."""
    real = memlab.evaluate.progress_logger
    monkeypatch.setattr(memlab.evaluate, "progress_logger", lambda *a, **k: real(*a, **{**k, "every": 0.0}))
    code, out, err = run(*eval_args(ckpts["rmt"], tmp_path / "r.sqlite", book, lengths="400"))
    assert code == 0, err
    for batch in ("samples 0-1", "samples 2-3"):  # 4 samples in batches of 2
        lines = [l for l in err.splitlines() if f"rmt babilong:qa1 400: {batch}: " in l and "tokens/s over the batch of 2" in l]
        done = [int(l.split(": ")[-1].split(" of ")[0].replace(",", "")) for l in lines]
        total = {int(l.split(" of ")[1].split(" ")[0].replace(",", "")) for l in lines}
        assert len(done) >= 2 and done == sorted(set(done)) and total == {done[-1]} and done[-1] >= 400


def test_preflight_refuses_over_the_time_budget_and_force_runs(ckpts, book, tmp_path):
    store = tmp_path / "r.sqlite"
    args = eval_args(ckpts["transformer"], store, book, "--time-budget", "0.001", lengths="400")
    code, out, err = run(*args)
    assert code == 0, err
    [c] = cells_of(out)
    assert c["status"] == "out_of_budget" and c["samples"] == 0 and c["accuracy"] is None
    est = c["estimate"]
    assert isinstance(est["kv_bytes"], int) and est["kv_bytes"] > 0 and est["projected_seconds"] >= 0
    assert "refused" in err and "--force" in err and "time budget" in err
    with ResultStore(store) as s:
        cell = s.get("transformer", "babilong:qa1", 400)
    assert cell.status == "out_of_budget" and cell.estimate == est and cell.state_bytes == est["kv_bytes"]
    code, out, err = run(*args)  # still refused: recorded once, not rewritten
    assert code == 0 and out == "" and "skipped" in err
    code, out, err = run(*args, "--force")
    assert code == 0, err
    [c] = cells_of(out)
    assert c["status"] == "ok" and c["samples"] == 4 and isinstance(c["accuracy"], float)
    with ResultStore(store) as s:
        assert s.get("transformer", "babilong:qa1", 400).status == "ok"


def test_preflight_refuses_a_kv_cache_larger_than_memory(ckpts, book, tmp_path, monkeypatch):
    monkeypatch.setattr(memlab.evaluate, "mem_available_bytes", lambda: 200_000)  # holds RMT's segment scores, not the KV cache
    store = tmp_path / "r.sqlite"
    code, out, err = run(*eval_args(ckpts["transformer"], store, book, lengths="400"))
    assert code == 0, err
    [c] = cells_of(out)
    assert c["status"] == "out_of_budget"
    kv = c["estimate"]["kv_bytes"]
    assert kv == 2 * 1 * 400 * 32 * 4  # K and V, 1 layer, 400 tokens, d_model 32, fp32
    assert f"KV cache of {format_bytes(kv * 2)}" in err and "refused" in err and "--force" in err
    # recurrent memory has no KV cache: the same memory limit does not refuse RMT
    code, out, err = run(*eval_args(ckpts["rmt"], store, book, lengths="400"))
    assert code == 0, err
    assert [c["status"] for c in cells_of(out)] == ["ok"]


# ---- report ---------------------------------------------------------------------------------


def test_report_from_the_store(evaluated, tmp_path):
    store, _ = evaluated
    code, out, err = run("report", "--store", store, "--out", tmp_path / "rep")
    assert code == 0, err
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.md", "report.html"} <= names
    pngs = list((tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "rmt" in md and "transformer" in md


def test_report_without_results(tmp_path):
    fails("report", "--store", tmp_path / "new.sqlite", "--out", tmp_path / "rep", match=["new.sqlite", "does not exist", "memlab eval"])
    assert not (tmp_path / "new.sqlite").exists() and not (tmp_path / "rep").exists()
    ResultStore(tmp_path / "empty.sqlite").close()
    fails("report", "--store", tmp_path / "empty.sqlite", "--out", tmp_path / "rep", match=["no results", "memlab eval"])
    assert not (tmp_path / "rep").exists()


# ---- bad input ------------------------------------------------------------------------------


@pytest.fixture
def bad_haystacks(tmp_path):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("  \n")
    binary.write_bytes(b"Some words here.\x00\x01\x02 more words there.")
    return {"missing": (tmp_path / "nope.txt", "does not exist"), "empty": (empty, "is empty"), "binary": (binary, "binary")}


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_eval_bad_haystack_writes_no_store(kind, bad_haystacks, ckpts, tmp_path):
    path, problem = bad_haystacks[kind]
    store = tmp_path / "s" / "r.sqlite"
    fails("eval", ckpts["rmt"], "--lengths", "200", "--samples", "2", "--store", store, "--haystack", path,
          match=[str(path), problem, "UTF-8 text file"])
    assert not store.exists() and not store.parent.exists()


def _broken_checkpoints(src, tmp_path):
    empty = tmp_path / "empty_ck"
    empty.mkdir()
    bad_cfg = tmp_path / "bad_cfg"
    shutil.copytree(src, bad_cfg)
    (bad_cfg / "config.json").write_text('{"kind": "rmt", "d_model": ')
    no_weights = tmp_path / "no_weights"
    shutil.copytree(src, no_weights)
    (no_weights / "model.safetensors").unlink()
    bad_weights = tmp_path / "bad_weights"
    shutil.copytree(src, bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"not safetensors")
    unknown_kind = tmp_path / "unknown_kind"
    shutil.copytree(src, unknown_kind)
    cfg = json.loads((src / "config.json").read_text())
    (unknown_kind / "config.json").write_text(json.dumps({**cfg, "kind": "lstm"}))
    no_tok = tmp_path / "no_tok"
    shutil.copytree(src, no_tok)
    (no_tok / "tokenizer.json").unlink()
    return [
        (tmp_path / "nowhere", ["nowhere", "not a directory", "memlab train"]),
        (empty, ["no config.json", "retrain"]),
        (bad_cfg, ["malformed config.json", "fix the file or retrain"]),
        (no_weights, ["no model.safetensors", "retrain"]),
        (bad_weights, ["model.safetensors", "corrupt"]),
        (unknown_kind, ["unknown model 'lstm'", "rmt", "transformer"]),
        (no_tok, ["no tokenizer.json", "memlab train"]),
    ]


def test_eval_malformed_checkpoints(ckpts, book, tmp_path):
    store = tmp_path / "r.sqlite"
    for ck, match in _broken_checkpoints(ckpts["rmt"], tmp_path):
        fails("eval", ck, "--lengths", "200", "--samples", "2", "--store", store, "--haystack", book, match=match)
        assert not store.exists(), ck


@pytest.mark.parametrize("argv, match", [
    (["--task", "babilong:qa9"], ["'qa9'", "known tasks", "babilong:qa1"]),
    (["--task", "needle:qa1"], ["'needle:qa1'", "known tasks", "babilong:qa1"]),
    (["--lengths", "12q"], ["'12q'", "1024, 4k, 1M"]),
    (["--lengths", "200,-4"], ["'-4'"]),
    (["--lengths", "5"], ["length 5 is too short", "facts and question", "at least"]),
    (["--samples", "0"], ["samples must be >= 1"]),
    (["--batch-size", "0"], ["batch size must be >= 1"]),
    (["--babi-dir", "no-such-dir"], ["bAbI directory no-such-dir does not exist"]),
])
def test_eval_bad_options(argv, match, ckpts, book, tmp_path):
    store = tmp_path / "r.sqlite"
    fails("eval", ckpts["rmt"], "--samples", "2", "--store", store, "--haystack", book, *argv, match=match)
    assert not store.exists()


def test_eval_too_short_names_the_minimum_length(ckpts, book, tmp_path):
    err = fails("eval", ckpts["rmt"], "--lengths", "400,10", "--samples", "4", "--store", tmp_path / "r.sqlite",
                "--haystack", book, match="length 10")
    minimum = int(err.rsplit("at least ", 1)[1].split()[0])
    assert minimum > 10
    code, out, err = run(*eval_args(ckpts["rmt"], tmp_path / "r.sqlite", book, lengths=str(minimum)))
    assert code == 0, err  # the named minimum is enough
    assert [c["length"] for c in cells_of(out)] == [minimum]


@pytest.mark.parametrize("argv, match", [
    (["--model", "lstm"], ["unknown model 'lstm'", "rmt", "transformer"]),
    (["--model-args", '{"num_memory": 4}'], ["num_memory", "num_mem"]),
    (["--model-args", "{num_mem: 4}"], ["--model-args is not valid JSON", "num_mem"]),
    (["--model-args", "[4]"], ["--model-args must be a JSON object"]),
    (["--task", "babilong:qa0"], ["'qa0'", "known tasks"]),
    (["--lengths", "0,12q"], ["'12q'", "1024, 4k, 1M"]),
    (["--steps", "0"], ["steps must be >= 1"]),
    (["--recipe", "missing.yaml"], ["missing.yaml", "not found"]),
])
def test_train_bad_options_write_no_checkpoint(argv, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ck"
    fails("train", "--steps", "1", "--out", out, "--no-progress", *argv, match=match)
    assert not out.exists() and not any(p.name.startswith(".ck") for p in tmp_path.iterdir())


@pytest.mark.parametrize("text, match", [
    ("steps: [unclosed\n", "not valid YAML"),
    ("- steps\n- 3\n", "expected a mapping"),
    ("stepz: 3\n", ["unknown field(s) ['stepz']", "known fields"]),
])
def test_train_malformed_recipe(text, match, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    fails("train", "--recipe", recipe, "--out", tmp_path / "ck", "--no-progress", match=[str(recipe), *([match] if isinstance(match, str) else match)])
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_train_bad_haystack(kind, bad_haystacks, tmp_path):
    path, problem = bad_haystacks[kind]
    out = tmp_path / "ck"
    fails("train", "--steps", "1", "--haystack", path, "--out", out, "--no-progress", match=[str(path), problem])
    assert not out.exists()
