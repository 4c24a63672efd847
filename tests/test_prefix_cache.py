"""PrefixCache: longest shared prefix per key, capped so one token is left to prefill, private cropped
copies, LRU eviction by bytes, entries too big or superseded, counters, threads."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import DynamicCache

from longreach.errors import SettingError
from longreach.prefix_cache import PrefixCache, common_prefix, crop_to, held_bytes

LAYERS = 2


def _cache(ids: list[int]) -> DynamicCache:
    """A real DynamicCache whose entry for token i holds ids[i] (keys) and -ids[i] (values)."""
    cache = DynamicCache()
    for layer in range(LAYERS):
        k = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 2, -1, 4).contiguous()  # (1, 2, n, 4)
        cache.update(k, -k, layer)
    return cache


def _held(cache) -> list[int]:
    return cache.layers[0].keys[0, 0, :, 0].long().tolist()


def _ids(n: int, start: int = 0) -> list[int]:
    return [(start + 7 * i) % 250 for i in range(n)]


def test_settings_are_validated():
    for bad in (-1, 1.5, True, "1g"):
        with pytest.raises(SettingError, match="max_bytes"):
            PrefixCache(bad)
    for bad in (0, -3, 2.0):
        with pytest.raises(SettingError, match="min_tokens"):
            PrefixCache(100, min_tokens=bad)


def test_common_prefix_stops_at_the_first_difference():
    import numpy as np

    a = np.array([1, 2, 3, 4, 5])
    assert common_prefix(a, np.array([1, 2, 3, 4, 5])) == 5
    assert common_prefix(a, np.array([1, 2, 9, 4, 5])) == 2
    assert common_prefix(a, np.array([1, 2])) == 2
    assert common_prefix(a, np.array([7])) == 0
    assert common_prefix(a, np.array([], dtype=int)) == 0


def test_lookup_returns_a_private_copy_cropped_to_the_shared_prefix():
    pc = PrefixCache(1 << 20, min_tokens=4)
    doc = _ids(20)
    stored = _cache(doc)
    pc.store("k", doc, stored, 1000)
    query = doc[:12] + [255, 254, 253]
    cache, n = pc.lookup("k", query)
    assert n == 12 and cache.get_seq_length() == 12 and _held(cache) == doc[:12]
    assert cache.layers[1].values[0, 1, :, 2].tolist() == [-float(t) for t in doc[:12]]
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)  # the caller fills its copy...
    again, n2 = pc.lookup("k", query)
    assert n2 == 12 and _held(again) == doc[:12]  # ...the entry is unchanged
    assert stored.get_seq_length() == 20
    assert (pc.queries, pc.hits, pc.hit_tokens) == (2, 2, 24)


def test_the_same_prompt_leaves_one_token_to_prefill_and_short_matches_miss():
    pc = PrefixCache(1 << 20, min_tokens=8)
    doc = _ids(20)
    pc.store("k", doc, _cache(doc), 1000)
    cache, n = pc.lookup("k", doc)
    assert n == 19 and cache.get_seq_length() == 19  # one token left: it gives the next logits
    cache, n = pc.lookup("k", doc + [1, 2, 3])
    assert n == 20  # a longer prompt takes the whole entry
    assert pc.lookup("k", doc[:7] + [255] * 10) == (None, 0)  # 7 < min_tokens
    assert pc.lookup("k", doc[:8] + [255] * 10)[1] == 8
    assert pc.lookup("other key", doc) == (None, 0)  # another plan / model never matches
    assert pc.lookup("k", doc[:1]) == (None, 0)
    assert (pc.queries, pc.hits) == (6, 3)


def test_the_longest_shared_prefix_wins():
    pc = PrefixCache(1 << 20, min_tokens=12)
    base = _ids(10)
    short = base + _ids(10, start=100)  # shares 10 with the query: below min_tokens with the long one
    long = base + [1, 2, 3, 4, 5, 6] + _ids(4, start=50)  # shares 16
    pc.store("k", short, _cache(short), 100)
    pc.store("k", long, _cache(long), 100)
    pc.store("j", base + [1, 2, 3, 4, 5, 6, 9, 9], _cache(base + [1, 2, 3, 4, 5, 6, 9, 9]), 100)  # other key
    assert pc.entries == 3
    query = base + [1, 2, 3, 4, 5, 6, 8, 8, 8]
    cache, n = pc.lookup("k", query)
    assert n == 16 and _held(cache) == long[:16]


def test_one_document_asked_two_questions_is_kept_once():
    """Two prompts that share >= min_tokens and then differ become one entry holding only the shared
    prefix, in storage of its own size: a third question finds the whole document."""
    pc = PrefixCache(1 << 20, min_tokens=8)
    doc = _ids(40)
    q1, q2, q3 = doc + _ids(6, start=1), doc + _ids(5, start=2), doc + _ids(7, start=3)
    c1 = _cache(q1)
    pc.store("k", q1, c1, held_bytes(c1))
    cache, n = pc.lookup("k", q2)
    assert n == 40 and _held(cache) == doc
    c2 = _cache(q2)
    pc.store("k", q2, c2, held_bytes(c2))
    assert pc.entries == 1
    doc_bytes = held_bytes(_cache(doc))
    assert pc.bytes_held == doc_bytes < held_bytes(c1)  # the prefix only, not a view of the whole prompt
    cache, n = pc.lookup("k", q3)
    assert n == 40 and _held(cache) == doc


def test_merge_false_keeps_prompts_that_share_a_header_whole():
    """The agents' chunk caches: prompts sharing a header (or a repeated opening) stay separate entries,
    and each later prompt finds its own whole prompt, whatever order they were stored in."""
    header = _ids(10, start=3)
    chunks = [header + _ids(30, start=s) for s in (1, 2, 4)]
    for order in ([0, 1, 2], [2, 0, 1]):
        pc = PrefixCache(1 << 20, min_tokens=8, merge=False)
        for i in order:
            c = _cache(chunks[i])
            pc.store("k", chunks[i], c, held_bytes(c))
        assert pc.entries == 3
        for ids in chunks:
            cache, n = pc.lookup("k", ids + _ids(4, start=9))
            assert n == len(ids) and _held(cache) == ids
    merged = PrefixCache(1 << 20, min_tokens=8)  # the default merges them down to the header
    for ids in chunks:
        c = _cache(ids)
        merged.store("k", ids, c, held_bytes(c))
    assert merged.lookup("k", chunks[0] + [1])[1] < len(chunks[0])


def test_lru_by_bytes_evicts_the_least_recently_used_first():
    pc = PrefixCache(300, min_tokens=4)
    docs = [_ids(10, start=s) for s in (1, 2, 3, 4)]
    for d in docs[:3]:
        pc.store("k", d, _cache(d), 100)
    assert pc.entries == 3 and pc.bytes_held == 300
    assert pc.lookup("k", docs[0] + [0])[1] == 10  # doc 0 is now the most recently used
    pc.store("k", docs[3], _cache(docs[3]), 100)  # over budget: doc 1 (least recent) goes
    assert pc.entries == 3 and pc.bytes_held == 300
    assert pc.lookup("k", docs[1] + [0]) == (None, 0)
    assert all(pc.lookup("k", d + [0])[1] == 10 for d in (docs[0], docs[2], docs[3]))
    pc.store("k", _ids(10, start=9), _cache(_ids(10, start=9)), 250)  # needs two evictions
    assert pc.entries == 1 and pc.bytes_held == 250


def test_an_entry_bigger_than_the_budget_or_too_short_is_not_kept():
    pc = PrefixCache(100, min_tokens=8)
    small = _ids(10)
    pc.store("k", small, _cache(small), 60)
    pc.store("k", _ids(10, start=5), _cache(_ids(10, start=5)), 101)  # too big: ignored, evicts nothing
    assert pc.entries == 1 and pc.bytes_held == 60
    pc.store("k", _ids(7, start=9), _cache(_ids(7, start=9)), 10)  # shorter than min_tokens: never a hit
    assert pc.entries == 1
    pc.clear()
    assert pc.entries == 0 and pc.bytes_held == 0


def test_an_entry_that_is_a_prefix_of_a_new_one_is_replaced():
    pc = PrefixCache(1 << 20, min_tokens=4)
    doc = _ids(12)
    pc.store("k", doc, _cache(doc), 100)
    longer = doc + [1, 2, 3]
    pc.store("k", longer, _cache(longer), 130)  # supersedes doc
    assert pc.entries == 1 and pc.bytes_held == 130
    pc.store("k", doc[:10], _cache(doc[:10]), 90)  # a prefix of a kept entry: nothing new to keep
    assert pc.entries == 1 and pc.bytes_held == 130
    pc.store("other", doc, _cache(doc), 100)  # another key is separate
    assert pc.entries == 2


def test_crop_and_held_bytes_of_a_real_cache():
    cache = _cache(_ids(10))
    full = held_bytes(cache)
    assert full == LAYERS * 2 * (2 * 10 * 4) * 4  # layers x (keys, values) x elements x float32
    crop_to(cache, 6)
    assert cache.get_seq_length() == 6 and _held(cache) == _ids(6)
    assert held_bytes(cache) == full  # a cropped view still keeps its whole storage alive
    crop_to(cache, 6)  # no-op
    with pytest.raises(ValueError):
        crop_to(cache, 7)


def test_threads_store_and_look_up_at_once():
    pc = PrefixCache(40 * 100, min_tokens=4)
    errors: list[BaseException] = []
    docs = [_ids(16, start=s) for s in range(8)]

    def work(t: int) -> None:
        try:
            for i in range(40):
                d = docs[(t + i) % len(docs)]
                pc.store("k", d, _cache(d), 100)
                cache, n = pc.lookup("k", d + [t])
                if cache is not None:
                    assert _held(cache) == d[:n] and n == 16
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pc.queries == 240 and pc.hits == pc.hit_tokens // 16
    assert pc.entries <= len(docs) and pc.bytes_held == 100 * pc.entries <= 40 * 100
