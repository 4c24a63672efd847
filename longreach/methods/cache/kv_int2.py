"""``kv-int2``: 2-bit KV cache in KIVI layout (keys per channel in groups, values per token)."""

from __future__ import annotations

from typing import ClassVar

from ...kv.quantized import QuantizedMethod
from ...spec import Method, register


@register
class KvInt2(QuantizedMethod, Method):
    """2-bit asymmetric KV-cache quantization, KIVI layout, packed storage.

    Paper: KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache (Liu et al., ICML 2024),
    https://arxiv.org/abs/2402.02750; sink and outlier options from KVQuant (https://arxiv.org/abs/2401.18079).

    Parameters:
      group     tokens per key quantization group (one scale/min per channel and group), default 32
      residual  most recent tokens kept in full precision, default 128
      sink      first tokens kept in full precision (attention sink), default 0
      outliers  fraction of entries kept exact in a sparse list (dense-and-sparse), default 0
    Only full-attention layers are quantized; sliding-window layers keep their bounded window.
    """

    name: ClassVar[str] = "kv-int2"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "KIVI (arXiv 2402.02750)"
    summary: ClassVar[str] = "2-bit KV cache (KIVI: keys per channel, values per token, recent tokens fp)"
    bits: ClassVar[int] = 2

    group: int = 32
    residual: int = 128
    sink: int = 0
    outliers: float = 0.0

    def __post_init__(self) -> None:
        self._validate()
