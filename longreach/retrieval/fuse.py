"""Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): ``score(d) = sum over rankings of
1 / (k + rank(d))``, ranks 1-based, k = 60; a document missing from a ranking adds nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60


def top(scores: np.ndarray, n: int, positive: bool = False) -> list[int]:
    """Indices of the ``n`` best scores, best first (ties: lower index first); with ``positive`` scores of
    0 or less are dropped (BM25: no query term in the chunk)."""
    n = min(n, len(scores))
    if n <= 0:
        return []
    cand = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    order = sorted(cand.tolist(), key=lambda i: (-float(scores[i]), i))
    return [i for i in order if scores[i] > 0] if positive else order


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Fused order of the items of ``rankings`` (each best first); ties keep the first ranking's order."""
    score: dict[int, float] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    for r, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
            first_seen.setdefault(item, (rank, r))
    return sorted(score, key=lambda i: (-score[i], first_seen[i]))
