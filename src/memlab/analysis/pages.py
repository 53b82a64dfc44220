"""The analyses page of the report: `memlab report --analyses benchmarks/results` adds analyses.md and
analyses.html beside the report, one section per benchmark result found there (retrieval heads, what memory
keeps, the FLenQA curve, the sleep model's accuracy against consolidation passes and what its passes keep and
drop, attention's cost curve, ReadAgent against its baselines, speed beside the peers, streaming at scale, every
shipped model on the demo's samples). Each section states its numbers from the result file (with its command and
date) and shows its plot; a result that is absent is skipped."""
from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    source: str  # result file, command and date
    notes: list = field(default_factory=list)  # sentences
    table: list = field(default_factory=list)  # rows; the first is the header
    image: str | None = None  # file name copied next to the page


def _load(d: Path, name: str) -> dict | None:
    p = d / name
    return json.loads(p.read_text()) if p.is_file() else None


def _source(name: str, r: dict) -> str:
    return f"{name} ({r.get('command', '?')}, {r.get('date', '?')[:10]})"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _retrieval(d: Path) -> list[Section]:
    out = []
    for name in ("retrieval_heads.json", "retrieval_heads_memlab.json"):
        r = _load(d, name)
        if r is None:
            continue
        model = r.get("model") or r.get("checkpoint")
        total = r["layers"] * r["heads"]
        s = Section(f"Retrieval heads: {model}", _source(name, r), image=name.replace(".json", ".png"))
        s.notes.append(f"{r['heads_above_threshold']} of {total} heads ({100 * r['share_above']:.1f}%) score above "
                       f"{r['threshold']} over {r['scoring_trials_right']} trials answered right of {r['scoring_trials']}.")
        s.notes.append("Top heads (layer, head, score): "
                       + ", ".join(f"({a}, {b}, {c:.2f})" for a, b, c in r["top_heads"][:5]) + ".")
        s.table.append(["masked heads (uniform attention)", "accuracy", "wrong answers", "of which still fluent"])
        for k, v in r["masking"].items():
            if "draws" in v:  # several random draws
                s.table.append([k, f"{v['accuracy_mean']:.2f} (mean of {len(v['draws'])} draws)", "", ""])
            else:
                fluent = v.get("wrong_but_fluent", v.get("wrong_but_a_place", ""))
                s.table.append([k, _pct(v["accuracy"]), str(v.get("wrong", "")), str(fluent)])
        out.append(s)
    return out


def _memory_keeps(d: Path) -> list[Section]:
    r = _load(d, "memory_keeps.json")
    if r is None:
        return []
    s = Section("What recurrent memory keeps", _source("memory_keeps.json", r), image="memory_keeps.png")
    s.notes.append(f"{r['task']} at {r['length']:,} tokens, {r['samples']} samples; measure: {r['measure']}.")
    s.table.append(["model", "fact / haystack update ratio", "samples above 1", "inside the write (fact / haystack)"])
    for m, v in r["models"].items():
        inner = "; ".join(f"{k.replace('_', ' ')} {x['ratio']:.2f}" for k, x in v.items()
                          if k.startswith(("per_token_", "write_gate_")) and isinstance(x, dict))
        s.table.append([m, f"{v['ratio']:.2f}", f"{v['share_of_samples_above_1']:.2f}", inner or "-"])
    if r.get("inner_measures"):
        s.notes.append(f"Inside the write: {r['inner_measures']}.")
    return [s]


def _flenqa(d: Path) -> list[Section]:
    """FLenQA curves: flenqa_curve.json (a Hugging Face model) and flenqa_curve_<name>.json (memlab checkpoints)."""
    out = []
    for name in ["flenqa_curve.json", *sorted(p.name for p in d.glob("flenqa_curve_*.json"))]:
        r = _load(d, name)
        if r is None:
            continue
        who = f"{r['model']} ({r['mode']})" if "model" in r else f"memlab checkpoint {r['checkpoint']}"
        s = Section(f"FLenQA: {who}", _source(name, r), image=name[:-5] + ".png")
        by_len: dict = {}
        for row in r["rows"]:
            by_len.setdefault(row["length"], []).append(row["accuracy"])
        s.table.append(["padding length (words)", "cells", "mean accuracy"])
        for L in sorted(by_len):
            s.table.append([f"{L:,}", str(len(by_len[L])), f"{sum(by_len[L]) / len(by_len[L]):.2f}"])
        # older files say samples_per_cell; flenqa_curve.py writes the samples of each row
        n = sorted({row["samples"] for row in r["rows"] if "samples" in row}) or [r.get("samples_per_cell", "?")]
        s.notes.append(f"{n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} samples per cell; chance is 0.50.")
        out.append(s)
    return out


