"""``h2o``: evict by accumulated attention (Heavy-Hitter Oracle)."""

from __future__ import annotations

from typing import ClassVar

from ...kv.evict import EvictionMethod
from ...spec import LengthOrZero, Method, register


@register
class H2O(EvictionMethod, Method):
    """Keep the heavy hitters (entries with the largest attention accumulated over all queries so far)
    plus the most recent ``window`` entries; drop the rest.

    Paper: H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models
    (Zhang et al., NeurIPS 2023), https://arxiv.org/abs/2306.14048. Every query of every prefill chunk
    contributes (recomputed from the hidden states by a pre-hook, in blocks of 256 queries), then each
    decoded query.

    Parameters:
      ratio           fraction of the context dropped (default 0.5), used when budget is 0
      budget          entries kept per layer and KV head; 0 = use ratio
      window          most recent entries always kept (default 64)
      question_aware  false (default): the question and answer are kept and never scored with;
                      true: they are scored with and evicted like the document
    """

    name: ClassVar[str] = "h2o"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "H2O (arXiv 2306.14048)"
    summary: ClassVar[str] = "evict KV entries with the least accumulated attention (heavy hitters kept)"
    scorer: ClassVar[str] = "h2o"

    ratio: float = 0.5
    budget: LengthOrZero = 0
    window: int = 64
    question_aware: bool = False

    def __post_init__(self) -> None:
        self._validate()
