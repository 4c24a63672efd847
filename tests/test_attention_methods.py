"""Attention-slot methods: logn, self-extend, streaming (and the blockwise kernel under them).

Independent references: eager attention that builds the full score maps from pre-RoPE q/k rotated
with transformers' own ``apply_rotary_pos_emb`` at the positions each paper prescribes; cached
generation against recomputation without a cache; the StreamingLLM cache against its definition.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longreach.engine import Engine
from longreach.errors import SpecError
from longreach.kv.streaming import SinkWindowLayer, StreamingCache
from longreach.memory import PeakMemory
from longreach.methods.attention.kernel import Far, merge, partial_attention, rerotate, two_part_attention
from longreach.methods.attention.logn import logn_factor
from longreach.methods.attention.self_extend import group_for, self_extend_reach
from longreach.spec import Plan, build_method, parse_spec


# ------------------------------------------------------------------------------------------- helpers
def inv_freq(d: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def rope(x: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE of x (B, H, T, D) at positions pos (T,) (the independent reference)."""
    freqs = pos.to(inv.dtype)[:, None] * inv[None]  # (T, D/2)
    emb = torch.cat([freqs, freqs], -1)[None]  # (1, T, D)
    out, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin())
    return out


def eager(q, k, v, scores_mask, scale):
    """softmax attention with a full (T, S) boolean mask; GQA by repeating kv heads. -> (B, T, H, D)"""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~scores_mask, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def qkv(t, h=4, hkv=2, d=16, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g), torch.randn(b, hkv, t, d, generator=g),
            torch.randn(b, hkv, t, d, generator=g))


def fake_module(layer_idx=0, layer_type="full_attention", scaling=0.25):
    cfg = types.SimpleNamespace(layer_types=None, attn_logit_softcapping=None)
    return types.SimpleNamespace(layer_idx=layer_idx, layer_type=layer_type, scaling=scaling, config=cfg,
                                 num_key_value_groups=2, is_causal=True)


def ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


def generate(lm, plan, prompt, n, chunk):
    """Cached: chunked prefill + greedy decode with the plan's cache."""
    with Engine(lm).session(plan) as s:
        cache = s.make_cache()
        logits = s.prefill(prompt, cache, chunk)
        return s.decode(cache, logits, len(prompt), n, stop_ids=set()), cache


def recompute(lm, plan, prompt, n):
    """No cache: the whole sequence again at every step."""
    seq, out = list(prompt), []
    with Engine(lm).session(plan), torch.inference_mode():
        for _ in range(n):
            nxt = int(lm.model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


SPECS = ["logn", "logn:base=1000000,skip_layers=0", "self-extend:window=24,group=3,dynamic=false",
         "streaming:sinks=4,window=20"]


# ------------------------------------------------------------------------------ blockwise merge math
@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 12), s=st.integers(1, 30), cut=st.integers(0, 30), seed=st.integers(0, 10**6))
def test_merge_of_disjoint_tiles_is_one_softmax(t, s, cut, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 2, t, 8, generator=g)  # (B, Hkv, g, T, D)
    k, v = torch.randn(1, 2, s, 8, generator=g), torch.randn(1, 2, s, 8, generator=g)
    mask = torch.rand(t, s, generator=g) < 0.7
    mask[:, 0] = True  # every row attends to something
    cut = min(cut, s)
    whole, lse = partial_attention(q, k, v, mask, 0.3)
    parts = None
    for lo, hi in [(0, cut), (cut, s)]:
        if hi > lo:
            parts = merge(parts, partial_attention(q, k[..., lo:hi, :], v[..., lo:hi, :], mask[:, lo:hi], 0.3))
    torch.testing.assert_close(parts[0], whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[1], lse, rtol=1e-5, atol=1e-5)
    ref = torch.softmax((q @ k[:, :, None].transpose(-1, -2) * 0.3).masked_fill(~mask, float("-inf")), -1)
    torch.testing.assert_close(whole, ref @ v[:, :, None], rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 9), s=st.integers(1, 20), seed=st.integers(0, 10**6))
