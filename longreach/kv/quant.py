"""Bit packing and asymmetric uniform quantization (KIVI / KVQuant building blocks).

Quantization of ``x`` along an axis (min/max taken along that axis)::

    scale = (max - min) / (2**bits - 1)        stored in float16
    q     = clamp(round((x - min) / scale), 0, 2**bits - 1)
    x_hat = q * scale + min                    |x - x_hat| <= scale / 2

(min is rounded down and scale up to float16, so the stored range still covers the data.)

Packing puts ``8 // bits`` codes in one byte along the last dimension (the head dimension), so a
4-bit tensor of shape (B, H, T, D) is stored as uint8 (B, H, T, D / 2): memory really shrinks.

Non-uniform datatype (KVQuant's nuq): the same min/max range, but the ``2**bits`` levels are a sorted
codebook ``c`` in [0, 1] fitted by (weighted) k-means on normalised calibration values::

    span  = max - min                          stored in float16 (rounded up), min rounded down
    q     = index of the level nearest to (x - min) / span
    x_hat = c[q] * span + min

The uniform grid ``c = linspace(0, 1, 2**bits)`` gives back the uniform quantizer (up to the rounding
of span vs scale); the k-means fit (:func:`fit_codebook`) never has a larger weighted squared error on
its data.
"""

from __future__ import annotations

import torch

BITS = (2, 4, 8)
PARAM_DTYPE = torch.float16  # scales and minima


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., D) with values < 2**bits -> uint8 (..., D * bits / 8)."""
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    *lead, d = codes.shape
    if d % per:
        raise ValueError(f"last dimension {d} is not a multiple of {per} (needed to pack {bits}-bit codes)")
    c = codes.to(torch.uint8).reshape(*lead, d // per, per)  # (..., D/per, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)  # (per,)
    return (c << shifts).sum(dim=-1, dtype=torch.uint8)  # disjoint bit fields: sum == bitwise or


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 (..., D * bits / 8) -> uint8 codes (..., D)."""
    if bits == 8:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)  # (per,)
    mask = (1 << bits) - 1
    codes = (packed.unsqueeze(-1) >> shifts) & mask  # (..., D/per, per)
    return codes.flatten(-2)


