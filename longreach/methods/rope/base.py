"""Shared machinery of the rope-slot methods (PI, NTK, YaRN, DPRoPE, critical NTK and their dynamic forms).

A rope method only changes two things per layer type: the inverse frequencies ``inv_freq`` (angle of
pair i at position p is ``p * inv_freq[i]``) and an attention factor that multiplies cos and sin (so
the logits by its square). transformers computes both when the model is built, so changing the config
of a loaded model does nothing: :func:`install_frequencies` replaces the buffers of the model's
rotary module instead (a public seam), checks that the rotary module now produces the expected cos/sin
and returns a function that restores the originals.

* Llama-style models: one module, ``rotary_emb.inv_freq`` + ``rotary_emb.attention_scaling``.
* Gemma 3: ``rotary_emb.{layer_type}_inv_freq`` + ``{layer_type}_attention_scaling`` for
  ``sliding_attention`` (base 1e4) and ``full_attention`` (base 1e6).

Which layers change: only layers that see distances beyond the native window. Sliding-window layers
(Gemma 3: window 512, five of every six layers) never see a relative distance longer than their window,
which they were trained on, so every method here leaves them untouched and changes the global
``full_attention`` layers only, each layer type from its own base (:func:`changed_layer_types`).

Precision: inverse frequencies are computed in float64 and installed as float32 buffers whatever the
model dtype (``model.to(torch.bfloat16)`` casts them to bfloat16: the fastest pair's 1.0 survives, but
the next fast pairs' frequencies are rounded, which puts their angles off by radians at distances of a
few thousand tokens, ~11 rad for SmolLM2's second pair at 8k; :func:`longreach.models.place` keeps them
float32). The rotary forward multiplies positions by them in float32 and
only casts the final cos/sin to the hidden dtype: that rounding is a bounded relative error (2^-8 in
bfloat16) that does not grow with position, unlike bfloat16 angles (arXiv 2411.13476).

Dynamic methods (``dynamic-ntk``, ``dynamic-yarn``): transformers caches keys after rotation, so a base
that changes while the cache fills mixes rotations. Here the engine installs the method with the
request's total length (input + max new tokens), and the method fixes its
frequencies for the whole request from that length: prefill chunks and decode steps all use one
base, so cached decoding gives exactly what recomputation without a cache gives (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...errors import SpecError
from ...rotary import (  # noqa: F401  (re-exported: the rotary mechanism rope methods install through)
    ALL_TYPES,
    RopeInstallError,
    find_rotary,
    install_frequencies,
    rotary_cos,
    rotary_slots,
)
from ...spec import Method

DEFAULT_FACTOR = 4.0
SLIDING = "sliding_attention"



# ------------------------------------------------------------------------------------------ formulas
def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i = 0..dim/2-1, float64 (cast to float32 when installed)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def yarn_temperature(scale: float) -> float:
    """YaRN's attention factor on cos/sin, 0.1 ln s + 1 (1 for s <= 1); logits scale by its square."""
    return 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0


#: Largest scale a rope method takes (a 1024x longer context than trained is already far beyond what any
#: training-free method reads; larger factors only push angles past float32 resolution).
MAX_FACTOR = 1024.0


def check_factor_target(factor: float | None, target: int | None) -> None:
    """``__post_init__`` validation shared by every rope method (target is a bounded Length already)."""
    if factor is not None and target is not None:
        raise ValueError("give either factor or target, not both (factor = target / native window)")
    if factor is not None and not (math.isfinite(factor) and 1 <= factor <= MAX_FACTOR):
        raise ValueError(f"factor must be a number from 1 to {MAX_FACTOR:g}, got {factor:g}")
    if target is not None and target < 1:
        raise ValueError(f"target must be a positive length such as 32k, got {target}")


def changed_layer_types(info: Any) -> list[str]:
    """Layer types a position method changes: all but the sliding-window ones (see module docstring)."""
    types = sorted(set(info.layer_types))
    return [t for t in types if t != SLIDING] or types


