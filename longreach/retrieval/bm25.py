"""Okapi BM25 over chunks, Lucene variant, streamed into on-disk shards and scored from memory maps.

Scores (Kamphuis et al., ECIR 2020, "Which BM25 do you mean?"; the same as ``bm25s`` with
``method="lucene"``, which the tests use as the reference)::

    score(q, d) = sum over distinct query terms t in d of  idf(t) * tf / (tf + k1 * (1 - b + b * L_d / L_avg))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)),   k1 = 1.5, b = 0.75

with N, df and L_avg taken over the WHOLE index (every shard). Terms: lower-cased words of two or more
characters (bm25s' default pattern ``\\b\\w\\w+\\b``), English stop words removed (bm25s' bundled list);
L_d = the number of a chunk's terms.

Layout of a BM25 folder (written by :class:`BM25Writer`, read by :class:`BM25`)::

    params.json            N, L_avg, k1, b, number of terms and of shards
    vocab.json             term -> id (ids in order of first appearance)
    df.npy                 (V,) int64 chunks holding each term
    lengths.npy            (N,) float32 terms per chunk
    shard-<k>.indptr.npy   (V_k + 1,) int64 \\
    shard-<k>.indices.npy  (nnz,) int32     > a CSR term x chunk tf matrix of chunks [start_k, start_k + S)
    shard-<k>.data.npy     (nnz,) float32  /  (V_k = the terms known when the shard was written)
    stopwords.txt

Memory bound. Building holds the vocabulary (a dict, one entry per distinct term: it grows sub-linearly
with the text), df (8 bytes per term), the chunk lengths (4 bytes per chunk) and the postings of at most
``shard`` chunks (the current shard, 12 bytes per distinct term of a chunk: ~50 MB for the default 25,000 chunks of 256
tokens); every full shard goes to
disk. Scoring memory-maps each shard and reads only the query terms' postings, plus the (N,) float32
score vector. Nothing is proportional to the text's length except 4-8 bytes per chunk.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse

TERM = re.compile(r"(?u)\b\w\w+\b")
K1, B = 1.5, 0.75
SHARD = 25_000  # chunks per shard (25,000 chunks of 256 tokens: ~6M tokens, ~50 MB of postings while built)


def stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def terms(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
    return [t for t in TERM.findall(text.lower()) if t not in stop]


def lucene_idf(df: np.ndarray, n: int) -> np.ndarray:
    """``ln(1 + (N - df + 0.5) / (df + 0.5))`` per term, float64."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((n - df + 0.5) / (df + 0.5))