def _sleep(d: Path) -> list[Section]:
    """Accuracy against consolidation passes (benchmarks/sleep_curve.py) for the shipped sleep checkpoints: each
    sleep_curve_*.json whose checkpoint lies under checkpoints/ (the other files are diagnostic runs' curves,
    read in sleep_vt/README.md). One row per task and length, one column per N, and the FLOPs each N costs."""
    out = []
    for p in sorted(d.glob("sleep_curve_*.json")):
        r = json.loads(p.read_text())
        if not str(r.get("checkpoint", "")).replace("\\", "/").startswith("checkpoints/"):
            continue
        passes = sorted({row["passes"] for row in r["rows"]})
        cells: dict = {}
        for row in r["rows"]:
            cells.setdefault((row["task"], row["length"]), {})[row["passes"]] = row
        s = Section(f"Sleep: accuracy against consolidation passes, {r['checkpoint']}", _source(p.name, r),
                    image=p.stem + ".png")
        s.table.append(["task @ length", *(f"N={n}" for n in passes)])
        for (task, length), by_n in sorted(cells.items()):
            s.table.append([f"{task} @ {length:,}", *(f"{by_n[n]['accuracy']:.2f} [{by_n[n]['ci_low']:.2f}, "
                                                       f"{by_n[n]['ci_high']:.2f}]" if n in by_n else "-" for n in passes)])
        first = next(iter(sorted(cells.items())))[1]
        if all("flops_sleep_per_sample" in first.get(n, {}) for n in passes):
            s.table.append(["consolidation FLOPs per sample (first row)",
                            *(f"{first[n]['flops_sleep_per_sample']:.2g}" for n in passes)])
        n = sorted({row["samples"] for row in r["rows"]})
        s.notes.append(f"{n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} samples per cell, 95% Wilson intervals; "
                       f"window (chunk) {r.get('window', '?')} tokens, evicted after its passes.")
        out.append(s)
    return out


def _sleep_hops(d: Path) -> list[Section]:
    """benchmarks/sleep_hops_probe.py: one memory asked about every variable of its chains after N passes; a table
    per length, hops from the value (rows) by N (columns)."""
    r = _load(d, "sleep_hops_probe.json")
    if r is None:
        return []
    out, lengths = [], sorted({row["length"] for row in r["rows"]})
    for L in lengths:
        rows = [row for row in r["rows"] if row["length"] == L]
        passes, depths = sorted({x["passes"] for x in rows}), sorted({x["depth"] for x in rows})
        acc = {(x["depth"], x["passes"]): x["accuracy"] for x in rows}
        s = Section(f"Sleep: what the passes keep and drop, {r['checkpoint']}, {L:,} tokens",  # one plot holds all lengths
                    _source("sleep_hops_probe.json", r), image="sleep_hops_probe.png" if L == lengths[0] else None)
        s.table.append(["hops from the value", *(f"N={n}" for n in passes)])
        s.table += [[str(dp), *(_pct(acc.get((dp, n))) for n in passes)] for dp in depths]
        s.notes.append(f"Chains of {r['hops']} hops; every variable of both chains asked ({rows[0]['asked']} questions "
                       "per cell); 0 hops: the variable whose assignment names the value.")
        out.append(s)
    return out


def _attention_cost(d: Path) -> list[Section]:
    r = _load(d, "attention_cost.json")
    if r is None:
        return []
    s = Section("Attention's cost to its limit", _source("attention_cost.json", r), image="attention_cost.png")
    lim = r["preflight"]["eval_defaults"]
    s.notes.append(f"Measured time per token fits {r['fit']['seconds_per_token']} s (L in tokens). The preflight refuses "
                   f"attention from {lim['refused_from_length']:,} tokens at eval defaults ({lim['reason']}); a single "
                   f"sample from {r['preflight']['one_sample']['refused_from_length']:,}.")
    s.table.append(["length", "attention: projected time", "KV cache", "RMT: time at its measured rate", "RMT state"])
    for L, p in r["projections"].items():
        s.table.append([f"{int(L):,}", f"{p['hours']} h", f"{p['kv_bytes'] / 2**30:.1f} GiB",
                        f"{p['rmt_seconds_at_measured_rate']} s", f"{p['rmt_state_bytes']:,} B"])
    return [s]


