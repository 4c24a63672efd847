"""KIVI-layout quantized cache: packing, quantize/dequantize bounds against a numpy reference, outliers,
real byte savings, and kv-int8 answers equal to full precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from longreach.engine import Engine, prefill
from longreach.kv.quant import dequantize, outlier_mask, pack, quantize, unpack
from longreach.kv.quantized import QuantizedLayer
from longreach.memory import cache_bytes
from longreach.spec import Plan


# ------------------------------------------------------------------ independent numpy references
def np_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    out = np.zeros(codes.shape[:-1] + (codes.shape[-1] // per,), dtype=np.uint8)
    for i in range(per):
        out |= (codes[..., i::per].astype(np.uint8) << np.uint8(bits * i)).astype(np.uint8)
    return out


def np_quant_dequant(x: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float16 min rounded down, float16 scale rounded up, round-to-nearest codes."""
    lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    mn = lo.astype(np.float16)
    mn = np.where(mn.astype(np.float32) > lo, np.nextafter(mn, np.float16(-np.inf)), mn).astype(np.float32)
    sc = ((hi - mn) / (2**bits - 1)).astype(np.float32)
    sc16 = sc.astype(np.float16)
    sc = np.where(sc16.astype(np.float32) < sc, np.nextafter(sc16, np.float16(np.inf)), sc16).astype(np.float32)
    codes = np.clip(np.round((x - mn) / np.maximum(sc, np.finfo(np.float32).tiny)), 0, 2**bits - 1)
    return codes * sc + mn, sc


arrays = st.integers(0, 2**31 - 1).map(lambda s: np.random.default_rng(s))


