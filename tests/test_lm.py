"""The Hugging Face LM adapter on a tiny random GPT-2 with a word-level tokenizer (no download, no weights)."""
import pytest
import torch

pytest.importorskip("transformers")
from memlab.lm import LMError, PromptedLM, load_lm  # noqa: E402
from memlab.tasks.flenqa import FlenqaTask  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def tiny_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    task = FlenqaTask("pir", "similar")
    words = sorted({w for s in range(6) for w in task.sample(200, s).text.replace("?", " ?").replace(".", " .").split()})
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[UNK]", "[EOS]", "True", "False", "Answer:", "Anna", ",", "or", "only", "with"] + words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=512))
    return PromptedLM(model, tok, name="tiny")


def test_option_logprobs_equal_the_full_sequence_likelihood(lm):
    ids = lm.prompt_ids("Anna is in the old library .", "Is Anna in a room with a piano ?")
    assert not lm.chat and lm.tokenizer.decode(ids).endswith("Answer:")
    opts = ["True", "False", "True False True"]  # one- and multi-token options (the cached path)
    got = lm.option_logprobs(ids, opts)
    for opt, lp in zip(opts, got):
        o = lm.tokenizer(" " + opt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids + o])).logits[0].log_softmax(-1)
        want = sum(logits[len(ids) - 1 + i, t].item() for i, t in enumerate(o))
        assert lp == pytest.approx(want, abs=1e-4)


def test_greedy_generation_and_flenqa_answers(lm):
    ids = lm.prompt_ids("Anna is in the old library .", "Is Anna in a room with a piano ?")
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(3):
            x = torch.cat((x, lm.model(input_ids=x).logits[:, -1:].argmax(-1)), 1)
    assert lm.generate(ids, 3) == lm.tokenizer.decode(x[0, len(ids):], skip_special_tokens=True)
    s = FlenqaTask("pir", "similar").sample(150, 1)
    pred, info = lm.answer_flenqa(s)
    assert pred in ("true", "false") and 0.0 <= info["p_true"] <= 1.0 and info["prompt_tokens"] > 100
    assert lm.answer_flenqa(s, "generate")[0] in ("true", "false", "none")
    with pytest.raises(LMError, match="more than the model's 512"):
        lm.prompt_ids(FlenqaTask("pir", "similar").sample(600, 1).text, "Is it ?")


def test_unusable_model_paths_get_clear_errors(tmp_path):
    with pytest.raises(LMError, match="neither"):
        load_lm(str(tmp_path / "nope"))
    with pytest.raises(LMError, match="no usable causal LM"):
        load_lm(str(tmp_path))


@pytest.mark.slow
def test_smollm2_answers_a_flenqa_sample():
    pytest.importorskip("gguf")
    lm = PromptedLM.load("smollm2")
    assert lm.chat
    pred, info = lm.answer_flenqa(FlenqaTask("monorel", "similar").sample(250, 0))
    assert pred in ("true", "false") and 200 < info["prompt_tokens"] < 600


def test_memlab_eval_reads_text_tasks_with_a_local_hf_model(tmp_path, capsys):
    import json as _json

    from memlab.cli import main
    from memlab.store import ResultStore

    d = tmp_path / "tiny"
    lm = tiny_lm()
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    store = tmp_path / "r.sqlite"
    args = ["eval", f"hf:{d}", "--task", "flenqa:pir-similar,monorel-similar", "--lengths", "150,200", "--samples", "4",
            "--store", str(store), "--json"]
    assert main(args) == 0
    cells = [_json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(c["task"], c["length"]) for c in cells} == {(f"flenqa:{t}-similar", n) for t in ("pir", "monorel") for n in (150, 200)}
    assert all(c["samples"] == 4 and 0 <= c["accuracy"] <= 1 for c in cells)
    assert main(args) == 0 and capsys.readouterr().out == ""  # done cells are skipped
    assert main([*args, "--seed", "1"]) == 2  # ... but not passed off as another seed's samples
    assert "measured with --seed 0, and this run asks --seed 1" in capsys.readouterr().err
    assert main(["eval", f"hf:{d}", "--task", "ruler:niah_single_1", "--lengths", "120", "--samples", "2", "--store", str(store)]) == 0
    with ResultStore(store) as st:
        assert st.get("hf-tiny", "ruler:niah_single_1", 120).samples == 2
    assert main(["eval", f"hf:{d}", "--task", "babilong:qa1", "--store", str(store)]) == 2
    assert "read text tasks only" in capsys.readouterr().err
    # a memlab checkpoint reads text tasks in its own tokens (exact match on teacher-forced answers) ...
    assert main(["eval", "checkpoints/rmt-qa1", "--task", "flenqa:pir-similar", "--lengths", "200", "--samples", "2",
                 "--store", str(store)]) == 0
    with ResultStore(store) as st:
        assert st.get("rmt-qa1", "flenqa:pir-similar", 200).samples == 2
        assert st.get("rmt-qa1", "flenqa:pir-similar", 200).extra["seed"] == st.get("hf-tiny", "ruler:niah_single_1", 120).extra["seed"] == 0
    assert main(["eval", "checkpoints/rmt-qa1", "--task", "flenqa:pir-similar", "--lengths", "200", "--samples", "2",
                 "--store", str(store), "--seed", "3"]) == 2
    assert "measured with --seed 0, and this run asks --seed 3" in capsys.readouterr().err
    # ... and one whose vocabulary lacks the task's answers is told so (RULER's values are not qa1 words)
    assert main(["eval", "checkpoints/rmt-qa1", "--task", "ruler:niah_single_1", "--lengths", "200", "--samples", "2",
                 "--store", str(store)]) == 2
    assert "has words the tokenizer lacks" in capsys.readouterr().err
