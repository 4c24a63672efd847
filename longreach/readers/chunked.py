"""The default reader: chunked prefill into the KV cache, then greedy decoding.

Chunked prefill keeps activations bounded by the chunk (not the document) and computes logits for
the last position only, so it uses far less memory than ``model(input_ids)`` on the whole prompt and
gives the same next-token logits (tested).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import TooLongError
from ..memory import cache_bytes, check_fits, estimate_request
from ..prompt import build_prompt, encode
from . import ReadResult, Request


class ChunkedReader:
    """Prefill the prompt ``chunk_size`` tokens at a time, then decode greedily."""

    name = "chunked"

    def read(self, lm: Any, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        text = build_prompt(lm.tokenizer, request.document, request.question, request.answer_prefix,
                            request.prompt)
        ids = encode(lm.tokenizer, text)
        check_length(lm.info, plan, len(ids), request.max_new_tokens)
        total = len(ids) + request.max_new_tokens
        estimate = estimate_request(lm.info, total, request.chunk_size, plan.kv_cache_bytes(lm.info, total))
        check_fits(estimate, total, request.memory_limit)

        cache = plan.make_cache(lm.model, lm.info)
        if hasattr(cache, "prepare"):  # compressing caches: where the question starts (longreach.kv)
            cache.prepare(lm.tokenizer, text, ids, request.question)
        with plan.applied(lm.model, lm.info, total_tokens=total):
            t0 = time.perf_counter()
            logits = prefill(lm.model, ids, cache, request.chunk_size, progress=progress)
            t1 = time.perf_counter()
            out = greedy_decode(lm.model, cache, logits, len(ids), request.max_new_tokens, eos_ids(lm))
            t2 = time.perf_counter()
        answer = lm.tokenizer.decode(out, skip_special_tokens=True).strip()
        return ReadResult(
            answer=answer,
            output_ids=out,
            input_tokens=len(ids),
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            kv_cache_bytes=cache_bytes(cache),
        )


def check_length(info: Any, plan: Any, input_tokens: int, max_new_tokens: int) -> None:
    """Refuse input the plan cannot read instead of truncating it; suggest what would read it."""
    reach = plan.reach(info)
    needed = input_tokens + max_new_tokens
    if reach is None or needed <= reach:
        return
    from ..spec import REGISTRY, method_names

    method_names()
    extenders = sorted(n for n, cls in REGISTRY.items() if cls.extends)
    if extenders:
        hint = f"add a method that extends it, e.g. --method {extenders[0]} (all: {', '.join(extenders)})"
    else:
        hint = "shorten the document (no context-extending method is installed in this version)"
    what = f"{info.name} reads {reach:,} tokens" + (f" with {plan.spec}" if plan.methods else "")
    raise TooLongError(
        f"input is {input_tokens:,} tokens (+{max_new_tokens} to generate) but {what}; {hint}"
    )


@torch.inference_mode()
def prefill(model: Any, ids: list[int], cache: Any, chunk_size: int, progress: bool = False,
            start: int = 0) -> torch.Tensor:
    """Feed ``ids`` into ``cache`` chunk by chunk; return the logits of the last position, shape (1, V)."""
    n = len(ids)
    tokens = torch.tensor([ids], dtype=torch.long)  # (1, n)
    bar = tqdm(total=n, unit="tok", unit_scale=True, desc="prefill", disable=not progress, leave=False)
    logits = None
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        positions = torch.arange(start + lo, start + hi).unsqueeze(0)  # (1, c)
        out = model(input_ids=tokens[:, lo:hi], position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1, :]  # (1, V)
        bar.update(hi - lo)
    bar.close()
    assert logits is not None, "prefill needs at least one token"
    return logits


@torch.inference_mode()
def greedy_decode(model: Any, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
                  stop: Iterable[int]) -> list[int]:
    """Greedy decoding from ``logits`` (1, V) with the filled ``cache``; stops at any id in ``stop``."""
    stop = set(stop)
    out: list[int] = []
    for step in range(max_new_tokens):
        next_id = int(logits[0].argmax())
        if next_id in stop:
            break
        out.append(next_id)
        if step == max_new_tokens - 1:
            break
        result = model(input_ids=torch.tensor([[next_id]]), position_ids=torch.tensor([[position + step]]),
                       cache=cache, use_cache=True, logits_to_keep=1)
        logits = result.logits[:, -1, :]
    return out


def eos_ids(lm: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), lm.model.config, lm.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    for tok in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>"):
        tid = lm.tokenizer.convert_tokens_to_ids(tok) if hasattr(lm.tokenizer, "convert_tokens_to_ids") else None
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and tid != unk:
            ids.add(tid)
    return ids
