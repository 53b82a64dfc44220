import json

import pytest
import torch
from safetensors.torch import load_file

from memlab.checkpoint import CheckpointError, load_checkpoint
from memlab.stream import stream
from memlab.train import TrainConfig, load_recipe, train, train_config_from_dict, validate


def tiny_cfg(**kw):
    base = dict(model="rmt", model_args=dict(d_model=32, n_layers=1, n_heads=2, num_mem=2, segment_len=32),
                task="babilong:qa1", lengths=[0, 80], stage_steps=3, steps=6, batch_size=4, warmup=2,
                eval_every=3, eval_samples=8, ckpt_every=3, train_pool=200, vocab_size=300, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_cfg(steps=2, eval_every=2, ckpt_every=2)
    train(cfg, tmp_path / "ck", progress=False, log=lambda m: None)
    d = tmp_path / "ck"
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["kind"] == "rmt"
    model, tok, ts = load_checkpoint(d, with_trainer_state=True)
    assert ts["step"] == 2 and len(tok) <= 300
    x = torch.randint(0, len(tok), (2, 70))
    model2, _, _ = load_checkpoint(d)
    assert torch.equal(stream(model, x, [69]).logits, stream(model2, x, [69]).logits)
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg()
    train(cfg, tmp_path / "a", progress=False, log=lambda m: None)
    train(cfg, tmp_path / "b", progress=False, log=lambda m: None, until=4)  # interrupted after step 4
    h = train(cfg, tmp_path / "b", resume=True, progress=False, log=lambda m: None)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert len(h["loss"]) == 6


def test_stop_at_ends_the_run_on_the_full_schedule_and_resume_takes_it_from_the_recipe(tmp_path):
    """stop_at: the run ends after that step with a checkpoint (the schedule still spans `steps`); resuming with
    the same recipe does nothing more; resuming without stop_at finishes the run as if never stopped."""
    cfg = tiny_cfg()
    train(cfg, tmp_path / "a", progress=False, log=lambda m: None)
    h = train(tiny_cfg(stop_at=4), tmp_path / "b", progress=False, log=lambda m: None)
    assert len(h["loss"]) == 4 and json.loads((tmp_path / "b" / "train_info.json").read_text())["step"] == 4
    before = load_file(tmp_path / "b" / "model.safetensors")
    assert len(train(tiny_cfg(stop_at=4), tmp_path / "b", resume=True, progress=False, log=lambda m: None)["loss"]) == 4
    assert all(torch.equal(before[k], v) for k, v in load_file(tmp_path / "b" / "model.safetensors").items())
    train(cfg, tmp_path / "b", resume=True, progress=False, log=lambda m: None)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="stop_at must lie in"):
        train_config_from_dict({"steps": 3, "stop_at": 4})


def test_bad_configs_and_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        train_config_from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="bptt_depth"):
        train_config_from_dict({"bptt_depth": 0})
    with pytest.raises(ValueError, match="write_cost must be >= 0"):
        train_config_from_dict({"write_cost": -0.1})
    bad = tmp_path / "r.yaml"
    bad.write_text("steps: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    ck = tmp_path / "ck"
    ck.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(ck)
    (ck / "config.json").write_text("{not json")
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="malformed config.json"):
        load_checkpoint(ck)
    (ck / "config.json").write_text(json.dumps({"kind": "rmt", "d_model": 32, "n_heads": 2, "n_layers": 1}))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ck)


def test_ask_all_adds_every_persons_latest_place_to_training_samples_only():
    from memlab.tasks.babi import Question, state_questions
    from memlab.train import TaskData

    q = Question(("Mary moved to the bathroom.", "John went to the hallway.", "Mary travelled to the office."),
                 "Where is John?", "hallway", (1,), 1)
    assert state_questions(q) == [("Where is Mary?", "office"), ("Where is John?", "hallway")]
    data = TaskData(tiny_cfg(ask_all=True))
    tok = data.tokenizer
    x, y = data.batch(data.train, 120, 8, seed=3)
    extra = 0
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        targets = [(i, t) for i, t in enumerate(row_y) if t != -100]
        extra += len(targets) - 1
        words = [tok.decode([t]) for t in row_x]
        for i, t in targets:  # each target answers the question that ends at i with that person's latest place
            assert words[i] == "?" and words[i - 1] in {"mary", "john", "daniel", "sandra"}
            person, facts = words[i - 1], " ".join(words[: i - 3])
            moves = [s.split()[-1] for s in facts.split(".") if s.split() and s.split()[0] == person]
            assert moves and moves[-1] == tok.decode([t])
    assert extra > 0
    _, y_held = data.batch(data.heldout, 120, 8, seed=3)
    assert ((y_held != -100).sum(1) == 1).all()


