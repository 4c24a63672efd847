"""The model's rotary-embedding module: finding it, reading its frequencies, replacing them and undoing it.

A rope method changes two things per layer type: the inverse frequencies ``inv_freq`` (angle of pair i at
position p is ``p * inv_freq[i]``) and an attention factor that multiplies cos and sin. transformers
computes both when the model is built, so changing the config of a loaded model does nothing:
:func:`install_frequencies` replaces the buffers of the model's rotary module instead (a public seam),
checks that the module now produces the expected cos/sin and returns a function that restores the
originals.

* Llama-style models: one module, ``rotary_emb.inv_freq`` + ``rotary_emb.attention_scaling``.
* Gemma 3: ``rotary_emb.{layer_type}_inv_freq`` + ``{layer_type}_attention_scaling`` for
  ``sliding_attention`` and ``full_attention``.

This is a mechanism below the methods: rope methods (:mod:`longreach.methods.rope`), attention methods that
re-rotate keys and KVQuant's rotation table (:mod:`longreach.kv.rotary`) all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import LongreachError

ALL_TYPES = "*"  # a rotary module with one inv_freq shared by every layer (Llama-style)


class RopeInstallError(LongreachError):
    """The rotary module did not take the new frequencies (an unsupported or unexpected model)."""


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
    """The model's one rotary-embedding module (``model.model.rotary_emb``: Llama, Gemma 3, Qwen2/3,
    Mistral, Phi-3 and every model that shares transformers' rotary layout)."""
    found = [m for m in model.modules() if rotary_slots(m)]
    if len(found) != 1:
        raise RopeInstallError(
            f"expected one rotary-embedding module in {type(model).__name__}, found {len(found)}; "
            "position methods need one shared rotary module with inv_freq buffers (transformers' layout)"
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
