"""Chelsea-style KV clustering: merge similar keys into centroids that remember how many tokens they hold.

One merge round over the mergeable entries of a layer (all but the most recent ``window``), per KV head:

1. split them into chunks of ``chunk`` consecutive entries;
2. alternating partition inside each chunk: sources = even positions, destinations = odd positions
   (swapped every other round);
3. soft matching (ToMe-style bipartite): each source's most cosine-similar destination in its chunk;
4. the ``r`` most similar (source, destination) pairs over the whole layer are merged: the destination
   becomes the count-weighted mean of its keys and values, the counts add, the sources are dropped.

Rounds repeat until the layer holds the target number of entries (``ceil((1 - ratio) * seen)`` or
``budget``). Cost per round O(T * chunk * D) instead of O(T^2 * D).

A round merges at most ``share`` of its sources (default 0.5). Without that cap, one update that must
halve a 2048-token prefill chunk merges *every* source with its best partner, however unlike; with it,
the work is spread over several rounds of alternating parity and the least similar entries (a pass key's
digits among filler) keep their own slot (measured in ``benchmarks/results/kv-compression-*.md``).

Attention mass: a centroid standing for m tokens must weigh like m tokens, i.e. carry ``log m`` in its
logit: ``softmax(q.c + log m)``. A cache cannot add a logit bias without replacing the attention
function (that is the attention slot), so :meth:`ClusterLayer.update` hands attention each centroid
repeated m times, which is exactly ``exp(q.c + log m) = m exp(q.c)``. The bytes held are the centroids
and counts; the repeat is transient, one layer at a time, so attention compute is not reduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from .base import kept_tokens, tensor_bytes


def merge_round(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor, r: int, chunk: int,
                parity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``r`` entries per head of (B, H, T, D) ``keys``/``values`` with (B, H, T) ``counts``.

    Only the first ``T // chunk * chunk`` entries take part. ``r`` must be <= the number of sources.
    Returns tensors with T - r entries, order preserved.
    """
    b, h, t, d = keys.shape
    nc = t // chunk
    span = nc * chunk
    half = chunk // 2
    src_off, dst_off = parity, 1 - parity
    kc = keys[:, :, :span].float().reshape(b, h, nc, chunk, d)  # (B, H, nc, c, D)
    a = F.normalize(kc[:, :, :, src_off::2][..., :half, :], dim=-1)  # (B, H, nc, c/2, D)
    bb = F.normalize(kc[:, :, :, dst_off::2][..., :half, :], dim=-1)  # (B, H, nc, c/2, D)
    sim, match = (a @ bb.transpose(-1, -2)).max(dim=-1)  # (B, H, nc, c/2) each
    pick = sim.reshape(b, h, nc * half).topk(r, dim=-1).indices  # (B, H, r) flat source slots
    chunk_i, slot = pick // half, pick % half
    src = chunk_i * chunk + src_off + 2 * slot  # (B, H, r) entry index
    dst = chunk_i * chunk + dst_off + 2 * match.reshape(b, h, nc * half).gather(-1, pick)

    w = counts.float()  # (B, H, T)
    ws = w.gather(-1, src)  # (B, H, r)
    num_k = keys.float() * w.unsqueeze(-1)  # (B, H, T, D) weighted sums
    num_v = values.float() * w.unsqueeze(-1)
    gi_src, gi_dst = src.unsqueeze(-1).expand(-1, -1, -1, d), dst.unsqueeze(-1).expand(-1, -1, -1, d)
    num_k.scatter_add_(2, gi_dst, num_k.gather(2, gi_src))
    num_v.scatter_add_(2, gi_dst, num_v.gather(2, gi_src))
    w = w.scatter_add(-1, dst, ws)
    new_k = (num_k / w.unsqueeze(-1)).to(keys.dtype)
    new_v = (num_v / w.unsqueeze(-1)).to(values.dtype)

    order = torch.arange(t, device=keys.device).expand(b, h, t).clone()  # (B, H, T)
    order.scatter_(-1, src, t + src)  # push merged sources to the end, keep the rest in order
    keep = order.sort(dim=-1).values[..., : t - r] % t  # (B, H, T - r)... sources sorted last
    gk = keep.unsqueeze(-1).expand(-1, -1, -1, d)
    return new_k.gather(2, gk), new_v.gather(2, gk), w.gather(-1, keep).round().to(counts.dtype)


