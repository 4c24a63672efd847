"""LongHeads: each head attends to a few chunks it picks itself, re-positioned inside the trained window."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch

from ...errors import SpecError
from ...spec import Length, register
from ..rope.base import require_rope
from .base import AttentionMethod, RotaryView, contiguous_key_positions, layer_type, query_positions, softcap
from .kernel import RotationTable, merge, partial_attention, two_part_attention

#: chunks every selective query keeps whatever its scores: the first, the previous and its own
FIXED = 3


# ------------------------------------------------------------------------------------ chunk selection
def chunk_keys(k0: torch.Tensor, qbar: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
    """One key per complete chunk, from the chunk's own attention: c = softmax(q . K) K.

    k0 (B, Hkv, C * l, D) pre-RoPE keys of C complete chunks of l = ``chunk`` tokens; qbar (B, Hkv, C, D)
    the chunk's mean pre-RoPE query (over its l tokens and the g query heads of the KV head), so the
    weights follow what the chunk's own tokens look for. Returns (B, Hkv, C, D) float32.
    """
    b, h, n, d = k0.shape
    kc = k0.float().view(b, h, n // chunk, chunk, d)  # (B, Hkv, C, l, D)
    w = torch.softmax((kc @ qbar.float().unsqueeze(-1)).squeeze(-1) * scale, dim=-1)  # (B, Hkv, C, l)
    return (w.unsqueeze(-2) @ kc).squeeze(-2)  # (B, Hkv, C, D)


def key_bounds(k0: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per complete chunk and channel, the largest and smallest pre-RoPE key (Quest's page metadata).

    k0 (B, Hkv, C * l, D). Returns (upper, lower), each (B, Hkv, C, D) float32.
    """
    b, h, n, d = k0.shape
    kc = k0.float().view(b, h, n // chunk, chunk, d)  # (B, Hkv, C, l, D)
    return kc.amax(dim=-2), kc.amin(dim=-2)


def select_chunks(q0: torch.Tensor, keys: torch.Tensor, loc: int, chunks: int, scale: float,
                  lower: torch.Tensor | None = None) -> torch.Tensor:
    """The ``chunks`` chunks the queries of chunk ``loc`` attend to, per KV head, ascending.

    q0 (B, Hkv, g, T, D) pre-RoPE queries (the g query heads of each KV head), all in chunk ``loc``
    (``loc >= chunks``); keys (B, Hkv, >= loc - 1, D) chunk keys, scored q . c. With ``lower`` (same
    shape), ``keys`` and ``lower`` are each chunk's per-channel largest and smallest key and the score
    is sum_d max(q_d upper_d, q_d lower_d), an upper bound of q . k over the chunk (Quest). Kept always:
    chunk 0 (the first), loc - 1 and loc (local); the other ``chunks - 3`` are the best of 1 .. loc - 2.
    Under grouped-query attention the g heads vote: each head's softmax over the candidates, averaged
    (for one head per KV head this is exactly the top-k of the scores). Returns (B, Hkv, T, chunks) long.
    """
    b, hkv, g, t, _ = q0.shape
    q = q0.float()
    upper = keys[:, :, 1 : loc - 1].float().unsqueeze(2).transpose(-1, -2)  # (B, Hkv, 1, D, loc - 2)
    if lower is None:
        logits = q @ upper  # (B, Hkv, g, T, loc - 2)
    else:  # max(q u, q l) = q+ u + q- l, as u >= l
        low = lower[:, :, 1 : loc - 1].float().unsqueeze(2).transpose(-1, -2)  # (B, Hkv, 1, D, loc - 2)
        logits = q.clamp(min=0) @ upper + q.clamp(max=0) @ low  # (B, Hkv, g, T, loc - 2)
    vote = (logits * scale).softmax(dim=-1).mean(dim=2)  # (B, Hkv, T, loc - 2)
    top = vote.topk(chunks - FIXED, dim=-1).indices + 1  # (B, Hkv, T, chunks - 3): candidate 0 is chunk 1
    fixed = torch.tensor([0, loc - 1, loc], device=q0.device).expand(b, hkv, t, FIXED)
    return torch.cat([top, fixed], dim=-1).sort(dim=-1).values


class ChunkQueries:
    """Per layer, the running sum of each chunk's pre-RoPE queries, filled as the queries pass through.

    The attention function sees every query once: prefill chunks, then decode steps, each starting at
    the cache index where the previous one ended; a recomputation without a cache starts again at
    index 0, which resets the layer. So the sums do not depend on how the sequence was fed and cached
    decoding equals recomputation. If a call starts anywhere else (an evicting cache dropped entries,
    so chunks cut over the cache no longer line up with the queries), :meth:`update` returns None for
    that layer until a new sequence starts. One instance per installed attention function.
    """

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.layers: dict[Any, tuple[torch.Tensor, int]] = {}  # layer -> (sums (B, Hkv, C, D), queries seen)

    def update(self, layer: Any, q0: torch.Tensor, first: int) -> torch.Tensor | None:
        """Fold in q0 (B, Hkv, g, T, D), pre-RoPE queries at cache indices first .. first + T - 1.

        Returns the mean query of every complete chunk so far, (B, Hkv, C, D) float32, or None.
        """
        b, hkv, _, t, d = q0.shape
        if first == 0:
            sums, seen = q0.new_zeros(b, hkv, 0, d, dtype=torch.float32), 0
        else:
            sums, seen = self.layers.get(layer, (None, -1))
            if sums is None or seen != first or sums.shape[0] != b:
                self.layers.pop(layer, None)  # out of step with the cache: no query summaries
                return None
        n = first + t
        grow = -(-n // self.chunk) - sums.shape[2]
        if grow > 0:
            sums = torch.cat([sums, sums.new_zeros(b, hkv, grow, d)], dim=2)
        bins = torch.arange(first, n, device=q0.device) // self.chunk  # (T,) chunk of each query
        sums.index_add_(2, bins, q0.float().mean(dim=2))  # group mean (B, Hkv, T, D) into its chunk
        self.layers[layer] = (sums, n)
        return sums[:, :, : n // self.chunk] / self.chunk


@dataclasses.dataclass
class LayerSummaries:
    """One layer's chunk summaries: ``upper`` / ``lower`` (B, Hkv, C, D) float32 for its first C chunks
    (key bounds; chunk keys and None for ``score=query``), None before any chunk is summarised."""

    seen: int  # cache length after the layer's last call (set by the caller), -1 before any
    batch: int
    mode: str  # "bound" or "query"
    inv: torch.Tensor  # (D/2,) the inverse frequencies the keys were de-rotated with
    upper: torch.Tensor | None = None
    lower: torch.Tensor | None = None


class ChunkSummaries:
    """Per layer, the summaries (key bounds or chunk keys) of the complete chunks already scored, kept
    across the calls of one request, so each chunk's keys are re-rotated to pre-RoPE and summarised
    once (in the prefill piece or decode step that completes it) instead of in every later call.

    A layer's summaries are reused only by a call that continues where the previous call of that layer
    ended (its first cache index equals the keys seen so far), with the same batch size, scoring and
    inverse frequencies; anything else (a recomputation from index 0, an evicting cache that dropped
    entries, a rope method that changed the frequencies) starts the layer afresh. One instance per
    installed attention function.
    """

    def __init__(self) -> None:
        self.layers: dict[Any, LayerSummaries] = {}

    def for_call(self, layer: Any, first: int, batch: int, mode: str, inv_freq: torch.Tensor) -> LayerSummaries:
        """The layer's summaries for a call whose queries start at cache index ``first`` (fresh ones
        unless the call continues the layer's previous one); the caller sets ``seen`` after the call."""
        state = self.layers.get(layer)
        if (state is None or state.seen != first or state.batch != batch or state.mode != mode
                or not torch.equal(state.inv, inv_freq)):
            state = LayerSummaries(-1, batch, mode, inv_freq.detach().clone())
            self.layers[layer] = state
        return state


# ------------------------------------------------------------------------------------------ attention
#: floats of picked-part scores per step (queries x KV heads x picks x group x chunk): bounds its memory
GATHER_FLOATS = 1 << 22
#: query-chunk pairs per tile: the pairs that picked one chunk share one gathered copy of its keys
TILE = 32


def tile_pairs(rows: torch.Tensor, n_rows: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group (query, rank) pairs by the chunk row they picked, in tiles of at most ``size`` pairs of one row.

    rows (P,) long in 0 .. n_rows - 1. Returns flat (P,): each pair's slot ``tile * size + i`` in the
    tiled layout, and tile_row (n_tiles,): the row every tile reads. Pairs of one row fill its tiles in
    pair order, so a row picked by c pairs gets ceil(c / size) tiles.
    """
    n = rows.numel()
    counts = torch.bincount(rows, minlength=n_rows)  # (n_rows,) pairs per row
    order = torch.argsort(rows, stable=True)  # (P,) pairs grouped by row
    start = torch.cumsum(counts, 0) - counts  # (n_rows,) first sorted index of each row
    rank = torch.empty_like(rows)
    rank[order] = torch.arange(n, device=rows.device) - start[rows[order]]  # (P,) index among its row's pairs
    tiles = -(-counts // size)  # (n_rows,) tiles per row
    first = torch.cumsum(tiles, 0) - tiles  # (n_rows,) first tile of each row
    flat = (first[rows] + rank // size) * size + rank % size  # (P,)
    return flat, torch.repeat_interleave(torch.arange(n_rows, device=rows.device), tiles)


def selected_part(qs: torch.Tensor, rows: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
                  scale: float, cap: float | None,
                  rope: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query over its own picked chunks, as (output, log-sum-exp) for :func:`merge`.

    qs (B, Hkv, T, R, g, D): the queries rotated once per rank r (the offset of that rank's chunk);
    rows (B, Hkv, T, R) long: the row ``head * C + chunk`` of ``k_rows`` / ``v_rows`` (B Hkv, C, l, D)
    holding the chunk each query picked at rank r, keys at chunk-local positions (or ``rope(keys (N, l,
    D), chunk (N,))`` takes them there). The (query, rank) pairs that picked one chunk share a tile
    (:func:`tile_pairs`): one gathered copy of its keys and values and one matmul of up to
    ``TILE * g`` rows, instead of a gathered copy per query. Returns out (B, Hkv, g, T, D) and
    lse (B, Hkv, g, T, 1), float32.
    """
    b, hkv, t, r, g, d = qs.shape
    c = k_rows.shape[1]
    size = min(TILE, t)  # one query (decoding): a tile per pair, as many keys as it reads
    flat, tile_row = tile_pairs(rows.reshape(-1), k_rows.shape[0] * c, size)  # (P,), (n_tiles,)
    n_tiles, n = tile_row.numel(), flat.numel()
    head, chunk_of = tile_row // c, tile_row % c  # (n_tiles,) each
    kt = k_rows[head, chunk_of]  # (n_tiles, l, D) gathered
    kt = rope(kt, chunk_of) if rope is not None else kt.float()
    qt = qs.new_zeros(n_tiles * size, g, d)
    qt[flat] = qs.reshape(n, g, d).float()  # (n_tiles size, g, D), empty slots 0
    scores = (qt.view(n_tiles, size * g, d) @ kt.transpose(-1, -2)).mul_(scale)  # (n_tiles, size g, l)
    if cap:
        scores = torch.tanh(scores.div_(cap)).mul_(cap)
    scores = scores.view(n_tiles * size, g, -1)  # (n_tiles size, g, l)
    peak = scores.amax(dim=-1)[flat].view(b, hkv, t, r, g).amax(dim=3)  # (B, Hkv, T, g): over all R l keys
    shift = scores.new_zeros(n_tiles * size, g)
    shift[flat] = peak.unsqueeze(3).expand(b, hkv, t, r, g).reshape(n, g)
    p = scores.sub_(shift.unsqueeze(-1)).exp_()  # (n_tiles size, g, l) unnormalised weights of every pair
    total = p.sum(dim=-1)[flat].view(b, hkv, t, r, g).sum(dim=3)  # (B, Hkv, T, g)
    vt = v_rows[head, chunk_of].float()  # (n_tiles, l, D)
    ot = (p.view(n_tiles, size * g, -1) @ vt).view(n_tiles * size, g, d)  # (n_tiles size, g, D)
    out = ot[flat].view(b, hkv, t, r, g, d).sum(dim=3) / total.unsqueeze(-1)  # (B, Hkv, T, g, D)
    lse = peak + torch.log(total)  # (B, Hkv, T, g)
    return out.permute(0, 1, 3, 2, 4), lse.permute(0, 1, 3, 2).unsqueeze(-1)


def longheads_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_pos: torch.Tensor,
                        k_pos: torch.Tensor, scale: float, chunk: int, chunks: int, inv_freq: torch.Tensor,
                        table: RotationTable | None = None, cap: float | None = None,
                        chunk_queries: torch.Tensor | None = None, memo: LayerSummaries | None = None
                        ) -> torch.Tensor:
    """LongHeads attention of queries over cached keys. Returns (B, T, H, D) in value's dtype.

    query (B, H, T, D) and key/value (B, Hkv, S, D) rotated at their positions q_pos (T,) / k_pos (S,)
    (ascending, contiguous keys). Keys are split into chunks of l = ``chunk`` by index. A query in
    chunk ``loc < chunks`` sees every earlier key at its true distance (plain causal attention); a
    later one attends, per KV head, to the chunks of :func:`select_chunks`, laid side by side in
    document order: the chunk of rank r at positions r l .. r l + l - 1, the query at
    (chunks - 1) l + its offset in its chunk, so every distance stays below ``chunks * l``.

    Per block of queries sharing a chunk: the fixed chunks (first, previous, own) are the same for
    every query and head, one shared tile; the picked chunks differ per query and head: the (query,
    rank) pairs that picked one chunk share its keys, at chunk-local positions (the rank offset rotates
    the query), in tiles (:func:`selected_part`), in steps of at most ``GATHER_FLOATS`` scores. Keys
    reach chunk-local positions in one rotation from the cache (by -(first position of their chunk)).
    The two parts merge by log-sum-exp into one softmax.

    chunk_queries (B, Hkv, >= C, D): the mean pre-RoPE query of each complete chunk (see
    :class:`ChunkQueries`); chunks are then scored by their chunk keys (:func:`chunk_keys`). Without
    it they are scored by their key bounds (:func:`key_bounds`). memo: a layer's state from
    :class:`ChunkSummaries`: summaries of chunks it already holds are reused, new ones are added.
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
    mode = "bound" if chunk_queries is None else "query"
    memo = memo or LayerSummaries(-1, b, mode, inv_freq)
    have = 0 if memo.upper is None else min(memo.upper.shape[2], n_cand)  # chunks already summarised
    if have < n_cand:  # summarise the new chunks only, from their pre-RoPE keys (float32)
        lo, hi = have * chunk, n_cand * chunk
        k0 = table.rerotate(key[..., lo:hi, :], -k_pos[lo:hi], inv_freq)  # (B, Hkv, (n_cand - have) l, D)
        if mode == "query":  # chunk keys c, scored q . c
            upper, lower = chunk_keys(k0, chunk_queries[:, :, have:n_cand], chunk, scale), None  # (B, Hkv, new, D)
        else:  # per-channel key bounds, scored by Quest's bound
            upper, lower = key_bounds(k0, chunk)  # (B, Hkv, new, D) each
        del k0
        if have:
            upper = torch.cat([memo.upper[:, :, :have], upper], dim=2)  # (B, Hkv, n_cand, D)
            lower = None if lower is None else torch.cat([memo.lower[:, :, :have], lower], dim=2)
        memo.upper, memo.lower = upper, lower
    upper = memo.upper[:, :, :n_cand]  # (B, Hkv, n_cand, D)
    lower = None if memo.lower is None else memo.lower[:, :, :n_cand]
    # every candidate chunk at chunk-local positions 0 .. l - 1: token n of chunk c moves by -(k_pos[0] + c l)
    shift = torch.arange(n_cand * chunk, device=key.device) % chunk - k_pos[: n_cand * chunk]  # (n_cand l,)
    early = (t - plain) * picks >= n_cand  # many queries (prefill): rotate every chunk once, up front
    if early:
        k_src = table.rerotate(key[..., : n_cand * chunk, :], shift, inv_freq).to(key.dtype)  # (B, Hkv, n_cand l, D)
    else:  # few queries (decoding): rotate only the tiles read, from the cache
        k_src = key[..., : n_cand * chunk, :]
    k_rows = k_src.unflatten(2, (n_cand, chunk)).flatten(0, 1)  # (B Hkv, n_cand, l, D), a view of k_src
    v_rows = value[..., : n_cand * chunk, :].unflatten(2, (n_cand, chunk)).flatten(0, 1)  # (B Hkv, n_cand, l, D)

    def to_local(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Keys x (N, l, D) of chunks c (N,) as cached -> at chunk-local positions, float32."""
        return table.rerotate(x.transpose(0, 1), shift[c * chunk], inv_freq).transpose(0, 1)  # (l, N, D) rotated

    row0 = (torch.arange(b * hkv, device=key.device) * n_cand).view(b, hkv, 1, 1)  # first row per head
    step = max(1, GATHER_FLOATS // max(1, b * hkv * picks * g * chunk))  # queries per step of the picked part
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
            sel = select_chunks(q0, upper, loc, chunks, scale, lower)[..., 1 : 1 + picks]  # (B, Hkv, bq, picks)
            ranks = torch.arange(1, 1 + picks, device=key.device)  # (R,)
            delta = (q_new[None] - ranks[:, None] * chunk - pb[None]).reshape(-1)  # (R bq,)
            qs = table.rerotate(qb.repeat(1, 1, picks, 1), delta, inv_freq)  # (B, H, R bq, D) f32
            qs = qs.view(b, hkv, g, picks, bq, d).permute(0, 1, 4, 3, 2, 5)  # (B, Hkv, bq, R, g, D)
            rows = row0 + sel  # (B, Hkv, bq, R) rows of k_rows / v_rows
            parts = [selected_part(qs[:, :, i : i + step], rows[:, :, i : i + step], k_rows, v_rows, scale, cap,
                                   None if early else to_local) for i in range(0, bq, step)]
            acc = merge(acc, (torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)))
        out[:, a:z] = acc[0].reshape(b, h, bq, d).transpose(1, 2).to(value.dtype)
        a = z
    return out


@register
class LongHeads(AttentionMethod):
    """LongHeads (Lu et al., "LongHeads: Multi-Head Attention is Secretly a Long Context Processor",
    https://arxiv.org/abs/2402.10685), training-free.

    The context is cut into chunks of ``chunk`` tokens. A query in chunk ``loc`` keeps the first
    chunk (attention sink), chunks loc - 1 and loc (local context) and the ``chunks - 3`` chunks that
    score best against it (pre-RoPE: selection is by content, not position); the selected chunks are
    laid contiguously in document order inside the trained window and RoPE is re-applied (float32
    re-rotation of the cached keys), so every head sees at most ``chunk * chunks`` tokens at
    in-distribution distances while different heads, layers and queries cover different parts of an
    input of any length. Selection is per KV head: under grouped-query attention the query heads
    sharing a KV head vote (their softmax over the chunks, averaged), so the group reads one set of
    keys. Queries whose chunks all fit in the budget see plain causal attention. Sliding-window
    layers (Gemma 3) keep their own window.

    Scoring a chunk (``score``):
      bound (default, a deviation from the paper): Quest's bound, sum_d max(q_d max_d, q_d min_d) over
        the chunk's per-channel largest and smallest pre-RoPE key: the best q . k the chunk could
        hold, so a chunk with a few distinctive keys (a needle in repeated filler) stands out. Depends
        only on cached keys, so cached decoding equals recomputation.
      query: the paper's chunk key c = softmax(qc . K) K from the chunk's own attention, scored
        q . c, with qc the mean of the chunk's pre-RoPE queries (the authors' code uses the mean of the
        chunk's in-chunk attention outputs instead). Queries are not cached, so the method keeps the
        running per-chunk query sums of the current request (:class:`ChunkQueries`); prefill pieces,
        decode steps and recomputation see the same sums. When an evicting cache has dropped entries
        the sums no longer line up with the cached chunks and those layers fall back to ``bound``.

    SmolLM2-135M, 6,000-token pass-key document (seed 7, plain prompt), one run each: the default
    retrieves the key at depth 0.5 and 0.1, and with chunks=8 at 0.5; ``score=query`` answered "a magical key that allows you
    to unlock" at 0.5 (it retrieves on a 3,000-token document with chunk=128,chunks=8, as ``bound``
    does); the former summary (chunk key weighted by the mean of the chunk's keys) failed both.

    Reach: unbounded (memory grows with the KV cache; no (queries x keys) matrix is ever built).

    Parameters:
      chunk: tokens per chunk (256).
      chunks: chunks each head attends to, first and local included (16, i.e. a 4k budget);
        ``chunk * chunks`` must fit in the native window.
      score: how candidate chunks are scored, ``bound`` (default) or ``query`` (see above).
    """

    name = "longheads"
    paper = "LongHeads: Multi-Head Attention is Secretly a Long Context Processor, https://arxiv.org/abs/2402.10685"
    summary = "per-head chunk selection (first + local + best-scoring chunks) re-positioned inside the window"
    extends = True

    chunk: Length = 256
    chunks: int = 16
    score: Literal["bound", "query"] = "bound"

    def __post_init__(self) -> None:
        if self.chunks < FIXED:
            raise ValueError(f"chunks must be >= {FIXED} (the first, previous and current chunk are always "
                             f"kept), got {self.chunks}")

    @property
    def reuses_prefix(self) -> bool:  # type: ignore[override]  (Method.reuses_prefix, per instance here)
        """``score=bound`` reads only cached keys, so a cached prefix serves any later prompt;
        ``score=query`` keeps the request's running query sums, which a reused prefix never fed."""
        return self.score == "bound"

    def check(self, info: Any) -> None:
        require_rope(info, "longheads")  # selected chunks are re-rotated into the window
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
        queries = ChunkQueries(chunk) if self.score == "query" else None  # fresh per install (request)
        summaries = ChunkSummaries()  # chunk summaries kept across the calls of this request

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
            inv = rotary.inv_freq(kind)
            qbar = None
            if queries is not None:
                b, _, _, d = query.shape
                q0 = table.rerotate(query, -q_pos, inv).view(b, key.shape[1], -1, t, d)  # (B, Hkv, g, T, D)
                qbar = queries.update(module.layer_idx, q0, s - t)  # None: the cache dropped entries
            memo = summaries.for_call(module.layer_idx, s - t, query.shape[0], "bound" if qbar is None else "query",
                                      inv)
            out = longheads_attention(query, key, value, q_pos, k_pos, scale, chunk, chunks, inv, table,
                                      softcap(module), qbar, memo)
            memo.seen = s
            return out, None

        return longheads_fn
