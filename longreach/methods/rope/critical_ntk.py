"""Critical-dimension NTK: the base from the RoPE extrapolation scaling law (as used by LongLLaDA)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq


def critical_dim(dim: int, base: float, window: int) -> int:
    """d_c = 2 * ceil((d/2) * log_b(L / (2 pi))): pairs below it complete a full turn within the window."""
    return 2 * math.ceil(dim / 2 * math.log(window / (2 * math.pi)) / math.log(base))


def critical_base(dim: int, base: float, window: int, target: int) -> float:
    """b' = (T / (2 pi))^(d / d_c): the critical pair's period becomes T. Never below the original base."""
    d_c = critical_dim(dim, base, window)
    return max(base, (target / (2 * math.pi)) ** (dim / d_c))


@register
class CriticalNTK(RopeMethod):
    """Critical-dimension NTK (Liu et al., "Scaling Laws of RoPE-based Extrapolation",
    https://arxiv.org/abs/2310.05209; the training-free rule the LongLLaDA paper uses).

    Only the pairs below the critical dimension d_c saw a full period in training. The base is raised so
    that the critical pair's period covers the target length: b' = (T / 2pi)^(d / d_c).

    Parameters:
      target: length to read (default 4 x native window when factor is not given).
      factor: target as a multiple of the native window instead.
    """

    name = "critical-ntk"
    paper = "Scaling Laws of RoPE-based Extrapolation, https://arxiv.org/abs/2310.05209 (LongLLaDA)"
    summary = "base (T/2pi)^(d/d_c) from the critical dimension, so the critical pair spans the target"
    reuses_prefix = True  # static frequencies: a token's cached key depends only on its position

    target: Length | None = None
    factor: float | None = None

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        target = self.scale(info) * info.window
        base = critical_base(info.head_dim, info.rope_theta(layer_type), info.window, round(target))
        return default_inv_freq(base, info.head_dim), 1.0

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]]:
        """A base change only: the ``default`` rope type with rope_theta = (T / 2pi)^(d / d_c)."""
        target = round(self.scale(info) * info.window)
        return {t: {"rope_type": "default",
                    "rope_theta": critical_base(info.head_dim, info.rope_theta(t), info.window, target)}
                for t in changed_layer_types(info)}
