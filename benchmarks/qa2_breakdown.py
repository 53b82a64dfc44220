"""Where a model stands on bAbI qa2, by kind of question: facts-only stories (no haystack), each with its asked
question and then every other state question (`state_questions`: each person's and each object's place, the
answers fed in after their questions, as training with `ask_all` does). Object questions are split by the
object's last event: still held (its place = the holder's latest place: two hops) or dropped (the holder's
place at the drop). Stories: freshly generated (seed 99, a pool no training recipe uses), full length (no
max_facts cap).

    python benchmarks/qa2_breakdown.py --checkpoints runs/qa2study/A runs/rmt-qa2
        # -> benchmarks/results/qa2_breakdown.json
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.metrics import wilson_interval  # noqa: E402
from memlab.stream import segment_bounds  # noqa: E402
from memlab.tasks.babi import GET_VERBS, OBJECTS, generate_babi, state_questions  # noqa: E402
from memlab.tasks.babilong import make_sample  # noqa: E402


def kind_of(question: str, facts) -> str:
    words = question.rstrip("?").split()
    if words[-1] not in OBJECTS:
        return "person"
    last = [f for f in facts if words[-1] in f.rstrip(".").split()][-1]
    return "object, held" if any(" " + v + " the " in last for v in GET_VERBS) else "object, dropped"


def breakdown(model, tok, n: int, seed: int = 99) -> dict:
    rows = []  # (tokens, [(position, answer id, kind, asked)])
    for i, q in enumerate(generate_babi(2, n, seed=seed)):
        s = make_sample(q, 0, tok, None, np.random.default_rng([seed, i]))
        toks, targets = list(s.tokens), [(s.answer_pos, s.answer, kind_of(q.question, q.facts), True)]
        answer = s.answer
        for question, a in state_questions(q):
            if question == q.question:
                continue
            toks += [answer] + tok.encode(question)
            answer = tok.token_id(a)
            targets.append((len(toks) - 1, answer, kind_of(question, q.facts), False))
        rows.append((toks, targets))
    right, total = Counter(), Counter()
    for toks, targets in rows:  # one story at a time: stories differ in length, and no padding enters the memory
        x = torch.tensor([toks])
        state, hidden = model.init_state(1), []
        with torch.no_grad():
            for a, b in segment_bounds(x.shape[1], model.config.segment_len):
                out = model(x[:, a:b], state, return_logits=False)
                state = out.state
                hidden.append(out.hidden)
            pred = model.logits(torch.cat(hidden, 1)[0]).argmax(-1)
        for pos, answer, kind, asked in targets:
            for key in (kind, f"{kind} ({'asked' if asked else 'other'})"):
                total[key] += 1
                right[key] += int(pred[pos] == answer)
    out = {}
    for key in sorted(total):
        lo, hi = wilson_interval(right[key], total[key])
        out[key] = {"questions": total[key], "accuracy": round(right[key] / total[key], 4),
                    "ci_low": round(lo, 4), "ci_high": round(hi, 4)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--stories", type=int, default=300, help="generated qa2 questions (one story prefix each)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for ck in args.checkpoints:
        model, tok, _ = load_checkpoint(ck)
        model.eval()
        results[Path(ck).name] = breakdown(model, tok, args.stories)
        print(Path(ck).name, results[Path(ck).name])
    print(write_result("qa2_breakdown", {"stories": args.stories, "checkpoints": results}))


if __name__ == "__main__":
    main()
