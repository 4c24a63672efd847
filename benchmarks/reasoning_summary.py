"""Summarise the Reasoning benchmarks (issue 17): agents / alr2 / rag / infiniretri / none on multi-hop,
aggregation, NeedleBench M-RS / M-RT and the LaRA tasks.

Reads ``longreach bench`` results folders and writes a markdown table and a JSON file with, per (method,
task, length): accuracy, seconds per question, peak memory, the machine, and for ``alr2`` the quotes the
model wrote, how many were verified against the source and how many were not (hallucinated retrievals,
dropped before the answer), with the hallucinated-quote rate = hallucinated / quotes. Group means:
multi-hop (``multihop``, ``multihop:hops=3``, ``needlebench-mrs``), aggregation (``aggregate``,
``aggregate:op=compare``, ``needlebench-mrt``), the LaRA mix, and the facts-alone control (``filler=false``:
the same questions over the bare facts, with and without the distractor chains). Rows carry the model, so
one folder may hold several.

    python benchmarks/reasoning_summary.py benchmarks/results/reasoning-8k benchmarks/results/reasoning-32k \
        --out benchmarks/results/reasoning
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path
from typing import Any

from route_summary import LARA, _gib, _length, _machine, reading

from longreach.bench.store import environment, git_hash, load_cells, load_samples

DEFAULT_MODEL = "smollm2-135m"
GROUPS = {
    "multi-hop": ("multihop", "multihop:hops=3", "needlebench-mrs"),
    "aggregation": ("aggregate", "aggregate:op=compare", "needlebench-mrt"),
    "LaRA mix": LARA,
    "multi-hop, facts alone": ("multihop:filler=false", "multihop:hops=3,filler=false"),
    "multi-hop, facts alone, no distractors": ("multihop:distractors=0,filler=false",
                                               "multihop:hops=3,distractors=0,filler=false"),
    "aggregation, facts alone": ("aggregate:filler=false", "aggregate:op=compare,filler=false"),
}


TASKS = {t for tasks in GROUPS.values() for t in tasks}


def rows(folders: list[Path]) -> list[dict[str, Any]]:
    """One row per cell of the groups' tasks (a shared folder's other tasks, e.g. route-128k's pass keys,
    are left out)."""
    out = []
    for folder in folders:
        for cell in load_cells(folder):
            if (cell.get("task_spec") or cell["task"]) not in TASKS:
                continue
            row = {"folder": str(folder), "model": cell.get("model", ""), "method": cell["method"], "task": cell.get("task_spec") or cell["task"],
                   "length": cell["length"], "status": cell["status"], "n": cell.get("n"),
                   "score": cell.get("score"), "reason": cell.get("reason"), "machine": _machine(cell.get("machine"))}
            if cell["status"] == "done":
                samples = load_samples(cell)
                readers = [s.get("reader") or {} for s in samples]
                quotes = sum(int(r.get("quotes", 0)) for r in readers)
                row.update({
                    "seconds_per_question": statistics.fmean(float(s.get("seconds", 0.0)) for s in samples),
                    "peak_memory_bytes": max((s.get("peak_memory_bytes") or 0) for s in samples),
                    "quotes": quotes if any("quotes" in r for r in readers) else None,
                    "verified": sum(int(r.get("verified", 0)) for r in readers),
                    "hallucinated": sum(int(r.get("hallucinated", 0)) for r in readers),
                    "agents": [r["agents"] for r in readers if "agents" in r],
                    "predictions": [(s.get("depth"), s.get("score"), (s.get("prediction") or "")[:70])
                                    for s in samples],
                })
            out.append(row)
    return sorted(out, key=lambda r: (r["length"], r["task"], r["model"], r["method"]))


def group_means(table: list[dict[str, Any]]) -> dict[tuple[str, str, int], float]:
    """(group, method, length) -> mean accuracy over the group's tasks, where every task of it was run;
    the method is prefixed with its model when it is not the default one."""
    by: dict[tuple[str, str, int], dict[str, float]] = collections.defaultdict(dict)
    for r in table:
        for group, tasks in GROUPS.items():
            if r["task"] in tasks and r["score"] is not None:
                by[(group, _who(r), r["length"])][r["task"]] = r["score"]
    return {k: statistics.fmean(v.values()) for k, v in by.items() if len(v) == len(GROUPS[k[0]])}


def _who(r: dict[str, Any]) -> str:
    """The method, prefixed by the model when it is not the default ``smollm2-135m``."""
    return r["method"] if r.get("model", DEFAULT_MODEL) == DEFAULT_MODEL else f"{r['model']} {r['method']}"


def markdown(table: list[dict[str, Any]], command: str, notes: str = "") -> str:
    env = environment()
    lines = ["# Reasoning benchmarks: agents, alr2, rag, infiniretri and the full read side by side (issue 17)", "",
             f"Command: `{command}`  ", f"Summary written on: {env.get('cpu', '')}, torch {env.get('torch', '')}, "
             f"transformers {env.get('transformers', '')}; git {git_hash()}", "",
             "Seconds per question exclude generating the sample; machine = the CPU each cell ran on. "
             "*Quotes* (alr2 only): quotes written / verified against the source / hallucinated (not found, "
             "dropped before the answer); *halluc. rate* = hallucinated / quotes. Methods run on another "
             f"model than {DEFAULT_MODEL} are prefixed with it.", "",
             "| length | task | method | n | accuracy | s / question | peak GiB | quotes / verified / halluc. "
             "| halluc. rate | machine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        if r["status"] != "done":
            lines.append(f"| {_length(r['length'])} | {r['task']} | {_who(r)} | - | {r['status']} | | | | "
                         f"{r.get('reason') or ''} | {r['machine']} |")
            continue
        q = r["quotes"]
        quotes = "" if q is None else f"{q} / {r['verified']} / {r['hallucinated']}"
        rate = "" if not q else f"{r['hallucinated'] / q:.2f}"
        lines.append(f"| {_length(r['length'])} | {r['task']} | {_who(r)} | {r['n']} | {r['score']:.2f} | "
                     f"{r['seconds_per_question']:.1f} | {_gib(r['peak_memory_bytes'])} | {quotes} | {rate} | "
                     f"{r['machine']} |")
    if notes:
        lines += ["", notes.strip()]
    means = group_means(table)
    if means:
        lines += ["", "## Group means (mean accuracy over the group's tasks)", "",
                  "| group | length | method | mean accuracy |", "|---|---|---|---|"]
        for (group, method, length), v in sorted(means.items(), key=lambda kv: (kv[0][0], kv[0][2], -kv[1])):
            lines.append(f"| {group} | {_length(length)} | {method} | {v:.2f} |")
        quotes = collections.defaultdict(lambda: [0, 0])
        for r in table:
            if r.get("quotes"):
                quotes[(_who(r), r["length"])][0] += r["quotes"]
                quotes[(_who(r), r["length"])][1] += r["hallucinated"]
        if quotes:
            lines += ["", "## alr2: hallucinated-quote rate over all tasks", "",
                      "| length | method | quotes | hallucinated | rate |", "|---|---|---|---|---|"]
            for (method, length), (q, h) in sorted(quotes.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                lines.append(f"| {_length(length)} | {method} | {q} | {h} | {h / q:.2f} |")
    lines += ["", "## Answers", ""]
    for r in table:
        if r["status"] == "done":
            shown = "; ".join(f"{d if d is not None else '-'}: {int(s) if s in (0, 1) else s} {p!r}"
                              for d, s, p in r["predictions"])
            lines.append(f"- {_length(r['length'])} {r['task']} {_who(r)}: {shown}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reasoning"))
    ap.add_argument("--command", default="", help="the bench command(s) that produced the folders")
    args = ap.parse_args()
    table = rows(args.folders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": table, "groups": {f"{g}|{m}@{n}": v for (g, m, n), v in group_means(table).items()},
         "environment": environment()}, indent=1, default=str))
    md = args.out.with_suffix(".md")
    md.write_text(markdown(table, args.command, reading(md)))
    print(md.read_text())


if __name__ == "__main__":
    main()
