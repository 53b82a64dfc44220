"""`memlab train`: AdamW with warmup and cosine decay, a curriculum over lengths, held-out accuracy during
training, atomic checkpoints every `ckpt_every` steps, and exact resume (data is a function of (seed, step))."""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from . import dist
from .checkpoint import load_checkpoint, save_checkpoint
from .models.base import transfer_weights
from .models.registry import build_model, make_config
from .stream import model_device, unroll
from .tasks.variants import TokenTextTask, is_text_task, parse_text_spec


class TrainingDiverged(ValueError):
    """`max_nonfinite` updates in a row had a non-finite gradient; the checkpoint holds the last finite weights."""


@dataclass
class TrainConfig:
    model: str = "rmt"  # registry name
    model_args: dict = field(default_factory=dict)  # config overrides, e.g. {num_mem: 16, window: 256}
    task: str = "babilong:qa1"  # task spec; several qa numbers train on a mixture
    lengths: list = field(default_factory=lambda: [0, 256, 512, 1024])  # curriculum stages (0 = facts only)
    stage_steps: int = 500  # steps per curriculum stage; later stages also replay earlier lengths
    steps: int = 2000  # optimizer steps (the learning-rate schedule spans them)
    stop_at: int | None = None  # end the run after this step, with a checkpoint, as an interruption would (the
    # schedule still spans `steps`); like threads, taken from the given recipe on --resume
    batch_size: int = 32  # samples per step
    lr: float = 1e-3  # peak learning rate
    warmup: int = 100  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW weight decay
    grad_clip: float = 1.0  # max grad norm
    max_nonfinite: int = 10  # stop (checkpoint written, error raised) after this many updates in a row with a
    # non-finite gradient: the run has diverged, and skipping more updates only spends time (0 = never stop)
    bptt_depth: int | None = None  # None = full BPTT through every segment of a sample
    lm_weight: float = 0.0  # auxiliary next-token loss weight
    write_cost: float = 0.0  # weight of the mean memory write gate in the loss (rmt with mem_gate; see stream.unroll)
    train_pool: int = 50000  # generated training questions (seed-determined)
    max_facts: int | None = None  # cap facts per generated question (None = as in bAbI)
    ask_all: bool = False  # training samples also ask about every person (qa1, qa2) and object (qa2) after the question
    memory_only: float = 0.0  # fraction of training samples (> 1 segment) with every fact before the question's segment
    vocab_size: int = 2048  # tokenizer size: task words + most frequent haystack words
    haystack: list = field(default_factory=list)  # text files; empty = procedural haystack
    babi_dir: str | None = None  # original bAbI files for held-out evaluation (else generated held-out)
    eval_every: int = 250  # steps between held-out evaluations
    eval_samples: int = 128  # held-out samples per evaluation
    ckpt_every: int = 250  # steps between checkpoints
    seed: int = 0  # everything derives from this seed
    init_from: str | None = None  # checkpoint whose weights and tokenizer start this run (fresh optimizer and schedule)
    threads: int = 0  # torch threads (0 = leave default)
    device: str = "cpu"  # where the model trains: cpu, cuda, cuda:1 (like threads, this machine's own on --resume)
    compile: bool = False  # full-length segments through torch.compile (fixed-state models; needs a C++ compiler):
    # measured 1.3x (1k tokens, batch 32) to 1.8x (64k, BPTT 32) faster steps on 2 CPU cores; like threads, this
    # machine's own on --resume


def load_recipe(path) -> TrainConfig:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"recipe {p} not found; pass a YAML file such as configs/rmt-qa1.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {p} is not valid YAML: {e}") from e
    return train_config_from_dict(data, source=str(p))


