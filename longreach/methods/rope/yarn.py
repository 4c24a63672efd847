"""YaRN: NTK-by-parts interpolation (a per-pair ramp) plus an attention temperature."""

from __future__ import annotations

import math
from typing import Any

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq, yarn_temperature


def yarn_correction_dim(rotations: float, dim: int, base: float, window: int) -> float:
    """Pair index whose wavelength fits ``rotations`` turns in ``window``: d*ln(L/(2*pi*r)) / (2 ln b)."""
    return dim * math.log(window / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp_bounds(dim: int, base: float, window: int, beta_fast: float,
                     beta_slow: float) -> tuple[int, int]:
    """(low, high) pair indices: below low extrapolate, from high on interpolate (clamped to [0, d-1])."""
    low = math.floor(yarn_correction_dim(beta_fast, dim, base, window))
    high = math.ceil(yarn_correction_dim(beta_slow, dim, base, window))
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(base: float, dim: int, scale: float, window: int, beta_fast: float = 32,
                  beta_slow: float = 1) -> torch.Tensor:
    """Blend extrapolated (theta_i) and interpolated (theta_i / s) frequencies by the linear ramp."""
    extrap = default_inv_freq(base, dim)  # (dim/2,)
    low, high = yarn_ramp_bounds(dim, base, window, beta_fast, beta_slow)
    i = torch.arange(dim // 2, dtype=torch.float64)
    ramp = ((i - low) / max(high - low, 1e-3)).clamp(0, 1)  # 0 below low, 1 from high on
    keep = 1 - ramp  # weight of extrapolation
    return extrap / scale * (1 - keep) + extrap * keep


#: Range of the ramp bounds, in rotations within the window (defaults 32 and 1).
BETA_RANGE = (1e-3, 1e4)


def check_betas(beta_fast: float, beta_slow: float) -> None:
    lo, hi = BETA_RANGE
    if not (lo <= beta_slow < beta_fast <= hi):
        raise ValueError(f"need {lo:g} <= beta_slow < beta_fast <= {hi:g} (rotations), got beta_fast={beta_fast:g}, "
                         f"beta_slow={beta_slow:g}")


@register
class YaRN(RopeMethod):
    """YaRN (Peng et al., ICLR 2024, https://arxiv.org/abs/2309.00071).

    NTK-by-parts: pairs that turn more than beta_fast times within the original window keep their
    frequency, pairs that turn less than beta_slow times are interpolated by s, a linear ramp between.
    cos and sin are multiplied by 0.1 ln s + 1 (attention temperature, logits by its square).
    Same frequencies as transformers' ``yarn`` rope type.

    Parameters:
      factor: scale s >= 1 (default 4 when target is not given).
      target: length to read instead of factor; s = target / original window.
      beta_fast: rotations above which a pair is extrapolated (32).
      beta_slow: rotations below which a pair is interpolated (1).
      original: the window the ramp and s are measured against (default: the model's native window).
    """

    name = "yarn"
    paper = "YaRN: Efficient Context Window Extension of LLMs, https://arxiv.org/abs/2309.00071"
    summary = "NTK-by-parts ramp (extrapolate fast pairs, interpolate slow ones) + attention temperature"
    reuses_prefix = True  # static frequencies: a token's cached key depends only on its position

    factor: float | None = None
    target: Length | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original: Length | None = None

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)
        check_betas(self.beta_fast, self.beta_slow)

    def native(self, info: Any) -> int:
        return self.original or info.window

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        s = self.scale(info)
        inv = yarn_inv_freq(info.rope_theta(layer_type), info.head_dim, s, self.native(info),
                            self.beta_fast, self.beta_slow)
        return inv, yarn_temperature(s)

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]]:
        """transformers' ``yarn`` rope type with this method's s, window, betas and attention factor."""
        s = self.scale(info)
        return {t: {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": self.native(info),
                    "beta_fast": self.beta_fast, "beta_slow": self.beta_slow,
                    "attention_factor": yarn_temperature(s), "rope_theta": info.rope_theta(t)}
                for t in changed_layer_types(info)}
