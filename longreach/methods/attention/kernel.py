"""Blockwise two-part attention: a causal local window plus an optional "far" part, merged before one
softmax by log-sum-exp. Memory grows linearly with length: no (queries x keys) matrix is ever built,
only (block_q x block_k) tiles.

The two parts, for a query at position m and a key at position n (positions are document positions;
the keys in the cache are rotated at their own position, as transformers stores them):

* near: keys with ``0 <= m - n < window``, scored as stored (true relative distance);
* far:  keys with ``m - n >= window`` among the first ``far.k`` keys, scored with re-rotated copies
  ``far.q`` / ``far.k`` (SelfExtend: grouped positions; StreamingLLM: the sinks seen from the cache
  position). Re-rotation uses RoPE(x, p') = R(p' - p) RoPE(x, p), angles in float32.

Partial results (O_i, lse_i) over disjoint key sets merge exactly::

    lse = logaddexp(lse_1, lse_2),  w = sigmoid(lse_1 - lse_2),  O = w O_1 + (1 - w) O_2

Scores, softmax and merges are float32 whatever the model dtype (the fused CPU kernel accumulates in
float32 too); the output is cast back to the model dtype. Re-rotation angles and cos/sin are float32.
"""

from __future__ import annotations

import bisect
import dataclasses

import torch

BLOCK_Q = 1024
BLOCK_K = 1024


# --------------------------------------------------------------------------------------------- RoPE
def rotate_by(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, D) by per-position angles given as cos/sin (T, D/2) float32 -> float32.

    transformers' half-split layout: pairs (i, i + D/2), i.e. x * cat(cos, cos) + rotate_half(x) * cat(sin, sin).
    """
    d = x.shape[-1]
    if cos.shape[-1] * 2 != d:
        raise ValueError(f"rotary dim {cos.shape[-1] * 2} != head dim {d}: partial RoPE is not supported")
    xf = x.float()
    half = d // 2
    swapped = torch.cat((xf[..., half:], xf[..., :half]), dim=-1)  # rotate_half without the sign
    return xf * torch.cat((cos, cos), dim=-1) + swapped * torch.cat((-sin, sin), dim=-1)  # contiguous ops


def rerotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate already-rotated vectors by ``delta`` more positions: x (..., T, D), delta (T,) -> float32."""
    angle = delta.to(torch.float32)[:, None] * inv_freq.to(device=x.device, dtype=torch.float32)[None]  # (T, D/2)
    return rotate_by(x, angle.cos(), angle.sin())


