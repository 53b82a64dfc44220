"""Distributed training with PyTorch's engine: torchrun, 2 CPU processes, gloo (DistributedDataParallel)."""
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from memlab.dist import shard
from memlab.train import TaskData, train, train_config_from_dict

RECIPE = {
    "model": "rmt", "model_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "num_mem": 4, "segment_len": 32},
    "task": "babilong:qa1", "lengths": [0, 96], "stage_steps": 2, "steps": 4, "batch_size": 6, "lr": 0.003, "warmup": 1,
    "ask_all": True, "memory_only": 0.5, "train_pool": 500, "vocab_size": 256, "eval_every": 4, "eval_samples": 12,
    "ckpt_every": 2, "seed": 3,
}


def torchrun(args, cwd, env_extra=None, command="train"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "memlab", command, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def history(path):
    return torch.load(path / "trainer_state.pt", weights_only=False)["history"]


def max_weight_diff(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(train_config_from_dict(dict(RECIPE)), out, progress=False, log=lambda m: None)
    return out


def test_pieces_take_builds_the_same_samples_as_the_whole_batch():
    cfg = train_config_from_dict(dict(RECIPE))
    data = TaskData(cfg)
    whole = data.pieces(data.train, 96, 6, seed=11, memory_only=0.5)
    parts = [data.pieces(data.train, 96, 6, seed=11, memory_only=0.5, take=shard(6, r, 2)) for r in range(2)]
    assert parts[0][0] + parts[1][0] == whole[0] and parts[0][1] + parts[1][1] == whole[1]
    assert [len(shard(7, r, 3)) for r in range(3)] == [2, 2, 3]


def test_two_processes_match_one_process_on_the_same_global_batch(single, tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    res = torchrun(["--recipe", "r.yaml", "--out", "ddp", "--no-progress"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "distributed: 2 processes (gloo)" in res.stderr
    assert res.stdout.count('"checkpoint"') == 1  # process 0 alone reports (and writes)
    one, two = history(single), history(tmp_path / "ddp")
    # the same samples, the same weighted gradient: losses equal up to float summation order
    assert one["loss"] == pytest.approx(two["loss"], abs=2e-4)
    assert one["train_acc"] == pytest.approx(two["train_acc"], abs=1e-6)
    assert one["eval"][-1]["heldout_acc"] == two["eval"][-1]["heldout_acc"]
    assert max_weight_diff(single, tmp_path / "ddp") < 1e-5
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".ddp") or p.name.endswith(".tmp")]


def test_a_process_that_dies_leaves_the_last_checkpoint_and_the_run_resumes(single, tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    res = torchrun(["--recipe", "r.yaml", "--out", "ddp", "--no-progress"], tmp_path, {"MEMLAB_FAIL_AT": "1:3"})
    assert res.returncode != 0
    assert history(tmp_path / "ddp")["step"][-1] == 1  # the checkpoint of step 2 (steps count from 0)
    res = torchrun(["--recipe", "r.yaml", "--out", "ddp", "--no-progress", "--resume"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert history(tmp_path / "ddp")["loss"] == pytest.approx(history(single)["loss"], abs=2e-4)
    assert max_weight_diff(single, tmp_path / "ddp") < 1e-5


def test_more_processes_than_samples_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "batch_size": 1}))
    res = torchrun(["--recipe", "r.yaml", "--out", "ddp", "--no-progress"], tmp_path)
    assert res.returncode != 0
    assert "2 processes share a batch of 1 samples" in res.stderr
    assert not (tmp_path / "ddp").exists()


def test_an_eval_sweep_shares_its_cells_between_processes(single, tmp_path):
    from memlab.store import ResultStore

    args = [str(single), "--task", "babilong:qa1", "--lengths", "64,96,128", "--samples", "6", "--json"]
    res = torchrun([*args, "--store", "two.sqlite"], tmp_path, command="eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('"accuracy"') == 3  # each cell computed by one process only
    subprocess.run([sys.executable, "-m", "memlab", "eval", *args, "--store", "one.sqlite"], cwd=tmp_path, check=True,
                   capture_output=True)
    with ResultStore(tmp_path / "two.sqlite") as two, ResultStore(tmp_path / "one.sqlite") as one:
        got = {(c.length, c.accuracy) for c in two.cells()}
        assert got == {(c.length, c.accuracy) for c in one.cells()} and len(got) == 3
    res = torchrun([*args, "--store", "two.sqlite"], tmp_path, command="eval")  # re-run: nothing left to do
    assert res.returncode == 0 and res.stdout.count('"accuracy"') == 0 and res.stderr.count("done already") == 3
