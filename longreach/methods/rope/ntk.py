"""NTK-aware scaling: raise the base so the slowest pair is interpolated and the fastest kept."""

from __future__ import annotations

from typing import Any

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq


def ntk_base(base: float, dim: int, scale: float) -> float:
    """b' = b * s^(d/(d-2)): the lowest frequency becomes exactly theta_min / s."""
    return base * scale ** (dim / (dim - 2))


@register
class NTKAware(RopeMethod):
    """NTK-aware scaled RoPE (bloc97, 2023; analysed in YaRN, https://arxiv.org/abs/2309.00071).

    Changes the rope base to b * s^(d/(d-2)): high-frequency pairs (local order) are almost unchanged,
    the lowest-frequency pair is interpolated by s. Training-free, usually better than PI.

    Parameters:
      factor: scale s >= 1 (default 4 when target is not given).
      target: length to read instead of factor; s = target / native window.
    """

    name = "ntk"
    paper = "NTK-aware scaled RoPE (bloc97, 2023), see YaRN https://arxiv.org/abs/2309.00071"
    summary = "NTK-aware base change b * s^(d/(d-2)): keeps local order, interpolates the slowest pairs"
    reuses_prefix = True  # static frequencies: a token's cached key depends only on its position

    factor: float | None = None
    target: Length | None = None

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        base = ntk_base(info.rope_theta(layer_type), info.head_dim, self.scale(info))
        return default_inv_freq(base, info.head_dim), 1.0

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]]:
        """A base change only: the ``default`` rope type with rope_theta = b * s^(d/(d-2))."""
        s = self.scale(info)
        return {t: {"rope_type": "default", "rope_theta": ntk_base(info.rope_theta(t), info.head_dim, s)}
                for t in changed_layer_types(info)}
