"""flexrope (FAR's linear temporal decay) and v2pe (variable position increments) against their definitions.

Independent references: a naive eager softmax(QK^T * scale - decay * (m - n)) V with a full score map;
V2PE positions from a plain Python loop over p_i = p_{i-1} + step_i and RoPE cos/sin at those positions
computed in numpy; ``none`` and ``pi:factor=2`` runs of the same tiny models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longreach.engine import Engine
from longreach.errors import SpecError
from longreach.kv.base import attention_modules
from longreach.methods.attention.flexrope import biased_partial_attention, decayed_attention, horizon
from longreach.methods.attention.v2pe import V2PECache, v2pe_positions
from longreach.spec import Plan, build_method, parse_spec

sys.path.insert(0, str(Path(__file__).parent))
from conftest import byte_tokenizer  # noqa: E402


# ------------------------------------------------------------------------------------------- helpers
def qkv(t: int, h: int = 4, hkv: int = 2, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g),
            torch.randn(1, hkv, t, d, generator=g))


def naive_decayed(q, k, v, q_pos, k_pos, scale, decay):
    """The definition: one (T, S) score map, causal, minus decay * distance, one softmax. -> (B, T, H, D)"""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    dist = (q_pos[:, None] - k_pos[None, :]).double()
    s = (q.double() @ k.double().transpose(-1, -2)) * scale - decay * dist
    s = s.masked_fill(dist < 0, float("-inf"))
    return (s.softmax(-1) @ v.double()).transpose(1, 2).float()


def prefill_logits(lm, spec: str, ids: list[int], chunk: int = 40) -> torch.Tensor:
    with Engine(lm).session(spec) as s:
        return s.prefill(ids, s.make_cache(), chunk)


def tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


def pre_hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in attention_modules(model))


# ------------------------------------------------------------------------------------------ flexrope
@pytest.mark.parametrize("decay", [1e-3, 0.05, 0.7, 4.0])  # 4.0: horizon 15 < T, the cutoff is exercised
@pytest.mark.parametrize("blocks", [(5, 7), (1024, 1024)])
def test_decayed_attention_equals_naive_reference(decay, blocks):
    q, k, v = qkv(41)
    pos = torch.arange(41)
    out = decayed_attention(q, k, v, pos, pos, 0.35, decay, block_q=blocks[0], block_k=blocks[1])
    torch.testing.assert_close(out, naive_decayed(q, k, v, pos, pos, 0.35, decay), rtol=1e-5, atol=1e-5)


def test_decayed_attention_with_a_cache_and_offset_positions():
    """Queries after cached keys (decode / later chunks): positions 100.., keys 90..."""
    q, _, _ = qkv(6, seed=1)
    _, k, v = qkv(16, seed=2)
    q_pos, k_pos = torch.arange(100, 106), torch.arange(90, 106)
    out = decayed_attention(q, k, v, q_pos, k_pos, 0.3, 0.2, block_q=4, block_k=3)
    torch.testing.assert_close(out, naive_decayed(q, k, v, q_pos, k_pos, 0.3, 0.2), rtol=1e-5, atol=1e-5)


def test_biased_tile_fused_and_plain_paths_agree():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 3, 5, 8, generator=g)  # (B, Hkv, g, Tq, D)
    k, v = torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    bias = -torch.rand(5, 9, generator=g) * 3
    bias[1] = float("-inf")  # a row that sees no key
    fused = biased_partial_attention(q, k, v, bias, 0.3)
    plain = biased_partial_attention(q.double(), k.double(), v.double(), bias.double(), 0.3)  # not fused
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-5)
    assert torch.isneginf(fused[1][..., 1, :]).all()


def test_horizon_skips_only_negligible_keys():
    assert horizon(0.5) == 120 and horizon(60.0) == 1


def test_flexrope_decay_zero_is_exactly_none(tiny):
    ids = tokens(90)
    hooks = pre_hook_count(tiny.model)
    assert torch.equal(prefill_logits(tiny, "flexrope:decay=0", ids), prefill_logits(tiny, "none", ids))
    assert Plan.from_spec("flexrope:decay=0").reach(tiny.info) == tiny.info.window  # no extension claimed
    assert pre_hook_count(tiny.model) == hooks


def test_flexrope_changes_logits_and_cached_decode_equals_recompute(tiny):
    ids = tokens(70, seed=4)
    base = prefill_logits(tiny, "none", ids)
    flex = prefill_logits(tiny, "flexrope:decay=0.3", ids)
    assert (flex - base).abs().max() > 1e-3  # not a silent no-op
    torch.testing.assert_close(prefill_logits(tiny, "flexrope:decay=0.3", ids, chunk=7), flex, rtol=1e-4, atol=1e-4)
    with Engine(tiny).session("flexrope:decay=0.3") as s:  # cached greedy decode
        cache = s.make_cache()
        out = s.decode(cache, s.prefill(ids, cache, 32), len(ids), 5, stop_ids=set())
    seq = list(ids)
    with Engine(tiny).session("flexrope:decay=0.3"), torch.inference_mode():  # no cache, whole sequence each step
        for _ in range(5):
            seq.append(int(tiny.model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    assert out == seq[len(ids):]


def test_flexrope_default_decay_and_reach(llama):
    m = build_method(parse_spec("flexrope")[0])
    assert m.resolve(llama.info) == pytest.approx(20 / llama.info.window)
    assert m.reach(llama.info) is None  # a soft window: any input length
    assert build_method(parse_spec("flexrope:decay=0.0001")[0]).reach(llama.info) == llama.info.window


# ---------------------------------------------------------------------------------------------- v2pe
def loop_positions(n: int, delta: float, context_end: int | None) -> np.ndarray:
    """p_0 = 0, p_i = p_{i-1} + (delta if token i is a document token else 1)."""
    p = [0.0]
    for i in range(1, n):
        p.append(p[-1] + (delta if context_end is None or i < context_end else 1.0))
    return np.array(p)


@pytest.mark.parametrize("delta,end", [(0.5, 10), (0.25, 1), (0.3, None), (1.0, 7), (0.125, 0)])
def test_v2pe_positions_follow_the_increment_rule(delta, end):
    got = v2pe_positions(torch.arange(40), delta, end).double().numpy()
    np.testing.assert_allclose(got, loop_positions(40, delta, end), rtol=0, atol=1e-5)


def capture_embeddings(lm, spec, ids, context_end, decode_steps=0):
    """Prefill (+ greedy decode) under ``spec``; the (position_ids, cos, sin) each attention module received."""
    seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def grab(module, args, kwargs):
        cos, sin = kwargs["position_embeddings"]
        seen.append((module.layer_idx, kwargs["position_ids"][0].clone(), cos[0].float().clone(), sin[0].float().clone()))

    with Engine(lm).session(spec) as s:
        handles = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in attention_modules(lm.model)]
        try:  # registered after the method's hook: sees what the attention module applies
            cache = s.make_cache()
            cache.context_end = context_end
            logits = s.prefill(ids, cache, 25)
            if decode_steps:
                s.decode(cache, logits, len(ids), decode_steps, stop_ids=set())
        finally:
            for h in handles:
                h.remove()
    return seen


def numpy_rope(positions: np.ndarray, base: float, dim: int) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = positions[:, None] * inv[None]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang), np.sin(ang)


def test_v2pe_rotation_is_rope_at_fractional_positions_and_decode_continues(tiny):
    n, end, delta, steps = 60, 41, 0.5, 3
    seen = capture_embeddings(tiny, f"v2pe:delta={delta}", tokens(n), end, decode_steps=steps)
    expected = loop_positions(n + steps, delta, end)
    types = tiny.info.layer_types
    for layer, index, cos, sin in seen:
        kind = types[layer]
        pos = index.numpy()
        if kind == "sliding_attention":  # Gemma 3's local layers keep integer positions
            want = pos.astype(np.float64)
        else:
            want = expected[pos]
        c, s = numpy_rope(want, tiny.info.rope_theta(kind), cos.shape[-1])
        np.testing.assert_allclose(cos.numpy(), c, atol=2e-4)
        np.testing.assert_allclose(sin.numpy(), s, atol=2e-4)
    decoded = sorted({int(i) for _, index, _, _ in seen for i in index if int(i) >= n})
    assert decoded == [n, n + 1]  # decode steps ran at token indices n.. (the last token is never fed back)
    assert expected[n] == pytest.approx(delta * (end - 1) + (n - end + 1))  # question / answer steps are 1


def test_v2pe_relative_positions_are_preserved_in_float32(llama):
    """Scores from the fractional rotation depend only on p(m) - p(n): shifting both moves nothing."""
    from longreach.methods.rope.base import find_rotary

    rotary = find_rotary(llama.model)
    g = torch.Generator().manual_seed(5)
    d = llama.info.head_dim
    q, k = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)  # (B, H, 1, D)

    def score(pm: float, pn: float) -> float:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = rotary(q, torch.tensor([[pm, pn]], dtype=torch.float32))
        qr, _ = apply_rotary_pos_emb(q, q, cos[:, :1], sin[:, :1])
        kr, _ = apply_rotary_pos_emb(k, k, cos[:, 1:], sin[:, 1:])
        return float((qr * kr).sum())

    pm, pn = float(v2pe_positions(torch.tensor(200), 0.5, 150)), float(v2pe_positions(torch.tensor(37), 0.5, 150))
    assert pm == 74.5 + 51 and pn == 18.5
    for shift in (0.25, 3.5, 1000.75):
        assert score(pm + shift, pn + shift) == pytest.approx(score(pm, pn), abs=2e-4)


def test_v2pe_delta_one_is_exactly_none(tiny):
    ids = tokens(80, seed=6)
    hooks = pre_hook_count(tiny.model)
    assert torch.equal(prefill_logits(tiny, "v2pe:delta=1", ids), prefill_logits(tiny, "none", ids))
    assert pre_hook_count(tiny.model) == hooks  # hooks removed with the request


def test_v2pe_without_a_question_is_position_interpolation(llama):
    """Every token a document token: positions i * 0.5, the same rotation as pi:factor=2."""
    ids = tokens(90, seed=7)
    v2pe = prefill_logits(llama, "v2pe:delta=0.5", ids)
    torch.testing.assert_close(v2pe, prefill_logits(llama, "pi:factor=2", ids), rtol=1e-5, atol=1e-5)
    assert (v2pe - prefill_logits(llama, "none", ids)).abs().max() > 1e-4


def test_v2pe_cache_learns_the_question_start():
    tok = byte_tokenizer()
    prompt = "Some long document text.\n\nWhat is the key?"
    ids = [256, *tok(prompt, add_special_tokens=False).input_ids]
    cache = V2PECache(None)
    cache.prepare(tok, prompt, ids, "What is the key?")
    assert cache.context_end == 1 + prompt.index("What")
    cache.prepare(tok, prompt, ids, "not in the prompt")
    assert cache.context_end == len(ids)


def test_v2pe_reach_and_composition(llama):
    assert Plan.from_spec("v2pe:delta=0.25").reach(llama.info) == 4 * llama.info.window
    Plan.from_spec("yarn:factor=2+v2pe").check(llama.info)  # a rope method composes
    with pytest.raises(SpecError):
        Plan.from_spec("v2pe+kv-int8")  # it brings its cache


@pytest.mark.parametrize("spec,word", [("v2pe:delta=0", "delta"), ("v2pe:delta=1.5", "delta"),
                                       ("flexrope:decay=-1", "decay"), ("flexrope:decay=nan", "decay")])
def test_bad_parameters_are_one_line_errors(spec, word):
    with pytest.raises(SpecError, match=word) as err:
        Plan.from_spec(spec)
    assert "\n" not in str(err.value)