@pytest.mark.parametrize("bits", [2, 4, 8])
@settings(max_examples=20, deadline=None)
@given(rng=arrays, d=st.sampled_from([8, 16, 64]))
def test_pack_matches_numpy_and_roundtrips(bits, rng, d):
    codes = rng.integers(0, 2**bits, size=(2, 3, 5, d)).astype(np.uint8)
    packed = pack(torch.from_numpy(codes), bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == d * bits // 8
    np.testing.assert_array_equal(packed.numpy(), np_pack(codes, bits))
    np.testing.assert_array_equal(unpack(packed, bits).numpy(), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
@settings(max_examples=25, deadline=None)
@given(rng=arrays, scale=st.floats(1e-3, 1e3), shift=st.floats(-50, 50), axis=st.sampled_from([2, 3]))
def test_quantize_error_bound_and_numpy_reference(bits, rng, scale, shift, axis):
    x = (rng.standard_normal((1, 2, 32, 16)) * scale + shift).astype(np.float32)
    codes, sc, mn = quantize(torch.from_numpy(x), bits, dim=axis)
    got = dequantize(codes, sc, mn, torch.float32).numpy()
    ref, ref_scale = np_quant_dequant(x, bits, axis)
    step = np.broadcast_to(ref_scale, x.shape)
    # KIVI bound: half a quantization step (up to float32 rounding)
    assert np.all(np.abs(got - x) <= 0.5 * step * (1 + 1e-4) + 1e-6 * np.abs(x).max())
    np.testing.assert_array_equal(sc.float().numpy(), ref_scale)
    # same codes as the reference except float ties: at most one step apart, nearly always equal
    assert np.all(np.abs(got - ref) <= step * (1 + 1e-4))
    assert np.mean(np.isclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(x).max())) > 0.99


def test_error_shrinks_with_bits():
    x = torch.randn(1, 2, 64, 32, generator=torch.Generator().manual_seed(0))
    errs = []
    for bits in (2, 4, 8):
        c, s, m = quantize(x, bits, dim=2)
        errs.append((dequantize(c, s, m, torch.float32) - x).abs().max().item())
    assert errs[0] > 3 * errs[1] > 9 * errs[2]


def test_constant_channel_is_exact():
    x = torch.full((1, 1, 32, 8), 3.0)
    c, s, m = quantize(x, 2, dim=2)
    assert torch.equal(dequantize(c, s, m, torch.float32), x)


# ------------------------------------------------------------------ layer
def _stream(layer, x_k, x_v, sizes):
    out = None
    lo = 0
    for n in sizes:
        out = layer.update(x_k[:, :, lo:lo + n], x_v[:, :, lo:lo + n])
        lo += n
    return out


@pytest.mark.parametrize("bits", [2, 4, 8])
@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_layer_keeps_recent_exact_and_bounds_the_rest(bits, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    k, v = torch.randn(1, 2, total, 8, generator=g), torch.randn(1, 2, total, 8, generator=g)
    layer = QuantizedLayer(bits, group=8, residual=16, sink=1)
    _stream(layer, k, v, sizes)
    keys, values = layer.dequantized_keys(), layer.dequantized_values()
    full_k = torch.cat([layer.sink_k, keys, layer.keys], dim=-2)
    full_v = torch.cat([layer.sink_v, values, layer.values], dim=-2)
    assert full_k.shape[-2] == total == layer.get_seq_length()
    tq = layer.quantized_tokens
    assert tq % 8 == 0
    residual = layer.keys.shape[-2]
    assert residual < 16 + 8 and (residual >= 16 or tq == 0)
    torch.testing.assert_close(full_k[:, :, :1], k[:, :, :1], rtol=0, atol=0)  # sink exact
    torch.testing.assert_close(full_k[:, :, 1 + tq:], k[:, :, 1 + tq:], rtol=0, atol=0)  # residual exact
    if tq:
        rng_k = k[:, :, 1:1 + tq].amax() - k[:, :, 1:1 + tq].amin()
        bound = rng_k / (2**bits - 1) / 2 * 1.01 + 1e-5
        assert (full_k[:, :, 1:1 + tq] - k[:, :, 1:1 + tq]).abs().max() <= bound
        assert (full_v[:, :, 1:1 + tq] - v[:, :, 1:1 + tq]).abs().max() <= (v.amax() - v.amin()) / (2**bits - 1)


def test_outliers_are_exact_and_reduce_error():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 2, 64, 16, generator=g)
    k[0, 0, 5, 3], k[0, 1, 40, 7], k[0, 0, 33, 0] = 80.0, -60.0, 45.0
    v = torch.randn(1, 2, 64, 16, generator=g)
    v[0, 1, 10, 2] = 100.0
    errs = {}
    for frac in (0.0, 0.01):
        layer = QuantizedLayer(4, group=32, residual=0, outliers=frac)
        layer.update(k, v)
        dk, dv = layer.dequantized_keys(), layer.dequantized_values()
        errs[frac] = ((dk - k).abs().mean().item(), (dv - v).abs().mean().item())
        if frac:
            for idx in [(0, 0, 5, 3), (0, 1, 40, 7), (0, 0, 33, 0)]:
                assert dk[idx] == k[idx]
            assert dv[0, 1, 10, 2] == 100.0
            assert layer.k_out.index.dtype == torch.int32
        errs[frac] += ((dv - v)[0, 1, 10].abs().max().item(),)  # the token holding the value outlier
    assert errs[0.01][0] < 0.75 * errs[0.0][0] and errs[0.01][1] < errs[0.0][1]
    assert errs[0.01][2] < 0.2 * errs[0.0][2]
    mask = outlier_mask(k, 0.01)
    assert int(mask.sum()) == 2 * round(0.01 * 64 * 16)


def _ids(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(lm, spec, ids, chunk, decode=0):
    """(cache, last prefill logits, decoded tokens) of one engine session."""
    with Engine(lm).session(spec) as s:
        cache = s.make_cache()
        logits = s.prefill(ids, cache, chunk)
        out = s.decode(cache, logits, len(ids), decode, stop_ids=set()) if decode else []
    return cache, logits, out


def test_nbytes_really_shrinks(tiny):
    ids = _ids(240)
    full = DynamicCache(config=tiny.model.config)
    prefill(tiny.model, ids, full, 64)
    held = {}
    for bits in (8, 4, 2):
        plan = Plan.from_spec(f"kv-int{bits}:group=16,residual=16")
        cache, _, _ = _run(tiny, plan, ids, 64)
        held[bits] = cache_bytes(cache)
        est = plan.kv_cache_bytes(tiny.info, len(ids))
        assert held[bits] <= est <= 1.25 * held[bits], (bits, est, held[bits])  # an upper bound, close
    assert held[2] < held[4] < held[8] < 0.5 * cache_bytes(full)
    if tiny.name == "tiny-llama":  # no sliding layers: the ratio is the quantization's own
        assert held[4] < 0.35 * cache_bytes(full)


def test_kv_int8_answer_equals_full_precision(tiny):
    ids = _ids(200, seed=3)
    out = {}
    for spec in ("none", "kv-int8:group=16,residual=16"):
        _, logits, tokens = _run(tiny, spec, ids, 48, decode=10)
        out[spec] = (logits, tokens)
    (l0, t0), (l1, t1) = out.values()
    assert (l0 - l1).abs().max() < 2e-2 * l0.abs().max()
    assert t0 == t1


def test_int4_changes_logits_more_than_int8(llama):
    ids = _ids(200, seed=4)
    diffs = {}
    ref = prefill(llama.model, ids, DynamicCache(config=llama.model.config), 48)
    for bits in (8, 2):
        diffs[bits] = (_run(llama, f"kv-int{bits}:group=16,residual=16", ids, 48)[1] - ref).abs().max().item()
    assert 0 < diffs[8] < diffs[2]


def test_bad_parameters_are_one_line_errors():
    from longreach.errors import SpecError

    for spec in ("kv-int4:group=0", "kvquant:bits=3", "kv-int2:outliers=0.7", "kv-cluster:share=0",
                 "kv-cluster:share=1.5", "kv-cluster:chunk=7"):
        with pytest.raises(SpecError):
            Plan.from_spec(spec)
