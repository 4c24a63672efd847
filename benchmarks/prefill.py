"""Prefill speed and peak memory: longreach's `ask` path (chunked prefill) vs plain transformers.

Plain transformers = ``model(input_ids)`` on the whole prompt (what most scripts do: one pass, logits for
every position). longreach = ``longreach.ask(...)``'s reader: chunked prefill into the KV cache with logits
for the last position only. Same model object, same tokens, measured alternately in one run, reported as
ratios. Also checks the dtype choice: bfloat16 vs float32 speed and agreement of the next-token logits.

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
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longreach.bench.passkey import QUESTION, make_passkey_document  # noqa: E402
from longreach.memory import PeakMemory  # noqa: E402
from longreach.models import load_model  # noqa: E402
from longreach.prompt import build_prompt, encode  # noqa: E402
from longreach.readers.chunked import prefill  # noqa: E402


def plain(model, ids):
    with torch.inference_mode():
        out = model(torch.tensor([ids]))
    return out.logits[:, -1]


def chunked(model, ids, chunk):
    return prefill(model, ids, DynamicCache(config=model.config), chunk)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", default="1024,2048,4096,8192")
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype-check-lengths", default="1024,2048", help="lengths for the bf16 vs fp32 check ('' = skip)")
    p.add_argument("--out", default="benchmarks/results/prefill.json")
    args = p.parse_args()

    lm = load_model(args.model, dtype="float32")
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        doc = make_passkey_document(lm.tokenizer, n - 60, depth=0.5, seed=n)
        ids = encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION))
        plain(lm.model, ids[:256])  # warm-up
        res = {"plain": [], "longreach": []}
        for _ in range(args.repeats):  # alternate so that machine noise hits both alike
            res["plain"].append(measure(lambda: plain(lm.model, ids)))
            res["longreach"].append(measure(lambda: chunked(lm.model, ids, args.chunk)))
        row = {"tokens": len(ids)}
        for k, runs in res.items():
            row[f"{k}_tok_s"] = round(len(ids) / statistics.median(r[0] for r in runs), 1)
            row[f"{k}_peak_rss_mib"] = round(max(r[1] for r in runs) / 2**20, 1)
            row[f"{k}_peak_above_model_mib"] = round(max(r[2] for r in runs) / 2**20, 1)
        row["speed_ratio"] = round(row["longreach_tok_s"] / row["plain_tok_s"], 3)
        row["peak_rss_ratio"] = round(row["longreach_peak_rss_mib"] / row["plain_peak_rss_mib"], 3)
        row["peak_above_model_ratio"] = round(
            row["longreach_peak_above_model_mib"] / max(row["plain_peak_above_model_mib"], 1e-9), 3)
        a, b = res["plain"][0][3], res["longreach"][0][3]
        row["max_abs_logit_diff"] = float((a - b).abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)

    dtype_rows = []
    check = [int(x) for x in args.dtype_check_lengths.split(",") if x]
    if check:
        lm16 = load_model(args.model, dtype="bfloat16")
        for n in check:
            doc = make_passkey_document(lm.tokenizer, n - 60, depth=0.5, seed=n)
            ids = encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION))
            t32, _, _, l32 = measure(lambda: chunked(lm.model, ids, args.chunk))
            t16, _, _, l16 = measure(lambda: chunked(lm16.model, ids, args.chunk))
            p32, p16 = torch.softmax(l32.float(), -1), torch.softmax(l16.float(), -1)
            row = {"tokens": len(ids), "fp32_tok_s": round(len(ids) / t32, 1), "bf16_tok_s": round(len(ids) / t16, 1),
                   "bf16_speedup": round(t32 / t16, 3), "top1_agree": bool(l32.argmax() == l16.argmax()),
                   "max_prob_diff": round(float((p32 - p16).abs().max()), 4)}
            dtype_rows.append(row)
            print(json.dumps(row), flush=True)

    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        git = ""
    report = {"command": "python " + " ".join(sys.argv), "model": args.model, "chunk": args.chunk,
              "repeats": args.repeats, "machine": machine(), "git": git,
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
             f"{m['torch_threads']} threads. Median of {r['repeats']} alternating runs.", "",
             "| tokens | plain tok/s | longreach tok/s | speed ratio | plain peak RSS MiB | longreach peak RSS MiB |"
             " RSS ratio | above-model ratio | max logit diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["prefill"]:
        lines.append(f"| {x['tokens']} | {x['plain_tok_s']} | {x['longreach_tok_s']} | {x['speed_ratio']} | "
                     f"{x['plain_peak_rss_mib']} | {x['longreach_peak_rss_mib']} | {x['peak_rss_ratio']} | "
                     f"{x['peak_above_model_ratio']} | {x['max_abs_logit_diff']:.2e} |")
    if r["dtype_check"]:
        lines += ["", "## dtype check (chunked path): bfloat16 vs float32", "",
                  "| tokens | fp32 tok/s | bf16 tok/s | bf16 speed-up | same top-1 | max prob diff |",
                  "|---|---|---|---|---|---|"]
        for x in r["dtype_check"]:
            lines.append(f"| {x['tokens']} | {x['fp32_tok_s']} | {x['bf16_tok_s']} | {x['bf16_speedup']} | "
                         f"{x['top1_agree']} | {x['max_prob_diff']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
