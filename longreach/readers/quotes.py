"""Quotes a model says it copied from a text: parse them, then check each against the text.

ALR² (arXiv 2410.03227, "ALR²: A Retrieve-then-Reason Framework for Long-context Question Answering")
measures how often a model "retrieves" facts that are not in its context. Here a quote is checked in two
steps (pure functions, no model):

1. exact: the quote, whitespace-normalised, is a substring of the whitespace-normalised text -> verified;
   its evidence is the whole source sentence(s) it lies in;
2. fuzzy: else the best of ``rapidfuzz`` ``fuzz.ratio`` over the text's sentences and pairs of consecutive
   sentences (quote ~ sentence: a typo, other case, other punctuation) and, for candidates longer than the
   quote (quote ~ part of a sentence), ``fuzz.ratio`` against the quote-long windows that start or end where
   ``fuzz.partial_ratio_alignment`` places the quote, all on lower-cased alphanumerics
   (``rapidfuzz.utils.default_process``), with ``score_cutoff`` = the threshold -> verified as that SOURCE
   sentence (its text, not the quote's);
3. else hallucinated.

Parts are never matched in a candidate shorter than the quote: an invented quote that merely contains a
real sentence would otherwise align that sentence inside itself and score 100.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from .sentences import iter_sentences

MIN_QUOTE_CHARS = 8  # shorter lines are not quotes ("1.", "Yes.", a bare number): too short to verify
DEFAULT_FUZZY = 90.0

# leading list markers: "1.", "1)", "(1)", "[1]", "-", "*", "•", "Quote 1:", "Sentence 2 -", "> "
_MARKER = re.compile(r"^\s*(?:>\s*|[-*•·–—]\s*|\(?\[?\d{1,3}[.)\]:]\s*|(?:quote|sentence)\s*\d{0,3}\s*[:.)-]\s*)+",
                     re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}


def normalize(text: str) -> str:
    """Whitespace runs -> one space, ends stripped (the exact criterion compares these)."""
    return " ".join(text.split())


def parse_quotes(text: str, limit: int | None = None) -> list[str]:
    """The quotes of a model's output, one per line: list markers and surrounding quotation marks stripped,
    preambles (a line ending in ':'), lines under :data:`MIN_QUOTE_CHARS` and repeats dropped; the first
    ``limit`` (None = all)."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        q = _MARKER.sub("", line).strip()
        q = _unquote(q)
        q = normalize(q)
        if len(q) < MIN_QUOTE_CHARS or q.endswith(":") or q in seen:
            continue
        seen.add(q)
        out.append(q)
        if limit is not None and len(out) == limit:
            break
    return out


def _unquote(q: str) -> str:
    """``"text"`` / ``“text”`` / ``'text'`` -> ``text`` (also a closing mark before a final period)."""
    for _ in range(2):
        if len(q) >= 2 and q[0] in _QUOTE_PAIRS:
            close = _QUOTE_PAIRS[q[0]]
            if q.endswith(close):
                q = q[1:-1].strip()
            elif q.endswith(close + ".") or q.endswith(close + ","):
                q = q[1:-2].strip()
            elif close not in q[1:]:
                q = q[1:].strip()  # an opening mark whose line was cut off
    return q


def source_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (:func:`~longreach.readers.sentences.iter_sentences`), normalised, non-empty."""
    return [s for s in (normalize(x) for x in iter_sentences([text])) if s]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One quote checked: ``how`` is exact, fuzzy or hallucinated; ``source`` the source text it stands for
    ("" when hallucinated); ``score`` the fuzzy score (100 for exact, 0 when hallucinated)."""

    quote: str
    how: str
    source: str
    score: float

    @property
    def verified(self) -> bool:
        return self.how != "hallucinated"


class Verifier:
    """Checks quotes against one source text (its sentences split and normalised once)."""

    def __init__(self, text: str, fuzzy: float = DEFAULT_FUZZY):
        if not 0 < fuzzy <= 100:
            raise ValueError(f"fuzzy={fuzzy:g} must be in (0, 100] (rapidfuzz score; default {DEFAULT_FUZZY:g})")
        self.fuzzy = fuzzy
        self.sentences = source_sentences(text)
        self.joined = " ".join(self.sentences)  # == normalize(text)
        self._starts: list[int] = []  # offset of each sentence in ``joined``
        pos = 0
        for s in self.sentences:
            self._starts.append(pos)
            pos += len(s) + 1
        pairs = [f"{a} {b}" for a, b in zip(self.sentences, self.sentences[1:])]
        self.candidates = self.sentences + pairs  # a quote may run over a sentence boundary
        self._processed = [default_process(c) for c in self.candidates]

    def check(self, quote: str) -> Verdict:
        q = normalize(quote)
        if not q:
            return Verdict(quote, "hallucinated", "", 0.0)
        at = self.joined.find(q)
        if at >= 0:
            return Verdict(quote, "exact", self._covering(at, at + len(q)), 100.0)
        pq = default_process(q)
        best, best_i = 0.0, -1
        for i, pc in enumerate(self._processed):
            score = fuzz.ratio(pq, pc, score_cutoff=self.fuzzy)
            if len(pc) > len(pq):
                score = max(score, self._part_score(pq, pc))
            if score > best:
                best, best_i = score, i
        if best_i >= 0:
            return Verdict(quote, "fuzzy", self.candidates[best_i], float(best))
        return Verdict(quote, "hallucinated", "", 0.0)

    def _part_score(self, pq: str, pc: str) -> float:
        """How well ``pq`` matches a part of the longer ``pc``: ``partial_ratio`` finds where, then ``ratio``
        scores the quote against the quote-long windows of ``pc`` that start or end there (partial_ratio alone
        may align a shorter window at either end and ignore a differing last word: "... is 9817" ~ "... is")."""
        al = fuzz.partial_ratio_alignment(pq, pc, score_cutoff=self.fuzzy)
        if al is None:
            return 0.0
        n = len(pq)
        starts = {min(max(0, s), len(pc) - n) for s in (al.dest_start, al.dest_end - n)}  # windows inside pc
        return max(fuzz.ratio(pq, pc[s:s + n], score_cutoff=self.fuzzy) for s in starts)

    def _covering(self, lo: int, hi: int) -> str:
        """The whole sentences of ``joined`` that characters ``lo:hi`` touch, joined by a space."""
        first = bisect.bisect_right(self._starts, lo) - 1
        last = bisect.bisect_left(self._starts, hi) - 1
        return " ".join(self.sentences[first:last + 1])

    def evidence(self, verdicts: Iterable[Verdict]) -> list[str]:
        """The verified quotes' source texts, each once, in document order; a text inside another kept one
        (a sentence inside a kept pair) is dropped."""
        sources = {v.source for v in verdicts if v.verified}
        kept = [s for s in sources if not any(s != o and s in o for o in sources)]
        return sorted(kept, key=lambda s: (self.joined.find(s), -len(s)))


def verify_quotes(quotes: Iterable[str], text: str, fuzzy: float = DEFAULT_FUZZY) -> list[Verdict]:
    """Each quote checked against ``text`` (see the module docstring), in order."""
    v = Verifier(text, fuzzy)
    return [v.check(q) for q in quotes]
