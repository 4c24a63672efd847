"""LongHeads: chunk keys, per-head chunk selection, re-positioning inside the window.

Independent references: an eager per-query loop that builds the chunk keys, votes, picks the chunks
and rotates the selected pre-RoPE keys with transformers' own ``apply_rotary_pos_emb`` at their new
positions; plain attention below the budget; recomputation without a cache.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longreach.errors import SpecError
from longreach.memory import PeakMemory
from longreach.methods.attention.longheads import chunk_keys, longheads_attention, select_chunks
from longreach.readers.chunked import greedy_decode, prefill
from longreach.spec import Plan, build_method, parse_spec


# ------------------------------------------------------------------------------------------- helpers
def inv_freq(d: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def rope(x: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE of x (..., T, D) at positions pos (T,)."""
    freqs = pos.to(torch.float32)[:, None] * inv[None]  # (T, D/2)
    emb = torch.cat([freqs, freqs], -1)  # (T, D)
    out, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin(), unsqueeze_dim=0)  # (1, ..., T, D) for 2-D x
    return out.reshape(x.shape)


def qkv(t, h=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g),
            torch.randn(1, hkv, t, d, generator=g))


def fake_module(layer_type="full_attention", scaling=0.25):
    cfg = types.SimpleNamespace(layer_types=None, attn_logit_softcapping=None)
    return types.SimpleNamespace(layer_idx=0, layer_type=layer_type, scaling=scaling, config=cfg)


def ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


def longheads_reference(q0, k0, v, chunk, chunks, scale, inv):
    """LongHeads as written in the paper, one query and one head at a time: O(T^2) loops, no tiles."""
    _, h, t, d = q0.shape
    hkv = k0.shape[1]
    g = h // hkv
    out = torch.zeros(1, t, h, d)
    for m in range(t):
        loc = m // chunk
        for kv in range(hkv):
            if loc < chunks:  # everything fits: true positions
                toks = list(range(m + 1))
                new_pos, q_pos = toks, m
            else:
                ck = []
                for c in range(loc - 1):  # chunk key from the chunk's own attention (pre-RoPE keys)
                    kc = k0[0, kv, c * chunk:(c + 1) * chunk]  # (l, D)
                    w = torch.softmax(kc @ kc.mean(0) * scale, dim=0)
                    ck.append(w @ kc)
                cand = torch.stack(ck[1:])  # chunks 1 .. loc - 2
                vote = sum(torch.softmax(cand @ q0[0, kv * g + j, m] * scale, 0) for j in range(g)) / g
                top = (torch.argsort(vote, descending=True)[: chunks - 3] + 1).tolist()
                sel = sorted(set(top) | {0, loc - 1, loc})
                assert len(sel) == chunks
                toks, new_pos = [], []
                for rank, c in enumerate(sel):
                    for n in range(c * chunk, min((c + 1) * chunk, m + 1)):
                        toks.append(n)
                        new_pos.append(rank * chunk + n - c * chunk)
                q_pos = (chunks - 1) * chunk + m - loc * chunk
            idx = torch.tensor(toks)
            keys = rope(k0[0, kv, idx], torch.tensor(new_pos), inv)  # (n, D)
            for j in range(g):
                q = rope(q0[0, kv * g + j, m:m + 1], torch.tensor([q_pos]), inv)  # (1, D)
                p = torch.softmax((q @ keys.T)[0] * scale, 0)
                out[0, m, kv * g + j] = p @ v[0, kv, idx]
    return out


def generate(lm, plan, prompt, n, chunk):
    cache = plan.make_cache(lm.model, lm.info)
    with plan.applied(lm.model, lm.info):
        logits = prefill(lm.model, prompt, cache, chunk)
        return greedy_decode(lm.model, cache, logits, len(prompt), n, stop=set())


def recompute(lm, plan, prompt, n):
    seq, out = list(prompt), []
    with plan.applied(lm.model, lm.info), torch.inference_mode():
        for _ in range(n):
            nxt = int(lm.model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


# ------------------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("t,chunk,chunks,h,hkv,gather", [(90, 8, 4, 4, 2, None), (61, 5, 6, 3, 3, None),
                                                         (70, 6, 3, 4, 1, None), (83, 4, 7, 4, 2, 500)])
