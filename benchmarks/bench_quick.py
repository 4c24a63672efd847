"""Time the harness' default quick suite on the packaged model and write a Markdown summary.

Runs ``longreach bench --out DIR --report`` (the defaults: ``none`` vs ``dynamic-ntk``, passkey and
niah_single_2 at 1k/2k/4k/10k, 3 depths, the ``auto`` prompt = the format measured best for the model; the
committed folder was made with ``plain``, the default then: resume it with ``--resume -- --prompt plain``)
in a child process from an empty folder, so the wall time includes starting Python and loading the model,
then writes ``DIR.md``: the machine, the wall
time against the 15-minute goal, and the harness' own Markdown report of the folder
(:func:`longreach.bench.report.markdown`: commands, effective length, every cell with its costs).

    .venv/bin/python benchmarks/bench_quick.py --out benchmarks/results/bench-quick
    .venv/bin/python benchmarks/bench_quick.py --resume ...   # keep finished cells (the time then counts
                                                              # only what ran)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from longreach.bench.report import markdown

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

    body = markdown(args.out)
    lines = [
        "# The harness' quick suite on smollm2-135m", "",
        f"Command: `python benchmarks/bench_quick.py --out {args.out}` (runs `longreach bench --out {args.out} "
        f"--report{' ' + ' '.join(args.extra) if args.extra else ''}`)  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (1 min).  ",
        f"**Wall time {wall / 60:.1f} min** (goal: under {GOAL_SECONDS // 60} min"
        f"{', met' if wall < GOAL_SECONDS else ', NOT met'}), model load and report included.", "",
        f"Report: [{args.out.name}/report.html]({args.out.name}/report.html) (heatmaps, curves, effective length).",
        "", body.split("\n", 1)[1].lstrip(),  # the harness' report without its title
    ]
    md = args.out.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
