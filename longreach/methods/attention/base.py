"""Shared machinery of the attention-slot methods (logn, self-extend, streaming).

An attention method installs a function through transformers' public seam:
``AttentionInterface.register(name, fn)`` + ``model.set_attn_implementation(name)``; the undo restores
the previous implementation. transformers 5.24 calls it, for every layer, as::

    fn(module, query, key, value, attention_mask, dropout=..., scaling=..., [sliding_window=...],
       position_ids=..., ...)

with query (B, H, T, D) and key/value (B, Hkv, S, D) already rotated (RoPE) at their own positions
and, for key/value, already concatenated with the cache. ``position_ids`` (B, T) are the queries'
positions. It returns (output (B, T, H, D), attention weights or None).

Methods that change relative positions re-rotate inside the function: the cache keeps keys rotated at
their document positions, so cached decoding sees exactly what recomputation sees. The inverse
frequencies are read from the model's rotary module at call time (per layer type on Gemma 3), so a
rope-slot method installed next to them (``yarn+self-extend``) composes.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...spec import Method
from ..rope.base import ALL_TYPES, find_rotary, rotary_slots

_names = itertools.count()
SLIDING = "sliding_attention"


class AttentionMethod(Method):
    """Base of the attention-slot methods: subclasses implement :meth:`attention_function`."""

    slot: ClassVar[str] = "attention"
    #: True: register the previous implementation's mask function too (for methods that delegate to it).
    needs_mask: ClassVar[bool] = False

    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        raise NotImplementedError

    def install(self, model: Any, info: Any) -> Callable[[], None]:
        self.check(info)
        return install_attention(model, self.name, self.attention_function(model, info), self.needs_mask)


def install_attention(model: Any, tag: str, fn: Callable[..., Any], with_mask: bool) -> Callable[[], None]:
    """Register ``fn`` under a fresh name and switch ``model`` to it; return the undo.

    Without ``with_mask`` transformers builds no mask for the new name (attention_mask is None): the
    function derives causality and windows from positions, which keeps masks out of memory too.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    previous = model.config._attn_implementation or "sdpa"
    name = f"longreach-{tag}-{next(_names)}"
    AttentionInterface.register(name, fn)
    if with_mask:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[delegate_name(previous)])
    model.set_attn_implementation(name)

    def undo() -> None:
        model.set_attn_implementation(previous)

    return undo


def delegate_name(previous: str) -> str:
    """The implementation a wrapping method calls: the previous one when registered, else sdpa."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if previous in ALL_ATTENTION_FUNCTIONS and previous in ALL_MASK_ATTENTION_FUNCTIONS:
        return previous
    return "sdpa"


def delegate_function(model: Any) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[delegate_name(model.config._attn_implementation or "sdpa")]


# ---------------------------------------------------------------------------------------- positions
class RotaryView:
    """Reads the current inverse frequencies of the model's rotary module (held by weak reference)."""

    def __init__(self, model: Any):
        self._module = weakref.ref(find_rotary(model))

    def inv_freq(self, layer_type: str) -> torch.Tensor:
        module = self._module()
        slots = rotary_slots(module)
        buffer_name, _ = slots.get(layer_type) or slots[ALL_TYPES]
        return getattr(module, buffer_name)  # (D/2,)


def layer_type(module: Any) -> str:
    """``sliding_attention`` / ``full_attention`` of an attention module (Llama: always full)."""
    kind = getattr(module, "layer_type", None)
    if kind:
        return kind
    types = getattr(module.config, "layer_types", None)
    return types[module.layer_idx] if types else "full_attention"


def query_positions(kwargs: dict[str, Any], t: int) -> torch.Tensor:
    """The (T,) positions of the queries from ``position_ids`` (one shared row for the whole batch)."""
    pos = kwargs.get("position_ids")
    if pos is None:
        raise ValueError("this attention method needs position_ids (transformers passes them to attention)")
    pos = pos.reshape(-1, pos.shape[-1])  # (B, T)
    if pos.shape[0] > 1 and not bool((pos == pos[:1]).all()):
        raise ValueError("this attention method needs the same positions in every batch row (no padding)")
    if pos.shape[-1] != t:
        raise ValueError(f"position_ids cover {pos.shape[-1]} tokens but the query has {t}")
    return pos[0].to(torch.long)


def contiguous_key_positions(q_pos: torch.Tensor, s: int) -> torch.Tensor:
    """Positions of S cached keys that end with the queries, contiguous: (S,) long."""
    first = int(q_pos[-1]) - s + 1
    if first < 0:
        raise ValueError(f"the cache holds {s} keys but the last query is at position {int(q_pos[-1])}: "
                         "positions must count every token fed to the cache, from 0")
    return torch.arange(first, first + s, device=q_pos.device)


def softcap(module: Any) -> float | None:
    return getattr(module.config, "attn_logit_softcapping", None)
