"""Attention-slot methods on the real model: speed and peak memory of self-extend vs plain sdpa, and
a small pass-key check beyond the native window.

speed: chunked prefill (the reader's path) of a pass-key document of N tokens, then greedy decoding of
``--decode`` tokens with the cache, for each spec, same model object, alternating specs. Peak memory
is the process high-water mark during prefill + decode (VmHWM, reset before each run).

passkey: the reader (``ChunkedReader``) on pass-key documents (one key, several depths).

    .venv/bin/python benchmarks/attention_methods.py speed --lengths 4096 8192
    .venv/bin/python benchmarks/attention_methods.py passkey --lengths 12288 16384 \
        --spec self-extend:window=2048,group=5
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey  # noqa: E402
from longreach.memory import PeakMemory  # noqa: E402
from longreach.models import load_model  # noqa: E402
from longreach.prompt import build_prompt, encode  # noqa: E402
from longreach.readers import Request  # noqa: E402
from longreach.readers.chunked import ChunkedReader, greedy_decode, prefill  # noqa: E402
from longreach.spec import Plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def prompt_ids(lm, tokens: int) -> list[int]:
    doc = make_passkey_document(lm.tokenizer, tokens - 60, depth=0.5, seed=0)
    return encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION, ANSWER_PREFIX))


def speed_run(lm, spec: str, ids: list[int], chunk: int, decode: int) -> dict:
    plan = Plan.from_spec(spec)
    cache = plan.make_cache(lm.model, lm.info)
    with plan.applied(lm.model, lm.info), PeakMemory() as pm:
        t0 = time.perf_counter()
        logits = prefill(lm.model, ids, cache, chunk)
        t1 = time.perf_counter()
        out = greedy_decode(lm.model, cache, logits, len(ids), decode, stop=set())
        t2 = time.perf_counter()
    return {"spec": spec, "tokens": len(ids), "prefill_s": round(t1 - t0, 2),
            "prefill_tok_s": round(len(ids) / (t1 - t0), 1), "decode_tok_s": round(len(out) / (t2 - t1), 2),
            "peak_rss_gib": round(pm.peak / 2**30, 3),
            "peak_over_start_gib": round((pm.peak - pm.start_rss) / 2**30, 3),
            "answer": lm.tokenizer.decode(out)}


def speed(args, lm) -> list[dict]:
    rows = []
    for n in args.lengths:
        ids = prompt_ids(lm, n)
        for spec in args.specs:
            row = speed_run(lm, spec, ids, args.chunk, args.decode)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def passkey(args, lm) -> list[dict]:
    rows = []
    reader = ChunkedReader()
    for n in args.lengths:
        for depth in args.depths:
            doc = make_passkey_document(lm.tokenizer, n - 60, depth=depth, seed=args.seed)
            for spec in args.specs:
                req = Request(doc.text, QUESTION, max_new_tokens=12, answer_prefix=ANSWER_PREFIX,
                              chunk_size=args.chunk)
                t = time.perf_counter()
                res = reader.read(lm, Plan.from_spec(spec), req)
                row = {"spec": spec, "tokens": res.input_tokens, "depth": depth, "key": doc.key,
                       "answer": res.answer, "score": score_passkey(res.answer, doc.key),
                       "seconds": round(time.perf_counter() - t, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["speed", "passkey"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--specs", nargs="+", default=["none", "self-extend:window=2048,group=4"])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    rows = speed(args, lm) if args.task == "speed" else passkey(args, lm)
    out = args.out or RESULTS / f"attention_methods_{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/attention_methods.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "model": args.model, "dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
              "load_average_at_end": os.getloadavg(),
              "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
