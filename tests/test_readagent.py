"""ReadAgent driven by scripted back-ends (fixed replies, malformed ones included) and a real local HTTP server
speaking OpenAI's chat format."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from memlab.readagent import BackendError, OpenAIBackend, ReadAgent, ScriptedBackend, make_backend, units_of


def doc(n_paras=12, words=50):
    return "\n\n".join(" ".join(f"p{i}w{j}" for j in range(words)) + "." for i in range(n_paras))


def by_kind(pause="1", gist=None, lookup="1", answer="the kitchen"):
    """Replies chosen by the prompt's kind."""
    def reply(prompt):
        if "where to pause" in prompt:
            return pause
        if prompt.startswith("Shorten"):
            page = prompt.split("Passage:\n", 1)[1].split("\n\nShortened")[0]
            return gist if gist is not None else " ".join(page.split()[:5])
        if "read again" in prompt or "Name one more" in prompt:
            return lookup() if callable(lookup) else lookup
        return answer
    return reply


def test_pagination_follows_the_chosen_break_and_counts_a_malformed_reply():
    agent = ReadAgent(ScriptedBackend(by_kind(pause="<1>")), min_words=100, max_words=200)
    pages = agent.paginate(doc())
    # window of 4 paragraphs (51 words each); breaks after 2 and 3 paragraphs are labelled <0>, <1>: <1> = 3 paragraphs
    assert [len(p.split("\n\n")) for p in pages[:3]] == [3, 3, 3] and "\n\n".join(pages) == doc()
    assert agent.fallbacks["pause_point"] == 0
    bad = ReadAgent(ScriptedBackend(by_kind(pause="somewhere nice")), min_words=100, max_words=200)
    pages = bad.paginate(doc())
    assert bad.fallbacks["pause_point"] >= 1 and "\n\n".join(pages) == doc()  # falls back to the last break
    with pytest.raises(ValueError, match="empty"):
        agent.paginate("  \n\n ")


def test_gists_are_shorter_tagged_and_fall_back_when_useless():
    agent = ReadAgent(ScriptedBackend(by_kind()), min_words=100, max_words=200)
    res = agent.read(doc(), "Where is p0w1?")
    assert all(len(g.split()) == 5 for g in res.gists)
    ctx = agent.context(res.pages, res.gists, {1})
    assert ctx.index("<Page 0>") < ctx.index("<Page 1>") and res.pages[1] in ctx and res.pages[0] not in ctx
    lazy = ReadAgent(ScriptedBackend(by_kind(gist="")), min_words=100, max_words=200)
    res = lazy.read(doc(), "Where?")
    assert lazy.fallbacks["gist"] == len(res.pages) and all(g for g in res.gists)


def test_parallel_lookup_expands_chosen_pages_in_place():
    backend = ScriptedBackend(by_kind(lookup="Pages 2, 0, 2 and 9"))
    res = ReadAgent(backend, min_words=100, max_words=200, k=2).read(doc(), "Where is p0w1?")
    assert res.expanded == [2, 0] and res.answer == "the kitchen"
    final = backend.prompts[-1]
    assert res.pages[2] in final and res.pages[0] in final and res.pages[1] not in final
    n_words = sum(len(p.split()) for p in res.pages)
    kept = sum(len(res.pages[i].split()) if i in (0, 2) else len(g.split()) for i, g in enumerate(res.gists))
    assert res.compression_rate == pytest.approx(1 - kept / n_words)
    assert res.calls == len(backend.prompts)
    bad = ReadAgent(ScriptedBackend(by_kind(lookup="I would like the second one")), min_words=100, max_words=200)
    res = bad.read(doc(), "Where?")
    assert res.expanded == [] and bad.fallbacks["page_choice"] == 1


def test_sequential_lookup_sees_what_it_expanded_and_stops():
    replies = iter(["1", "page 3", "STOP"])
    backend = ScriptedBackend(by_kind(lookup=lambda: next(replies)))
    res = ReadAgent(backend, min_words=100, max_words=200, lookup="sequential").read(doc(), "Where?")
    assert res.expanded == [1, 3]
    looks = [p for p in backend.prompts if "Name one more" in p]
    assert len(looks) == 3 and res.pages[1] in looks[1] and res.pages[3] not in looks[1] and res.pages[3] in looks[2]
    garbled = ReadAgent(ScriptedBackend(by_kind(lookup="hmm")), min_words=100, max_words=200, lookup="sequential")
    assert garbled.read(doc(), "Where?").expanded == [] and garbled.fallbacks["page_choice"] == 1


