"""The default reader: chunked prefill equals one pass, cached greedy decoding equals recomputation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from longreach.engine import greedy_decode, prefill


def _ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


@pytest.mark.parametrize("chunk", [1, 7, 16, 50, 200])
def test_chunked_prefill_equals_single_pass(tiny, chunk):
    ids = _ids(120)
    with torch.inference_mode():
        full = tiny.model(torch.tensor([ids])).logits[:, -1]  # (1, V)
    cache = DynamicCache(config=tiny.model.config)
    chunked = prefill(tiny.model, ids, cache, chunk)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)


def test_sliding_layers_keep_only_their_window(gemma):
    ids = _ids(100)
    cache = DynamicCache(config=gemma.model.config)
    prefill(gemma.model, ids, cache, 32)
    held = [layer.keys.shape[-2] for layer in cache.layers]  # (B, kv, T, hd) per layer
    sw = gemma.model.config.sliding_window
    assert held[-1] == 100  # the full-attention layer holds every token
    assert all(h < 100 and h >= sw - 1 for h in held[:-1]), held


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 90), chunk=st.integers(1, 64))
def test_chunked_prefill_property_llama(n, chunk):
    from conftest import tiny_llama

    model = tiny_llama()
    ids = _ids(n, seed=n)
    with torch.inference_mode():
        full = model(torch.tensor([ids])).logits[:, -1]
    got = prefill(model, ids, DynamicCache(config=model.config), chunk)
    torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-5)


def test_cached_greedy_equals_recompute(tiny):
    ids = _ids(40)
    cache = DynamicCache(config=tiny.model.config)
    logits = prefill(tiny.model, ids, cache, 16)
    out = greedy_decode(tiny.model, cache, logits, len(ids), 12, stop=set())
    assert len(out) == 12
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(12):  # no cache: recompute the whole sequence each step
            seq.append(int(tiny.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out == seq[len(ids):]


def test_decode_stops_at_stop_token(llama):
    ids = _ids(10)
    cache = DynamicCache(config=llama.model.config)
    logits = prefill(llama.model, ids, cache, 8)
    first = int(logits[0].argmax())
    assert greedy_decode(llama.model, cache, logits, len(ids), 5, stop={first}) == []


def test_ignore_eos_decodes_every_step_and_cuts_the_answer_at_eos(llama, monkeypatch):
    """Decode-speed cells force N steps: every step runs, but the answer still ends at the first EOS."""
    from longreach import Engine
    from longreach.readers import Request

    engine = Engine.for_model(llama)
    doc = "The sky is blue. " * 6
    free = engine.run("none", Request(doc, "Colour?", max_new_tokens=6))
    assert free.output_ids, "the tiny model should decode something"
    first = free.output_ids[0]
    monkeypatch.setattr(engine, "eos_ids", lambda: {first})  # the first token it emits now ends the answer
    stopped = engine.run("none", Request(doc, "Colour?", max_new_tokens=6))
    forced = engine.run("none", Request(doc, "Colour?", max_new_tokens=6, ignore_eos=True))
    assert stopped.output_ids == [] and stopped.answer == ""
    assert len(forced.output_ids) == 6 and forced.output_ids[: len(free.output_ids)] == free.output_ids
    assert forced.answer == ""  # cut at the EOS the model emitted first
