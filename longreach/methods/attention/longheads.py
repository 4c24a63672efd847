"""LongHeads: each head attends to a few chunks it picks itself, re-positioned inside the trained window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...errors import SpecError
from ...spec import Length, register
from .base import AttentionMethod, RotaryView, contiguous_key_positions, layer_type, query_positions, softcap
from .kernel import RotationTable, merge, partial_attention, rotate_by, two_part_attention

#: chunks every selective query keeps whatever its scores: the first, the previous and its own
FIXED = 3


# ------------------------------------------------------------------------------------ chunk selection
def chunk_keys(k0: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
    """One key per complete chunk, from the chunk's own attention: c = softmax(s . K) K.

    k0 (B, Hkv, C * l, D) pre-RoPE keys of C complete chunks of l = ``chunk`` tokens; the summary s is
    the mean of the chunk's keys. Returns (B, Hkv, C, D) float32.
    """
    b, h, n, d = k0.shape
    kc = k0.float().view(b, h, n // chunk, chunk, d)  # (B, Hkv, C, l, D)
    summary = kc.mean(dim=-2, keepdim=True)  # (B, Hkv, C, 1, D)
    w = torch.softmax((kc @ summary.transpose(-1, -2)).squeeze(-1) * scale, dim=-1)  # (B, Hkv, C, l)
    return (w.unsqueeze(-2) @ kc).squeeze(-2)  # (B, Hkv, C, D)


def select_chunks(q0: torch.Tensor, keys: torch.Tensor, loc: int, chunks: int, scale: float) -> torch.Tensor:
    """The ``chunks`` chunks the queries of chunk ``loc`` attend to, per KV head, ascending.

    q0 (B, Hkv, g, T, D) pre-RoPE queries (the g query heads of each KV head), all in chunk ``loc``
    (``loc >= chunks``); keys (B, Hkv, >= loc - 1, D) chunk keys. Kept always: chunk 0 (the first),
    loc - 1 and loc (local); the other ``chunks - 3`` are the best of 1 .. loc - 2 by q . c. Under
    grouped-query attention the g heads vote: each head's softmax over the candidates, averaged (for
    one head per KV head this is exactly top-k of q . c). Returns (B, Hkv, T, chunks) long.
    """
    b, hkv, g, t, _ = q0.shape
    cand = keys[:, :, 1 : loc - 1].float()  # (B, Hkv, loc - 2, D)
    logits = (q0.float() @ cand.unsqueeze(2).transpose(-1, -2)) * scale  # (B, Hkv, g, T, loc - 2)
    vote = logits.softmax(dim=-1).mean(dim=2)  # (B, Hkv, T, loc - 2)
    top = vote.topk(chunks - FIXED, dim=-1).indices + 1  # (B, Hkv, T, chunks - 3): candidate 0 is chunk 1
    fixed = torch.tensor([0, loc - 1, loc], device=q0.device).expand(b, hkv, t, FIXED)
    return torch.cat([top, fixed], dim=-1).sort(dim=-1).values


# ------------------------------------------------------------------------------------------ attention
#: floats of gathered keys (and as many of values) per step of the selected part: bounds its memory
GATHER_FLOATS = 1 << 20


def selected_part(qs: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor, scale: float,
                  cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query over its own gathered chunks, as (output, log-sum-exp) for :func:`merge`.

    qs (B, Hkv, T, R, g, D): the queries rotated once per rank r (the offset of that rank's chunk);
    kg, vg (B, Hkv, T, R, l, D): per query, the R chunks it picked (keys at chunk-local positions).
    Returns out (B, Hkv, g, T, D) and lse (B, Hkv, g, T, 1), float32.
    """
    b, hkv, t, r, g, d = qs.shape
    scores = (qs @ kg.float().transpose(-1, -2)) * scale  # (B, Hkv, T, R, g, l)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    scores = scores.transpose(-3, -2).reshape(b, hkv, t, g, -1)  # (B, Hkv, T, g, R l)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (B, Hkv, T, g, 1)
    p = torch.exp(scores - lse)
    out = p @ vg.float().reshape(b, hkv, t, -1, d)  # (B, Hkv, T, g, D)
    return out.permute(0, 1, 3, 2, 4), lse.permute(0, 1, 3, 2, 4)


