"""``kv-cluster``: merge similar keys into count-weighted centroids (Chelsea / CentroidKV)."""

from __future__ import annotations

from typing import ClassVar

from ...kv.cluster import ClusterMethod
from ...spec import LengthOrZero, Method, register


@register
class KvCluster(ClusterMethod, Method):
    """Chunked soft matching with alternating partition; each cluster's keys and values merge into a
    centroid that counts the tokens it stands for (weight ``log m`` in the logit: attention mass kept).

    Paper: Efficient Long-Context LLM Inference via KV Cache Clustering (Chelsea, arXiv 2506.11418).
    Implemented from the paper's description (no public code). Merges run after every prefill chunk
    and decoded token that takes the layer past its target, on full-attention layers only. The held
    bytes shrink; attention still runs over every token (centroids repeated by their counts, one layer
    at a time), so decoding is not faster.

    Parameters:
      ratio   fraction of entries removed by merging (default 0.5), used when budget is 0
      budget  entries kept per layer and KV head; 0 = use ratio
      chunk   entries per matching chunk (even, default 32)
      window  most recent entries never merged (default 64)
      sink    first entries never merged (attention sinks, default 4)
      share   at most this fraction of a round's sources merge (default 0.5; 1 = one forced round)
    """

    name: ClassVar[str] = "kv-cluster"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "Chelsea KV clustering (arXiv 2506.11418)"
    summary: ClassVar[str] = "merge similar KV entries into count-weighted centroids (chunked soft matching)"

    ratio: float = 0.5
    budget: LengthOrZero = 0
    chunk: int = 32
    window: int = 64
    sink: int = 4
    share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio is the fraction of entries removed, in [0, 1); got {self.ratio}")
        if self.chunk < 2 or self.chunk % 2:
            raise ValueError(f"chunk must be an even number >= 2, got {self.chunk}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"share is a fraction of each round's sources, in (0, 1]; got {self.share}")
        if self.budget < 0 or self.window < 0 or self.sink < 0:
            raise ValueError("budget and window must be >= 0")
