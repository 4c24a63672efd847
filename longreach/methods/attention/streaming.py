"""StreamingLLM: attention sinks + a recent window, positions re-assigned inside the cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...errors import SpecError
from ...spec import Length, register
from ..rope.base import require_rope
from .base import AttentionMethod, RotaryView, contiguous_key_positions, layer_type, query_positions, softcap
from .kernel import Far, RotationTable, two_part_attention


def sink_key_positions(q_pos: torch.Tensor, s: int, sinks: int) -> torch.Tensor:
    """Document positions of S cached keys: the sinks 0..sinks-1, then a contiguous run ending with
    the queries (the same as 0..S-1 while nothing was evicted). (S,) long."""
    recent = contiguous_key_positions(q_pos, s)
    head = min(sinks, s)
    return torch.cat([torch.arange(head, device=q_pos.device), recent[head:]])


def sink_query_delta(q_pos: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """Rotation that moves a query from m to its cache position min(m, sinks + window - 1)."""
    return torch.clamp(q_pos, max=sinks + window - 1) - q_pos


@register
class Streaming(AttentionMethod):
    """StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024,
    https://arxiv.org/abs/2309.17453).

    Each query at position m attends to the first ``sinks`` tokens (attention sinks) and to the last
    ``window`` tokens (itself included); all other tokens are evicted from the cache
    (:class:`longreach.kv.streaming.StreamingCache`, supplied by this method). Positions are those
    inside the cache: the query sits at min(m, sinks + window - 1), sink k at k, recent tokens at their
    true distance; keys stay rotated at their document positions and only the query is re-rotated
    (float32) for the sinks, so prefill chunks and decode steps see exactly what a token-by-token
    stream sees. Reads input of any length, but anything evicted cannot be recalled: it does not
    extend what the model can retrieve (the baseline retrieval methods must beat).

    Parameters:
      sinks: first tokens always kept (4).
      window: recent tokens each query sees, itself included (default: native window - sinks).
    """

    name = "streaming"
    paper = "Efficient Streaming Language Models with Attention Sinks, https://arxiv.org/abs/2309.17453"
    summary = "attention sinks + recent window with positions inside the cache (unbounded input, no recall)"
    extends = True

    sinks: int = 4
    window: Length | None = None

    def __post_init__(self) -> None:
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")

    def resolve(self, info: Any) -> int:
        return self.window or info.window - self.sinks

    def check(self, info: Any) -> None:
        require_rope(info, "streaming")  # positions inside the cache re-rotate the query
        window = self.resolve(info)
        if window < 1 or self.sinks + window > info.window:
            raise SpecError(f"streaming: sinks + window = {self.sinks + window} must be within "
                            f"{info.name}'s native window {info.window}; "
                            f"use e.g. window={info.window - self.sinks}")

    def reach(self, info: Any) -> None:
        return None  # any length: the cache stays bounded

    # -- cache
    def make_cache(self, model: Any, info: Any) -> Any:
        from ...kv.streaming import StreamingCache

        return StreamingCache(model.config, self.sinks, self.resolve(info))

    def kv_cache_bytes(self, info: Any, tokens: int) -> int:
        from ...memory import kv_cache_bytes_full

        return kv_cache_bytes_full(info, min(tokens, self.sinks + self.resolve(info) - 1))  # held between passes

    # -- the attention function
    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        sinks, window = self.sinks, self.resolve(info)
        rotary = RotaryView(model)
        tables: dict[str, RotationTable] = {}  # layer type -> cos/sin of offsets, shared by layers

        def streaming_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                sliding_window=None, **kwargs):
            t, s = query.shape[-2], key.shape[-2]
            q_pos = query_positions(kwargs, t)  # (T,)
            scale = module.scaling if scaling is None else scaling
            if sliding_window:  # a local layer: its own window, normal positions
                k_pos = contiguous_key_positions(q_pos, s)
                out = two_part_attention(query, key, value, q_pos, k_pos, scale, sliding_window,
                                         softcap=softcap(module))
                return out, None
            k_pos = sink_key_positions(q_pos, s, sinks)  # (S,)
            n_far = min(sinks, int(torch.searchsorted(k_pos, q_pos[-1:] - window, right=True)))
            far = None
            if n_far:  # sinks out of the window: seen from the query's cache position
                kind = layer_type(module)
                table = tables.setdefault(kind, RotationTable())
                delta = sink_query_delta(q_pos, sinks, window)  # (T,)
                q_far = table.rerotate(query, delta, rotary.inv_freq(kind))  # (B, H, T, D) float32
                far = Far(q=q_far.to(query.dtype), k=key[..., :n_far, :])
            out = two_part_attention(query, key, value, q_pos, k_pos, scale, window, far, softcap(module))
            return out, None

        return streaming_attention
