"""``snapkv``: evict by the attention of an observation window, pooled (SnapKV)."""

from __future__ import annotations

from typing import ClassVar

from ...kv.evict import EvictionMethod
from ...spec import LengthOrZero, Method, register


@register
class SnapKV(EvictionMethod, Method):
    """Keep the context entries the last ``window`` queries attend to most (per KV head), drop the rest.

    Paper: SnapKV: LLM Knows What You are Looking for Before Generation (Li et al., 2024),
    https://arxiv.org/abs/2404.14469. Applied after every prefill chunk (the cache never holds more than
    the budget plus one chunk) and at every decoded token (each new query's attention is added to the
    scores). Queries are recomputed from the hidden states by a pre-hook on each attention module, so the
    model keeps its fast attention.

    Parameters:
      ratio           fraction of the context dropped (default 0.5), used when budget is 0
      budget          entries kept per layer and KV head (tokens, e.g. 2k); 0 = use ratio
      window          observation window: last queries used for scoring, always kept (default 64)
      pool            average-pooling kernel over the scores (default 5)
      question_aware  false (default): compress the document as if the question were unknown (the
                      question and answer are kept after it, never scored with); true: the question is
                      part of the observation window (flatters query-based methods: label results)
    """

    name: ClassVar[str] = "snapkv"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "SnapKV (arXiv 2404.14469)"
    summary: ClassVar[str] = "evict KV entries by pooled attention from the last window of queries"
    scorer: ClassVar[str] = "snapkv"

    ratio: float = 0.5
    budget: LengthOrZero = 0
    window: int = 64
    pool: int = 5
    question_aware: bool = False

    def __post_init__(self) -> None:
        self._validate()
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd kernel size >= 1, got {self.pool}")
        if self.window < 1:
            raise ValueError("snapkv needs an observation window >= 1")
