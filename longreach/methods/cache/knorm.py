"""``knorm``: evict the keys with the largest L2 norm."""

from __future__ import annotations

from typing import ClassVar

from ...kv.evict import EvictionMethod
from ...spec import LengthOrZero, Method, register


@register
class Knorm(EvictionMethod, Method):
    """Score each entry by ``-||k||`` (low-norm keys tend to draw attention) and keep the top ones.

    Paper: A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression (Devoto et al.,
    EMNLP 2024), https://arxiv.org/abs/2406.11430. Needs no queries: the cheapest scorer.

    Parameters:
      ratio           fraction of the context dropped (default 0.5), used when budget is 0
      budget          entries kept per layer and KV head; 0 = use ratio
      window          most recent entries always kept (default 0, as in the paper)
      question_aware  false (default): the question and answer are kept and never evicted
    """

    name: ClassVar[str] = "knorm"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "Knorm (arXiv 2406.11430)"
    summary: ClassVar[str] = "evict KV entries with the largest key norm"
    scorer: ClassVar[str] = "knorm"

    ratio: float = 0.5
    budget: LengthOrZero = 0
    window: int = 0
    question_aware: bool = False

    def __post_init__(self) -> None:
        self._validate()
