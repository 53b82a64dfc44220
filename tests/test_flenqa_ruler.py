"""FLenQA and RULER-style generators: deterministic, exact lengths, labels right (checked by small independent
solvers over the whole text), key facts where asked, clear errors for impossible knobs."""
import re
from pathlib import Path

import pytest

from memlab.tasks.flenqa import PADDINGS, PLACEMENTS, TASKS, FlenqaTask, count_tokens, score_answer
from memlab.tasks.ruler import TASKS as RULER_TASKS
from memlab.tasks.ruler import RulerTask, score
from memlab.tasks.text import tokenize_words
from memlab.tasks.variants import load_variant, variants

BOOKS = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "books").glob("*.txt"))


@pytest.fixture(scope="module")
def book_sentences():
    if not BOOKS:
        pytest.skip("../shared/data/books not found: the book-padding cases need the shared data")
    from memlab.tasks.text import BookHaystack

    return BookHaystack(BOOKS).sentences()


PROCEDURAL = ["The weather was mild and the roads were dry.", "A cart rolled slowly past the old mill.",
              "Nobody in the town remembered the last flood.", "The bells rang twice before noon."]


def _sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if s.strip()]


def solve(task, text, question):
    """The answer from the facts in the whole text (padding included), by the task's logic."""
    sents = _sentences(text)
    if task == "monorel":
        a, rel, c = re.fullmatch(r"Is (\w+) (\w+) than (\w+)\?", question).groups()
        edges = {}
        for s in sents:
            m = re.fullmatch(rf"(\w+) is {rel} than (\w+)\.", s)
            if m:
                edges.setdefault(m.group(1), set()).add(m.group(2))
        seen, todo = set(), [a]
        while todo:
            for n in edges.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return c in seen
    if task == "pir":
        x, prop = re.fullmatch(r"Is (\w+) in a room with (.+)\?", question).groups()
        rooms = [m.group(1) for s in sents if (m := re.fullmatch(rf"{x} is in the (.+)\.", s))]
        props = {m.group(1): m.group(2) for s in sents if (m := re.fullmatch(r"The (.+) has (.+)\.", s))}
        return any(props.get(r) == prop for r in rooms)
    m = re.fullmatch(r"If someone is (\w+) and (\w+), then they are (\w+)\. Is (\w+) (\w+)\?", question)
    a1, a2, _, x, _ = m.groups()
    has = {m.group(1) for s in sents if (m := re.fullmatch(rf"{x} is (\w+)\.", s))}
    return a1 in has and a2 in has


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("padding", ["duplicate", "similar"])
def test_flenqa_labels_are_right_balanced_and_need_both_facts(task, padding):
    t = FlenqaTask(task, padding)
    labels = []
    for seed in range(20):
        s = t.sample(400, seed)
        labels.append(s.answer)
        assert solve(task, s.text, s.question) == (s.answer == "true"), s.text
        # without either key paragraph, the answer no longer follows (for True samples): both facts are needed
        if s.answer == "true":
            for a, b in s.key_char_spans:
                assert not solve(task, s.text[:a] + s.text[b:], s.question) or padding == "duplicate"
    assert labels.count("true") == labels.count("false") == 10


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_flenqa_lengths_exact_positions_as_asked_and_deterministic(padding, placement, book_sentences):
    t = FlenqaTask("pir", padding, book_sentences)
    for length in (250, 1000, 3000):
        s = t.sample(length, 7, placement)
        assert count_tokens(s.text) == s.length == length
        assert s == t.sample(length, 7, placement)  # a pure function of its arguments
        toks = tokenize_words(s.text)
        for (a, b), (ca, cb), fact in zip(s.key_token_spans, s.key_char_spans, s.meta["facts"]):
            assert toks[a:b] == tokenize_words(s.text[ca:cb]) and fact in s.text[ca:cb]
        q = count_tokens(s.question)
        (a0, b0), (a1, b1) = s.key_token_spans
        if placement == "first":
            assert a0 == 0 and a1 == b0
        elif placement == "last":
            assert b1 == length - q and a1 == b0
        elif placement == "middle":
            assert a1 == b0 and abs(a0 - (length - q - (b1 - a0)) / 2) <= 60  # within a sentence of the middle
        assert s.text.endswith(s.question)


def test_flenqa_bad_input():
    with pytest.raises(ValueError, match="at least"):
        FlenqaTask("monorel", "duplicate").sample(20, 0)
    with pytest.raises(ValueError, match="allowed: monorel, pir, ruletaker"):
        FlenqaTask("monorels")
    with pytest.raises(ValueError, match="needs haystack sentences"):
        FlenqaTask("pir", "different")
    with pytest.raises(ValueError, match="placement"):
        FlenqaTask("pir", "similar").sample(300, 0, "center")


def test_flenqa_scoring_takes_the_last_true_or_false():
    assert score_answer("It is not false that... so the answer is True.", "true")
    assert not score_answer("True at first sight, but the answer is false", "true")
    assert not score_answer("I cannot tell.", "false")


