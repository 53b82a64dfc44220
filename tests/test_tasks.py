"""Tasks: bAbI reader/writer/generator, tokenizer and haystacks, BABILong samples."""
import re
import time
from collections import defaultdict

import numpy as np
import pytest

from memlab.tasks import (
    BabilongTask,
    BookHaystack,
    HaystackError,
    ProceduralHaystack,
    Question,
    SplicedTokens,
    TokenizedHaystack,
    WordTokenizer,
    format_babi,
    generate_babi,
    load_haystack,
    make_sample,
    parse_babi,
    parse_length,
    parse_lengths,
    parse_task_spec,
    read_babi,
    read_babi_dir,
    task_words,
    tokenize_words,
)

ALL_WORDS = sorted({w for t in range(1, 6) for w in task_words(t)})

# ----------------------------------------------------------------------------- an independent checker
# Re-reads the fact sentences with plain regexes and answers the question from scratch. It is checked
# against the real bAbI files below, then used to check the generator.

MOVE = re.compile(r"^(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.$")
GET = re.compile(r"^(\w+) (?:got|grabbed|picked up|took) the (\w+)(?: there)?\.$")
DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.$")
GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
REL = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
OPP = {"north": "south", "south": "north", "east": "west", "west": "east"}


def check_answer(q: Question) -> str:
    """The answer to q computed from its facts alone."""
    if q.task == 4:
        rel = set()  # (x, d, y): x is d of y
        for f in q.facts:
            x, d, y = REL.match(f).groups()
            rel |= {(x, d, y), (y, OPP[d], x)}
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", q.question):
            (ans,) = [x for x, d, y in rel if d == m[1] and y == m[2]]
        else:
            m = re.fullmatch(r"What is the (\w+) (\w+) of\?", q.question)
            (ans,) = [y for x, d, y in rel if x == m[1] and d == m[2]]
        return ans
    place, holder, floor, gives = {}, {}, {}, []
    trail = defaultdict(list)
    for f in q.facts:
        if m := MOVE.match(f):
            place[m[1]] = m[2]
            for o, h in holder.items():
                if h == m[1]:
                    trail[o].append(m[2])
        elif m := GET.match(f):
            holder[m[2]] = m[1]
            if not trail[m[2]] or trail[m[2]][-1] != place.get(m[1]):
                trail[m[2]].append(place.get(m[1]))
        elif m := DROP.match(f):
            holder.pop(m[2], None)
            floor[m[2]] = place.get(m[1])
        elif m := GIVE.match(f):
            holder[m[2]] = m[3]
            gives.append((m[1], m[2], m[3]))
        else:
            raise AssertionError(f"checker cannot read fact {f!r}")
    if m := re.fullmatch(r"Where is (\w+)\?", q.question):
        return place[m[1]]
    if m := re.fullmatch(r"Where is the (\w+)\?", q.question):
        return place[holder[m[1]]] if m[1] in holder else floor[m[1]]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", q.question):
        t = trail[m[1]]
        k = max(i for i in range(1, len(t)) if t[i] == m[2])
        return t[k - 1]
    last = lambda pred: [g for g in gives if pred(*g)][-1]  # noqa: E731
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", q.question):
        return last(lambda g, o, r: (o, r) == (m[1], m[2]))[0]
    if m := re.fullmatch(r"Who gave the (\w+)\?", q.question):
        return last(lambda g, o, r: o == m[1])[0]
    if m := re.fullmatch(r"What did (\w+) give to (\w+)\?", q.question):
        return last(lambda g, o, r: (g, r) == (m[1], m[2]))[1]
    if m := re.fullmatch(r"Who received the (\w+)\?", q.question):
        return last(lambda g, o, r: o == m[1])[2]
    if m := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", q.question):
        return last(lambda g, o, r: (g, o) == (m[1], m[2]))[2]
    raise AssertionError(f"checker cannot read question {q.question!r}")


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_checker_agrees_with_real_babi(babi_dir, task):
    qs = read_babi_dir(babi_dir, task)[:400]
    agree = np.mean([check_answer(q) == q.answer for q in qs])
    # a few original qa5 questions ask about an older give when the same pair gave twice; the
    # generator always asks about the most recent matching give, which is what the checker reads
    assert agree == 1.0 if task != 5 else agree > 0.98


