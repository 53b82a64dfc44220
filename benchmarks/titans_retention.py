"""How far a Titans memory carries a fact. Per layer, over BABILong qa1 samples streamed eagerly: the forgetting
gate alpha_t and the inner step theta_t on haystack tokens and on fact tokens, and for each supporting fact the
retention until the question, log R = sum_{t after the fact} log(1 - alpha_t): the share of the memory's weights
that the forgetting alone leaves of what was there when the fact was written (momentum and later writes aside;
e^-1 = 0.37). With write_skip, a token that does not write keeps the memory exactly (alpha_t counts as 0).

With --ablate-forgetting every alpha_t is set to 0 (a diagnostic, not a model): if accuracy at long lengths
rises, the forgetting gate is what drops the facts; if not, something else does (later writes, drift).

    python benchmarks/titans_retention.py --checkpoints checkpoints/titans-qa1 runs/titans-qa1-stage3 \\
        --lengths 65536,1000000 --samples 4 [--ablate-forgetting]   # -> benchmarks/results/titans_retention.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import titans_args, titans_checkpoints, write_result  # noqa: E402

from memlab.stream import stream  # noqa: E402


def _quantiles(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {f"q{q}": round(float(v), 3) for q, v in zip((10, 50, 90), np.percentile(x, [10, 50, 90]))} if x.size else {}


def retention(model, task, length: int, n: int, seed: int, ablate: bool) -> dict:
    """Stream n samples (one batch) with hooks on every block's memory gates; returns the accuracy and, per layer,
    the gates on haystack and fact tokens and the supporting facts' retention until the question."""
    mems = [b.memory for b in model.blocks]
    log_keep = [[] for _ in mems]  # per layer, per segment: log(1 - alpha_t) [B, T] (0 where the token did not write)
    thetas = [[] for _ in mems]
    skips = [[] for _ in mems]

    def gate_hook(i, mem):
        def hook(_m, _inp, out):  # out: the gate logits [B, T, 3] = (theta, eta, alpha)
            if ablate:
                out = out.clone()
                out[..., 2] = -1e4  # alpha = sigmoid(-1e4) = 0: nothing is forgotten
            g = torch.sigmoid(out.float())
            log_keep[i].append(torch.log1p(-g[..., 2].clamp(max=1 - 1e-7)))
            thetas[i].append(mem.max_lr * g[..., 0])
            return out if ablate else None
        return hook

    def skip_hook(i):
        def hook(_m, _inp, out):  # write_skip: the token writes where sigmoid(out) > 1/2
            skips[i].append((out.squeeze(-1) > 0).float())
        return hook

    hooks = []
    for i, mem in enumerate(mems):
        hooks.append(mem.gates.register_forward_hook(gate_hook(i, mem)))
        if mem.skip is not None:
            hooks.append(mem.skip.register_forward_hook(skip_hook(i)))
    samples = [task.sample(length, seed + i, lazy=True) for i in range(n)]
    try:
        with torch.no_grad():
            res = stream(model, [s.tokens for s in samples], [length - 1])
    finally:
        for h in hooks:
            h.remove()
    ok = [p == s.answer for p, s in zip(res.logits[:, 0].argmax(-1).tolist(), samples)]
    fact, hay = np.zeros((n, length), dtype=bool), np.ones((n, length), dtype=bool)
    for b, s in enumerate(samples):
        for a, e in s.fact_spans:
            fact[b, a:e] = True
        hay[b, s.question_span[0]:] = False  # the question is neither
    hay &= ~fact
    layers = []
    for i in range(len(mems)):
        lk = torch.cat(log_keep[i], 1).numpy().astype(np.float64)  # [B, L]
        th = torch.cat(thetas[i], 1).numpy()
        u = torch.cat(skips[i], 1).numpy() if skips[i] else np.ones_like(th)
        lk, th = lk * u, th * u  # a token that does not write leaves the weights exactly as they were
        after = np.cumsum(lk[:, ::-1], 1)[:, ::-1]  # after[b, t] = sum_{s >= t} log(1 - alpha_s)
        sup = [float(after[b, e] if e < length else 0.0) for b, s in enumerate(samples) for _, e in s.meta["supporting_spans"]]
        layers.append({
            "layer": i,
            "alpha_mean_haystack": float(-np.expm1(lk[hay]).mean()), "alpha_mean_facts": float(-np.expm1(lk[fact]).mean()),
            "theta_mean_haystack": float(th[hay].mean()), "theta_mean_facts": float(th[fact].mean()),
            "write_fraction_haystack": float(u[hay].mean()), "write_fraction_facts": float(u[fact].mean()),
            "log_retention_whole_sample": _quantiles(after[:, 0]),
            "log_retention_supporting_fact": _quantiles(sup),
            "log_retention_supporting_fact_per_sample": [round(v, 3) for v in sup]})
    return {"length": length, "samples": n, "seed": seed, "ablate_forgetting": ablate,
            "accuracy": round(float(np.mean(ok)), 3), "correct": [bool(x) for x in ok], "layers": layers}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    titans_args(p, samples=4, out="titans_retention")
    p.add_argument("--ablate-forgetting", action="store_true", help="set every alpha_t to 0 (a diagnostic)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name, model, task in titans_checkpoints(a.checkpoints, "titans_retention"):
        for L in [int(v) for v in a.lengths.split(",")]:
            row = {"checkpoint": name, **retention(model, task, L, a.samples, a.seed, a.ablate_forgetting)}
            rows.append(row)
            short = {k: v for k, v in row.items() if k != "layers"}
            print(short, [(x["alpha_mean_haystack"], x["log_retention_supporting_fact"]) for x in row["layers"]], flush=True)
    print(write_result(a.out, {"rows": rows}))


if __name__ == "__main__":
    main()
