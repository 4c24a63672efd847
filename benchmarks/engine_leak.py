"""Does anything outlive a request? 200 requests alternating every method family on one loaded model.

Runs ``Engine.run`` on short pass-key documents (~300 tokens, 4 new tokens) cycling through rope,
attention, cache and reader methods, and records the process RSS (psutil) after the first 20 requests
(every method has run, kvquant's nuq codebooks are calibrated, allocator pools are warm) and after all
of them: the growth between the two is what requests leave behind (goal: under 5%). Also checks that
transformers' attention registries did not grow after the first round, that no hook is left on any
module and that the model's buffers and attention implementation are as loaded.

Not a harness sweep: it measures the process, not answers (``longreach bench`` measures answers).

    .venv/bin/python benchmarks/engine_leak.py --out benchmarks/results/engine-leak.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path

import psutil
import torch

from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey
from longreach.bench.store import git_hash
from longreach.engine import Engine
from longreach.models import load_model
from longreach.readers import Request

SPECS = [
    "none",
    "yarn:factor=2",
    "dynamic-ntk:factor=4",
    "self-extend:window=256,group=4",
    "logn:skip_layers=2",
    "streaming:sinks=4,window=128",
    "longheads:chunk=64,chunks=4",
    "snapkv:budget=128",
    "h2o:budget=128",
    "knorm:budget=128",
    "kvquant:bits=4",
    "kvquant:bits=4,datatype=nuq",
    "kv-int4",
    "kv-cluster",
    "infiniretri:chunk=128,top_k=50",
    "yarn:factor=2+snapkv:budget=128+infiniretri:chunk=128,top_k=50",
]
HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs")


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def registries() -> tuple[int, int]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return len(AttentionInterface._global_mapping), len(AttentionMaskInterface._global_mapping)


def model_state(model) -> tuple:
    hooks = sum(len(getattr(m, h)) for m in model.modules() for h in HOOKS)
    attrs = sorted((name, tuple(sorted(vars(m)))) for name, m in model.named_modules())
    return hooks, model.config._attn_implementation, hash(tuple(attrs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default=None, help="default: auto")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warm", type=int, default=20, help="requests before the first RSS reading")
    p.add_argument("--tokens", type=int, default=300, help="document length")
    p.add_argument("--out", default="benchmarks/results/engine-leak.json")
    args = p.parse_args()

    lm = load_model(args.model, dtype=args.dtype)
    engine = Engine.for_model(lm)
    buffers = {k: v.clone() for k, v in lm.model.named_buffers()}
    state0 = model_state(lm.model)
    docs = [make_passkey_document(lm.tokenizer, args.tokens, depth=(i % 5) / 4, seed=i) for i in range(10)]
    rss_start, rss_warm, reg_warm, correct, t0 = rss(), None, None, 0, time.perf_counter()
    per_spec: dict[str, float] = {}
    for i in range(args.requests):
        spec, doc = SPECS[i % len(SPECS)], docs[i % len(docs)]
        t = time.perf_counter()
        result = engine.run(spec, Request(doc.text, QUESTION, max_new_tokens=4, answer_prefix=ANSWER_PREFIX,
                                          chunk_size=512))
        per_spec[spec] = per_spec.get(spec, 0.0) + time.perf_counter() - t
        correct += score_passkey(result.answer, doc.key) == 1.0
        if i + 1 == args.warm:
            rss_warm, reg_warm = rss(), registries()
            print(f"after {args.warm} requests: RSS {rss_warm / 2**20:.1f} MiB", flush=True)
    seconds = time.perf_counter() - t0
    rss_end = rss()
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    print(f"after {args.requests} requests: RSS {rss_end / 2**20:.1f} MiB ({growth:+.2f}%)", flush=True)
    state1 = model_state(lm.model)
    same_buffers = all(torch.equal(v, buffers[k]) for k, v in lm.model.named_buffers())
    git = (git_hash() or "")[:7]
    report = {
        "command": "python " + shlex.join(sys.argv), "git": git, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": lm.name, "dtype": lm.info.dtype, "device": str(engine.device), "torch": torch.__version__,
        "requests": args.requests, "warm": args.warm, "document_tokens": args.tokens, "specs": SPECS,
        "rss_start_mib": round(rss_start / 2**20, 1), "rss_warm_mib": round(rss_warm / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1), "rss_growth_percent": round(growth, 2),
        "goal_percent": 5.0, "ok": growth < 5.0 and state1 == state0 and same_buffers and registries() == reg_warm,
        "registries_after_warm": reg_warm, "registries_at_end": registries(),
        "hooks_left": state1[0], "attn_implementation": state1[1], "module_attributes_unchanged": state1[2] == state0[2],
        "buffers_unchanged": same_buffers, "passkey_correct": correct, "seconds": round(seconds, 1),
        "seconds_per_request": {s: round(v / (args.requests // len(SPECS) + (SPECS.index(s) < args.requests
                                                                           % len(SPECS))), 3)
                                for s, v in per_spec.items()},
        "load_average": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(to_markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def to_markdown(r: dict) -> str:
    lines = [f"# Engine leak check: {r['requests']} requests alternating {len(r['specs'])} method specs "
             f"({r['model']}, {r['dtype']}, {r['device']})", "",
             f"Command: `{r['command']}` (git {r['git']}, {r['date']}, torch {r['torch']})  ",
             f"Documents: pass-key documents of ~{r['document_tokens']} tokens, 4 new tokens, specs in turn: "
             + ", ".join(f"`{s}`" for s in r["specs"]) + ".", "",
             "| RSS at start MiB | after {w} requests MiB | after {n} requests MiB | growth | goal |".format(
                 w=r["warm"], n=r["requests"]),
             "|---|---|---|---|---|",
             f"| {r['rss_start_mib']} | {r['rss_warm_mib']} | {r['rss_end_mib']} | {r['rss_growth_percent']:+.2f}% "
             f"| < {r['goal_percent']:.0f}% |", "",
             f"- attention / mask registries after the first {r['warm']} requests {tuple(r['registries_after_warm'])}, "
             f"at the end {tuple(r['registries_at_end'])} (one entry per method class, registered once)",
             f"- hooks left on the model: {r['hooks_left']}; attention implementation: {r['attn_implementation']}; "
             f"module attributes unchanged: {r['module_attributes_unchanged']}; buffers unchanged: "
             f"{r['buffers_unchanged']}",
             f"- {r['seconds']} s in all; pass keys answered: {r['passkey_correct']}/{r['requests']} (not the "
             "point here: 4 tokens, a 135M model)",
             f"- load average at the end {r['load_average'][0]:.1f} (15 min: {r['load_average'][2]:.1f}): seconds "
             "below are wall time on a shared machine, not speed measurements", "",
             "| spec | seconds per request |", "|---|---|"]
    lines += [f"| `{s}` | {v} |" for s, v in r["seconds_per_request"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