def test_qa2_state_questions_agree_with_every_real_and_generated_answer(babi_dir):
    """ask_all on qa2: people's and objects' places read back from the facts; the derived place of the asked
    object equals the file's answer for every question of the real qa2 file and of generated stories."""
    from memlab.tasks.babi import Question, generate_babi, parse_babi, state_questions

    q = Question(("Mary went to the kitchen.", "Mary got the milk there.", "John moved to the hallway.",
                  "Mary travelled to the office.", "Mary dropped the milk.", "John picked up the apple."),
                 "Where is the milk?", "office", (4, 3), 2)
    assert state_questions(q) == [("Where is Mary?", "office"), ("Where is John?", "hallway"),
                                  ("Where is the apple?", "hallway"), ("Where is the milk?", "office")]
    real = parse_babi((babi_dir / "qa2_two-supporting-facts_train.txt").read_text(), 2)
    for question in real + generate_babi(2, 500, seed=1):
        assert dict(state_questions(question))[question.question] == question.answer
    with pytest.raises(ValueError, match="neither a move"):
        state_questions(Question(("Mary sang.",), "Where is Mary?", "x", (0,), 2))


def test_memory_only_samples_keep_every_fact_out_of_the_question_segment():
    from memlab.train import TaskData

    data = TaskData(tiny_cfg(memory_only=1.0))  # segment_len 32
    tok = data.tokenizer
    people = {tok.token_id(p) for p in ("mary", "john", "daniel", "sandra")}
    x, y = data.batch(data.train, 120, 16, seed=4, memory_only=1.0)
    for row in x.tolist():
        last = row[-32:]
        assert sum(t in people for t in last) == 1  # only the asked name, in the question
        assert any(t in people for t in row[:-32])  # the facts are all earlier
    x, _ = data.batch(data.train, 120, 16, seed=4, memory_only=0.0)
    assert any(sum(t in people for t in row[-32:]) > 1 for row in x.tolist())  # random placement reaches it


def test_init_from_starts_from_a_checkpoint_and_checks_the_model(tmp_path):
    train(tiny_cfg(steps=2, eval_every=2, ckpt_every=2), tmp_path / "a", progress=False, log=lambda m: None)
    first, _, _ = load_checkpoint(tmp_path / "a")
    cfg = tiny_cfg(steps=1, eval_every=1, ckpt_every=1, lr=1e-9, warmup=1, init_from=str(tmp_path / "a"))
    train(cfg, tmp_path / "b", progress=False, log=lambda m: None)
    second, _, _ = load_checkpoint(tmp_path / "b")
    for (n, p), q in zip(first.named_parameters(), second.parameters()):  # lr ~0: one step barely moves it
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)
    bad = tiny_cfg(init_from=str(tmp_path / "a"), model_args=dict(d_model=64, n_layers=1, n_heads=2, num_mem=2, segment_len=32))
    with pytest.raises(ValueError, match="does not match this recipe"):
        train(bad, tmp_path / "c", progress=False, log=lambda m: None)
    assert not (tmp_path / "c").exists()
    # the segment length may change (no weight depends on it): same weights, new segment_len in config.json
    longer = tiny_cfg(steps=1, eval_every=1, ckpt_every=1, lr=1e-9, warmup=1, init_from=str(tmp_path / "a"),
                      model_args=dict(d_model=32, n_layers=1, n_heads=2, num_mem=2, segment_len=64))
    train(longer, tmp_path / "d", progress=False, log=lambda m: None)
    third, _, _ = load_checkpoint(tmp_path / "d")
    assert (first.config.segment_len, third.config.segment_len) == (32, 64)
    torch.testing.assert_close(first.embed.weight, third.embed.weight, atol=1e-6, rtol=0)


def test_init_from_may_switch_on_write_skip(tmp_path):
    """A gated RMT checkpoint warm-starts a write_skip recipe: every weight carries over, the decision is new."""
    gated = dict(d_model=32, n_layers=1, n_heads=2, num_mem=2, segment_len=32, mem_gate=True)
    train(tiny_cfg(steps=2, eval_every=2, ckpt_every=2, model_args=gated), tmp_path / "a", progress=False, log=lambda m: None)
    logs = []
    train(tiny_cfg(steps=1, eval_every=1, ckpt_every=1, lr=1e-9, warmup=1, init_from=str(tmp_path / "a"),
                   model_args={**gated, "write_skip": True}), tmp_path / "b", progress=False, log=logs.append)
    first, second = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    assert second.config.write_skip and second.skip is not None
    assert any("2 new (skip.weight, skip.bias)" in m for m in logs)
    torch.testing.assert_close(first.gate.weight, second.gate.weight, atol=1e-6, rtol=0)