def train_config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(data) - names)
    if bad:
        raise ValueError(f"{source}: unknown field(s) {bad}; known fields: {sorted(names)}")
    for f in dataclasses.fields(TrainConfig):
        if f.name in data and data[f.name] is not None:
            want = {"int": int, "float": (int, float), "str": str, "dict": dict, "list": list, "bool": bool}
            base = str(f.type).split(" ")[0].split("|")[0].strip()
            if base in want and not isinstance(data[f.name], want[base]) or (base == "int" and isinstance(data[f.name], bool)):
                raise ValueError(f"{source}: field {f.name!r} must be {base}, got {data[f.name]!r}")
    cfg = TrainConfig(**data)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig):
    checks = [
        (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
        (cfg.stop_at is None or 1 <= cfg.stop_at <= cfg.steps, f"stop_at must lie in [1, steps={cfg.steps}] or be null, got {cfg.stop_at}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.bptt_depth is None or cfg.bptt_depth >= 1, f"bptt_depth must be >= 1 or null, got {cfg.bptt_depth}"),
        (cfg.max_nonfinite >= 0, f"max_nonfinite must be >= 0 (0 = never stop), got {cfg.max_nonfinite}"),
        (cfg.write_cost >= 0, f"write_cost must be >= 0 (0 = no price on memory writes), got {cfg.write_cost}"),
        (0.0 <= cfg.memory_only <= 1.0, f"memory_only must be a fraction in [0, 1], got {cfg.memory_only}"),
        (_device_ok(cfg.device), device_error(cfg.device)),
        (len(cfg.lengths) >= 1 and all(int(x) >= 0 for x in cfg.lengths), f"lengths must be non-negative, got {cfg.lengths}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def _device_ok(name: str) -> bool:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        return False
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    return False


def device_error(name: str) -> str:
    return f"device {name!r} is not available here; use cpu" + (" (this PyTorch sees no CUDA GPU)" if name.startswith("cuda") else " or cuda")


class TaskData:
    """Training and held-out samples for a task spec, as padded token / target batches."""

    def __init__(self, cfg: TrainConfig, tokenizer=None):
        from .tasks.babi import generate_babi, read_babi_dir, task_words
        from .tasks.babilong import BabilongTask, parse_task_spec
        from .tasks.text import TokenizedHaystack, WordTokenizer, load_haystack

        self.cfg = cfg
        self.segment_len = make_config(cfg.model, vocab_size=cfg.vocab_size, **cfg.model_args).segment_len
        source = load_haystack(cfg.haystack or None)
        if is_text_task(cfg.task):
            return self._init_text(cfg, tokenizer, source)
        self.tasks = [n for _, n in parse_task_spec(cfg.task)]
        words = sorted({w for n in self.tasks for w in task_words(n)})
        if tokenizer is None:
            texts = source.sentences() if hasattr(source, "sentences") else []
            tokenizer = WordTokenizer.build(words, texts, max_size=cfg.vocab_size)
        self.tokenizer = tokenizer
        self.haystack = TokenizedHaystack(tokenizer, source)
        self.train, self.heldout = [], []
        for n in self.tasks:
            kw = {"max_facts": cfg.max_facts} if cfg.max_facts else {}
            pool = generate_babi(n, cfg.train_pool // len(self.tasks), seed=cfg.seed * 1000 + n, **kw)
            held = read_babi_dir(cfg.babi_dir, n) if cfg.babi_dir else generate_babi(n, 2000, seed=10**6 + n)
            self.train.append(BabilongTask(n, pool, tokenizer, self.haystack))
            self.heldout.append(BabilongTask(n, held, tokenizer, self.haystack))

    def _init_text(self, cfg, tokenizer, source):
        """FLenQA / RULER variants (flenqa:VARIANT,... / ruler:VARIANT,...): text samples in memlab tokens, the
        answer words teacher-forced (tasks.variants.TokenTextTask)."""
        from .tasks.text import TokenizedHaystack, WordTokenizer

        if any(int(x) == 0 for x in cfg.lengths):
            raise ValueError(f"{cfg.task}: text tasks have no facts-only form (length 0); give curriculum lengths in "
                             "tokens, each at least the task's key paragraphs or needles (e.g. 256)")
        names = parse_text_spec(cfg.task)
        sentences = source.sentences()
        if tokenizer is None:
            words = [w for n in names for w in TokenTextTask(n, None, sentences).words()]
            tokenizer = WordTokenizer.build(words, sentences, max_size=cfg.vocab_size)
        self.tokenizer = tokenizer
        self.haystack = TokenizedHaystack(tokenizer, source)
        self.tasks = names
        self.train = [TokenTextTask(n, tokenizer, sentences) for n in names]
        self.heldout = [TokenTextTask(n, tokenizer, sentences, seed_base=2**31) for n in names]

    def batch(self, tasks, length: int, n: int, seed: int, memory_only: float = 0.0):
        """n samples of `length` tokens (0 = facts only, left-padded) -> tokens [n, L], targets [n, L].
        With cfg.ask_all, training samples go on after their answer with the story's other state questions
        (`state_questions`), each answer fed in after its question (teacher forcing) and predicted.
        A `memory_only` fraction of samples longer than one segment put every fact before the question's
        segment: their answer can only come through the recurrent state."""
        return pad_batch(*self.pieces(tasks, length, n, seed, memory_only))

    def pieces(self, tasks, length: int, n: int, seed: int, memory_only: float = 0.0, take: range | None = None):
        """The token and target lists of `batch` (unpadded), only for the sample indices in `take` (default
        all): the others are skipped but draw the same random numbers, so a process of a distributed run
        builds exactly its share of the batch that one process would build."""
        from .tasks.babi import state_questions

        rng = random.Random(seed)
        seqs, tgts = [], []
        for i in range(n):
            task = tasks[rng.randrange(len(tasks))]
            before = length - self.segment_len if length > self.segment_len and rng.random() < memory_only else None
            sample_seed = rng.randrange(2**31)
            mine = take is None or i in take
            if isinstance(task, TokenTextTask):  # text tasks: no ask_all, no memory_only
                if mine:
                    toks, tg = task.tokens(length, sample_seed)
                    seqs.append(toks)
                    tgts.append(tg)
                continue
            if mine:
                s, question = self._sample(task, length, sample_seed, before)
            else:
                question = task.questions[self._question_index(task, sample_seed)]
            if self.cfg.ask_all and tasks is self.train:
                extra = [qa for qa in state_questions(question) if qa[0] != question.question]
                rng.shuffle(extra)
            if not mine:
                continue
            toks, tg = list(s.tokens), [-100] * len(s.tokens)
            tg[s.answer_pos] = s.answer
            if self.cfg.ask_all and tasks is self.train:
                answer = s.answer
                for q, a in extra:
                    toks += [answer] + self.tokenizer.encode(q)
                    answer = self.tokenizer.token_id(a)
                    tg += [-100] * (len(toks) - len(tg) - 1) + [answer]
            seqs.append(toks)
            tgts.append(tg)
        return seqs, tgts

    @staticmethod
    def _question_index(task, seed) -> int:
        return int(np.random.default_rng([seed, 0]).integers(len(task.questions)))  # as task.sample picks it

    def _sample(self, task, length, seed, facts_before=None):
        from .tasks.babilong import make_sample

        qi = self._question_index(task, seed)
        if length > 0:
            for before in (facts_before, None):
                try:
                    return task.sample(length, seed, before), task.questions[qi]
                except ValueError:  # facts do not fit before `before` / in `length`: relax, then facts only
                    pass
        return make_sample(task.questions[qi], 0, task.tokenizer, None, np.random.default_rng([seed, 1])), task.questions[qi]


def pad_batch(seqs, tgts, length: int | None = None):
    """Left-pad token / target lists to `length` (default: the longest) -> tokens [n, L], targets [n, L]."""
    L = length or max(map(len, seqs))
    x = torch.zeros(len(seqs), L, dtype=torch.long)
    y = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (t, g) in enumerate(zip(seqs, tgts)):
        x[i, L - len(t) :] = torch.tensor(t)
        y[i, L - len(g) :] = torch.tensor(g)
    return x, y


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def length_for(cfg: TrainConfig, step: int, rng: random.Random) -> int:
    stage = min(step // max(cfg.stage_steps, 1), len(cfg.lengths) - 1)
    # half the batches at the current stage, half replaying earlier stages (keeps short lengths solved)
    return int(cfg.lengths[stage] if stage == 0 or rng.random() < 0.5 else cfg.lengths[rng.randrange(stage)])


@torch.no_grad()
def evaluate_heldout(model, data: TaskData, length: int, n: int, seed: int = 12345, batch: int = 32,
                     memory_only: bool = False, tasks=None, compile: bool = False) -> float:
    """Held-out accuracy at `length`: the share of samples whose every answer word is right (as `memlab eval`
    scores); memory_only: every fact before the question's segment; tasks: a subset of data.heldout (default:
    all, mixed); compile: as unroll's."""
    model.eval()
    correct = total = 0
    rank, world = dist.rank_world() if dist.active() else (0, 1)
    for k, b in enumerate(range(0, n, batch)):
        if k % world != rank:  # distributed: the processes take turns over the batches
            continue
        x, y = data.batch(tasks or data.heldout, length, min(batch, n - b), seed + b, memory_only=float(memory_only))
        _, acc, cnt = unroll(model, x, y, compile=compile, per_sample=True)
        correct += acc * cnt
        total += cnt
    correct, total = dist.all_sum(correct, total, device=model_device(model))
    model.train()
    return correct / max(total, 1)


def train(cfg: TrainConfig, out_dir, resume: bool = False, progress: bool = True, log=print, until: int | None = None) -> dict:
    """Train and write checkpoints to out_dir; `until` stops (with a checkpoint) after that step, as an
    interruption would. Returns the training history.
    Under torchrun (WORLD_SIZE > 1) every process takes its share of each step's batch, DistributedDataParallel
    averages the gradients (weighted so that the update equals one process's on the whole batch), held-out
    batches are shared out, and process 0 alone writes checkpoints and the progress bar."""
    validate(cfg)
    rank, world = dist.rank_world()
    if world > cfg.batch_size:
        raise ValueError(f"{world} processes share a batch of {cfg.batch_size} samples: each needs at least one; "
                         f"raise batch_size to >= {world} or start fewer processes")
    device, created = dist.setup(cfg.device)
    # compiled, the embedding's backward (a scatter-add) sums in a varying order unless deterministic algorithms are
    # on; with them an interrupted compiled run resumes to exactly the uninterrupted one (as an eager run does)
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if cfg.compile:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        out = _train(cfg, out_dir, resume, progress and rank == 0, log if rank == 0 else (lambda m: None), until,
                     device, rank, world)
        if created:  # every process past its last collective and rank 0's last checkpoint before any tears down
            # (a process that tore gloo down while its peer still wrote aborted at exit, once in ~10 CI runs)
            torch.distributed.barrier()
        return out
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        if created:
            torch.distributed.destroy_process_group()


class _Unroll(torch.nn.Module):
    """The whole training unroll as one forward, so that DistributedDataParallel sees one forward per backward."""

    def __init__(self, model, compile: bool = False):
        super().__init__()
        self.model, self.compile = model, compile

    def forward(self, x, y, bptt_depth=None, lm_weight=0.0, write_cost=0.0):
        return unroll(self.model, x, y, bptt_depth, lm_weight=lm_weight, write_cost=write_cost, compile=self.compile)


def _train(cfg, out_dir, resume, progress, log, until, device, rank, world) -> dict:
    from tqdm import tqdm

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    state = None
    if resume and (out_dir / "trainer_state.pt").is_file():
        model, tokenizer, state = load_checkpoint(out_dir, with_trainer_state=True)
        saved = train_config_from_dict({**state["train_config"], "threads": cfg.threads, "device": cfg.device,  # this machine's
                                        "compile": cfg.compile, "stop_at": cfg.stop_at})
        if dataclasses.asdict(saved) != dataclasses.asdict(cfg):
            log(f"resume: using the training config saved in {out_dir} (the given one differs)")
            cfg = saved
        data = TaskData(cfg, tokenizer)
    else:
        if resume:
            log(f"resume: no checkpoint in {out_dir}; starting from scratch")
        if cfg.init_from:
            model, tokenizer, _ = load_checkpoint(cfg.init_from)
            want = make_config(cfg.model, vocab_size=model.config.vocab_size, **cfg.model_args)
            added = {k for k in getattr(model, "warm_start_fields", ()) if getattr(want, k, False) and not getattr(model.config, k, False)}
            if model.config.kind != want.kind or added:  # another kind or a new module: the weights both have carry over
                new = build_model(want)
                taken, fresh = transfer_weights(model, new)
                log(f"init_from {cfg.init_from}: {model.config.kind} -> {want.kind}: {len(taken)} tensors copied, "
                    f"{len(fresh)} new ({', '.join(fresh)})")
                model = new
            # the segment length may change (positions restart every segment; no weight depends on it)
            diff = {k: (v, getattr(model.config, k, None)) for k, v in dataclasses.asdict(want).items()
                    if getattr(model.config, k, None) != v and k != "segment_len"}
            if tokenizer is None or diff:
                raise ValueError(f"init_from {cfg.init_from}: its model does not match this recipe (field: (recipe, checkpoint) {diff}"
                                 f"{', no tokenizer' if tokenizer is None else ''}); make model/model_args equal to its config.json")
            from .tasks.babi import task_words
            from .tasks.babilong import parse_task_spec

            if is_text_task(cfg.task):
                from .tasks.text import load_haystack

                sentences = load_haystack(cfg.haystack or None).sentences()
                words = [w for n in parse_text_spec(cfg.task) for w in TokenTextTask(n, None, sentences).words()]
            else:
                words = [w for _, n in parse_task_spec(cfg.task) for w in task_words(n)]
            grown = tokenizer.extended(words)
            if len(grown) > len(tokenizer):  # a new task's words: grow the embedding
                log(f"init_from {cfg.init_from}: {len(grown) - len(tokenizer)} new task words {grown.vocab[len(tokenizer):]}")
                model.grow_vocab(len(grown))
                tokenizer = grown
            if want.segment_len != model.config.segment_len:
                log(f"init_from {cfg.init_from}: segment length {model.config.segment_len} -> {want.segment_len}")
                model.config.segment_len = want.segment_len
            data = TaskData(cfg, tokenizer)
        else:
            data = TaskData(cfg)
            model = build_model(make_config(cfg.model, vocab_size=len(data.tokenizer), **cfg.model_args))
    if cfg.threads:  # the machine's threads, shared by the processes that run on it
        torch.set_num_threads(max(1, cfg.threads // dist.local_world()[1]))
    if cfg.compile and not getattr(model, "fixed_state", False):
        raise ValueError(f"compile: {cfg.model}'s state grows with the context (a new shape, so a new compile, at every "
                         "segment); set compile: false")
    model.to(device)
    run = _Unroll(model, cfg.compile)
    if world > 1:
        # with truncated BPTT the first segments run without a graph: the initial state's weights may get no gradient
        run = torch.nn.parallel.DistributedDataParallel(run, find_unused_parameters=cfg.bptt_depth is not None)
        log(f"distributed: {world} processes ({torch.distributed.get_backend()}), {cfg.batch_size} samples per step in all")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    history = {"step": [], "loss": [], "train_acc": [], "eval": []}
    start = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history, start = state["history"], state["step"]
    seconds = state["seconds"] if state else 0.0

    def checkpoint(step):
        ts = {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "history": history, "step": step,
              "train_config": dataclasses.asdict(cfg), "seconds": seconds}
        info = {"train_config": dataclasses.asdict(cfg), "step": step, "train_seconds": round(seconds, 1),
                "params": model.num_params(), "final_eval": history["eval"][-1] if history["eval"] else None}
        save_checkpoint(out_dir, model, data.tokenizer, ts, info)

    # fault injection for tests of distributed resume: MEMLAB_FAIL_AT="RANK:STEP" kills that process after that step
    fail_at = tuple(int(v) for v in os.environ["MEMLAB_FAIL_AT"].split(":")) if os.environ.get("MEMLAB_FAIL_AT") else None
    model.train()
    if cfg.stop_at is not None:
        until = cfg.stop_at if until is None else min(until, cfg.stop_at)
    end = cfg.steps if until is None else min(cfg.steps, until)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress, dynamic_ncols=True)
    ema_acc, toks, t_last, bad_run = None, 0, time.time(), 0
    for step in bar:
        t0 = time.time()
        rng = random.Random(cfg.seed * 7919 + step)
        length = length_for(cfg, step, rng)
        seqs, tgts = data.pieces(data.train, length, cfg.batch_size, rng.randrange(2**31), cfg.memory_only,
                                 take=dist.shard(cfg.batch_size, rank, world) if world > 1 else None)
        # every process pads to the longest sample of the whole batch: segment boundaries fall where they would
        # in one process
        x, y = pad_batch(seqs, tgts, dist.all_max(max(map(len, seqs)), device) if world > 1 else None)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss, acc, count = run(x, y, cfg.bptt_depth, cfg.lm_weight, cfg.write_cost)
        opt.zero_grad(set_to_none=True)
        if world > 1:  # DDP averages gradients over processes: weight each by its share of the answers
            loss_sum, correct, total = dist.all_sum(loss.item() * count, acc * count, count, device=device)
            weight = count * world / max(total, 1) if cfg.lm_weight == 0 and cfg.write_cost == 0 else 1.0  # else: mean of means
            (loss * weight).backward()
            loss, acc = torch.tensor(loss_sum / max(total, 1)), correct / max(total, 1)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(norm):
            opt.step()
            bad_run = 0
        else:  # a non-finite loss or gradient (e.g. a diverging inner memory): skip the update, keep the weights
            history.setdefault("skipped", []).append(step)
            bad_run += 1
            (bar.write if progress else log)(f"step {step + 1}: non-finite gradient, update skipped "
                                             f"({len(history['skipped'])} so far)")
        seconds += time.time() - t0
        toks += x.numel() * world
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        history["step"].append(step)
        history["loss"].append(round(loss.item(), 4))
        history["train_acc"].append(round(acc, 4))
        if time.time() - t_last > 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ema_acc:.2f}", L=length, tok_s=f"{toks / (time.time() - t_last):.0f}")
            toks, t_last = 0, time.time()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            cur = int(cfg.lengths[min(step // max(cfg.stage_steps, 1), len(cfg.lengths) - 1)])
            acc_h = evaluate_heldout(model, data, cur, cfg.eval_samples, compile=cfg.compile)
            row = {"step": done, "length": cur, "heldout_acc": round(acc_h, 4), "seconds": round(seconds, 1)}
            msg = f"step {done}: held-out accuracy {acc_h:.3f} at length {cur}"
            if cur > data.segment_len and not is_text_task(cfg.task):  # also with every fact before the question's segment
                row["heldout_memory_only_acc"] = round(evaluate_heldout(model, data, cur, cfg.eval_samples, memory_only=True,
                                                                              compile=cfg.compile), 4)
                msg += f", {row['heldout_memory_only_acc']:.3f} with every fact before the question's segment"
            if len(data.tasks) > 1:  # each task alone, eval_samples / tasks samples each (at least 16)
                per = max(16, cfg.eval_samples // len(data.tasks))
                row["heldout_acc_per_task"] = {(n if isinstance(n, str) else f"qa{n}"): round(evaluate_heldout(model, data, cur, per, tasks=[t], compile=cfg.compile), 4)
                                               for n, t in zip(data.tasks, data.heldout)}
                msg += " (" + ", ".join(f"{k} {v:.2f}" for k, v in row["heldout_acc_per_task"].items()) + ")"
            history["eval"].append(row)
            (bar.write if progress else log)(f"{msg} ({seconds:.0f}s of training)")
        diverged = cfg.max_nonfinite and bad_run >= cfg.max_nonfinite
        if (done % cfg.ckpt_every == 0 or done == cfg.steps or done == until or diverged) and rank == 0:
            checkpoint(done)
        if diverged:
            raise TrainingDiverged(
                f"the last {bad_run} updates (steps {done - bad_run + 1}-{done}) had a non-finite gradient, so the run "
                f"has diverged and was stopped; {out_dir} holds its weights at step {done}, unchanged since step "
                f"{done - bad_run}. Gradients through the recurrent state may explode (`python benchmarks/grad_depth.py "
                f"{out_dir}` measures them against the BPTT depth): retrain from an earlier stage with a lower lr or a "
                f"shorter bptt_depth, or set max_nonfinite: 0 to skip such updates without stopping")
        if done == until:
            break
        if fail_at == (rank, done):  # fault injection (tests): this process dies here, without cleaning up
            os._exit(17)
    return history
