"""Passkey benchmark of the ``infiniretri`` reader on smollm2-135m, with an optional peer run of the
reference package ``infini-retri`` 0.0.3 on the same documents.

Writes one JSON line per sample to ``<out>/samples.jsonl`` as it goes (a killed run keeps what it did)
and a summary (``summary.json``, ``summary.md``: accuracy, seconds per 1k input tokens, peak memory per
length) rebuilt from all lines at the end, with the exact command.

    python benchmarks/infiniretri.py --lengths 8k,32k --depths 0.1,0.5,0.9 --keys 1 [--peer]
    python benchmarks/infiniretri.py --summarize          # rebuild the summary only
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import longreach  # noqa: E402
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey  # noqa: E402
from longreach.memory import PeakMemory  # noqa: E402
from longreach.units import format_length, parse_length  # noqa: E402


def release_freed_memory() -> None:
    """Give freed heap back to the OS so the next peak is not inflated by an earlier run's leftovers."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def run_ours(lm, doc, spec: str, max_new: int) -> dict:
    release_freed_memory()
    t = time.perf_counter()
    a = longreach.ask(text=doc.text, question=QUESTION, model=lm, method=spec,
                      answer_prefix=ANSWER_PREFIX, max_new_tokens=max_new)
    seconds = time.perf_counter() - t
    return {"answer": a.answer, "seconds": seconds, "peak_memory_bytes": a.peak_memory_bytes,
            "needle_retained": any(doc.key in e for e in a.evidence), "retained_sentences": len(a.evidence)}


def run_peer(lm, doc, max_new: int) -> dict:
    """The reference package on the same model (it requires eager attention in every layer)."""
    # Its plotting helpers import seaborn and it type-checks against tiktoken; neither is used here.
    sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))
    tk = types.ModuleType("tiktoken")
    tk.core = types.SimpleNamespace(Encoding=type("Encoding", (), {}))
    sys.modules.setdefault("tiktoken", tk)
    from infini_retri import InfiniRetri

    release_freed_memory()
    lm.model.set_attn_implementation("eager")
    try:
        ir = InfiniRetri(model=lm.model, tokenizer=lm.tokenizer, topk=300, answer_length=8,
                         window_length=1024)
        with PeakMemory() as peak:
            t = time.perf_counter()
            answer = ir.generate(context=doc.text, question=QUESTION, max_new_tokens=max_new)
            seconds = time.perf_counter() - t
    finally:
        lm.model.set_attn_implementation("sdpa")
    return {"answer": answer, "seconds": seconds, "peak_memory_bytes": peak.peak}


def summarize(out: Path, command: str) -> None:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        cells[(r["system"], r["length"])].append(r)
    table = []
    for (system, length), rs in sorted(cells.items()):
        tokens = sum(r["input_tokens"] for r in rs)
        table.append({
            "system": system, "length": length, "samples": len(rs),
            "accuracy": round(sum(r["score"] for r in rs) / len(rs), 3),
            "needle_retained": (None if system == "infini-retri"
                                else sum(bool(r.get("needle_retained")) for r in rs)),
            "seconds_per_1k_tokens": round(1000 * sum(r["seconds"] for r in rs) / tokens, 2),
            "peak_memory_gib": round(max(r["peak_memory_bytes"] for r in rs) / 2**30, 2),
            "depths": sorted({r["depth"] for r in rs}),
        })
    commands = list(dict.fromkeys(r["command"] for r in rows if "command" in r)) or [command]
    (out / "summary.json").write_text(json.dumps({"commands": commands, "cells": table}, indent=2))
    lines = ["# infiniretri passkey benchmark (smollm2-135m, float32, 2-core shared CPU)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands), "",
             "| system | length | samples | accuracy | needle retained | s / 1k tokens | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for c in table:
        kept = "-" if c["needle_retained"] is None else f"{c['needle_retained']}/{c['samples']}"
        lines.append(f"| {c['system']} | {format_length(c['length'])} | {c['samples']} | "
                     f"{c['accuracy']:.2f} | {kept} | {c['seconds_per_1k_tokens']} | "
                     f"{c['peak_memory_gib']} |")
    lines += ["", "Per sample:", "", "| system | length | depth | key | answer | score | s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        ans = r["answer"].replace("|", "/").replace("\n", " ")[:50]
        lines.append(f"| {r['system']} | {format_length(r['length'])} | {r['depth']} | {r['key']} | {ans} | "
                     f"{r['score']:.0f} | {r['seconds']:.0f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6 + len(table)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="8k,32k")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--keys", type=int, default=1, help="keys (seeds) per depth")
    p.add_argument("--spec", default="infiniretri")
    p.add_argument("--peer", action="store_true", help="also run the infini-retri package (eager attention)")
    p.add_argument("--peer-only", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/infiniretri"))
    p.add_argument("--summarize", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    if args.summarize:
        return summarize(out, command)

    lm = longreach.load_model("smollm2-135m", dtype="float32")
    peer = ["infini-retri"] if args.peer or args.peer_only else []
    systems = ([] if args.peer_only else [args.spec]) + peer
    for length in [parse_length(x) for x in args.lengths.split(",")]:
        for depth in [float(x) for x in args.depths.split(",")]:
            for seed in range(args.keys):
                doc = make_passkey_document(lm.tokenizer, length, depth, seed=seed)
                for system in systems:
                    r = run_peer(lm, doc, args.max_new_tokens) if system == "infini-retri" else \
                        run_ours(lm, doc, system, args.max_new_tokens)
                    r.update(system=system, length=length, depth=depth, seed=seed, key=doc.key,
                             command=command,
                             input_tokens=doc.tokens, score=score_passkey(r["answer"], doc.key))
                    print(json.dumps(r), flush=True)
                    with (out / "samples.jsonl").open("a") as f:
                        f.write(json.dumps(r) + "\n")
    summarize(out, command)


if __name__ == "__main__":
    main()
