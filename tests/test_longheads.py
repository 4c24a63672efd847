"""LongHeads: chunk keys, per-head chunk selection, re-positioning inside the window.

Independent references: an eager per-query loop that builds the chunk summaries (chunk keys from the
chunk's mean query, or per-channel key bounds), votes, picks the chunks and rotates the selected
pre-RoPE keys with transformers' own ``apply_rotary_pos_emb`` at their new positions; plain attention
below the budget; recomputation without a cache.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longreach.engine import Engine
from longreach.errors import SpecError
from longreach.memory import PeakMemory
from longreach.methods.attention.longheads import (
    ChunkQueries,
    ChunkSummaries,
    chunk_keys,
    key_bounds,
    longheads_attention,
    select_chunks,
    tile_pairs,
)
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


def chunk_means(q0, chunk, hkv):
    """(B, Hkv, C, D) mean pre-RoPE query of each complete chunk, over its tokens and its group's heads."""
    b, h, t, d = q0.shape
    return q0[:, :, : t // chunk * chunk].reshape(b, hkv, h // hkv, t // chunk, chunk, d).mean((2, 4))


def longheads_reference(q0, k0, v, chunk, chunks, scale, inv, score="query", cap=None):
    """LongHeads one query and one head at a time: O(T^2) loops, no tiles. ``score``: "query" (chunk
    key from the chunk's own attention with its mean query) or "bound" (Quest's per-channel bound);
    ``cap``: logit soft-capping of the attention scores (Gemma 2), not of the chunk scores."""
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
                heads = range(kv * g, (kv + 1) * g)
                logits = []  # per head of the group: the score of chunks 1 .. loc - 2
                for j in heads:
                    q, row = q0[0, j, m], []
                    for c in range(1, loc - 1):
                        kc = k0[0, kv, c * chunk:(c + 1) * chunk]  # (l, D) pre-RoPE keys
                        if score == "query":  # chunk key: the chunk's own attention with its mean query
                            qc = q0[0, list(heads), c * chunk:(c + 1) * chunk].mean((0, 1))  # (D,)
                            row.append(q @ (torch.softmax(kc @ qc * scale, dim=0) @ kc))
                        else:  # Quest: sum over channels of max(q_d * k_d) over the chunk's keys
                            row.append(float((q * kc).amax(dim=0).sum()))  # (l, D) -> max over keys
                    logits.append(torch.tensor(row))
                vote = sum(torch.softmax(x * scale, 0) for x in logits) / g
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
                logit = (q @ keys.T)[0] * scale
                p = torch.softmax(torch.tanh(logit / cap) * cap if cap else logit, 0)
                out[0, m, kv * g + j] = p @ v[0, kv, idx]
    return out


def generate(lm, plan, prompt, n, chunk):
    with Engine(lm).session(plan) as s:
        cache = s.make_cache()
        logits = s.prefill(prompt, cache, chunk)
        return s.decode(cache, logits, len(prompt), n, stop_ids=set())


def recompute(lm, plan, prompt, n):
    seq, out = list(prompt), []
    with Engine(lm).session(plan), torch.inference_mode():
        for _ in range(n):
            nxt = int(lm.model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


# ------------------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("score", ["query", "bound"])
@pytest.mark.parametrize("t,chunk,chunks,h,hkv,gather", [(90, 8, 4, 4, 2, None), (61, 5, 6, 3, 3, None),
                                                         (70, 6, 3, 4, 1, None), (83, 4, 7, 4, 2, 500)])
def test_attention_equals_eager_reference(t, chunk, chunks, h, hkv, gather, score, monkeypatch):
    if gather:  # picked chunks gathered a few queries at a time
        monkeypatch.setattr("longreach.methods.attention.longheads.GATHER_FLOATS", gather)
    q0, k0, v = qkv(t, h=h, hkv=hkv, seed=t)
    inv, pos = inv_freq(16), torch.arange(t)
    means = chunk_means(q0, chunk, hkv) if score == "query" else None
    got = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v, pos, pos, 0.25, chunk, chunks, inv,
                              chunk_queries=means)
    ref = longheads_reference(q0, k0, v, chunk, chunks, 0.25, inv, score)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("score", ["query", "bound"])
def test_attention_function_equals_reference_in_pieces(llama, score):
    """Through the registered function, queries fed in pieces (as chunked prefill and decode do); a
    piece that starts again at 0 (recomputation) starts a new sequence."""
    fn = build_method(parse_spec(f"longheads:chunk=8,chunks=4,score={score}")[0]).attention_function(
        llama.model, llama.info)
    inv = llama.model.model.rotary_emb.inv_freq
    q0, k0, v = qkv(75, d=8, seed=4)
    pos = torch.arange(75)
    q, k = rope(q0, pos, inv), rope(k0, pos, inv)
    ref = longheads_reference(q0, k0, v, 8, 4, 0.25, inv, score)
    for lo, hi in [(0, 75), (0, 30), (30, 61), (61, 62), (62, 75)]:
        out, _ = fn(fake_module(), q[..., lo:hi, :], k[..., :hi, :], v[..., :hi, :], None, scaling=0.25,
                    position_ids=pos[None, lo:hi])
        torch.testing.assert_close(out, ref[:, lo:hi], rtol=1e-4, atol=1e-4)


def test_query_summaries_out_of_step_fall_back_to_key_bounds(llama):
    """If the cache no longer lines up with the queries seen (an evicting cache dropped entries), the
    query summaries are unusable: that layer scores chunks by key bounds until a sequence restarts."""
    fn = build_method(parse_spec("longheads:chunk=8,chunks=4,score=query")[0]).attention_function(
        llama.model, llama.info)
    inv = llama.model.model.rotary_emb.inv_freq
    q0, k0, v = qkv(75, d=8, seed=4)
    pos = torch.arange(75)
    q, k = rope(q0, pos, inv), rope(k0, pos, inv)
    ref = {s: longheads_reference(q0, k0, v, 8, 4, 0.25, inv, s) for s in ("query", "bound")}
    assert (ref["query"][:, 70:] - ref["bound"][:, 70:]).abs().max() > 1e-3  # the two scores differ here
    for lo, hi, score in [(0, 60, "query"), (70, 75, "bound"), (74, 75, "bound"), (0, 75, "query")]:
        out, _ = fn(fake_module(), q[..., lo:hi, :], k[..., :hi, :], v[..., :hi, :], None, scaling=0.25,
                    position_ids=pos[None, lo:hi])
        torch.testing.assert_close(out, ref[score][:, lo:hi], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("score", ["query", "bound"])
def test_batch_rows_are_independent(score):
    """Rows of a batch (same positions, different content) give each row's own result."""
    inv, pos = inv_freq(16), torch.arange(70)
    rows = [qkv(70, seed=s) for s in (1, 2)]
    q, k, v = (torch.cat([r[i] for r in rows]) for i in range(3))

    def run(q0, k0, v0, lo=0):
        means = chunk_means(q0, 8, 2) if score == "query" else None
        return longheads_attention(rope(q0, pos, inv)[..., lo:, :], rope(k0, pos, inv), v0, pos[lo:], pos, 0.25,
                                   8, 5, inv, chunk_queries=means)

    both = run(q, k, v)
    for i, (q0, k0, v0) in enumerate(rows):
        one = run(q0, k0, v0)
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run(q0, k0, v0, 69), one[:, -1:], rtol=1e-5, atol=1e-5)  # one query


@pytest.mark.parametrize("score", ["query", "bound"])
@pytest.mark.parametrize("seed,t,h,hkv,tile,gather,cap", [(0, 100, 4, 4, 3, None, None), (1, 77, 4, 4, 1, 700, None),
                                                          (2, 100, 6, 2, 5, None, 1.5), (3, 91, 4, 1, 32, 400, None)])
def test_tiled_picked_part_equals_reference(seed, t, h, hkv, tile, gather, cap, score, monkeypatch):
    """The tiled picked part (pairs grouped by chunk, several tiles per chunk, several steps) equals the
    per-query loop to 1e-5, with and without grouped-query attention: the outputs of the former
    per-query gathering, which this reference matched."""
    monkeypatch.setattr("longreach.methods.attention.longheads.TILE", tile)
    if gather:
        monkeypatch.setattr("longreach.methods.attention.longheads.GATHER_FLOATS", gather)
    chunk, chunks = 6, 5
    q0, k0, v = qkv(t, h=h, hkv=hkv, seed=seed)
    inv, pos = inv_freq(16), torch.arange(t)
    means = chunk_means(q0, chunk, hkv) if score == "query" else None
    got = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v, pos, pos, 0.25, chunk, chunks, inv,
                              cap=cap, chunk_queries=means)
    ref = longheads_reference(q0, k0, v, chunk, chunks, 0.25, inv, score, cap)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    last = longheads_attention(rope(q0, pos, inv)[..., -1:, :], rope(k0, pos, inv), v, pos[-1:], pos, 0.25, chunk,
                               chunks, inv, cap=cap, chunk_queries=means)  # one query (decoding): keys rotated per tile
    torch.testing.assert_close(last, ref[:, -1:], rtol=0, atol=1e-5)


