"""``longreach report DIR``: one self-contained HTML page from a results folder.

Per method a NIAH heatmap for each depth task (x = length, y = depth with 0% at the top, red -> yellow
-> green), accuracy-vs-length curves of every method on one plot, a RULER-style table with each method's
effective length (the longest length before the first task average below the threshold, default 85.6,
and the same relative to the plain model's own score at its shortest length, since small models start
below 85.6), the ATC summary (largest needle count before the first score below 60%), perplexity, and
time, prefill / decode speed, peak memory and KV-cache size per cell, with each as a ratio to the
``--baseline`` method's cell of the same task and length (default ``none``). Figures are matplotlib PNGs
embedded as base64; no network access. ``--markdown`` writes the same tables as Markdown
(:func:`markdown`; :func:`cells_table` formats any list of cells, e.g. for a benchmark script).
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..units import format_bytes, format_length
from .metrics import ratios
from .store import load_cells, run_line, write_aggregates
from .task import BenchError

COLORS = ["#F0496E", "#EBB839", "#0CD79F"]  # red -> yellow -> green (NeedleBench / NIAH convention)
ATC_PASS = 0.6


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def effective_length(scores: dict[int, float | None], threshold: float) -> int | None:
    """Longest length before the first one whose score is below ``threshold`` (None: fails at the first);
    the same rule as the router's calibration (:func:`longreach.readers.route.effective_length`)."""
    from ..readers.route import effective_length as rule

    return rule([(n, float("-inf") if s is None else s) for n, s in scores.items()], threshold) or None


def summarize(cells: list[dict[str, Any]], threshold: float = 85.6) -> dict[str, Any]:
    """Numbers behind the report (also used by tests): per method, length -> task-average score (x100)."""
    acc = [c for c in cells if c.get("higher_is_better", True)]
    methods = sorted({c["method"] for c in cells}, key=lambda m: (m != "none", m))
    lengths = sorted({c["length"] for c in acc})
    table: dict[str, dict[int, float | None]] = {}
    for m in methods:
        row: dict[int, float | None] = {}
        for n in lengths:
            cs = [c for c in acc if c["method"] == m and c["length"] == n]
            if not cs:
                continue
            # a refused cell (beyond reach / memory) counts as 0: the model cannot read that length
            row[n] = 100 * statistics.fmean((c["score"] or 0.0) for c in cs)
        table[m] = row
    base_method = "none" if "none" in table and table["none"] else (methods[0] if methods else None)
    baseline = None
    if base_method and table.get(base_method):
        baseline = table[base_method][min(table[base_method])]
    relative = threshold / 100 * baseline if baseline else None
    eff = {m: effective_length(row, threshold) for m, row in table.items()}
    eff_rel = {m: effective_length(row, relative) if relative is not None else None for m, row in table.items()}
    return {"methods": methods, "lengths": lengths, "table": table, "effective": eff,
            "effective_relative": eff_rel, "baseline": baseline, "baseline_method": base_method,
            "relative_threshold": relative, "threshold": threshold}