def longheads_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_pos: torch.Tensor,
                        k_pos: torch.Tensor, scale: float, chunk: int, chunks: int, inv_freq: torch.Tensor,
                        table: RotationTable | None = None, cap: float | None = None) -> torch.Tensor:
    """LongHeads attention of queries over cached keys. Returns (B, T, H, D) in value's dtype.

    query (B, H, T, D) and key/value (B, Hkv, S, D) rotated at their positions q_pos (T,) / k_pos (S,)
    (ascending, contiguous keys). Keys are split into chunks of l = ``chunk`` by index. A query in
    chunk ``loc < chunks`` sees every earlier key at its true distance (plain causal attention); a
    later one attends, per KV head, to the chunks of :func:`select_chunks`, laid side by side in
    document order: the chunk of rank r at positions r l .. r l + l - 1, the query at
    (chunks - 1) l + its offset in its chunk, so every distance stays below ``chunks * l``.

    Per block of queries sharing a chunk: the fixed chunks (first, previous, own) are the same for
    every query and head, one shared tile; the picked chunks differ per query and head, so their
    keys are gathered per query (at chunk-local positions, the rank offset rotating the query) in
    steps of at most ``GATHER_FLOATS``. The two parts merge by log-sum-exp into one softmax.
    """
    table = table or RotationTable()
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[-2]
    g, picks = h // hkv, chunks - FIXED
    m = q_pos - k_pos[0]  # (T,) query index among the keys
    loc_of = torch.div(m, chunk, rounding_mode="floor")  # (T,) the chunk of each query
    out = torch.empty(b, t, h, d, dtype=value.dtype, device=value.device)
    plain = int((loc_of < chunks).sum())  # a prefix: positions ascend
    if plain:  # every chunk fits in the budget: nothing to select, positions unchanged
        hi = int(m[plain - 1]) + 1
        out[:, :plain] = two_part_attention(query[..., :plain, :], key[..., :hi, :], value[..., :hi, :],
                                            q_pos[:plain], k_pos[:hi], scale, None, softcap=cap)
    if plain == t:
        return out
    n_cand = int(loc_of[-1]) - 1  # chunks 0 .. last loc - 2: complete, candidates (and chunk 0)
    k0 = table.rerotate(key[..., : n_cand * chunk, :], -k_pos[: n_cand * chunk], inv_freq)  # pre-RoPE, f32
    ck = chunk_keys(k0, chunk, scale)  # (B, Hkv, n_cand, D)
    angle = torch.arange(chunk, device=key.device, dtype=torch.float32)[:, None] * inv_freq.float()[None]
    cos, sin = angle.cos(), angle.sin()  # (l, D/2): chunk-local positions 0 .. l - 1
    k_rows = k0.reshape(b * hkv * n_cand, chunk, d)  # rows: (batch, head, chunk)
    early = (t - plain) * picks >= n_cand  # many queries (prefill): rotate every chunk once, up front
    if early:
        k_rows = rotate_by(k_rows, cos, sin).to(key.dtype)  # keys at chunk-local positions
    v_rows = value[..., : n_cand * chunk, :].reshape(b * hkv * n_cand, chunk, d)
    row0 = (torch.arange(b * hkv, device=key.device) * n_cand).view(b, hkv, 1, 1)  # first row per head
    step = max(1, GATHER_FLOATS // max(1, b * hkv * picks * chunk * d))  # queries per gather
    a = plain
    while a < t:
        loc = int(loc_of[a])
        z = a + int((loc_of[a:] == loc).sum())  # queries a..z-1 share chunk loc
        qb, mb, pb = query[..., a:z, :], m[a:z], q_pos[a:z]  # (B, H, bq, D), (bq,), (bq,)
        bq = z - a
        q_new = (chunks - 1) * chunk + mb % chunk  # (bq,) query position inside the window
        # fixed part: chunks 0, loc - 1, loc at ranks 0, chunks - 2, chunks - 1
        tok = torch.cat([torch.arange(chunk, device=key.device),
                         torch.arange((loc - 1) * chunk, min(s, (loc + 1) * chunk), device=key.device)])
        new = tok % chunk + torch.where(tok < chunk, 0, (chunks - 2 + tok // chunk - (loc - 1)) * chunk)
        kf = table.rerotate(key[..., tok, :], new - k_pos[tok], inv_freq).to(key.dtype)  # (B, Hkv, n, D)
        qf = table.rerotate(qb, q_new - pb, inv_freq).to(query.dtype).view(b, hkv, g, bq, d)
        acc = partial_attention(qf, kf, value[..., tok, :], tok[None] <= mb[:, None], scale, cap)
        if picks:  # the picked chunks: ranks 1 .. chunks - 3, per query and KV head
            q0 = table.rerotate(qb, -pb, inv_freq).view(b, hkv, g, bq, d)  # pre-RoPE
            sel = select_chunks(q0, ck, loc, chunks, scale)[..., 1 : 1 + picks]  # (B, Hkv, bq, picks)
            ranks = torch.arange(1, 1 + picks, device=key.device)  # (R,)
            delta = (q_new[None] - ranks[:, None] * chunk - pb[None]).reshape(-1)  # (R bq,)
            qs = table.rerotate(qb.repeat(1, 1, picks, 1), delta, inv_freq)  # (B, H, R bq, D) f32
            qs = qs.view(b, hkv, g, picks, bq, d).permute(0, 1, 4, 3, 2, 5)  # (B, Hkv, bq, R, g, D)
            parts = []
            for i in range(0, bq, step):
                rows = (row0 + sel[:, :, i : i + step]).reshape(-1)  # (B Hkv n R,)
                n = min(step, bq - i)
                kg = k_rows.index_select(0, rows)  # (B Hkv n R, l, D)
                kg = (kg if early else rotate_by(kg, cos, sin)).view(b, hkv, n, picks, chunk, d)
                vg = v_rows.index_select(0, rows).view(b, hkv, n, picks, chunk, d)
                parts.append(selected_part(qs[:, :, i : i + step], kg, vg, scale, cap))
            acc = merge(acc, (torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)))
        out[:, a:z] = acc[0].reshape(b, h, bq, d).transpose(1, 2).to(value.dtype)
        a = z
    return out


@register
class LongHeads(AttentionMethod):
    """LongHeads (Lu et al., "LongHeads: Multi-Head Attention is Secretly a Long Context Processor",
    https://arxiv.org/abs/2402.10685), training-free.

    The context is cut into chunks of ``chunk`` tokens, each summarised by a chunk key built from its
    own attention, c = softmax(s . K) K with s the mean of the chunk's keys (pre-RoPE). A query in
    chunk ``loc`` keeps the first chunk (attention sink), chunks loc - 1 and loc (local context) and
    the ``chunks - 3`` chunks with the best q . c (pre-RoPE: selection is by content, not position);
    the selected chunks are laid contiguously in document order inside the trained window and RoPE
    is re-applied (float32 re-rotation of the cached keys), so every head sees at most
    ``chunk * chunks`` tokens at in-distribution distances while different heads, layers and queries
    cover different parts of an input of any length. Selection is per KV head: under grouped-query
    attention the query heads sharing a KV head vote (their softmax over the chunks, averaged), so
    the group reads one set of keys. Queries whose chunks all fit in the budget see plain causal
    attention. Chunk keys depend only on cached keys, so cached decoding equals recomputation.
    Sliding-window layers (Gemma 3) keep their own window.

    Reach: unbounded (memory grows with the KV cache; no (queries x keys) matrix is ever built).

    Parameters:
      chunk: tokens per chunk (256).
      chunks: chunks each head attends to, first and local included (16, i.e. a 4k budget);
        ``chunk * chunks`` must fit in the native window.
    """

    name = "longheads"
    paper = "LongHeads: Multi-Head Attention is Secretly a Long Context Processor, https://arxiv.org/abs/2402.10685"
    summary = "per-head chunk selection (first + local + top q.c chunks) re-positioned inside the window"
    extends = True

    chunk: Length = 256
    chunks: int = 16

    def __post_init__(self) -> None:
        if self.chunks < FIXED:
            raise ValueError(f"chunks must be >= {FIXED} (the first, previous and current chunk are always "
                             f"kept), got {self.chunks}")

    def check(self, info: Any) -> None:
        if self.chunk * self.chunks > info.window:
            fix = (f"chunks={info.window // self.chunk}" if info.window // self.chunk >= FIXED
                   else f"chunk={info.window // self.chunks}")
            raise SpecError(f"longheads: chunk * chunks = {self.chunk * self.chunks} tokens exceeds "
                            f"{info.name}'s native window {info.window}; use e.g. {fix}")

    def reach(self, info: Any) -> None:
        return None  # any length: each head only ever sees chunk * chunks tokens

    def attention_function(self, model: Any, info: Any) -> Callable[..., Any]:
        chunk, chunks = self.chunk, self.chunks
        rotary = RotaryView(model)
        tables: dict[str, RotationTable] = {}  # layer type -> cos/sin of offsets, shared by layers

        def longheads_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         sliding_window=None, **kwargs):
            t, s = query.shape[-2], key.shape[-2]
            q_pos = query_positions(kwargs, t)  # (T,)
            k_pos = contiguous_key_positions(q_pos, s)  # (S,)
            scale = module.scaling if scaling is None else scaling
            if sliding_window:  # a local layer: its own window, normal positions
                return two_part_attention(query, key, value, q_pos, k_pos, scale, sliding_window,
                                          softcap=softcap(module)), None
            kind = layer_type(module)
            table = tables.setdefault(kind, RotationTable())
            out = longheads_attention(query, key, value, q_pos, k_pos, scale, chunk, chunks,
                                      rotary.inv_freq(kind), table, softcap(module))
            return out, None

        return longheads_fn
