"""Report: heatmaps, cost curves and tables from a ResultStore, as PNG + Markdown + HTML.

    paths = write_report(ResultStore("results/memlab.sqlite"), "results/report")
    # {'accuracy_heatmap': .../accuracy_heatmap.png, 'state_bytes': ..., 'time_per_token': ...,
    #  'report_md': .../report.md, 'report_html': .../report.html}

Every file is written to a temporary file in out_dir and moved into place with os.replace, so a
reader never sees a half-written report. Plots use matplotlib's object API on the Agg canvas
(no pyplot, no global backend switch, no figures left open).
"""

from __future__ import annotations

import html
import math
import os
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Callable, Iterable

from memlab.store import Cell, ResultStore

OOB = "out_of_budget"


# ---------------------------------------------------------------------------------------------
# formatting helpers


def _trim(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def format_bytes(n: float | None) -> str:
    """Bytes in binary units: 512 -> '512 B', 1536 -> '1.5 KiB', 2**30 -> '1 GiB'. None -> '-'."""
    if n is None:
        return "-"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while i < len(units) - 1 and round(n, 1) >= 1024:
        n /= 1024
        i += 1
    return f"{sign}{_trim(n, 0 if i == 0 else 1)} {units[i]}"


def _format_si(n: float, suffixes: tuple[str, ...] = ("", "k", "M", "B", "T")) -> str:
    """3 significant digits with a thousands suffix: 1500 -> '1.5k', 11e6 -> '11M'."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    i = 0
    while i < len(suffixes) - 1 and float(f"{n:.3g}") >= 1000:
        n /= 1000
        i += 1
    s = f"{n:.3g}"
    if "e" in s:  # tiny fractional values; not expected for counts
        s = f"{n:.2e}"
    return f"{sign}{s}{suffixes[i]}"


def format_length(n: int) -> str:
    """Context length as in the BABILong figures: 1000 -> '1k', 1500 -> '1.5k', 11_000_000 -> '11M'."""
    return _format_si(n)


def _format_seconds(s: float | None) -> str:
    """Durations: 3.2e-5 -> '32 µs', 0.25 -> '250 ms', 12.3 -> '12.3 s', 7200 -> '2 h'."""
    if s is None:
        return "-"
    s = float(s)
    a = abs(s)
    if a == 0:
        return "0 s"
    for scale, unit in ((1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms")):
        if float(f"{a / scale:.3g}") < 1000:
            return f"{float(f'{s / scale:.3g}'):g} {unit}"
    if a < 120:
        return f"{float(f'{s:.3g}'):g} s"
    if a < 7200:
        return f"{_trim(s / 60, 1)} min"
    if a < 2 * 86400:
        return f"{_trim(s / 3600, 1)} h"
    return f"{_trim(s / 86400, 1)} d"


def _fmt(x: float | None, f: Callable[[float], str]) -> str:
    return "-" if x is None else f(x)


# ---------------------------------------------------------------------------------------------
# table content shared by Markdown and HTML

_COLUMNS = ["model", "task", "length", "samples", "accuracy [95% CI]", "s/sample", "tokens/s",
            "state", "peak RSS", "status"]


def _describe_estimate(est: dict | None) -> str:
    if not est:
        return ""
    parts = []
    rest = dict(est)
    if "kv_bytes" in rest:
        parts.append(f"est. KV {format_bytes(rest.pop('kv_bytes'))}")
    if "state_bytes" in rest:
        parts.append(f"est. state {format_bytes(rest.pop('state_bytes'))}")
    if "projected_seconds" in rest:
        parts.append(f"projected {_format_seconds(rest.pop('projected_seconds'))}")
    if "projected_seconds_per_token" in rest:
        parts.append(f"projected {_format_seconds(rest.pop('projected_seconds_per_token'))}/token")
    reason = rest.pop("reason", None)
    parts.extend(f"{k}={v}" for k, v in sorted(rest.items()))
    if reason:
        parts.append(str(reason))
    return "; ".join(parts)


def _row(c: Cell) -> list[str]:
    if c.accuracy is None:
        acc = "-"
    elif c.ci_low is not None and c.ci_high is not None:
        acc = f"{c.accuracy:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"
    else:
        acc = f"{c.accuracy:.3f}"
    status = c.status
    if c.status == OOB and c.estimate:
        status = f"{OOB} ({_describe_estimate(c.estimate)})"
    return [
        c.model, c.task, format_length(c.length), str(c.samples), acc,
        _format_seconds(c.seconds_per_sample), _fmt(c.tokens_per_s, _format_si),
        format_bytes(c.state_bytes), format_bytes(c.peak_rss_bytes), status,
    ]


def _accuracy_matrix(cells: list[Cell]) -> dict[str, tuple[list[str], list[int], dict]]:
    """task -> (models, lengths, {(model, length): cell}) in first-seen / sorted order."""
    out: dict[str, tuple[list[str], list[int], dict]] = {}
    for c in cells:
        models, lengths, grid = out.setdefault(c.task, ([], [], {}))
        if c.model not in models:
            models.append(c.model)
        if c.length not in lengths:
            lengths.append(c.length)
        grid[(c.model, c.length)] = c
    for models, lengths, _ in out.values():
        lengths.sort()
    return out


def _short_cell(c: Cell | None) -> str:
    if c is None:
        return ""
    if c.status == OOB:
        return "OOB"
    return "-" if c.accuracy is None else f"{c.accuracy:.2f}"


# ---------------------------------------------------------------------------------------------
# atomic writes


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temp file beside `path`, then os.replace it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _save_figure(fig, path: Path) -> Path:
    return _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))


# ---------------------------------------------------------------------------------------------
# plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object API: renders with Agg, touches no global state

    return Figure(figsize=(width, height), layout="constrained")


def _heatmap(cells: list[Cell]):
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    by_task = _accuracy_matrix(cells)
    n_cols = max(len(lengths) for _, lengths, _ in by_task.values())
    longest = max(len(m) for models, _, _ in by_task.values() for m in models)
    panel_h = [0.42 * len(models) + 1.0 for models, _, _ in by_task.values()]
    width = min(22.0, 1.2 + 0.075 * longest + 0.62 * n_cols + 1.2)
    fig = _figure(max(5.0, width), sum(panel_h) + 0.4)
    axes = fig.subplots(len(by_task), 1, squeeze=False, height_ratios=panel_h)[:, 0]
    cmap = colormaps["RdYlGn"].with_extremes(bad="white")
    norm = Normalize(0.0, 1.0)
    image = None
    for ax, (task, (models, lengths, grid)) in zip(axes, by_task.items()):
        acc = np.full((len(models), len(lengths)), np.nan)
        for (m, L), c in grid.items():
            if c.status != OOB and c.accuracy is not None:
                acc[models.index(m), lengths.index(L)] = c.accuracy
        image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        for (m, L), c in grid.items():
            i, j = models.index(m), lengths.index(L)
            if c.status == OOB:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#d9d9d9",
                                       edgecolor="#9a9a9a", hatch="///", linewidth=0))
                ax.text(j, i, "OOB", ha="center", va="center", fontsize=8, color="#333333",
                        fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="#d9d9d9", linewidth=0))
            elif c.accuracy is not None:
                r, g, b, _ = cmap(norm(c.accuracy))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{c.accuracy:.2f}", ha="center", va="center", fontsize=8.5,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(lengths)), [format_length(L) for L in lengths])
        ax.set_yticks(range(len(models)), models)
        ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(models)), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(which="major", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(task, fontsize=10, loc="left")
    axes[-1].set_xlabel("context length (tokens)", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="accuracy (exact match)", shrink=0.9,
                 aspect=max(10, 12 * len(axes)), pad=0.02)
    fig.suptitle("Accuracy by model and context length", fontsize=11)
    return fig


def _length_ticks(ax, lengths: Iterable[int]) -> None:
    """Label the x axis at the measured lengths when they are few and well spaced, else per decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    xs = sorted(set(lengths))
    spaced = all(b / a >= 1.6 for a, b in zip(xs, xs[1:]))
    if 0 < len(xs) <= 24 and spaced:
        stride = math.ceil(len(xs) / 8)  # at most 8 labels; keep the longest length labelled
        ax.xaxis.set_major_locator(FixedLocator(xs[::-1][::stride][::-1]))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_length(v) if v > 0 else ""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _byte_ticks(ax, values: list[float]) -> None:
    """Y ticks at powers of two labelled in KiB/MiB/GiB, at most ~8 of them."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    lo, hi = min(values) / 2, max(values) * 2
    e0, e1 = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((e1 - e0) / 7))
    ticks = [2.0 ** e for e in range(e0, e1 + 1) if e % step == 0]
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _cost_plot(cells: list[Cell], measured: Callable[[Cell], float | None],
               estimated: Callable[[Cell], float | None], ylabel: str, title: str,
               est_label: str, bytes_axis: bool):
    """One line per model: the median over tasks of `measured` per length; OOB estimates hollow/dashed."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
    models = list(dict.fromkeys(c.model for c in cells))
    n = len(models)
    all_x, all_y, any_est = [], [], False
    for k, model in enumerate(models):
        meas, est = defaultdict(list), defaultdict(list)
        for c in cells:
            if c.model != model:
                continue
            v = estimated(c) if c.status == OOB else measured(c)
            if v is not None and v > 0 and math.isfinite(v):
                (est if c.status == OOB else meas)[c.length].append(v)
        color, marker = colors[k % len(colors)], markers[k % len(markers)]
        # earlier models drawn thicker, so identical curves (e.g. two fixed-size states) stay visible
        width = 1.5 + 2.5 * (n - 1 - k) / max(n - 1, 1)
        msize = 4.5 + 3.5 * (n - 1 - k) / max(n - 1, 1)
        mx = sorted(meas)
        my = [median(meas[x]) for x in mx]
        if mx:
            ax.plot(mx, my, "-", marker=marker, color=color, markersize=msize, linewidth=width,
                    label=model, zorder=2 + k)
        ex = sorted(x for x in est if x not in meas)
        if ex:
            any_est = True
            ey = [median(est[x]) for x in ex]
            px, py = (mx[-1:] + ex, my[-1:] + ey) if mx else (ex, ey)
            ax.plot(px, py, "--", color=color, linewidth=1.3, alpha=0.8,
                    label=None if mx else model, zorder=2 + k)
            ax.plot(ex, ey, marker=marker, markerfacecolor="white", markeredgecolor=color,
                    markersize=msize + 1, markeredgewidth=1.5, linestyle="none", zorder=2 + k)
        all_x += mx + ex
        all_y += my + [median(est[x]) for x in ex]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    if not all_x:
        ax.text(0.5, 0.5, "no measurements in the store", transform=ax.transAxes,
                ha="center", va="center", color="#666666")
        ax.set_xlim(1e3, 1e6)
        ax.set_ylim(1, 10)
    else:
        _length_ticks(ax, all_x)
        if bytes_axis:
            _byte_ticks(ax, all_y)
        else:
            if math.log10(max(all_y) / min(all_y)) <= 3:  # few decades: label 1-2-5 steps too
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _format_seconds(v)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        handles, labels = ax.get_legend_handles_labels()
        if any_est:
            handles.append(Line2D([], [], color="#555555", linestyle="--", marker="o",
                                  markerfacecolor="white", markeredgecolor="#555555"))
            labels.append(est_label)
        ax.legend(handles, labels, fontsize=8.5, loc="best", frameon=True, framealpha=0.9)
    return fig


def _state_bytes_plot(cells: list[Cell]):
    return _cost_plot(
        cells,
        measured=lambda c: c.state_bytes,
        estimated=lambda c: (c.estimate or {}).get("kv_bytes"),
        ylabel="state size", title="Memory state size vs context length",
        est_label="estimated (out of budget)", bytes_axis=True,
    )


def _time_per_token_plot(cells: list[Cell]):
    return _cost_plot(
        cells,
        measured=lambda c: 1.0 / c.tokens_per_s if c.tokens_per_s else None,
        estimated=lambda c: (c.estimate or {}).get("projected_seconds_per_token"),
        ylabel="time per token", title="Time per token vs context length",
        est_label="projected (out of budget)", bytes_axis=False,
    )


def _consolidation(c: Cell) -> float | None:
    return (c.extra or {}).get("flops_sleep_per_sample") if c.status == "ok" else None


def _consolidation_plot(cells: list[Cell]):
    """Accuracy (95% interval) against the FLOPs per sample spent on consolidation, one line per model
    family ('name@N=...' cells of one checkpoint), task and length; each point labelled with its N."""
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    series: dict = {}
    for c in cells:
        if _consolidation(c) is not None:
            series.setdefault((c.model.split("@")[0], c.task, c.length), []).append(c)
    for (model, task, length), cs in sorted(series.items()):
        cs.sort(key=_consolidation)
        x = [_consolidation(c) for c in cs]
        y = [c.accuracy for c in cs]
        err = [[a - c.ci_low for a, c in zip(y, cs)], [c.ci_high - a for a, c in zip(y, cs)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{model} {task} {format_length(length)}")
        for xi, yi, c in zip(x, y, cs):
            if "@N=" in c.model:
                ax.annotate("N=" + c.model.split("@N=")[1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("symlog", linthresh=max(1.0, min((v for v in (_consolidation(c) for c in cells) if v), default=1.0)))
    ax.set_xlabel("consolidation FLOPs per sample")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy vs consolidation compute")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# documents

_PLOTS = [
    ("accuracy_heatmap", "accuracy_heatmap.png", "Accuracy by model, task and context length"),
    ("state_bytes", "state_bytes.png", "Memory state size vs context length"),
    ("time_per_token", "time_per_token.png", "Time per token vs context length"),
]


def _plots_for(cells: list[Cell]) -> list:
    """The standard plots, plus accuracy against consolidation compute when cells report it (sleep)."""
    extra = [("consolidation", "accuracy_vs_consolidation.png", "Accuracy vs consolidation compute")]
    return _PLOTS + (extra if any(_consolidation(c) is not None for c in cells) else [])


def _intro(cells: list[Cell], store: ResultStore) -> str:
    models = sorted({c.model for c in cells})
    tasks = sorted({c.task for c in cells})
    lengths = sorted({c.length for c in cells})
    n_oob = sum(c.status == OOB for c in cells)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    span = format_length(lengths[0]) if len(lengths) == 1 else \
        f"{format_length(lengths[0])} to {format_length(lengths[-1])}"
    return (f"{len(cells)} cells: {len(models)} model{'s' * (len(models) != 1)} "
            f"({', '.join(models)}) on {len(tasks)} task{'s' * (len(tasks) != 1)} "
            f"at context lengths {span} tokens; {n_oob} out of budget. "
            f"Generated {when} from {store.path.name}.")


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, intro: str, cells: list[Cell]) -> str:
    lines = [f"# {title}", "", intro, ""]
    for _, fname, caption in _plots_for(cells):
        lines += [f"## {caption}", "", f"![{caption}]({fname})", ""]
    lines += ["## Accuracy by length", ""]
    for task, (models, lengths, grid) in _accuracy_matrix(cells).items():
        lines += [f"### {_md_escape(task)}", ""]
        lines.append("| model | " + " | ".join(format_length(L) for L in lengths) + " |")
        lines.append("|---|" + "---:|" * len(lengths))
        for m in models:
            lines.append(f"| {_md_escape(m)} | "
                         + " | ".join(_short_cell(grid.get((m, L))) for L in lengths) + " |")
        lines.append("")
    lines += ["## All cells", ""]
    lines.append("| " + " | ".join(_COLUMNS) + " |")
    lines.append("|" + "|".join("---:" if c in ("length", "samples", "s/sample", "tokens/s",
                                                  "state", "peak RSS") else "---"
                                for c in _COLUMNS) + "|")
    for c in cells:
        lines.append("| " + " | ".join(_md_escape(v) for v in _row(c)) + " |")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.oob td { background: #f1f1f1; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure { margin: 1em 0 2em; }
"""


def _html(title: str, intro: str, cells: list[Cell]) -> str:
    e = html.escape
    num = {"length", "samples", "s/sample", "tokens/s", "state", "peak RSS"}
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>", f"<p>{e(intro)}</p>"]
    for _, fname, caption in _plots_for(cells):
        out += [f"<h2>{e(caption)}</h2>",
                f'<figure><img src="{e(fname)}" alt="{e(caption)}"></figure>']
    out.append("<h2>Accuracy by length</h2>")
    for task, (models, lengths, grid) in _accuracy_matrix(cells).items():
        out.append(f"<h3>{e(task)}</h3>")
        out.append("<table><tr><th>model</th>"
                   + "".join(f"<th>{e(format_length(L))}</th>" for L in lengths) + "</tr>")
        for m in models:
            out.append(f"<tr><td>{e(m)}</td>" + "".join(
                f'<td class="num">{e(_short_cell(grid.get((m, L))))}</td>' for L in lengths)
                + "</tr>")
        out.append("</table>")
    out.append("<h2>All cells</h2>")
    out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in _COLUMNS) + "</tr>")
    for c in cells:
        cls = ' class="oob"' if c.status == OOB else ""
        tds = "".join(f'<td class="num">{e(v)}</td>' if col in num else f"<td>{e(v)}</td>"
                      for col, v in zip(_COLUMNS, _row(c)))
        out.append(f"<tr{cls}>{tds}</tr>")
    out += ["</table>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# entry point


def write_report(store: ResultStore | str | Path, out_dir: str | Path,
                 title: str = "memlab report", analyses: str | Path | None = None) -> dict[str, Path]:
    """Write the plots, report.md and report.html for every cell in `store` into `out_dir`.

    Returns {'accuracy_heatmap', 'state_bytes', 'time_per_token', 'report_md', 'report_html'}
    -> path. Raises ValueError if the store holds no results.
    """
    if not isinstance(store, ResultStore):
        with ResultStore(store) as opened:
            return write_report(opened, out_dir, title, analyses)
    cells = store.cells()
    if not cells:
        raise ValueError(f"no results in {store.path}; run memlab eval first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    paths: dict[str, Path] = {}
    builders = {"accuracy_heatmap": _heatmap, "state_bytes": _state_bytes_plot,
                "time_per_token": _time_per_token_plot, "consolidation": _consolidation_plot}
    for name, fname, _ in _plots_for(cells):
        fig = builders[name](cells)
        paths[name] = _save_figure(fig, out / fname)
    intro = _intro(cells, store)
    paths["report_md"] = _write_text(out / "report.md", _markdown(title, intro, cells))
    paths["report_html"] = _write_text(out / "report.html", _html(title, intro, cells))
    if analyses is not None:  # the benchmarks' analyses (retrieval heads, memory keeps, ...) on a page of their own
        from .analysis.pages import write_analyses

        paths.update(write_analyses(analyses, out, _write_text))
    return paths
