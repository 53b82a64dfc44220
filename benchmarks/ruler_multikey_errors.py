"""What a memlab checkpoint answers on RULER's multi-key needles (niah_multikey: several needles with different
keys, one asked): the right value, the value of another needle (it stored the values but did not match the key),
or some other word. Held-out samples, the model's most likely next word after the question.

With `--variant vt_2chains` (variable tracking with several chains; the answer is every variable of the asked
value's chain), the first answer word picks the chain: it is counted as right, as a variable of another chain
(the chains are stored but the asked one is not found), or as another word; the later words are teacher-forced,
and `rest_right` counts the samples whose remaining words are all right given the first.

With `--heads` (attention models, `transformer`): where each head's strongest attention from the answer position
lands: on the asked needle's value, on another needle's value, on another needle token, on the question, or in
the haystack. A model that matches keys has a head on the asked value; one that copies without the key spreads
its value heads over all four.

    python benchmarks/ruler_multikey_errors.py --checkpoint runs/rmt-ruler-multikey --lengths 128,1000
    # -> benchmarks/results/ruler_multikey_errors.json
    python benchmarks/ruler_multikey_errors.py --checkpoint runs/tf-multikey --lengths 128 --heads --out NAME
    python benchmarks/ruler_multikey_errors.py --checkpoint runs/sleep-vt --variant vt_2chains --lengths 512,1000 --out NAME
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import books, checkpoint_args, open_checkpoint, write_result  # noqa: E402

from memlab.analysis.retrieval_heads import answer_with_heads, memlab_heads  # noqa: E402
from memlab.stream import stream  # noqa: E402
from memlab.tasks.text import load_haystack  # noqa: E402
from memlab.tasks.variants import TokenTextTask  # noqa: E402


LANDINGS = ("asked_value", "other_value", "other_needle_token", "question", "haystack")


def landing(pos: int, sample, ids, tok) -> str:
    """Where token position `pos` lies: a needle's value word (the asked one or another), another needle token,
    the question (after the last needle), or the haystack."""
    for a, b in sample.needle_token_spans:
        if a <= pos < b:
            if pos == b - 2:  # "... is : VALUE ." : the value is the needle's second-last token
                return "asked_value" if tok.vocab[ids[pos]] == sample.answers[0] else "other_value"
            return "other_needle_token"
    return "question" if pos >= sample.length - len(tok.encode(sample.question)) else "haystack"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    checkpoint_args(p, lengths="128,1000", samples=100, out="ruler_multikey_errors")
    p.add_argument("--variant", default="niah_multikey")
    p.add_argument("--heads", action="store_true", help="also count where each head's top attention lands (transformer)")
    a = p.parse_args(argv)
    model, tok = open_checkpoint(a)
    if a.heads and model.config.kind != "transformer":
        raise SystemExit(f"ruler_multikey_errors.py: --heads reads the attention of a plain transformer; {a.checkpoint} "
                         f"is a {model.config.kind} (its memory tokens shift the positions); drop --heads")
    sentences = load_haystack(books()).sentences()
    task = TokenTextTask(f"ruler-{a.variant}", tok, sentences, seed_base=2**31)  # held-out seeds, as memlab eval's
    rows = []
    for L in (int(x) for x in a.lengths.split(",")):
        vt = a.variant.startswith("vt")
        counts = ({"right": 0, "another_chains_variable": 0, "other_word": 0, "rest_right": 0, "all_right": 0} if vt
                  else {"right": 0, "another_needles_value": 0, "other_word": 0})
        landings = [[dict.fromkeys(LANDINGS, 0) for _ in range(model.config.n_heads)] for _ in range(model.config.n_layers)]
        for s in range(a.samples):
            sample = task.text_sample(L, s)
            if vt:
                if a.heads:
                    raise SystemExit("ruler_multikey_errors.py: --heads reads one answer word; drop it for vt")
                ids, targets = task.tokens(L, s)
                pos = [j for j, t in enumerate(targets) if t != -100]
                with torch.no_grad():
                    pred = stream(model, torch.tensor([ids]), pos).logits[0].argmax(-1).tolist()
                want = [targets[j] for j in pos]
                chains = {w for n in sample.meta["needles"] for w in re.findall(r"VAR (\w+)", n)} - set(sample.answers)
                first = tok.vocab[pred[0]]
                counts["right" if pred[0] == want[0] else "another_chains_variable" if first in chains else "other_word"] += 1
                counts["rest_right"] += pred[1:] == want[1:]
                counts["all_right"] += pred == want
                continue
            if len(sample.answers) != 1:
                raise SystemExit(f"ruler_multikey_errors.py: {a.variant} asks for {len(sample.answers)} values; "
                                 "use a variant that asks for one (niah_multikey)")
            ids, _ = task.tokens(L, s)
            values = [n.rsplit(": ", 1)[1].rstrip(".") for n in sample.meta["needles"]]
            if a.heads:
                with memlab_heads(model) as ctl:
                    word = tok.vocab[answer_with_heads(model, ctl, ids[:L], set())[0]]
                    for layer, top in ctl.top.items():
                        for h, pos in enumerate(top.tolist()):
                            landings[layer][h][landing(pos, sample, ids, tok)] += 1
            else:
                with torch.no_grad():
                    word = tok.vocab[int(stream(model, torch.tensor([ids]), [L - 1]).logits[0, -1].argmax())]
            key = ("right" if word == sample.answers[0] else "another_needles_value" if word in values else "other_word")
            counts[key] += 1
        rows.append({"length": L, "samples": a.samples, **counts, **({"head_landings": landings} if a.heads else {})})
        print(f"{L}: {counts}", flush=True)
        for layer, heads in enumerate(landings if a.heads else []):
            for h, c in enumerate(heads):
                print(f"  layer {layer} head {h}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v), flush=True)
    print(f"wrote {write_result(a.out, {'checkpoint': a.checkpoint, 'variant': a.variant, 'cells': rows})}")


if __name__ == "__main__":
    main()