def quantize(x: torch.Tensor, bits: int, dim: int, keep: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` with min/max taken along ``dim``; return (codes uint8, scale, minimum).

    ``keep`` (bool, like ``x``) marks entries excluded from the min/max (outliers stored apart); they are
    clamped into the range. ``scale`` and ``minimum`` are float16 with size 1 along ``dim``.
    """
    xf = x.float()
    lo, hi = _bounds(xf, dim, keep)
    levels = (1 << bits) - 1
    minimum = _round(lo, down=True)  # float16 minimum <= true minimum: no clamping at the bottom
    scale = _round((hi - minimum.float()) / levels, down=False)  # float16 scale large enough for the top
    step = scale.float().clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.round((xf - minimum.float()) / step).clamp_(0, levels).to(torch.uint8)
    return codes, scale, minimum


def _bounds(xf: torch.Tensor, dim: int, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of float32 ``xf`` along ``dim`` (keepdim), ignoring the ``keep`` entries."""
    if keep is None:
        return xf.amin(dim=dim, keepdim=True), xf.amax(dim=dim, keepdim=True)
    lo = torch.where(keep, torch.inf, xf).amin(dim=dim, keepdim=True)
    hi = torch.where(keep, -torch.inf, xf).amax(dim=dim, keepdim=True)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # all-outlier slices: -inf/inf -> swapped
    return torch.nan_to_num(lo, posinf=0.0, neginf=0.0), torch.nan_to_num(hi, posinf=0.0, neginf=0.0)


def _round(x: torch.Tensor, down: bool) -> torch.Tensor:
    """float32 -> float16 rounded towards -inf (``down``) or +inf, so the stored range covers the data."""
    h = x.to(PARAM_DTYPE)
    off = h.float() > x if down else h.float() < x
    toward = torch.full_like(h, -torch.inf if down else torch.inf)
    return torch.where(off, torch.nextafter(h, toward), h)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, dtype: torch.dtype
               ) -> torch.Tensor:
    """``codes * scale + minimum`` in ``dtype`` (broadcast along the quantized axis)."""
    return (codes.float() * scale.float() + minimum.float()).to(dtype)


def outlier_mask(x: torch.Tensor, fraction: float) -> torch.Tensor | None:
    """Bool mask of the ``fraction`` largest-magnitude entries of each (B, H) slice of ``x`` (B, H, T, D).

    Dense-and-sparse decomposition (KVQuant): these entries are kept exactly, the rest is quantized
    over a range that no longer has to stretch to reach them.
    """
    if fraction <= 0:
        return None
    b, h, t, d = x.shape
    k = int(round(fraction * t * d))
    if k == 0:
        return None
    flat = x.float().abs().reshape(b, h, t * d)  # (B, H, T*D)
    idx = flat.topk(k, dim=-1).indices  # (B, H, k)
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(b, h, t, d)


# ------------------------------------------------------------------------------ non-uniform (nuq)
def normalise(x: torch.Tensor, dim: int, keep: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u in [0, 1] float32, span, minimum): ``x`` min-max normalised along ``dim`` with the float16 range
    :func:`quantize_nuq` stores (``keep`` entries excluded from the range, clamped into it)."""
    xf = x.float()
    lo, hi = _bounds(xf, dim, keep)
    minimum = _round(lo, down=True)
    span = _round(hi - minimum.float(), down=False)
    u = (xf - minimum.float()) / span.float().clamp_min(torch.finfo(torch.float32).tiny)
    return u.clamp_(0.0, 1.0), span, minimum


def quantize_nuq(x: torch.Tensor, codebook: torch.Tensor, dim: int, keep: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-uniform quantization with a sorted ``codebook`` (L,) in [0, 1]: (codes uint8, span, minimum)."""
    u, span, minimum = normalise(x, dim, keep)
    cb = codebook.to(device=u.device, dtype=torch.float32)
    codes = torch.bucketize(u, (cb[1:] + cb[:-1]) / 2)  # nearest level: midpoints between sorted levels
    return codes.to(torch.uint8), span, minimum


def dequantize_nuq(codes: torch.Tensor, codebook: torch.Tensor, span: torch.Tensor, minimum: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """``codebook[codes] * span + minimum`` in ``dtype``."""
    cb = codebook.to(device=codes.device, dtype=torch.float32)
    return (cb[codes.long()] * span.float() + minimum.float()).to(dtype)


def fit_codebook(u: torch.Tensor, bits: int, weight: torch.Tensor | None = None, iters: int = 100
                 ) -> torch.Tensor:
    """Weighted 1-D k-means (Lloyd) of the values ``u`` in [0, 1]: sorted float32 levels (2**bits,).

    Two starts, the better fit kept: the uniform grid (so the weighted squared error on ``u`` is never
    above the uniform quantizer's) and the weighted quantiles (which follow the sensitivity when Fisher
    weights concentrate on part of the range; Lloyd from the grid can stall there). A level that
    attracts no weight stays where it was.
    """
    x = u.detach().flatten().double()
    w = torch.ones_like(x) if weight is None else weight.detach().flatten().double().clamp_min(0)
    if w.sum() <= 0:
        w = torch.ones_like(x)
    n = 1 << bits
    grid = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=x.device)
    order = x.argsort()
    cdf = w[order].cumsum(0) / w.sum()  # (N,) weighted CDF of the sorted values
    at = torch.searchsorted(cdf, (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n)
    quantiles = x[order][at.clamp_max(x.numel() - 1)]
    fits = [_lloyd(x, w, start, iters) for start in (grid, quantiles)]
    best = min(fits, key=lambda f: f[1])[0]
    return best.clamp(0.0, 1.0).float()


def _lloyd(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, iters: int) -> tuple[torch.Tensor, float]:
    """Lloyd iterations from levels ``c`` (sorted); returns (levels, weighted squared error)."""
    for _ in range(iters):
        idx = torch.bucketize(x, (c[1:] + c[:-1]) / 2)  # (N,) nearest level
        mass = torch.zeros_like(c).index_add_(0, idx, w)
        total = torch.zeros_like(c).index_add_(0, idx, w * x)
        new = torch.where(mass > 0, total / mass.clamp_min(1e-300), c).sort().values
        if torch.equal(new, c):
            break
        c = new
    idx = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
    return c, float((w * (x - c[idx]) ** 2).sum())
