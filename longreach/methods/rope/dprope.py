"""DPRoPE: per pair, interpolate or extrapolate, whichever keeps the rotary-angle distribution closer."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ...spec import Length, register
from .base import RopeMethod, changed_layer_types, check_factor_target, default_inv_freq

BINS = 360
EPS = 1e-10


#: Positions per step of :func:`angle_histograms`: its memory is a few (8, 2^17) tensors (~50 MB) whatever
#: the target length, so a 16M-token target costs time (seconds), never gigabytes outside the memory check.
POSITION_BLOCK = 1 << 17


def angle_histograms(inv_freq: torch.Tensor, positions: int, bins: int = BINS) -> torch.Tensor:
    """Distribution of p * theta_i mod 2pi over p = 0..positions-1 in ``bins`` bins; (dim/2, bins) float64."""
    inv = inv_freq.double()
    counts = torch.zeros(len(inv) * bins, dtype=torch.int64)  # (dim/2 * bins,)
    for start in range(0, positions, POSITION_BLOCK):  # a block of positions at a time: bounded memory
        p = torch.arange(start, min(start + POSITION_BLOCK, positions), dtype=torch.float64)  # (P,)
        for lo in range(0, len(inv), 8):  # 8 pairs at a time: (8, P) memory only
            angle = torch.remainder(inv[lo:lo + 8, None] * p, 2 * math.pi)  # (8, P)
            idx = (angle * (bins / (2 * math.pi))).long().clamp_(0, bins - 1)
            idx += (torch.arange(idx.shape[0])[:, None] + lo) * bins  # one bincount for all rows
            counts += torch.bincount(idx.flatten(), minlength=len(inv) * bins)
    return counts.view(-1, bins).double() / positions


def kl_divergence(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per row, bins where p is empty cost log(q/EPS) (angles the model never saw)."""
    return (q * ((q + EPS) / (p + EPS)).log()).sum(-1)


@functools.lru_cache(maxsize=32)
def dprope_inv_freq(base: float, dim: int, window: int, target: int,
                    tolerance: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(inv_freq, interpolated mask): pair i is divided by s = T/L iff that disturbs its angle
    distribution (KL from the trained one) less than extrapolating does, by more than ``tolerance``
    nats; near-ties extrapolate."""
    inv = default_inv_freq(base, dim)  # (dim/2,)
    scale = max(1.0, target / window)
    if scale == 1.0:
        return inv, torch.zeros(len(inv), dtype=torch.bool)
    trained = angle_histograms(inv, window)  # (dim/2, bins)
    kl_extra = kl_divergence(angle_histograms(inv, target), trained)
    kl_inter = kl_divergence(angle_histograms(inv / scale, target), trained)
    interpolate = kl_extra - kl_inter > tolerance
    return torch.where(interpolate, inv / scale, inv), interpolate


@register
class DPRoPE(RopeMethod):
    """DPRoPE (Wu et al., EMNLP 2024, "Extending Context Window of LLMs from a Distributional
    Perspective", https://arxiv.org/abs/2410.01490).

    For each rotary pair, compare the histogram (360 bins over [0, 2pi)) of its angles over the trained
    positions with the histograms over the target length under extrapolation (theta_i unchanged) and
    interpolation (theta_i / s); keep the strategy with the smaller KL divergence. Fast pairs already
    cover the circle in training and are extrapolated; slow pairs would reach unseen angles and are
    interpolated.

    Integer positions alias with the 360 bins, so fast pairs get KL values that differ by noise
    (~1e-3 nats) and a strict comparison would interpolate some of them at random; a pair is therefore
    interpolated only when interpolation wins by more than ``tolerance`` nats. With 0.01 the switch
    lands at the critical dimension (pair 46 of 64 for Llama-2 at 4k->16k, pair 19-20 of 32 for
    SmolLM2, pair 80 of 128 for Gemma 3's global layers), in line with the RoPE scaling law.

    Parameters:
      target: length to read (default 4 x native window when factor is not given).
      factor: target as a multiple of the native window instead.
      tolerance: KL margin (nats) interpolation must win by (0.01); 0 = the strict comparison.
    """

    name = "dprope"
    paper = ("Extending Context Window of LLMs from a Distributional Perspective, "
             "https://arxiv.org/abs/2410.01490")
    summary = "per pair: interpolate or extrapolate, whichever keeps the rotary-angle distribution closer"
    reuses_prefix = True  # static frequencies (from target / factor, not the request length)

    target: Length | None = None
    factor: float | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        check_factor_target(self.factor, self.target)
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 nats, got {self.tolerance}")

    def frequencies(self, info: Any, layer_type: str, tokens: int) -> tuple[torch.Tensor, float]:
        target = round(self.scale(info) * info.window)
        inv, _ = dprope_inv_freq(info.rope_theta(layer_type), info.head_dim, info.window, target,
                                 self.tolerance)
        return inv.clone(), 1.0  # the result is cached: hand out a copy

    vllm_refusal = ("it interpolates some rotary pairs and extrapolates others, a per-pair choice vLLM's "
                    "rope_parameters cannot hold (yarn and ntk export)")

    def vllm_rope_parameters(self, info: Any) -> dict[str, dict[str, Any]] | None:
        """Only when the per-pair choice is uniform: every pair extrapolated (the plain model, ``default``)
        or every pair interpolated (``linear`` with s); else None."""
        target = round(self.scale(info) * info.window)
        out = {}
        for t in changed_layer_types(info):
            _, interpolate = dprope_inv_freq(info.rope_theta(t), info.head_dim, info.window, target, self.tolerance)
            if bool(interpolate.all()):
                out[t] = {"rope_type": "linear", "factor": max(1.0, target / info.window),
                          "rope_theta": info.rope_theta(t)}
            elif not bool(interpolate.any()):
                out[t] = {"rope_type": "default", "rope_theta": info.rope_theta(t)}
            else:
                return None
        return out