@pytest.mark.parametrize("task", RULER_TASKS)
def test_ruler_lengths_exact_needles_recorded_answers_in_the_needles(task, book_sentences):
    t = RulerTask(task, book_sentences)
    for length in (1500, 8000):
        s = t.sample(length, 3)
        assert count_tokens(s.text) == s.length == length and s == t.sample(length, 3)
        toks = tokenize_words(s.text)
        for (a, b), needle in zip(s.needle_token_spans, s.meta.get("needles", [])):
            assert toks[a:b] == tokenize_words(needle)
        assert len(s.needle_token_spans) == len(s.meta["needles"]) and s.text.endswith(s.question)
        if task != "cwe":
            assert all(any(ans in n for n in s.meta["needles"]) for ans in s.answers)
        else:  # every occurrence of every common word is recorded, and nothing else
            words = re.findall(r"\d+\. (\w+)", s.text)
            assert sorted(s.meta["needles"]) == sorted(w for w in words if w in s.answers)
            assert set(s.meta["needles"]) == set(s.answers)
        assert score(" ".join(s.answers), s.answers) == 1.0 and score("nothing", s.answers) == 0.0


def test_ruler_depth_places_the_needle():
    t = RulerTask("niah_single", noise="repeat")
    for depth in (0.0, 0.25, 0.5, 1.0):
        s = t.sample(2000, 1, depth=depth)
        budget = 2000 - sum(b - a for a, b in s.needle_token_spans) - count_tokens(s.question)
        assert abs(s.needle_token_spans[0][0] - depth * budget) <= 20  # within one noise unit


