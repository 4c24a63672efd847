"""``make demo``: hide a pass key in a ~6,000-token document and ask the packaged default model for it.

Runs the real command line (``longreach ask FILE -q ...``) on the generated file and checks the answer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey
from .models import DEFAULT_MODEL
from .prompt import format_arg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--tokens", type=int, default=6000, help="document length in tokens (default 6000)")
    p.add_argument("--depth", type=float, default=0.5, help="needle depth 0..1 (default 0.5)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the pass key (default 2026)")
    p.add_argument("--prompt", default="auto", type=format_arg, metavar="FORMAT",
                   help="prompt format passed to `longreach ask` (default auto: the format measured best for "
                        "the model, longreach/data/prompt_formats.json; see docs/prompts.md)")
    p.add_argument("--out", default="demo-out")
    args = p.parse_args(argv)

    seed, depth = args.seed, args.depth
    from transformers import AutoTokenizer  # noqa: F401  (fail early if the set-up is broken)

    from .cli import _quiet_libraries
    from .models import load_model

    _quiet_libraries()
    print(f"[demo] loading {args.model} tokenizer to size the document ...", flush=True)
    lm = load_model(args.model)
    doc = make_passkey_document(lm.tokenizer, args.tokens, depth=depth, seed=seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "passkey-document.txt"
    path.write_text(doc.text, encoding="utf-8")
    print(f"[demo] wrote {path}: {doc.tokens:,} tokens, pass key hidden at {depth:.0%} depth (seed {seed})")

    cmd = [sys.executable, "-m", "longreach.cli", "ask", str(path), "-q", QUESTION, "--model", args.model,
           "--answer-prefix", ANSWER_PREFIX, "--prompt", args.prompt, "--max-new-tokens", "16", "--json"]
    print(f"[demo] $ longreach ask {path} -q {QUESTION!r} --answer-prefix {ANSWER_PREFIX!r} --prompt {args.prompt}",
          flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"[demo] longreach ask failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    import json

    result = json.loads(proc.stdout)
    ok = score_passkey(result["answer"], doc.key) == 1.0
    first_line = (result["answer"].splitlines() or [""])[0]
    print(f"[demo] answer: {ANSWER_PREFIX} {first_line}")
    print(f"[demo] expected pass key: {doc.key} -> {'CORRECT' if ok else 'WRONG'}")
    print(f"[demo] {result['input_tokens']:,} input tokens, prefill {result['prefill_seconds']:.1f}s "
          f"({result['prefill_tokens_per_second']:.0f} tok/s, {result['dtype']}), decode {result['decode_seconds']:.1f}s, "
          f"peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB, KV cache {result['kv_cache_bytes'] / 2**20:.0f} MiB, "
          f"total {time.perf_counter() - t:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