def test_fused_tile_equals_plain_tile(t, s, seed):
    """torch's fused CPU kernel path and the plain path agree, rows that see no key included."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 3, t, 8, generator=g)  # (B, Hkv, g, T, D)
    k, v = torch.randn(1, 2, s, 8, generator=g), torch.randn(1, 2, s, 8, generator=g)
    mask = torch.rand(t, s, generator=g) < 0.5  # some rows empty
    for m in (mask, None):
        fused = partial_attention(q, k, v, m, 0.3, fused=True)
        plain = partial_attention(q, k, v, m, 0.3, fused=False)
        torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_merge_is_commutative_and_empty_is_identity(seed):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(3, 4, generator=g), torch.randn(3, 1, generator=g))
    b = (torch.randn(3, 4, generator=g), torch.randn(3, 1, generator=g))
    ab, ba = merge(a, b), merge(b, a)
    torch.testing.assert_close(ab[0], ba[0])
    torch.testing.assert_close(ab[1], ba[1])
    empty = (torch.zeros(3, 4), torch.full((3, 1), float("-inf")))
    torch.testing.assert_close(merge(a, empty)[0], a[0])
    torch.testing.assert_close(merge(empty, a)[1], a[1])
    # the sigmoid weight is the share of the partition function: w = Z_a / (Z_a + Z_b)
    w = torch.exp(a[1]) / (torch.exp(a[1]) + torch.exp(b[1]))
    torch.testing.assert_close(ab[0], w * a[0] + (1 - w) * b[0])


def test_rerotate_composes_rotations():
    """R(p2 - p) RoPE(x, p) = RoPE(x, p2), against a float64 RoPE. The error is that of a float32 angle
    of size |p2 - p| (~|p2 - p| * 2^-24 rad), the same as the model's own float32 RoPE at that position."""
    x = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    for p, p2, tol in [([0, 3, 100, 150, 9], [7, 1, 3, 17, 12], 1e-5),
                       ([0, 3, 100, 5000, 70000], [7, 1, 3, 17, 12], 2e-3)]:
        p, p2 = torch.tensor(p), torch.tensor(p2)
        got = rerotate(rope(x, p, inv).float(), p2 - p, inv.float())
        torch.testing.assert_close(got, rope(x, p2, inv).float(), rtol=tol, atol=tol)


