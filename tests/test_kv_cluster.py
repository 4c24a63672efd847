"""kv-cluster: merges keep the attention mass (a centroid of m tokens weighs like m tokens), counts add
up to the tokens seen, the layer holds its target, expansion equals per-head repeat_interleave."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.kv.cluster import ClusterLayer, expand, merge_round


def _attend(q, k, v, bias=None):
    """Reference attention of one query (D,) over (T, D) with an optional per-key logit bias."""
    logits = k @ q + (0 if bias is None else bias)
    w = logits.softmax(-1)
    return w @ v, torch.logsumexp(logits, -1)


def test_merging_duplicates_preserves_mass_and_output():
    g = torch.Generator().manual_seed(0)
    base_k, base_v = torch.randn(1, 2, 16, 8, generator=g), torch.randn(1, 2, 16, 8, generator=g)
    k = base_k.repeat_interleave(2, dim=2)  # (1, 2, 32, 8): every key twice, side by side
    v = base_v.repeat_interleave(2, dim=2)
    counts = torch.ones(1, 2, 32, dtype=torch.int32)
    mk, mv, mc = merge_round(k, v, counts, r=16, chunk=8, parity=0)
    assert mk.shape[-2] == 16 and torch.all(mc == 2)
    torch.testing.assert_close(mk, base_k)
    for _ in range(5):
        q = torch.randn(8, generator=g)
        for h in range(2):
            out_ref, mass_ref = _attend(q, k[0, h], v[0, h])
            out, mass = _attend(q, mk[0, h], mv[0, h], bias=mc[0, h].float().log())  # log(m) in the logit
            torch.testing.assert_close(mass, mass_ref)  # total (log-)mass identical
            torch.testing.assert_close(out, out_ref)
            # the cache's way: centroids repeated m times give the same attention
            out_x, mass_x = _attend(q, expand(mk, mc)[0, h], expand(mv, mc)[0, h])
            torch.testing.assert_close(out_x, out_ref)
            torch.testing.assert_close(mass_x, mass_ref)


def test_centroid_is_count_weighted_mean():
    k = torch.zeros(1, 1, 4, 2)
    k[0, 0, 0], k[0, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.1])  # similar pair
    k[0, 0, 2], k[0, 0, 3] = torch.tensor([0.0, 1.0]), torch.tensor([-1.0, -5.0])
    v = k.clone()
    counts = torch.tensor([[[3, 1, 1, 1]]], dtype=torch.int32)
    mk, mv, mc = merge_round(k, v, counts, r=1, chunk=4, parity=0)
    # source 0 (count 3) merges into its most similar destination, entry 1 (count 1)
    torch.testing.assert_close(mk[0, 0, 0], (3 * k[0, 0, 0] + k[0, 0, 1]) / 4)
    assert mc.tolist() == [[[4, 1, 1]]]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 40))
def test_expand_equals_repeat_interleave(seed, t):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, t, 4, generator=g)
    total = t + 5
    counts = torch.ones(1, 3, t, dtype=torch.int32)
    for h in range(3):  # distribute 5 extra tokens differently per head
        extra = torch.randint(0, t, (5,), generator=g)
        counts[0, h].index_add_(0, extra, torch.ones(5, dtype=torch.int32))
    out = expand(x, counts)
    assert out.shape[-2] == total
    for h in range(3):
        torch.testing.assert_close(out[0, h], x[0, h].repeat_interleave(counts[0, h].long(), dim=0))


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_layer_holds_target_and_counts_sum_to_seen(ratio):
    g = torch.Generator().manual_seed(1)
    layer = ClusterLayer(ratio=ratio, chunk=8, window=8)
    seen = 0
    for n in (40, 40, 1, 1, 1, 30):
        k, v = torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)
        out_k, out_v = layer.update(k, v)
        seen += n
        assert out_k.shape[-2] == seen == layer.get_seq_length()  # attention sees every token's worth
        assert torch.all(layer.counts.sum(-1) == seen)
        target = math.ceil((1 - ratio) * seen)
        assert target <= layer.keys.shape[-2] <= max(target, 4 + 8 + 8)  # sink + window + one chunk
    assert layer.nbytes() < 2 * 2 * seen * 8 * 4 * (1 - ratio) * 1.3


def test_sink_entries_are_never_merged():
    g = torch.Generator().manual_seed(2)
    k = torch.randn(1, 1, 64, 8, generator=g)
    k[:, :, 1::2] = k[:, :, 0::2]  # every pair identical: the most attractive merges include the sink
    layer = ClusterLayer(ratio=0.5, chunk=8, window=8, sink=4)
    layer.update(k, k.clone())
    torch.testing.assert_close(layer.keys[:, :, :4], k[:, :, :4])
    assert torch.all(layer.counts[..., :4] == 1)


@pytest.mark.parametrize("share,kept", [(1.0, False), (0.5, True)])
def test_a_distinct_entry_keeps_its_slot_only_when_rounds_are_capped(share, kept):
    """One update that halves a chunk: with share=1 every source merges (the unlike one too); capped
    rounds merge the most alike first, so the one entry unlike its neighbours survives unmerged."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(8, generator=g)
    k = base + 0.01 * torch.randn(1, 1, 72, 8, generator=g)  # near-identical filler keys
    needle = torch.randn(8, generator=g)
    needle -= (needle @ base) / (base @ base) * base  # orthogonal to the filler
    k[0, 0, 20] = needle  # an even slot: a source of the first round
    layer = ClusterLayer(ratio=0.5, chunk=8, window=8, sink=0, share=share)
    layer.update(k, k.clone())
    assert layer.keys.shape[-2] == 36
    survived = torch.isclose(layer.keys[0, 0], needle, atol=1e-6).all(-1)  # (T,) entries equal to the needle
    assert bool(survived.any()) is kept
    if kept:
        assert int(layer.counts[0, 0][survived]) == 1
