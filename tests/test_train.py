import json

import pytest
import torch
from safetensors.torch import load_file

from memlab.checkpoint import CheckpointError, load_checkpoint
from memlab.stream import stream
from memlab.train import TrainConfig, load_recipe, train, train_config_from_dict


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


def test_bad_configs_and_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        train_config_from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="bptt_depth"):
        train_config_from_dict({"bptt_depth": 0})
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
