"""Prefill speed and peak memory: longreach's `ask` path (chunked prefill) vs plain transformers.

Plain transformers = ``model(input_ids)`` on the whole prompt (what most scripts do: one pass, logits for
every position). longreach = the engine's chunked prefill (``Engine.session(...).prefill``, what ``ask``
and the harness run): chunks into the KV cache with logits for the last position only. Same model, same
tokens, measured alternately, reported as ratios. Also checks the dtype choice: bfloat16 vs float32 speed
and agreement of the next-token logits.

Not a harness sweep: the baseline is not a method (a plain forward pass over the whole prompt, which no
engine request does), each measurement runs in a fresh process so that each peak RSS is that run's alone,
and it compares logits, not answers. The chunked side alone is a harness cell: ``longreach bench
--methods none --tasks passkey --lengths 1k,2k,4k,8k --depths 0.5`` reports its prefill tok/s and peak memory.

    .venv/bin/python benchmarks/prefill.py --out benchmarks/results/prefill.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from longreach.bench.passkey import QUESTION, make_passkey_document
from longreach.engine import Engine
from longreach.memory import PeakMemory
from longreach.models import load_model
from longreach.prompt import build_prompt, encode


def plain(model, ids):
    with torch.inference_mode():
        out = model(torch.tensor([ids], device=model.device))
    return out.logits[:, -1]


def chunked(lm, ids, chunk):
    with Engine.for_model(lm).session("none", len(ids)) as s:
        return s.prefill(ids, s.make_cache(), chunk)


def measure(fn):
    with PeakMemory() as pm:
        t = time.perf_counter()
        logits = fn()
        seconds = time.perf_counter() - t
    return seconds, pm.peak, pm.peak - pm.start_rss, logits


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def worker(args) -> None:
    """One measurement in a fresh process, so that each peak RSS is that run's alone (model + prefill)."""
    lm = load_model(args.model, dtype=args.dtype)
    doc = make_passkey_document(lm.tokenizer, args.tokens - 60, depth=0.5, seed=args.tokens)
    ids = encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION))
    with torch.inference_mode():
        lm.model(torch.tensor([ids[:128]], device=lm.model.device), logits_to_keep=1)  # warm-up (kernels, allocator)
    fn = (lambda: plain(lm.model, ids)) if args.worker == "plain" else (lambda: chunked(lm, ids, args.chunk))
    seconds, peak, above, logits = measure(fn)
    top = torch.topk(logits.float()[0], 5)
    print(json.dumps({"tokens": len(ids), "seconds": seconds, "peak_rss": peak, "above_start": above,
                      "top_ids": top.indices.tolist(), "top_logits": top.values.tolist()}))


def run_worker(kind: str, tokens: int, args, dtype: str = "float32") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tokens", str(tokens), "--model", args.model,
           "--chunk", str(args.chunk), "--dtype", dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", default="1024,2048,4096,8192")
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype-check-lengths", default="1024,2048", help="lengths for the bf16 vs fp32 check ('' = skip)")
    p.add_argument("--out", default="benchmarks/results/prefill.json")
    p.add_argument("--worker", choices=["plain", "longreach"], help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        res = {"plain": [], "longreach": []}
        for _ in range(args.repeats):  # alternate so that machine noise hits both alike
            for kind in ("plain", "longreach"):
                res[kind].append(run_worker(kind, n, args))
        row = {"tokens": res["plain"][0]["tokens"]}
        for k, runs in res.items():
            row[f"{k}_tok_s"] = round(row["tokens"] / statistics.median(r["seconds"] for r in runs), 1)
            row[f"{k}_peak_rss_mib"] = round(statistics.median(r["peak_rss"] for r in runs) / 2**20, 1)
        row["speed_ratio"] = round(row["longreach_tok_s"] / row["plain_tok_s"], 3)
        row["peak_rss_ratio"] = round(row["longreach_peak_rss_mib"] / row["plain_peak_rss_mib"], 3)
        a, b = res["plain"][0], res["longreach"][0]
        row["same_top5"] = a["top_ids"] == b["top_ids"]
        row["max_abs_top_logit_diff"] = max(abs(x - y) for x, y in zip(a["top_logits"], b["top_logits"]))
        rows.append(row)
        print(json.dumps(row), flush=True)

    dtype_rows = []
    for n in [int(x) for x in args.dtype_check_lengths.split(",") if x]:
        f32 = run_worker("longreach", n, args, "float32")
        b16 = run_worker("longreach", n, args, "bfloat16")
        row = {"tokens": f32["tokens"], "fp32_tok_s": round(f32["tokens"] / f32["seconds"], 1),
               "bf16_tok_s": round(b16["tokens"] / b16["seconds"], 1),
               "bf16_speedup": round(f32["seconds"] / b16["seconds"], 3),
               "top1_agree": f32["top_ids"][0] == b16["top_ids"][0],
               "top5_overlap": len(set(f32["top_ids"]) & set(b16["top_ids"]))}
        dtype_rows.append(row)
        print(json.dumps(row), flush=True)

    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        git = ""
    report = {"command": "python " + " ".join(sys.argv), "model": args.model, "chunk": args.chunk,
              "repeats": args.repeats, "machine": machine(), "git": git,
              "load_average": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "prefill": rows, "dtype_check": dtype_rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(to_markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Prefill: longreach chunked path vs plain transformers ({r['model']}, float32)", "",
             f"Command: `{r['command']}` (git {r['git']}, {r['date']})  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['cpu_capability']}), "
             f"{m['torch_threads']} threads; load average at the end {r['load_average'][0]:.1f}.  ",
             f"Each number is the median of {r['repeats']} runs, each in a fresh process (peak RSS = model + "
             f"that prefill), plain and longreach alternating.", "",
             "plain = `model(input_ids)` on the whole prompt; longreach = `ask`'s chunked prefill "
             f"(chunks of {r['chunk']} tokens, logits of the last position only).", "",
             "| tokens | plain tok/s | longreach tok/s | speed ratio | plain peak RSS MiB | longreach peak RSS MiB |"
             " RSS ratio | same top-5 | top logit diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["prefill"]:
        lines.append(f"| {x['tokens']} | {x['plain_tok_s']} | {x['longreach_tok_s']} | {x['speed_ratio']} | "
                     f"{x['plain_peak_rss_mib']} | {x['longreach_peak_rss_mib']} | {x['peak_rss_ratio']} | "
                     f"{x['same_top5']} | {x['max_abs_top_logit_diff']:.1e} |")
    if r["dtype_check"]:
        lines += ["", "## dtype check (chunked path): bfloat16 vs float32", "",
                  "| tokens | fp32 tok/s | bf16 tok/s | bf16 speed-up | same top-1 | top-5 overlap |",
                  "|---|---|---|---|---|---|"]
        for x in r["dtype_check"]:
            lines.append(f"| {x['tokens']} | {x['fp32_tok_s']} | {x['bf16_tok_s']} | {x['bf16_speedup']} | "
                         f"{x['top1_agree']} | {x['top5_overlap']}/5 |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