def expand(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Repeat entry i of (B, H, T, D) ``x`` counts[b, h, i] times; every head must total the same count."""
    b, h, t, d = x.shape
    ends = counts.long().cumsum(-1)  # (B, H, T)
    total = int(ends[0, 0, -1]) if t else 0
    pos = torch.arange(total, device=x.device).expand(b, h, total).contiguous()  # (B, H, N)
    idx = torch.searchsorted(ends, pos, right=True)  # (B, H, N) entry holding expanded slot
    return x.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, d))


class ClusterLayer(DynamicLayer):
    """A full-attention layer holding centroids (keys, values, counts) of at most ``target`` entries."""

    def __init__(self, ratio: float = 0.5, budget: int = 0, chunk: int = 32, window: int = 64, sink: int = 4,
                 share: float = 0.5):
        super().__init__()
        self.ratio, self.budget, self.chunk, self.window, self.sink = ratio, budget, chunk, window, sink
        self.share = share
        self.seen = 0
        self.counts: torch.Tensor | None = None  # (B, H, T) int32 tokens each entry stands for
        self.rounds = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.counts = torch.zeros(*key_states.shape[:2], 0, dtype=torch.int32, device=key_states.device)
        b, h, n, _ = key_states.shape
        held = self.keys.dim() == 4
        keys = torch.cat([self.keys, key_states], dim=-2) if held else key_states  # (B, H, T, D)
        values = torch.cat([self.values, value_states], dim=-2) if held else value_states
        ones = torch.ones(b, h, n, dtype=torch.int32, device=key_states.device)
        counts = torch.cat([self.counts, ones], dim=-1)
        self.seen += n
        out_k, out_v = (expand(keys, counts), expand(values, counts)) if held else (keys, values)
        self.keys, self.values, self.counts = self._compress(keys, values, counts)
        return out_k, out_v

    def _compress(self, keys, values, counts):
        target = kept_tokens(self.seen, self.ratio, self.budget)
        s = min(self.sink, keys.shape[-2])  # first entries (attention sinks) are never merged
        while keys.shape[-2] > target:
            t = keys.shape[-2]
            end = s + max(0, t - s - self.window) // self.chunk * self.chunk  # mergeable: entries s..end
            sources = (end - s) // self.chunk * (self.chunk // 2)
            if sources <= 0:
                break  # too few entries outside sink + window to merge: keep them (bounded)
            r = min(t - target, max(1, int(self.share * sources)))
            mk, mv, mc = merge_round(keys[:, :, s:end], values[:, :, s:end], counts[..., s:end],
                                     r, self.chunk, self.rounds % 2)
            keys = torch.cat([keys[:, :, :s], mk, keys[:, :, end:]], dim=-2)
            values = torch.cat([values[:, :, :s], mv, values[:, :, end:]], dim=-2)
            counts = torch.cat([counts[..., :s], mc, counts[..., end:]], dim=-1)
            self.rounds += 1
        return keys, values, counts

    def get_seq_length(self) -> int:
        return self.seen  # attention sees every token (centroids repeated by their counts)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a clustered cache cannot be cropped")

    def reset(self) -> None:
        self.__init__(self.ratio, self.budget, self.chunk, self.window, self.sink, self.share)

    def nbytes(self) -> int:
        return tensor_bytes(self.keys, self.values, self.counts)


# ------------------------------------------------------------------------------------ method mixin
class ClusterMethod:
    def make_cache(self, model, info):
        from .base import CompressedCache

        return CompressedCache(model, lambda i: ClusterLayer(self.ratio, self.budget, self.chunk, self.window,
                                                             self.sink, self.share))

    def kv_cache_bytes(self, info, tokens: int) -> int:
        from .base import dtype_bytes, split_layers

        full, sliding_bytes = split_layers(info, tokens)
        floor = self.sink + self.window + self.chunk
        kept = max(kept_tokens(tokens, self.ratio, self.budget), min(tokens, floor))
        per_entry = 2 * info.kv_heads * info.head_dim * dtype_bytes(info) + 4 * info.kv_heads
        return full * kept * per_entry + sliding_bytes

