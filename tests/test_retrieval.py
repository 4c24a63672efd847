"""Retrieval mechanisms of the rag reader: sentence-aligned chunks with overlap, the sharded BM25 against a
hand-written Okapi BM25 (Lucene variant) and against bm25s, dense embeddings against an independent mean
pooling, reciprocal rank fusion, hybrid search with a BM25 pool, deduplicated and cached chunk vectors,
situated inputs, and the on-disk index cache (reused, invalidated when a file changes, stat-cached hashes)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.readers.sentences import iter_sentences
from longreach.retrieval import index as index_mod
from longreach.retrieval.bm25 import BM25, K1, B, BM25Writer, stopwords, terms
from longreach.retrieval.chunks import check_sizes, iter_document_chunks
from longreach.retrieval.embed import Embedder
from longreach.retrieval.fuse import rrf, top
from longreach.retrieval.index import Source, iter_situated, open_index

text_chars = st.sampled_from(list("ab cd.!?\n'") + ["xyz", "  ", ". ", "\n\n", "Word one. "])
texts = st.lists(text_chars, max_size=80).map("".join)


# ------------------------------------------------------------------------------------------ chunks
@settings(max_examples=25, deadline=None)
@given(texts.filter(str.strip), st.integers(8, 40), st.integers(0, 20))
def test_chunks_cover_every_token_once_and_respect_sentences(text, chunk, overlap):
    overlap = min(overlap, chunk // 2)
    tok = byte_tokenizer()
    chunks = list(iter_document_chunks(text, tok, chunk, overlap))
    assert "".join(c.new_text for c in chunks) == text  # every character (byte token) exactly once in new parts
    assert sum(c.new_tokens for c in chunks) == len(tok(text, add_special_tokens=False).input_ids)
    assert all(c.tokens <= chunk and c.tokens == len(c.text.encode()) for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # boundaries: where a chunk ends is a sentence end (unless an overlong sentence had to be cut)
    ends, pos = set(), 0
    for s in iter_sentences([text]):
        pos += len(s)
        ends.add(pos)
    pos = 0
    for c in chunks:
        pos += len(c.new_text)
        longest = max(len(s) for s in iter_sentences([text]))
        assert pos in ends or longest > chunk - overlap
    for prev, c in zip(chunks, chunks[1:]):  # the overlap is a suffix of whole sentences of the previous chunk
        head = c.text[: c.overlap_chars]
        assert prev.text.endswith(head) and len(head.encode()) <= overlap


def test_chunk_line_spans():
    text = "First line.\nSecond line. Still second.\n\nFourth line here.\nFifth."
    tok = byte_tokenizer()
    chunks = list(iter_document_chunks(text, tok, 16, 0))
    for c in chunks:
        start = text.index(c.text.strip())
        first = text[:start].count("\n") + 1
        assert (c.first_line, c.last_line) == (first, first + c.text.strip().count("\n"))
    with_overlap = list(iter_document_chunks(text, tok, 40, 20))
    assert with_overlap[-1].last_line == 5 and any(c.overlap_chars for c in with_overlap)


@pytest.mark.parametrize("chunk,overlap", [(4, 0), (64, 33), (64, -1)])
def test_bad_sizes(chunk, overlap):
    with pytest.raises(ValueError):
        check_sizes(chunk, overlap)


# -------------------------------------------------------------------------------------------- BM25
CORPUS = [
    "zorp blick zorp quux",
    "blick flarn",
    "quux quux quux flarn wibble dax",
    "dax",
]


def okapi_lucene(corpus: list[list[str]], query: list[str], k1: float, b: float) -> list[float]:
    """Okapi BM25, Lucene variant, written out from the formula (not from bm25s)."""
    n = len(corpus)
    avg = sum(len(d) for d in corpus) / n
    df = Counter(t for d in corpus for t in set(d))
    out = []
    for d in corpus:
        tf = Counter(d)
        s = 0.0
        for t in set(query):
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def _bm25(folder, texts, shard=1000, stop=frozenset()):
    w = BM25Writer(folder, stop=stop, shard=shard)
    for text in texts:
        w.add(text)
    w.close()
    return BM25(folder)


@pytest.mark.parametrize("query", ["zorp", "quux flarn", "dax wibble blick", "nothing here", "zorp zorp"])
def test_bm25_matches_the_formula(tmp_path, query):
    got = _bm25(tmp_path / "bm25", CORPUS).scores(query)
    want = okapi_lucene([terms(t) for t in CORPUS], terms(query), K1, B)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


PROSE = [
    "The old lighthouse keeper climbed the stairs of the lighthouse every night.",
    "A storm broke over the harbour and the boats were pulled onto the shore.",
    "The keeper's logbook recorded every ship that passed the rocks.",
    "In the morning the harbour was quiet, and the fishermen mended their nets.",
    "Nobody in the village remembered when the lighthouse was built.",
    "The pass key is 71432; remember it, the keeper said.",
    "Ships, storms, nets: the harbour had seen them all, and the keeper too.",
]


@pytest.mark.parametrize("query", ["lighthouse keeper", "What is the pass key?", "harbour storm ships nets",
                                   "the and of", "village village built"])
def test_bm25_equals_bm25s(tmp_path, query):
    """The reference: bm25s (method="lucene") on the same tokens and stop words."""
    import bm25s
    from bm25s.tokenization import Tokenized

    stop = stopwords()
    ours = [terms(t, stop) for t in PROSE]
    assert ours == bm25s.tokenize(PROSE, stopwords="en", return_ids=False, show_progress=False)  # same terms
    got = _bm25(tmp_path / "bm25", PROSE, stop=stop).scores(query)
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in doc] for doc in ours]
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
    q = list(dict.fromkeys(vocab[t] for t in terms(query, stop) if t in vocab))
    want = ref.get_scores(q) if q else np.zeros(len(PROSE))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got > 0).any() == bool(q)


def test_bm25_shards_give_the_same_scores(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(41)]
    texts[17] = "late arrival only here"  # a term first seen in a later shard
    one = _bm25(tmp_path / "one", texts, shard=1000)
    many = _bm25(tmp_path / "many", texts, shard=4)
    assert many.params["shards"] == 11 and one.params["shards"] == 1
    for query in ["w3", "w1 w2 w50", "arrival w7", "absent"]:
        np.testing.assert_allclose(many.scores(query), one.scores(query), rtol=1e-6, atol=1e-7)
        want = okapi_lucene([terms(t) for t in texts], terms(query), K1, B)
        np.testing.assert_allclose(many.scores(query), want, rtol=1e-5, atol=1e-6)


def test_index_with_small_shards_ranks_as_one_shard(tmp_path):
    doc = _doc_with_key(60)
    tok = byte_tokenizer()
    with open_index([Source("", doc)], tok, 40, 8, root=tmp_path / "a", shard=3) as a, \
            open_index([Source("", doc)], tok, 40, 8, root=tmp_path / "b") as b:
        assert len(list((a.folder / "bm25").glob("shard-*.data.npy"))) == -(-a.size // 3) > 3
        np.testing.assert_allclose(a.bm25_scores("pass key 4242"), b.bm25_scores("pass key 4242"), rtol=1e-6)
        assert a.search("pass key", "bm25", 5) == b.search("pass key", "bm25", 5)
        assert "4242" in a.chunk(a.search("pass key", "bm25", 5)[0]).text


def test_terms_drop_stopwords_and_short_tokens():
    assert terms("The Cat, a cat and I.", frozenset({"the", "and"})) == ["cat", "cat"]


# -------------------------------------------------------------------------------------------- fusion
def test_rrf_order_against_the_formula():
    a, b = [3, 1, 2], [1, 4, 3]
    got = rrf([a, b], k=60)
    score = {d: sum(1 / (60 + r.index(d) + 1) for r in (a, b) if d in r) for d in {1, 2, 3, 4}}
    assert got == sorted(score, key=lambda d: -score[d]) == [1, 3, 4, 2]  # in both lists first, then by rank
    assert rrf([[5, 6]]) == [5, 6]  # one list: its own order
    assert rrf([[1, 2], [2, 1]]) == [1, 2]  # equal scores: the first list's order


def test_rrf_missing_contributes_nothing():
    # item 9 is first in one list only; item 2 is second in both: 2/(62) > 1/(61)
    assert rrf([[9, 2], [7, 2]])[0] == 2


def test_top_orders_and_filters():
    s = np.array([0.5, 0.0, 2.0, 0.5, -1.0], dtype=np.float32)
    assert top(s, 3) == [2, 0, 3]
    assert top(s, 10, positive=True) == [2, 0, 3]
    assert top(s, 10) == [2, 0, 3, 1, 4]


# -------------------------------------------------------------------------------------------- dense
def test_embedder_mean_pools_and_normalises(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    e = Embedder(tiny_bert)
    texts = ["the cat is on the mat", "blue sky", "the pass key is 42"]
    got = e.embed(texts)  # (3, 32)
    tok, model = AutoTokenizer.from_pretrained(str(tiny_bert)), AutoModel.from_pretrained(str(tiny_bert)).eval()
    for i, t in enumerate(texts):  # one text at a time: no padding, plain mean over its tokens
        with torch.no_grad():
            h = model(**tok(t, return_tensors="pt")).last_hidden_state[0]  # (T, 32)
        v = h.mean(0).numpy()
        np.testing.assert_allclose(got[i], v / np.linalg.norm(v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_dense_scores_are_cosines(tiny_bert, tmp_path):
    e = Embedder(tiny_bert)
    doc = "The cat sat on the mat. " * 3 + "The sky is blue today. " * 3 + "The pass key is 42. " * 3
    with open_index([Source("", doc)], byte_tokenizer(), 24, 0, root=tmp_path) as ix:
        got = ix.dense_scores("pass key", e)
        vectors = e.embed([c.text for c in ix.iter_chunks()])
        q = e.embed(["pass key"])[0]
        want = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        ranked = sorted(range(ix.size), key=lambda i: -want[i])
        assert ix.search("pass key", "dense", 50, e) == ix.distinct(ranked, 50)  # one copy of a repeated text
        assert ix.distinct(ranked, 50)[0] == ranked[0]


def test_packaged_minilm_ranks_by_meaning():
    from longreach.retrieval.embed import default_folder

    try:
        folder = default_folder()
    except Exception as exc:  # the registry package is not installed here
        pytest.skip(str(exc))
    e = Embedder(folder)
    assert e.max_length == 256 and e.dim == 384
    v = e.embed(["A cat is sleeping on the rug.", "Stock markets fell sharply on Monday.",
                 "Where is the kitten resting?"])
    assert v[2] @ v[0] > v[2] @ v[1] + 0.2


# -------------------------------------------------------------------------------------------- index
def test_index_is_cached_and_invalidated_when_the_file_changes(tmp_path):
    tok = byte_tokenizer()
    path = tmp_path / "doc.txt"
    path.write_text("Alpha beta. Gamma delta. The zorp is red.\n")
    root = tmp_path / "cache"
    with open_index([Source("doc.txt", path)], tok, 32, 0, root=root) as a:
        assert a.built and a.size >= 2
        first = a.folder
    with open_index([Source("doc.txt", path)], tok, 32, 0, root=root) as b:
        assert not b.built and b.folder == first  # same content: read from the cache
    with open_index([Source("doc.txt", path)], tok, 48, 0, root=root) as c:
        assert c.built and c.folder != first  # other settings: another index
    path.write_text("Alpha beta. Gamma delta. The zorp is green.\n")
    with open_index([Source("doc.txt", path)], tok, 32, 0, root=root) as d:
        assert d.built and d.folder != first
        best = d.search("zorp", "bm25", 5)[0]
        assert "green" in d.chunk(best).text
    assert not any(p.name.count(".tmp-") for p in root.iterdir())  # no half-built folders left


def test_streamed_pieces_get_a_temporary_index(tmp_path):
    pieces = iter(["The zorp ", "is red. Other ", "words here."])
    with open_index([Source("", pieces)], byte_tokenizer(), 16, 0, root=tmp_path) as ix:
        folder = ix.folder
        assert "zorp" in ix.chunk(ix.search("zorp", "bm25", 5)[0]).text
    assert not folder.exists()


def test_empty_document_is_one_line_error(tmp_path):
    from longreach.errors import InputError

    with pytest.raises(InputError, match="no text"):
        open_index([Source("", "")], byte_tokenizer(), 16, 0, root=tmp_path)


# -------------------------------------------------------------------------------------------- hybrid pool
def _doc_with_key(n: int) -> str:
    lines = [f"Line {i} tells of harbour number {i * 7 % 13} and a ship called {chr(97 + i % 26)}{i}." for i in range(n)]
    lines.insert(n // 2, "The pass key is 4242.")
    return "\n".join(lines) + "\n"


class Counting:
    """An embedder that records what it is asked to embed (chunk inputs; the query is left out)."""

    def __init__(self, inner, query: str = ""):
        self.inner, self.query = inner, query
        self.dim, self.batch, self.fingerprint = inner.dim, inner.batch, inner.fingerprint
        self.texts: list[str] = []
        self.items: list[tuple[str, int, int]] = []

    def embed(self, texts):
        self.texts += [t for t in texts if t != self.query]
        return self.inner.embed(texts)

    def embed_situated(self, items):
        self.items += list(items)
        return self.inner.embed_situated(items)


def test_pool_semantics(tiny_bert, tmp_path):
    from longreach.retrieval.index import Index

    e = Embedder(tiny_bert)
    q = "which ship is in harbour 5 with the pass key"
    doc = _doc_with_key(40)
    with open_index([Source("", doc)], byte_tokenizer(), 48, 8, root=tmp_path / "a") as ix:
        full = ix.search(q, "hybrid", 10, e, pool=0)
        assert ix.search(q, "hybrid", 10, e, pool=ix.size) == full == ix.search(q, "hybrid", 10, e, pool=10**6)
        assert full == rrf([ix.distinct(top(ix.bm25_scores(q), 80, positive=True), 10),
                            ix.distinct(top(ix.dense_scores(q, e), 80), 10)])
    with open_index([Source("", doc)], byte_tokenizer(), 48, 8, root=tmp_path / "b") as ix:
        pool = ix.size // 3
        counting = Counting(e, q)
        got = ix.search(q, "hybrid", 10, counting, pool=pool)
        bm25 = ix.bm25_scores(q)
        cand = sorted(top(bm25, pool))
        texts = [ix.chunk(i).text for i in cand]
        dense = e.embed(texts) @ e.embed([q])[0]  # (pool,)
        want = rrf([ix.distinct(top(bm25, 80, positive=True), 10), ix.distinct([cand[j] for j in top(dense, 80)], 10)])
        assert got == want
        assert sorted(counting.texts) == sorted(texts)  # only the pool was embedded ...
        assert int(np.asarray(Index(ix.folder).dense(e).done).sum()) == pool  # ... and kept
        counting.texts.clear()
        ix.search(q, "hybrid", 10, counting, pool=pool)
        assert counting.texts == []  # the second question on the index embeds nothing new
        ix.search("ship a1 harbour", "hybrid", 10, counting, pool=pool)
        assert 0 < len(counting.texts) <= pool  # only new pool members


def test_identical_chunks_are_embedded_once(tiny_bert, tmp_path):
    e = Embedder(tiny_bert)
    filler = "The grass is green. The sky is blue. The sun is warm. " * 30
    doc = filler + "The pass key is 4242. " + filler
    with open_index([Source("", doc)], byte_tokenizer(), 60, 0, root=tmp_path) as ix:
        counting = Counting(e, "key")
        scores = ix.dense_scores("key", counting)
        chunk_texts = [c.text for c in ix.iter_chunks()]
        assert len(counting.texts) == len(set(chunk_texts)) < ix.size / 3  # each distinct text once
        assert sorted(counting.texts) == sorted(set(chunk_texts))
        rows = np.asarray(ix.dense(e).rows)
        for i, t in enumerate(chunk_texts):  # equal texts share a row, different texts do not
            j = chunk_texts.index(t)
            assert rows[i] == rows[j] and scores[i] == scores[j]
        assert len(set(rows.tolist())) == len(set(chunk_texts))
        want = np.array([v @ e.embed(["key"])[0] for v in e.embed(chunk_texts)])
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5)
        counting.texts.clear()
        ix.dense_scores("key", counting)
        assert counting.texts == []


# -------------------------------------------------------------------------------------------- situated
def test_situated_inputs_stream_and_random_access_agree(tmp_path):
    docs = [_doc_with_key(12), "Second file. It is short.\nIt has three lines.\n"]
    tok = byte_tokenizer()
    with open_index([Source(f"f{i}", d) for i, d in enumerate(docs)], tok, 40, 10, root=tmp_path) as ix:
        chunks = list(ix.iter_chunks())
        for situated in (1, 3, 10, 200):  # 4 .. 800 characters of context per side (several neighbours)
            chars = 4 * situated
            stream = list(ix.iter_inputs(situated))
            assert stream == [ix.input_at(i, situated) for i in range(ix.size)]
            pos: dict[int, int] = {}
            for c, (text, start, end) in zip(chunks, stream):
                doc = docs[c.source]
                begin = pos.get(c.source, 0) - c.overlap_chars  # where the chunk's text starts in its document
                pos[c.source] = pos.get(c.source, 0) + len(c.new_text)
                assert text[start:end] == c.text == doc[begin:begin + len(c.text)]
                assert text == doc[max(0, begin - chars):begin + len(c.text) + chars]  # context from its own file


def test_dense_situated_uses_the_situated_inputs(tiny_bert, tmp_path):
    e = Embedder(tiny_bert)
    with open_index([Source("", _doc_with_key(10))], byte_tokenizer(), 48, 8, root=tmp_path) as ix:
        counting = Counting(e, "pass key")
        got = ix.dense_scores("pass key", counting, situated=8, window=0)
        items = list(iter_situated(ix.iter_chunks(), 32))
        assert sorted(counting.items) == sorted(set(items)) and counting.texts == []
        want = e.embed_situated(items) @ e.embed(["pass key"])[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        names = {p.name for p in ix.folder.glob("dense-*")}
        assert names == {f"dense-{e.fingerprint}-w0-s8"}
        ix.dense_scores("pass key", e)  # plain vectors: another cache beside it
        assert {p.name for p in ix.folder.glob("dense-*")} == names | {f"dense-{e.fingerprint}-w0-s0"}


# -------------------------------------------------------------------------------------------- hash cache
def test_file_hashes_are_cached_by_stat(tmp_path, monkeypatch):
    import os
    import time

    calls = []
    real = index_mod.file_sha256
    monkeypatch.setattr(index_mod, "file_sha256", lambda p: calls.append(p) or real(p))
    path, root, tok = tmp_path / "doc.txt", tmp_path / "cache", byte_tokenizer()
    path.write_text("Alpha beta. The zorp is red.\n")
    with open_index([Source("doc.txt", path)], tok, 32, 0, root=root):
        pass
    assert not (root / "hashes.json").exists()  # changed within the last 2 s: hashed, not cached (racy)
    calls.clear()
    monkeypatch.setattr(index_mod, "RACY_NS", 0)
    past = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(past, past))

    def key():
        with open_index([Source("doc.txt", path)], tok, 32, 0, root=root) as ix:
            return ix.folder, ix.built

    first, built = key()
    assert not built and len(calls) == 1
    assert key() == (first, False) and len(calls) == 1  # unchanged: not read again
    os.utime(path, None)  # touched, same bytes: re-hashed, same index
    assert key() == (first, False) and len(calls) == 2
    path.write_text("Alpha beta. The zorp is tan.\n")  # same size, new bytes
    os.utime(path, ns=(past, past))  # even with the old mtime (ctime changed)
    second, built = key()
    assert built and second != first and len(calls) == 3
    assert key() == (second, False) and len(calls) == 3


def test_copies_of_one_passage_do_not_fill_the_ranking(tmp_path):
    """A document that repeats itself (filler, a haystack read several times): each ranking keeps one copy
    of a repeated chunk text, so a unique passage further down is still retrieved."""
    from longreach.retrieval.index import Source, open_index

    tok = byte_tokenizer()
    repeated = "The harbour soup of Velmora is famous among sailors. " * 3
    text = repeated * 12 + "The secret ingredient of the harbour soup is juniper. " + repeated * 12
    with open_index([Source("", text)], tok, 160, 0, root=tmp_path) as ix:
        assert ix.size > 8
        ranked = ix.search("What is the secret ingredient of the harbour soup?", "bm25", 4)
        texts = [c.text for c in ix.chunks_at(ranked)]
        assert len(texts) == len(set(texts))  # no two copies of one text
        assert any("juniper" in t for t in texts)
        assert ix.distinct(list(range(ix.size)), 100) == sorted(set(ix.distinct(list(range(ix.size)), 100)))
