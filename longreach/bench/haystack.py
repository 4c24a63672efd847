"""Haystacks: the text needles hide in, as a list of units (sentences) that generators take a prefix of.

The sources (``noise``, ``essays``, a path: the ``haystack`` parameter of a task) and the sentence
splitter live in :mod:`longreach.corpus`; this module turns a source into the rotated, cycled list of
units a generator takes. A generator asking for more units than the source holds gets the source again
from the start (recorded as ``haystack_repeats`` in the sample).
"""

from __future__ import annotations

import random

from ..corpus import NOISE, CorpusError, essays_folder, source_units, split_sentences
from .task import BenchError

__all__ = ["NOISE", "Haystack", "essays_folder", "fingerprint", "split_sentences"]


def _source_units(source: str) -> tuple[tuple[str, ...], str]:
    """(sentences, fingerprint) of a haystack source; a source that cannot be read is a BenchError."""
    try:
        return source_units(source)
    except CorpusError as exc:
        raise BenchError(str(exc)) from None


class Haystack:
    """Units of a source, rotated to a seed-dependent start (so samples differ) and cycled if needed."""

    def __init__(self, source: str = "noise", seed: int = 0):
        units, self.fingerprint = _source_units(source)
        self.source = source
        self.units = units
        self.start = 0 if source == "noise" else random.Random(seed).randrange(len(units))

    def take(self, n: int) -> list[str]:
        m = len(self.units)
        return [self.units[(self.start + i) % m] for i in range(n)]

    def repeats(self, n: int) -> int:
        """How many times the source was started over to give ``n`` units (0 = no repetition)."""
        if self.source == "noise" or n == 0:
            return 0
        return (self.start + n - 1) // len(self.units)


def fingerprint(source: str) -> str:
    """Content fingerprint of a haystack source (part of the sample-cache key)."""
    return _source_units(source)[1]
