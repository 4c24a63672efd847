"""Agents: keeping the chunk caches of round 0 for the synchronisation round vs reading every chunk again.

The same ``agents`` read (default parameters: one synchronisation round) of the same multi-hop question
(``multihop`` task, seed 0, depth 0.5) runs twice per length on one loaded model, side by side: ``kept``
(round 0's prompt caches kept, the default when memory allows) and ``again`` (``memory_limit`` set to one
pass, so no cache is kept and round 1 prefills every chunk again, as before 2026-12-03; both use the
same prompts). The order alternates per length. Reported: wall seconds, tokens prefilled (prompt tokens minus those taken
from the caches), the process's peak memory (``PeakMemory``: VmHWM on Linux), and whether the two reads
gave the same findings and answer (greedy; the reused prefix is a separate prefill chunk, so logits may
differ by float rounding).

Not a harness sweep: it measures one reader's cost, not accuracy (``longreach bench`` measures answers).

    .venv/bin/python benchmarks/agents_reuse.py --lengths 8k,16k --out benchmarks/results/agents-reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from longreach.bench.store import git_hash
from longreach.bench.task import make_task
from longreach.engine import Engine
from longreach.memory import PeakMemory, estimate_request
from longreach.models import load_model
from longreach.readers import Request
from longreach.spec import Plan
from longreach.units import parse_length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--lengths", default="8k,32k")
    p.add_argument("--task", default="multihop")
    p.add_argument("--out", default="benchmarks/results/agents-reuse.json")
    args = p.parse_args()

    lm = load_model(args.model, dtype=args.dtype)
    engine = Engine.for_model(lm)
    info = lm.info
    one_pass = estimate_request(info, info.window, 2048, Plan([]).kv_cache_bytes(info, info.window)).total
    task = make_task(args.task)
    rows = []
    for i, length in enumerate(parse_length(x) for x in args.lengths.split(",")):
        sample = task.generate(lm.tokenizer, length, seed=0, depth=0.5)
        order = ("kept", "again") if i % 2 == 0 else ("again", "kept")
        runs = {}
        for mode in order:
            request = Request(sample.context, sample.question, max_new_tokens=sample.max_new_tokens,
                              answer_prefix=sample.answer_prefix, memory_limit=None if mode == "kept" else one_pass + 1)
            t0 = time.perf_counter()
            with PeakMemory(engine.device) as peak:
                r = engine.run("agents", request)
            seconds = time.perf_counter() - t0
            x = r.extra["agents"]
            runs[mode] = r
            rows.append({"length": length, "mode": mode, "seconds": round(seconds, 2),
                         "seconds_by_stage": x["seconds"], "agents": x["agents"], "tokens_read": x["tokens_read"],
                         "tokens_reused": x["tokens_reused"], "tokens_prefilled": x["tokens_read"] - x["tokens_reused"],
                         "reuse_bytes": x["reuse_bytes"], "peak_memory_bytes": peak.peak, "added_bytes": peak.added,
                         "answer": r.answer, "score": task.score(sample, r.answer)})
            print(json.dumps(rows[-1]), flush=True)
        same = (runs["kept"].evidence, runs["kept"].answer) == (runs["again"].evidence, runs["again"].answer)
        for row in rows[-2:]:
            row["same_findings_and_answer"] = same
    report = {
        "command": "python " + shlex.join(sys.argv), "git": (git_hash() or "")[:7],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": lm.name, "dtype": info.dtype,
        "device": str(engine.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "task": args.task, "rows": rows,
        "ratios": {},
    }
    for length in sorted({r["length"] for r in rows}):
        kept, again = (next(r for r in rows if r["length"] == length and r["mode"] == m) for m in ("kept", "again"))
        report["ratios"][str(length)] = {
            "seconds_kept_over_again": round(kept["seconds"] / again["seconds"], 3),
            "prefilled_kept_over_again": round(kept["tokens_prefilled"] / again["tokens_prefilled"], 3),
            "peak_kept_over_again": round(kept["peak_memory_bytes"] / again["peak_memory_bytes"], 3),
        }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    md = Path(args.out).with_suffix(".md")
    lines = [f"# Agents: chunk caches kept for the synchronisation round vs every chunk read again ({lm.name}, "
             f"{info.dtype}, {engine.device})", "",
             f"Command: `{report['command']}` (git {report['git']}, {report['date']}, torch {torch.__version__}, "
             f"{report['threads']} threads on {report['cpus']} CPUs; load average at the end "
             f"{report['load_average_at_end'][0]:.2f})  ",
             f"One `{args.task}` question (seed 0, depth 0.5) per length, `agents` with its defaults (1 round); "
             "`again` = memory_limit of one pass, so no chunk cache is kept and every chunk is read again (as before "
             "2026-12-03; the prompts are the same in both).", "",
             "| length | mode | agents | seconds | tokens read | reused | prefilled | peak memory MiB | answer | same |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['length']:,} | {r['mode']} | {r['agents']} | {r['seconds']:.1f} | {r['tokens_read']:,} | "
                     f"{r['tokens_reused']:,} | {r['tokens_prefilled']:,} | {r['peak_memory_bytes'] / 2**20:,.0f} | "
                     f"{r['answer'][:40]!r} | {r['same_findings_and_answer']} |")
    lines += ["", "| length | seconds kept / again | tokens prefilled kept / again | peak memory kept / again |",
              "|---|---|---|---|"]
    for length, q in report["ratios"].items():
        lines.append(f"| {int(length):,} | {q['seconds_kept_over_again']:.2f} | {q['prefilled_kept_over_again']:.2f} | "
                     f"{q['peak_kept_over_again']:.2f} |")
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
