"""Task cards (issue 18): every registered task once on the default model with ``none``, 3 samples per length.

    python benchmarks/task_cards.py run --lengths 2k,4k,8k --out benchmarks/results/task-cards
    python benchmarks/task_cards.py summary benchmarks/results/task-cards --out benchmarks/results/task-cards.md

``run`` is one resumable ``longreach bench`` sweep over every task in the registry (except ``dataset``, which
needs the user's own copy of an official file), ``--samples 3`` at depth 0.5; re-running the same command
resumes it, so the sweep can be split over sessions (e.g. ``--lengths 2k,4k`` first, then ``--lengths 8k``:
one results folder, cells of each length kept). It prints the estimated cost before starting. ``summary``
writes one Markdown card table grouped by family (each with its paper): what the task measures, its scorer,
the score per length and seconds per sample, with the commands, git hash, machine and load average of each
cell (the machine must be otherwise idle while ``run`` works, so the seconds are real).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from longreach.bench.report import by_family
from longreach.bench.store import environment, git_hash, load_cells, run_line
from longreach.bench.task import TASKS, _load_builtin_tasks
from longreach.units import format_length, parse_length

SKIP = {"dataset": "needs the user's own copy of an official benchmark file (docs/datasets.md)"}
# Seconds per sample of `none` on smollm2-135m on this 2-core CPU, idle (benchmarks/results/prefill.md and the
# route / calibration sweeps): prefill ~320 tok/s at 2k, ~200 tok/s at 8k, plus a short answer. Tasks with long
# answers (LongProc) or two requests per sample (beliefs) cost more; the estimate is a floor.
SECONDS = {1024: 4.0, 2048: 8.0, 4096: 17.0, 8192: 55.0, 16384: 150.0}


def task_list() -> list[str]:
    _load_builtin_tasks()
    return sorted(n for n in TASKS if n not in SKIP)


def estimate(tasks: list[str], lengths: list[int], samples: int) -> float:
    return sum(SECONDS.get(n, n / 150.0) for n in lengths) * samples * len(tasks)


def cmd_run(args: argparse.Namespace) -> int:
    from longreach.bench.runner import load_config, run_bench

    tasks = task_list()
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    cost = estimate(tasks, lengths, args.samples)
    print(f"[task-cards] {len(tasks)} tasks x {len(lengths)} lengths ({args.lengths}) x {args.samples} samples "
          f"with `none` on {args.model}: about {cost / 3600:.1f} h on an idle 2-core CPU (cells already done are "
          f"skipped). Skipped tasks: {', '.join(f'{k} ({v})' for k, v in SKIP.items())}. Load average now: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    overrides: dict[str, Any] = dict(model=args.model, methods="none", tasks=";".join(tasks), lengths=args.lengths,
                                     depths="0.5", samples=args.samples, out=args.out, dtype=args.dtype)
    if args.prompt:
        overrides["prompt"] = args.prompt
    cfg = load_config(None, overrides)
    run_bench(cfg, progress=not args.no_progress)
    return 0


def summary(folder: Path) -> str:
    cells = [c for c in load_cells(folder) if c["method"] == "none"]
    if not cells:
        raise SystemExit(f"{folder}: no finished cells; run `python benchmarks/task_cards.py run --out {folder}`")
    _load_builtin_tasks()
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    env = environment()
    lengths = sorted({c["length"] for c in cells})
    loads = [c["load_average"][0] for c in cells if c.get("load_average")]
    runs = [run_line(r) for r in config.get("runs") or []]
    tasks = task_list()
    missing = [t for t in tasks if not any(c["task"] == t for c in cells)]
    seconds = {(c["task"], c["length"]): c["seconds_per_sample"] for c in cells
               if c.get("seconds_per_sample") is not None}
    # a folder resumed on another machine: seconds are comparable within one machine only, so each cell's
    # machine is shown (cells written before cells recorded it count as one "earlier machine")
    earlier = "the machine of the earlier runs (not recorded per cell)"
    machine_of = {(c["task"], c["length"]): c.get("machine") or earlier for c in cells}
    machines = sorted(set(machine_of.values()), key=lambda m: (m == earlier, m))
    marks = {m: ("" if len(machines) == 1 else "*" * (i + 1)) for i, m in enumerate(machines)}
    done = collections.Counter(c["length"] for c in cells)  # finished tasks per length
    partial = [f"{format_length(n)} ({done[n]} of {len(tasks)} tasks)" for n in lengths if done[n] < len(tasks)]
    lines = ["# Task cards: every task on smollm2-135m with `none`", "",
             f"Each task of `longreach tasks` (except {', '.join(SKIP)}: {next(iter(SKIP.values()))}) run with the "
             f"plain model (method `none`) at {', '.join(format_length(n) for n in lengths)} tokens, 3 samples per "
             f"length (depth 50% for depth tasks), prompt `{config.get('prompt', 'auto')}` (the harness default "
             "`auto` for this model). Score: the task's own scorer, mean over the "
             "samples (0-1; `ppl` is perplexity, lower is better). Seconds: wall time per sample (prefill + "
             "decode, long answers included).", "",
             f"Machine of this summary: {env.get('cpu') or env.get('processor') or env.get('machine')}, "
             f"{env.get('threads')} threads; summary written at git {(git_hash() or '?')[:7]} on {time.strftime('%Y-%m-%d')}. "
             + (f"1-minute load average when cells finished: median {statistics.median(loads):.2f}, "
                f"max {max(loads):.2f} (2 cores; ~1-2 = this run alone)." if loads else ""), "",
             "Commands:", "", *(runs or ["- see config.json"]), ""]
    if len(machines) > 1:
        per = collections.Counter((machine_of[k], k[1]) for k in machine_of)
        lines += ["Seconds come from more than one machine; compare them within one machine only. "
                  "Marks after a seconds value:", ""]
        lines += [f"- `{marks[m]}` {m}: " + ", ".join(f"{per[m, n]} tasks at {format_length(n)}" for n in lengths
                                                     if per[m, n]) for m in machines]
        lines.append("")
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    if partial:
        lines += [f"Lengths still running (resumed by the same `run` command; `-` = not run yet): "
                  f"{', '.join(partial)}.", ""]
    for g in by_family(cells):
        lines += [f"## {g['family']}", "", f"Paper: {g['paper']}", "",
                  "| task | what it measures | scorer | " + " | ".join(format_length(n) for n in lengths)
                  + " | " + " | ".join(f"s / sample {format_length(n)}" for n in lengths) + " |",
                  "|---|---|---|" + "---|" * (2 * len(lengths))]
        for r in g["rows"]:
            cls = TASKS.get(r["task"].split(":")[0])
            what = cls.summary if cls is not None else ""
            scorer = cls.scorer if cls is not None else ""
            scores = " | ".join(r["scores"].get(n, "-") for n in lengths)
            secs = " | ".join(f"{seconds[r['task'], n]:.1f}{marks[machine_of[r['task'], n]]}"
                              if (r["task"], n) in seconds else "-" for n in lengths)
            lines.append(f"| `{r['task']}` | {what.replace('|', '/')} | {scorer.replace('|', '/')} | {scores} | {secs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the sweep")
    r.add_argument("--lengths", default="2k,4k,8k")
    r.add_argument("--samples", type=int, default=3)
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--prompt", default=None, help="prompt format (default: the harness's default)")
    r.add_argument("--out", default="benchmarks/results/task-cards")
    r.add_argument("--dtype", default="float32",
                   help="weights dtype (default float32: the cells already here were made in float32, and a "
                        "folder never mixes dtypes; `auto` picks bfloat16 on CPUs with native bf16)")
    r.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("summary", help="write the card table")
    s.add_argument("folder", type=Path)
    s.add_argument("--out", type=Path, default=Path("benchmarks/results/task-cards.md"))
    args = p.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    text = summary(args.folder)
    args.out.write_text(text + "\n")
    print(f"[task-cards] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
