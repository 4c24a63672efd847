"""Log-length query scaling (Entropy-ABF's training-free part), optionally with a raised rope base."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...errors import SpecError
from ...spec import Length, register
from ..rope.base import (
    changed_layer_types,
    default_inv_freq,
    find_rotary,
    install_frequencies,
    require_rope,
    rotary_slots,
)
from ..rope.critical_ntk import critical_base, critical_dim
from .base import AttentionMethod, delegate_function, layer_type, query_positions


def logn_factor(positions: torch.Tensor, native: int) -> torch.Tensor:
    """max(1, ln(m + 1) / ln(L)) per position, float32: 1 inside the trained window, growing beyond."""
    m = positions.to(torch.float32)
    return torch.clamp(torch.log(m + 1) / math.log(native), min=1.0)


def base_reach(dim: int, base: float, new_base: float, native: int) -> int:
    """Length a raised base covers by the critical-dimension law: T = 2 pi b'^(d_c / d)."""
    d_c = critical_dim(dim, base, native)
    return max(native, round(2 * math.pi * new_base ** (d_c / dim)))


@register
class LogN(AttentionMethod):
    """Log-length scaling of the query (Entropy-ABF, Zhang et al., "Extending LLMs' Context Window with
    100 Samples", https://arxiv.org/abs/2401.07004; the log-n trick of Chiang & Cholak / Su).

    After RoPE, the query at position m is multiplied by max(1, ln(m + 1) / ln(L)) (L = native
    window) so attention entropy does not grow with length; the first ``skip_layers`` layers and
    sliding-window layers are untouched. Optionally the rope base of the global layers is raised
    (Entropy-ABF's training-free part; the paper fine-tunes on top). Without a raised base (or a
    rope method next to it) positions beyond L stay out of distribution.

    Parameters:
      base: new rope base of the full-attention layers (e.g. 500000 for Llama-2); default unchanged.
      target: length to read instead of base: b' from the critical-dimension law, (T/2pi)^(d/d_c).
      skip_layers: first layers left unscaled (2, as in the paper).
    """

    name = "logn"
    paper = "Extending LLMs' Context Window with 100 Samples (Entropy-ABF), https://arxiv.org/abs/2401.07004"
    summary = "query x max(1, ln(pos+1)/ln L) after RoPE, optionally with a raised rope base"
    reuses_prefix = True  # scales queries by position only; keys cached as plain (or static-base) RoPE
    extends = True
    needs_mask = True  # it wraps the previous attention implementation (sdpa), mask included

    base: float | None = None
    target: Length | None = None
    skip_layers: int = 2

    def __post_init__(self) -> None:
        if self.base is not None and self.target is not None:
            raise ValueError("give either base or target, not both (base is derived from target)")
        if self.base is not None and not (math.isfinite(self.base) and self.base > 1):
            raise ValueError(f"base must be a number > 1, got {self.base}")
        if self.skip_layers < 0:
            raise ValueError(f"skip_layers must be >= 0, got {self.skip_layers}")

    def new_bases(self, info: Any) -> dict[str, float]:
        """Layer type -> raised base ({} when the base is unchanged)."""
        if self.base is None and self.target is None:
            return {}
        out = {}
        for t in changed_layer_types(info):
            b = info.rope_theta(t)
            out[t] = self.base if self.base is not None else critical_base(info.head_dim, b, info.window,
                                                                            self.target)
        return out

    def check(self, info: Any) -> None:
        raised = self.base is not None or self.target is not None
        # query scaling alone works on any RoPE; a raised base replaces the frequencies (full, plain RoPE)
        require_rope(info, "logn", full_head=raised, static=raised)
        for t in changed_layer_types(info) if raised else []:
            if info.rope_type(t) != "default":
                raise SpecError(f"logn:base/target replaces the frequencies of {info.name}'s {t} layers, which "
                                f"already use rope_type={info.rope_type(t)!r}; drop base/target (query scaling "
                                "alone composes with it)")
        for t, new in self.new_bases(info).items():
            if new < info.rope_theta(t):
                raise SpecError(f"logn: base {new:g} is below {info.name}'s {t} base {info.rope_theta(t):g}; "
                                "raise it or leave base unset")

    def reach(self, info: Any) -> int:
        bases = self.new_bases(info)
        if not bases:
            return info.window
        return min(base_reach(info.head_dim, info.rope_theta(t), b, info.window) for t, b in bases.items())

    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        self.check(info)
        bases = self.new_bases(info)
        if not bases:
            return super().install(model, info, tokens)
        rotary = find_rotary(model)
        slots = rotary_slots(rotary)
        for name, _ in slots.values():  # another method already moved the frequencies
            original = getattr(rotary, name.replace("inv_freq", "original_inv_freq"), None)
            if original is not None and not torch.equal(getattr(rotary, name), original):
                raise SpecError("logn:base/target conflicts with the rope method in the spec; drop base/target")
        undo_rope = install_frequencies(model, {t: (default_inv_freq(b, info.head_dim), 1.0)
                                                for t, b in bases.items()})
        try:
            undo_attention = super().install(model, info, tokens)
        except BaseException:
            undo_rope()
            raise

        def undo() -> None:
            try:
                undo_attention()
            finally:
                undo_rope()

        return undo

    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        delegate = delegate_function(model)
        native, skip = info.window, self.skip_layers

        def logn_attention(module, query, key, value, attention_mask, *args, **kwargs):
            if module.layer_idx >= skip and layer_type(module) != "sliding_attention":
                q_pos = query_positions(kwargs, query.shape[-2])  # (T,)
                query = query * logn_factor(q_pos, native).to(query.dtype)[:, None]  # (B, H, T, D)
            return delegate(module, query, key, value, attention_mask, *args, **kwargs)

        return logn_attention
