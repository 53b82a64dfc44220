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
