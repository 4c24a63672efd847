"""Sentence-aligned chunks of a document with an overlap, sized in the language model's tokens.

A document (a string, a UTF-8 file path or an iterable of text pieces, :mod:`longreach.readers.sentences`)
is cut into sentences and grouped into *new parts* of at most ``chunk - overlap`` tokens (every token in
exactly one new part); each chunk is its new part preceded by the last whole sentences of the previous
new part that fit in ``overlap`` tokens, so a chunk holds at most ``chunk`` tokens, starts and ends at
sentence boundaries, and neighbouring chunks share up to ``overlap`` tokens. Line numbers (1-based) are
kept for evidence ("a.txt:12-15").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from ..readers.sentences import Document, Sentence, iter_chunks, iter_sentences, iter_text


@dataclasses.dataclass
class Chunk:
    """One retrievable chunk: its text (overlap included), where it is, and its size in tokens."""

    text: str
    source: int  # index of the file / document in the corpus
    index: int  # position of the chunk in its source (0, 1, 2, ...)
    first_line: int  # 1-based line of its first non-blank character
    last_line: int
    tokens: int  # language-model tokens (sentences tokenized alone)
    overlap_chars: int  # leading characters repeated from the previous chunk (``text[overlap_chars:]`` is new)
    new_tokens: int  # tokens of the new part (summed over the chunks: the document's tokens)

    @property
    def new_text(self) -> str:
        return self.text[self.overlap_chars:]


def check_sizes(chunk: int, overlap: int) -> None:
    if chunk < 8:
        raise ValueError(f"chunk={chunk} is too small; use at least 8 tokens (default 256)")
    if not 0 <= overlap <= chunk // 2:
        raise ValueError(f"overlap={overlap} must be between 0 and chunk/2 = {chunk // 2} tokens")


def _lines(sentences: list[Sentence], line: int) -> tuple[int, int, int]:
    """(first line, last line, the line after) of consecutive sentences starting on line ``line``."""
    first = last = None
    for s in sentences:
        body = s.text.strip()
        if body and first is None:
            first = line + s.text[: len(s.text) - len(s.text.lstrip())].count("\n")
        if body:
            last = line + s.text.rstrip().count("\n")
        line += s.text.count("\n")
    return (first or line), (last or first or line), line


def iter_document_chunks(document: Document, tokenizer: Any, chunk: int, overlap: int,
                         source: int = 0) -> Iterator[Chunk]:
    """Chunks of one document, streamed (the document is read a little ahead of the chunk being built)."""
    check_sizes(chunk, overlap)
    previous: list[Sentence] = []
    line = 1
    for index, part in enumerate(iter_chunks(iter_sentences(iter_text(document)), tokenizer, chunk - overlap)):
        carried: list[Sentence] = []
        size = 0
        for s in reversed(previous):  # the last whole sentences of the previous part that fit the overlap
            if size + len(s.ids) > overlap:
                break
            carried.insert(0, s)
            size += len(s.ids)
        # line span: the carried sentences end where ``part`` begins
        carried_lines = sum(s.text.count("\n") for s in carried)
        first, last, line = _lines(carried + part, line - carried_lines)
        head = "".join(s.text for s in carried)
        new = sum(len(s.ids) for s in part)
        yield Chunk(head + "".join(s.text for s in part), source, index, first, last, size + new, len(head), new)
        previous = part
