"""What a memlab checkpoint answers on RULER's multi-key needles (niah_multikey: several needles with different
keys, one asked): the right value, the value of another needle (it stored the values but did not match the key),
or some other word. Held-out samples, the model's most likely next word after the question.

    python benchmarks/ruler_multikey_errors.py --checkpoint runs/rmt-ruler-multikey --lengths 128,1000
    # -> benchmarks/results/ruler_multikey_errors.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import books, check_name, write_result  # noqa: E402

from memlab.checkpoint import load_checkpoint  # noqa: E402
from memlab.stream import stream  # noqa: E402
from memlab.tasks.text import load_haystack  # noqa: E402
from memlab.tasks.variants import TokenTextTask  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--variant", default="niah_multikey")
    p.add_argument("--lengths", default="128,1000")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="ruler_multikey_errors", help="results name: benchmarks/results/OUT.json")
    a = p.parse_args(argv)
    check_name(a.out)
    torch.set_num_threads(a.threads)
    model, tok, _ = load_checkpoint(a.checkpoint)
    model.eval()
    sentences = load_haystack(books()).sentences()
    task = TokenTextTask(f"ruler-{a.variant}", tok, sentences, seed_base=2**31)  # held-out seeds, as memlab eval's
    rows = []
    for L in (int(x) for x in a.lengths.split(",")):
        counts = {"right": 0, "another_needles_value": 0, "other_word": 0}
        for s in range(a.samples):
            sample = task.text_sample(L, s)
            if len(sample.answers) != 1:
                raise SystemExit(f"ruler_multikey_errors.py: {a.variant} asks for {len(sample.answers)} values; "
                                 "use a variant that asks for one (niah_multikey)")
            ids, _ = task.tokens(L, s)
            with torch.no_grad():
                word = tok.vocab[int(stream(model, torch.tensor([ids]), [L - 1]).logits[0, -1].argmax())]
            values = [n.rsplit(": ", 1)[1].rstrip(".") for n in sample.meta["needles"]]
            key = ("right" if word == sample.answers[0] else "another_needles_value" if word in values else "other_word")
            counts[key] += 1
        rows.append({"length": L, "samples": a.samples, **counts})
        print(f"{L}: {counts}", flush=True)
    print(f"wrote {write_result(a.out, {'checkpoint': a.checkpoint, 'variant': a.variant, 'cells': rows})}")


if __name__ == "__main__":
    main()
