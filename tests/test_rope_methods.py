"""Rope-slot methods: formulas against the reference test vectors and transformers' ROPE_INIT_FUNCTIONS,
properties (hypothesis), install/verify/undo on the tiny models, and cache-consistent decoding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache, Gemma3TextConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import longreach
from longreach.engine import Engine, prefill
from longreach.methods.rope.base import (
    RopeInstallError,
    changed_layer_types,
    default_inv_freq,
    find_rotary,
    install_frequencies,
    rotary_cos,
    yarn_temperature,
)
from longreach.methods.rope.critical_ntk import critical_base, critical_dim
from longreach.methods.rope.dprope import dprope_inv_freq
from longreach.methods.rope.dynamic_ntk import dynamic_ntk_base
from longreach.methods.rope.dynamic_yarn import dynamic_yarn_scale
from longreach.methods.rope.ntk import ntk_base
from longreach.methods.rope.pi import pi_inv_freq
from longreach.methods.rope.yarn import yarn_inv_freq, yarn_ramp_bounds
from longreach.spec import REGISTRY, Plan, method_names

ROPE_METHODS = sorted(n for n in method_names() if REGISTRY[n].slot == "rope")
LLAMA2 = dict(base=1e4, dim=128, window=4096)


# ----------------------------------------------------------------------- test vectors (reference file)
def test_yarn_ramp_bounds_llama2():
    assert yarn_ramp_bounds(128, 1e4, 4096, 32, 1) == (20, 46)


@pytest.mark.parametrize("s,expected", [(2, 20.2e3), (4, 40.9e3), (8, 82.7e3), (16, 167e3)])
def test_ntk_bases_llama2(s, expected):
    assert ntk_base(1e4, 128, s) == pytest.approx(expected, rel=0.005)


@pytest.mark.parametrize("target,expected", [(8192, 21.6e3), (16384, 56.6e3), (32768, 148e3), (131072, 1.02e6)])
def test_critical_ntk_llama2(target, expected):
    assert critical_dim(128, 1e4, 4096) == 92
    assert critical_base(128, 1e4, 4096, target) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("target,multiplier", [(16384, 3.5), (32768, 12.5)])
def test_critical_ntk_llama3(target, multiplier):
    assert critical_dim(128, 5e5, 8192) == 70
    assert critical_base(128, 5e5, 8192, target) / 5e5 == pytest.approx(multiplier, rel=0.02)


@pytest.mark.parametrize("s,t", [(2, 1.14), (4, 1.30), (8, 1.46), (16, 1.63), (32, 1.81)])
def test_yarn_logit_factors(s, t):
    # the table gives the factor on the logits: cos and sin each carry 0.1 ln s + 1, q.k its square
    assert yarn_temperature(s) ** 2 == pytest.approx(t, abs=0.005)
    assert yarn_temperature(s) == pytest.approx(0.1 * math.log(s) + 1)


def test_dynamic_factor_is_not_the_extension_ratio():
    # 2k -> 16k with factor 8 multiplies the base term by 57 (reference trap), before the d/(d-2) power
    assert dynamic_ntk_base(1.0, 10**9, 8, 16384, 2048) == pytest.approx(57, rel=1e-6)


@pytest.mark.parametrize("base,dim,window,s,switch", [(1e4, 128, 4096, 4, 46), (1e5, 64, 8192, 4, 19),
                                                     (1e6, 256, 32768, 2, 80)])
def test_dprope_switches_near_the_critical_dimension(base, dim, window, s, switch):
    inv, interp = dprope_inv_freq(base, dim, window, s * window)
    period = 2 * math.pi / default_inv_freq(base, dim)
    assert not interp[period < window / 4].any()  # pairs with >= 4 turns in training extrapolate
    assert interp[switch:].all() and interp.sum() <= dim // 2 - switch + 8
    assert torch.equal(inv[interp], default_inv_freq(base, dim)[interp] / s)


# ------------------------------------------------------------------ equality with transformers' rope init
def _llama_cfg(rope: dict, window: int = 4096) -> LlamaConfig:
    return LlamaConfig(hidden_size=128 * 4, num_attention_heads=4, max_position_embeddings=window,
                       rope_parameters={"rope_theta": 1e4, **rope})


@pytest.mark.parametrize("s", [1.0, 2.0, 4.0, 7.5, 32.0])
def test_pi_equals_transformers_linear(s):
    ref, scale = ROPE_INIT_FUNCTIONS["linear"](_llama_cfg({"rope_type": "linear", "factor": s}))
    torch.testing.assert_close(pi_inv_freq(1e4, 128, s).float(), ref, rtol=1e-6, atol=0)
    assert scale == 1.0


@pytest.mark.parametrize("s,length", [(2.0, 3000), (2.0, 8192), (4.0, 16384), (8.0, 5000)])
def test_dynamic_ntk_equals_transformers_dynamic(s, length):
    ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](_llama_cfg({"rope_type": "dynamic", "factor": s}), seq_len=length)
    ours = default_inv_freq(dynamic_ntk_base(1e4, 128, s, length, 4096), 128).float()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("s", [1.5, 2.0, 4.0, 16.0])
@pytest.mark.parametrize("bf,bs", [(32, 1), (16, 2)])
def test_yarn_equals_transformers_yarn(s, bf, bs):
    cfg = _llama_cfg({"rope_type": "yarn", "factor": s, "beta_fast": bf, "beta_slow": bs,
                      "original_max_position_embeddings": 4096})
    ref, scale = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    torch.testing.assert_close(yarn_inv_freq(1e4, 128, s, 4096, bf, bs).float(), ref, rtol=1e-5, atol=0)
    assert scale == pytest.approx(yarn_temperature(s))


def test_yarn_equals_transformers_on_gemma_global_layers():
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            "full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                               "original_max_position_embeddings": 32768}}
    cfg = Gemma3TextConfig(head_dim=256, max_position_embeddings=32768, rope_parameters=rope)
    ref, scale = ROPE_INIT_FUNCTIONS["yarn"](cfg, layer_type="full_attention")
    torch.testing.assert_close(yarn_inv_freq(1e6, 256, 4.0, 32768).float(), ref, rtol=1e-5, atol=0)
    assert scale == pytest.approx(yarn_temperature(4.0))


def test_dynamic_yarn_is_yarn_at_the_request_ratio():
    assert dynamic_yarn_scale(3000, 4096) == 1.0 and dynamic_yarn_scale(12288, 4096) == 3.0
    ref, _ = ROPE_INIT_FUNCTIONS["yarn"](_llama_cfg({"rope_type": "yarn", "factor": 3.0,
                                                      "original_max_position_embeddings": 4096}))
    torch.testing.assert_close(yarn_inv_freq(1e4, 128, dynamic_yarn_scale(12288, 4096), 4096).float(), ref,
                               rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------- properties
scales = st.floats(1.0, 64.0)
configs = st.sampled_from([(1e4, 128, 4096), (1e5, 64, 8192), (1e6, 256, 32768), (1e4, 16, 512)])


def _all_inv(base, dim, window, s):
    """Every static formula at scale s (inv_freq, float64)."""
    return {
        "pi": pi_inv_freq(base, dim, s),
        "ntk": default_inv_freq(ntk_base(base, dim, s), dim),
        "yarn": yarn_inv_freq(base, dim, s, window),
        "critical-ntk": default_inv_freq(critical_base(dim, base, window, round(s * window)), dim),
        "dynamic-ntk": default_inv_freq(dynamic_ntk_base(base, dim, s, round(s * window), window), dim),
    }


@settings(max_examples=10, deadline=None)
@given(cfg=configs)
def test_factor_one_is_identity(cfg):
    base, dim, window = cfg
    orig = default_inv_freq(base, dim)
    for name, inv in _all_inv(base, dim, window, 1.0).items():
        torch.testing.assert_close(inv, orig, rtol=1e-12, atol=0, msg=name)
    assert torch.equal(dprope_inv_freq(base, dim, window, window)[0], orig)
    assert yarn_temperature(1.0) == 1.0


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s1=scales, s2=scales)
def test_larger_scale_never_speeds_a_pair_up(cfg, s1, s2):
    lo, hi = sorted((s1, s2))
    a, b = _all_inv(*cfg, lo), _all_inv(*cfg, hi)
    for name in a:
        assert (b[name] <= a[name] * (1 + 1e-12)).all(), name
    for name in ("ntk", "yarn"):  # never slower than PI (dynamic-ntk and critical-ntk can be)
        assert (b[name] >= default_inv_freq(cfg[0], cfg[1]) / hi * (1 - 1e-9)).all(), name
    assert yarn_temperature(hi) >= yarn_temperature(lo)


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s=scales)
def test_yarn_ramp_structure(cfg, s):
    base, dim, window = cfg
    inv, orig = yarn_inv_freq(base, dim, s, window), default_inv_freq(base, dim)
    low, high = yarn_ramp_bounds(dim, base, window, 32, 1)
    torch.testing.assert_close(inv[:low], orig[:low], rtol=1e-12, atol=0)  # fast pairs untouched
    torch.testing.assert_close(inv[high:], orig[high:] / s, rtol=1e-12, atol=0)  # slow pairs = PI
    assert ((inv <= orig * (1 + 1e-12)) & (inv >= orig / s * (1 - 1e-12))).all()


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s=st.floats(1.01, 64.0), p=st.integers(0, 10**6))
def test_pi_position_s_p_looks_like_p(cfg, s, p):
    base, dim, _ = cfg
    torch.testing.assert_close(pi_inv_freq(base, dim, s) * (s * p), default_inv_freq(base, dim) * p,
                               rtol=1e-12, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s=st.floats(1.01, 64.0))
def test_ntk_slowest_pair_is_interpolated_exactly(cfg, s):
    base, dim, _ = cfg
    inv, orig = default_inv_freq(ntk_base(base, dim, s), dim), default_inv_freq(base, dim)
    assert float(inv[-1]) == pytest.approx(float(orig[-1]) / s, rel=1e-9)
    assert float(inv[0]) == 1.0  # the fastest pair keeps its frequency


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s=st.floats(2.0, 64.0))
def test_critical_pair_period_is_the_target(cfg, s):
    base, dim, window = cfg
    target = round(s * window)
    b2 = critical_base(dim, base, window, target)
    d_c = critical_dim(dim, base, window)
    if b2 > base:
        period = 2 * math.pi / float(default_inv_freq(b2, dim)[d_c // 2])
        assert period == pytest.approx(target, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(cfg=configs, s=st.floats(1.0, 16.0), l1=st.integers(1, 10**6), l2=st.integers(1, 10**6))
def test_dynamic_ntk_monotone_in_length_and_identity_inside_window(cfg, s, l1, l2):
    base, dim, window = cfg
    lo, hi = sorted((l1, l2))
    assert dynamic_ntk_base(base, dim, s, lo, window) <= dynamic_ntk_base(base, dim, s, hi, window)
    assert dynamic_ntk_base(base, dim, s, min(lo, window), window) == base


@settings(max_examples=4, deadline=None)
@given(cfg=st.sampled_from([(1e4, 128, 4096), (1e5, 64, 8192)]), s=st.sampled_from([2, 3, 4, 8]))
def test_dprope_chooses_between_extrapolation_and_interpolation_only(cfg, s):
    base, dim, window = cfg
    inv, interp = dprope_inv_freq(base, dim, window, s * window)
    orig = default_inv_freq(base, dim)
    assert torch.equal(inv, torch.where(interp, orig / s, orig))
    assert interp[-1] and not interp[0]  # slowest pair interpolated, fastest extrapolated


# ------------------------------------------------------------------------------- methods and specs
@pytest.mark.parametrize("name", ROPE_METHODS)
def test_every_rope_method_extends_and_takes_target_or_factor(name, llama):
    info = llama.info
    assert REGISTRY[name].extends and REGISTRY[name].slot == "rope"
    assert Plan.from_spec(f"{name}:target=1k").reach(info) == 1024
    assert Plan.from_spec(f"{name}:factor=3").reach(info) == 3 * info.window
    assert Plan.from_spec(name).reach(info) == 4 * info.window  # default factor 4
    with pytest.raises(longreach.errors.SpecError):
        Plan.from_spec(f"{name}:factor=2,target=1k")
    with pytest.raises(longreach.errors.SpecError):
        Plan.from_spec(f"{name}:factor=0.5")


def test_gemma_changes_only_global_layers(gemma):
    assert changed_layer_types(gemma.info) == ["full_attention"]


def _snapshot(model):
    rot = find_rotary(model)
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    scales = {k: v for k, v in vars(rot).items() if k.endswith("attention_scaling")}
    return bufs, scales


def _logits(model, n=90):
    ids = torch.arange(n).remainder(250)[None]  # (1, n)
    with torch.inference_mode():
        return model(ids).logits[0, -1]


@pytest.mark.parametrize("name", ROPE_METHODS)
def test_install_changes_the_model_and_undo_restores_it_exactly(name, tiny):
    model, info = tiny.model, tiny.info
    before_bufs, before_scales = _snapshot(model)
    before = _logits(model)
    with Engine(tiny).session(f"{name}:factor=4", 4 * info.window):  # dynamic methods: 4x the window
        rot = find_rotary(model)
        for t in changed_layer_types(info):
            key = "inv_freq" if hasattr(rot, "inv_freq") else f"{t}_inv_freq"
            assert getattr(rot, key).dtype == torch.float32
            assert not torch.equal(getattr(rot, key), before_bufs[f"model.rotary_emb.{key}"]), f"{t} unchanged"
        if hasattr(rot, "sliding_attention_inv_freq"):  # Gemma 3: local layers untouched
            assert torch.equal(rot.sliding_attention_inv_freq,
                               before_bufs["model.rotary_emb.sliding_attention_inv_freq"])
            assert rot.sliding_attention_attention_scaling == 1.0
        assert not torch.allclose(_logits(model), before)
    after_bufs, after_scales = _snapshot(model)
    assert after_scales == before_scales
    assert after_bufs.keys() == before_bufs.keys()
    assert all(torch.equal(after_bufs[k], v) and after_bufs[k].dtype == v.dtype for k, v in before_bufs.items())
    assert torch.equal(_logits(model), before)


def test_yarn_temperature_reaches_cos_and_sin(gemma):
    with Engine(gemma).session("yarn:factor=8"):
        rot = find_rotary(gemma.model)
        cos = rotary_cos(rot, "full_attention", torch.tensor([0]))
        assert float(cos[0, 0]) == pytest.approx(yarn_temperature(8), rel=1e-6)  # cos(0) * temperature


def test_verification_catches_a_rotary_module_that_ignores_the_change():
    from conftest import tiny_llama

    model = tiny_llama()
    model.model.rotary_emb.rope_type = "dynamic"  # forward now recomputes inv_freq for long positions
    model.config.rope_parameters["factor"] = 2.0
    original = model.model.rotary_emb.inv_freq.clone()
    with pytest.raises(RopeInstallError, match="ignored"):
        install_frequencies(model, {"full_attention": (default_inv_freq(5e4, 8), 1.0)})
    assert model.model.rotary_emb.attention_scaling == 1.0 and model.model.rotary_emb.inv_freq.shape == original.shape


def test_model_with_scaled_rope_is_refused_in_one_line(llama):
    llama.info.rope["full_attention"]["rope_type"] = "linear"
    with pytest.raises(longreach.errors.SpecError) as exc:
        Plan.from_spec("ntk").check(llama.info)
    assert "rope_type='linear'" in str(exc.value) and "\n" not in str(exc.value)


def test_angles_stay_float32_on_a_bfloat16_model():
    from conftest import tiny_llama, wrap

    lm = wrap(tiny_llama(), "tiny-llama")
    lm.model.to(torch.bfloat16)  # casts the rotary buffers too: inv_freq is now bfloat16
    rot = lm.model.model.rotary_emb
    assert rot.inv_freq.dtype == torch.bfloat16
    bf16_error = (rot.inv_freq.double() * 8192 - default_inv_freq(1e4, 8) * 8192).abs().max()
    assert bf16_error > 0.5  # radians at 8k: why angles must not come from bf16 frequencies
    with Engine(lm).session("ntk:factor=2"):
        assert rot.inv_freq.dtype == torch.float32
        x = torch.zeros(1, 1, dtype=torch.bfloat16)
        cos, _ = rot(x, torch.tensor([[8191]]))
        assert cos.dtype == torch.bfloat16  # only the final cos/sin are rounded, with error <= 2^-8
        exact = (8191 * default_inv_freq(ntk_base(1e4, 8, 2), 8)).cos()
        assert (cos[0, 0, :4].double() - exact).abs().max() < 2**-8
    assert rot.inv_freq.dtype == torch.bfloat16


# --------------------------------------------------------------------- prefill + decode, cache consistency
@pytest.mark.parametrize("name", ROPE_METHODS)
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_every_method_reads_past_the_window_on_both_tiny_models(name, arch):
    tiny = _tiny64(arch)
    window = tiny.info.window
    text = "abcdefghij" * (window // 10 + 3)  # byte tokenizer: longer than the native window
    before = _snapshot(tiny.model)[0]
    a = longreach.ask(text=text, question="q?", model=tiny, method=f"{name}:factor=2", max_new_tokens=4,
                      chunk_size=32)
    assert window < a.input_tokens <= 2 * window and a.reach == 2 * window and a.method == f"{name}:factor=2.0"
    assert all(torch.equal(b, before[k]) for k, b in _snapshot(tiny.model)[0].items())  # uninstalled


def _tiny64(arch):
    """The tiny models with a 64-token window (fast to read past)."""
    from conftest import tiny_gemma3, tiny_llama, wrap

    return wrap(tiny_llama(window=64) if arch == "tiny-llama" else tiny_gemma3(window=64, sliding=16), arch)


def _decode_both_ways(lm, spec, ids, new_tokens, chunk):
    """Greedy tokens + last logits with the KV cache (chunked prefill) and by full recomputation."""
    model = lm.model
    with Engine(lm).session(spec, len(ids) + new_tokens) as s:
        cache = s.make_cache()
        assert isinstance(cache, DynamicCache)
        logits = s.prefill(ids, cache, chunk)
        cached = s.decode(cache, logits, len(ids), new_tokens, stop_ids=set())
        seq, first = list(ids), None
        with torch.inference_mode():
            for _ in range(new_tokens):
                out = model(torch.tensor([seq])).logits[0, -1]
                first = out if first is None else first
                seq.append(int(out.argmax()))
    return cached, seq[len(ids):], logits[0], first


@pytest.mark.parametrize("spec", ["dynamic-ntk:factor=4", "dynamic-yarn:factor=4", "yarn:factor=4", "dprope"])
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_cached_decoding_equals_recomputation(spec, arch):
    lm = _tiny64(arch)
    ids = torch.randint(0, 250, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    cached, recomputed, prefill_logits, full_logits = _decode_both_ways(lm, spec, ids, 5, 32)
    assert cached == recomputed
    torch.testing.assert_close(prefill_logits, full_logits, rtol=1e-4, atol=1e-5)


def test_transformers_dynamic_rope_mixes_bases_in_the_cache():
    """Negative control: the built-in per-forward dynamic NTK gives different logits with a chunked cache."""
    from conftest import tiny_llama

    model = tiny_llama(window=64)
    model.config.rope_parameters.update({"rope_type": "dynamic", "factor": 4.0})
    model.model.rotary_emb.rope_type = "dynamic"
    ids = torch.randint(0, 250, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    chunked = prefill(model, ids, DynamicCache(config=model.config), 32)[0]
    with torch.inference_mode():
        full = model(torch.tensor([ids])).logits[0, -1]
    assert not torch.allclose(chunked, full, rtol=1e-4, atol=1e-5)  # the tolerance the test above holds


def test_dynamic_methods_keep_the_original_model_for_short_requests(llama):
    before = llama.model.model.rotary_emb.inv_freq.clone()
    for spec in ("dynamic-ntk", "dynamic-yarn"):
        with Engine(llama).session(spec, 200):  # within the 256-token window
            torch.testing.assert_close(llama.model.model.rotary_emb.inv_freq, before.float(), rtol=1e-6, atol=0)
            assert llama.model.model.rotary_emb.attention_scaling == 1.0


# ------------------------------------------------------------------------ real packaged models (short)
@pytest.mark.integration
@pytest.mark.parametrize("which", ["smollm2", "gemma3_real"])
def test_real_models_take_and_give_back_every_method(which, request):
    lm = request.getfixturevalue(which)
    before, _ = _snapshot(lm.model)
    for name in ROPE_METHODS:
        Plan.from_spec(f"{name}:factor=4").check(lm.info)
        with Engine(lm).session(f"{name}:factor=4", 4 * lm.info.window):  # install verifies cos/sin itself
            pass
    after, _ = _snapshot(lm.model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.integration
def test_dynamic_methods_answer_like_none_within_the_window(smollm2):
    from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document

    doc = make_passkey_document(smollm2.tokenizer, 1000, depth=0.5, seed=3)
    answers = {spec: longreach.ask(text=doc.text, question=QUESTION, model=smollm2, method=spec,
                                   answer_prefix=ANSWER_PREFIX, max_new_tokens=8).answer
               for spec in ("none", "dynamic-ntk:target=32k", "dynamic-yarn:target=32k")}
    assert len(set(answers.values())) == 1, answers  # identical model within the window
