"""Retrieval mechanisms of the rag reader: sentence-aligned chunks with overlap, BM25 against a
hand-written Okapi BM25 (Lucene variant), dense embeddings against an independent mean pooling,
reciprocal rank fusion, and the on-disk index cache (reused, invalidated when a file changes)."""

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
from longreach.retrieval.bm25 import B, K1, TermCounter, terms
from longreach.retrieval.chunks import check_sizes, iter_document_chunks
from longreach.retrieval.embed import Embedder
from longreach.retrieval.fuse import rrf, top
from longreach.retrieval.index import Source, open_index

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


@pytest.mark.parametrize("query", ["zorp", "quux flarn", "dax wibble blick", "nothing here"])
def test_bm25_matches_the_formula(tmp_path, query):
    counter = TermCounter(stop=frozenset())
    for text in CORPUS:
        counter.add(text)
    (tmp_path / "bm25").mkdir()
    counter.save(tmp_path / "bm25")
    from longreach.retrieval.bm25 import BM25

    got = BM25(tmp_path / "bm25").scores(query)
    want = okapi_lucene([terms(t) for t in CORPUS], terms(query), K1, B)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


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
        assert ix.search("pass key", "dense", 50, e) == sorted(range(ix.size), key=lambda i: -want[i])


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
