"""Several needles and one memory write per segment: a memlab RMT's accuracy on a RULER task with several needles
(niah_multivalue, niah_multiquery), split by whether two of the sample's needle values fall in the same segment.
The RMT writes its memory once, at the end of each segment, so two values in one segment must share one write.
Held-out samples (the seeds of `memlab eval`), exact match over all answer words, answer words fed in turn.

    python benchmarks/ruler_segments.py --checkpoint checkpoints/rmt-ruler-mix --lengths 1000,4000
    # -> benchmarks/results/ruler_segments.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import books, checkpoint_args, open_checkpoint, write_result  # noqa: E402

from memlab.metrics import wilson_interval  # noqa: E402
from memlab.stream import segment_bounds, stream  # noqa: E402
from memlab.tasks.text import load_haystack  # noqa: E402
from memlab.tasks.variants import TokenTextTask  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    checkpoint_args(p, lengths="1000,4000", samples=50, out="ruler_segments")
    p.add_argument("--variants", default="niah_multivalue,niah_multiquery")
    a = p.parse_args(argv)
    model, tok = open_checkpoint(a)
    seg_len = getattr(model.config, "num_mem", None) and model.config.segment_len
    if not seg_len:
        raise SystemExit(f"ruler_segments.py: {a.checkpoint} is a {model.config.kind}, not a segment-recurrent model "
                         "with memory tokens (rmt, armt)")
    sentences = load_haystack(books()).sentences()
    cells = []
    for variant in a.variants.split(","):
        task = TokenTextTask(f"ruler-{variant}", tok, sentences, seed_base=2**31)  # held-out seeds, as memlab eval's
        for L in (int(x) for x in a.lengths.split(",")):
            split = {"shared": [0, 0], "apart": [0, 0]}
            for i in range(a.samples):
                ids, targets = task.tokens(L, i)
                spans = task.text_sample(L, i).needle_token_spans
                if len(spans) < 2:
                    raise SystemExit(f"ruler_segments.py: {variant} has one needle; use a task with several")
                answer = [j for j, t in enumerate(targets) if t != -100]
                with torch.no_grad():
                    pred = stream(model, torch.tensor([ids]), answer).logits[0].argmax(-1).tolist()
                bounds = segment_bounds(len(ids), seg_len)
                # the value is a needle's second-last token ("... is: VALUE.")
                segs = [next(k for k, (s, e) in enumerate(bounds) if s <= end - 2 < e) for _, end in spans]
                cell = split["shared" if len(set(segs)) < len(segs) else "apart"]
                cell[0] += pred == [targets[j] for j in answer]
                cell[1] += 1
            for where, (right, n) in split.items():
                lo, hi = wilson_interval(right, n) if n else (None, None)
                cells.append({"variant": variant, "length": L, "values": where, "right": right, "samples": n,
                              "accuracy": right / n if n else None, "ci": [lo, hi]})
                print(f"{variant} {L} two values in one segment: {where}: {right}/{n}", flush=True)
    print(f"wrote {write_result(a.out, {'checkpoint': a.checkpoint, 'segment_len': seg_len, 'cells': cells})}")


if __name__ == "__main__":
    main()
