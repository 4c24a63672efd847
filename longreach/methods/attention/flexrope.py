"""FlexRoPE (FAR): test-time linear temporal decay added to RoPE attention logits."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch

from ...spec import register
from ..rope.base import require_rope
from .base import AttentionMethod, contiguous_key_positions, query_positions, softcap
from .kernel import BLOCK_K, BLOCK_Q, merge, two_part_attention, uses_cpu_flash

#: default decay: the bias reaches -SPAN (weight e^-20) at the native window's distance
SPAN = 20.0
#: keys whose decay term exceeds CUTOFF (weight below e^-60 of an equal-logit key) are skipped
CUTOFF = 60.0

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # see kernel.py


def horizon(decay: float) -> int:
    """Farthest distance a query reads: floor(CUTOFF / decay) (beyond it exp(-decay d) < e^-60)."""
    return int(CUTOFF / decay)


def biased_partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                             scaling: float, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q over one key tile with an additive float32 logit bias, as (output, lse).

    q (B, Hkv, g, Tq, D), k and v (B, Hkv, Tk, D), bias (Tq, Tk) float32 (-inf = masked). Returns out
    (B, Hkv, g, Tq, D) and lse (B, Hkv, g, Tq, 1), float32 (-inf and 0 for rows that see no key), for
    :func:`longreach.methods.attention.kernel.merge`. float32 tensors on the CPU take torch's fused
    flash kernel (bias as its float mask); others the plain path below (tile-sized scores, float32).
    """
    b, hkv, g, tq, d = q.shape
    empty = torch.isneginf(bias).all(dim=-1)  # (Tq,) rows that see no key in this tile
    if _FLASH is not None and q.dtype == torch.float32 and uses_cpu_flash(q, k, v, softcap):
        mask = bias.repeat(g, 1)  # (g*Tq, Tk): the g query heads of a kv head share its keys
        out, lse = _FLASH(q.reshape(b, hkv, g * tq, d), k, v, 0.0, False, attn_mask=mask, scale=scaling)
        out, lse = out.view(b, hkv, g, tq, d), lse.view(b, hkv, g, tq, 1)
        return out, lse.masked_fill(empty[:, None], float("-inf"))
    scores = q.float().reshape(b, hkv, g * tq, d) @ k.float().transpose(-1, -2)  # (B, Hkv, g*Tq, Tk)
    scores = scores.view(b, hkv, g, tq, -1).mul_(scaling)  # (B, Hkv, g, Tq, Tk)
    if softcap:
        scores = torch.tanh(scores.div_(softcap)).mul_(softcap)
    scores.add_(bias)
    peak = scores.amax(dim=-1, keepdim=True)  # (B, Hkv, g, Tq, 1)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    p = scores.sub_(peak).exp_()
    total = p.sum(dim=-1, keepdim=True)
    out = (p.view(b, hkv, g * tq, -1) @ v.float()).view(b, hkv, g, tq, d)
    out.div_(total.clamp_min(torch.finfo(torch.float32).tiny))
    return out, peak + torch.log(total)


def decayed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                      scaling: float, decay: float, softcap: float | None = None, block_q: int = BLOCK_Q,
                      block_k: int = BLOCK_K) -> torch.Tensor:
    """Causal attention with logits ``scaling * q.k - decay * (m - n)``, blockwise (memory linear).

    q (B, H, T, D); k, v (B, Hkv, S, D); q_pos (T,), k_pos (S,) ascending long positions; decay > 0.
    Keys farther than :func:`horizon` are skipped (time linear in length once it exceeds the horizon).
    Returns (B, T, H, D) in v's dtype.
    """
    b, h, t, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    qg = q.view(b, hkv, g, t, d)  # (B, Hkv, g, T, D): query head j uses kv head j // g
    reach = horizon(decay)
    out = torch.empty(b, hkv, g, t, d, dtype=v.dtype, device=v.device)
    pos = k_pos.tolist()
    for a in range(0, t, block_q):
        z = min(t, a + block_q)
        m = q_pos[a:z]  # (bq,)
        lo = bisect.bisect_left(pos, int(m[0]) - reach)
        hi = bisect.bisect_right(pos, int(m[-1]))
        acc = None
        for k0 in range(lo, hi, block_k):
            k1 = min(hi, k0 + block_k)
            dist = (m[:, None] - k_pos[None, k0:k1]).to(torch.float32)  # (bq, bk)
            bias = (dist * -decay).masked_fill_((dist < 0) | (dist > reach), float("-inf"))  # (bq, bk)
            acc = merge(acc, biased_partial_attention(qg[..., a:z, :], k[..., k0:k1, :], v[..., k0:k1, :], bias,
                                                      scaling, softcap))
        assert acc is not None, "every query sees at least itself"
        out[..., a:z, :] = acc[0].to(v.dtype)
    return out.view(b, h, t, d).transpose(1, 2).contiguous()  # (B, T, H, D)