def _readagent(d: Path) -> list[Section]:
    r = _load(d, "readagent_babilong.json")
    if r is None:
        return []
    s = Section(f"ReadAgent against its baselines: {r['model']}", _source("readagent_babilong.json", r))
    s.table.append(["method", "task", "length", "n", "accuracy [95% CI]", "facts in context", "accuracy when all in",
                    "compression", "calls", "s/question"])
    for row in r["rows"]:
        got, when = row.get("needed_in_context"), row.get("accuracy_when_all_needed_in_context")
        s.table.append([row["method"], row["task"], f"{row['length']:,}", str(row["samples"]),
                        f"{row['accuracy']:.2f} [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}]",
                        "-" if got is None else f"{got:.2f}",
                        "-" if when is None else f"{when:.2f} (n={row['samples_with_all_needed_in_context']})",
                        f"{row['compression_rate']:.2f}", f"{row['calls_per_question']:.1f}",
                        f"{row['seconds_per_question']:.0f}"])
    return [s]


def _peers(d: Path) -> list[Section]:
    rows = []
    for name, peer in (("rmt_peer_speed.json", "recurrent-memory-transformer-pytorch"), ("titans_speed.json", "titans-pytorch")):
        r = _load(d, name)
        if r is None:
            continue
        for k, v in r["results"].items():
            rows.append([peer, k, f"{v['speedup']:.2f}x", _source(name, r)])
    if not rows:
        return []
    return [Section("Speed beside the peers (same configuration, one process)", "see each row",
                    table=[["peer", "measure", "memlab faster by", "source"], *rows])]


def _scale(d: Path) -> list[Section]:
    """Streaming at scale: the CPU's throughput and peak memory against length (streaming.json), and every
    cell of a million tokens or more from the GPU sessions (gpu_session*/results.json)."""
    out = []
    r = _load(d, "streaming.json")
    if r is not None:
        s = Section("Streaming cost against length (CPU)", _source("streaming.json", r))
        s.table.append(["model", "length", "batch", "segment", "compiled", "tokens/s", "state per sample", "peak RSS"])
        for m in ("rmt", "transformer"):
            for row in r.get(m, []):
                s.table.append([m, f"{row['length']:,}", str(row["batch"]), str(row.get("segment_len", "-")),
                                "yes" if row.get("compiled") else "no", f"{row['tokens_per_s']:,}",
                                f"{row['state_bytes_per_sample']:,} B", f"{row['peak_rss_bytes'] / 2**20:.0f} MiB"])
        out.append(s)
    rows = []

    def long_rows(cells, where):
        for c in cells:
            if c["length"] >= 1_000_000 and c.get("status", "ok") == "ok":
                rows.append([c["model"], f"{c['length']:,}", str(c["samples"]),
                             f"{c['accuracy']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]", f"{c['tokens_per_s']:,.0f}",
                             f"{c['state_bytes']:,} B", where(c)])

    for f in sorted(d.glob("gpu_session*/results.json")):
        g = json.loads(f.read_text())
        long_rows(g["cells"], lambda c: f"{f.parent.name} ({g['machine'].get('gpu', '?')}, {g['date'][:10]}"
                  + (", CUDA graphs)" if (c.get("extra") or {}).get("compile_mode") == "reduce-overhead" else ")"))
    for f in sorted(d.glob("streaming_100m/*.jsonl")):  # the long runs on this project's CPU, one cell a line
        long_rows([json.loads(x) for x in f.read_text().splitlines() if x.strip()],
                  lambda c: f"streaming_100m/{f.name} (CPU, {c.get('created', '?')[:10]})")
    if rows:
        out.append(Section("Recurrent models at a million tokens and beyond (qa1, book haystack)",
                           "gpu_session*/results.json and streaming_100m/*.jsonl (each row names its source; a "
                           "checkpoint name is the one shipped at that date: gpu_session's rmt-qa1 is RMT stage 3)",
                           notes=["The state is the same size at every length; attention's cost at these lengths is "
                                  "projected in the section on its cost curve."],
                           table=[["model", "length", "samples", "accuracy [95% CI]", "tokens/s", "state", "source"], *rows]))
    return out


