"""Retrieval heads of a real pretrained LM (Wu et al., arXiv:2404.15574): every head's retrieval score on needle
trials, the share above 0.1, a layer x head heatmap; then needle accuracy with the top-K retrieval heads masked
(uniform attention) against K random other heads, and how often a wrong answer is still fluent.

    python benchmarks/retrieval_heads.py            # SmolLM2-135M-Instruct: 30 layers x 9 heads
        # -> benchmarks/results/retrieval_heads.json, retrieval_heads.png

Needles are RULER-style (memlab.tasks.ruler, `niah_single`, a one-word value: SmolLM2-135M did not copy four-word
values) in book text at several lengths and depths; a head's hits are divided by the value's tokens, the part
copied. Scoring trials and masking trials use different seeds.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from memlab.analysis.retrieval_heads import greedy_with_heads, install, retrieval_heads, retrieval_scores  # noqa: E402
from memlab.lm import load_lm  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.tasks.ruler import RulerTask, score  # noqa: E402
from memlab.tasks.text import BookHaystack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(tok, sample):
    """(prompt ids, token positions of the needle's value) for a RULER sample, as a chat prompt."""
    msg = sample.text + "\nAnswer with the word only."
    key = re.search(r"for (\w+) mentioned", sample.question).group(1)
    # RULER's answer prefix: the reply starts by restating the question, so the next word is the copy
    text = tok.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True, tokenize=False)
    text += f"The special magic word for {key} is:"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    needle = sample.meta["needles"][0]  # "... for KEY is: VALUE."; the value is what the model copies
    a = text.find(needle) + needle.rfind(sample.answers[0])
    b = a + len(sample.answers[0])
    pos = {i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a}
    return enc["input_ids"], pos


def fluent(reply: str) -> bool:
    words = re.findall(r"[a-zA-Z]+", reply)
    return len(words) >= 2 and max(words.count(w) for w in words) <= 2


def run_trials(model, ctl, tok, trials, eos):
    out = []
    for s in trials:
        ids, needle = build(tok, s)
        gen, hits = greedy_with_heads(model, ctl, ids, needle, max_new_tokens=8, eos=eos)
        reply = tok.decode(gen, skip_special_tokens=True)
        out.append({"reply": reply, "correct": score(reply, s.answers) == 1.0, "hits": hits, "copied": len(needle),
                    "tokens": len(ids)})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--lengths", default="500,1000,2000")
    p.add_argument("--trials", type=int, default=30, help="scoring trials (spread over lengths and depths)")
    p.add_argument("--mask-trials", type=int, default=20)
    p.add_argument("--k", default="5,20", help="numbers of heads masked")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    books = sorted((ROOT.parent / "shared" / "data" / "books").glob("*.txt"))
    if not books:
        raise SystemExit("../shared/data/books not found")
    task = RulerTask("niah_single", BookHaystack(books).sentences(), noise="book", value_words=1)
    lengths = [int(x) for x in a.lengths.split(",")]
    model, tok = load_lm(a.model, attn_implementation="eager")
    ctl = install(model)
    eos = {t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}

    def trials(n, seed0):
        return [task.sample(lengths[i % len(lengths)], seed0 + i, depth=float((i * 0.37) % 1.0)) for i in range(n)]

    t0 = time.perf_counter()
    scored = run_trials(model, ctl, tok, trials(a.trials, 0), eos)
    good = [r for r in scored if r["correct"]]
    try:
        scores = retrieval_scores([(r["hits"], r["copied"], r["correct"]) for r in scored])  # [layers, heads]
    except ValueError as e:
        raise SystemExit(f"{e} (replies: {[r['reply'] for r in scored[:5]]}...)") from None
    L, H = scores.shape
    order = np.argsort(-scores, axis=None)
    above = retrieval_heads(scores)  # Wu et al.'s retrieval heads: score above 0.1
    share = len(above) / (L * H)
    print(f"{len(good)}/{len(scored)} scoring trials right; heads above 0.1: {len(above)} of {L * H} "
          f"({share:.1%}); top {[(int(i // H), int(i % H), round(float(scores.flat[i]), 3)) for i in order[:8]]}", flush=True)

    rng = np.random.default_rng(0)
    mask_trials = trials(a.mask_trials, 10_000)
    conditions = {"none": {}}
    for k in [int(x) for x in a.k.split(",")]:
        top = [divmod(int(i), H) for i in order[:k]]
        rest = [divmod(int(i), H) for i in order[k:]]
        rand = [rest[i] for i in rng.choice(len(rest), k, replace=False)]
        for name, heads in ((f"top{k}", top), (f"random{k}", rand)):
            m = {}
            for layer, h in heads:
                m.setdefault(layer, []).append(h)
            conditions[name] = m
    masking = {}
    for name, m in conditions.items():
        ctl.masked = m
        res = run_trials(model, ctl, tok, mask_trials, eos)
        n_ok = sum(r["correct"] for r in res)
        lo, hi = wilson_interval(n_ok, len(res))
        wrong = [r for r in res if not r["correct"]]
        masking[name] = {"heads": sorted([l, h] for l, hs in m.items() for h in hs), "accuracy": n_ok / len(res),
                         "ci_low": lo, "ci_high": hi, "wrong": len(wrong),
                         "wrong_but_fluent": sum(fluent(r["reply"]) for r in wrong),
                         "examples": [r["reply"] for r in wrong[:3]]}
        print(name, {k: v for k, v in masking[name].items() if k != "heads"}, flush=True)
    ctl.masked = {}
    heatmap(scores, RESULTS / "retrieval_heads.png", a.model)
    print(write_result("retrieval_heads", {
        "model": a.model, "layers": L, "heads": H, "scoring_trials": len(scored), "scoring_trials_right": len(good),
        "lengths": lengths, "threshold": 0.1, "heads_above_threshold": len(above), "share_above": share,
        "top_heads": [[int(i // H), int(i % H), round(float(scores.flat[i]), 4)] for i in order[:20]],
        "scores": np.round(scores, 4).tolist(), "masking": masking, "mask_trials": len(mask_trials),
        "seconds": round(time.perf_counter() - t0, 1)}))


def heatmap(scores, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 7))
    im = ax.imshow(scores, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"retrieval score, {title}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
