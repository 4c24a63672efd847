"""kvquant's two KVQuant ingredients: pre-RoPE key quantization (rotation table filled by a pre-hook,
un-rotate / re-rotate) and the per-layer non-uniform datatype (Fisher-weighted k-means codebooks).

References are independent of the code under test: pre-RoPE keys and their gradients come from forward
hooks on the model's own ``k_proj`` / ``k_norm`` / ``v_proj``, post-RoPE keys from what the cache
received, nearest levels from a brute-force argmin, error bounds from the stored scales.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from longreach.engine import Engine, prefill
from longreach.errors import LongreachError, SpecError
from longreach.kv.calibrate import CalibrationError, calibration_ids, record
from longreach.kv.quant import dequantize, dequantize_nuq, fit_codebook, normalise, quantize, quantize_nuq
from longreach.kv.quantized import QuantizedLayer
from longreach.kv.rotary import RotationError, RotationTable, rotate, unrotate
from longreach.methods.rope.base import default_inv_freq, yarn_temperature
from longreach.models import model_info
from longreach.spec import Plan

SPEC8 = "kvquant:bits=8,group=16,residual=16"


def _ids(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _compressed(cache):
    return {i: layer for i, layer in enumerate(cache.layers) if isinstance(layer, QuantizedLayer)}


def _record_cache_inputs(cache) -> dict[int, list[torch.Tensor]]:
    """Wrap each compressed layer's update to keep the post-RoPE keys the model handed to the cache."""
    seen: dict[int, list[torch.Tensor]] = {}
    for i, layer in _compressed(cache).items():
        seen[i] = []

        def update(k, v, *args, _orig=layer.update, _store=seen[i], **kwargs):
            _store.append(k.detach().clone())
            return _orig(k, v, *args, **kwargs)

        layer.update = update
    return seen


def _key_modules(model):
    """layer index -> module whose output is the pre-RoPE key: k_norm when present (Gemma 3), else k_proj."""
    out = {}
    for m in model.modules():
        if hasattr(m, "k_proj") and hasattr(m, "layer_idx"):
            out[m.layer_idx] = (m.k_norm if hasattr(m, "k_norm") else m.k_proj, m.head_dim)
    return out


def _as_heads(t: torch.Tensor, d: int) -> torch.Tensor:
    """k_proj / v_proj output (B, T, H*D) -> (B, H, T, D); k_norm output is (B, H, T, D) already."""
    if t.dim() == 4:
        return t
    b, n, _ = t.shape
    return t.view(b, n, -1, d).transpose(1, 2)


def _capture_pre_rope(model):
    """Forward hooks collecting the pre-RoPE keys of every layer; returns (store, handles)."""
    store: dict[int, list[torch.Tensor]] = {}
    handles = []
    for i, (mod, d) in _key_modules(model).items():
        store[i] = []
        handles.append(mod.register_forward_hook(
            lambda m, a, out, _s=store[i], _d=d: _s.append(_as_heads(out.detach(), _d).clone())))
    return store, handles


def _bits8_bound(layer: QuantizedLayer) -> torch.Tensor:
    """Per-entry bound on |dequantized - original| of the post-RoPE keys: a pre-RoPE error of at most half
    a step per channel, rotated: |a R e|_i <= a * sqrt(e_i^2 + e_{i+D/2}^2)."""
    step = layer.k_scale.float().repeat_interleave(layer.group, dim=2)  # (B, H, Tq, D)
    half = step.shape[-1] // 2
    pair = 0.5 * torch.sqrt(step[..., :half] ** 2 + step[..., half:] ** 2)  # (B, H, Tq, D/2)
    lo = layer.sink_k.shape[-2]
    c, s = layer.rotations.rows(lo, lo + layer.quantized_tokens)  # (Bc, 1, Tq, D/2)
    a = torch.sqrt(c.float() ** 2 + s.float() ** 2)
    return torch.cat([pair * a, pair * a], dim=-1)


# ------------------------------------------------------------------------------------ pre-RoPE
@pytest.mark.parametrize("compact", [True, False])
def test_unrotate_then_rotate_is_identity_and_gives_pre_rope_keys(tiny, compact):
    with Engine(tiny).session(SPEC8) as session:
        cache = session.make_cache()
        layers = _compressed(cache)
        table = next(iter(layers.values())).rotations
        assert all(layer.rotations is table for layer in layers.values())  # one table per rotary
        if not compact:
            table.source = None  # rows mode: keep half cos / half sin rows
        got = _record_cache_inputs(cache)
        pre, handles = _capture_pre_rope(tiny.model)
        try:
            session.prefill(_ids(240), cache, 64)
        finally:
            for h in handles:
                h.remove()
    assert table.compact is compact and len(table) == 240
    for i in layers:
        post = torch.cat(got[i], dim=-2)  # (B, H, 240, D)
        ref = torch.cat(pre[i], dim=-2)
        c, s = table.rows(0, 240)
        torch.testing.assert_close(c.float() ** 2 + s.float() ** 2, torch.ones_like(c.float()))  # default rope
        un = unrotate(post, c, s)
        torch.testing.assert_close(un, ref, rtol=1e-5, atol=1e-5)  # the model's own pre-RoPE keys
        torch.testing.assert_close(rotate(un, c, s), post, rtol=1e-5, atol=1e-5)


