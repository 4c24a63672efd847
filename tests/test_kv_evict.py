"""Eviction caches (snapkv, h2o, knorm): exactly the budget is kept, dropped entries are really gone,
scores match an independent eager-attention reference, question-agnostic mode keeps the question."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from longreach.engine import Engine, prefill
from longreach.kv.base import CompressedCache, question_start
from longreach.kv.evict import EvictingLayer
from longreach.spec import Plan


def _ids(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _filled(lm, spec, ids, chunk, decode=0, context_end=None):
    """The plan's cache after chunked prefill (+ ``decode`` greedy tokens), through an engine session."""
    with Engine(lm).session(spec) as s:
        cache = s.make_cache()
        if context_end is not None:
            cache.set_context_end(context_end)
        logits = s.prefill(ids, cache, chunk)
        if decode:
            s.decode(cache, logits, len(ids), decode, stop_ids=set())
    return cache


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10), budget=st.integers(4, 40),
       window=st.integers(0, 4))
def test_knorm_keeps_exactly_the_budget_and_the_smallest_norms(sizes, budget, window):
    g = torch.Generator().manual_seed(sum(sizes))
    layer = EvictingLayer("knorm", budget=budget, window=window)
    seen = []
    for n in sizes:
        k, v = torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)
        seen.append(k)
        out_k, _ = layer.update(k, v)
        total = sum(x.shape[-2] for x in seen)
        assert out_k.shape[-2] <= budget + n  # attention saw the kept entries plus the new chunk
        assert layer.keys.shape[-2] == layer.values.shape[-2] == min(total, budget)
        assert layer.scores.shape[-1] == min(total, budget)
        assert layer.keys.is_contiguous() and layer.keys.untyped_storage().nbytes() <= (
            layer.keys.numel() * layer.keys.element_size())  # dropped entries are not kept alive by a view
    # the last update: kept = the window + the smallest-norm keys of what the layer held then (per head)
    allk = torch.cat(seen, dim=-2)
    if allk.shape[-2] <= budget:
        torch.testing.assert_close(layer.keys, allk)


def test_knorm_selection_matches_reference():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 2, 50, 4, generator=g), torch.randn(1, 2, 50, 4, generator=g)
    layer = EvictingLayer("knorm", budget=20, window=5)
    layer.update(k, v)
    for h in range(2):
        norms = k[0, h, :45].norm(dim=-1)
        ref = sorted(norms.argsort()[:15].tolist() + list(range(45, 50)))
        expect = k[0, h, ref]
        torch.testing.assert_close(layer.keys[0, h], expect)
        torch.testing.assert_close(layer.values[0, h], v[0, h, ref])


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_ratio_keeps_ceil_fraction_of_seen(ratio):
    layer = EvictingLayer("knorm", ratio=ratio, window=2)
    total = 0
    for n in (7, 13, 1, 1, 20):
        layer.update(torch.randn(1, 1, n, 4), torch.randn(1, 1, n, 4))
        total += n
        assert layer.get_seq_length() == math.ceil((1 - ratio) * total)


def _reference_snapkv_keep(builder, ids, layer_idx, budget, window, pool):
    """Keep-set of SnapKV from an eager full forward (output_attentions), independent of the hooks."""
    model = builder()
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        att = model(torch.tensor([ids]), output_attentions=True).attentions[layer_idx]  # (1, Hq, T, T)
    cfg = model.config
    hkv = cfg.num_key_value_heads
    t = len(ids)
    mass = att[0, :, t - window:, :].sum(dim=1)  # (Hq, T)
    mass = mass.view(hkv, -1, t).mean(dim=1)  # (Hkv, T)
    mass = F.avg_pool1d(mass.unsqueeze(1), pool, stride=1, padding=pool // 2, count_include_pad=False).squeeze(1)
    mass[:, t - window:] = torch.inf
    return mass.topk(budget, dim=-1).indices.sort(dim=-1).values  # (Hkv, budget)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_snapkv_scores_match_eager_attention(arch):
    import conftest

    builder = conftest.TINY_BUILDERS[arch]
    lm = conftest.wrap(builder(), arch)
    ids = _ids(90, seed=2)
    # one chunk: one compression with the last 8 queries
    cache = _filled(lm, "snapkv:budget=30,window=8,pool=5,question_aware=true", ids, 200)
    full_layers = [i for i, t in enumerate(lm.info.layer_types) if t == "full_attention"]
    k_full = DynamicCache(config=lm.model.config)
    prefill(lm.model, ids, k_full, 200)
    for i in full_layers:
        keep = _reference_snapkv_keep(builder, ids, i, 30, 8, 5)
        ref_keys = k_full.layers[i].keys[0].gather(1, keep.unsqueeze(-1).expand(-1, -1, lm.info.head_dim))
        torch.testing.assert_close(cache.layers[i].keys[0], ref_keys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["snapkv", "h2o", "knorm"])
def test_decoding_keeps_exactly_the_budget(tiny, spec):
    ids = _ids(120, seed=1)
    cache = _filled(tiny, f"{spec}:budget=40,window=8,question_aware=true", ids, 32, decode=6)
    for layer, kind in zip(cache.layers, tiny.info.layer_types):
        if kind == "full_attention":
            assert layer.keys.shape[-2] == 40
    assert cache.nbytes() < Plan.from_spec("none").kv_cache_bytes(tiny.info, len(ids) + 6)


@pytest.mark.parametrize("spec", ["snapkv", "h2o", "knorm"])
def test_question_agnostic_keeps_question_and_answer(llama, spec):
    ids = _ids(150, seed=5)
    cache = _filled(llama, f"{spec}:budget=30,window=4", ids, 64, decode=5, context_end=130)  # 130..: question
    assert isinstance(cache, CompressedCache) and not cache.question_aware
    full = DynamicCache(config=llama.model.config)
    prefill(llama.model, ids, full, 64)
    for layer in cache.layers:
        assert layer.keys.shape[-2] == 30 + 20 + 4  # budget + question + decoded (last token not cached)
    # first layer's keys depend only on the tokens: the question's keys are kept exactly, after the context
    torch.testing.assert_close(cache.layers[0].keys[:, :, 30:50], full.layers[0].keys[:, :, 130:150])


def test_h2o_matches_reference_accumulated_attention(llama):
    """One chunk: h2o scores = total attention each key received from all queries (eager reference)."""
    import conftest

    ids = _ids(60, seed=7)
    cache = _filled(llama, "h2o:budget=100,question_aware=true", ids, 64)
    model = conftest.tiny_llama()
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        att = model(torch.tensor([ids]), output_attentions=True).attentions
    for i, layer in enumerate(cache.layers):
        ref = att[i][0].sum(dim=1).view(2, 2, -1).mean(dim=1)  # (Hkv, T): sum over queries, mean over group
        torch.testing.assert_close(layer.scores[0], ref, rtol=1e-4, atol=1e-4)


def test_question_start_finds_the_question(llama):
    from longreach.prompt import build_prompt, encode

    text = build_prompt(llama.tokenizer, "some document text " * 5, "Where is it?")
    ids = encode(llama.tokenizer, text)
    at = question_start(llama.tokenizer, text, ids, "Where is it?")
    assert llama.tokenizer.decode(ids[at:]).startswith("Where is it?")


def test_bad_parameters():
    from longreach.errors import SpecError

    for spec in ("snapkv:ratio=1.0", "snapkv:pool=4", "h2o:budget=8,window=16", "knorm:ratio=-0.1"):
        with pytest.raises(SpecError):
            Plan.from_spec(spec)
