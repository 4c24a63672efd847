"""SelfExtend: neighbour attention inside a window W, grouped (floor-divided) positions beyond it; by default
only for requests longer than the native window (shorter ones read as the model does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...errors import SpecError
from ...spec import Length, register
from ..rope.base import require_rope
from .base import AttentionMethod, RotaryView, contiguous_key_positions, layer_type, query_positions, softcap
from .kernel import Far, RotationTable, two_part_attention

DEFAULT_GROUP = 4


def self_extend_reach(window: int, group: int, native: int) -> int:
    """Longest input whose grouped positions stay inside the trained window: (L - W) G + W."""
    return (native - window) * group + window


def group_for(target: int, window: int, native: int) -> int:
    """Smallest G with W + (N - W) / G <= 2/3 L (the paper's rule of thumb) for N = target."""
    room3 = 2 * native - 3 * window  # 3 * (2/3 L - W), in integers so that exact fits stay exact
    if room3 <= 0:
        raise SpecError(f"self-extend: window {window} leaves no room for grouped positions in a "
                        f"{native}-token model; use a window below {2 * native // 3}")
    return max(1, -(-3 * (target - window) // room3))  # ceil


def grouped_query_delta(q_pos: torch.Tensor, window: int, group: int) -> torch.Tensor:
    """Rotation that moves a query from m to its grouped position m // G + W - W // G."""
    return q_pos // group + window - window // group - q_pos


def grouped_key_delta(k_pos: torch.Tensor, group: int) -> torch.Tensor:
    """Rotation that moves a key from n to its grouped position n // G."""
    return k_pos // group - k_pos


@register
class SelfExtend(AttentionMethod):
    """SelfExtend (Jin et al., "LLM Maybe LongLM", ICML 2024, https://arxiv.org/abs/2401.01325).

    Two score maps from the same queries and keys, merged before one softmax: neighbour attention
    with normal positions where the distance m - n < W, grouped attention where m - n >= W, with the
    query at m // G + W - W // G and the key at n // G. Computed blockwise (flash-style tiles merged
    by log-sum-exp), so memory grows linearly with length; keys stay cached at their own positions
    and are re-rotated in float32 for the grouped part, so cached decoding equals recomputation.
    Sliding-window layers (Gemma 3) keep their own window and positions.

    ``dynamic`` (default): a request whose input + new tokens fit the native window L is read with the
    model's own attention, untouched; grouping applies only to requests longer than L (decided once per
    request from its total length, as dynamic-ntk does, so a request's cache never mixes the two). The
    paper groups every request (``dynamic=false``): floor-divided positions cost accuracy inside the
    window (benchmarks/results/reach-positions.md: 1/3 pass keys at 4k on SmolLM2 vs 3/3 for the plain
    read). A dynamic request's cached keys depend on its length, so it does not reuse cached prefixes.

    Reach: (L - W) * G + W tokens (L = native window).

    Parameters:
      window: neighbour window W (default: native window / 4).
      group: group size G (default: from target, else 4).
      target: length to read instead of group: the smallest G with W + (target - W) / G <= 2/3 L.
      dynamic: group only requests longer than L (default true); false groups every request (the paper).
    """

    name = "self-extend"
    paper = "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning, https://arxiv.org/abs/2401.01325"
    summary = "neighbour attention within W + grouped positions (n // G) beyond, merged in one softmax (only past L)"
    extends = True

    window: Length | None = None
    group: int | None = None
    target: Length | None = None
    dynamic: bool = True

    @property
    def reuses_prefix(self) -> bool:  # type: ignore[override]  (Method.reuses_prefix, per instance here)
        """Keys are cached at their own positions and grouping is applied when they are read, so a cached
        prefix serves any later prompt when every request is grouped; ``dynamic`` decides per request."""
        return not self.dynamic

    def groups(self, info: Any, tokens: int | None) -> bool:
        """Whether a request of ``tokens`` (input + new tokens; None: unknown) reads with grouped positions."""
        return not self.dynamic or tokens is None or tokens > info.window

    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        if self.groups(info, tokens):
            return super().install(model, info, tokens)
        self.check(info)
        return lambda: None  # within the native window: the model's own attention, nothing installed

    def __post_init__(self) -> None:
        if self.group is not None and self.target is not None:
            raise ValueError("give either group or target, not both (group is derived from target)")
        if self.group is not None and self.group < 1:
            raise ValueError(f"group must be >= 1, got {self.group}")

    # -- resolved parameters
    def resolve(self, info: Any) -> tuple[int, int]:
        """(W, G) for this model."""
        window = self.window or info.window // 4
        if self.group is not None:
            return window, self.group
        if self.target is not None:
            return window, group_for(self.target, window, info.window)
        return window, DEFAULT_GROUP

    def check(self, info: Any) -> None:
        require_rope(info, "self-extend")  # grouped positions re-rotate cached keys
        window = self.window or info.window // 4
        if window >= info.window:
            raise SpecError(f"self-extend: window {window} must be smaller than {info.name}'s native "
                            f"window {info.window}; try window={info.window // 4}")
        self.resolve(info)

    def reach(self, info: Any) -> int:
        window, group = self.resolve(info)
        return max(info.window, self_extend_reach(window, group, info.window))

    # -- the attention function
    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        window, group = self.resolve(info)
        rotary = RotaryView(model)
        tables: dict[str, RotationTable] = {}  # layer type -> cos/sin of offsets, shared by layers

        def self_extend_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                  sliding_window=None, **kwargs):
            t, s = query.shape[-2], key.shape[-2]
            q_pos = query_positions(kwargs, t)  # (T,)
            k_pos = contiguous_key_positions(q_pos, s)  # (S,)
            scale = module.scaling if scaling is None else scaling
            if sliding_window:  # a local layer: its own window, normal positions
                out = two_part_attention(query, key, value, q_pos, k_pos, scale, sliding_window,
                                         softcap=softcap(module))
                return out, None
            n_far = int(torch.searchsorted(k_pos, q_pos[-1:] - window, right=True))  # keys >= W back
            far = None
            if n_far:
                kind = layer_type(module)
                inv = rotary.inv_freq(kind)  # read now: composes with rope methods
                table = tables.setdefault(kind, RotationTable())
                q_far = table.rerotate(query, grouped_query_delta(q_pos, window, group), inv)  # (B, H, T, D)
                k_far = table.rerotate(key[..., :n_far, :], grouped_key_delta(k_pos[:n_far], group), inv)
                far = Far(q=q_far.to(query.dtype), k=k_far.to(key.dtype))
            out = two_part_attention(query, key, value, q_pos, k_pos, scale, window, far, softcap(module))
            return out, None

        return self_extend_attention
