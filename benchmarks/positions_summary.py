"""Summarise a position-method sweep (issue 16 item 4): one table, one plot, the winner at each length.

Reads one results folder written by ``longreach bench`` (e.g. ``configs/reach-positions.yaml``) and writes,
next to ``--out``: a markdown table with every method's score per task and length, seconds per sample and
peak memory; the winner at each length; the pass-key goal (the best method at the longest length keeps its
shortest-length pass-key accuracy within ``--points``); and a PNG with one accuracy-vs-length panel per task.

    python benchmarks/positions_summary.py benchmarks/results/reach-positions \
        --out benchmarks/results/reach-positions
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from route_summary import reading  # benchmarks/: keeps the hand-written "## Reading" section

from longreach.bench.store import environment, git_hash, load_cells
from longreach.units import format_length as _length


def table(cells: list[dict[str, Any]]) -> dict[str, dict[tuple[str, int], dict[str, Any]]]:
    """method -> (task, length) -> {score, n, seconds, peak, higher}: finished cells; a refused cell is score 0
    (the method cannot read that length) and marked ``refused``."""
    out: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for c in cells:
        entry: dict[str, Any] = {"higher": c.get("higher_is_better", True), "n": c.get("n") or 0}
        if c.get("status") == "done" and c.get("score") is not None:
            entry.update(score=float(c["score"]), seconds=c.get("seconds_per_sample"),
                         peak=c.get("peak_memory_bytes"), by_depth=c.get("by_depth") or {},
                         load=(c.get("load_average") or [None])[0])
        elif c.get("status") == "refused":
            entry.update(score=0.0, refused=True, reason=c.get("reason"))
        else:
            continue
        out.setdefault(c["method"], {})[(c["task"], int(c["length"]))] = entry
    return out


def winners(tab: dict[str, dict[tuple[str, int], dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per length: the method with the best mean accuracy over the accuracy tasks it has at that length
    (only methods with every such task measured there compete); ties go to fewer seconds per sample, and
    every method tied on accuracy is listed. Beside it, the method with the lowest perplexity there (refused
    cells left out); a length with only perplexity cells has ``method`` None."""
    lengths = sorted({n for cells in tab.values() for (_, n) in cells})
    out = {}
    for n in lengths:
        tasks = {t for cells in tab.values() for (t, m), e in cells.items() if m == n and e["higher"]}
        ranked = []
        for method, cells in tab.items():
            got = [cells.get((t, n)) for t in sorted(tasks)]
            if not got or any(e is None for e in got):
                continue
            acc = statistics.fmean(e["score"] for e in got)
            secs = [e["seconds"] for e in got if e.get("seconds") is not None]
            ranked.append((-acc, statistics.fmean(secs) if secs else float("inf"), method))
        ranked.sort()
        best = ranked[0] if ranked else (0.0, 0.0, None)
        out[n] = {"method": best[2], "accuracy": -best[0], "tasks": sorted(tasks),
                  "tied": [m for a, _, m in ranked if a == best[0]]}
        low = sorted((e["score"], m) for m, cells in tab.items() for (t, k), e in cells.items()
                     if k == n and not e["higher"] and not e.get("refused"))
        if low:
            out[n].update(lowest_perplexity=low[0][1], perplexity=low[0][0])
        if out[n]["method"] is None and "lowest_perplexity" not in out[n]:
            del out[n]
    return out


def goal(tab: dict[str, dict[tuple[str, int], dict[str, Any]]], short: int, long: int, points: float,
         task: str = "passkey") -> list[dict[str, Any]]:
    """Every method with ``task`` measured at both ``short`` and ``long``: accuracy at each, the change in
    points, and whether it keeps the short-length accuracy within ``points``; best at ``long`` first."""
    rows = []
    for method, cells in tab.items():
        a, b = cells.get((task, short)), cells.get((task, long))
        if a is None or b is None:
            continue
        change = 100 * (b["score"] - a["score"])
        rows.append({"method": method, "short": a["score"], "long": b["score"], "change_points": change,
                     "kept": change >= -points})
    return sorted(rows, key=lambda r: (-r["long"], r["method"]))