def test_attention_equals_eager_reference(t, chunk, chunks, h, hkv, gather, monkeypatch):
    if gather:  # picked chunks gathered a few queries at a time
        monkeypatch.setattr("longreach.methods.attention.longheads.GATHER_FLOATS", gather)
    q0, k0, v = qkv(t, h=h, hkv=hkv, seed=t)
    inv, pos = inv_freq(16), torch.arange(t)
    got = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v, pos, pos, 0.25, chunk, chunks, inv)
    ref = longheads_reference(q0, k0, v, chunk, chunks, 0.25, inv)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_attention_function_equals_reference_in_pieces(llama):
    """Through the registered function, queries fed in pieces (as chunked prefill and decode do)."""
    fn = build_method(parse_spec("longheads:chunk=8,chunks=4")[0]).attention_function(llama.model, llama.info)
    inv = llama.model.model.rotary_emb.inv_freq
    q0, k0, v = qkv(75, d=8, seed=4)
    pos = torch.arange(75)
    q, k = rope(q0, pos, inv), rope(k0, pos, inv)
    ref = longheads_reference(q0, k0, v, 8, 4, 0.25, inv)
    for lo, hi in [(0, 75), (0, 30), (30, 61), (61, 62), (74, 75)]:
        out, _ = fn(fake_module(), q[..., lo:hi, :], k[..., :hi, :], v[..., :hi, :], None, scaling=0.25,
                    position_ids=pos[None, lo:hi])
        torch.testing.assert_close(out, ref[:, lo:hi], rtol=1e-4, atol=1e-4)


def test_batch_rows_are_independent():
    """Rows of a batch (same positions, different content) give each row's own result."""
    inv, pos = inv_freq(16), torch.arange(70)
    rows = [qkv(70, seed=s) for s in (1, 2)]
    q, k, v = (torch.cat([r[i] for r in rows]) for i in range(3))
    both = longheads_attention(rope(q, pos, inv), rope(k, pos, inv), v, pos, pos, 0.25, 8, 5, inv)
    for i, (q0, k0, v0) in enumerate(rows):
        one = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v0, pos, pos, 0.25, 8, 5, inv)
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-5, atol=1e-5)
        last = longheads_attention(rope(q0, pos, inv)[..., -1:, :], rope(k0, pos, inv), v0, pos[-1:], pos,
                                   0.25, 8, 5, inv)
        torch.testing.assert_close(last, one[:, -1:], rtol=1e-5, atol=1e-5)  # one query: rotated late


# -------------------------------------------------------------------------------------- selection
def test_first_and_local_chunks_always_selected():
    """Even when their chunk keys point away from every query, chunks 0, loc - 1 and loc are kept;
    the rest are the best-scoring candidates."""
    g = torch.Generator().manual_seed(0)
    q0 = torch.randn(1, 2, 3, 5, 8, generator=g)  # (B, Hkv, g, T, D)
    keys = torch.randn(1, 2, 12, 8, generator=g)  # (B, Hkv, C, D)
    direction = q0.mean(dim=(2, 3), keepdim=True).squeeze(2)  # (B, Hkv, 1, D)
    keys[:, :, [0, 11, 12 - 1]] = -50 * direction  # first and local chunks: worst scores
    keys[:, :, 4] = 50 * direction[:, :, 0]  # a planted chunk: the best
    sel = select_chunks(q0, keys, loc=12, chunks=5, scale=0.3)
    assert sel.shape == (1, 2, 5, 5)
    for row in sel.reshape(-1, 5).tolist():
        assert row == sorted(row) and len(set(row)) == 5
        assert {0, 11, 12} <= set(row) and 4 in row


def test_selection_is_top_k_of_q_dot_c_for_one_head_per_group():
    g = torch.Generator().manual_seed(1)
    q0, keys = torch.randn(1, 1, 1, 3, 8, generator=g), torch.randn(1, 1, 20, 8, generator=g)
    sel = select_chunks(q0, keys, loc=20, chunks=7, scale=1.0)
    for i in range(3):
        scores = keys[0, 0, 1:19] @ q0[0, 0, 0, i]
        best = (torch.argsort(scores, descending=True)[:4] + 1).tolist()
        assert sel[0, 0, i].tolist() == sorted(best + [0, 19, 20])


def test_chunk_key_is_the_chunks_self_attention_over_its_keys():
    k0 = torch.randn(1, 2, 3 * 4, 8)
    ck = chunk_keys(k0, 4, 0.5)
    for h in range(2):
        for c in range(3):
            kc = k0[0, h, c * 4:(c + 1) * 4]
            torch.testing.assert_close(ck[0, h, c], torch.softmax(kc @ kc.mean(0) * 0.5, 0) @ kc)