class _Chat(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        msg = body["messages"][0]["content"]
        reply = "0" if "where to pause" in msg else "p0w1 is in the kitchen"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_openai_compatible_endpoint_and_unreachable_errors():
    srv = HTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        backend = make_backend(f"http://127.0.0.1:{srv.server_port}/v1", model="any")
        res = ReadAgent(backend, min_words=100, max_words=200).read(doc(6), "Where is p0w1?")
        assert res.answer == "p0w1 is in the kitchen" and res.calls >= 3
    finally:
        srv.shutdown()
    dead = OpenAIBackend(f"http://127.0.0.1:{srv.server_port}/v1", "any", timeout=0.5, retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="unreachable or failing after 2 tries"):
        dead.chat("hello")
    with pytest.raises(ValueError, match="needs --model"):
        make_backend("http://localhost:1/v1")
    with pytest.raises(ValueError, match="unknown back-end"):
        make_backend("ollama")


def test_units_split_long_paragraphs_into_sentences():
    long = " ".join(["A sentence of five words."] * 40)
    assert len(units_of("short one\n\n" + long)) == 41


@pytest.mark.slow
def test_readagent_with_smollm2_on_a_short_text():
    pytest.importorskip("gguf")
    text = doc(8, 40)
    res = ReadAgent(make_backend("hf:smollm2"), min_words=60, max_words=120).read(text, "What is the first word?")
    assert res.pages and res.calls >= len(res.pages) + 2 and isinstance(res.answer, str)


# ---- baselines on the same pages, and the readers in the evaluation grid ------------------------------------------

import re  # noqa: E402
from pathlib import Path  # noqa: E402

from memlab.readagent import METHODS, bm25_pages, babilong_correct, evaluate_readers, needed_in, reader_tasks  # noqa: E402
from memlab.evaluate import sample_seed  # noqa: E402
from memlab.store import ResultStore  # noqa: E402
from memlab.tasks.babi import generate_babi  # noqa: E402
from memlab.tasks.babilong import text_sample  # noqa: E402
from memlab.tasks.flenqa import count_tokens  # noqa: E402
from memlab.tasks.text import BookHaystack  # noqa: E402

BOOKS = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "books").glob("*.txt"))


def test_baselines_read_the_same_pages_and_count_their_calls():
    text = doc(12)
    text = text.replace("p7w3", "zebra")  # one page holds the question's rare word
    backend = ScriptedBackend(by_kind(lookup="2"))
    agent = ReadAgent(backend, min_words=100, max_words=200, k=1)
    out = agent.read_all(text, "Where is the zebra?")
    assert list(out) == list(METHODS)
    pages = out["readagent"].pages
    n_pages, n_pause = len(pages), sum("where to pause" in p for p in backend.prompts)
    zebra = next(i for i, p in enumerate(pages) if "zebra" in p)
    assert out["bm25"].expanded == [zebra] and bm25_pages(pages, "the and of", 2) == []
    assert out["readagent"].expanded == [2] and out["gists"].expanded == []
    assert out["readagent"].calls == n_pause + n_pages + 2  # pagination, gists, look-up, answer
    assert out["gists"].calls == n_pause + n_pages + 1 and out["bm25"].calls == n_pause + 1 and out["full"].calls == 1
    assert agent.calls == len(backend.prompts) == n_pause + n_pages + 1 + 4  # shared work asked once
    words = len(text.split())
    assert out["full"].compression_rate == 0
    assert out["bm25"].compression_rate == pytest.approx(1 - len(pages[zebra].split()) / words)
    assert pages[zebra] in backend.prompts[-2] and "<Page" in backend.prompts[-2]  # bm25's answer prompt
    assert all(r.seconds >= 0 for r in out.values())


def test_context_limit_cuts_and_counts_and_a_question_over_it_is_an_error():
    backend = ScriptedBackend(by_kind())
    agent = ReadAgent(backend, min_words=100, max_words=200, context_words=250)
    out = agent.read_all(doc(12), "Where?", ("full",))
    assert out["full"].fallbacks["context_cut"] == 1
    assert out["full"].compression_rate == pytest.approx(1 - 250 / len(doc(12).split()))
    assert doc(12).split()[-1] in backend.prompts[-1] and doc(12).split()[0] not in backend.prompts[-1]
    with pytest.raises(ValueError, match="more than the 250 the model's context holds"):
        agent.read_all(doc(12), "why " * 300)
    with pytest.raises(ValueError, match="unknown reading method"):
        agent.read_all(doc(12), "Where?", ("magic",))
    with pytest.raises(ValueError, match="must hold at least one page"):
        ReadAgent(backend, max_words=600, context_words=100)