class BM25Writer:
    """Chunks stream in (:meth:`add`); every ``shard`` chunks a CSR term x chunk tf shard is written to
    ``folder``; :meth:`close` writes the vocabulary, df, lengths and parameters."""

    def __init__(self, folder: Path, stop: frozenset[str] | None = None, shard: int = SHARD):
        if shard < 1:
            raise ValueError(f"shard={shard} must be at least 1 chunk")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stop = stopwords() if stop is None else stop
        self.shard = shard
        self.vocab: dict[str, int] = {}
        self.df = array("q")  # per term id
        self.lengths = array("i")  # per chunk (all shards: 4 bytes per chunk)
        self.shards = 0
        # the current shard's postings, as COO triples (term id, chunk within the shard, tf): 12 bytes each
        self._rows, self._cols, self._tfs = array("i"), array("i"), array("i")
        self._in_shard = 0

    def add(self, text: str) -> None:
        counts = Counter(self.vocab.setdefault(t, len(self.vocab)) for t in terms(text, self.stop))
        grow = len(self.vocab) - len(self.df)
        if grow:
            self.df.extend(array("q", bytes(8 * grow)))
        for term, tf in counts.items():
            self.df[term] += 1
            self._rows.append(term)
            self._cols.append(self._in_shard)
            self._tfs.append(tf)
        self.lengths.append(sum(counts.values()))
        self._in_shard += 1
        if self._in_shard == self.shard:
            self._flush()

    def _flush(self) -> None:
        if not self._in_shard:
            return
        shape = (len(self.vocab), self._in_shard)  # (V_k, chunks of this shard)
        m = scipy.sparse.csr_matrix((np.frombuffer(self._tfs, dtype=np.int32).astype(np.float32),
                                     (np.frombuffer(self._rows, dtype=np.int32), np.frombuffer(self._cols, dtype=np.int32))),
                                    shape=shape)
        m.sort_indices()
        stem = self.folder / f"shard-{self.shards}"
        np.save(f"{stem}.indptr.npy", m.indptr.astype(np.int64))
        np.save(f"{stem}.indices.npy", m.indices.astype(np.int32))
        np.save(f"{stem}.data.npy", m.data.astype(np.float32))
        self.shards += 1
        self._rows, self._cols, self._tfs, self._in_shard = array("i"), array("i"), array("i"), 0

    def close(self) -> None:
        self._flush()
        n = len(self.lengths)
        avg = float(sum(self.lengths)) / n if n else 0.0
        (self.folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False))
        np.save(self.folder / "df.npy", np.frombuffer(self.df, dtype=np.int64))
        np.save(self.folder / "lengths.npy", np.frombuffer(self.lengths, dtype=np.int32).astype(np.float32))
        (self.folder / "stopwords.txt").write_text("\n".join(sorted(self.stop)))
        params = {"chunks": n, "avg_length": avg, "k1": K1, "b": B, "terms": len(self.vocab), "shards": self.shards,
                  "shard": self.shard}
        (self.folder / "params.json").write_text(json.dumps(params))


class BM25:
    """A saved sharded BM25 index: scores of every chunk for a query."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.params = json.loads((self.folder / "params.json").read_text())
        self.size: int = self.params["chunks"]
        self.shard: int = self.params["shard"]
        self.k1, self.b = float(self.params["k1"]), float(self.params["b"])
        self.avg = float(self.params["avg_length"])
        self.vocab: dict[str, int] = json.loads((self.folder / "vocab.json").read_text())
        self.df = np.load(self.folder / "df.npy", mmap_mode="r")
        self.lengths = np.load(self.folder / "lengths.npy", mmap_mode="r")
        self.stop = frozenset((self.folder / "stopwords.txt").read_text().split("\n")) - {""}

    def term_ids(self, query: str) -> list[int]:
        """Distinct known query terms, in query order."""
        return list(dict.fromkeys(self.vocab[t] for t in terms(query, self.stop) if t in self.vocab))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk, shape (N,) float32 (0 where no query term occurs)."""
        out = np.zeros(self.size, dtype=np.float32)
        ids = self.term_ids(query)
        if not ids or self.avg == 0:
            return out
        idf = lucene_idf(self.df[ids], self.size)  # (q,)
        for k in range(self.params["shards"]):
            stem = self.folder / f"shard-{k}"
            indptr = np.load(f"{stem}.indptr.npy", mmap_mode="r")  # (V_k + 1,)
            indices = np.load(f"{stem}.indices.npy", mmap_mode="r")  # (nnz,)
            data = np.load(f"{stem}.data.npy", mmap_mode="r")  # (nnz,)
            start = k * self.shard
            for t, w in zip(ids, idf):
                if t + 1 >= len(indptr):  # a term first seen after this shard was written
                    continue
                lo, hi = int(indptr[t]), int(indptr[t + 1])
                if lo == hi:
                    continue
                rows = start + np.asarray(indices[lo:hi], dtype=np.int64)  # (p,) chunk numbers
                tf = np.asarray(data[lo:hi], dtype=np.float64)  # (p,)
                norm = self.k1 * (1 - self.b + self.b * np.asarray(self.lengths[rows], dtype=np.float64) / self.avg)
                out[rows] += (w * tf / (tf + norm)).astype(np.float32)
        return out
