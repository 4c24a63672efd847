"""Okapi BM25 over chunks with ``bm25s`` (Lucene variant: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``,
term part ``tf / (tf + k1 * (1 - b + b * L / L_avg))``; k1 = 1.5, b = 0.75 as bm25s), saved to and
memory-mapped from a folder.

Terms: lower-cased words of two or more characters (bm25s' default pattern ``\\b\\w\\w+\\b``), English
stop words removed (bm25s' bundled list); one vocabulary for chunks and queries, built as the chunks
stream by (:class:`TermCounter`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

TERM = re.compile(r"(?u)\b\w\w+\b")
K1, B = 1.5, 0.75


def stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def terms(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
    return [t for t in TERM.findall(text.lower()) if t not in stop]


class TermCounter:
    """Term ids of chunks as they stream by (one vocabulary), then the bm25s index."""

    def __init__(self, stop: frozenset[str] | None = None):
        self.stop = stopwords() if stop is None else stop
        self.vocab: dict[str, int] = {}
        self.ids: list[np.ndarray] = []  # per chunk, int32 term ids

    def add(self, text: str) -> None:
        self.ids.append(np.array([self.vocab.setdefault(t, len(self.vocab)) for t in terms(text, self.stop)],
                                 dtype=np.int32))

    def save(self, folder: Path) -> None:
        """Index the chunks with bm25s and save it to ``folder``."""
        import bm25s
        from bm25s.tokenization import Tokenized

        vocab = dict(self.vocab)
        if not vocab:  # bm25s needs one term; a corpus of stop words only scores 0 everywhere
            vocab[""] = 0
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        retriever.index(Tokenized(ids=[a.tolist() for a in self.ids], vocab=vocab), show_progress=False)
        retriever.save(str(folder))
        (folder / "stopwords.txt").write_text("\n".join(sorted(self.stop)))


class BM25:
    """A saved BM25 index: scores of every chunk for a query."""

    def __init__(self, folder: Path):
        import bm25s

        self.retriever = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        self.stop = frozenset((folder / "stopwords.txt").read_text().split("\n")) - {""}
        self.size = int(self.retriever.scores["num_docs"])

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk, shape (N,) float32 (0 where no query term occurs)."""
        vocab = self.retriever.vocab_dict
        ids = [vocab[t] for t in terms(query, self.stop) if t in vocab and t]
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(ids), dtype=np.float32)
