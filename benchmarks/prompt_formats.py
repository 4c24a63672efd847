"""Prompt formats compared: which format makes each packaged model answer real in-window questions.

Issue 16 item 0. For each model and each prompt format (``BASE[+MOD...]``, docs/prompts.md) this runs
``longreach bench`` (its Python API: same cells, resume and records) with method ``none`` on one task
(default ``qa-mix``: essays, generated prose, code and lists, several needle phrasings and question
styles) at one length, one results folder per (model, format)::

    benchmarks/results/prompt-formats/<model>/<format with + as ->/

then writes ``benchmarks/results/prompt-formats.{md,json,png}``: accuracy per format per model with 95%
Wilson intervals, split by the samples' ``haystack`` / ``style`` / ``phrasing`` when their meta has them,
seconds per sample, the commands, git hash, machine and load average. Before running it prints the cost
(samples to run x formats x seconds per sample, measured on one probe sample per model, or on the
records already there). The same command resumes where it stopped; formats a model cannot use (``chat``
on a model without a chat template) are skipped with a note.

    .venv/bin/python benchmarks/prompt_formats.py                         # both models, the default formats
    .venv/bin/python benchmarks/prompt_formats.py --models smollm2-135m --formats chat,plain+prefix --samples 2
    .venv/bin/python benchmarks/prompt_formats.py --estimate-only         # the cost, nothing run
    .venv/bin/python benchmarks/prompt_formats.py --summary-only          # the tables from what is there
    .venv/bin/python benchmarks/prompt_formats.py --summary-only --apply  # + the best formats into
                                                                          #   longreach/data/prompt_formats.json

``--apply`` writes each model's best format (highest accuracy, then the higher Wilson lower bound, then
the fewer modifiers, then the faster) as its table entry, and the best format of the chat model / the base model as
``chat_default`` / ``base_default``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "prompt-formats"
DEFAULT_MODELS = ["smollm2-135m", "gemma3-270m"]
DEFAULT_FORMATS = ["chat", "chat+qfirst", "chat+both", "chat+instruct", "chat+prefix", "chat+instruct+prefix",
                   "plain", "plain+qfirst", "plain+both", "plain+instruct", "plain+prefix", "plain+instruct+prefix",
                   "plain+both+prefix"]
SPLITS = ("haystack", "style", "phrasing")  # meta fields a split table is made for (when present)
Z95 = 1.959963984540054


# ------------------------------------------------------------------------------------------ statistics
def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n (k may be fractional: mean scores); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if float(k).is_integer():
        from scipy.stats import binomtest

        ci = binomtest(int(k), n).proportion_ci(confidence_level=0.95, method="wilson")
        return float(ci.low), float(ci.high)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def format_folder(fmt: str) -> str:
    return fmt.replace("+", "-")


# ------------------------------------------------------------------------------------------ the sweeps
def sweep_config(model: str, fmt: str, args: argparse.Namespace) -> Any:
    from longreach.bench.runner import load_config

    return load_config(None, {"model": model, "methods": "none", "tasks": args.task, "lengths": args.length,
                              "depths": args.depths, "samples": args.samples, "seed": args.seed, "prompt": fmt,
                              "out": str(Path(args.out) / model / format_folder(fmt))})


def records_of(folder: Path) -> list[dict[str, Any]]:
    """Every sample record under a (model, format) results folder."""
    from longreach.bench.files import read_records

    out: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("cells/**/samples.jsonl")):
        out += read_records(path)
    return out


def usable_formats(model: str, formats: list[str], has_template: bool) -> tuple[list[str], list[str]]:
    """(formats the model can use, notes on the ones skipped)."""
    from longreach.errors import InputError
    from longreach.prompt import resolve_format

    keep, notes = [], []
    for fmt in formats:
        try:
            resolve_format(fmt, model, has_template)
        except InputError as exc:
            notes.append(f"{model}: {fmt} skipped ({exc})")
            continue
        keep.append(fmt)
    return keep, notes


def probe_seconds(lm: Any, cfg: Any) -> float:
    """Seconds of one real sample of ``cfg``'s first cell (the first depth, seed), outside its folder."""
    from longreach.bench.cache import cached_sample
    from longreach.bench.runner import plan_cells
    from longreach.bench.task import PROMPT_FORMAT
    from longreach.engine import Engine
    from longreach.readers import Request

    cell = plan_cells(cfg, lm.name)[0]
    _, seed, depth = cell.sample_plan(cfg)[0]
    token = PROMPT_FORMAT.set(cfg.prompt)
    try:
        sample = cached_sample(cell.task, lm.tokenizer, cell.length, seed, depth)
    finally:
        PROMPT_FORMAT.reset(token)
    request = Request(sample.context, sample.question, sample.max_new_tokens, sample.answer_prefix,
                      cfg.chunk_size, prompt=cfg.prompt)
    t0 = time.perf_counter()
    Engine.for_model(lm).run("none", request)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> list[str]:
    """Run (or resume) every (model, format) sweep; returns the notes on skipped formats."""
    from longreach.bench.runner import plan_cells, run_bench
    from longreach.models import load_model

    notes: list[str] = []
    for model in args.models:
        lm = load_model(model, dtype=args.dtype)
        formats, skipped = usable_formats(model, args.formats, bool(lm.info.chat_template))
        notes += skipped
        for note in skipped:
            print(f"[prompt-formats] {note}", flush=True)
        if not formats:
            continue
        cfgs = [sweep_config(model, fmt, args) for fmt in formats]
        total = sum(len(c.sample_plan(cfg)) for cfg in cfgs for c in plan_cells(cfg, lm.name))
        have = {fmt: records_of(Path(cfg.out)) for fmt, cfg in zip(formats, cfgs)}
        done = sum(len(r) for r in have.values())
        seen = [r["seconds"] for rs in have.values() for r in rs if r.get("seconds") and not r.get("refused")]
        if seen:
            per, how = statistics.fmean(seen), f"mean of {len(seen)} samples already run"
        else:
            per, how = probe_seconds(lm, cfgs[0]), f"one probe sample with {formats[0]}"
        left = total - done
        print(f"[prompt-formats] {model}: {len(formats)} formats x {total // len(formats)} samples = {total} "
              f"samples, {left} to run x {per:.1f} s/sample ({how}) = ~{left * per / 60:.1f} min "
              f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
        if args.estimate_only:
            continue
        for fmt, cfg in zip(formats, cfgs):
            print(f"[prompt-formats] {model} {fmt} -> {cfg.out}", flush=True)
            run_bench(cfg, lm=lm, progress=sys.stderr.isatty())
    return notes


# ------------------------------------------------------------------------------------------ the summary
def summarize(root: Path) -> dict[str, Any]:
    """Every (model, format) folder under ``root``: accuracy with its Wilson interval, splits, costs."""
    from longreach.bench.files import read_json

    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for folder in sorted(p for p in Path(root).glob("*/*") if (p / "config.json").exists()):
        config = read_json(folder / "config.json")
        config = config if isinstance(config, dict) else {}
        records = [r for r in records_of(folder) if not r.get("refused")]
        if not records:
            continue
        scores = [float(r.get("score") or 0.0) for r in records]
        correct = sum(1 for s in scores if s >= 0.5)
        lo, hi = wilson(correct, len(scores))
        seconds = [float(r.get("seconds") or 0.0) for r in records]
        loads = [m.get("load_average") for m in (read_json(p) for p in folder.glob("cells/**/metrics.json"))
                 if isinstance(m, dict) and m.get("load_average")]
        splits: dict[str, dict[str, dict[str, Any]]] = {}
        for key in SPLITS:
            groups: dict[str, list[float]] = defaultdict(list)
            for r, s in zip(records, scores):
                value = (r.get("meta") or {}).get(key)
                if isinstance(value, (str, int)) and not isinstance(value, bool):
                    groups[str(value)].append(s)
            if groups:
                splits[key] = {}
                for value, ss in sorted(groups.items()):
                    k = sum(1 for s in ss if s >= 0.5)
                    splits[key][value] = {"n": len(ss), "correct": k, "accuracy": k / len(ss),
                                          "ci95": list(wilson(k, len(ss)))}
        rows.append({
            "model": config.get("model_name") or folder.parent.name, "format": config.get("prompt") or folder.name,
            "folder": str(folder.relative_to(root.parent) if root.parent in folder.parents else folder),
            "task": ",".join(str(t) for t in config.get("tasks", [])), "lengths": config.get("lengths"),
            "n": len(scores), "correct": correct, "accuracy": correct / len(scores), "ci95": [lo, hi],
            "mean_score": statistics.fmean(scores), "errors": sum(1 for r in records if r.get("error")),
            "seconds_per_sample": statistics.fmean(seconds), "input_tokens_mean":
                statistics.fmean(float(r.get("input_tokens") or 0) for r in records),
            "load_average_max": max((max(x) for x in loads), default=None), "splits": splits,
        })
        for r in config.get("runs") or []:
            if isinstance(r, dict):
                runs.append({"folder": rows[-1]["folder"], **r})
    best = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        top = max(mine, key=lambda r: (r["accuracy"], r["ci95"][0], -r["format"].count("+"), -r["seconds_per_sample"]))
        best[model] = top["format"]
    return {"rows": rows, "best": best, "runs": runs}


def machine() -> dict[str, Any]:
    from longreach.bench.store import environment, git_hash

    return {"git": git_hash(), "environment": environment(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(summary: dict[str, Any], command: str, info: dict[str, Any], notes: list[str]) -> str:
    rows = summary["rows"]
    env = info.get("environment", {})
    lines = ["# Prompt formats: accuracy per format per model", "",
             "Issue 16 item 0: `benchmarks/prompt_formats.py` ran `longreach bench` with method `none` once per "
             "(model, prompt format); formats are `BASE[+MOD...]` (docs/prompts.md). Accuracy = samples scored "
             ">= 0.5, with the 95% Wilson interval; s/sample = the harness's seconds per sample (prefill + decode).",
             "", f"- command: `{command}`", f"- git: `{info.get('git')}`, {info.get('date')}",
             f"- machine: {env.get('cpu') or env.get('processor')} ({env.get('cpu_count')} cores, "
             f"{env.get('threads')} torch threads), torch {env.get('torch')}, transformers {env.get('transformers')}",
             f"- load average at summary: {info.get('load_average')}; the highest at any cell's end is in the "
             "table (were the seconds measured alone?)", ""]
    lines += [f"- note: {n}" for n in notes]
    for model in sorted({r["model"] for r in rows}):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: (-r["accuracy"], r["format"]))
        lines += ["", f"## {model}", "", f"Best: **`{summary['best'][model]}`**", "",
                  "| format | accuracy | 95% CI | n | errors | s/sample | tokens | load max |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mine:
            lines.append(f"| `{r['format']}` | {_pct(r['accuracy'])} | {_pct(r['ci95'][0])}-{_pct(r['ci95'][1])} | "
                         f"{r['n']} | {r['errors']} | {r['seconds_per_sample']:.1f} | {r['input_tokens_mean']:.0f} | "
                         f"{r['load_average_max'] if r['load_average_max'] is not None else ''} |")
        for key in SPLITS:
            values = sorted({v for r in mine for v in r["splits"].get(key, {})})
            if not values:
                continue
            lines += ["", f"By {key} (accuracy, n):", "", "| format | " + " | ".join(values) + " |",
                      "|---|" + "---|" * len(values)]
            for r in mine:
                cells = [r["splits"].get(key, {}).get(v) for v in values]
                lines.append(f"| `{r['format']}` | " + " | ".join(
                    f"{_pct(c['accuracy'])} ({c['n']})" if c else "" for c in cells) + " |")
    if summary["runs"]:
        lines += ["", "## Runs", ""] + [f"- `{r['folder']}`: `{r.get('command')}` (git `{r.get('git')}`, "
                                        f"{r.get('date')})" for r in summary["runs"]]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in summary["rows"]})
    if not models:
        return
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 2.2 + 0.32 * max(
        len([r for r in summary["rows"] if r["model"] == m]) for m in models) * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        mine = sorted((r for r in summary["rows"] if r["model"] == model), key=lambda r: r["accuracy"])
        y = range(len(mine))
        acc = [100 * r["accuracy"] for r in mine]
        err = [[100 * (r["accuracy"] - r["ci95"][0]) for r in mine], [100 * (r["ci95"][1] - r["accuracy"]) for r in mine]]
        ax.barh(list(y), acc, xerr=err, color=["#c44e52" if r["format"] == summary["best"][model] else "#4c72b0"
                                                  for r in mine], capsize=2)
        ax.set_yticks(list(y), [r["format"] for r in mine], fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy % (95% Wilson interval)")
        ax.set_title(f"{model}: n = {mine[0]['n'] if mine else 0} per format", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def apply_best(summary: dict[str, Any], table: Path) -> dict[str, Any]:
    """Write each model's best format into the format table; ``chat_default`` / ``base_default`` become the
    best format of a model with / without a chat template (a model with a template is one that ran a chat
    format). Returns the new table."""
    from longreach.prompt import parse_format

    data = json.loads(table.read_text(encoding="utf-8"))
    for model, fmt in sorted(summary["best"].items()):
        data["models"][model] = fmt
        chat_model = any(parse_format(r["format"]).base == "chat" for r in summary["rows"] if r["model"] == model)
        data["chat_default" if chat_model else "base_default"] = fmt
    data["source"] = "benchmarks/results/prompt-formats.md"
    table.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return data


def write_summary(root: Path, stem: Path, command: str, notes: list[str]) -> dict[str, Any]:
    summary = summarize(root)
    info = machine()
    result = {"command": command, **info, "notes": notes, **summary}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(summary, command, info, notes), encoding="utf-8")
    plot(summary, stem.with_suffix(".png"))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help="comma-separated prompt formats")
    p.add_argument("--task", default="qa-mix", help="task spec (default qa-mix)")
    p.add_argument("--length", default="4k", help="context length (default 4k)")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths (default 0.1,0.5,0.9)")
    p.add_argument("--samples", type=int, default=8, help="samples per depth (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, help="model dtype (default: the fastest on the device)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results root (default benchmarks/results/prompt-formats)")
    p.add_argument("--summary", default=None, help="summary files stem (default: <out>.{md,json,png})")
    p.add_argument("--estimate-only", action="store_true", help="print the cost estimate, run nothing")
    p.add_argument("--summary-only", action="store_true", help="only write the summary from what is there")
    p.add_argument("--apply", action="store_true", help="write the best formats into longreach/data/prompt_formats.json")
    args = p.parse_args(argv)
    from longreach.prompt import FORMAT_TABLE, check_format

    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.formats = list(dict.fromkeys(check_format(f) for f in args.formats.split(",") if f.strip()))
    command = "python benchmarks/prompt_formats.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    notes: list[str] = []
    if not args.summary_only:
        notes = run(args)
        if args.estimate_only:
            return 0
    root = Path(args.out)
    stem = Path(args.summary) if args.summary else root
    result = write_summary(root, stem, command.strip(), notes)
    for model, fmt in result["best"].items():
        row = next(r for r in result["rows"] if r["model"] == model and r["format"] == fmt)
        print(f"[prompt-formats] {model}: best {fmt} {_pct(row['accuracy'])} "
              f"({_pct(row['ci95'][0])}-{_pct(row['ci95'][1])}, n={row['n']})")
    print(f"[prompt-formats] wrote {stem}.md, .json, .png")
    if args.apply:
        apply_best(result, FORMAT_TABLE)
        print(f"[prompt-formats] wrote the best formats into {FORMAT_TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
