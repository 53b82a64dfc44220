"""ReadAgent (arXiv:2402.09727) against its baselines on BABILong qa1 as text, at several lengths, with a real
language model: gists + look-up (readagent), gists alone, BM25 page retrieval, and the full text cut to the model's
context. Accuracy with 95% intervals, compression rate, model calls and seconds per question, and whether the
facts the answer rests on reached the model: the share found word for word in the final context
(`needed_in_context`), and the accuracy on the samples where all of them did (a wrong answer there is the model's
reading, not the retrieval).

    python benchmarks/readagent_babilong.py                        # SmolLM2-135M-Instruct, local
    python benchmarks/readagent_babilong.py --backend http://localhost:11434/v1 --reader-model llama3.2
        # -> benchmarks/results/readagent_babilong.json; samples and cells in benchmarks/results/readagent/results.sqlite

It runs `memlab eval readagent:BACKEND` (same code, same store format): every sample's results are kept as soon as
it is read, so an interrupted run resumes at its next sample. The JSON lists every cell in the store (each run adds
its task and lengths to it), with each sample's reply; `--report-only` writes it from what is stored.
Lengths are memlab word tokens of document + question. Questions: the original bAbI qa1 test file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from memlab.readagent import HFBackend, ReadAgent, evaluate_readers, make_backend, reader_tasks  # noqa: E402
from memlab.store import ResultStore  # noqa: E402
from memlab.tasks.text import BookHaystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="hf:smollm2")
    p.add_argument("--reader-model", help="model name for an endpoint URL")
    p.add_argument("--task", default="babilong:qa1")
    p.add_argument("--lengths", default="1000,2000,4000")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--methods", default="readagent,gists,bm25,full")
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", default=str(RESULTS / "readagent" / "results.sqlite"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    name = "smollm2" if a.backend == "hf:smollm2" else Path(a.reader_model or a.backend).name.replace(":", "-")
    methods = [m.strip() for m in a.methods.split(",")]
    lengths = [int(x) for x in a.lengths.split(",")]
    if not a.report_only:
        torch.set_num_threads(a.threads)
        backend = make_backend(a.backend, a.reader_model)
        context = int(backend.lm.max_context * 0.6) if isinstance(backend, HFBackend) and backend.lm.max_context else None
        agent = ReadAgent(backend, k=a.k, context_words=context)
        books = sorted((DATA / "books").glob("*.txt"))
        tasks = reader_tasks(a.task, BookHaystack(books).sentences(), str(DATA / "babi"))
        with ResultStore(a.store) as store:
            evaluate_readers(name, agent, tasks, lengths, a.samples, 0, store, methods, log=lambda m: print(m, flush=True))
    rows = []  # every cell of these readers in the store: each run adds its tasks and lengths to the same file
    with ResultStore(a.store) as store:
        for m in methods:
            for c in sorted(store.cells(model=f"{m}-{name}"), key=lambda c: (c.task, c.length)):
                rows.append({"method": m, "task": c.task, "length": c.length, "samples": c.samples,
                             "accuracy": c.accuracy, "ci": [round(c.ci_low, 3), round(c.ci_high, 3)],
                             "seconds_per_question": round(c.seconds_per_sample, 1),
                             "calls_per_question": round(c.extra["calls_per_question"], 2),
                             "compression_rate": round(c.extra["compression_rate"], 3),
                             "pages_per_document": round(c.extra["pages_per_document"], 2),
                             "needed_in_context": c.extra.get("needed_in_context"),
                             "accuracy_when_all_needed_in_context": c.extra.get("accuracy_when_all_needed_in_context"),
                             "samples_with_all_needed_in_context": c.extra.get("samples_with_all_needed_in_context"),
                             "fallbacks": c.extra["fallbacks"], "context_words": c.extra["context_words"],
                             "replies": [{"correct": r["correct"], "needed_in_context": r.get("needed_in_context"),
                                          "answer": r["answer"][:160]}
                                         for _, r in sorted(store.get_samples(c.model, c.task, c.length).items())]})
    for r in rows:
        print({k: v for k, v in r.items() if k != "replies"})
    print(write_result("readagent_babilong", {"backend": a.backend, "model": name, "rows": rows}))


if __name__ == "__main__":
    main()
