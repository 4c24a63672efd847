"""Dynamic YaRN: YaRN with s = max(1, l / L) from the request length (fixed once per request)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...spec import Length, register
from .base import RopeMethod, check_factor_target, yarn_temperature
from .yarn import check_betas, yarn_inv_freq


def dynamic_yarn_scale(length: int, window: int) -> float:
    """s = max(1, l / L): no change within the window, exactly enough interpolation beyond it."""
    return max(1.0, length / window)


@register
class DynamicYaRN(RopeMethod):
    """Dynamic YaRN (Peng et al., ICLR 2024, https://arxiv.org/abs/2309.00071, section 3.3).

    YaRN whose scale is the request's own ratio s = max(1, l / L), l = input + max new tokens: the
    original model within the window, just enough interpolation beyond it. Fixed once per request (the
    engine installs it with the total length), so keys in the cache never mix rotations.

    Parameters:
      factor: how far it may read, reach = factor * original window (default 4 when target is not given).
      target: the reach as a length instead of factor.
      beta_fast, beta_slow: ramp bounds in rotations (32, 1), as in yarn.
      original: the window s is measured against (default: the model's native window).
    """

    name = "dynamic-yarn"
    paper = "YaRN: Efficient Context Window Extension of LLMs, https://arxiv.org/abs/2309.00071"
    summary = "YaRN with s = request length / window (original model within the window); cache-consistent"
    dynamic: ClassVar[bool] = True

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
        s = dynamic_yarn_scale(tokens, self.native(info))
        inv = yarn_inv_freq(info.rope_theta(layer_type), info.head_dim, s, self.native(info),
                            self.beta_fast, self.beta_slow)
        return inv, yarn_temperature(s)

    vllm_refusal = ("its YaRN scale follows each request's length and vLLM's yarn is static "
                    "(yarn:factor=S exports)")