def test_init_from_on_new_tasks_grows_the_vocabulary(tmp_path):
    from memlab.tasks.babi import task_words

    train(tiny_cfg(steps=1, eval_every=1, ckpt_every=1), tmp_path / "a", progress=False, log=lambda m: None)
    first, tok1, _ = load_checkpoint(tmp_path / "a")
    logs = []
    train(tiny_cfg(steps=1, eval_every=1, ckpt_every=1, lr=1e-9, warmup=1, task="babilong:qa1,qa5", init_from=str(tmp_path / "a")),
          tmp_path / "b", progress=False, log=logs.append)
    second, tok2, _ = load_checkpoint(tmp_path / "b")
    new = [w for w in task_words(5) if tok1.token_id(w) == tok1.unk_id]
    assert new and all(tok2.token_id(w) != tok2.unk_id for w in task_words(5))
    assert tok2.vocab[: len(tok1)] == tok1.vocab and len(tok2) == len(tok1) + len(set(new))
    assert second.embed.weight.shape[0] == len(tok2) and second.lm_head.weight is second.embed.weight
    torch.testing.assert_close(second.embed.weight[: len(tok1)], first.embed.weight, atol=1e-6, rtol=0)
    assert any("new task words" in m for m in logs)
    assert any("held-out" in m and "qa1 " in m and "qa5 " in m for m in logs)  # per-task accuracy when mixed


def test_shipped_recipes_load_and_demo_chains_are_consistent():
    from memlab.demo import DEMO_MODELS, REPO_ROOT

    for name, recipes in DEMO_MODELS.items():
        cfgs = [load_recipe(REPO_ROOT / "configs" / f"{r}.yaml") for r in recipes]
        assert cfgs[0].init_from is None, f"{name}: the first stage must train from scratch"
        for prev, cfg in zip(cfgs, cfgs[1:]):  # later stages continue the same model, or warm-start another kind
            # segment_len may change, and write_skip may be switched on (init_from builds the new module)
            same = lambda c: (c.model, {k: v for k, v in c.model_args.items() if k not in ("segment_len", "write_skip")})  # noqa: E731
            assert cfg.init_from and (same(cfg) == same(prev) or cfg.model != prev.model)
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):  # every recipe, shipped or experimental, is valid
        cfg = load_recipe(path)
        validate(cfg)
        if cfg.init_from and cfg.init_from.startswith("checkpoints/"):  # starts from a shipped checkpoint
            assert (REPO_ROOT / cfg.init_from / "model.safetensors").is_file(), f"{path.name}: {cfg.init_from} missing"


def test_demo_train_runs_the_whole_recipe_chain_then_evaluates_and_reports(tmp_path, monkeypatch):
    """`memlab demo --train` end to end, shrunk: every shipped recipe of each chain trains (2 steps, short
    lengths), each later stage starts from the one before it, and the evaluation and report run on the
    freshly trained checkpoints, not the shipped ones."""
    import memlab.demo as demo
    import memlab.train as train_mod

    real_load = train_mod.load_recipe

    def tiny(path):
        cfg = real_load(path)
        cfg.steps, cfg.stage_steps, cfg.warmup, cfg.batch_size = 2, 1, 1, 2
        cfg.stop_at = 1 if cfg.stop_at else None  # a recipe that stops early (stage 1) still does, within the 2
        cfg.lengths, cfg.bptt_depth = [0, 256], None
        cfg.eval_every, cfg.eval_samples, cfg.ckpt_every, cfg.train_pool = 2, 4, 1, 200
        cfg.compile = False  # compiling costs more than 2 steps save (compiled training: test_compile_trains_like_eager...)
        return cfg

    monkeypatch.setattr(train_mod, "load_recipe", tiny)
    monkeypatch.setattr(demo, "QUICK", dict(samples={1000: 2}, time_budget=60.0))
    logs = []
    paths = demo.run_demo(tmp_path / "out", retrain=True, quick=True, log=logs.append)
    trained = [m.split()[2] for m in logs if m.startswith("demo: training")]
    for name, recipes in demo.DEMO_MODELS.items():
        assert [r for r in dict.fromkeys(trained) if r in recipes] == recipes  # every stage, in chain order
        previous = None
        for recipe in recipes:
            ck = tmp_path / "out" / "checkpoints" / recipe
            info = json.loads((ck / "train_info.json").read_text())
            stop = info["train_config"]["stop_at"]  # a stage with stop_at ends there (stage 1 of the RMT chain)
            assert (ck / "model.safetensors").is_file() and info["step"] == (stop or 2)
            assert info["train_config"]["init_from"] == (str(previous) if previous else None)
            previous = ck
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["command"] == "memlab demo --quick --train"
    assert {c["model"] for c in results["cells"]} == set(demo.DEMO_MODELS)
    assert all(c["samples"] == 2 for c in results["cells"])
    assert paths["report_md"].is_file()


