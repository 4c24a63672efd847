"""``kvquant``: KVQuant-style quantized KV cache (pre-RoPE keys, sink token and 1% outliers exact,
optional per-layer non-uniform datatype)."""

from __future__ import annotations

from typing import ClassVar, Literal

from ...kv.quantized import QuantizedMethod
from ...spec import Method, register


@register
class KvQuant(QuantizedMethod, Method):
    """Low-bit KV cache with KVQuant's pre-RoPE keys, dense-and-sparse outliers and full-precision sink.

    Paper: KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache Quantization
    (Hooper et al., 2024), https://arxiv.org/abs/2401.18079. Storage layout as ``kv-int*`` (keys per
    channel in groups, values per token, packed codes). Implemented: per-channel keys, pre-RoPE key
    quantization, first-token sink, dense-and-sparse outliers, and the per-layer non-uniform datatype
    (Fisher-weighted k-means on calibration text). Pre-RoPE: a forward pre-hook on each attention module
    captures the (cos, sin) the model applies to each token (one table per cache, half of cos and sin per
    token, counted in the held bytes); keys are un-rotated before quantization and re-rotated when
    dequantized (:mod:`longreach.kv.rotary`). A model without RoPE is refused (``pre_rope=false`` works).
    nuq: codebooks of ``2**bits`` levels per layer for keys and values, fitted once per model on 512
    tokens of built-in essay text (:mod:`longreach.kv.calibrate`, a forward + backward pass).

    Parameters:
      bits      2, 4 or 8 (default 2)
      group     tokens per key quantization group, default 32
      residual  most recent tokens kept in full precision, default 128
      sink      first tokens kept in full precision, default 1
      outliers  fraction of each flushed block's largest-magnitude entries kept exact, default 0.01
      pre_rope  quantize keys before RoPE (re-rotated when read), default true
      datatype  uniform (default) or nuq (per-layer non-uniform levels fitted on calibration text)
    """

    name: ClassVar[str] = "kvquant"
    slot: ClassVar[str] = "cache"
    paper: ClassVar[str] = "KVQuant (arXiv 2401.18079)"
    summary: ClassVar[str] = ("low-bit KV cache, pre-RoPE keys, 1% exact outliers, fp sink token, "
                              "optional non-uniform levels (KVQuant)")

    bits: int = 2
    group: int = 32
    residual: int = 128
    sink: int = 1
    outliers: float = 0.01
    pre_rope: bool = True
    datatype: Literal["uniform", "nuq"] = "uniform"

    def __post_init__(self) -> None:
        self._validate()