def test_rotation_table_equals_rerotate_and_follows_frequencies():
    from longreach.methods.attention.kernel import RotationTable

    table, x = RotationTable(), torch.randn(1, 2, 6, 16)
    delta = torch.tensor([0, -1, 5, -3000, 2500, -7])
    for base in (1e4, 1e4, 5e5):  # same frequencies (reused), then new ones (rebuilt)
        inv = inv_freq(16, base)
        torch.testing.assert_close(table.rerotate(x, delta, inv), rerotate(x, delta, inv), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- self-extend
def self_extend_reference(q0, k0, v, window, group, scale, inv):
    """The paper's eager form: two full score maps (neighbour, grouped), one softmax."""
    t = q0.shape[2]
    m = torch.arange(t)
    qn, kn = rope(q0, m, inv), rope(k0, m, inv)
    qg, kg = rope(q0, m // group + window - window // group, inv), rope(k0, m // group, inv)
    g = q0.shape[1] // k0.shape[1]
    sn = qn @ kn.repeat_interleave(g, 1).transpose(-1, -2)
    sg = qg @ kg.repeat_interleave(g, 1).transpose(-1, -2)
    dist = m[:, None] - m[None]
    s = torch.where(dist < window, sn, sg) * scale
    s = s.masked_fill(dist < 0, float("-inf"))
    return (s.softmax(-1) @ v.repeat_interleave(g, 1)).transpose(1, 2)


@settings(max_examples=12, deadline=None)
@given(t=st.integers(1, 60), window=st.integers(1, 20), group=st.integers(1, 6), bq=st.integers(2, 17),
       bk=st.integers(2, 23))
def test_blockwise_self_extend_equals_eager_reference(t, window, group, bq, bk):
    q0, k0, v = qkv(t, seed=t)
    inv = inv_freq(16)
    pos = torch.arange(t)
    q, k = rope(q0, pos, inv), rope(k0, pos, inv)
    far = Far(q=rerotate(q, pos // group + window - window // group - pos, inv), k=rerotate(k, pos // group - pos, inv))
    got = two_part_attention(q, k, v, pos, pos, 0.25, window, far, block_q=bq, block_k=bk)
    ref = self_extend_reference(q0, k0, v, window, group, 0.25, inv)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_self_extend_attention_function_equals_reference(llama):
    method = build_method(parse_spec("self-extend:window=32,group=4")[0])
    fn = method.attention_function(llama.model, llama.info)
    inv = llama.model.model.rotary_emb.inv_freq
    q0, k0, v = qkv(150, d=8)
    pos = torch.arange(150)
    out, _ = fn(fake_module(), rope(q0, pos, inv), rope(k0, pos, inv), v, None, scaling=0.25,
                position_ids=pos[None])
    torch.testing.assert_close(out, self_extend_reference(q0, k0, v, 32, 4, 0.25, inv), rtol=1e-4, atol=1e-4)


def test_self_extend_equals_plain_attention_below_window(tiny):
    prompt = ids(100)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("self-extend:window=128,group=4")):
            got = tiny.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_self_extend_changes_attention_beyond_window(tiny):
    prompt = ids(100)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("self-extend:window=16,group=4")):
            got = tiny.model(torch.tensor([prompt])).logits
    assert (got[0, :16] - plain[0, :16]).abs().max() < 1e-5  # shorter than W: identical
    assert (got[0, 40:] - plain[0, 40:]).abs().max() > 1e-4  # beyond W: grouped positions


def test_dynamic_self_extend_groups_only_requests_longer_than_the_window(tiny):
    """dynamic (default): a request that fits the native window reads as the plain model (nothing installed,
    logits identical); a longer one reads grouped exactly as dynamic=false does; dynamic=false groups any."""
    window = tiny.info.window
    prompt = ids(100)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        out = {}
        for spec, tokens in (("self-extend:window=16,group=4", window), ("self-extend:window=16,group=4", window + 1),
                             ("self-extend:window=16,group=4,dynamic=false", window)):
            with Engine(tiny).session(Plan.from_spec(spec), total_tokens=tokens):
                out[spec, tokens] = tiny.model(torch.tensor([prompt])).logits
            assert tiny.model.config._attn_implementation == "sdpa"  # undone either way
    assert torch.equal(out["self-extend:window=16,group=4", window], plain)
    grouped = out["self-extend:window=16,group=4,dynamic=false", window]
    assert (grouped[0, 40:] - plain[0, 40:]).abs().max() > 1e-4
    torch.testing.assert_close(out["self-extend:window=16,group=4", window + 1], grouped, rtol=0, atol=0)


def test_dynamic_self_extend_reuses_no_prefix_and_the_paper_mode_does(llama):
    assert not Plan.from_spec("self-extend").reuses_prefix(llama.info)  # cached keys depend on the length
    assert Plan.from_spec("self-extend:dynamic=false").reuses_prefix(llama.info)
    with pytest.raises(SpecError, match="dynamic"):
        Plan.from_spec("self-extend:dynamic=maybe")


def test_self_extend_parameters_and_reach(llama):
    info = llama.info  # native window 256
    m = build_method(parse_spec("self-extend")[0])
    assert m.resolve(info) == (64, 4) and m.reach(info) == (256 - 64) * 4 + 64
    assert self_extend_reach(1024, 5, 4096) == 16384  # Llama-2 W=1024, G=5 (the paper's limit)
    g = group_for(16384, 1024, 4096)  # rule of thumb: W + (N - W) / G <= 2/3 L
    assert 1024 + (16384 - 1024) / g <= 2 / 3 * 4096 + 1e-9 < 1024 + (16384 - 1024) / (g - 1)
    m = build_method(parse_spec("self-extend:window=64,target=2k")[0])
    assert m.reach(info) >= 2048
    with pytest.raises(SpecError, match="window"):
        build_method(parse_spec("self-extend:window=256")[0]).check(info)
    with pytest.raises(SpecError, match="group or target"):
        build_method(parse_spec("self-extend:group=2,target=4k")[0])


def test_self_extend_memory_grows_linearly():
    """8k queries over 8k keys: a full float32 score map would be 4 x 8k x 8k x 4 B = 1 GiB."""
    t, inv = 8192, inv_freq(16)
    q, k, v = qkv(t, h=4, hkv=1)
    pos = torch.arange(t)
    far = Far(q=rerotate(q, pos // 8 + 512 - 64 - pos, inv), k=rerotate(k, pos // 8 - pos, inv))
    with PeakMemory() as pm:
        two_part_attention(q, k, v, pos, pos, 0.25, 512, far)
    if pm.reset:
        assert pm.peak - pm.start_rss < 300 * 2**20


# --------------------------------------------------------------------------------------- streaming
def streaming_reference(q0, k0, v, sinks, window, scale, inv):
    """Token by token, as StreamingLLM runs: query m keeps sinks + its last `window` tokens and
    every kept token is rotated at its index in that cache."""
    t = q0.shape[2]
    g = q0.shape[1] // k0.shape[1]
    outs = []
    for m in range(t):
        kept = sorted(set(range(min(sinks, m + 1))) | set(range(max(0, m - window + 1), m + 1)))
        idx = torch.tensor(kept)
        cache_pos = torch.arange(len(kept))
        qm = rope(q0[:, :, m:m + 1], cache_pos[-1:], inv)
        kk = rope(k0[:, :, idx], cache_pos, inv).repeat_interleave(g, 1)
        s = (qm @ kk.transpose(-1, -2)) * scale
        outs.append(s.softmax(-1) @ v[:, :, idx].repeat_interleave(g, 1))
    return torch.cat(outs, 2).transpose(1, 2)


@pytest.mark.parametrize("sinks,window", [(4, 10), (0, 7), (2, 1), (4, 100)])
def test_streaming_attention_function_equals_token_by_token_reference(llama, sinks, window):
    method = build_method(parse_spec(f"streaming:sinks={sinks},window={window}")[0])
    fn = method.attention_function(llama.model, llama.info)
    inv = llama.model.model.rotary_emb.inv_freq
    q0, k0, v = qkv(60, d=8, seed=3)
    pos = torch.arange(60)
    out, _ = fn(fake_module(), rope(q0, pos, inv), rope(k0, pos, inv), v, None, scaling=0.25,
                position_ids=pos[None])
    ref = streaming_reference(q0, k0, v, sinks, window, 0.25, inv)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_streaming_cache_keeps_sinks_and_window():
    layer = SinkWindowLayer(sinks=4, window=10)
    for lo in range(0, 50, 7):  # chunks of 7 tokens; value = position, to read back what is kept
        n = min(7, 50 - lo)
        x = torch.arange(lo, lo + n, dtype=torch.float32).view(1, 1, n, 1)
        keys, _ = layer.update(x, x)
        assert keys[0, 0, :, 0].tolist()[-n:] == list(range(lo, lo + n))  # the forward sees the new tokens
        seen = lo + n
        expected = list(range(min(4, seen))) + list(range(max(4, seen - 9), seen))
        assert layer.keys[0, 0, :, 0].tolist() == expected  # 4 sinks + the last window - 1
    assert layer.get_seq_length() == 50 and layer.held() == 4 + 9


def test_streaming_cache_is_bounded_in_the_model(tiny):
    plan = Plan.from_spec("streaming:sinks=4,window=20")
    out, cache = generate(tiny, plan, ids(150), 5, chunk=32)
    assert isinstance(cache, StreamingCache) and len(out) == 5
    kinds = tiny.info.layer_types
    for kind, held in zip(kinds, cache.held_tokens()):
        if kind == "full_attention":
            assert held == 4 + 20 - 1
        else:
            assert held == tiny.info.sliding_window - 1
    assert plan.reach(tiny.info) is None
    assert plan.kv_cache_bytes(tiny.info, 10**6) == plan.kv_cache_bytes(tiny.info, 24)


def test_streaming_chunked_prefill_equals_token_by_token(tiny):
    prompt = ids(60, seed=5)
    plan = Plan.from_spec("streaming:sinks=4,window=20")
    logits = []
    for chunk in (1, 32):
        with Engine(tiny).session(plan) as s:
            logits.append(s.prefill(prompt, s.make_cache(), chunk))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_streaming_window_must_fit_native_window(llama):
    with pytest.raises(SpecError, match="native window"):
        build_method(parse_spec("streaming:window=300")[0]).check(llama.info)


# -------------------------------------------------------------------------------------------- logn
def test_logn_factor_values():
    f = logn_factor(torch.tensor([0, 100, 8191, 16383, 65535]), 8192)
    assert f[:3].tolist() == [1.0, 1.0, 1.0]
    assert f[3].item() == pytest.approx(math.log(16384) / math.log(8192), rel=1e-6)
    assert f[4].item() == pytest.approx(16 / 13, rel=1e-6)


def test_logn_scales_queries_beyond_window_only(llama):
    method = build_method(parse_spec("logn:skip_layers=0")[0])
    fn = method.attention_function(llama.model, llama.info)  # native window 256
    q, k, v = qkv(400, d=8)
    pos = torch.arange(400)
    causal = pos[:, None] >= pos[None]
    out, _ = fn(fake_module(), q, k, v, None, scaling=0.25, position_ids=pos[None])
    factor = torch.clamp(torch.log(pos.float() + 1) / math.log(256), min=1)[:, None]  # (T, 1)
    ref = eager(q * factor, k, v, causal, 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    skipped, _ = build_method(parse_spec("logn")[0]).attention_function(llama.model, llama.info)(
        fake_module(layer_idx=1), q, k, v, None, scaling=0.25, position_ids=pos[None])
    torch.testing.assert_close(skipped, eager(q, k, v, causal, 0.25), rtol=1e-4, atol=1e-4)


def test_logn_equals_plain_inside_window(tiny):
    prompt = ids(120)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("logn:skip_layers=0")):
            got = tiny.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


def test_logn_base_installs_and_restores(tiny):
    rotary = tiny.model.model.rotary_emb
    name = "inv_freq" if hasattr(rotary, "inv_freq") else "full_attention_inv_freq"
    before = getattr(rotary, name).clone()
    with Engine(tiny).session(Plan.from_spec("logn:base=5e6")):
        torch.testing.assert_close(getattr(rotary, name), inv_freq(tiny.info.head_dim, 5e6))
    torch.testing.assert_close(getattr(rotary, name), before)
    assert tiny.model.config._attn_implementation == "sdpa"
    m = build_method(parse_spec("logn:target=4k")[0])
    assert m.reach(tiny.info) >= 4096 and m.new_bases(tiny.info)["full_attention"] > tiny.info.rope_theta()


# ----------------------------------------------------------------------- every method, cached = fresh
@pytest.mark.parametrize("spec", SPECS)
def test_cached_generation_equals_recompute(tiny, spec):
    plan = Plan.from_spec(spec)
    plan.check(tiny.info)
    prompt = ids(130, seed=1)  # beyond the self-extend window and the streaming window
    cached, _ = generate(tiny, plan, prompt, 8, chunk=48)
    assert cached == recompute(tiny, plan, prompt, 8)
    assert tiny.model.config._attn_implementation == "sdpa"  # undone


def test_composes_with_a_rope_method(tiny):
    """yarn + self-extend: the grouped part reads yarn's frequencies at call time."""
    pytest.importorskip("longreach.methods.rope.yarn")
    combo = Plan.from_spec("yarn:factor=4+self-extend:window=16,group=4")
    prompt = ids(110, seed=2)
    cached, _ = generate(tiny, combo, prompt, 6, chunk=40)
    assert cached == recompute(tiny, combo, prompt, 6)
    with torch.inference_mode():
        with Engine(tiny).session(combo):
            both = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("self-extend:window=16,group=4")):
            alone = tiny.model(torch.tensor([prompt])).logits
    assert (both - alone).abs().max() > 1e-5


def test_self_extend_with_yarn_equals_reference_on_yarn_frequencies(llama):
    pytest.importorskip("longreach.methods.rope.yarn")
    plan = Plan.from_spec("yarn:factor=4+self-extend:window=16,group=3")
    with Engine(llama).session(plan):
        inv = llama.model.model.rotary_emb.inv_freq.clone()
        fn = plan.get("attention").attention_function(llama.model, llama.info)
        q0, k0, v = qkv(80, d=8, seed=9)
        pos = torch.arange(80)
        out, _ = fn(fake_module(), rope(q0, pos, inv), rope(k0, pos, inv), v, None, scaling=0.25,
                    position_ids=pos[None])
    assert not torch.allclose(inv, inv_freq(8))  # yarn really changed them
    torch.testing.assert_close(out, self_extend_reference(q0, k0, v, 16, 3, 0.25, inv), rtol=1e-4, atol=1e-4)


def test_streaming_cache_comes_from_the_attention_method(llama):
    for spec, kind in (("streaming", StreamingCache), ("self-extend", DynamicCache)):
        with Engine(llama).session(spec) as s:
            assert isinstance(s.make_cache(), kind)


# ------------------------------------------------------------------------------------ real model
@pytest.mark.integration
@pytest.mark.parametrize("spec", ["self-extend:window=256,group=4", "streaming:sinks=4,window=300",
                                  "logn:skip_layers=0"])
def test_real_model_cached_equals_recompute(smollm2, spec):
    prompt = smollm2.tokenizer("The grass is green. " * 80, add_special_tokens=False).input_ids[:600]
    plan = Plan.from_spec(spec)
    cached, _ = generate(smollm2, plan, prompt, 4, chunk=256)
    assert cached == recompute(smollm2, plan, prompt, 4)


def test_reader_streams_past_the_window(llama):
    """The default reader with `streaming` reads 4x the native window with a bounded cache."""
    from longreach.readers import Request

    doc = "abcdefgh " * 115  # ~1,035 byte tokens, native window 256
    plan = Plan.from_spec("streaming:sinks=4,window=60")
    res = Engine(llama).run(plan, Request(doc, "which letter?", max_new_tokens=3, chunk_size=100))
    assert res.input_tokens > 4 * llama.info.window
    per_token = 2 * llama.info.kv_heads * llama.info.head_dim * 4 * llama.info.layers  # float32 K + V
    assert res.kv_cache_bytes == (4 + 60 - 1) * per_token