def _check_bits8(layer: QuantizedLayer, post: torch.Tensor) -> None:
    tq, s0 = layer.quantized_tokens, layer.sink_k.shape[-2]
    assert tq > 0 and s0 == layer.sink
    deq = layer.dequantized_keys()
    orig = post[:, :, s0:s0 + tq]
    bound = _bits8_bound(layer)
    err = (deq - orig).abs()
    assert torch.all(err <= bound * (1 + 1e-3) + 1e-6 * orig.abs().max())
    assert err.max() > 0  # really quantized
    torch.testing.assert_close(layer.sink_k, post[:, :, :s0], rtol=0, atol=0)  # sink exact, post-RoPE
    torch.testing.assert_close(layer.keys, post[:, :, s0 + tq:], rtol=0, atol=0)  # residual exact


def test_bits8_keys_within_the_uniform_bound(tiny):
    with Engine(tiny).session(SPEC8) as session:
        cache = session.make_cache()
        got = _record_cache_inputs(cache)
        session.prefill(_ids(240, seed=1), cache, 64)
    for i, layer in _compressed(cache).items():
        _check_bits8(layer, torch.cat(got[i], dim=-2))


def test_pre_rope_under_yarn_attention_factor(llama):
    plan = Plan.from_spec(f"yarn:factor=4+{SPEC8}")
    ids = _ids(240, seed=2)
    with Engine(llama).session("yarn:factor=4"):
        ref = prefill(llama.model, ids, DynamicCache(config=llama.model.config), 48)
    with Engine(llama).session(plan) as session:
        cache = session.make_cache()
        got = _record_cache_inputs(cache)
        logits = session.prefill(ids, cache, 48)
    layers = _compressed(cache)
    table = layers[0].rotations
    assert table.compact  # yarn's installed frequencies reproduce the rows exactly
    c, s = table.rows(0, 240)
    a2 = torch.full_like(c.float(), yarn_temperature(4.0) ** 2)
    torch.testing.assert_close(c.float() ** 2 + s.float() ** 2, a2, rtol=1e-5, atol=1e-5)  # a != 1
    for i, layer in layers.items():
        post = torch.cat(got[i], dim=-2)
        torch.testing.assert_close(rotate(unrotate(post, c, s), c, s), post, rtol=1e-5, atol=1e-5)
        _check_bits8(layer, post)
    assert (logits - ref).abs().max() < 2e-2 * ref.abs().max()


def test_kvquant_bits8_answer_equals_full_precision(tiny):
    ids = _ids(200, seed=3)
    out = {}
    for spec in ("none", SPEC8, SPEC8 + ",datatype=nuq"):
        with Engine(tiny).session(spec) as session:
            cache = session.make_cache()
            logits = session.prefill(ids, cache, 48)
            out[spec] = (logits, session.decode(cache, logits, len(ids), 8, stop_ids=set()))
    (l0, t0), *rest = out.values()
    for logits, toks in rest:
        assert (l0 - logits).abs().max() < 2e-2 * l0.abs().max()
        assert toks == t0


def _rope_rows(positions: torch.Tensor, inv: torch.Tensor, factor: float):
    freqs = positions[..., None].float() * inv  # transformers' formula, (1, n, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * factor, emb.sin() * factor  # (1, n, D)


def test_rotation_table_modes_and_errors():
    inv = default_inv_freq(10000.0, 16).float()
    table = RotationTable(lambda: (inv, 1.25))
    pos = torch.arange(0, 14)[None]
    c, s = _rope_rows(pos, inv, 1.25)
    table.add(0, c[:, :10], s[:, :10], pos[:, :10])
    table.add(0, c[:, :10], s[:, :10], pos[:, :10])  # a second layer, same forward: skipped
    assert table.compact and len(table) == 10 and table.nbytes() == 10 * 4 + 8 * 4
    table.add(10, c[:, 10:12], s[:, 10:12], pos[:, 10:12] + 100)  # positions that do not reproduce the rows
    assert not table.compact and len(table) == 12
    table.add(12, c[:, 12:], s[:, 12:], None)  # no position_ids: rows
    rc, rs = table.rows(0, 14)
    assert torch.equal(rc[:, 0], c[..., :8]) and torch.equal(rs[:, 0], s[..., :8])  # exact, old rows too
    assert table.nbytes() == 2 * 14 * 8 * 4
    with pytest.raises(RotationError, match="pre_rope=false"):
        table.add(20, c, s, pos)  # a gap
    with pytest.raises(RotationError, match="pre_rope=false"):
        table.rows(0, 15)