# ----------------------------------------------------------------------------- bAbI generator


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_generator_answers_are_correct(task):
    qs = generate_babi(task, 300, seed=task)
    assert len(qs) == 300
    words = set(task_words(task))
    for q in qs:
        assert q.task == task
        assert check_answer(q) == q.answer, format_babi([q])
        assert all(f.endswith(".") for f in q.facts) and q.question.endswith("?")
        assert q.supporting and all(0 <= i < len(q.facts) for i in q.supporting)
        assert any(q.answer in q.facts[i] for i in q.supporting)  # the answer is in a supporting fact
        assert len(q.supporting) == {1: 1, 2: 2, 3: 3, 4: 1, 5: 1}[task]
        assert set(tokenize_words(" ".join(q.facts + (q.question, q.answer)))) <= words
    if task == 1:  # the answer is the place of the last fact about the person
        for q in qs:
            person = q.question.split()[-1].rstrip("?")
            last = max(i for i, f in enumerate(q.facts) if f.startswith(person + " "))
            assert q.supporting == (last,) and q.facts[last].endswith(f" {q.answer}.")


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_generator_is_deterministic_and_shaped_like_the_originals(task):
    a, b, c = generate_babi(task, 50, seed=7), generate_babi(task, 50, seed=7), generate_babi(task, 50, seed=8)
    assert a == b and a != c
    per_story = sum(len(q.facts) == 2 for q in a) if task == 4 else None
    if task == 4:
        assert per_story == 50
    if task == 1:
        assert [len(q.facts) for q in a[:5]] == [2, 4, 6, 8, 10]
    mean = np.mean([len(q.facts) for q in generate_babi(task, 500, seed=1)])
    assert {1: 5 <= mean <= 7, 2: 6 <= mean <= 30, 3: 20 <= mean <= 100, 4: mean == 2, 5: 8 <= mean <= 40}[task]


def test_generator_max_facts_and_bad_args():
    for task in (1, 2, 3, 5):
        qs = generate_babi(task, 40, seed=0, max_facts=6)
        assert len(qs) == 40 and all(len(q.facts) <= 6 for q in qs)
        assert all(check_answer(q) == q.answer for q in qs)
    with pytest.raises(ValueError, match="max_facts"):
        generate_babi(3, 5, seed=0, max_facts=1)
    with pytest.raises(ValueError, match="qa1..qa5"):
        generate_babi(6, 5, seed=0)


# ----------------------------------------------------------------------------- bAbI reader / writer


def test_reader_counts_real_files(babi_dir):
    for task in range(1, 6):
        (path,) = babi_dir.glob(f"qa{task}_*_train.txt")
        n_question_lines = sum("\t" in line for line in path.read_text().splitlines())
        qs = read_babi_dir(babi_dir, task)
        assert len(qs) == n_question_lines > 0
        assert all(q.task == task for q in qs)
    q = read_babi_dir(babi_dir, 1)[0]
    assert q == Question(("Mary moved to the bathroom.", "John went to the hallway."), "Where is Mary?", "bathroom", (0,), 1)
    q = read_babi_dir(babi_dir, 2)[1]  # '14 Where is the football? garden 12 6'
    assert q.question == "Where is the football?" and q.answer == "garden" and len(q.facts) == 12
    assert q.facts[q.supporting[0]] == "Mary dropped the football." and q.facts[q.supporting[1]] == "Mary went back to the garden."