class RotationTable:
    """cos/sin of integer offsets 0..n-1 for one inverse-frequency vector, grown on demand (float32).

    Re-rotation offsets repeat across layers and decode steps (SelfExtend's n // G - n does not change
    once a key is cached), so the transcendental functions are computed once per offset instead of
    once per layer and step. The table follows the live frequencies: a different ``inv_freq`` (a rope
    method installed or removed) rebuilds it. Values equal :func:`rerotate`'s exactly.
    """

    def __init__(self) -> None:
        self._inv: torch.Tensor | None = None
        self._cos = self._sin = torch.empty(0, 0)

    def rerotate(self, x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        inv = inv_freq.to(device=x.device, dtype=torch.float32)
        need = int(delta.abs().max()) + 1 if delta.numel() else 1
        if self._inv is None or self._inv.shape != inv.shape or not torch.equal(self._inv, inv):
            self._inv, self._cos = inv.clone(), torch.empty(0, inv.numel(), device=x.device)
        if self._cos.shape[0] < need:
            n = max(need, 2 * self._cos.shape[0], 1024)
            angle = torch.arange(n, dtype=torch.float32, device=x.device)[:, None] * inv[None]  # (n, D/2)
            self._cos, self._sin = angle.cos(), angle.sin()
        idx = delta.abs()
        sign = torch.where(delta < 0, -1.0, 1.0).to(torch.float32)[:, None]  # sin(-a) = -sin(a)
        return rotate_by(x, self._cos[idx], self._sin[idx] * sign)


# ------------------------------------------------------------------------------------- LSE algebra
def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float, softcap: float | None = None, fused: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q over one key tile, returned as (output, log-sum-exp) for merging.

    q (B, Hkv, g, Tq, D), k and v (B, Hkv, Tk, D), mask (Tq, Tk) bool (True = attend) or None.
    Returns out (B, Hkv, g, Tq, D) float32 and lse (B, Hkv, g, Tq, 1) float32 (-inf for rows that
    attend to nothing, whose output is 0). ``fused``: use torch's CPU flash kernel when it applies
    (:func:`uses_cpu_flash`: same maths, ~2-3x faster); otherwise, and always off the CPU, the plain
    path below (public torch ops only, checked against the fused kernel in the tests).
    """
    if fused and uses_cpu_flash(q, k, v, softcap):
        try:
            return _flash_tile(q, k, v, mask, scaling)
        except RuntimeError:  # an unsupported dtype / shape for the fused kernel: plain path
            pass
    b, hkv, g, tq, d = q.shape
    scores = q.float().reshape(b, hkv, g * tq, d) @ k.float().transpose(-1, -2)  # (B, Hkv, g*Tq, Tk)
    scores = scores.view(b, hkv, g, tq, -1).mul_(scaling)  # (B, Hkv, g, Tq, Tk), in place from here on
    if softcap:
        scores = torch.tanh(scores.div_(softcap)).mul_(softcap)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)  # (B, Hkv, g, Tq, 1)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    p = scores.sub_(peak).exp_()
    total = p.sum(dim=-1, keepdim=True)  # (B, Hkv, g, Tq, 1)
    out = (p.view(b, hkv, g * tq, -1) @ v.float()).view(b, hkv, g, tq, d)
    out.div_(total.clamp_min(torch.finfo(torch.float32).tiny))
    return out, peak + torch.log(total)  # log(0) = -inf for empty rows


# torch's fused CPU flash-attention kernel returns the log-sum-exp the merge needs (an aten op of
# torch >= 2.1; looked up, not required: without it the plain path runs). It is private and CPU-only,
# so it is used only for CPU tensors. The public APIs do not fit: F.scaled_dot_product_attention
# returns no lse, and flex_attention's lse (return_aux=AuxRequest(lse=True)) needs torch.compile to
# avoid materialising the scores. On a GPU the plain path runs (tile-sized scores, float32).
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def uses_cpu_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float | None = None) -> bool:
    """True when :func:`partial_attention` may take torch's private CPU flash kernel for these tensors:
    the op exists, every tensor is on the CPU, one dtype, no logit soft-capping."""
    return (_FLASH is not None and not softcap and q.dtype == k.dtype == v.dtype
            and q.device.type == k.device.type == v.device.type == "cpu")


def _flash_tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, hkv, g, tq, d = q.shape
    qf = q.reshape(b, hkv, g * tq, d)  # the g query heads of a kv head share its keys: no K/V copies
    bias = None
    if mask is not None:  # additive float mask in the query dtype, rows repeated for the g heads
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias.repeat(g, 1)  # (g*Tq, Tk)
    out, lse = _FLASH(qf, k, v, 0.0, False, attn_mask=bias, scale=scaling)  # (B, Hkv, g*Tq, D), (B, Hkv, g*Tq)
    out, lse = out.float().view(b, hkv, g, tq, d), lse.float().view(b, hkv, g, tq, 1)
    if mask is not None:  # the kernel reports lse 0 for rows that see no key: make them -inf
        lse = lse.masked_fill(~mask.any(dim=-1)[:, None], float("-inf"))
    return out, lse


def merge(a: tuple[torch.Tensor, torch.Tensor] | None,
          b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions over disjoint key sets: exactly one softmax over their union."""
    if a is None:
        return b
    (out_a, lse_a), (out_b, lse_b) = a, b
    w = torch.nan_to_num(torch.sigmoid(lse_a - lse_b), nan=0.5)  # both empty: -inf - -inf = nan
    return w * out_a + (1 - w) * out_b, torch.logaddexp(lse_a, lse_b)


# ------------------------------------------------------------------------------------- the kernel
@dataclasses.dataclass
class Far:
    """The far part: re-rotated queries (B, H, T, D) and the first ``k.shape[-2]`` keys re-rotated."""

    q: torch.Tensor  # (B, H, T, D)
    k: torch.Tensor  # (B, Hkv, Sf, D)


def two_part_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                       k_pos: torch.Tensor, scaling: float, window: int | None, far: Far | None = None,
                       softcap: float | None = None, block_q: int = BLOCK_Q, block_k: int = BLOCK_K
                       ) -> torch.Tensor:
    """Near (``0 <= m - n < window``) + far (``m - n >= window``) attention, blockwise.

    q (B, H, T, D); k, v (B, Hkv, S, D); q_pos (T,) and k_pos (S,) ascending long positions;
    ``window=None`` means plain causal attention. Returns (B, T, H, D) in v's dtype.
    """
    b, h, t, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    qg = q.view(b, hkv, g, t, d)  # (B, Hkv, g, T, D): query head j uses kv head j // g
    fq = far.q.view(b, hkv, g, t, d) if far is not None else None
    n_far = far.k.shape[-2] if far is not None else 0
    span = window
    out = torch.empty(b, hkv, g, t, d, dtype=v.dtype, device=v.device)
    pos = k_pos.tolist()  # python ints: tile bounds without tensor round trips
    for a in range(0, t, block_q):
        z = min(t, a + block_q)
        m = q_pos[a:z]  # (bq,)
        first, last = int(m[0]), int(m[-1])
        lo = 0 if span is None else bisect.bisect_left(pos, first - span + 1)
        hi = bisect.bisect_right(pos, last)
        acc = None
        for k0 in range(lo, hi, block_k):  # near part, as stored
            k1 = min(hi, k0 + block_k)
            mask = None  # only tiles that straddle the diagonal or the window edge need one
            if first < pos[k1 - 1] or (span is not None and last - pos[k0] >= span):
                dist = m[:, None] - k_pos[None, k0:k1]  # (bq, bk)
                mask = (dist >= 0) if span is None else (dist >= 0) & (dist < span)
            acc = merge(acc, partial_attention(qg[..., a:z, :], k[..., k0:k1, :], v[..., k0:k1, :], mask,
                                               scaling, softcap))
        if fq is not None and span is not None:
            far_hi = min(n_far, bisect.bisect_right(pos, last - span))
            for k0 in range(0, far_hi, block_k):  # far part, re-rotated
                k1 = min(far_hi, k0 + block_k)
                mask = None
                if first - pos[k1 - 1] < span:
                    mask = (m[:, None] - k_pos[None, k0:k1]) >= span  # (bq, bk)
                acc = merge(acc, partial_attention(fq[..., a:z, :], far.k[..., k0:k1, :], v[..., k0:k1, :],
                                                   mask, scaling, softcap))
        assert acc is not None, "every query sees at least itself"
        out[..., a:z, :] = acc[0].to(v.dtype)
    return out.view(b, h, t, d).transpose(1, 2).contiguous()  # (B, T, H, D)