def plot(tab: dict[str, dict[tuple[str, int], dict[str, Any]]], path: Path) -> None:
    """Left: a heatmap of accuracy, one row per method (best first, as in the table) and one column per
    (task, length); refused cells grey, unmeasured blank. Right: perplexity vs length, one line per method
    (refused lengths left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc_cols = sorted({k for cells in tab.values() for k, e in cells.items() if e["higher"]})
    ppl_tasks = sorted({t for cells in tab.values() for (t, _), e in cells.items() if not e["higher"]})
    methods = sorted(tab, key=lambda m: ([-(tab[m].get(k, {}).get("score") or 0) for k in acc_cols[::-1]], m))
    panels = int(bool(acc_cols)) + len(ppl_tasks)
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 0.35 * len(methods) + 2.5), squeeze=False)
    axes = list(axes[0])
    if acc_cols:
        ax = axes.pop(0)
        grid = np.full((len(methods), len(acc_cols)), np.nan)  # (methods, task x length)
        for i, m in enumerate(methods):
            for j, k in enumerate(acc_cols):
                e = tab[m].get(k)
                if e is None:
                    continue
                if e.get("refused"):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.8"))
                    ax.text(j, i, "refused", ha="center", va="center", fontsize=6, color="0.3")
                else:
                    grid[i, j] = e["score"]
                    ax.text(j, i, f"{e['score']:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if e["score"] < 0.5 else "black")
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(acc_cols)), [f"{t}\n{_length(n)}" for t, n in acc_cols], fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
        ax.set_title("accuracy (blank: not measured)")
        fig.colorbar(im, ax=ax, fraction=0.03)
    cmap = plt.get_cmap("tab20")
    for ax, task in zip(axes, ppl_tasks):
        for i, method in enumerate(sorted(tab)):
            pts = sorted((n, e["score"]) for (t, n), e in tab[method].items() if t == task and not e.get("refused"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=method, alpha=0.85,
                        color=cmap(i % 20), marker="osD^v<>ph*"[i % 10], linestyle=["-", "--", ":"][i % 3])
        lengths = sorted({n for cells in tab.values() for (t, n) in cells if t == task})
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [_length(n) for n in lengths])
        ax.set_xlabel("input tokens")
        ax.set_ylabel(f"{task} (lower is better)")
        ax.set_title(f"{task} vs length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(tab: dict[str, dict[tuple[str, int], dict[str, Any]]], folder: Path, points: float,
             png: str, notes: str = "") -> str:
    cols = sorted({k for cells in tab.values() for k in cells}, key=lambda k: (k[0], k[1]))
    env = environment()
    loads = [e["load"] for cells in tab.values() for e in cells.values() if e.get("load")]
    load = (f" 1-minute load average when the cells finished: {min(loads):.2f}-{max(loads):.2f}." if loads else "")
    lines = [f"# Position and attention methods side by side: {folder.name}", "",
             f"Folder `{folder}`; summary written at git {git_hash()} on {env.get('cpu', '')} "
             f"({env.get('cpu_count', '')} cores). Scores: the task's accuracy (mean over samples); refused "
             "= the method cannot read that length (counts 0). Seconds and peak memory per sample at each length "
             "are the mean over that method's accuracy tasks there (the perplexity pass when it has none)." + load, "",
             "| method | " + " | ".join(f"{t} {_length(n)}" for t, n in cols) + " | s / sample | peak GiB |",
             "|---|" + "---|" * (len(cols) + 2)]
    acc_cols = [k for k in cols[::-1] if any(c.get(k, {}).get("higher") for c in tab.values())]
    for method in sorted(tab, key=lambda m: ([-(tab[m].get(k, {}).get("score") or 0) for k in acc_cols], m)):
        cells = tab[method]
        shown = []
        for k in cols:
            e = cells.get(k)
            shown.append("" if e is None else "refused" if e.get("refused") else f"{e['score']:.2f}")
        by_len: dict[int, list[float]] = {}
        peaks: dict[int, float] = {}
        accuracy_only = any(e["higher"] and e.get("seconds") is not None for e in cells.values())
        for (_, n), e in cells.items():
            if accuracy_only and not e["higher"]:
                continue  # seconds of the accuracy tasks; a perplexity pass has no decode
            if e.get("seconds") is not None:
                by_len.setdefault(n, []).append(e["seconds"])
            if e.get("peak"):
                peaks[n] = max(peaks.get(n, 0.0), e["peak"])
        secs = ", ".join(f"{_length(n)} {statistics.fmean(v):.0f}" for n, v in sorted(by_len.items()))
        peak = ", ".join(f"{_length(n)} {v / 2**30:.2f}" for n, v in sorted(peaks.items()))
        lines.append(f"| {method} | " + " | ".join(shown) + f" | {secs} | {peak} |")
    lines += ["", f"![accuracy vs length]({png})", "", "## Winner at each length", "",
              "Best mean accuracy over the accuracy tasks measured at that length (only methods with all of them "
              "compete); ties go to fewer seconds per sample. The lowest perplexity among the methods that read "
              "that length is listed beside it.", "",
              "| length | tasks | winner | accuracy | tied | lowest perplexity |", "|---|---|---|---|---|---|"]
    for n, w in winners(tab).items():
        tied = ", ".join(m for m in w["tied"] if m != w["method"])
        ppl = f"{w['lowest_perplexity']} ({w['perplexity']:.1f})" if "lowest_perplexity" in w else ""
        acc = f"{w['accuracy']:.2f}" if w["method"] else ""
        lines.append(f"| {_length(n)} | {', '.join(w['tasks'])} | {w['method'] or ''} | {acc} | {tied} | {ppl} |")
    lengths = sorted({n for cells in tab.values() for (t, n) in cells if t == "passkey"})
    if len(lengths) >= 2:
        rows = goal(tab, lengths[0], lengths[-1], points)
        if rows:
            lines += ["", f"## Goal: pass-key accuracy kept from {_length(lengths[0])} to {_length(lengths[-1])} "
                      f"within {points:g} points", "", f"| method | {_length(lengths[0])} | {_length(lengths[-1])} | "
                      "change (points) | kept |", "|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['method']} | {r['short']:.2f} | {r['long']:.2f} | {r['change_points']:+.0f} | "
                             f"{'yes' if r['kept'] else 'no'} |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, help="path stem of the .md / .json / .png (default: the folder)")
    ap.add_argument("--points", type=float, default=10.0, help="the goal's allowed drop in points (default 10)")
    args = ap.parse_args()
    out = args.out or args.folder
    tab = table(load_cells(args.folder))
    if not tab:
        raise SystemExit(f"no finished cells under {args.folder}: run `longreach bench --out {args.folder}` first")
    png = out.with_suffix(".png")
    plot(tab, png)
    md = out.with_suffix(".md")
    md.write_text(markdown(tab, args.folder, args.points, png.name, reading(md)))
    out.with_suffix(".json").write_text(json.dumps(
        {"cells": {m: {f"{t}@{n}": e for (t, n), e in c.items()} for m, c in tab.items()},
         "winners": winners(tab), "environment": environment()}, indent=1, default=str))
    print(md.read_text())


if __name__ == "__main__":
    main()
