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
model dtype (``model.to(torch.bfloat16)`` casts them to bfloat16, which puts the angle of the fastest
pair off by several radians at 8k). The rotary forward multiplies positions by them in float32 and
only casts the final cos/sin to the hidden dtype: that rounding is a bounded relative error (2^-8 in
bfloat16) that does not grow with position, unlike bfloat16 angles (arXiv 2411.13476).

Dynamic methods (``dynamic-ntk``, ``dynamic-yarn``): transformers caches keys after rotation, so a base
that changes while the cache fills mixes rotations. Here the reader calls :meth:`RopeMethod.prepare`
with the request's total length (input + max new tokens) before installing, and the method fixes its
frequencies for the whole request from that length: prefill chunks and decode steps all use one
base, so cached decoding gives exactly what recomputation without a cache gives (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...errors import LongreachError, SpecError
from ...spec import Method

DEFAULT_FACTOR = 4.0
SLIDING = "sliding_attention"
ALL_TYPES = "*"  # a rotary module with one inv_freq shared by every layer (Llama-style)


class RopeInstallError(LongreachError):
    """The rotary module did not take the new frequencies (an unsupported or unexpected model)."""


# ------------------------------------------------------------------------------------------ formulas
def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i = 0..dim/2-1, float64 (cast to float32 when installed)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def yarn_temperature(scale: float) -> float:
    """YaRN's attention factor on cos/sin, 0.1 ln s + 1 (1 for s <= 1); logits scale by its square."""
    return 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0


def check_factor_target(factor: float | None, target: int | None) -> None:
    """``__post_init__`` validation shared by every rope method."""
    if factor is not None and target is not None:
        raise ValueError("give either factor or target, not both (factor = target / native window)")
    if factor is not None and not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a number >= 1, got {factor}")
    if target is not None and target < 1:
        raise ValueError(f"target must be a positive length such as 32k, got {target}")


def changed_layer_types(info: Any) -> list[str]:
    """Layer types a position method changes: all but the sliding-window ones (see module docstring)."""
    types = sorted(set(info.layer_types))
    return [t for t in types if t != SLIDING] or types


# ------------------------------------------------------------------------------------------- methods
class RopeMethod(Method):
    """Base of the rope-slot methods. Subclasses are ``@register``-ed dataclasses with the fields
    ``factor`` and ``target`` (and their own), and implement :meth:`frequencies`."""

    slot: ClassVar[str] = "rope"
    extends: ClassVar[bool] = True
    dynamic: ClassVar[bool] = False  # frequencies depend on the request length (see prepare)

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
        for t in changed_layer_types(info):
            rope = info.rope.get(t) or {}
            kind = rope.get("rope_type", "default")
            if kind != "default":
                raise SpecError(
                    f"{self.name} needs a model with plain RoPE but {info.name}'s {t} layers already use "
                    f"rope_type={kind!r}; load the model without rope scaling or use --method none"
                )
            if "rope_theta" not in rope:
                raise SpecError(f"{self.name}: {info.name} has no rope_theta for its {t} layers "
                                "(not a RoPE model); use --method none")

    # -- request length (dynamic methods) and installation
    def prepare(self, info: Any, total_tokens: int) -> None:
        """Called by the reader before :meth:`install` with input + max new tokens of the request."""
        self.__dict__["_tokens"] = int(total_tokens)

    def install(self, model: Any, info: Any) -> Callable[[], None]:
        self.check(info)
        # a prepared length is used once; without one, dynamic methods size themselves for the full reach
        tokens = self.__dict__.pop("_tokens", None) or self.reach(info)
        new = {t: self.frequencies(info, t, tokens) for t in changed_layer_types(info)}
        return install_frequencies(model, new)


# -------------------------------------------------------------------------------------- installation
def rotary_slots(module: Any) -> dict[str, tuple[str, str]]:
    """Layer type -> (inv_freq buffer name, attention-scaling attribute) of a rotary module; {} if none."""
    buffers = dict(module.named_buffers(recurse=False))
    if "inv_freq" in buffers and hasattr(module, "attention_scaling"):
        return {ALL_TYPES: ("inv_freq", "attention_scaling")}
    slots = {}
    for name in buffers:
        if name.endswith("_inv_freq") and not name.endswith("original_inv_freq"):
            layer_type = name[: -len("_inv_freq")]
            if hasattr(module, f"{layer_type}_attention_scaling"):
                slots[layer_type] = (name, f"{layer_type}_attention_scaling")
    return slots


def find_rotary(model: Any) -> Any:
    """The model's one rotary-embedding module (``model.model.rotary_emb`` for Llama and Gemma 3)."""
    found = [m for m in model.modules() if rotary_slots(m)]
    if len(found) != 1:
        raise RopeInstallError(
            f"expected one rotary-embedding module in {type(model).__name__}, found {len(found)}; "
            "position methods support Llama-style and Gemma 3 models"
        )
    return found[0]


def rotary_cos(module: Any, layer_type: str, positions: torch.Tensor) -> torch.Tensor:
    """cos the rotary module produces (float32 probe) at ``positions`` (P,), shape (P, dim)."""
    buf = getattr(module, rotary_slots(module)[layer_type][0])
    x = torch.zeros(1, 1, dtype=torch.float32, device=buf.device)  # only dtype/device are read
    kwargs = {} if layer_type == ALL_TYPES else {"layer_type": layer_type}
    with torch.no_grad():
        cos, _sin = module(x, positions[None].to(buf.device), **kwargs)  # (1, P, dim)
    return cos[0].float()


def install_frequencies(model: Any, new: dict[str, tuple[torch.Tensor, float]]) -> Callable[[], None]:
    """Replace inv_freq + attention scaling of the layer types in ``new``; verify; return the undo.

    ``new`` maps a layer type to (inv_freq (dim/2,), attention factor). On a Llama-style model (one
    shared inv_freq) it must hold a single entry, applied to every layer.
    """
    module = find_rotary(model)
    slots = rotary_slots(module)
    if ALL_TYPES in slots:
        if len(new) != 1:
            raise RopeInstallError(f"this model has one rotary frequency set; got {len(new)} layer types")
        targets = {ALL_TYPES: next(iter(new.values()))}
    else:
        missing = sorted(set(new) - set(slots))
        if missing:
            raise RopeInstallError(f"the rotary module has no frequencies for layer types {missing}")
        targets = dict(new)

    saved = {t: (getattr(module, slots[t][0]), getattr(module, slots[t][1])) for t in targets}
    for t, (inv, factor) in targets.items():
        buf_name, scale_name = slots[t]
        old = saved[t][0]
        if inv.shape != old.shape:
            raise RopeInstallError(
                f"{t}: new inv_freq has shape {tuple(inv.shape)}, expected {tuple(old.shape)}")
        setattr(module, buf_name, inv.to(device=old.device, dtype=torch.float32).clone())
        setattr(module, scale_name, float(factor))

    def undo() -> None:
        for t, (buf, factor) in saved.items():
            setattr(module, slots[t][0], buf)
            setattr(module, slots[t][1], factor)

    try:
        _verify(module, targets)
    except RopeInstallError:
        undo()
        raise
    return undo


def _verify(module: Any, targets: dict[str, tuple[torch.Tensor, float]]) -> None:
    """The rotary module must now return cos(p * inv_freq) * factor (catches silent no-ops)."""
    positions = torch.tensor([0, 1, 7, 1000, 12345, 100_000])
    for t, (inv, factor) in targets.items():
        inv32 = inv.to(torch.float32)
        angles = positions[:, None].float() * inv32.to(positions.device)  # (P, dim/2), as transformers
        expected = torch.cat([angles, angles], dim=-1).cos() * float(factor)  # (P, dim)
        got = rotary_cos(module, t, positions).cpu()
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            raise RopeInstallError(
                f"the rotary module ignored the new frequencies for {t} layers (its rope_type may "
                "recompute them in forward); load the model with plain RoPE"
            )
