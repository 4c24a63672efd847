"""Streaming text -> sentences -> token-sized chunks, in bounded memory.

A document may be a string, a path to a UTF-8 file (read in blocks, never whole) or any iterable of
text pieces. :func:`iter_sentences` cuts the stream at sentence ends (``. ! ?`` followed by
whitespace, ``。！？``, and before every line break), keeping every character: joining the sentences
gives back the document exactly, whatever the piece boundaries. Leading whitespace belongs to the
sentence it precedes. :func:`iter_chunks` tokenizes sentence by sentence and groups them into chunks
of at most ``chunk`` tokens (a sentence longer than a chunk is cut at whitespace into pieces).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Union

from ..errors import InputError
from ..textio import iter_utf8

Document = Union[str, os.PathLike, Iterable[str]]

#: Boundaries are the match ends: after . ! ? (and closing quotes/brackets) before whitespace,
#: after CJK sentence marks, and just before a line break.
BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)|[。！？]+[\"'”’)\]」』]*|(?<=[^\n])(?=\n)")
BLOCK_CHARS = 1 << 16  # characters per piece when reading a string or a file
MAX_SENTENCE_CHARS = 4096  # a "sentence" without any boundary is cut at whitespace beyond this


# ------------------------------------------------------------------------------------------ text source
def iter_text(document: Document, block_chars: int = BLOCK_CHARS) -> Iterator[str]:
    """The document as text pieces: a string in slices, a file path in decoded blocks, an iterable as is."""
    if isinstance(document, str):
        for lo in range(0, len(document), block_chars):
            yield document[lo:lo + block_chars]
    elif isinstance(document, os.PathLike):
        yield from _iter_file(Path(document), block_chars)
    else:
        for piece in document:
            if not isinstance(piece, str):
                raise InputError(f"a streamed document must yield str pieces, got {type(piece).__name__}")
            yield piece


def _iter_file(path: Path, block_chars: int) -> Iterator[str]:
    try:
        found = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        found = False
    if not found:
        raise InputError(f"{path}: no such file; check the path")
    yield from iter_utf8(path, block_chars)


def document_tail(document: Document, chars: int = 512) -> str:
    """The last ``chars`` characters (the paper's query when no question is given)."""
    if isinstance(document, str):
        return document[-chars:]
    if isinstance(document, os.PathLike):
        path = Path(document)
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4 * chars))
            return f.read().decode("utf-8", errors="ignore")[-chars:]
    raise InputError("no question given and a streamed document has no tail to ask about; pass a question")


# ------------------------------------------------------------------------------------------- sentences
def iter_sentences(pieces: Iterable[str], max_chars: int = MAX_SENTENCE_CHARS) -> Iterator[str]:
    """Cut a stream of text pieces into sentences; ``"".join(result) == "".join(pieces)``."""
    pending = ""  # the last sentence, held back so trailing whitespace can join it

    def emit(sentence: str) -> Iterator[str]:
        nonlocal pending
        if pending and not (sentence.strip() and pending.strip()):
            pending += sentence  # whitespace joins its neighbour
            return
        if pending:
            yield pending
        pending = sentence

    buffer = ""  # text not yet emitted
    for piece in pieces:
        buffer += piece
        pos = 0
        while (cut := _next_cut(buffer, pos, max_chars)) is not None:
            yield from emit(buffer[pos:cut])
            pos = cut
        buffer = buffer[pos:]
    if buffer:
        yield from emit(buffer)
    if pending:
        yield pending


def _next_cut(buffer: str, pos: int, max_chars: int) -> int | None:
    """Next confirmed cut after ``pos`` (text must follow it), or a forced cut of an overlong run."""
    for m in BOUNDARY.finditer(buffer, pos):
        if m.end() >= len(buffer) or m.end() - pos > max_chars:
            break
        if m.end() > pos:
            return m.end()
    if len(buffer) - pos <= max_chars:
        return None
    space = buffer.rfind(" ", pos + 1, pos + max_chars)  # cut before the last space of the run
    return space if space > pos else pos + max_chars


# ---------------------------------------------------------------------------------------------- chunks
@dataclasses.dataclass
class Sentence:
    """A sentence of the document with its token ids (tokenized alone, no special tokens)."""

    text: str
    ids: list[int]
    index: int  # position in the document (0, 1, 2, ...)


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False).input_ids if texts else []


def iter_chunks(sentences: Iterable[str], tokenizer: Any, chunk: int) -> Iterator[list[Sentence]]:
    """Group sentences into chunks of at most ``chunk`` tokens (sentence-aligned; overlong ones are cut).

    Sentences are tokenized in small batches (about two chunks of characters), so the stream is read
    only a little ahead of the chunk being built.
    """
    current: list[Sentence] = []
    size = 0
    index = 0
    for texts in _batched(sentences, 2 * chunk):
        for text, ids in zip(texts, tokenize(tokenizer, texts)):
            for piece_text, piece_ids in _fit(text, ids, tokenizer, chunk):
                if current and size + len(piece_ids) > chunk:
                    yield current
                    current, size = [], 0
                current.append(Sentence(piece_text, piece_ids, index))
                size += len(piece_ids)
                index += 1
    if current:
        yield current


def _fit(text: str, ids: list[int], tokenizer: Any, limit: int) -> list[tuple[str, list[int]]]:
    """Split a sentence longer than ``limit`` tokens at whitespace near its middle until every piece fits."""
    if len(ids) <= limit or len(text) < 2:
        return [(text, ids)]
    mid = len(text) // 2
    cut = text.rfind(" ", 1, mid + 1)
    cut = cut if cut > 0 else mid
    left, right = text[:cut], text[cut:]
    left_ids, right_ids = tokenize(tokenizer, [left, right])
    return _fit(left, left_ids, tokenizer, limit) + _fit(right, right_ids, tokenizer, limit)


def _batched(items: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Lists of consecutive items holding about ``chars`` characters each."""
    batch: list[str] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