def test_text_babilong_has_its_exact_length_and_the_facts_in_order():
    sentences = BookHaystack(BOOKS[:1]).sentences()
    q = generate_babi(1, 5, seed=3)[4]
    s = text_sample(q, 700, sentences, seed=9)
    assert count_tokens(s.document) + count_tokens(s.question) == 700
    at = 0
    for f in q.facts:  # each fact found after the previous one: all there, in order
        at = s.document.index(f, at) + len(f)
    assert s.fact_sentences == sorted(s.fact_sentences) and s.answer == q.answer
    assert text_sample(q, 700, sentences, seed=9) == s and text_sample(q, 700, sentences, seed=10) != s
    with pytest.raises(ValueError, match="shorter than the facts"):
        text_sample(q, 5, sentences, seed=9)
    assert babilong_correct("She is in the kitchen.", "kitchen", {"kitchen", "garden"})
    assert not babilong_correct("kitchen or garden", "kitchen", {"kitchen", "garden"})


def qa1_oracle(prompt):
    """A back-end that answers qa1 from whatever facts its prompt shows (the last move of the person asked)."""
    if "where to pause" in prompt:
        return "0"
    if prompt.startswith("Shorten"):  # gists keep the facts only
        page = prompt.split("Passage:\n", 1)[1].split("\n\nShortened")[0]
        return " ".join(re.findall(r"[A-Z][a-z]+ (?:moved|went|journeyed|travelled) to the \w+\.", page)) or "Nothing."
    if "read again" in prompt:
        return "none"
    person = re.search(r"Question: Where is (\w+)\?", prompt).group(1)
    moves = re.findall(rf"{person} (?:moved|went|journeyed|travelled) to the (\w+)", prompt)
    return moves[-1] if moves else "nowhere"


def test_readers_in_the_eval_grid_keep_every_sample_and_resume(tmp_path):
    tasks = reader_tasks("babilong:qa1", BookHaystack(BOOKS[:1]).sentences())
    calls = {"n": 0, "fail_at": 30}

    def flaky(prompt):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise BackendError("endpoint went away")
        return qa1_oracle(prompt)

    agent = ReadAgent(ScriptedBackend(flaky), min_words=100, max_words=200)
    with ResultStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(BackendError):
            evaluate_readers("oracle", agent, tasks, [800], 4, 0, store, log=lambda m: None)
        kept = store.get_samples("readagent-oracle", "babilong:qa1", 800)
        assert 1 <= len(kept) < 4 and not store.cells()  # the finished samples are kept; no cell written yet
        n = calls["n"]
        with pytest.raises(ValueError, match="measured with --seed 0, and this run asks --seed 1"):
            evaluate_readers("oracle", agent, tasks, [800], 4, 1, store, log=lambda m: None)  # not on seed 0's samples
        assert calls["n"] == n and store.get_samples("readagent-oracle", "babilong:qa1", 800) == kept
        done_before, calls["fail_at"] = calls["n"], -1
        cells = []
        evaluate_readers("oracle", agent, tasks, [800], 4, 0, store, log=lambda m: None, on_cell=cells.append)
        per_sample = (calls["n"] - done_before) / (4 - len(kept))
        assert per_sample > 0 and calls["n"] - done_before == pytest.approx(per_sample * (4 - len(kept)))
        got = {c.model: c for c in cells}
        assert set(got) == {f"{m}-oracle" for m in METHODS}
        assert got["full-oracle"].accuracy == 1.0 and got["gists-oracle"].accuracy == 1.0  # gists keep every fact here
        assert got["full-oracle"].extra["calls_per_question"] == 1 and got["full-oracle"].extra["compression_rate"] == 0
        assert 0 < got["gists-oracle"].extra["compression_rate"] < 1
        for m in ("full", "gists"):  # the whole text, and gists that keep every fact verbatim: the facts reach it
            e = got[f"{m}-oracle"].extra
            assert e["needed_in_context"] == 1.0 and e["accuracy_when_all_needed_in_context"] == 1.0
            assert e["samples_with_all_needed_in_context"] == 4
        n = calls["n"]
        evaluate_readers("oracle", agent, tasks, [800], 4, 0, store, log=lambda m: None)
        assert calls["n"] == n  # everything stored: nothing asked again
        assert got["readagent-oracle"].extra["seed"] == 0
        with pytest.raises(ValueError, match="measured with --seed 0, and this run asks --seed 2"):
            evaluate_readers("oracle", agent, tasks, [800], 4, 2, store, log=lambda m: None)