def test_chunk_summaries_are_kept_across_calls_and_reset_out_of_step():
    """Prefill pieces and decode steps that continue a layer reuse its summaries, adding only the new
    complete chunks; results equal the reference and the summaries equal the key bounds of every chunk.
    A call out of step (other first index, batch, scoring or frequencies) starts afresh."""
    summaries, inv, pos = ChunkSummaries(), inv_freq(16), torch.arange(90)
    q0, k0, v = qkv(90, seed=6)
    q, k = rope(q0, pos, inv), rope(k0, pos, inv)
    ref = longheads_reference(q0, k0, v, 8, 4, 0.25, inv, "bound")
    for lo, hi in [(0, 40), (40, 41), (41, 77), (77, 78), (78, 90)]:
        memo = summaries.for_call(0, lo, 1, "bound", inv)
        out = longheads_attention(q[..., lo:hi, :], k[..., :hi, :], v[..., :hi, :], pos[lo:hi], pos[:hi], 0.25, 8, 4,
                                  inv, memo=memo)
        memo.seen = hi
        torch.testing.assert_close(out, ref[:, lo:hi], rtol=0, atol=1e-5)
    upper, lower = key_bounds(k0[..., : 10 * 8, :], 8)  # the last query is in chunk 11: candidates 0 .. 9
    torch.testing.assert_close(memo.upper, upper, rtol=0, atol=1e-5)
    torch.testing.assert_close(memo.lower, lower, rtol=0, atol=1e-5)
    assert summaries.for_call(0, 90, 1, "bound", inv) is memo  # continues: reused
    for args in [(0, 89, 1, "bound", inv), (0, 90, 2, "bound", inv), (0, 90, 1, "query", inv),
                 (0, 90, 1, "bound", 2 * inv)]:
        assert summaries.for_call(*args).upper is None
        summaries.layers[0] = memo
    assert summaries.for_call(1, 90, 1, "bound", inv).upper is None  # layers are independent


