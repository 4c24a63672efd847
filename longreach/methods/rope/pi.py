"""Position Interpolation: squeeze positions into the trained range, p -> p / s."""

from __future__ import annotations

from typing import Any

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq


def pi_inv_freq(base: float, dim: int, scale: float) -> torch.Tensor:
    """inv_freq / s: every pair turns s times slower, so position s*p looks like trained position p."""
    return default_inv_freq(base, dim) / scale


@register
class PositionInterpolation(RopeMethod):
    """Position Interpolation (Chen et al. 2023, https://arxiv.org/abs/2306.15595).

    Divides every inverse frequency by ``s`` (same as dividing positions by ``s``). Without fine-tuning
    it blurs nearby positions (high-frequency pairs lose resolution), so it mostly serves as the
    baseline the other methods improve on. Same as transformers' ``linear`` rope type.

    Parameters:
      factor: scale s >= 1 (default 4 when target is not given).
      target: length to read instead of factor; s = target / native window.
    """

    name = "pi"
    paper = "Extending Context Window of LLMs via Positional Interpolation, https://arxiv.org/abs/2306.15595"
    summary = "position interpolation: positions divided by factor (blurs nearby tokens without fine-tuning)"
    reuses_prefix = True  # static frequencies: a token's cached key depends only on its position

    factor: float | None = None
    target: Length | None = None

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        return pi_inv_freq(info.rope_theta(layer_type), info.head_dim, self.scale(info)), 1.0

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]]:
        """transformers' ``linear`` rope type: every inverse frequency divided by s."""
        return {t: {"rope_type": "linear", "factor": self.scale(info), "rope_theta": info.rope_theta(t)}
                for t in changed_layer_types(info)}
