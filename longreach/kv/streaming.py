"""The StreamingLLM cache: attention sinks + a recent window, everything else evicted.

Between forward passes a full-attention layer holds the first ``sinks`` tokens and the last
``window - 1`` tokens: exactly what the next query needs (itself + ``window - 1`` recent tokens + the
sinks, see :mod:`longreach.methods.attention.streaming`). During a forward it returns those plus the new
tokens, so a prefill chunk of c tokens still sees, for each of its queries, the full window behind it.
Keys stay rotated at their document positions; the attention function re-assigns positions.

Sliding-window layers (Gemma 3) keep transformers' own bounded ``DynamicSlidingWindowLayer``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer


class SinkWindowLayer(DynamicLayer):
    """One full-attention layer: keeps ``sinks`` first tokens + the last ``window - 1`` tokens."""

    is_croppable = False

    def __init__(self, sinks: int, window: int):
        super().__init__()
        self.sinks = sinks
        self.window = window
        self.seen = 0  # tokens fed so far (the next position, when positions start at 0)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)  # (B, Hkv, kept + T, D)
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = self._evict(keys), self._evict(values)
        return keys, values

    def _evict(self, x: torch.Tensor) -> torch.Tensor:
        recent = self.window - 1
        if x.shape[-2] <= self.sinks + recent:
            return x
        parts = [x[..., : self.sinks, :]] + ([x[..., -recent:, :]] if recent else [])
        return torch.cat(parts, dim=-2).contiguous()

    def held(self) -> int:
        return 0 if not self.is_initialized else self.keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.held() + query_length, 0

    def get_max_length(self) -> int:
        return self.sinks + self.window - 1

    def reset(self) -> None:
        super().reset()
        self.seen = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a streaming cache has evicted tokens and cannot be cropped")


class StreamingCache(Cache):
    """A ``Cache`` that really evicts: sinks + recent window on full-attention layers."""

    def __init__(self, config: Any, sinks: int, window: int):
        cfg = config.get_text_config(decoder=True)
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        layers: list[Any] = [
            DynamicSlidingWindowLayer(sliding_window=cfg.sliding_window) if kind == "sliding_attention"
            else SinkWindowLayer(sinks, window)
            for kind in types
        ]
        super().__init__(layers=layers)
        self.sinks = sinks
        self.window = window

    def held_tokens(self) -> list[int]:
        """Tokens each layer holds now (for tests and stats)."""
        return [layer.held() if isinstance(layer, SinkWindowLayer) else
                (0 if not layer.is_initialized else layer.keys.shape[-2]) for layer in self.layers]
