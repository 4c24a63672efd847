"""Prefix reuse: KV caches of earlier prompts, kept so that a later prompt sharing a long prefix (the same
document, another question) prefills only what differs.

::

    pc = PrefixCache(max_bytes=2 << 30, min_tokens=256)
    cache, n = pc.lookup(key, ids)      # a private copy of the best entry's cache cropped to n tokens, n
                                        #   (None, 0) when no entry shares >= min_tokens tokens with ids
    pc.store(key, ids, cache, nbytes)   # after the request: takes ownership of a cache holding ids
    pc.bytes_held, pc.entries, pc.queries, pc.hits, pc.hit_tokens

Entries are grouped by ``key`` (the engine uses ``(plan.spec, id(model))``: one plan on one model) and
hold the token ids, the cache and its bytes. A lookup finds, among the entries of its key, the longest
common prefix L with ``ids``, capped at ``len(ids) - 1`` so at least one token is still fed to the model
(it gives the next-token logits); L below ``min_tokens`` is a miss. Memory is bounded: least recently
used entries are evicted until the total fits ``max_bytes``, and an entry bigger than ``max_bytes`` is
never stored. Entries are never changed once stored (a lookup hands out a deep copy), so they may be read
by any number of threads; the bookkeeping is under one lock.

Only caches whose entries for a token do not depend on the rest of the request may be reused: the engine
asks :meth:`longreach.spec.Plan.reuses_prefix` (full-attention layers, no cache method, static rope).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .errors import SettingError


def crop_to(cache: Any, length: int) -> None:
    """Crop a transformers ``Cache`` to its first ``length`` tokens (``Cache.crop`` takes the number of
    tokens to remove, as a negative count, in transformers 5)."""
    held = int(cache.get_seq_length())
    if length > held:
        raise ValueError(f"cannot crop a cache of {held} tokens to {length}")
    if length < held:
        cache.crop(length - held)


def held_bytes(cache: Any) -> int:
    """Bytes of the tensor storage a cache's layers keep alive (a cropped layer is a view that still holds
    its whole storage): each distinct storage of the layers' ``keys`` / ``values`` counted once."""
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "untyped_storage"):
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = int(storage.nbytes())
    return sum(seen.values())


def plan_key(plan: Any, model: Any) -> tuple[str, int]:
    """The key a plan's entries are kept under: its spec on one loaded model (``Engine.complete`` and the
    default reader share it, so either finds the other's prompts)."""
    return (plan.spec, id(model))


def compact(cache: Any) -> None:
    """Copy every layer's ``keys`` / ``values`` into storage of their own size (after a crop they are
    views that keep the whole uncropped storage alive)."""
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                setattr(layer, name, t.clone())


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D integer arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclasses.dataclass
class _Entry:
    key: Any
    ids: np.ndarray  # (n,) int64
    cache: Any
    nbytes: int


class PrefixCache:
    """A bounded, thread-safe LRU (by bytes) of KV caches keyed by (key, token prefix)."""

    def __init__(self, max_bytes: int, min_tokens: int = 256, merge: bool = True):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise SettingError(f"max_bytes must be a whole number of bytes >= 0 (0 = keep nothing), got {max_bytes!r}")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise SettingError(f"min_tokens must be a whole number >= 1, got {min_tokens!r}")
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.merge = merge
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # serial -> entry, least recently used first
        self._serial = 0
        self._bytes = 0
        self._queries = 0
        self._hits = 0
        self._hit_tokens = 0

    # -- read-only statistics
    @property
    def bytes_held(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def entries(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def queries(self) -> int:
        with self._lock:
            return self._queries

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def hit_tokens(self) -> int:
        with self._lock:
            return self._hit_tokens

    # -- use
    def lookup(self, key: Any, ids: list[int]) -> tuple[Any, int]:
        """(a private copy of the best entry's cache cropped to L tokens, L), or (None, 0) on a miss.

        L is the longest common prefix of ``ids`` with an entry of ``key``, capped at ``len(ids) - 1``;
        a hit needs L >= ``min_tokens``. The entry becomes the most recently used one.
        """
        query = np.asarray(ids, dtype=np.int64)
        best: _Entry | None = None
        length = 0
        with self._lock:
            self._queries += 1
            serial = None
            for s, entry in self._entries.items():
                if entry.key != key:
                    continue
                n = min(common_prefix(entry.ids, query), len(query) - 1)
                if n > length:
                    best, length, serial = entry, n, s
            if best is None or length < self.min_tokens:
                return None, 0
            self._entries.move_to_end(serial)
            self._hits += 1
            self._hit_tokens += length
        cache = copy.deepcopy(best.cache)  # outside the lock: stored entries are never changed
        crop_to(cache, length)
        return cache, length

    def store(self, key: Any, ids: list[int], cache: Any, nbytes: int) -> None:
        """Keep ``cache`` (holding exactly ``ids``; this object takes ownership) under ``key``.

        An entry bigger than ``max_bytes``, or too short to ever give a hit, is not kept. An entry of the
        same key whose ids are a prefix of ``ids`` is replaced (every lookup finds at least as much in the
        new one); if ``ids`` is a prefix of a kept entry, that entry is only marked as used. When ``ids``
        and a kept entry share ``min_tokens`` or more tokens and then differ (one document, two
        questions), both are replaced by one entry holding only the shared prefix (the document), so a
        document asked many questions is held once. Then least recently used entries are evicted until
        the total fits ``max_bytes``. ``merge=False`` keeps such prompts as separate entries (the ``agents``
        reader: its chunks share only the prompt's header, or a repeated opening, and each is needed whole).
        """
        nbytes = int(nbytes)
        if nbytes > self.max_bytes or len(ids) < self.min_tokens:
            return
        new = np.asarray(ids, dtype=np.int64)
        with self._lock:
            fork, fork_len = None, 0
            for s, entry in list(self._entries.items()):
                if entry.key != key:
                    continue
                shared = common_prefix(entry.ids, new)
                if shared == len(new):  # ids is a prefix of (or equal to) a kept entry
                    self._entries.move_to_end(s)
                    return
                if shared == len(entry.ids):  # the kept entry is a prefix of ids: superseded
                    del self._entries[s]
                    self._bytes -= entry.nbytes
                elif self.merge and shared >= self.min_tokens and shared > fork_len:
                    fork, fork_len = s, shared
            if fork is not None:  # keep the shared prefix once instead of two full prompts
                old = self._entries.pop(fork)
                self._bytes -= old.nbytes
                crop_to(cache, fork_len)
                compact(cache)
                new, nbytes = new[:fork_len], held_bytes(cache)
            self._serial += 1
            self._entries[self._serial] = _Entry(key, new, cache, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __repr__(self) -> str:
        return (f"PrefixCache(entries={self.entries}, bytes_held={self.bytes_held}, max_bytes={self.max_bytes}, "
                f"min_tokens={self.min_tokens})")


__all__ = ["PrefixCache", "common_prefix", "compact", "crop_to", "held_bytes"]