def test_no_rotary_is_a_one_line_error(llama):
    layer = QuantizedLayer(8, group=8, residual=8, rotations=RotationTable())
    k = torch.randn(1, 2, 32, 8)
    with pytest.raises(RotationError) as exc:  # nothing filled the table: refused, not silently wrong
        layer.update(k, k)
    assert "\n" not in str(exc.value) and "pre_rope=false" in str(exc.value)
    info = dataclasses.replace(llama.info, rope={t: {} for t in llama.info.rope})
    with pytest.raises(SpecError, match="pre_rope=false"):
        Plan.from_spec("kvquant").check(info)
    Plan.from_spec("kvquant:pre_rope=false").check(info)


# ------------------------------------------------------------------------------------ nuq
def test_nuq_codebooks_are_sorted_levels_in_unit_interval(tiny):
    for bits in (2, 4):
        spec = f"kvquant:bits={bits},group=16,residual=16,datatype=nuq"
        with Engine(tiny).session(spec) as session:
            cache = session.make_cache()
        for layer in _compressed(cache).values():
            for cb in layer.codebooks:
                assert cb.shape == (2**bits,) and cb.dtype == torch.float32
                assert torch.all(cb[1:] >= cb[:-1]) and cb.min() >= 0 and cb.max() <= 1
                assert len(torch.unique(cb)) > 2**bits // 2  # a spread of levels, not a collapsed fit
        with Engine(tiny).session(spec) as session:
            again = session.make_cache()  # fitted once per model and settings
        first, second = _compressed(cache), _compressed(again)
        assert all(first[i].codebooks[0] is second[i].codebooks[0] for i in first)


def test_calibration_text_is_essays_or_noise(tiny):
    ids = calibration_ids(tiny.tokenizer, 512)
    assert len(ids) == 512
    text = tiny.tokenizer.decode(ids, skip_special_tokens=True)
    assert text.count(".") > 5 and len(set(text.split())) > 20  # real sentences (essays)


def test_nuq_quantize_matches_brute_force_nearest_level():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, 32, generator=g)
    cb = torch.tensor([0.0, 0.2, 0.45, 1.0])
    codes, span, mn = quantize_nuq(x, cb, dim=-1)
    u = (x - mn.float()) / span.float()
    ref = (u[..., None] - cb).abs().argmin(dim=-1)
    assert torch.equal(codes.long(), ref)
    deq = dequantize_nuq(codes, cb, span, mn, torch.float32)
    torch.testing.assert_close(deq, cb[ref] * span.float() + mn.float())
    assert torch.all(deq.amin(-1, keepdim=True) >= mn.float() - 1e-6)
    assert torch.all(deq.amax(-1, keepdim=True) <= mn.float() + span.float() + 1e-5)


@pytest.mark.parametrize("bits", [2, 4])
def test_nuq_beats_uniform_on_gaussian_data(bits):
    g = torch.Generator().manual_seed(bits)
    train, test = torch.randn(1, 4, 256, 64, generator=g), torch.randn(1, 4, 256, 64, generator=g)
    for dim, shape in ((-1, (1, 4, 256, 64)), (3, (1, 4, 16, 16, 64))):  # values per token, keys per group
        cb = fit_codebook(normalise(train.reshape(shape), dim=dim)[0], bits)
        x = test.reshape(shape)
        codes, span, mn = quantize_nuq(x, cb, dim=dim)
        nuq = dequantize_nuq(codes, cb, span, mn, torch.float32)
        c, s, m = quantize(x, bits, dim=dim)
        uni = dequantize(c, s, m, torch.float32)
        mse_nuq, mse_uni = (nuq - x).pow(2).mean().item(), (uni - x).pow(2).mean().item()
        assert mse_nuq < 0.97 * mse_uni, (dim, mse_nuq, mse_uni)


