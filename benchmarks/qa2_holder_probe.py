"""Does a model know who holds what in a qa2 story? qa2's first hop ("Where is the football?": who had it last)
is the state a next-word predictor needs at every "X dropped the ___": the object X holds. This probe reads
held-out qa2 stories of the original bAbI file, facts only, through a memlab checkpoint, and scores its next-word
prediction at each drop ("dropped / discarded / put down / left the ___") against the object there, beside the
share of drops where a guess among the story's objects so far would be right (1 / objects seen).

    python benchmarks/qa2_holder_probe.py runs/rmt-qa2-lm --stories 200     # -> prints one JSON line

Only meaningful for a model trained with the next-word loss (lm_weight > 0); others never learned to predict
story words and score near 0.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.stream import stream  # noqa: E402
from memlab.tasks.babi import read_babi_dir  # noqa: E402

DROP = re.compile(r"\b(dropped|discarded|put down|left) the (\w+)\.$")
TAKE = re.compile(r"\b(got|grabbed|picked up|took) the (\w+)\b")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--stories", type=int, default=200, help="held-out questions (each with its story so far)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok, _ = load_checkpoint(a.checkpoint)
    model.eval()
    questions = read_babi_dir(DATA / "babi", 2)[-a.stories:]  # the file's last stories (training used generated ones)
    right = total = 0
    guess = 0.0
    for q in questions:
        ids, where, objects = [], [], []
        for f in q.facts:
            enc = tok.encode(f)
            m = DROP.search(f)
            if m and objects:
                obj_at = len(ids) + len(enc) - 2  # the object's token: the sentence ends "the OBJ ."
                assert tok.decode([enc[-2]]).strip() == m.group(2), (f, tok.decode(enc))
                where.append((obj_at - 1, tok.token_id(m.group(2))))
                guess += 1 / len(objects)
            t = TAKE.search(f)
            if t and t.group(2) not in objects:
                objects.append(t.group(2))
            ids += enc
        if not where:
            continue
        with torch.no_grad():
            res = stream(model, np.asarray([ids]), [w for w, _ in where])
        pred = res.logits[0].argmax(-1).tolist()
        right += sum(p_ == o for p_, (_, o) in zip(pred, where))
        total += len(where)
    print(json.dumps({"checkpoint": a.checkpoint, "stories": len(questions), "drops": total,
                      "object_predicted": round(right / max(total, 1), 4),
                      "guess_among_objects_seen": round(guess / max(total, 1), 4)}))


if __name__ == "__main__":
    main()
