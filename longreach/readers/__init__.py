"""Readers: the loop that feeds a document to the model and produces an answer.

A reader has one method, ``read(lm, plan, request, progress) -> ReadResult``. The default is
:class:`~longreach.readers.chunked.ChunkedReader` (chunked prefill into the KV cache, greedy decode);
methods in the ``reader`` slot (InfiniRetri, retrieval, ...) bring their own. ``ask``, ``bench`` and
``serve`` all call a reader: they differ only in where documents come from and where answers go.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Request:
    """One question about one document."""

    document: Any  # str; readers with ``streams = True`` also take a file path or an iterable of str
    question: str
    max_new_tokens: int = 64
    answer_prefix: str = ""  # text that starts the answer (e.g. "The pass key is")
    chunk_size: int = 2048  # prefill chunk in tokens
    memory_limit: int | None = None  # bytes; None = what the machine has available
    prompt: str = "auto"  # prompt format: auto (chat template if the model has one), chat, plain


@dataclasses.dataclass
class ReadResult:
    answer: str
    output_ids: list[int]
    input_tokens: int
    prefill_seconds: float
    decode_seconds: float
    kv_cache_bytes: int
    evidence: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