# where each shipped model's evaluation on the demo's samples lives (the demo holds RMT and attention)
SIDE_BY_SIDE = ("demo", "armt", "fam", "titans", "sleep_qa1")


def _side_by_side(d: Path) -> list[Section]:
    """Every shipped model on the demo's qa1 samples, one row per model, one column per length, from
    demo/results.json and the per-model folders (armt, fam, titans, sleep_qa1: each copies the demo's cells beside its own).
    A model's cells are taken from the first folder that has them."""
    found, sources = {}, []
    for name in SIDE_BY_SIDE:
        r = _load(d, f"{name}/results.json")
        if r is None:
            continue
        sources.append(f"{name}/results.json ({r.get('date', '?')[:10]})")
        for c in r["cells"]:
            if c["task"] == "babilong:qa1":
                found.setdefault(c["model"], {}).setdefault(c["length"], c)
    if not found:
        return []
    lengths = sorted({n for cells in found.values() for n in cells})

    def entry(c):
        if c is None:
            return "-"
        if c.get("status", "ok") != "ok":
            return "refused"
        return f"{c['accuracy']:.2f} ({c['samples']})"

    table = [["model", *(f"{n:,}" for n in lengths), "state per sample (shortest to longest)"]]
    for model, cells in found.items():
        states = [cells[n]["state_bytes"] for n in sorted(cells) if cells[n].get("state_bytes")]
        state = "-" if not states else f"{states[0]:,} B" if len(set(states)) == 1 else f"{states[0]:,} B to {states[-1]:,} B"
        table.append([model, *(entry(cells.get(n)) for n in lengths), state])
    return [Section("Every shipped model on the demo's samples (qa1, book haystack, CPU)", "; ".join(sources),
                    notes=["Accuracy (samples) on the same held-out questions and haystack at each length; "
                           "'refused': attention's cost was over the demo's limits (its time or memory budget)."],
                    table=table)]


BUILDERS = (_retrieval, _memory_keeps, _flenqa, _sleep, _sleep_hops, _attention_cost, _readagent, _peers, _scale, _side_by_side)


def sections(results_dir) -> list[Section]:
    d = Path(results_dir)
    if not d.is_dir():
        raise ValueError(f"analyses directory {d} not found; pass the benchmarks' results folder (benchmarks/results)")
    return [s for b in BUILDERS for s in b(d)]


def write_analyses(results_dir, out_dir, write_text) -> dict[str, Path]:
    """analyses.md and analyses.html in out_dir (plots copied beside them); write_text(path, text) writes atomically."""
    secs = sections(results_dir)
    if not secs:
        raise ValueError(f"no analysis results in {results_dir} (expected files such as retrieval_heads.json)")
    out = Path(out_dir)
    for s in secs:
        if s.image and (Path(results_dir) / s.image).is_file():
            shutil.copyfile(Path(results_dir) / s.image, out / s.image)
        elif s.image:
            s.image = None
    md, e = ["# memlab analyses", ""], html.escape
    page = ["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8"><title>memlab analyses</title></head>',
            "<body>", "<h1>memlab analyses</h1>"]
    for s in secs:
        md += [f"## {s.title}", "", f"Source: {s.source}", ""] + [f"- {n}" for n in s.notes] + [""]
        page += [f"<h2>{e(s.title)}</h2>", f"<p>Source: {e(s.source)}</p>", "<ul>"] + [f"<li>{e(n)}</li>" for n in s.notes] + ["</ul>"]
        if s.table:
            md.append("| " + " | ".join(s.table[0]) + " |")
            md.append("|" + "---|" * len(s.table[0]))
            md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.table[1:]] + [""]
            page.append("<table border='1'><tr>" + "".join(f"<th>{e(c)}</th>" for c in s.table[0]) + "</tr>")
            page += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.table[1:]] + ["</table>"]
        if s.image:
            md += [f"![{s.title}]({s.image})", ""]
            page.append(f'<img src="{e(s.image)}" alt="{e(s.title)}" style="max-width:100%">')
    page += ["</body>", "</html>"]
    return {"analyses_md": write_text(out / "analyses.md", "\n".join(md) + "\n"),
            "analyses_html": write_text(out / "analyses.html", "\n".join(page) + "\n")}
