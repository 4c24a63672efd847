"""The default reader: chunked prefill into the KV cache, then greedy decoding (through the Engine).

Chunked prefill keeps activations bounded by the chunk (not the document) and computes logits for
the last position only, so it uses far less memory than ``model(input_ids)`` on the whole prompt and
gives the same next-token logits (tested). The model passes themselves live in :mod:`longreach.engine`
(re-exported here: ``prefill``, ``greedy_decode``, ``eos_ids``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..engine import greedy_decode, prefill  # noqa: F401  (re-exported)
from ..memory import cache_bytes
from ..prefix_cache import crop_to, held_bytes, plan_key
from ..prompt import build_prompt, encode
from . import EngineLike, ReadResult, Request, decode_answer


class ChunkedReader:
    """Prefill the prompt ``chunk_size`` tokens at a time, then decode greedily.

    ``hooks(model)``: an optional context manager entered around the passes, inside the session (the
    ``icv`` reader steers the hidden states with it); it must remove what it installs on exit.
    ``prefix_cache``: a :class:`~longreach.prefix_cache.PrefixCache` (or anything with its ``lookup`` /
    ``store``); when the plan :meth:`reuses its prefix <longreach.spec.Plan.reuses_prefix>`, the read starts
    from the longest prefix of the prompt it holds (prefilling only the rest, at positions L..) and stores
    the prompt's cache afterwards; ``extra["cached_tokens"]`` = L. Greedy tokens are those of a read
    without it (the suffix is its own prefill chunk: logits may differ by float rounding, as between chunk
    sizes).
    """

    name = "chunked"

    def __init__(self, hooks: Callable[[Any], AbstractContextManager[Any]] | None = None,
                 prefix_cache: Any = None):
        self.hooks = hooks
        self.prefix_cache = prefix_cache

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        tok = engine.tokenizer
        text = build_prompt(tok, request.document, request.question, request.answer_prefix, request.prompt)
        ids = encode(tok, text)
        engine.check_request(plan, len(ids), request.max_new_tokens, request.chunk_size, request.memory_limit)
        pc = self.prefix_cache
        reuse = pc is not None and self.hooks is None and plan.reuses_prefix(engine.info)
        with engine.session(plan, len(ids) + request.max_new_tokens) as s:
            key = plan_key(plan, s.model)
            t0 = time.perf_counter()
            cache, cached = pc.lookup(key, ids) if reuse else (None, 0)
            if cache is None:
                cache = s.make_cache(text, ids, request.question)  # compressing caches: where the question starts
            with self.hooks(s.model) if self.hooks is not None else nullcontext():
                logits = s.prefill(ids[cached:], cache, request.chunk_size, progress=progress, start=cached)
                t1 = time.perf_counter()
                out, answer_ids = decode_answer(engine, s, cache, logits, len(ids), request)
                t2 = time.perf_counter()
            held = cache_bytes(cache)
            if reuse:
                crop_to(cache, len(ids))  # the prompt's entries only: the decoded tokens are this read's own
                pc.store(key, ids, cache, held_bytes(cache))
        return ReadResult(
            answer=tok.decode(answer_ids, skip_special_tokens=True).strip(),
            output_ids=out,
            input_tokens=len(ids),
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            kv_cache_bytes=held,
            extra={"cached_tokens": cached} if reuse else {},
        )


def eos_ids(lm: Any) -> set[int]:
    """End-of-answer token ids of a :class:`~longreach.models.LoadedModel` (see ``longreach.engine``)."""
    from ..engine import eos_ids as model_eos_ids

    return model_eos_ids(lm.model, lm.tokenizer)
