"""Summarise the Route benchmarks (issue 15): rag / route / none / infiniretri on LaRA, passkey and NIAH.

Reads one or more results folders written by ``longreach bench`` and writes a markdown table and a JSON
file with, per (method, task, length): accuracy, seconds per question split into index building (the
reader's ``index_seconds``: chunking, BM25, embeddings; 0 when the index came from the cache) and
answering (everything else), peak memory, and for ``route`` the decisions taken. The LaRA mix is the mean
of the four LaRA task accuracies (LaRA's "overall").

    python benchmarks/route_summary.py benchmarks/results/route-8k benchmarks/results/route-128k \
        --out benchmarks/results/route
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path
from typing import Any

from prompt_formats import wilson  # benchmarks/: the tested 95% Wilson interval (tests/test_prompt.py)

from longreach.bench.store import environment, git_hash, load_cells, load_samples

LARA = ("lara_location", "lara_reasoning", "lara_comparison", "lara_hallucination")


def _length(n: int) -> str:
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _gib(b: float | None) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def _machine(name: str | None) -> str:
    """A short machine label: the CPU family (cells from before machines were recorded: the AMD EPYC)."""
    if not name:
        return "EPYC*"
    for family in ("EPYC", "Xeon", "Ryzen", "Core", "Apple"):
        if family in name:
            return family
    return name.split(",")[0][:24]


def rows(folders: list[Path]) -> list[dict[str, Any]]:
    out = []
    for folder in folders:
        for cell in load_cells(folder):
            row = {"folder": str(folder), "model": cell["model"], "method": cell["method"], "task": cell["task"],
                   "length": cell["length"], "status": cell["status"], "n": cell.get("n"), "score": cell.get("score"),
                   "reason": cell.get("reason"), "machine": _machine(cell.get("machine"))}
            if cell["status"] == "done":
                samples = load_samples(cell)
                idx = [float((s.get("reader") or {}).get("index_seconds", 0.0)) for s in samples]
                secs = [float(s.get("seconds", 0.0)) for s in samples]
                row.update({
                    "seconds_per_question": statistics.fmean(secs),
                    "index_seconds_per_question": statistics.fmean(idx),
                    "answer_seconds_per_question": statistics.fmean(a - b for a, b in zip(secs, idx)),
                    "slowest_seconds": max(secs),
                    "peak_memory_bytes": max((s.get("peak_memory_bytes") or 0) for s in samples),
                    "decisions": dict(collections.Counter(
                        ((s.get("reader") or {}).get("route") or {}).get("decision", "-") for s in samples)),
                    "predictions": [(s.get("depth"), s.get("score"), (s.get("prediction") or "")[:80])
                                    for s in samples],
                })
            out.append(row)
    return sorted(out, key=lambda r: (r["length"], r["task"], r["method"]))


def lara_mix(table: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    by: dict[tuple[str, int], dict[str, float]] = collections.defaultdict(dict)
    for r in table:
        if r["task"] in LARA and r["score"] is not None:
            by[(r["method"], r["length"])][r["task"]] = r["score"]
    return {k: statistics.fmean(v.values()) for k, v in by.items() if len(v) == len(LARA)}


def pooled(table: list[dict[str, Any]], tasks: tuple[str, ...] = ("passkey", "niah"),
           min_length: int = 131072) -> list[dict[str, Any]]:
    """The retrieval goal's numbers: per (length, method) the right answers on ``tasks`` over every folder
    (each sample a new document and depth), the 95% Wilson interval and the slowest question."""
    by: dict[tuple[int, str], dict[str, Any]] = {}
    for r in table:
        if r["status"] != "done" or r["task"] not in tasks or r["length"] < min_length or not r["n"]:
            continue
        g = by.setdefault((r["length"], r["method"]), {"right": 0.0, "n": 0, "slowest": 0.0, "by_task": {}})
        right = sum(float(s or 0) for _, s, _ in r["predictions"])
        g["right"] += right
        g["n"] += r["n"]
        t = g["by_task"].setdefault(r["task"], [0.0, 0])
        t[0] += right
        t[1] += r["n"]
        g["slowest"] = max(g["slowest"], r.get("slowest_seconds", 0.0))
    out = []
    for (length, method), g in sorted(by.items()):
        lo, hi = wilson(g["right"], g["n"])
        out.append({"length": length, "method": method, "right": g["right"], "n": g["n"], "accuracy": g["right"] / g["n"],
                    "ci": (lo, hi), "slowest_seconds": g["slowest"],
                    "by_task": {k: f"{v[0]:g}/{v[1]}" for k, v in sorted(g["by_task"].items())}})
    return out


def reading(md: Path) -> str:
    """The hand-written "## Reading" section of an earlier summary ``md`` (kept when it is regenerated)."""
    old = md.read_text() if md.is_file() else ""
    if "\n## Reading" not in old:
        return ""
    notes = old[old.index("\n## Reading"):]
    return notes[:notes.index("\n## ", 1)] if "\n## " in notes[1:] else notes


def markdown(table: list[dict[str, Any]], command: str, notes: str = "") -> str:
    env = environment()
    lines = ["# Route benchmarks: rag, route and the full read side by side (issue 15)", "",
             f"Command: `{command}`  ", f"Machine: {env.get('cpu', '')}, {env.get('cpu_count', '')} cores, "
             f"torch {env.get('torch', '')}, transformers {env.get('transformers', '')}; git {git_hash()}", "",
             "Seconds per question exclude generating the sample. *Of which index* = chunking + BM25 + embeddings "
             "built during that question (`index_seconds` of the rag reader). Every sample is a new document, but "
             "the index is cached on disk by content: the first rag-based method of a sweep on a sample builds it, "
             "and the later ones on the same sample (same chunk size) find it built (0 here): compare index cost "
             "on the first method's rows (`rag`, hybrid, in these sweeps; hybrid embeds every chunk when there are "
             "fewer than `pool` = 2,048, so the later `dense` rows reuse its vectors).", "",
             "Machine per row: the CPU the cell ran on (seconds from two CPUs are not comparable; the Xeon was about 2x "
             "faster than the AMD EPYC on the same cells); EPYC* = a cell from before cells recorded their machine "
             "(all of those ran on the EPYC).", "",
             "| length | task | method | n | accuracy | s / question | of which index | answer s | peak GiB | route "
             "| machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        if r["status"] != "done":
            lines.append(f"| {_length(r['length'])} | {r['task']} | {r['method']} | - | {r['status']} | | | | | "
                         f"{r.get('reason') or ''} | {r['machine']} |")
            continue
        dec = ", ".join(f"{k} {v}" for k, v in r["decisions"].items() if k != "-")
        lines.append(f"| {_length(r['length'])} | {r['task']} | {r['method']} | {r['n']} | {r['score']:.2f} | "
                     f"{r['seconds_per_question']:.1f} | {r['index_seconds_per_question']:.1f} | "
                     f"{r['answer_seconds_per_question']:.1f} | {_gib(r['peak_memory_bytes'])} | {dec} | {r['machine']} |")
    if notes:
        lines += ["", notes.strip()]
    pool = pooled(table)
    if pool:
        lines += ["", "## Pass key and NIAH at 128k and 1M, pooled over the folders (the retrieval goal)", "",
                  "Every sample is its own document (seed) and depth; the interval is the 95% Wilson interval. "
                  "Slowest = the longest question, index included (sample generation excluded).", "",
                  "| length | method | right / n | accuracy | 95% CI | passkey | niah | slowest s |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in pool:
            lines.append(f"| {_length(g['length'])} | {g['method']} | {g['right']:g} / {g['n']} | {g['accuracy']:.2f} | "
                         f"{g['ci'][0]:.2f}-{g['ci'][1]:.2f} | {g['by_task'].get('passkey', '-')} | "
                         f"{g['by_task'].get('niah', '-')} | {g['slowest_seconds']:.1f} |")
    mix = lara_mix(table)
    if mix:
        lines += ["", "## LaRA mix (mean of the four LaRA task accuracies)", "", "| length | method | LaRA mix |",
                  "|---|---|---|"]
        for (method, length), v in sorted(mix.items(), key=lambda kv: (kv[0][1], -kv[1])):
            lines.append(f"| {_length(length)} | {method} | {v:.2f} |")
    lines += ["", "## Answers", ""]
    for r in table:
        if r["status"] == "done":
            shown = "; ".join(f"{d}: {int(s) if s in (0, 1) else s} {p!r}" for d, s, p in r["predictions"])
            lines.append(f"- {_length(r['length'])} {r['task']} {r['method']}: {shown}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/route"))
    ap.add_argument("--command", default="", help="the bench command(s) that produced the folders")
    args = ap.parse_args()
    table = rows(args.folders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": table, "lara_mix": {f"{m}@{n}": v for (m, n), v in lara_mix(table).items()},
         "pooled": pooled(table), "environment": environment()}, indent=1, default=str))
    md = args.out.with_suffix(".md")
    md.write_text(markdown(table, args.command, reading(md)))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