def test_format_read_round_trip(tmp_path, babi_dir):
    for task in range(1, 6):
        qs = generate_babi(task, 30, seed=3)
        path = tmp_path / f"qa{task}_gen_train.txt"
        path.write_text(format_babi(qs))
        assert read_babi(path) == qs
        assert read_babi_dir(tmp_path, task) == qs
    # each question as its own story also reads back
    qs = generate_babi(2, 10, seed=1)
    assert parse_babi("".join(format_babi([q]) for q in qs), task=2) == qs
    real = read_babi_dir(babi_dir, 5)[:200]
    assert parse_babi(format_babi(real), task=5) == real


def test_reader_errors(tmp_path):
    bad = tmp_path / "qa1_bad_train.txt"
    bad.write_text("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\n")
    with pytest.raises(ValueError, match=r"qa1_bad_train.txt, line 2"):
        read_babi(bad)
    bad.write_text("1 Mary moved to the bathroom.\nMary went to the hallway.\n")
    with pytest.raises(ValueError, match=r"line 2"):
        read_babi(bad)
    bad.write_text("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t5\n")
    with pytest.raises(ValueError, match=r"supporting line '5'"):
        read_babi(bad)
    with pytest.raises(FileNotFoundError, match=r"qa1_bad_train.txt"):  # lists what is there
        read_babi_dir(tmp_path, 2)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenize_words():
    assert tokenize_words("Where is Mary?") == ["where", "is", "mary", "?"]
    assert tokenize_words("Don't go, 42 men!") == ["don't", "go", ",", "42", "men", "!"]
    assert tokenize_words("It\u2019s \u201cfine\u201d.") == ["it's", '"', "fine", '"', "."]


def test_word_tokenizer(tmp_path):
    tok = WordTokenizer.build(task_words(1), ["the cat sat. the cat ran. a dog"], max_size=len(task_words(1)) + 5)
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<sep>"] and tok.token_id("<sep>") == 2
    assert tok.vocab[3:3 + len(task_words(1))] == task_words(1)
    assert len(tok) == len(task_words(1)) + 5 and "cat" in tok.vocab  # most frequent haystack words
    ids = tok.encode("Where is Mary? zebra")
    assert ids[-1] == 1 and tok.decode(ids[:4]) == "where is mary?"
    assert tok.encode_words(["mary"]) == [tok.token_id("Mary")]
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json" and not [p for p in tmp_path.iterdir() if p.name != "tokenizer.json"]
    assert WordTokenizer.load(tmp_path).vocab == tok.vocab == WordTokenizer.load(path).vocab
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WordTokenizer.load(tmp_path / "nope")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        WordTokenizer.load(tmp_path)


# ----------------------------------------------------------------------------- haystacks


@pytest.fixture(scope="module")
def book_stack(books):
    source = BookHaystack(books)
    tok = WordTokenizer.build(ALL_WORDS, source.sentences()[::4], max_size=4096)
    return source, tok, TokenizedHaystack(tok, source)


def test_book_haystack(book_stack):
    source, tok, hay = book_stack
    sents = source.sentences()
    assert len(sents) > 10_000
    assert not any("START OF THE PROJECT" in s or "END OF THE PROJECT" in s for s in sents)
    assert not any("Project Gutenberg License" in s or "PROJECT GUTENBERG LICENSE" in s for s in sents)
    assert all(len(re.findall(r"[A-Za-z]+", s)) >= 3 and "\n" not in s and "  " not in s for s in sents)
    assert any(s.startswith("It is a truth universally acknowledged") for s in sents)
    assert hay.tokens.dtype == np.int32 and hay.starts.dtype == np.int64 and hay.starts[0] == 0
    assert np.all(np.diff(hay.starts) > 0)