def test_fit_codebook_kmeans_properties():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([0.1, 0.35, 0.6, 0.9])
    u = (centers[torch.randint(0, 4, (4000,), generator=g)] + 0.005 * torch.randn(4000, generator=g)).clamp(0, 1)
    torch.testing.assert_close(fit_codebook(u, 2), centers, atol=2e-3, rtol=0)  # finds the clusters
    x = torch.rand(20000, generator=g)
    w = torch.where(x < 0.5, 1000.0, 1.0)
    weighted = fit_codebook(x, 2, weight=w)
    assert int((weighted < 0.5).sum()) >= 3  # sensitivity pulls levels to the heavy part
    for weight in (None, torch.rand(20000, generator=g)):
        cb = fit_codebook(x, 2, weight=weight)
        ww = torch.ones_like(x) if weight is None else weight

        def sse(levels, ww=ww):
            return (ww * ((x[:, None] - levels).abs().min(dim=1).values ** 2)).sum()

        assert sse(cb) <= sse(torch.linspace(0, 1, 4)) + 1e-6  # never worse than the uniform grid


def test_record_gives_pre_rope_keys_and_fisher_against_autograd(tiny):
    ids = calibration_ids(tiny.tokenizer, 96)
    data = record(tiny.model, ids, pre_rope=True)
    # independent: grads of the model's own k (pre-RoPE) and v projections
    outs: dict[int, dict[str, torch.Tensor]] = {}
    handles = []

    def keeper(slot, name):
        def keep(mod, args, out):
            out.retain_grad()
            slot[name] = out
        return keep

    for m in tiny.model.modules():
        if hasattr(m, "k_proj") and hasattr(m, "layer_idx") and m.layer_idx in data:
            slot = outs.setdefault(m.layer_idx, {"d": m.head_dim})
            kmod = m.k_norm if hasattr(m, "k_norm") else m.k_proj
            handles.append(kmod.register_forward_hook(keeper(slot, "k")))
            handles.append(m.v_proj.register_forward_hook(keeper(slot, "v")))
    try:
        with torch.enable_grad():
            tokens = torch.tensor([ids])
            emb = tiny.model.get_input_embeddings()(tokens).detach().requires_grad_(True)
            logits = tiny.model(inputs_embeds=emb).logits
            F.cross_entropy(logits[0, :-1].float(), tokens[0, 1:], reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
    assert data
    for i, (k, v, fk, fv) in data.items():
        d = outs[i]["d"]
        torch.testing.assert_close(k, _as_heads(outs[i]["k"].detach(), d), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, _as_heads(outs[i]["v"].detach(), d), rtol=1e-5, atol=1e-5)
        gk, gv = _as_heads(outs[i]["k"].grad, d), _as_heads(outs[i]["v"].grad, d)
        torch.testing.assert_close(fk, gk.square(), rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(fv, gv.square(), rtol=1e-4, atol=1e-10)
        assert fk.sum() > 0 and fv.sum() > 0


def test_nuq_needs_a_tokenizer():
    from conftest import tiny_llama

    model = tiny_llama(seed=5).requires_grad_(False)  # never wrapped in a LoadedModel
    with pytest.raises(CalibrationError) as exc:
        Plan.from_spec("kvquant:datatype=nuq").methods[0].install(model, model_info(model, "bare"))
    assert isinstance(exc.value, LongreachError) and "\n" not in str(exc.value)
    with pytest.raises(SpecError):
        Plan.from_spec("kvquant:datatype=fp4")


# ------------------------------------------------------------------------------------ bytes
def test_nbytes_counts_rotation_table_once_and_codebooks(tiny):
    ids = _ids(240, seed=4)
    held, tables = {}, {}
    for spec in ("kvquant:bits=2,group=16,residual=16,pre_rope=false",
                 "kvquant:bits=2,group=16,residual=16,datatype=nuq", "kvquant:bits=2,group=16,residual=16"):
        plan = Plan.from_spec(spec)
        with Engine(tiny).session(plan) as session:
            cache = session.make_cache()
            session.prefill(ids, cache, 64)
        held[spec] = cache.nbytes()
        tables[spec] = next(iter(_compressed(cache).values())).rotations
        est = plan.kv_cache_bytes(tiny.info, len(ids))
        assert 0.95 * held[spec] <= est <= 1.25 * held[spec], (spec, est, held[spec])
    plain, nuq, pre = held.values()
    n_layers = len(_compressed(cache))
    table = tables["kvquant:bits=2,group=16,residual=16"]
    d = tiny.info.head_dim
    assert table.compact and table.nbytes() == 240 * 4 + d // 2 * 4  # int32 positions + the inv_freq snapshot
    # every tensor shape is data-independent: the differences are exactly the table (once) and codebooks
    assert pre - plain == table.nbytes()
    assert nuq - plain == table.nbytes() + n_layers * 2 * 4 * 4
    # rows mode holds half cos + half sin per token (float32 here)
    with Engine(tiny).session("kvquant:bits=2,group=16,residual=16") as session:
        cache = session.make_cache()
        next(iter(_compressed(cache).values())).rotations.source = None
        session.prefill(ids, cache, 64)
    assert cache.nbytes() - plain == 240 * d * 4
