"""``kvquant``: KVQuant-style quantized KV cache (sink token and 1% outliers in full precision)."""

from __future__ import annotations

from typing import ClassVar

from ...kv.quantized import QuantizedMethod
from ...spec import Method, register


@register
class KvQuant(QuantizedMethod, Method):
    """Low-bit KV cache with KVQuant's dense-and-sparse outliers and full-precision attention sink.

    Paper: KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache Quantization
    (Hooper et al., 2024), https://arxiv.org/abs/2401.18079. Storage layout as ``kv-int*`` (keys per
    channel in groups, values per token, packed codes). Implemented: per-channel keys, first-token
    sink, dense-and-sparse outliers. Not implemented: pre-RoPE key quantization and the per-layer
    non-uniform (Fisher-weighted k-means) datatype.

    Parameters:
      bits      2, 4 or 8 (default 2)
      group     tokens per key quantization group, default 32
      residual  most recent tokens kept in full precision, default 128
      sink      first tokens kept in full precision, default 1
      outliers  fraction of each flushed block's largest-magnitude entries kept exact, default 0.01
    """

    name: ClassVar[str] = "kvquant"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "KVQuant (arXiv 2401.18079)"
    summary: ClassVar[str] = "low-bit KV cache + 1% exact outliers + full-precision sink token (KVQuant)"

    bits: int = 2
    group: int = 32
    residual: int = 128
    sink: int = 1
    outliers: float = 0.01

    def __post_init__(self) -> None:
        self._validate()