def heatmap(cells: list[dict[str, Any]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    lengths = sorted({c["length"] for c in cells})
    depths = sorted({float(d) for c in cells for d in (c.get("by_depth") or {})})
    grid = np.full((max(1, len(depths)), len(lengths)), np.nan)
    refused = []
    for c in cells:
        x = lengths.index(c["length"])
        if c["status"] == "refused":
            refused.append(x)
        for d, s in (c.get("by_depth") or {}).items():
            grid[depths.index(float(d)), x] = s
    cmap = LinearSegmentedColormap.from_list("niah", COLORS)
    cmap = cmap.with_extremes(bad="#DDDDDD")
    fig, ax = plt.subplots(figsize=(1.1 + 0.75 * len(lengths), 0.9 + 0.42 * max(1, len(depths))))
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8, color="#222222")
    for x in refused:
        ax.text(x, (len(depths) - 1) / 2, "refused", ha="center", va="center", rotation=90, fontsize=8,
                color="#555555")
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def curves(summary: dict[str, Any], cells: list[dict[str, Any]], threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task_spec"] for c in cells if c.get("higher_is_better", True)})
    ncols = 1 + len(tasks)
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 * ncols, 3.0), squeeze=False)
    for ax, task in zip(axes[0], [None, *tasks]):
        for m in summary["methods"]:
            if task is None:
                pts = sorted(summary["table"].get(m, {}).items())
            else:
                pts = sorted((c["length"], 100 * (c["score"] or 0.0)) for c in cells
                             if c["method"] == m and c["task_spec"] == task)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        if task is None:
            ax.axhline(threshold, color="#888888", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        lengths = summary["lengths"]
        ax.set_xticks(lengths, [format_length(n) for n in lengths])
        ax.set_ylim(-3, 103)
        ax.set_title("task average" if task is None else task, fontsize=9)
        ax.set_xlabel("tokens")
    axes[0][0].set_ylabel("score (0-100)")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def atc_summary(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        if c["task"] == "atc" and c["status"] == "done":
            by_method[(c["method"], c["task_spec"])].append(c)
    for (m, spec), cs in sorted(by_method.items()):
        cs.sort(key=lambda c: (c.get("needles") or 0, c["length"]))
        best = None
        for c in cs:
            if (c["score"] or 0) < ATC_PASS:
                break
            best = c.get("needles")
        rows.append({"method": m, "task": spec, "best": best,
                     "points": [(c.get("needles"), c["length"], c["score"]) for c in cs]})
    return rows


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>longreach report: {{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; margin: 4px 8px 12px 0; } .muted { color: #777; font-size: 12px; }
.fig { display: inline-block; vertical-align: top; }
</style></head><body>
<h1>longreach report</h1>
<p class="muted">{{ title }} &middot; model {{ models }} &middot; {{ n_cells }} cells ({{ n_refused }} refused) &middot;
generated {{ date }}</p>
<h2>Effective length</h2>
<p class="muted">Task average (0-100) over {{ n_tasks }} accuracy tasks per length. Effective length: the longest
length before the first average below {{ threshold }}; relative: below {{ "%.1f"|format(rel_threshold or 0) }}
= {{ threshold }}% of {{ baseline_method }}'s own score at its shortest length ({{ "%.1f"|format(baseline or 0) }}).
Refused cells count as 0.</p>
<table><tr><th class="l">method</th>{% for n in lengths %}<th>{{ fmt_len(n) }}</th>{% endfor %}
<th>effective (&ge;{{ threshold }})</th><th>effective (relative)</th></tr>
{% for m in methods %}<tr><td class="l">{{ m }}</td>
{% for n in lengths %}<td>{% if table[m].get(n) is not none %}{{ "%.1f"|format(table[m][n]) }}{% else %}&ndash;{% endif %}</td>{% endfor %}
<td>{{ fmt_len(eff[m]) if eff[m] else "&lt; " ~ fmt_len(lengths[0]) }}</td>
<td>{{ fmt_len(eff_rel[m]) if eff_rel[m] else "&lt; " ~ fmt_len(lengths[0]) }}</td></tr>{% endfor %}
</table>
<h2>Accuracy vs length</h2>
<img alt="accuracy vs length" src="data:image/png;base64,{{ curves }}">
<h2>Needle in a haystack</h2>
{% for h in heatmaps %}<div class="fig"><img alt="heatmap {{ h.title }}" src="data:image/png;base64,{{ h.png }}"></div>{% endfor %}
{% if not heatmaps %}<p class="muted">No depth task in this run.</p>{% endif %}
{% if atc %}<h2>Ancestral Trace Challenge</h2>
<p class="muted">Largest needle count before the first score below {{ atc_pass }}%.</p>
<table><tr><th class="l">method</th><th class="l">task</th><th>largest passing needles</th><th class="l">(needles, length, score)</th></tr>
{% for r in atc %}<tr><td class="l">{{ r.method }}</td><td class="l">{{ r.task }}</td><td>{{ r.best if r.best is not none else "none" }}</td>
<td class="l">{% for p in r.points %}({{ p[0] }}, {{ fmt_len(p[1]) }}, {{ "%.0f"|format(100 * (p[2] or 0)) }}) {% endfor %}</td></tr>{% endfor %}
</table>{% endif %}
{% if ppl %}<h2>Perplexity</h2><table><tr><th class="l">method</th><th class="l">task</th><th>length</th><th>ppl</th><th>ppl last quarter</th>
{% if has_ratios %}<th>ppl vs {{ baseline_name }}</th><th>last quarter vs {{ baseline_name }}</th>{% endif %}</tr>
{% for c in ppl %}<tr><td class="l">{{ c.method }}</td><td class="l">{{ c.task_spec }}</td><td>{{ fmt_len(c.length) }}</td>
<td>{{ "%.2f"|format(c.ppl) if c.ppl is not none else c.status }}</td><td>{{ "%.2f"|format(c.ppl_tail) if c.ppl_tail else "" }}</td>
{% if has_ratios %}<td>{{ fmt_ratio(c.ratios.get("ppl")) }}</td><td>{{ fmt_ratio(c.ratios.get("ppl_tail")) }}</td>{% endif %}</tr>{% endfor %}</table>{% endif %}
<h2>Tasks by family</h2>
<p class="muted">Every task of the run under its family (the benchmark it comes from) and paper: accuracy (0-1) per
length, or perplexity; seconds per sample averaged over the lengths.</p>
{% for g in families %}<h3>{{ g.family }}</h3>{% if g.paper %}<p class="muted">{{ g.paper }}</p>{% endif %}
<table><tr><th class="l">task</th><th class="l">method</th>{% for n in g.lengths %}<th>{{ fmt_len(n) }}</th>{% endfor %}<th>s/sample</th></tr>
{% for r in g.rows %}<tr><td class="l">{{ r.task }}</td><td class="l">{{ r.method }}</td>
{% for n in g.lengths %}<td>{{ r.scores.get(n, "-") }}</td>{% endfor %}
<td>{{ "%.1f"|format(r.seconds) if r.seconds is not none else "" }}</td></tr>{% endfor %}</table>{% endfor %}
<h2>Cells: time and memory</h2>
<p class="muted">prefill / decode tok/s: tokens over seconds summed over the cell's samples (decode speed compares
methods when every sample decodes the same number of tokens, <code>--decode-tokens N</code>); KV cache: the most
bytes a request's cache held, and per input token; peak memory: the highest over the samples.
{% if has_ratios %}Ratios (&times;) divide by the {{ baseline_name }} cell of the same task and length.{% endif %}</p>
<table><tr><th class="l">method</th><th class="l">task</th><th>length</th><th>status</th><th>n</th><th>score</th>
<th>s/sample</th><th>prefill tok/s</th><th>decode tok/s</th><th>peak memory</th><th>KV cache</th><th>KV bytes/token</th>
{% if has_ratios %}<th>prefill &times;</th><th>decode &times;</th><th>KV &times;</th><th>peak &times;</th>{% endif %}</tr>
{% for c in cells %}<tr><td class="l">{{ c.method }}</td><td class="l">{{ c.task_spec }}</td><td>{{ fmt_len(c.length) }}</td>
<td title="{{ c.reason or '' }}">{{ c.status }}</td><td>{{ c.n }}</td>
<td>{{ "%.3f"|format(c.score) if c.score is not none else "" }}</td><td>{{ c.seconds_per_sample or "" }}</td>
<td>{{ c.prefill_tokens_per_second or "" }}</td><td>{{ c.decode_tokens_per_second or "" }}</td>
<td>{{ fmt_bytes(c.peak_memory_bytes) if c.peak_memory_bytes else "" }}</td>
<td>{{ fmt_bytes(c.kv_cache_bytes) if c.kv_cache_bytes else "" }}</td><td>{{ c.kv_cache_bytes_per_token or "" }}</td>
{% if has_ratios %}<td>{{ fmt_ratio(c.ratios.get("prefill_tokens_per_second")) }}</td>
<td>{{ fmt_ratio(c.ratios.get("decode_tokens_per_second")) }}</td><td>{{ fmt_ratio(c.ratios.get("kv_cache_bytes")) }}</td>
<td>{{ fmt_ratio(c.ratios.get("peak_memory_bytes")) }}</td>{% endif %}</tr>{% endfor %}
</table>
</body></html>
"""


def by_family(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells grouped by the task family (``longreach tasks``' label, e.g. RULER, LongProc) with its paper:
    ``[{family, paper, lengths, rows: [{task, method, scores: {length: text}, seconds}]}]``, families in
    alphabetical order. A score is the cell's accuracy (0-1, two decimals) or perplexity; a refused cell shows
    "refused"; tasks not in the registry go under "other"."""
    from .task import TASKS, _load_builtin_tasks

    _load_builtin_tasks()
    groups: dict[str, dict[str, Any]] = {}
    for c in cells:
        cls = TASKS.get(c.get("task", ""))
        family = cls.family if cls is not None else "other"
        g = groups.setdefault(family, {"family": family, "papers": [], "lengths": set(), "rows": {}})
        if cls is not None and cls.paper and cls.paper not in g["papers"]:
            g["papers"].append(cls.paper)  # a family may follow several papers (e.g. Multi-hop)
        g["lengths"].add(c["length"])
        row = g["rows"].setdefault((c["task_spec"], c["method"]), {"task": c["task_spec"], "method": c["method"],
                                                                   "scores": {}, "seconds": []})
        if c.get("status") != "done":
            row["scores"][c["length"]] = str(c.get("status", "?"))
        elif c.get("higher_is_better", True):
            row["scores"][c["length"]] = "" if c.get("score") is None else f"{c['score']:.2f}"
        else:  # perplexity: lower is better
            ppl = c.get("ppl", c.get("score"))
            row["scores"][c["length"]] = "" if ppl is None else f"ppl {ppl:.2f}"
        if c.get("seconds_per_sample") is not None:
            row["seconds"].append(float(c["seconds_per_sample"]))
    out = []
    for family in sorted(groups, key=str.lower):
        g = groups[family]
        rows = []
        for (_task, _method), r in sorted(g["rows"].items()):
            secs = r.pop("seconds")
            rows.append({**r, "seconds": statistics.fmean(secs) if secs else None})
        papers = g.pop("papers")
        out.append({**g, "paper": "; ".join(papers), "lengths": sorted(g["lengths"]), "rows": rows})
    return out


def family_markdown(cells: list[dict[str, Any]]) -> str:
    """:func:`by_family` as Markdown: one table per family (task, method, score per length, s / sample)."""
    lines = []
    for g in by_family(cells):
        lengths = g["lengths"]
        lines += [f"### {g['family']}", "", f"Paper: {g['paper']}" if g["paper"] else "", "",
                  "| task | method | " + " | ".join(format_length(n) for n in lengths) + " | s / sample |",
                  "|---|---|" + "---|" * (len(lengths) + 1)]
        for r in g["rows"]:
            scores = " | ".join(r["scores"].get(n, "-") for n in lengths)
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {r['task'].replace('|', '/')} | {r['method'].replace('|', '/')} | {scores} | {secs} |")
        lines.append("")
    return "\n".join(lines)


def fmt_ratio(r: float | None) -> str:
    """0.2534 -> ``"0.25x"``; None -> ``""``."""
    return "" if r is None else f"{r:.2f}x"


def _load(out: Path) -> list[dict[str, Any]]:
    cells = load_cells(out)
    if not cells:
        raise BenchError(f"{out}: no finished cells (cells/**/metrics.json); run `longreach bench --out {out}` first")
    return cells


def render(out: str | Path, threshold: float = 85.6, html_path: str | Path | None = None,
           baseline: str = "none") -> Path:
    """Write ``DIR/report.html`` (or ``html_path``) and refresh the aggregates; returns the path.
    ``baseline``: the method whose cells the ratio columns divide by."""
    import jinja2

    out = Path(out)
    cells = ratios(_load(out), baseline)
    write_aggregates(out)
    summary = summarize(cells, threshold)
    heatmaps = []
    depth_cells = [c for c in cells if c.get("by_depth") or (c["status"] == "refused" and _uses_depth(c))]
    for m in summary["methods"]:
        for task in sorted({c["task_spec"] for c in depth_cells if c["method"] == m}):
            cs = [c for c in depth_cells if c["method"] == m and c["task_spec"] == task]
            if any(c.get("by_depth") for c in cs):
                heatmaps.append({"title": f"{m} / {task}", "png": heatmap(cs, f"{task} with {m}")})
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True))
    page = env.from_string(TEMPLATE).render(
        title=html.escape(str(out)), models=", ".join(sorted({c["model"] for c in cells})),
        n_cells=len(cells), n_refused=sum(c["status"] == "refused" for c in cells),
        date=__import__("time").strftime("%Y-%m-%d %H:%M"), threshold=threshold,
        rel_threshold=summary["relative_threshold"], baseline=summary["baseline"],
        baseline_method=summary["baseline_method"], lengths=summary["lengths"], methods=summary["methods"],
        table=summary["table"], eff=summary["effective"], eff_rel=summary["effective_relative"],
        n_tasks=len({c["task_spec"] for c in cells if c.get("higher_is_better", True)}),
        curves=curves(summary, cells, threshold), heatmaps=heatmaps, atc=atc_summary(cells),
        atc_pass=int(ATC_PASS * 100), ppl=[{**c, "ppl": c.get("ppl", c.get("score"))} for c in cells if c["task"] == "ppl"],
        cells=sorted(cells, key=lambda c: (c["method"], c["task_spec"], c["length"])),
        has_ratios=any(c["ratios"] for c in cells), baseline_name=baseline, families=by_family(cells),
        fmt_len=format_length, fmt_bytes=format_bytes, fmt_ratio=fmt_ratio)
    target = Path(html_path) if html_path else out / "report.html"
    from .runner import atomic_write

    atomic_write(target, page)
    return target


def _uses_depth(cell: dict[str, Any]) -> bool:
    from .task import TASKS, _load_builtin_tasks

    _load_builtin_tasks()
    cls = TASKS.get(cell["task"])
    return bool(cls and cls.uses_depth)


# ------------------------------------------------------------------------------------------ markdown
def _num(v: Any, digits: int = 1) -> str:
    return "" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _bytes(v: Any) -> str:
    return format_bytes(v) if v else ""


#: Columns of :func:`cells_table`: name -> (header, cell -> text). ``{b}`` in a header is the baseline.
COLUMNS: dict[str, tuple[str, Any]] = {
    "method": ("method", lambda c: c["method"]),
    "task": ("task", lambda c: c["task_spec"]),
    "length": ("length", lambda c: format_length(c["length"])),
    "n": ("n", lambda c: str(c.get("n", ""))),
    "score": ("score", lambda c: "" if c.get("score") is None or not c.get("higher_is_better", True)
              else f"{c['score']:.2f}"),
    "by_depth": ("by depth", lambda c: ", ".join(f"{float(d):.0%}: {v:.2g}" for d, v in (c.get("by_depth") or {}).items())),
    "ppl": ("ppl", lambda c: _num(c.get("ppl", None if c.get("higher_is_better", True) else c.get("score")), 3)),
    "ppl_tail": ("ppl last quarter", lambda c: _num(c.get("ppl_tail"), 3)),
    "tokens": ("prompt tokens", lambda c: _num(c.get("tokens_mean"), 0)),
    "seconds_per_sample": ("s / sample", lambda c: _num(c.get("seconds_per_sample"))),
    "prefill": ("prefill tok/s", lambda c: _num(c.get("prefill_tokens_per_second"))),
    "decode": ("decode tok/s", lambda c: _num(c.get("decode_tokens_per_second"), 2)),
    "kv_per_token": ("KV bytes/token", lambda c: _num(c.get("kv_cache_bytes_per_token"))),
    "kv": ("KV cache (max)", lambda c: _bytes(c.get("kv_cache_bytes"))),
    "peak": ("peak memory", lambda c: _bytes(c.get("peak_memory_bytes"))),
    "ppl_ratio": ("ppl vs {b}", lambda c: fmt_ratio(c.get("ratios", {}).get("ppl"))),
    "prefill_ratio": ("prefill vs {b}", lambda c: fmt_ratio(c.get("ratios", {}).get("prefill_tokens_per_second"))),
    "decode_ratio": ("decode vs {b}", lambda c: fmt_ratio(c.get("ratios", {}).get("decode_tokens_per_second"))),
    "kv_ratio": ("KV vs {b}", lambda c: fmt_ratio(c.get("ratios", {}).get("kv_cache_bytes"))),
    "peak_ratio": ("peak vs {b}", lambda c: fmt_ratio(c.get("ratios", {}).get("peak_memory_bytes"))),
}


def cells_table(cells: list[dict[str, Any]], columns: list[str] | None = None, baseline: str = "none") -> str:
    """A Markdown table of ``cells`` (metrics dicts) with ratios to ``baseline``; ``columns`` from
    :data:`COLUMNS` (default: every column some cell has a value for). A refused cell shows its reason."""
    cells = ratios(cells, baseline)
    order = {m: i for i, m in enumerate(dict.fromkeys(c["method"] for c in cells))}
    cells = sorted(cells, key=lambda c: (c["length"], c["task_spec"], c["method"] != baseline, order[c["method"]]))
    done = [c for c in cells if c.get("status") == "done"]
    if columns is None:
        columns = [k for k in COLUMNS if k in ("method", "task", "length", "n")
                   or any(COLUMNS[k][1](c) for c in done)]
    lines = ["| " + " | ".join(COLUMNS[k][0].format(b=baseline) for k in columns) + " |",
             "|" + "---|" * len(columns)]
    for c in cells:
        if c.get("status") != "done":
            vals = [COLUMNS[k][1](c) if k in ("method", "task", "length") else "" for k in columns]
            vals[min(3, len(vals) - 1)] = f"{c.get('status')}: {c.get('reason', '')}"
        else:
            vals = [COLUMNS[k][1](c) for k in columns]
        lines.append("| " + " | ".join(v.replace("|", "/") for v in vals) + " |")
    return "\n".join(lines) + "\n"


def markdown(out: str | Path, threshold: float = 85.6, baseline: str = "none") -> str:
    """The results folder as Markdown: how it was made (commands, machine), the effective-length table
    when there are accuracy tasks, and every cell with its cost metrics and ratios to ``baseline``."""
    import json

    out = Path(out)
    cells = _load(out)
    results = write_aggregates(out)
    config = results.get("config") or {}
    env = results.get("env") or {}
    runs = [run_line(r) for r in config.get("runs") or []]
    lines = [f"# longreach results: {out.name}", "",
             f"Model {', '.join(sorted({c['model'] for c in cells}))}; report written at git "
             f"{(results.get('git_hash') or '?')[:7]}, {results.get('date_iso', '')}; "
             f"longreach {env.get('longreach')}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, "
             f"{' '.join(str(x) for x in (env.get('machine'), env.get('processor')) if x)}, "
             f"{env.get('threads')} threads; backend {json.dumps(config.get('backend_info', {}), default=str)}.", "",
             "Commands (each run into this folder; re-running one resumes it):", "",
             *(runs or ["- not recorded (written before the harness kept its commands; see config.json)"]), ""]
    summary = summarize(cells, threshold)
    if summary["lengths"]:
        lengths = summary["lengths"]
        lines += ["## Effective length", "",
                  f"Task average x 100 per length; effective: the longest length before the first average below "
                  f"{threshold} (relative: below {summary['relative_threshold'] or 0:.1f}, {threshold}% of "
                  f"{summary['baseline_method']} at its shortest length). Refused cells count as 0.", "",
                  "| method | " + " | ".join(format_length(n) for n in lengths) + " | effective | relative |",
                  "|---|" + "---|" * (len(lengths) + 2)]
        for m in summary["methods"]:
            row = summary["table"][m]
            eff, rel = summary["effective"][m], summary["effective_relative"][m]
            lines.append(f"| {m} | " + " | ".join(f"{row[n]:.0f}" if row.get(n) is not None else "-" for n in lengths)
                         + f" | {format_length(eff) if eff else '< ' + format_length(lengths[0])}"
                         f" | {format_length(rel) if rel else '< ' + format_length(lengths[0])} |")
        lines.append("")
    lines += ["## Tasks by family", "", family_markdown(cells), "## Cells", "",
              f"Ratios divide by the `{baseline}` cell of the same task and length (x: times the baseline). "
              "Speed: tokens / seconds summed over a cell's samples; KV cache: bytes held at the end of a "
              "request (max over samples); peak memory: the high-water mark during a request.", "",
              cells_table(cells, baseline=baseline)]
    return "\n".join(lines)


def write_markdown(out: str | Path, path: str | Path | None = None, threshold: float = 85.6,
                   baseline: str = "none") -> Path:
    """Write :func:`markdown` to ``path`` (default ``DIR/report.md``); returns the path."""
    from .runner import atomic_write

    target = Path(path) if path else Path(out) / "report.md"
    atomic_write(target, markdown(out, threshold, baseline))
    return target
