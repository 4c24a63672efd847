"""Reading user documents: UTF-8 text files, folders are refused, stdin with ``-``.

Every failure is a one-line :class:`InputError` naming the file and the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError

_SNIFF = 8192


def read_text_file(path: str | Path) -> str:
    """Read one UTF-8 text file (``-`` = stdin), refusing missing, folder, empty, binary, non-UTF-8."""
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        return _decode(data, "<stdin>")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; pass the text files inside it (e.g. {p}/*.txt)")
    try:
        data = p.read_bytes()
    except PermissionError:
        raise InputError(f"{p}: permission denied; make the file readable") from None
    return _decode(data, str(p))


def check_text_file(path: str | Path, sniff: int = 1 << 16) -> Path:
    """Validate a file without reading all of it (for readers that stream): exists, not a folder, not
    empty, no NUL bytes and valid UTF-8 in its first ``sniff`` bytes. Returns the path."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; pass the text files inside it (e.g. {p}/*.txt)")
    with p.open("rb") as fh:
        head = fh.read(sniff)
    text = _decode(head, str(p), partial=len(head) == sniff)
    del text
    return p


def _decode(data: bytes, name: str, partial: bool = False) -> str:
    if not data.strip():
        raise InputError(f"{name}: the file is empty; give a document with text in it")
    if b"\x00" in data[:_SNIFF]:
        raise InputError(f"{name}: looks binary (NUL bytes); give a UTF-8 text file (convert PDFs etc. first)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 3:  # a character cut by the sniff window
            return data[: exc.start].decode("utf-8-sig")
        raise InputError(
            f"{name}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text


def read_documents(paths: Iterable[str | Path]) -> str:
    """Read several files and join them, each introduced by its file name when there are several."""
    paths = list(paths)
    if not paths:
        raise InputError("no document given; pass one or more text files, or - for stdin")
    texts = [read_text_file(p) for p in paths]
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"=== {Path(str(p)).name} ===\n{t.strip()}" for p, t in zip(paths, texts))


def check_question(question: str | None) -> str:
    if question is None or not question.strip():
        raise InputError("the question is empty; pass one with -q 'What is ...?'")
    return question.strip()
