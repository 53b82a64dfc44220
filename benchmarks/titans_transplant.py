"""Which Titans memory loses a BABILong qa1 fact between where it is written and the question, by transplant.

Each sample is streamed once (compiled) to the question's segment. On the way, right after the segment that holds
the last supporting fact (the one that answers), every layer's memory weights and momentum are copied out. The
question's segment is then run again from its real entering state with one change each:

  natural        nothing changed (the model's own answer)
  fact:k         layer k's memory as it was right after the fact's segment (its drift since then undone)
  fact:all       every layer's memory as it was then (the question as if it came right after the fact)
  empty:k        layer k's memory at its initial weights (does the answer use that memory at all?)

Convolution tails and the attention inside the segment are left as they are. If `natural` is wrong and `fact:k`
right, what layer k's memory did after the fact (forgetting, later writes) lost the answer. Besides right/wrong,
each variant's log-probability of the right answer (a finer signal on few samples), and how far each layer's
weights moved between the fact and the question, ||W_q - W_f|| / ||W_f||.

    python benchmarks/titans_transplant.py --checkpoints runs/titans-qa1-skip checkpoints/titans-qa1 \\
        --lengths 65536,1000000 --samples 8      # -> benchmarks/results/titans_transplant.json

Samples are BabilongTask.sample(L, seed + i) (books, real bAbI test file), as in titans_retention.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import titans_args, titans_checkpoints, write_result  # noqa: E402

from memlab.models.titans import TitansState  # noqa: E402
from memlab.stream import stream  # noqa: E402


class Window:
    """row[start:stop] of a token row (a numpy array or a lazy sample's spliced tokens), sliced lazily."""

    def __init__(self, row, start: int, stop: int):
        self.row, self.start, self.stop = row, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, sl):
        return self.row[self.start + sl.start: self.start + sl.stop]


def segment_end(t: int, length: int, seg: int) -> int:
    """End of the runner's segment that holds position t (`segment_bounds`: cut from the end of the sample)."""
    first = length % seg or min(seg, length)
    return first if t < first else first + ((t - first) // seg + 1) * seg


def _with(state: TitansState, b: int, layers: dict) -> TitansState:
    """state with sample b's memory weights and momenta of the given layers replaced: {layer: (W list, S list)}."""
    W = [[w.clone() for w in Wk] for Wk in state.W]
    S = [[s.clone() for s in Sk] for Sk in state.S]
    for k, (wk, sk) in layers.items():
        for j in range(len(W[k])):
            W[k][j][b] = wk[j]
            S[k][j][b] = sk[j]
    return TitansState(W, S, state.tails, state.keys, state.values, state.pos)


def transplant(model, task, length: int, n: int, seed: int) -> dict:
    seg = model.config.segment_len
    samples = [task.sample(length, seed + i, lazy=True) for i in range(n)]
    rows = [s.tokens for s in samples]
    last = [max(e for _, e in s.meta["supporting_spans"]) - 1 for s in samples]  # the answering fact's last token
    at = [segment_end(t, length, seg) for t in last]
    q_start = length - seg  # the state entering the question's segment
    if any(e > q_start for e in at):
        raise SystemExit(f"a supporting fact lies in the question's segment at length {length}; use longer samples")
    snaps, state, prev = {}, None, 0
    for e in sorted(set(at)) + [q_start]:
        if e > prev:
            state = stream(model, [Window(r, prev, e) for r in rows], [], state=state, compile=True).state
            prev = e
        for b in (b for b in range(n) if at[b] == e):
            snaps[b] = [([w[b].clone() for w in state.W[k]], [s[b].clone() for s in state.S[k]])
                        for k in range(len(state.W))]
    layers = len(state.W)
    empty = model.init_state(1)
    empties = [([w[0] for w in empty.W[k]], [s[0] for s in empty.S[k]]) for k in range(layers)]
    question = torch.as_tensor(np.stack([r[q_start:length] for r in rows]), dtype=torch.long)
    changes = {"natural": lambda b: {}, "fact:all": lambda b: dict(enumerate(snaps[b]))}  # sample -> {layer: memory}
    changes.update({f"fact:{k}": (lambda b, k=k: {k: snaps[b][k]}) for k in range(layers)})
    changes.update({f"empty:{k}": (lambda b, k=k: {k: empties[k]}) for k in range(layers)})
    out, logp = {}, {}
    with torch.inference_mode():
        for name, change in changes.items():
            preds, lps = [], []
            for b in range(n):
                h = model(question, _with(state, b, change(b)), return_logits=False).hidden[b, -1]
                z = model.logits(h[None, None])[0, 0].float()
                preds.append(int(z.argmax()))
                lps.append(float(z.log_softmax(-1)[samples[b].answer]))
            out[name] = [p == s.answer for p, s in zip(preds, samples)]
            logp[name] = lps

    def norm(ts):
        return float(sum(t.double().norm() ** 2 for t in ts)) ** 0.5

    drift = [[norm([w[b] - f for w, f in zip(state.W[k], snaps[b][k][0])]) / norm(snaps[b][k][0]) for k in range(layers)]
             for b in range(n)]
    return {"length": length, "samples": n, "seed": seed,
            "tokens_from_fact_to_question": [length - 1 - t for t in last],
            "accuracy": {k: round(sum(v) / n, 3) for k, v in out.items()},
            "correct": {k: [bool(x) for x in v] for k, v in out.items()},
            "answer_logprob_mean": {k: round(float(np.mean(v)), 3) for k, v in logp.items()},
            "answer_logprob": {k: [round(x, 3) for x in v] for k, v in logp.items()},
            "weight_drift_per_layer": [[round(x, 3) for x in d] for d in drift]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    titans_args(p, samples=8, out="titans_transplant")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name, model, task in titans_checkpoints(a.checkpoints, "titans_transplant", variants=("mac", "lmm")):
        for L in [int(v) for v in a.lengths.split(",")]:
            row = {"checkpoint": name, **transplant(model, task, L, a.samples, a.seed)}
            rows.append(row)
            print(name, L, row["accuracy"], flush=True)
    print(write_result(a.out, {"rows": rows}))


if __name__ == "__main__":
    main()