def test_haystack_take_wraps_and_is_fast(book_stack):
    _, _, hay = book_stack
    n = len(hay.tokens)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    out, bounds = hay.take(rng, 1_000_000)
    assert time.perf_counter() - t0 < 1.0
    assert out.shape == (1_000_000,) and bounds[0] == 0 and np.all(np.diff(bounds) > 0)
    out, bounds = hay.take(rng, 3_000_000)  # longer than the books: wraps around
    assert out.shape == (3_000_000,) and 3_000_000 > 4 * n
    assert np.array_equal(out[:1000], out[n:n + 1000]) and bounds[-1] < 3_000_000
    assert len(bounds) >= 4 * len(hay.starts)
    # every boundary is the start of a haystack sentence
    start0 = next(s for s in hay.starts if np.array_equal(hay.tokens[s:s + 50], out[:50]))
    sent = set(((hay.starts - start0) % n).tolist())
    assert all(int(b) % n in sent for b in bounds[:: max(1, len(bounds) // 500)])


def test_haystack_cut_reads_the_cyclic_text_and_its_sentence_starts():
    """A cut is `take` without building it: tokens(a, b) and its virtual sentence starts against a brute-force
    reference, across several wraps of a tiny haystack."""
    hay = TokenizedHaystack.from_arrays(np.arange(10) + 100, [0, 3, 7])
    for n_tokens in (0, 1, 3, 4, 25, 40):
        rng = np.random.default_rng(n_tokens)
        cut = hay.cut(rng, n_tokens)
        text = [100 + (cut.first + i) % 10 for i in range(n_tokens)]
        starts = [i for i in range(n_tokens) if (cut.first + i) % 10 in (0, 3, 7)]
        assert cut.tokens(0, n_tokens).tolist() == text and cut.first in (0, 3, 7)
        assert all(cut.tokens(a, b).tolist() == text[a:b] for a in range(n_tokens) for b in range(a, n_tokens + 1, 7))
        assert cut.n_bounds() == len(starts) and cut.bound(np.arange(len(starts))).tolist() == starts
        for at_most in (-1, 0, 5, 12, 100):
            assert cut.n_bounds(at_most) == sum(x <= at_most for x in starts)
        out, bounds = hay.take(np.random.default_rng(n_tokens), n_tokens)  # the same draw
        assert out.tolist() == text and bounds.tolist() == starts and out.dtype == np.int32
    with pytest.raises(ValueError, match="outside the cut"):
        hay.cut(np.random.default_rng(0), 5).tokens(2, 6)


@pytest.mark.parametrize("length", [700, 5000, 3_000_000])
def test_a_lazy_babilong_sample_is_the_eager_one_read_in_slices(book_stack, length):
    """sample(..., lazy=True) gives the same ids as the built sample (3M tokens wrap the books several times),
    read a slice at a time at any cut, with the same spans."""
    _, tok, hay = book_stack
    bt = BabilongTask(2, generate_babi(2, 20, seed=1, max_facts=30), tok, hay)
    for seed, before in ((0, None), (7, length - 128)):
        eager, lazy = bt.sample(length, seed, before), bt.sample(length, seed, before, lazy=True)
        assert isinstance(lazy.tokens, SplicedTokens) and len(lazy.tokens) == length == lazy.tokens.shape[0]
        assert (eager.fact_spans, eager.question_span, eager.meta) == (lazy.fact_spans, lazy.question_span, lazy.meta)
        whole = np.asarray(lazy.tokens)
        assert whole.dtype == np.int64 and np.array_equal(whole, eager.tokens)
        cuts = sorted({0, length} | {a for span in eager.fact_spans for a in span}
                      | set(np.random.default_rng(seed).integers(0, length, 40).tolist()))
        assert np.array_equal(np.concatenate([lazy.tokens[a:b] for a, b in zip(cuts, cuts[1:])]), eager.tokens)
        assert np.array_equal(lazy.tokens[-10:], eager.tokens[-10:])
    with pytest.raises(TypeError, match="contiguous slice"):
        lazy.tokens[3]


def test_a_lazy_sample_of_50m_tokens_holds_no_more_than_the_haystack(book_stack):
    """Memory flat in length: building a 50M-token lazy sample and reading one segment allocates a few MB (the
    cut's sentence table), not the 400 MB of a built one."""
    import tracemalloc

    _, tok, hay = book_stack
    bt = BabilongTask(1, generate_babi(1, 5, seed=0), tok, hay)
    tracemalloc.start()
    try:
        s = bt.sample(50_000_000, 3, lazy=True)
        seg = s.tokens[40_000_000:40_000_128]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(s.tokens) == 50_000_000 and seg.shape == (128,)
    assert peak < 16 * len(hay.starts) + 4_000_000, peak


def test_procedural_haystack():
    a, b = ProceduralHaystack(seed=1).sentences(200), ProceduralHaystack(seed=1).sentences(200)
    assert a == b and a != ProceduralHaystack(seed=2).sentences(200) and len(set(a)) > 50
    assert all(s[0].isupper() and s.endswith(".") for s in a)
    assert isinstance(load_haystack(None), ProceduralHaystack)
    babi_vocab = {w for t in range(1, 6) for w in task_words(t)} - set(tokenize_words("the . there to is what of was before"))
    assert not {w for s in a for w in tokenize_words(s)} & babi_vocab  # filler never looks like a fact


def test_gutenberg_header_footer_and_sentence_split(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(
        "\ufeffThe Project Gutenberg eBook of Something. Licence words here and there.\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK 1 ***\n\nCHAPTER I.\n\n"
        "Mr. Smith  walked home\nin the rain! Did he stop? No, he did not stop at all.\n\n"
        "A new paragraph starts here without a full stop\n\nAnd \u201cthen it ended.\u201d Quietly, it did.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK 1 ***\nMore licence words after the end.\n",
        encoding="utf-8",
    )
    assert BookHaystack([path]).sentences() == [
        "Mr. Smith walked home in the rain!",
        "Did he stop?",
        "No, he did not stop at all.",
        "A new paragraph starts here without a full stop",
        "And \u201cthen it ended.\u201d",
        "Quietly, it did.",
    ]


def test_bad_haystack_files(tmp_path):
    cases = {
        "missing.txt": (None, "does not exist"),
        "empty.txt": (b"", "is empty"),
        "nul.txt": (b"Some text.\x00\x01\x02 More text here.", "binary"),
        "latin1.txt": ("Caf\u00e9 au lait is here. It was good.".encode("latin-1"), "not valid UTF-8"),
        "short.txt": (b"Hi.\n\nNo.", "no sentences"),
    }
    for name, (data, problem) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(HaystackError, match=problem) as e:
            BookHaystack([path])
        assert name in str(e.value)
    with pytest.raises(HaystackError, match="is a directory"):
        BookHaystack([tmp_path])
    assert isinstance(HaystackError("x"), ValueError)


# ----------------------------------------------------------------------------- BABILong


def check_sample(s, q, tok, length):
    assert s.tokens.dtype == np.int64 and s.tokens.shape == (length,)
    assert s.answer_pos == length - 1 and s.answer == tok.token_id(q.answer) and s.answer_text == q.answer
    assert s.answer != 1  # the answer word is known to the tokenizer
    qs, qe = s.question_span
    assert qe == length and s.tokens[qs:qe].tolist() == tok.encode(q.question)
    assert len(s.fact_spans) == len(q.facts)
    prev = 0
    for (a, b), fact in zip(s.fact_spans, q.facts):  # facts in order, not overlapping, before the question
        assert prev <= a < b <= qs and s.tokens[a:b].tolist() == tok.encode(fact)
        prev = b
    assert s.meta["supporting_spans"] == [s.fact_spans[i] for i in q.supporting]


@pytest.mark.parametrize("length", [1000, 100_000])
def test_babilong_samples_on_books(book_stack, length):
    _, tok, hay = book_stack
    for task in (1, 2, 3, 4, 5):
        questions = generate_babi(task, 50, seed=0, max_facts=60)
        bt = BabilongTask(task, questions, tok, hay)
        for s in bt.samples(length, 3, seed=11):
            q = questions[s.meta["question_index"]]
            check_sample(s, q, tok, length)
            assert s.meta["task"] == task and s.meta["length"] == length and s.meta["seed"] in (11, 12, 13)
    a, b = bt.sample(length, seed=5), bt.sample(length, seed=5)
    assert np.array_equal(a.tokens, b.tokens) and a.fact_spans == b.fact_spans
    assert bt.sample(2 * length, seed=5).meta["question_index"] == a.meta["question_index"]


def test_babilong_facts_before_keeps_the_last_segment_free_of_facts(book_stack):
    _, tok, hay = book_stack
    questions = generate_babi(1, 30, seed=2)
    bt = BabilongTask(1, questions, tok, hay)
    for seed in range(30):
        s = bt.sample(1024, seed, facts_before=1024 - 128)
        check_sample(s, questions[s.meta["question_index"]], tok, 1024)
        assert s.fact_spans[-1][1] <= 1024 - 128
    with pytest.raises(ValueError, match="cannot all end before token"):
        bt.sample(1024, 0, facts_before=3)


def test_babilong_facts_sit_at_sentence_boundaries(book_stack):
    _, tok, hay = book_stack
    q = generate_babi(1, 5, seed=0)[-1]
    s = make_sample(q, 5000, tok, hay, np.random.default_rng(3))
    # removing the facts leaves haystack text; each fact was put where a haystack sentence starts
    keep = np.ones(len(s.tokens), bool)
    for a, b in s.fact_spans:
        keep[a:b] = False
    keep[s.question_span[0]:] = False
    plain = s.tokens[keep]
    n = len(hay.tokens)
    start0 = next(int(x) for x in hay.starts if np.array_equal(hay.tokens[x:x + 40], plain[:40]))
    starts = set(((hay.starts - start0) % n).tolist())
    removed = 0
    for a, b in s.fact_spans:
        assert (a - removed) % n in starts
        removed += b - a


def test_babilong_without_haystack_and_errors(book_stack, babi_dir):
    _, tok, hay = book_stack
    q = read_babi_dir(babi_dir, 2)[4]
    s = make_sample(q, 10, tok, None, np.random.default_rng(0))
    expected = [t for f in q.facts for t in tok.encode(f)] + tok.encode(q.question)
    assert s.tokens.tolist() == expected and s.answer_pos == len(expected) - 1
    with pytest.raises(ValueError, match=rf"use a length >= {len(expected)}"):
        make_sample(q, len(expected) - 1, tok, hay, np.random.default_rng(0))
    s = make_sample(q, len(expected), tok, hay, np.random.default_rng(0))  # exactly the minimum: no haystack
    assert s.tokens.tolist() == expected
    proc = ProceduralHaystack(seed=0)
    ptok = WordTokenizer.build(ALL_WORDS, proc.sentences(2000))
    ph = TokenizedHaystack(ptok, proc)
    s = make_sample(q, 3000, ptok, ph, np.random.default_rng(1))
    check_sample(s, q, ptok, 3000)
    with pytest.raises(ValueError, match="no questions"):
        BabilongTask(1, [], tok, hay)


def test_parse_task_spec_and_lengths():
    assert parse_task_spec("babilong:qa1") == [("babilong", 1)]
    assert parse_task_spec("babilong:qa1,qa2") == [("babilong", 1), ("babilong", 2)]
    for bad in ("babilong:qa6", "ruler:qa1", "babilong", "babilong:qa1,foo"):
        with pytest.raises(ValueError, match=r"known tasks: babilong:qa1, .*babilong:qa5"):
            parse_task_spec(bad)
    assert [parse_length(s) for s in ("1k", "4k", "1M", "11M", "1024", "1.5k")] == [1000, 4000, 1_000_000, 11_000_000, 1024, 1500]
    assert parse_lengths("1k,4k,1M") == [1000, 4000, 1_000_000]
    for bad in ("", "k", "1x", "-1", "0", "1.0001k", "1,k"):
        with pytest.raises(ValueError, match="bad length"):
            parse_lengths(bad) if "," in bad else parse_length(bad)
