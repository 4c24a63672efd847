"""Score-and-drop cache layer: keeps exactly a budget of entries per KV head, drops the rest for real.

Every ``update`` (a prefill chunk or a decoded token) appends the new entries, hands the full set to
attention, then re-scores and keeps the top ``target`` entries of the compressible part per head
(gathered into new tensors: the dropped ones are freed). ``target`` is ``budget`` when given, else
``ceil((1 - ratio) * tokens seen)``; the last ``window`` compressible entries are always kept.

Question-agnostic mode (the cache's ``context_end`` set): tokens at or after the end of the document
(question, answer) are never scored with nor evicted, they are kept after the compressed context, so
the context is compressed as if the question were not known. Without ``context_end`` every token is
compressible, including the decoded ones (the cache then holds exactly ``target`` after each step).

Scorers (``score(layer, keys, old_scores, q, first_row, prefill)`` -> (B, H, T) float32):
- ``knorm``: ``-||k||`` (low-norm keys draw attention);
- ``snapkv``: attention mass from the last ``window`` queries, averaged over the query heads of each
  KV head, smoothed by 1-D average pooling (kernel ``pool``); decoding adds each new query's mass;
- ``h2o``: attention mass accumulated from every query seen so far.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from .base import attention_probs, kept_tokens, tensor_bytes

Scorer = Callable[..., torch.Tensor]

#: tokens the memory estimate adds for the uncompressed question + answer in question-agnostic mode
ASK_ALLOWANCE = 256


def knorm_score(layer: "EvictingLayer", keys: torch.Tensor, old: torch.Tensor, q, first_row, prefill):
    return -keys.float().norm(dim=-1)  # (B, H, T)


def snapkv_score(layer: "EvictingLayer", keys: torch.Tensor, old: torch.Tensor, q, first_row, prefill):
    if q is None:
        return old
    mass = attention_probs(q, keys, first_row)  # (B, H, T)
    if layer.pool > 1:
        b, h, t = mass.shape
        mass = F.avg_pool1d(mass.reshape(b * h, 1, t), layer.pool, stride=1, padding=layer.pool // 2,
                            count_include_pad=False).reshape(b, h, t)
    return mass if prefill else old + mass


def h2o_score(layer: "EvictingLayer", keys: torch.Tensor, old: torch.Tensor, q, first_row, prefill):
    if q is None:
        return old
    return old + attention_probs(q, keys, first_row)


SCORERS: dict[str, tuple[Scorer, str]] = {
    # name: (scorer, which query rows it needs: "none" | "window" | "all")
    "knorm": (knorm_score, "none"),
    "snapkv": (snapkv_score, "window"),
    "h2o": (h2o_score, "all"),
}


class EvictingLayer(DynamicLayer):
    """A full-attention layer holding at most ``target`` compressible entries per KV head."""

    def __init__(self, scorer: str, ratio: float = 0.5, budget: int = 0, window: int = 64, pool: int = 5):
        super().__init__()
        self.scorer_name = scorer
        self.scorer, self.rows = SCORERS[scorer]
        self.ratio, self.budget, self.window, self.pool = ratio, budget, window, pool
        self.seen = 0  # tokens seen
        self.context_end: int | None = None  # absolute token index where the question starts
        self.scores: torch.Tensor | None = None  # (B, H, T) float32, one per held entry
        self.tail = 0  # held entries after context_end (never evicted)
        self._q: torch.Tensor | None = None  # captured queries (B, Hq, r, D) for the coming update
        self._q_first = 0  # chunk row of the first captured query

    # -- query capture (called by the pre-hook before ``update``)
    def compressible_rows(self, n: int) -> int:
        """How many of the next ``n`` tokens lie before ``context_end``."""
        if self.context_end is None:
            return n
        return max(0, min(n, self.context_end - self.seen))

    def query_rows(self, n: int) -> slice | None:
        lim = self.compressible_rows(n)
        if self.rows == "none" or lim == 0:
            return None
        return slice(max(0, lim - self.window), lim) if self.rows == "window" else slice(0, lim)

    def observe(self, q: torch.Tensor, first_row: int) -> None:
        self._q, self._q_first = q, first_row

    # -- transformers layer interface
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.scores = torch.zeros(key_states.shape[0], key_states.shape[1], 0, device=key_states.device)
        n = key_states.shape[-2]
        comp = self.compressible_rows(n)
        held = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        keys = torch.cat([self.keys, key_states], dim=-2) if held else key_states  # (B, H, T, D)
        values = torch.cat([self.values, value_states], dim=-2) if held else value_states
        q, self._q = self._q, None
        if comp:
            self._compress(keys, values, held, n, comp, q)
        else:  # question / answer tokens: appended, never evicted
            pad = torch.zeros(*keys.shape[:2], n, device=keys.device)
            self.keys, self.values, self.scores = keys, values, torch.cat([self.scores, pad], dim=-1)
            self.tail += n
        self.seen += n
        return keys, values

    def _compress(self, keys, values, held, n, comp, q) -> None:
        """Re-score the compressible part and keep its top ``target`` entries per head."""
        if self.tail:
            raise RuntimeError("context tokens arrived after question tokens; set context_end correctly")
        b, h, t, d = keys.shape
        old = torch.cat([self.scores, torch.zeros(b, h, n, device=keys.device)], dim=-1)  # (B, H, T)
        first_row = held + self._q_first
        scores = self.scorer(self, keys, old, q, first_row, n > 1)
        seen_comp = self.seen + comp
        target = kept_tokens(seen_comp, self.ratio, self.budget)
        c = held + comp  # compressible entries (the first c of the T)
        if c > target:
            ranked = scores[..., :c].clone()
            ranked[..., max(0, c - self.window):] = torch.inf  # recent window always kept
            keep = ranked.topk(target, dim=-1).indices.sort(dim=-1).values  # (B, H, target)
            keep = torch.cat([keep, torch.arange(c, t, device=keys.device).expand(b, h, t - c)], dim=-1)
            idx = keep.unsqueeze(-1).expand(-1, -1, -1, d)  # (B, H, kept, D)
            keys, values, scores = keys.gather(2, idx), values.gather(2, idx), scores.gather(2, keep)
        self.keys, self.values, self.scores = keys, values, scores
        self.tail = t - c

    def get_seq_length(self) -> int:
        return self.keys.shape[-2] if self.is_initialized and self.keys.dim() == 4 else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("an evicting cache cannot be cropped")

    def reset(self) -> None:
        self.__init__(self.scorer_name, self.ratio, self.budget, self.window, self.pool)

    def nbytes(self) -> int:
        return tensor_bytes(self.keys, self.values, self.scores)


# ------------------------------------------------------------------------------------ method mixin
class EvictionMethod:
    """Shared behaviour of ``snapkv`` / ``h2o`` / ``knorm`` (fields ratio, budget, window, question_aware)."""

    scorer: str
    pool: int = 1

    def _validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio is the fraction of context dropped, in [0, 1); got {self.ratio}")
        if self.budget < 0 or self.window < 0:
            raise ValueError("budget and window must be >= 0")
        if self.budget and self.budget < self.window:
            raise ValueError(f"budget {self.budget} is smaller than the protected window {self.window}")

    def modifies_model(self, info) -> bool:
        """Query-based scorers (snapkv, h2o) need the query-capture hooks for the request."""
        return SCORERS[self.scorer][1] != "none"

    def install(self, model, info, tokens=None):
        """The query-capture pre-hooks for one request (scorers that need queries); returns their undo."""
        if not self.modifies_model(info):
            return None
        from .base import install_query_hooks

        return install_query_hooks(model)

    def make_cache(self, model, info):
        from .base import CompressedCache

        cache = CompressedCache(model, lambda i: EvictingLayer(self.scorer, self.ratio, self.budget,
                                                               self.window, getattr(self, "pool", 1)))
        cache.question_aware = self.question_aware
        return cache

    def kv_cache_bytes(self, info, tokens: int) -> int:
        from .base import dtype_bytes, split_layers

        full, sliding_bytes = split_layers(info, tokens)
        kept = kept_tokens(tokens, self.ratio, self.budget)
        if not self.question_aware:  # the question and answer are kept on top (length unknown here)
            kept = min(tokens, kept + ASK_ALLOWANCE)
        per_entry = 2 * info.kv_heads * info.head_dim * dtype_bytes(info) + 4 * info.kv_heads
        return full * kept * per_entry + sliding_bytes
