"""GPU smoke test: ``longreach.ask`` with one method of every family on the packaged model, on CUDA.

Loads the default packaged model (smollm2-135m) with ``device="cuda"``, hides a pass key in a generated
document (~6k tokens) and asks for it once per method: the plain model, rope (dynamic-ntk, yarn),
attention (self-extend, logn, streaming, longheads), KV cache (kv-int4, kvquant, snapkv, kv-cluster),
the InfiniRetri reader and one composition. Prints a Markdown table (ok / error, answer correct, prefill
tokens/s, peak GPU memory, KV cache bytes) and writes ``benchmarks/results/gpu-smoke.json``.
Exits 1 when a method errors. Public API only (``longreach.load_model`` / ``longreach.ask``).

Without a CUDA device it prints ``no CUDA device; skipped`` and exits 0 (``--device cpu`` runs the same
loop on the CPU instead, to check the script itself; use a small ``--tokens`` there; it writes no JSON
unless ``--out`` is given)::

    python benchmarks/gpu_smoke.py                       # on a machine with a GPU
    python benchmarks/gpu_smoke.py --device cpu --tokens 600 --methods none,kv-int4
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ["none", "dynamic-ntk", "yarn", "self-extend", "logn", "streaming", "longheads", "kv-int4", "kvquant",
           "snapkv", "kv-cluster", "infiniretri", "dynamic-ntk+kv-int4"]
RESULTS = Path(__file__).resolve().parent / "results" / "gpu-smoke.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ask + every method family on the packaged model, on a GPU")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=6000, help="pass-key document length in tokens (default 6000)")
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs")
    p.add_argument("--out", default=None,
                   help=f"JSON results (default on CUDA: {RESULTS.relative_to(RESULTS.parents[2])}; on the CPU: none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device; skipped")
        return 0

    import transformers

    import longreach
    from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey

    t0 = time.perf_counter()
    lm = longreach.load_model(args.model, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - t0
    weights = torch.cuda.memory_allocated(lm.device) if cuda else None
    doc = make_passkey_document(lm.tokenizer, args.tokens, depth=args.depth, seed=args.seed)
    print(f"{lm.name} on {lm.device} ({lm.info.dtype}), loaded in {load_seconds:.1f}s; "
          f"document {doc.tokens:,} tokens, pass key {doc.key} at {doc.depth:.0%}", flush=True)
    # warm-up: CUDA context, kernel selection and allocator growth are not charged to the first method
    longreach.ask(text=doc.text[:2000], question=QUESTION, model=lm, method="none", max_new_tokens=4,
                  answer_prefix=ANSWER_PREFIX, prompt="plain")

    rows = [run_one(lm, spec, doc, cuda, QUESTION, ANSWER_PREFIX, score_passkey)
            for spec in [s.strip() for s in args.methods.split(",") if s.strip()]]
    print()
    print(table(rows))
    out = Path(args.out) if args.out else RESULTS if cuda else None
    result = {
        "command": " ".join(["python", "benchmarks/gpu_smoke.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "gpu": torch.cuda.get_device_name(lm.device) if cuda else None},
        "model": lm.name, "device": str(lm.device), "dtype": lm.info.dtype, "load_seconds": round(load_seconds, 2),
        "weights_gpu_bytes": weights, "document_tokens": doc.tokens, "depth": doc.depth, "key": doc.key,
        "rows": rows,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


def run_one(lm: Any, spec: str, doc: Any, cuda: bool, question: str, prefix: str, score: Any) -> dict[str, Any]:
    import torch

    import longreach

    if cuda:
        torch.cuda.synchronize(lm.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(lm.device)
    row: dict[str, Any] = {"method": spec}
    start = time.perf_counter()
    try:
        a = longreach.ask(text=doc.text, question=question, model=lm, method=spec, max_new_tokens=16,
                          answer_prefix=prefix, prompt="plain")
        if cuda:
            torch.cuda.synchronize(lm.device)
    except Exception as exc:  # noqa: BLE001 - a smoke test reports every failure and goes on
        row.update(status="error", error=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300])
    else:
        row.update(status="ok", correct=score(a.answer, doc.key) == 1.0,
                   answer=(a.answer.splitlines() or [""])[0][:60], input_tokens=a.input_tokens,
                   prefill_seconds=a.prefill_seconds, decode_seconds=a.decode_seconds,
                   prefill_tokens_per_second=round(a.prefill_tokens_per_second, 1), kv_cache_bytes=a.kv_cache_bytes)
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(lm.device)) if cuda else None
    mark = "ok" if row["status"] == "ok" else f"ERROR {row['error']}"
    print(f"  {spec:<22} {mark} ({row['seconds']:.1f}s)", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def mib(n: int | None) -> str:
        return "-" if n is None else f"{n / 2**20:,.1f} MiB"

    lines = ["| method | status | correct | prefill tok/s | peak GPU memory | KV cache |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| `{r['method']}` | ok | {'yes' if r['correct'] else 'no'} | "
                         f"{r['prefill_tokens_per_second']:,.0f} | {mib(r['peak_gpu_bytes'])} | "
                         f"{mib(r['kv_cache_bytes'])} |")
        else:
            lines.append(f"| `{r['method']}` | error: {r['error'].replace('|', '/')} | - | - | "
                         f"{mib(r['peak_gpu_bytes'])} | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