#: rope types whose frequencies are fixed once the model is built; transformers recomputes ``dynamic``
#: and ``longrope`` (Phi-3 128k) frequencies from the sequence length inside the rotary forward
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def require_rope(info: Any, who: str, *, full_head: bool = True, static: bool = True) -> None:
    """Raise a one-line :class:`SpecError` unless position method ``who`` applies to the model's layers.

    Every position method needs RoPE (a model with learned absolute positions, GPT-2, has nothing to
    move past its window) and a global layer (a sliding window on every layer, Mistral v0.1, never sees
    a distance beyond it). ``full_head``: RoPE must rotate the whole head (re-rotation and frequency
    replacement assume ``head_dim / 2`` pairs; Phi-4-mini rotates 3/4). ``static``: frequencies fixed
    at load (keys cached at one rotation are re-rotated with the same frequencies later).
    """
    if not info.has_rope:
        raise SpecError(f"{who} needs rotary position embeddings (RoPE) but {info.name} ({info.arch}) has "
                        f"learned absolute positions that end at its {info.window:,}-token window; "
                        "use --method none, a cache method or infiniretri")
    if all(t == SLIDING for t in info.layer_types):
        raise SpecError(f"every layer of {info.name} attends within a {info.sliding_window}-token sliding "
                        f"window, so no layer sees a distance {who} could change; use --method none "
                        "or a cache method")
    for t in changed_layer_types(info):
        if "rope_theta" not in (info.rope.get(t) or {}):
            raise SpecError(f"{who}: {info.name} has no rope_theta for its {t} layers (no RoPE there); "
                            "use --method none, a cache method or infiniretri")
        if full_head and info.rotary_dim(t) != info.head_dim:
            raise SpecError(f"{who} needs RoPE over the whole head but {info.name} rotates "
                            f"{info.rotary_dim(t)} of its {info.head_dim} channels (partial_rotary_factor "
                            f"{info.rope[t].get('partial_rotary_factor')}); use a cache method or infiniretri")
        if static and info.rope_type(t) not in STATIC_ROPE_TYPES:
            raise SpecError(f"{who}: {info.name}'s rope_type={info.rope_type(t)!r} changes its frequencies "
                            "with the sequence length inside the model, so cached keys cannot be re-rotated "
                            "consistently; use a cache method or infiniretri")


# ------------------------------------------------------------------------------------------- methods
class RopeMethod(Method):
    """Base of the rope-slot methods. Subclasses are ``@register``-ed dataclasses with the fields
    ``factor`` and ``target`` (and their own), and implement :meth:`frequencies`."""

    slot: ClassVar[str] = "rope"
    extends: ClassVar[bool] = True
    dynamic: ClassVar[bool] = False  # frequencies depend on the request length (see install)

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        """(inv_freq (dim/2,) float64, attention factor) for ``layer_type`` and a request of ``tokens``."""
        raise NotImplementedError

    # -- scale and reach
    def native(self, info: Any) -> int:
        """The trained window the scale is relative to (YaRN may override it with ``original``)."""
        return info.window

    def scale(self, info: Any) -> float:
        """s = factor, or target / native window (at least 1), or DEFAULT_FACTOR when neither is given."""
        target = getattr(self, "target", None)
        if target is not None:
            return max(1.0, target / self.native(info))
        factor = getattr(self, "factor", None)
        return float(factor) if factor is not None else DEFAULT_FACTOR

    def reach(self, info: Any) -> int:
        target = getattr(self, "target", None)
        if target is not None:
            return max(int(target), info.window)
        return max(int(self.scale(info) * self.native(info)), info.window)

    def check(self, info: Any) -> None:
        """Plain, full-width RoPE only: the frequencies come from rope_theta, so on a model whose config
        already scales RoPE (Llama 3.1 ``llama3``, Qwen2.5 ``yarn``) they would silently replace that
        scaling instead of composing with it (docs/rope-methods.md, "Models that already scale RoPE")."""
        require_rope(info, self.name, static=False)
        for t in changed_layer_types(info):
            kind = info.rope_type(t)
            if kind != "default":
                raise SpecError(
                    f"{self.name} needs a model with plain RoPE but {info.name}'s {t} layers already use "
                    f"rope_type={kind!r} (their own scaling, {info.window:,}-token window), which it would "
                    "replace; use an attention method (self-extend, streaming, longheads), a cache method "
                    "or infiniretri, or load the model without rope scaling"
                )

    # -- installation (the request length fixes the frequencies of dynamic methods)
    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        """Replace the rotary frequencies for one request of ``tokens`` (input + max new tokens); without
        a length, dynamic methods size themselves for the full reach."""
        self.check(info)
        tokens = int(tokens) if tokens else self.reach(info)
        new = {t: self.frequencies(info, t, tokens) for t in changed_layer_types(info)}
        return install_frequencies(model, new)

    # -- export to other engines (``longreach export vllm``)
    #: why :meth:`vllm_rope_parameters` is None for this method (the rest of a one-line refusal)
    vllm_refusal: ClassVar[str] = "its frequencies have no form in transformers' rope_parameters, which vLLM reads"

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]] | None:
        """The transformers ``rope_parameters`` (what vLLM's ``--hf-overrides`` sets) that give exactly this
        method's frequencies and attention factor, per layer type it changes (:func:`changed_layer_types`),
        each a complete dict with its ``rope_theta``; None when no rope type expresses it. Default None."""
        return None