def test_a_non_finite_loss_skips_the_update_and_keeps_the_weights_finite(tmp_path, monkeypatch):
    import memlab.train as T

    calls, real = [], T.unroll

    def flaky(model, *a, **kw):
        loss, acc, n = real(model, *a, **kw)
        calls.append(1)
        return (loss * float("nan"), acc, n) if len(calls) == 2 and model.training else (loss, acc, n)

    monkeypatch.setattr(T, "unroll", flaky)
    h = train(tiny_cfg(steps=3, eval_every=3, ckpt_every=3), tmp_path / "ck", progress=False, log=lambda m: None)
    assert h["skipped"] == [1]
    assert all(torch.isfinite(w).all() for w in load_file(tmp_path / "ck" / "model.safetensors").values())


def test_a_run_whose_updates_stay_non_finite_stops_with_its_last_finite_weights(tmp_path, monkeypatch):
    import memlab.train as T

    calls, real = [], T.unroll

    def diverged(model, *a, **kw):  # every training step after the first has a non-finite loss
        loss, acc, n = real(model, *a, **kw)
        if model.training:
            calls.append(1)
        return (loss * float("nan"), acc, n) if len(calls) >= 2 and model.training else (loss, acc, n)

    monkeypatch.setattr(T, "unroll", diverged)
    with pytest.raises(T.TrainingDiverged, match=r"last 3 updates \(steps 2-4\) had a non-finite gradient"):
        train(tiny_cfg(steps=20, eval_every=100, ckpt_every=100, max_nonfinite=3), tmp_path / "ck", progress=False,
              log=lambda m: None)
    assert len(calls) == 4  # stopped at once, not 16 more skipped steps
    ck = tmp_path / "ck"  # written at the stop although ckpt_every is 100
    assert json.loads((ck / "train_info.json").read_text())["step"] == 4
    assert torch.load(ck / "trainer_state.pt", weights_only=False)["history"]["skipped"] == [1, 2, 3]
    assert all(torch.isfinite(w).all() for w in load_file(ck / "model.safetensors").values())
    with pytest.raises(ValueError, match="max_nonfinite must be >= 0"):
        train_config_from_dict({"max_nonfinite": -1})


