"""The ``infiniretri`` reader on pass keys, optionally beside the reference package ``infini-retri`` 0.0.3.

Ours is the harness config ``benchmarks/configs/infiniretri.yaml`` (``longreach bench --config
benchmarks/configs/infiniretri.yaml`` runs the same cells). ``--peer`` adds the reference package
answering the very same harness samples, as cells of the model ``infini-retri-0.0.3+<model>`` in the same
folder (method ``none``: the package is the whole system). It is a harness backend
(:class:`PeerBackend`), so resume, per-sample records, metrics and the report are the harness's. Why a
script and not a method: the package runs its own loop on a model in eager attention, so it gets its
own copy of the model, loaded here and switched to eager attention (no longreach engine ever uses that
copy); use ``--peer-only`` for a process holding that copy alone (its peak memory is then comparable).

    python benchmarks/infiniretri.py --out runs/infiniretri --lengths 8k --depths 0.1,0.5,0.9 [--peer]
    longreach report runs/infiniretri --markdown
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path
from typing import Any

from longreach.bench.backends import Backend
from longreach.bench.runner import BenchConfig, load_config, run_bench
from longreach.bench.task import Sample, Task
from longreach.memory import PeakMemory
from longreach.spec import Plan

CONFIG = Path(__file__).resolve().parent / "configs" / "infiniretri.yaml"
PEER = "infini-retri-0.0.3"


class PeerBackend(Backend):
    """The reference package answers each generate sample (greedy, its defaults: top-k 300 sentences,
    window 1024, answer length 8)."""

    name = "infini-retri"

    def __init__(self, model: str, dtype: str | None):
        from longreach.models import load_model

        # Its plotting helpers import seaborn and it type-checks against tiktoken; neither is used here.
        sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))
        tk = types.ModuleType("tiktoken")
        tk.core = types.SimpleNamespace(Encoding=type("Encoding", (), {}))  # type: ignore[attr-defined]
        sys.modules.setdefault("tiktoken", tk)
        from infini_retri import InfiniRetri

        self.lm = load_model(model, dtype=dtype)  # a private copy: the package needs eager attention
        self.lm.model.set_attn_implementation("eager")
        self.model_name = f"{PEER}+{self.lm.name}"
        self.peer = InfiniRetri(model=self.lm.model, tokenizer=self.lm.tokenizer, topk=300, answer_length=8,
                                window_length=1024)

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        if plan.methods:
            return f"{PEER} is a whole system: run it as method none"
        if task is not None and task.kind != "generate":
            return f"{PEER} only answers questions; {task.name} scores log-likelihoods"
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        with PeakMemory() as peak:
            t = time.perf_counter()
            answer = self.peer.generate(context=sample.context, question=sample.question,
                                        max_new_tokens=sample.max_new_tokens)
            seconds = time.perf_counter() - t
        return {"prediction": str(answer).strip(), "input_tokens": sample.meta["tokens"], "output_tokens": None,
                "prefill_seconds": None, "decode_seconds": None, "request_seconds": round(seconds, 3),
                "peak_memory_bytes": peak.peak, "kv_cache_bytes": None}


def config(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    """The sweep of ``argv``: the YAML config with the given options on top."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--lengths")
    p.add_argument("--depths")
    p.add_argument("--samples", type=int)
    p.add_argument("--methods", help="default infiniretri")
    p.add_argument("--out", default="runs/infiniretri")
    p.add_argument("--peer", action="store_true", help=f"also run {PEER} (pip install infini-retri==0.0.3)")
    p.add_argument("--peer-only", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.config, {"lengths": args.lengths, "depths": args.depths, "samples": args.samples,
                                    "methods": args.methods, "out": args.out})
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = config(argv)
    if not args.peer_only:
        run_bench(cfg)
    if args.peer or args.peer_only:
        peer_cfg = cfg.model_copy(update={"methods": ["none"]})
        run_bench(peer_cfg, backend=PeerBackend(cfg.model, None if cfg.dtype == "auto" else cfg.dtype))
    print(f"{cfg.out}: `longreach report {cfg.out} --markdown` writes the tables")


if __name__ == "__main__":
    main()
