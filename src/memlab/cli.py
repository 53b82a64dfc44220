"""The `memlab` command: train, eval, report, demo, babi, models."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/memlab/cli.py -> the project root
DEFAULT_BOOKS = REPO_ROOT.parent / "shared" / "data" / "books"  # ../shared/data/books beside the project


class UserError(Exception):
    """Bad input: printed as one clear message, exit code 2."""


def _books_default() -> list[str]:
    return sorted(str(p) for p in DEFAULT_BOOKS.glob("*.txt")) if DEFAULT_BOOKS.is_dir() else []


def cmd_train(a):
    from .train import TrainConfig, load_recipe, train, train_config_from_dict, validate

    cfg = load_recipe(a.recipe) if a.recipe else TrainConfig()
    over = {k: v for k, v in {"model": a.model, "task": a.task, "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr,
                              "bptt_depth": a.bptt_depth, "seed": a.seed, "babi_dir": a.babi_dir, "threads": a.threads,
                              "init_from": a.init_from, "device": a.device, "compile": a.compile}.items() if v is not None}
    if a.lengths:
        from .tasks.babilong import parse_lengths
        over["lengths"] = [0 if x.strip() == "0" else parse_lengths(x)[0] for x in a.lengths.split(",")]
    if a.haystack:
        over["haystack"] = a.haystack
    if a.model_args:
        try:
            args = json.loads(a.model_args)
        except json.JSONDecodeError as e:
            raise UserError(f"--model-args is not valid JSON ({e}); write an object such as '{{\"num_mem\": 16}}'") from None
        if not isinstance(args, dict):
            raise UserError(f"--model-args must be a JSON object such as '{{\"num_mem\": 16}}', got {a.model_args!r}")
        over["model_args"] = {**cfg.model_args, **args}
    cfg = train_config_from_dict({**dataclasses.asdict(cfg), **over}, source="train options")
    validate(cfg)
    from .models.registry import make_config
    from .tasks.babilong import parse_task_spec
    from .tasks.text import load_haystack

    # validate before anything is written: unknown model (lists the known ones) or option, task, haystack files
    make_config(cfg.model, **cfg.model_args)
    from .tasks.variants import is_text_task, parse_text_spec

    parse_text_spec(cfg.task) if is_text_task(cfg.task) else parse_task_spec(cfg.task)
    if cfg.haystack:
        load_haystack(cfg.haystack)
    if cfg.init_from and not a.resume:
        from .checkpoint import load_checkpoint

        load_checkpoint(cfg.init_from)  # a missing or malformed checkpoint fails here, before anything is written
    out = Path(a.out or f"runs/{cfg.model}-{cfg.task.split(':')[-1].replace(',', '-')}")
    from .dist import rank_world

    first = rank_world()[0] == 0  # under torchrun, process 0 speaks for all
    if first:
        hay = f"{len(cfg.haystack)} text file(s)" if cfg.haystack else "procedural text (give --haystack FILE... for book text)"
        print(f"training {cfg.model} on {cfg.task} -> {out}; haystack: {hay}", file=sys.stderr)
    hist = train(cfg, out, resume=a.resume, progress=not a.no_progress, log=lambda m: print(m, file=sys.stderr))
    if first:
        print(json.dumps({"checkpoint": str(out), "final_eval": hist["eval"][-1] if hist["eval"] else None}))


def _with_passes(a, loaded):
    """--passes N: sleep checkpoints evaluated with N consolidation passes per chunk (cells named NAME@N=N)."""
    if a.passes is None:
        return loaded
    if a.passes < 0:
        raise UserError(f"--passes must be >= 0 (consolidation passes per chunk; 0 = none), got {a.passes}")
    from .evaluate import with_passes

    for name, model, _ in loaded:
        if model.config.kind != "sleep":
            raise UserError(f"--passes applies to sleep checkpoints only; {name} is a {model.config.kind!r} checkpoint "
                            "(leave --passes out, or evaluate it in a separate command)")
    return [(with_passes(name, model, a.passes), model, tok) for name, model, tok in loaded]


def cmd_eval(a):
    from .checkpoint import load_checkpoint
    from .evaluate import EvalSpec, check_lengths, evaluate_checkpoint, model_name
    from .store import ResultStore
    from .tasks.babilong import parse_lengths, parse_task_spec

    if a.passes is not None and any(c.startswith(("readagent:", "hf:")) for c in a.checkpoints):
        raise UserError("--passes applies to sleep checkpoints only, not to readagent:/hf: readers")
    if any(c.startswith("readagent:") for c in a.checkpoints):
        return _eval_readers(a)
    if a.task.split(":")[0].strip().lower() in ("flenqa", "ruler") or any(c.startswith("hf:") for c in a.checkpoints):
        return _eval_text(a)
    # validate every input before the store is created or any cell is computed
    tasks = [n for _, n in parse_task_spec(a.task)]
    spec = EvalSpec(tasks, parse_lengths(a.lengths), a.samples, a.batch_size, a.seed, a.haystack or _books_default() or None,
                    a.babi_dir, a.time_budget, a.force, a.max_samples_long, a.compile or a.compile_mode is not None,
                    a.compile_mode or "default", a.save_every)
    if a.haystack:
        from .tasks.text import load_haystack
        load_haystack(a.haystack)
    from .train import _device_ok, device_error

    if not _device_ok(a.device):
        raise UserError(f"--{device_error(a.device)}")
    loaded = _with_passes(a, [(model_name(c), *load_checkpoint(c)[:2]) for c in a.checkpoints])
    for _, model, _ in loaded:
        model.to(a.device)
    for (_, _, tok), c in zip(loaded, a.checkpoints):
        if tok is None:
            raise UserError(f"checkpoint {c} has no tokenizer.json; retrain it with `memlab train`")
        check_lengths(tok, spec)  # also reads --babi-dir
    with ResultStore(a.store) as store:
        for name, model, tok in loaded:
            emit = (lambda c: print(json.dumps(c.to_json()), flush=True)) if a.json else None
            evaluate_checkpoint(name, model, tok, spec, store, log=lambda m: print(m, file=sys.stderr), on_cell=emit)


def _eval_text(a):
    """Text tasks (flenqa:VARIANT, ruler:VARIANT) read by Hugging Face LMs (hf:PATH)."""
    from .evaluate import evaluate_text
    from .lm import PromptedLM
    from .store import ResultStore
    from .tasks.babilong import parse_lengths
    from .tasks.text import BookHaystack
    from .tasks.variants import load_variant

    family, sep, rest = a.task.partition(":")
    family = family.strip().lower()
    if family not in ("flenqa", "ruler") or not sep:
        raise UserError(f"hf:PATH models read text tasks only (flenqa:VARIANT or ruler:VARIANT), got --task {a.task!r}")
    books = a.haystack or _books_default()
    sentences = BookHaystack(books).sentences() if books else None
    variants = [v.strip() for v in rest.split(",") if v.strip()]
    tasks = [(f"{family}:{v}", *load_variant(f"{family}-{v}", sentences)) for v in variants]
    lengths = parse_lengths(a.lengths)
    ours = [c for c in a.checkpoints if not c.startswith("hf:")]
    if ours:  # memlab checkpoints, in their own tokens (answers teacher-forced, exact match)
        from .checkpoint import load_checkpoint
        from .evaluate import evaluate_token_text, model_name

        loaded = _with_passes(a, [(model_name(c), *load_checkpoint(c)[:2]) for c in ours])
        with ResultStore(a.store) as store:
            for name, model, tok in loaded:
                if tok is None:
                    raise UserError(f"checkpoint {name} has no tokenizer.json; retrain it with `memlab train`")
                emit = (lambda cell: print(json.dumps(cell.to_json()), flush=True)) if a.json else None
                evaluate_token_text(name, model.to(a.device), tok, [f"{family}-{v}" for v in variants], lengths, a.samples,
                                    a.seed, store, sentences, a.time_budget, a.force,
                                    log=lambda m: print(m, file=sys.stderr), on_cell=emit)
    with ResultStore(a.store) as store:
        for c in [c for c in a.checkpoints if c.startswith("hf:")]:
            lm = PromptedLM.load(c[3:] or "smollm2")
            name = f"hf-{lm.name}"
            emit = (lambda cell: print(json.dumps(cell.to_json()), flush=True)) if a.json else None
            evaluate_text(name, lm, tasks, lengths, a.samples, a.seed, store, log=lambda m: print(m, file=sys.stderr),
                          on_cell=emit)


def _eval_readers(a):
    """ReadAgent and its baselines (readagent:BACKEND) on BABILong or FLenQA as text."""
    from .readagent import HFBackend, ReadAgent, evaluate_readers, make_backend, reader_tasks
    from .store import ResultStore
    from .tasks.babilong import parse_lengths
    from .tasks.text import BookHaystack

    bad = [c for c in a.checkpoints if not c.startswith("readagent:")]
    if bad:
        raise UserError(f"{', '.join(bad)}: evaluate readagent:BACKEND readers in a run of their own")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    books = a.haystack or _books_default()
    if not books:
        raise UserError("readers need book text for the haystack: pass --haystack FILE... (e.g. ../shared/data/books/*.txt)")
    tasks = reader_tasks(a.task, BookHaystack(books).sentences(), a.babi_dir)
    lengths = parse_lengths(a.lengths)
    with ResultStore(a.store) as store:
        for c in a.checkpoints:
            spec = c[len("readagent:"):]
            backend = make_backend(spec, a.reader_model, a.api_key)
            context = a.context_words
            if context is None and isinstance(backend, HFBackend) and backend.lm.max_context:
                context = int(backend.lm.max_context * 0.6)
            agent = ReadAgent(backend, lookup=a.lookup, k=a.k, context_words=context)
            name = spec[3:] or "smollm2" if spec.startswith("hf:") else (a.reader_model or "endpoint")
            name = Path(name).name.replace(":", "-")
            emit = (lambda cell: print(json.dumps(cell.to_json()), flush=True)) if a.json else None
            evaluate_readers(name, agent, tasks, lengths, a.samples, a.seed, store, methods,
                             log=lambda m: print(m, file=sys.stderr), on_cell=emit)


def cmd_report(a):
    from .report import write_report

    if not Path(a.store).is_file():  # do not create an empty store just to report that it is empty
        raise UserError(f"results store {a.store} does not exist; run `memlab eval ... --store {a.store}` first, or pass --store")
    paths = write_report(a.store, a.out, analyses=a.analyses)
    for k, p in paths.items():
        print(f"{k}: {p}")


def cmd_demo(a):
    from .demo import run_demo

    run_demo(out=Path(a.out), retrain=a.train, quick=a.quick, log=lambda m: print(m, file=sys.stderr))


def cmd_babi(a):
    from .tasks.babi import format_babi, generate_babi

    sys.stdout.write(format_babi(generate_babi(a.task, a.n, a.seed)))


def cmd_readagent(a):
    from .readagent import ReadAgent, make_backend

    path = Path(a.file)
    if not path.is_file():
        raise UserError(f"document {path} not found; pass a text file")
    agent = ReadAgent(make_backend(a.backend, a.model, a.api_key, a.timeout), a.min_words, a.max_words, a.lookup, a.k)
    res = agent.read(path.read_text(encoding="utf-8", errors="replace"), a.question)
    out = {"answer": res.answer, "pages": len(res.pages), "expanded": res.expanded, "calls": res.calls,
           "compression_rate": round(res.compression_rate, 4), "fallbacks": dict(res.fallbacks)}
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


def cmd_models(a):
    from .models.registry import known_models

    for name in known_models():
        print(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memlab", description="Recurrent memory vs attention on ultra-long context.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model on a task (checkpoint directory with config.json + model.safetensors)")
    t.add_argument("--recipe", help="YAML training recipe (configs/*.yaml); options below override it")
    t.add_argument("--model", help="model name (see `memlab models`)")
    t.add_argument("--task", help="task spec, e.g. babilong:qa1 or babilong:qa1,qa2")
    t.add_argument("--model-args", help='JSON overrides of the model config, e.g. \'{"num_mem": 16}\'')
    t.add_argument("--lengths", help="curriculum lengths, e.g. 0,256,1k (0 = facts only)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--bptt-depth", type=int, help="truncate backprop to this many segments (default: full)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch threads (0 = default); may differ on --resume")
    t.add_argument("--device", help="cpu (default) or cuda; may differ on --resume")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="full-length segments through torch.compile (fixed-state models: rmt, armt, sleep, fam, titans mac/lmm; needs a C++ "
                        "compiler; 1.3-1.8x faster steps measured on 2 cores); may differ on --resume")
    t.add_argument("--haystack", nargs="+", metavar="FILE", help="haystack text files (default: procedural text)")
    t.add_argument("--babi-dir", help="original bAbI files for held-out evaluation")
    t.add_argument("--init-from", help="start from this checkpoint's weights and tokenizer (fresh optimizer, schedule)")
    t.add_argument("--out", help="checkpoint directory (default runs/<model>-<task>)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="accuracy, cost and state size of checkpoints across lengths")
    e.add_argument("checkpoints", nargs="+",
                   help="checkpoint directories; hf:PATH (a Hugging Face LM, text tasks); readagent:BACKEND (ReadAgent "
                        "and its baselines, BACKEND = hf:smollm2, hf:PATH or an OpenAI-compatible URL)")
    e.add_argument("--task", default="babilong:qa1")
    e.add_argument("--lengths", default="1k,4k,16k")
    e.add_argument("--samples", type=int, default=100)
    e.add_argument("--max-samples-long", type=int, help="cap samples at lengths >= 1M")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--haystack", nargs="+", metavar="FILE", help="haystack text files (default: the books in ../shared/data/books)")
    e.add_argument("--babi-dir", help="original-format bAbI files for the questions (default: generated held-out)")
    e.add_argument("--store", default="runs/results.sqlite", help="SQLite results store")
    e.add_argument("--time-budget", type=float, default=900.0, help="seconds per cell before the preflight refuses it")
    e.add_argument("--force", action="store_true", help="run cells the preflight refuses")
    e.add_argument("--json", action="store_true", help="print one JSON object per cell")
    e.add_argument("--passes", type=int, help="sleep checkpoints only: consolidation passes N per chunk (default: the "
                   "checkpoint's sleep_passes); cells are stored as NAME@N=N")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the models stream")
    e.add_argument("--compile", action="store_true",
                   help="stream fixed-state models (rmt, armt, sleep, fam, titans mac/lmm) through torch.compile: ~2x faster after a compile of "
                        "~15 s per batch size (needs a C++ compiler)")
    e.add_argument("--compile-mode", choices=["default", "reduce-overhead"],
                   help="implies --compile; reduce-overhead also records CUDA graphs on a GPU (one launch per segment for "
                        "a model bound by kernel launches; the same as default on the CPU)")
    e.add_argument("--save-every", type=float, default=300.0, metavar="SECONDS",
                   help="a cell running longer than this saves its progress (batches done, the state mid-stream) next to "
                        "the store every SECONDS and a re-run resumes it (0 = never)")
    e.add_argument("--methods", default="readagent,gists,bm25,full",
                   help="readagent:... only: the readers to compare on the same pages (readagent, gists, bm25, full)")
    e.add_argument("--reader-model", help="readagent:URL only: the model name the endpoint knows")
    e.add_argument("--api-key", help="readagent:URL only: bearer token")
    e.add_argument("--context-words", type=int,
                   help="readagent:... only: the most words one prompt carries (default: 60%% of an hf model's context "
                        "in tokens; no limit for an endpoint)")
    e.add_argument("--lookup", default="parallel", choices=["parallel", "sequential"], help="readagent:... only")
    e.add_argument("--k", type=int, default=2, help="readagent:... only: pages looked up (parallel) or retrieved (bm25)")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("report", help="Markdown + HTML report with plots from a results store")
    r.add_argument("--store", default="runs/results.sqlite")
    r.add_argument("--out", default="runs/report")
    r.add_argument("--analyses", metavar="DIR",
                   help="also write analyses.md/.html from the benchmark results in DIR (e.g. benchmarks/results)")
    r.set_defaults(fn=cmd_report)

    d = sub.add_parser("demo", help="the main job: attention vs RMT on qa1 from 1k to 1M tokens, cost curves, report")
    d.add_argument("--out", default="memlab-demo", help="output directory (store, report)")
    d.add_argument("--train", action="store_true", help="retrain the checkpoints from scratch instead of using the shipped ones")
    d.add_argument("--quick", action="store_true", help="a 2-minute smoke version (fewer samples, shorter lengths)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("babi", help="print generated bAbI stories in the original file format")
    b.add_argument("--task", type=int, default=1, help="1..5")
    b.add_argument("--n", type=int, default=10, help="questions")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_babi)

    ra = sub.add_parser("readagent", help="ReadAgent: read a long text with gists and look-ups, answer a question")
    ra.add_argument("file", help="a UTF-8 text file")
    ra.add_argument("--question", required=True)
    ra.add_argument("--backend", default="hf:smollm2", help="hf:smollm2, hf:PATH, or an OpenAI-compatible API root URL")
    ra.add_argument("--model", help="model name for an endpoint URL")
    ra.add_argument("--api-key", help="bearer token for an endpoint URL")
    ra.add_argument("--timeout", type=float, default=60.0, help="seconds per endpoint request (retried with back-off)")
    ra.add_argument("--lookup", default="parallel", choices=["parallel", "sequential"])
    ra.add_argument("--k", type=int, default=2, help="pages looked up at once (parallel)")
    ra.add_argument("--min-words", type=int, default=280)
    ra.add_argument("--max-words", type=int, default=600)
    ra.add_argument("--json", action="store_true")
    ra.set_defaults(fn=cmd_readagent)

    m = sub.add_parser("models", help="list the known models")
    m.set_defaults(fn=cmd_models)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_flush_denormal(True)  # tiny values in long recurrences otherwise hit the slow denormal path (measured 1.3x)
    try:
        args.fn(args)
    except (UserError, ValueError, OSError) as e:  # ValueError covers CheckpointError, HaystackError, bad specs; OSError a chat endpoint
        print(f"memlab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memlab {args.cmd}: interrupted; finished work is saved (re-run to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