def test_ruler_variable_tracking_chain_resolves_to_the_answer():
    t = RulerTask("vt", n_chains=2, n_hops=3)
    for seed in range(5):
        s = t.sample(1200, seed)
        value = re.search(r"assigned the value (\w+)", s.question).group(1)
        assign = dict(re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", s.text))
        resolve = lambda v: v if v not in assign else resolve(assign[v])  # noqa: E731
        assert sorted(v for v in assign if resolve(v) == value) == sorted(s.answers)
        assert len(s.answers) == 4


def test_ruler_variable_tracking_value_question_composes_every_hop_of_a_shuffled_chain():
    """ask="value": one answer word, the value the asked last variable resolves to through all n_hops; with
    order="shuffled" some assignment comes before the one it reads from (no left-to-right resolution); the
    default RULER form's samples are unchanged by the new knobs."""
    t = RulerTask("vt", n_chains=2, n_hops=4, ask="value", order="shuffled")
    out_of_order = 0
    for seed in range(20):
        s = t.sample(128, seed, depth=0.0)
        assert s.needle_token_spans[0][0] == 0 and len(s.answers) == 1
        asked = re.search(r"value of VAR (\w+)", s.question).group(1)
        lines = re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", s.text)
        assign = dict(lines)
        hops, v = 0, asked
        while v in assign:
            v, hops = assign[v], hops + 1
        assert hops == 5 and [v] == s.answers  # 4 hops, then the value itself
        seen = set()
        for name, src in lines:
            out_of_order += src in assign and src not in seen
            seen.add(name)
    assert out_of_order > 20
    chain = RulerTask("vt", n_chains=2, n_hops=4, ask="value").sample(128, 0, depth=0.0)
    order = [name for name, _ in re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", chain.text)]
    assert all(order.index(src) < order.index(name) for name, src in re.findall(r"VAR (\w+) = VAR (\w+)\.", chain.text))
    assert RulerTask("vt", n_chains=2, n_hops=3).sample(1200, 4).text == RulerTask(
        "vt", n_chains=2, n_hops=3, ask="variables", order="chain").sample(1200, 4).text
    direct = RulerTask("vt", n_chains=2, n_hops=0, ask="value").sample(64, 1)  # 0 hops: the value asked directly
    asked = re.search(r"value of VAR (\w+)", direct.question).group(1)
    assert [dict(re.findall(r"VAR (\w+) = (\w+)\.", direct.text))[asked]] == direct.answers
    with pytest.raises(ValueError, match=r"n_hops must be an integer in \[1,"):
        RulerTask("vt", n_hops=0)  # the RULER form needs a hop
    with pytest.raises(ValueError, match="ask must be"):
        RulerTask("vt", ask="values")
    with pytest.raises(ValueError, match="order must be"):
        RulerTask("vt", order="random")


def test_ruler_common_words_are_the_most_common(book_sentences):
    s = RulerTask("cwe", book_sentences).sample(6000, 2)
    items = re.findall(r"\d+\. (\w+)", s.text)
    counts = {w: items.count(w) for w in set(items)}
    top = sorted(counts, key=counts.get, reverse=True)[:10]
    assert sorted(top) == sorted(s.answers) and min(counts[w] for w in s.answers) > 3 >= max(
        c for w, c in counts.items() if w not in s.answers)


def test_ruler_multikey_key_pool_limits_the_keys_and_leaves_the_default_samples_alone(book_sentences):
    from memlab.tasks.ruler import KEYS

    full, default = RulerTask("niah_multikey", book_sentences, key_pool=len(KEYS)), RulerTask("niah_multikey", book_sentences)
    small = RulerTask("niah_multikey", book_sentences, key_pool=4)
    seen = set()
    for seed in range(20):
        assert full.sample(300, seed).text == default.sample(300, seed).text
        s = small.sample(300, seed)
        keys = re.findall(r"magic words for (\w+) is:", s.text)
        assert len(keys) == 4 and set(keys) == set(KEYS[:4])  # four distinct keys, all from the pool
        assert re.search(r"word for (\w+) mentioned", s.question).group(1) in keys
        seen.add(s.answers[0])
    assert len(seen) > 4  # the values still come from all 32 value words
    with pytest.raises(ValueError, match="key_pool >= n_keys"):
        RulerTask("niah_multikey", book_sentences, n_keys=5, key_pool=4)


def test_ruler_multiquery_answers_follow_the_question_and_random_order_needs_the_keys(book_sentences):
    for order in ("text", "random"):
        t = RulerTask("niah_multiquery", book_sentences, query_order=order)
        reordered = 0
        for seed in range(20):
            s = t.sample(400, seed)
            pairs = re.findall(r"magic words for (\w+) is: (\w+)\.", s.text)
            asked = re.search(r"words for (.+) mentioned", s.question).group(1).split(", ")
            assert sorted(asked) == sorted(k for k, _ in pairs)
            assert s.answers == [dict(pairs)[k] for k in asked]  # the answer i is the value of the i-th asked key
            reordered += asked != [k for k, _ in pairs]
        assert (reordered == 0) if order == "text" else (reordered >= 15), (order, reordered)
    with pytest.raises(ValueError, match="query_order"):
        RulerTask("niah_multiquery", book_sentences, query_order="sorted")


def test_ruler_bad_input():
    with pytest.raises(ValueError, match="no knob"):
        RulerTask("niah_single", n_keys=3)
    with pytest.raises(ValueError, match="at least"):
        RulerTask("niah_multivalue", noise="repeat").sample(30, 0)
    with pytest.raises(ValueError, match="n_hops"):
        RulerTask("vt", n_hops=0)
    with pytest.raises(ValueError, match="names exist"):
        RulerTask("vt", n_chains=6, n_hops=5)
    with pytest.raises(ValueError, match="depth"):
        RulerTask("niah_single", noise="repeat").sample(500, 0, depth=1.5)
    with pytest.raises(ValueError, match="more distinct words"):
        RulerTask("cwe").sample(8000, 0)


def test_every_named_variant_loads_and_samples(book_sentences):
    for family in ("flenqa", "ruler"):
        for name in variants(family):
            task, kw = load_variant(f"{family}-{name}", book_sentences)
            assert count_tokens(task.sample(1000, 0, **kw).text) == 1000
    with pytest.raises(ValueError, match="known: flenqa-monorel-duplicate"):
        load_variant("flenqa-nope")


def test_flenqa_in_memlab_tokens_predicts_the_label_word_after_the_question():
    """A FLenQA sample in a memlab model's word tokens (TokenTextTask.encode, as `memlab train`, `memlab eval`
    and benchmarks/flenqa_curve.py --checkpoint use it): the text, then one target, the label word, predicted from
    the question's last token; answer_token_text scores exactly that prediction."""
    import torch

    from memlab.evaluate import answer_token_text
    from memlab.models.registry import build_model, make_config
    from memlab.tasks.text import WordTokenizer
    from memlab.tasks.variants import TokenTextTask

    tok = WordTokenizer.build(TokenTextTask("flenqa-pir-similar", None, None).words())
    for seed in (2**31, 2**31 + 1):
        s = FlenqaTask("pir", "similar").sample(200, seed)
        ids, targets = TokenTextTask.encode(tok, s, "flenqa-pir-similar")
        assert ids == tok.encode(s.text) and len(targets) == len(ids)
        assert [j for j, t in enumerate(targets) if t != -100] == [len(ids) - 1]
        assert targets[-1] == tok.token_id(s.answer) and tok.decode(ids[-len(tok.encode(s.question)):]) == tok.decode(tok.encode(s.question))
        torch.manual_seed(0)
        model = build_model(make_config("rmt", vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2, num_mem=2, segment_len=64))
        right, pred, res = answer_token_text(model, ids, targets)
        assert pred == res.logits[0].argmax(-1).tolist() and len(pred) == 1
        assert right == (pred[0] == targets[-1])
    bad = WordTokenizer.build(["is", "in"])  # lacks "true" / "false"
    with pytest.raises(ValueError, match="tokenizer lacks"):
        TokenTextTask.encode(bad, s, "flenqa-pir-similar")
