"""The qa1 plateau study: why tiny from-scratch models stick at ~50% on bAbI qa1 and what breaks it.

Facts-only qa1 stories ("mary moved to the bathroom . ... where is mary ?"), unlimited fresh stories per
step (so nothing can be memorised), 1-10 facts, 4 people, 6 places. Held-out accuracy ("ev") is on fixed
stories with one question at the end. Logs of the runs reported in benchmarks/results/plateau_study/README.md
were produced by this script (runs A-G before the conv init became random: use --conv-init zero).

    python benchmarks/plateau_study.py --model rmt --conv 8 --rec 1          # the recipe: learns in ~300 steps
    python benchmarks/plateau_study.py --model rmt                            # plain: plateaus at ~0.5
"""
from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import torch

from memlab.models.registry import build_model, make_config
from memlab.stream import unroll

PEOPLE = ["mary", "john", "daniel", "sandra"]
PLACES = ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen"]
VERBS = [["moved", "to"], ["went", "to"], ["journeyed", "to"], ["travelled", "to"], ["went", "back", "to"]]
VOCAB = ["<pad>", "<unk>", "<sep>", ".", "?", "where", "is", "the"] + PEOPLE + PLACES + sorted({w for v in VERBS for w in v})
IX = {w: i for i, w in enumerate(VOCAB)}


def batch(rng, n, max_facts, n_questions=1, inline=0.0):
    """Left-padded tokens [n, L] and targets [n, L] (-100 except after each '?')."""
    xs, ys = [], []
    for _ in range(n):
        toks, tg, loc = [], [], {}
        for _ in range(rng.randint(1, max_facts)):
            p, pl = rng.choice(PEOPLE), rng.choice(PLACES)
            loc[p] = pl
            f = [p] + rng.choice(VERBS) + ["the", pl, "."]
            toks += f
            tg += [-100] * len(f)
            if inline and rng.random() < inline:  # a question asked (and answered) inside the story
                q = rng.choice(list(loc))
                toks += ["where", "is", q, "?", loc[q]]
                tg += [-100, -100, -100, IX[loc[q]], -100]
        qs = list(loc)
        rng.shuffle(qs)
        for q in qs[:n_questions]:
            toks += ["where", "is", q, "?"]
            tg += [-100, -100, -100, IX[loc[q]]]
        xs.append([IX[t] for t in toks])
        ys.append(tg)
    L = max(map(len, xs))
    x = torch.tensor([[0] * (L - len(t)) + t for t in xs])
    y = torch.tensor([[-100] * (L - len(t)) + t for t in ys])
    return x, y


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="rmt", choices=["rmt", "transformer"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--maxf", type=int, default=10, help="max facts per story")
    p.add_argument("--curr", type=int, default=0, help="fact curriculum: one more fact allowed every N steps")
    p.add_argument("--nq", type=int, default=1, help="questions at the end of each training story")
    p.add_argument("--inter", type=float, default=0.0, help="chance of an inline question after each fact")
    p.add_argument("--conv", type=int, default=0, help="short causal conv kernel (0 = none)")
    p.add_argument("--conv-init", choices=["random", "zero"], default="random")
    p.add_argument("--rec", type=int, default=0, help="1 = learned recency bias")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    cfg = make_config(a.model, vocab_size=len(VOCAB), d_model=128, n_layers=3, n_heads=4, segment_len=128, conv=a.conv, recency=bool(a.rec))
    m = build_model(cfg)
    if a.conv and a.conv_init == "zero":
        for blk in m.blocks:
            torch.nn.init.zeros_(blk.conv.weight)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
    rng, held = random.Random(0), [batch(random.Random(123 + i), a.bs, a.maxf) for i in range(4)]
    t0, ema = time.time(), 0.0
    for step in range(a.steps):
        lr = a.lr * min(1, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        maxf = a.maxf if not a.curr else min(a.maxf, 1 + step // a.curr)
        x, y = batch(rng, a.bs, maxf, a.nq, a.inter)
        loss, acc, _ = unroll(m, x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        ema = 0.95 * ema + 0.05 * acc
        if step % 100 == 0 or step == a.steps - 1:
            with torch.no_grad():
                m.eval()
                ev = np.mean([unroll(m, hx, hy)[1] for hx, hy in held])
                m.train()
            print(f"{step} loss {loss.item():.3f} tr {ema:.3f} ev {ev:.3f} maxf {maxf} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