@register
class FlexRoPE(AttentionMethod):
    """FlexRoPE, the test-time temporal decay of FAR (Gu, Mao, Shou, "Long-Context Autoregressive Video
    Modeling with Next-Frame Prediction", https://arxiv.org/abs/2503.19325, v1 section "FlexRoPE").

    The paper adds "flexible temporal decay" to RoPE at test time so that remote context fades and the
    model extrapolates past its trained length. Its public code (showlab/FAR, ``_build_causal_mask``)
    does this with an ALiBi-style linear bias, one slope for every head: ``slope * (n - m)`` in frame
    units added to the attention logits after the 1/sqrt(d) scaling. On text a frame is a token, so
    here::

        logit(m, n) = q_m . k_n / sqrt(d) - decay * (m - n)        (n <= m, RoPE positions unchanged)

    computed blockwise in float32 (tiles merged by log-sum-exp; memory linear in length), keys beyond
    ``60 / decay`` tokens skipped (their weight is below e^-60 of an equal-logit key). Gemma 3's
    sliding-window layers keep plain attention (their window is trained). decay = 0 installs nothing:
    exactly ``none``.

    What it reaches: RoPE distances beyond the window stay out of distribution, but with
    ``decay >= 20 / window`` they carry a weight below e^-20, so the model reads input of any length
    (like ``streaming``, the KV cache is kept whole) while recalling mainly the last ~window tokens: a
    soft sliding window, not long-range retrieval. A smaller decay is refused as an extension (reach =
    native window).

    Parameters:
      decay: logit penalty per token of distance, >= 0 (default: 20 / native window).
    """

    name = "flexrope"
    paper = ("Long-Context Autoregressive Video Modeling with Next-Frame Prediction (FAR, FlexRoPE), "
             "https://arxiv.org/abs/2503.19325")
    summary = "linear temporal decay on RoPE logits, - decay * (m - n) (soft window, unbounded input)"
    reuses_prefix = True  # keys cached as plain RoPE; the decay is applied when they are read
    extends = True

    decay: float | None = None

    def __post_init__(self) -> None:
        if self.decay is not None and not (math.isfinite(self.decay) and 0 <= self.decay <= 1000):
            raise ValueError(f"decay must be a number from 0 to 1000 (logit penalty per token), got {self.decay:g}")

    def resolve(self, info: Any) -> float:
        return SPAN / info.window if self.decay is None else self.decay

    def check(self, info: Any) -> None:
        require_rope(info, "flexrope", full_head=False, static=False)  # positions are not changed

    def reach(self, info: Any) -> int | None:
        decay = self.resolve(info)
        return None if decay > 0 and SPAN / decay <= info.window else info.window

    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        if self.resolve(info) == 0:
            self.check(info)
            return lambda: None  # no decay: the model's own attention, untouched
        return super().install(model, info, tokens)

    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        decay = self.resolve(info)

        def flexrope_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                               sliding_window=None, **kwargs):
            t, s = query.shape[-2], key.shape[-2]
            q_pos = query_positions(kwargs, t)  # (T,)
            k_pos = contiguous_key_positions(q_pos, s)  # (S,)
            scale = module.scaling if scaling is None else scaling
            if sliding_window:  # a local layer: its own window, no decay
                return two_part_attention(query, key, value, q_pos, k_pos, scale, sliding_window,
                                          softcap=softcap(module)), None
            return decayed_attention(query, key, value, q_pos, k_pos, scale, decay, softcap(module)), None

        return flexrope_attention
