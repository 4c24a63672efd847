"""Dynamic NTK: the NTK base grows with the length actually read (fixed once per request here)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq


def dynamic_ntk_base(base: float, dim: int, factor: float, length: int, window: int) -> float:
    """b' = b * (s*l/L - (s-1))^(d/(d-2)) for l > L, else b (transformers' ``dynamic`` rope type).

    Note s is not the extension ratio: at l = s*L the base term is s^2 - s + 1 (57 for 2k -> 16k, s=8).
    """
    if length <= window:
        return base
    return base * (factor * length / window - (factor - 1)) ** (dim / (dim - 2))


@register
class DynamicNTK(RopeMethod):
    """Dynamic NTK scaling (emozilla, 2023; see YaRN https://arxiv.org/abs/2309.00071 section 3.3).

    The NTK base is computed from the request's length l (input + max new tokens): unchanged within the
    native window L, b * (s*l/L - (s-1))^(d/(d-2)) beyond it. transformers recomputes it at every forward
    while keys already in the cache keep their old rotation; here it is fixed once per request (the
    engine installs it with the total length), so the cache never mixes bases and short inputs keep
    the original model exactly.

    Parameters:
      factor: the dynamic coefficient s >= 1 (default 4 when target is not given); reach = s * window.
      target: length to read instead of factor; s = target / native window.
    """

    name = "dynamic-ntk"
    paper = "Dynamically scaled RoPE (emozilla, 2023), see YaRN https://arxiv.org/abs/2309.00071"
    summary = "NTK base from the request length (original model within the window); cache-consistent"
    dynamic: ClassVar[bool] = True

    factor: float | None = None
    target: Length | None = None

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        base = dynamic_ntk_base(info.rope_theta(layer_type), info.head_dim, self.scale(info), tokens,
                                info.window)
        return default_inv_freq(base, info.head_dim), 1.0

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]]:
        """transformers' ``dynamic`` rope type (same formula, with max_position_embeddings = the native
        window as L). vLLM reads the same parameters but fixes the base for the full reach s * L at every
        length (vLLM issue 3488), so short inputs do not get the original model there."""
        return {t: {"rope_type": "dynamic", "factor": self.scale(info), "rope_theta": info.rope_theta(t)}
                for t in changed_layer_types(info)}