def test_device_is_checked_and_stays_this_machines_on_resume(tmp_path):
    with pytest.raises(ValueError, match="device 'tpu' is not available here"):
        train_config_from_dict({"device": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            train_config_from_dict({"device": "cuda"})
    cfg = tiny_cfg(steps=4, eval_every=4, ckpt_every=2)
    train(cfg, tmp_path / "ck", progress=False, log=lambda m: None, until=2)
    saved = json.loads((tmp_path / "ck" / "train_info.json").read_text())["train_config"]
    assert saved["device"] == "cpu"
    logs = []
    train(tiny_cfg(steps=4, eval_every=4, ckpt_every=2, device="cpu", threads=1), tmp_path / "ck", resume=True,
          progress=False, log=logs.append)
    assert not any("differs" in m for m in logs)  # threads and device are the machine's, not the recipe's


def test_compile_trains_like_eager_resumes_and_refuses_a_growing_state(tmp_path):
    """compile: true runs the training unroll and the held-out checks through torch.compile: same weights as the
    eager run up to float rounding; an interrupted compiled run resumes to the uninterrupted one; compile may
    differ on --resume (the machine's choice, like threads); attention's growing KV cache is refused."""
    train(tiny_cfg(), tmp_path / "eager", progress=False, log=lambda m: None)
    h = train(tiny_cfg(compile=True), tmp_path / "a", progress=False, log=lambda m: None)
    assert len(h["eval"]) == 2
    we, wa = load_file(tmp_path / "eager" / "model.safetensors"), load_file(tmp_path / "a" / "model.safetensors")
    for k in we:
        torch.testing.assert_close(wa[k], we[k], atol=1e-4, rtol=1e-3, msg=k)
    train(tiny_cfg(compile=True), tmp_path / "b", progress=False, log=lambda m: None, until=4)
    logs = []
    train(tiny_cfg(compile=True), tmp_path / "b", resume=True, progress=False, log=logs.append)
    assert not any("differs" in m for m in logs)
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="grows with the context.*compile: false"):
        train(tiny_cfg(model="transformer", model_args=dict(d_model=32, n_layers=1, n_heads=2), compile=True),
              tmp_path / "tf", progress=False, log=lambda m: None)


def test_text_tasks_train_and_evaluate_in_memlab_tokens(tmp_path):
    """RULER / FLenQA variants for models trained here: answers teacher-forced after the text, every answer word a
    target; `memlab eval` scores exact match on held-out seeds."""
    from memlab.cli import main
    from memlab.store import ResultStore
    from memlab.tasks.text import tokenize_words
    from memlab.train import TaskData

    cfg = train_config_from_dict({"model": "rmt", "model_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "num_mem": 4,
                                  "segment_len": 64}, "task": "ruler:vt,niah_single_1", "lengths": [128, 256], "steps": 2,
                                  "stage_steps": 1, "batch_size": 4, "vocab_size": 400, "eval_every": 2, "eval_samples": 4,
                                  "ckpt_every": 2, "warmup": 1})
    data = TaskData(cfg)
    vt = data.train[0]
    s = vt.text_sample(256, 5)
    ids, targets = vt.tokens(256, 5)
    assert len(ids) == 256 + len(s.answers) - 1  # the text, then all answer words but the last fed in
    answer_ids = [t for t in targets if t != -100]
    assert [data.tokenizer.vocab[t] for t in answer_ids] == [w for a in s.answers for w in tokenize_words(a)]
    assert targets.index(answer_ids[0]) == 255 and ids[256:] == answer_ids[:-1]  # predicted from the position before
    held = data.heldout[0].text_sample(256, 5)
    assert held.text != s.text  # held-out seeds are another range
    with pytest.raises(ValueError, match="no facts-only form"):
        TaskData(train_config_from_dict({**cfg.__dict__, "lengths": [0, 128]}))
    with pytest.raises(ValueError, match="unknown task variant"):
        TaskData(train_config_from_dict({**cfg.__dict__, "task": "ruler:nope"}))
    hist = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert set(hist["eval"][-1]["heldout_acc_per_task"]) == {"ruler-vt", "ruler-niah_single_1"}
    code = main(["eval", str(tmp_path / "run"), "--task", "ruler:vt", "--lengths", "256", "--samples", "3",
                 "--store", str(tmp_path / "s.sqlite")])
    assert code in (0, None)
    with ResultStore(tmp_path / "s.sqlite") as store:
        cell = store.get("run", "ruler:vt", 256)
    assert cell.samples == 3 and 0.0 <= cell.accuracy <= 1.0 and cell.state_bytes == 4 * 32 * 4


def test_rmt_learns_a_needle_through_its_memory(tmp_path):
    """Text-task training learns, and the answer comes through the memory: a small RMT trained on RULER's
    single needle (64 tokens, one segment, then 128, two segments) finds the value on held-out samples whose
    needle lies in the first segment; the question's segment read with a fresh state (no memory) does not."""
    from memlab.stream import unroll
    from memlab.tasks.variants import TokenTextTask
    from memlab.train import pad_batch

    torch.set_num_threads(1)
    cfg = train_config_from_dict({"model": "rmt", "model_args": {"d_model": 64, "n_layers": 2, "n_heads": 2, "num_mem": 4,
                                  "segment_len": 64}, "task": "ruler:niah_single_1", "lengths": [64, 128], "steps": 400,
                                  "stage_steps": 200, "batch_size": 16, "lr": 3e-3, "warmup": 10, "eval_every": 400,
                                  "eval_samples": 64, "ckpt_every": 400, "vocab_size": 256, "seed": 0})
    train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    model, tok, _ = load_checkpoint(tmp_path / "run")
    task = TokenTextTask("ruler-niah_single_1", tok, seed_base=2**31)
    task.kw["depth"] = 0.0  # the needle opens the context: in the first segment, the question in the second
    x, y = pad_batch(*zip(*(task.tokens(128, s) for s in range(64))))
    assert all(task.text_sample(128, s).needle_token_spans[0][1] <= 64 for s in range(64))
    with torch.no_grad():
        _, through_memory, n = unroll(model, x, y)
        _, no_memory, _ = unroll(model, x[:, 64:], y[:, 64:])  # the question's segment alone, fresh state
    assert n == 64 and float(through_memory) >= 0.9 and float(no_memory) <= 0.25