def test_eval_cli_runs_readers_against_an_endpoint(tmp_path, capsys):
    from memlab.cli import main

    class Oracle(_Chat):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps({"choices": [{"message": {"content": qa1_oracle(body["messages"][0]["content"])}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = HTTPServer(("127.0.0.1", 0), Oracle)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        code = main(["eval", f"readagent:http://127.0.0.1:{srv.server_port}/v1", "--reader-model", "tiny", "--task",
                     "babilong:qa1", "--lengths", "600", "--samples", "2", "--methods", "readagent,bm25,full", "--store",
                     str(tmp_path / "s.sqlite"), "--json", "--haystack", str(BOOKS[0])])
    finally:
        srv.shutdown()
    assert code in (0, None)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert sorted(r["model"] for r in rows) == ["bm25-tiny", "full-tiny", "readagent-tiny"]
    assert all(r["task"] == "babilong:qa1" and r["length"] == 600 and r["samples"] == 2 for r in rows)
    assert main(["eval", "readagent:hf:smollm2", "checkpoints/rmt-qa1", "--task", "babilong:qa1"]) == 2


def test_needed_facts_are_the_supporting_facts_and_key_paragraphs_and_are_found_verbatim():
    sentences = BookHaystack(BOOKS[:1]).sentences()
    (_, qa1), (_, pir) = reader_tasks("babilong:qa1", sentences)[0], reader_tasks("flenqa:pir-different", sentences)[0]
    document, question, check, needed = qa1(900, 5)
    assert len(needed) == 1 and needed[0] in document and question.startswith("Where is")
    person = question.split()[2].rstrip("?")
    assert needed[0].startswith(person) and check(needed[0].split()[-1].rstrip("."))  # the fact names the answer
    document, question, check, needed = pir(600, 3)
    assert len(needed) == 2 and all(n in document for n in needed)
    assert question.endswith("Answer with True or False only.")  # scored by its last true/false, so it asks for one
    assert check("So it is true.") != check("So it is false.")
    assert needed_in("x\n\n" + needed[1].upper().replace(" ", "\n  ") + " y", needed) == 0.5  # case, white space aside
    assert needed_in("Mary went to the garden.", ["Mary moved to the garden."]) == 0.0  # a rewritten fact does not count
    assert needed_in("anything", []) == 1.0


def test_readers_in_the_grid_at_64k_words_keep_the_fact_in_the_gists_and_lose_it_in_a_cut_full_text(tmp_path):
    """The issue's longest grid length, read by a back-end whose gists keep facts verbatim: the pages cover the
    document, the gists compress it > 95% and carry the answer; the full text cut to the context loses the fact."""
    tasks = reader_tasks("babilong:qa1", BookHaystack(BOOKS[:1]).sentences())
    agent = ReadAgent(ScriptedBackend(qa1_oracle), context_words=4000)
    cells = []
    with ResultStore(tmp_path / "s.sqlite") as store:
        evaluate_readers("oracle", agent, tasks, [64000], 1, 0, store, ("gists", "full"), log=lambda m: None,
                         on_cell=cells.append)
        got = {c.model: c for c in cells}
        sample = store.get_samples("gists-oracle", "babilong:qa1", 64000)[0]
    document, question, check, needed = tasks[0][1](64000, sample_seed(0, 0))
    assert count_tokens(document) + count_tokens(question) == 64000
    assert 64000 / 600 <= sample["pages"] <= 64000 / 280 + 1  # pages of 280-600 words cover it
    gists, full = got["gists-oracle"], got["full-oracle"]
    assert gists.accuracy == 1.0 and gists.extra["needed_in_context"] == 1.0
    assert gists.extra["compression_rate"] > 0.95
    in_tail = needed[0] in " ".join(document.split()[-4000:])  # facts sit anywhere: the cut full text keeps the end
    assert full.extra["needed_in_context"] == float(in_tail) and full.extra["fallbacks"] == {"context_cut": 1}
    assert full.accuracy == float(in_tail)
