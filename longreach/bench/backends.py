"""Backends: what answers a sample. ``local`` (default) runs the model in this process through the
reader path (``Plan.from_spec(spec).make_reader().read(...)``), exactly like ``longreach ask``;
``oracle`` answers with the references (optionally wrong past a length) and checks the harness itself.

Backend specs use the method grammar: ``local``, ``oracle:delay=0.1,fail_above=4096``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..memory import PeakMemory, available_bytes, estimate_request
from ..readers import Request
from ..spec import Plan
from ..units import format_bytes
from .task import BenchError, Sample, parse_task_spec


class Backend:
    name = ""
    model_name = ""

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    def refuse(self, plan: Plan, length: int) -> str | None:
        """A one-line reason when a cell of ``length`` tokens cannot run under ``plan``; else None."""
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        info = getattr(getattr(self, "lm", None), "info", None)
        return {"backend": self.name, "model": self.model_name, "dtype": getattr(info, "dtype", None),
                "window": getattr(info, "window", None), "prompt": getattr(self, "prompt", None)}


class LocalBackend(Backend):
    """The model in this process (a known model name, a folder, a .gguf, or an already loaded model)."""

    name = "local"

    def __init__(self, model: Any, dtype: str | None = None, chunk_size: int = 2048,
                 memory_limit: int | None = None, prompt: str = "auto"):
        from ..models import LoadedModel, load_model

        self.lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
        self.model_name = self.lm.name
        self.chunk_size = chunk_size
        self.memory_limit = memory_limit
        self.prompt = prompt

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def refuse(self, plan: Plan, length: int) -> str | None:
        info = self.lm.info
        plan.check(info)
        reach = plan.reach(info)
        if reach is not None and length > reach:
            return f"{length:,} tokens is beyond what {info.name} reads with {plan.spec} ({reach:,})"
        est = estimate_request(info, length, self.chunk_size, plan.kv_cache_bytes(info, length))
        budget = self.memory_limit if self.memory_limit is not None else available_bytes()
        if est.total > budget:
            return (f"{length:,} tokens need about {format_bytes(est.total)} but {format_bytes(budget)} is "
                    f"available (memory pre-check)")
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        request = Request(sample.context, sample.question, sample.max_new_tokens, sample.answer_prefix,
                          self.chunk_size, self.memory_limit, prompt=self.prompt)
        with PeakMemory() as peak:
            result = plan.make_reader().read(self.lm, plan, request, progress=False)
        return {"prediction": result.answer, "input_tokens": result.input_tokens,
                "output_tokens": len(result.output_ids), "prefill_seconds": round(result.prefill_seconds, 3),
                "decode_seconds": round(result.decode_seconds, 3), "peak_memory_bytes": peak.peak,
                "kv_cache_bytes": result.kv_cache_bytes}

    @torch.inference_mode()
    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        """Summed NLL of every token of ``sample.context`` given its prefix (chunked, under ``plan``)."""
        from ..prompt import encode

        ids = encode(self.lm.tokenizer, sample.context)
        tokens = torch.tensor([ids])  # (1, n)
        n = len(ids)
        chunk = min(self.chunk_size, 512)  # full logits per chunk: (chunk, vocab) floats
        nll = torch.zeros(n - 1, dtype=torch.float64)
        cache = plan.make_cache(self.lm.model, self.lm.info)
        t0 = time.perf_counter()
        with PeakMemory() as peak, plan.applied(self.lm.model, self.lm.info, total_tokens=n):
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                out = self.lm.model(input_ids=tokens[:, lo:hi], position_ids=torch.arange(lo, hi).unsqueeze(0),
                                    cache=cache, use_cache=True)
                logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (c, V)
                targets = tokens[0, lo + 1:hi + 1]  # (c') next tokens inside the text
                nll[lo:lo + len(targets)] = -logp[: len(targets)].gather(1, targets[:, None])[:, 0].double()
        tail = nll[-max(1, (n - 1) // 4):]
        return {"prediction": f"{float(nll.sum())} {n - 1}", "input_tokens": n, "output_tokens": 0,
                "prefill_seconds": round(time.perf_counter() - t0, 3), "decode_seconds": 0.0,
                "peak_memory_bytes": peak.peak, "kv_cache_bytes": 0,
                "ppl_tail": round(math.exp(float(tail.mean())), 4)}


class OracleBackend(Backend):
    """Answers with the references (``fail_above``: answer wrong past that many tokens; ``delay``: seconds
    per sample). Checks generators against scorers and lets tests run whole sweeps in milliseconds."""

    name = "oracle"

    def __init__(self, model: str = "oracle", delay: float = 0.0, fail_above: int = 0):
        self.model_name = f"oracle-{model}" if model != "oracle" else model
        self.delay = delay
        self.fail_above = fail_above
        self._tok = None

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = byte_tokenizer()
        return self._tok

    def _wrong(self, sample: Sample) -> bool:
        return bool(self.fail_above) and sample.meta["tokens"] > self.fail_above

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        time.sleep(self.delay)
        answer = "I do not know." if self._wrong(sample) else ", ".join(sample.references)
        return {"prediction": answer, "input_tokens": sample.meta["tokens"], "output_tokens": 1,
                "prefill_seconds": self.delay, "decode_seconds": 0.0, "peak_memory_bytes": 0,
                "kv_cache_bytes": 0}

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        time.sleep(self.delay)
        n = sample.meta["tokens"] - 1
        per = 3.0 if self._wrong(sample) else 1.0
        return {"prediction": f"{per * n} {n}", "input_tokens": n + 1, "output_tokens": 0,
                "prefill_seconds": self.delay, "decode_seconds": 0.0, "peak_memory_bytes": 0,
                "kv_cache_bytes": 0, "ppl_tail": round(math.exp(per), 4)}


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (one token per UTF-8 byte), for the oracle backend and tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


BACKENDS = {"local": LocalBackend, "oracle": OracleBackend}


def make_backend(spec: str, model: Any, dtype: str | None = None, chunk_size: int = 2048,
                 memory_limit: int | None = None, prompt: str = "auto") -> Backend:
    name, params = parse_task_spec(spec)
    if name == "local":
        if params:
            raise BenchError("the local backend takes no parameters (use --dtype, --chunk-size)")
        return LocalBackend(model, dtype=dtype, chunk_size=chunk_size, memory_limit=memory_limit, prompt=prompt)
    if name == "oracle":
        unknown = sorted(set(params) - {"delay", "fail_above"})
        if unknown:
            raise BenchError(f"oracle has no parameter {unknown[0]!r}; its parameters: delay, fail_above")
        try:
            return OracleBackend(str(model), float(params.get("delay", 0)), int(params.get("fail_above", 0)))
        except ValueError as exc:
            raise BenchError(f"bad oracle parameter: {exc}") from None
    raise BenchError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")