def test_tile_pairs_groups_pairs_by_row():
    """Every pair gets its own slot; a tile holds pairs of one row only, at most ``size`` of them, and a
    row picked c times gets ceil(c / size) tiles (checked against a plain loop)."""
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 7, (60,), generator=g)
    rows[rows == 3] = 4  # a row nobody picked
    for size in (1, 4, 64):
        flat, tile_row = tile_pairs(rows, 7, size)
        assert flat.unique().numel() == 60 and int(flat.max()) < tile_row.numel() * size
        assert torch.equal(tile_row[flat // size], rows)  # each pair sits in a tile of its own row
        counts = [int((rows == r).sum()) for r in range(7)]
        assert tile_row.tolist() == [r for r in range(7) for _ in range(-(-counts[r] // size))]


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


def test_chunk_key_is_the_chunks_own_attention_with_its_mean_query():
    k0, qbar = torch.randn(1, 2, 3 * 4, 8), torch.randn(1, 2, 3, 8)
    ck = chunk_keys(k0, qbar, 4, 0.5)
    for h in range(2):
        for c in range(3):
            kc = k0[0, h, c * 4:(c + 1) * 4]
            torch.testing.assert_close(ck[0, h, c], torch.softmax(kc @ qbar[0, h, c] * 0.5, 0) @ kc)


def test_bound_selection_is_top_k_of_quests_bound():
    """score = sum_d max(q_d k_d) over the chunk's keys, per channel (an upper bound of q . k)."""
    g = torch.Generator().manual_seed(2)
    q0, k0 = torch.randn(1, 1, 1, 3, 8, generator=g), torch.randn(1, 1, 20 * 4, 8, generator=g)
    upper, lower = key_bounds(k0, 4)
    sel = select_chunks(q0, upper, 20, 7, 1.0, lower)
    kc = k0[0, 0].view(20, 4, 8)
    for i in range(3):
        q = q0[0, 0, 0, i]
        bound = (q * kc).amax(dim=1).sum(-1)  # (20,)
        assert torch.all(bound >= (kc @ q).amax(dim=1) - 1e-5)  # it bounds every key's score
        best = (torch.argsort(bound[1:19], descending=True)[:4] + 1).tolist()
        assert sel[0, 0, i].tolist() == sorted(best + [0, 19, 20])


def test_chunk_queries_fed_in_pieces_equal_the_chunk_means():
    g = torch.Generator().manual_seed(3)
    q0 = torch.randn(2, 3, 2, 45, 8, generator=g)  # (B, Hkv, g, T, D)
    want = q0[..., :40, :].reshape(2, 3, 2, 5, 8, 8).mean((2, 4))  # 5 complete chunks of 8
    cq = ChunkQueries(8)
    assert cq.update(0, q0[..., :45, :], 0).shape == (2, 3, 5, 8)
    for lo, hi in [(0, 13), (13, 16), (16, 17), (17, 45)]:  # a new sequence at 0, then continued
        got = cq.update(0, q0[..., lo:hi, :], lo)
    torch.testing.assert_close(got, want)
    assert cq.update(1, q0[..., :16, :], 0).shape == (2, 3, 2, 8)  # layers are independent
    assert cq.update(0, q0[..., 44:45, :], 44) is None  # out of step with what it has seen
    assert cq.update(0, q0[..., 45:46, :], 45) is None  # ... until a sequence starts again at 0
    torch.testing.assert_close(cq.update(0, q0, 0), want)


@pytest.mark.parametrize("score", ["query", "bound"])
def test_a_planted_far_chunk_is_read(score):
    """A query that matches one far chunk retrieves its values (the chunk is beyond the budget)."""
    t, chunk, inv = 160, 8, inv_freq(16)
    q0, k0, v = qkv(t, h=2, hkv=1, seed=7)
    k0[:, :, 40:48] = 0.05 * k0[:, :, 40:48] + 3 * q0[:, :1, -1:]  # chunk 5 aligned with the last query
    v[:, :, 40:48] = 10.0
    pos = torch.arange(t)
    means = chunk_means(q0, chunk, 1) if score == "query" else None
    out = longheads_attention(rope(q0, pos, inv), rope(k0, pos, inv), v, pos, pos, 0.25, chunk, 4, inv,
                              chunk_queries=means)
    assert out[0, -1, 0].mean() > 5  # head 0 attends mostly to the planted chunk


def test_a_needle_among_typical_keys_is_selected():
    """The pass-key failure: filler keys share one large direction; the needle chunk differs in two
    tokens whose keys answer the question and whose queries look at each other. A chunk key weighted by
    similarity to the mean of the chunk's keys gives those tokens ~e^-9 of the weight, so every chunk
    key looks alike and the pick is chance; both scores pick the needle chunk."""
    chunk, n, d = 16, 24, 16
    g = torch.Generator().manual_seed(0)
    common = torch.randn(d, generator=g)
    common /= common.norm()
    probe = torch.randn(d, generator=g)
    probe -= (probe @ common) * common
    probe = 4 * probe / probe.norm()  # the question's query, orthogonal to the filler
    k0 = (6 * common + 0.3 * torch.randn(n * chunk, d, generator=g))[None, None]  # (1, 1, T, D)
    q0 = (0.1 * torch.randn(n * chunk, d, generator=g))[None, None]
    needle = [11 * chunk + 5, 11 * chunk + 6]
    k0[0, 0, needle] = probe
    q0[0, 0, needle] = probe
    q0[0, 0, -1] = probe
    done = k0[..., : (n - 2) * chunk, :]  # complete chunks 0 .. 21 (the query is in chunk 23)
    last = q0[:, :, None, -1:]  # (1, 1, 1, 1, D)
    upper, lower = key_bounds(done, chunk)
    picks = {"query": select_chunks(last, chunk_keys(done, chunk_means(q0, chunk, 1)[:, :, : n - 2], chunk, 0.25),
                                    n - 1, 4, 0.25),
             "bound": select_chunks(last, upper, n - 1, 4, 0.25, lower)}
    for sel in picks.values():
        assert sel[0, 0, 0].tolist() == [0, 11, 22, 23]
    kc = done.view(n - 2, chunk, d)
    typical = torch.softmax(kc @ kc.mean(1, keepdim=True).transpose(-1, -2) * 0.25, dim=1)  # (C, l, 1)
    old = (typical.transpose(-1, -2) @ kc).squeeze(-2)[None, None]  # (1, 1, C, D)
    assert 11 not in select_chunks(last, old, n - 1, 4, 0.25)[0, 0, 0].tolist()  # the old summary missed it


# ------------------------------------------------------------------------------------- in the model
def test_equals_plain_attention_below_budget(tiny):
    prompt = ids(60)  # 4 chunks of 16 = budget 64
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("longheads:chunk=16,chunks=4")):
            got = tiny.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_model_logits_equal_the_reference(llama, monkeypatch):
    """Through the model (2 layers, 4 query / 2 KV heads): logits with the tiled kernel equal those with
    every layer's attention computed by the per-query reference, to 1e-5."""
    prompt = torch.tensor([ids(100, seed=3)])
    plan = Plan.from_spec("longheads:chunk=8,chunks=4")
    with torch.inference_mode(), Engine(llama).session(plan):
        got = llama.model(prompt).logits

    def reference(query, key, value, q_pos, k_pos, scale, chunk, chunks, inv, table=None, cap=None,
                  chunk_queries=None, memo=None):
        assert torch.equal(q_pos, k_pos)  # one pass over the whole prompt
        return longheads_reference(rope(query, -q_pos, inv), rope(key, -k_pos, inv), value, chunk, chunks, scale,
                                   inv, "bound", cap)

    monkeypatch.setattr("longreach.methods.attention.longheads.longheads_attention", reference)
    with torch.inference_mode(), Engine(llama).session(plan):
        want = llama.model(prompt).logits
    assert (got[0, 32:] - llama.model(prompt).logits[0, 32:]).abs().max() > 1e-3  # selection changed them
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_changes_attention_beyond_budget_only(tiny):
    prompt = ids(130)
    with torch.inference_mode():
        plain = tiny.model(torch.tensor([prompt])).logits
        with Engine(tiny).session(Plan.from_spec("longheads:chunk=16,chunks=4")):
            got = tiny.model(torch.tensor([prompt])).logits
    assert (got[0, :64] - plain[0, :64]).abs().max() < 1e-4  # chunks 0..3: plain attention
    assert (got[0, 64:] - plain[0, 64:]).abs().max() > 1e-4  # selection beyond the budget


@pytest.mark.parametrize("spec,chunk", [("longheads:chunk=16,chunks=4", 48), ("longheads:chunk=8,chunks=5", 1),
                                        ("longheads:chunk=16,chunks=4,score=query", 48),
                                        ("longheads:chunk=8,chunks=5,score=query", 1)])
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
        with Engine(gemma).session(Plan.from_spec("longheads:chunk=32,chunks=4")):
            got = gemma.model(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)


def test_reader_reads_past_the_native_window(llama):
    from longreach.readers import Request

    plan = Plan.from_spec("longheads:chunk=32,chunks=8")
    assert plan.reach(llama.info) is None
    doc = "abcdefgh " * 115  # ~1,035 byte tokens, native window 256
    res = Engine(llama).run(plan, Request(doc, "which letter?", max_new_tokens=3, chunk_size=100))
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
    with pytest.raises(SpecError, match="longheads:score"):
        build_method(parse_spec("longheads:score=mean")[0])
    assert str(build_method(parse_spec("longheads:score=query")[0])) == "longheads:score=query"
    with pytest.raises(SpecError, match="native window 256") as err:
        build_method(parse_spec("longheads")[0]).check(llama.info)  # 256 x 16 = 4096 > 256
    assert "\n" not in str(err.value) and "use e.g. chunk=16" in str(err.value)
    with pytest.raises(SpecError, match="use e.g. chunks=4"):
        build_method(parse_spec("longheads:chunk=64,chunks=5")[0]).check(llama.info)
    m = build_method(parse_spec("longheads:chunk=64,chunks=4")[0])
    m.check(llama.info)  # exactly the window
    assert m.reach(llama.info) is None and str(m) == "longheads:chunk=64,chunks=4"