def test_a_planted_far_chunk_is_read():
    """A query that matches one far chunk retrieves its values (the chunk is beyond the budget)."""
    t, chunk, inv = 160, 8, inv_freq(16)
    q0, k0, v = qkv(t, h=2, hkv=1, seed=7)
    k0[:, :, 40:48] = 0.05 * k0[:, :, 40:48] + 3 * q0[:, :1, -1:]  # chunk 5 aligned with the last query
    v[:, :, 40:48] = 10.0
    pos = torch.arange(t)
    out = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v, pos, pos, 0.25, chunk, 4, inv)
    assert out[0, -1, 0].mean() > 5  # head 0 attends mostly to the planted chunk


# ------------------------------------------------------------------------------------- in the model
def test_equals_plain_attention_below_budget(tiny):
    prompt = ids(60)  # 4 chunks of 16 = budget 64
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Plan.from_spec("longheads:chunk=16,chunks=4").applied(tiny.model, tiny.info):
            got = tiny.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_changes_attention_beyond_budget_only(tiny):
    prompt = ids(130)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Plan.from_spec("longheads:chunk=16,chunks=4").applied(tiny.model, tiny.info):
            got = tiny.model(torch.tensor([prompt])).logits
    assert (got[0, :64] - plain[0, :64]).abs().max() < 1e-4  # chunks 0..3: plain attention
    assert (got[0, 64:] - plain[0, 64:]).abs().max() > 1e-4  # selection beyond the budget


@pytest.mark.parametrize("spec,chunk", [("longheads:chunk=16,chunks=4", 48), ("longheads:chunk=8,chunks=5", 1)])
def test_cached_generation_equals_recompute(tiny, spec, chunk):
    plan = Plan.from_spec(spec)
    plan.check(tiny.info)
    prompt = ids(130, seed=1)
    cached = generate(tiny, plan, prompt, 8, chunk=chunk)
    assert cached == recompute(tiny, plan, prompt, 8)
    assert tiny.model.config._attn_implementation == "sdpa"  # undone


def test_sliding_layers_keep_their_window(gemma):
    """On Gemma 3 only the full-attention layer changes: a budget covering every chunk is a no-op even
    though the sliding layers see far less (their own 16-token window)."""
    prompt = ids(100)
    with torch.inference_mode():
        plain = gemma.model(torch.tensor([prompt])).logits
        with Plan.from_spec("longheads:chunk=32,chunks=4").applied(gemma.model, gemma.info):
            got = gemma.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_reader_reads_past_the_native_window(llama):
    from longreach.readers import Request
    from longreach.readers.chunked import ChunkedReader

    plan = Plan.from_spec("longheads:chunk=32,chunks=8")
    assert plan.reach(llama.info) is None
    doc = "abcdefgh " * 115  # ~1,035 byte tokens, native window 256
    res = ChunkedReader().read(llama, plan, Request(doc, "which letter?", max_new_tokens=3, chunk_size=100))
    assert res.input_tokens > 4 * llama.info.window and len(res.output_ids) >= 1


def test_memory_grows_linearly():
    """4k queries over 4k keys: a full float32 score map would be 4 x 4k x 4k x 4 B = 256 MiB."""
    t, inv = 4096, inv_freq(16)
    q, k, v = qkv(t, h=4, hkv=2)
    pos = torch.arange(t)
    with PeakMemory() as pm:
        longheads_attention(q, k, v, pos, pos, 0.25, 64, 8, inv)
    if pm.reset:
        assert pm.peak - pm.start_rss < 100 * 2**20


# ------------------------------------------------------------------------------------------- spec
def test_spec_validation(llama):
    with pytest.raises(SpecError, match="chunks must be >= 3"):
        build_method(parse_spec("longheads:chunks=2")[0])
    with pytest.raises(SpecError, match="longheads:chunk"):
        build_method(parse_spec("longheads:chunk=0")[0])
    with pytest.raises(SpecError, match="no parameter 'budget'"):
        build_method(parse_spec("longheads:budget=4")[0])
    with pytest.raises(SpecError, match="native window 256") as err:
        build_method(parse_spec("longheads")[0]).check(llama.info)  # 256 x 16 = 4096 > 256
    assert "\n" not in str(err.value) and "use e.g. chunk=16" in str(err.value)
    with pytest.raises(SpecError, match="use e.g. chunks=4"):
        build_method(parse_spec("longheads:chunk=64,chunks=5")[0]).check(llama.info)
    m = build_method(parse_spec("longheads:chunk=64,chunks=4")[0])
    m.check(llama.info)  # exactly the window
    assert m.reach(llama.info) is None and str(m) == "longheads:chunk=64,chunks=4"
