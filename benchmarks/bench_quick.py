"""Time the harness' default quick suite on the packaged model and write a Markdown summary.

Runs ``longreach bench --out DIR --report`` (the defaults: ``none`` vs ``dynamic-ntk``, passkey and
niah_single_2 at 1k/2k/4k/10k, 3 depths, plain prompt) in a child process from an empty folder, measures
its wall time, then writes ``DIR.md``: the machine, the wall time against the 15-minute goal, the
effective-length table and every cell's score, time and memory, read back from ``DIR/results.json`` and
the cells' metrics.

    .venv/bin/python benchmarks/bench_quick.py --out benchmarks/results/bench-quick
    .venv/bin/python benchmarks/bench_quick.py --resume ...   # keep finished cells (the time then counts
                                                              # only what ran)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longreach.bench.report import summarize  # noqa: E402
from longreach.bench.store import load_cells  # noqa: E402
from longreach.units import format_bytes, format_length  # noqa: E402

GOAL_SECONDS = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench-quick"))
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out")
    ap.add_argument("extra", nargs="*", help="more `longreach bench` options after --")
    args = ap.parse_args()
    if args.out.exists() and not args.resume:
        shutil.rmtree(args.out)
    cmd = [sys.executable, "-m", "longreach.cli", "bench", "--out", str(args.out), "--report", "--no-progress",
           *args.extra]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    cells = load_cells(args.out)
    summary = summarize(cells)
    results = json.loads((args.out / "results.json").read_text())
    env = results.get("env", {})
    shown = "longreach bench --out " + str(args.out) + " --report" + (" " + " ".join(args.extra) if args.extra else "")
    lines = [
        "# The harness' quick suite on smollm2-135m", "",
        f"Command: `python benchmarks/bench_quick.py --out {args.out}` (runs `{shown}`; git "
        f"{results.get('git_hash', '?')[:7]}, {results.get('date_iso', '')})  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}; load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f} (1 min).  ",
        f"**Wall time {wall / 60:.1f} min** (goal: under {GOAL_SECONDS // 60} min"
        f"{', met' if wall < GOAL_SECONDS else ', NOT met'}), model load and report included.", "",
        f"Report: [{args.out.name}/report.html]({args.out.name}/report.html) (heatmaps, curves, effective length).",
        "", "## Effective length (RULER style: longest length before the first task average below the threshold)", "",
        "| method | " + " | ".join(format_length(n) for n in summary["lengths"])
        + f" | effective (>= {summary['threshold']}) | effective (>= {summary['relative_threshold'] or 0:.1f}, "
          f"85.6% of none at {format_length(min(summary['lengths'])) if summary['lengths'] else '-'}) |",
        "|---|" + "---|" * (len(summary["lengths"]) + 2),
    ]
    for m in summary["methods"]:
        row = summary["table"][m]
        vals = [f"{row[n]:.0f}" if row.get(n) is not None else "-" for n in summary["lengths"]]
        eff, rel = summary["effective"][m], summary["effective_relative"][m]
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {format_length(eff) if eff else '< ' + format_length(min(summary['lengths']))}"
                     f" | {format_length(rel) if rel else '-'} |")
    lines += ["", "Scores are task averages x 100 (passkey and niah_single_2, 3 depths each); a refused cell "
              "(beyond the method's reach) counts as 0.", "", "## Cells", "",
              "| method | task | length | score | by depth | prompt tokens | s / sample | prefill tok/s | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["method"] != "none", c["method"], c["task"], c["length"])):
        if c["status"] != "done":
            lines.append(f"| {c['method']} | {c['task']} | {format_length(c['length'])} | refused | "
                         f"{c.get('reason', '')} | | | | |")
            continue
        depth = ", ".join(f"{float(d):.0%}: {v:.0f}" for d, v in c.get("by_depth", {}).items())
        lines.append(f"| {c['method']} | {c['task']} | {format_length(c['length'])} | {c['score']:.2f} | {depth} | "
                     f"{c['tokens_mean']:.0f} | {c['seconds_per_sample']:.1f} | {c['prefill_tokens_per_second']} | "
                     f"{format_bytes(c['peak_memory_bytes'])} |")
    md = args.out.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
