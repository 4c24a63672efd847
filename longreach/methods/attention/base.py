"""Shared machinery of the attention-slot methods (logn, self-extend, streaming).

An attention method installs a function through transformers' public seam:
``AttentionInterface.register(name, fn)`` + ``model.set_attn_implementation(name)``; the undo restores
the previous implementation. One function is registered per method class, once per process, under
``longreach-<method name>`` (plus a mask function for methods that delegate to the previous
implementation): it looks up the request's closure at call time in a weak map keyed by the attention
module, filled at install and emptied by the undo. So the registries do not grow with requests and no
closure (nor the cos/sin tables it holds) outlives its request. transformers 5.24 calls it, for every
layer, as::

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

import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...kv.base import attention_modules
from ...spec import Method
from ..rope.base import ALL_TYPES, find_rotary, rotary_slots

SLIDING = "sliding_attention"

#: attention module -> (implementation name, the request's attention function)
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: id(config) -> (weak reference to the config, mask function); configs are not hashable
_MASKS: dict[int, tuple[weakref.ref, Callable[..., Any]]] = {}
_REGISTER_LOCK = threading.Lock()


class AttentionMethod(Method):
    """Base of the attention-slot methods: subclasses implement :meth:`attention_function`."""

    slot: ClassVar[str] = "attention"
    #: True: register the previous implementation's mask function too (for methods that delegate to it).
    needs_mask: ClassVar[bool] = False

    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        raise NotImplementedError

    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        self.check(info)
        return install_attention(model, self.name, self.attention_function(model, info), self.needs_mask)


def implementation_name(tag: str) -> str:
    """The attention implementation name of a method: ``longreach-<method name>``."""
    return f"longreach-{tag}"


def _dispatcher(name: str) -> Callable[..., Any]:
    def longreach_attention(module, *args, **kwargs):
        entry = _ACTIVE.get(module)
        if entry is None or entry[0] != name:
            raise RuntimeError(f"attention implementation {name!r} has no function installed for this module; "
                               "run requests through longreach.Engine")
        return entry[1](module, *args, **kwargs)

    return longreach_attention


def _mask_dispatcher(name: str) -> Callable[..., Any]:
    def longreach_mask(*args, config=None, **kwargs):
        entry = _MASKS.get(id(config))
        if entry is None or entry[0]() is not config:
            raise RuntimeError(f"attention implementation {name!r} has no mask function installed for this "
                               "model; run requests through longreach.Engine")
        return entry[1](*args, config=config, **kwargs)

    return longreach_mask


def register_once(name: str, with_mask: bool) -> None:
    """Register the dispatching attention (and mask) function of ``name`` unless it is registered."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    with _REGISTER_LOCK:
        if name not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(name, _dispatcher(name))
        if with_mask and name not in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, _mask_dispatcher(name))


def install_attention(model: Any, tag: str, fn: Callable[..., Any], with_mask: bool) -> Callable[[], None]:
    """Switch ``model`` to the method's implementation with ``fn`` as this request's function; return
    the undo (previous implementation back, ``fn`` dropped).

    Without ``with_mask`` transformers builds no mask for the implementation (attention_mask is None):
    the function derives causality and windows from positions, which keeps masks out of memory too.
    With it, the mask is the previous implementation's (for methods that delegate to it).
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    previous = model.config._attn_implementation
    name = implementation_name(tag)
    register_once(name, with_mask)
    modules = attention_modules(model)
    if not modules:
        raise RuntimeError(f"{tag}: found no attention module in {type(model).__name__}")
    for module in modules:
        _ACTIVE[module] = (name, fn)
    configs: dict[int, Any] = {}
    if with_mask:
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[delegate_name(previous or "sdpa")]
        for cfg in [model.config, *(getattr(m, "config", None) for m in modules)]:
            if cfg is not None:
                configs[id(cfg)] = cfg
                _MASKS[id(cfg)] = (weakref.ref(cfg), mask_fn)

    def drop() -> None:
        for module in modules:
            _ACTIVE.pop(module, None)
        for key in configs:
            _MASKS.pop(key, None)

    try:
        model.set_attn_implementation(name)
    except BaseException:
        drop()
        raise

    def undo() -> None:
        try:
            model.set_attn_implementation(previous)
        finally:
            drop()

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
