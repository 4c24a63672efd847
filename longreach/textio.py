"""Reading user documents: UTF-8 text files, stdin with ``-``, and corpora (folders, several files).

Every failure is a one-line :class:`InputError` naming the file and the fix. Only regular files are
opened (a FIFO would block, ``/dev/zero`` never ends, ``/proc`` files lie about their size), whole reads
are bounded by :data:`MAX_READ_BYTES` (``$LONGREACH_MAX_READ_BYTES``; streaming readers such as
``infiniretri`` read a file of any size in pieces instead), and a file whose text is empty once its
byte-order mark and white space are removed is not a document.

A :class:`Corpus` (:func:`open_corpus`) is the files of a request, in order, with their names: folders are
walked (sorted, hidden entries left out) and a file inside a folder that is binary, not UTF-8 or empty is
skipped with one warning line; a file named explicitly must be readable (one-line error otherwise).
Readers that take a corpus (``rag``) read the files one by one; the others read them joined.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import InputError

#: Largest file (or stdin) read whole into memory: 1 GiB, about 250M tokens of English.
MAX_READ_BYTES = 1 << 30
_MAX_SHOWN = 120  # characters of a path shown in an error (a 4,000-character name stays readable)


def _max_read() -> int:
    value = os.environ.get("LONGREACH_MAX_READ_BYTES", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_READ_BYTES


def shown(path: str | Path) -> str:
    """The path as shown in an error: at most ~120 characters, control characters escaped."""
    text = str(path)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _MAX_SHOWN else text[:60] + "..." + text[-57:]


def _regular(path: str | Path) -> Path:
    """``path`` as a Path once it is known to be an existing regular file (never opened before that)."""
    p = Path(path)
    name = shown(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file; check the path") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied; make the file and its folders readable") from None
    except OSError as exc:  # name too long, a loop of links, a bad folder in the path ...
        raise InputError(f"{name}: cannot be opened ({exc.strerror or exc}); check the path") from None
    except ValueError:  # an embedded NUL character, or a character the file system cannot encode
        raise InputError(f"{name}: not a valid file name (a NUL or unencodable character); check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a folder; pass the text files inside it (e.g. {name}/*.txt)")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{name}: is {kind}, not a text file; save the text to a file or pipe it to `-`")
    if str(p.resolve()).startswith("/proc/"):
        raise InputError(f"{name}: is a /proc pseudo-file, not a document; copy what you need into a text file")
    return p


def regular_file(path: str | Path) -> Path:
    """``path`` once it is known to be an existing regular file outside ``/proc`` (one-line InputError
    otherwise), for readers of other files (config files) that apply their own size limit and decoding."""
    return _regular(path)


def _read_bounded(fh, name: str, limit: int) -> bytes:
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{name}: longer than {limit:,} bytes, too large to read whole; use a streaming reader "
                         "(--method infiniretri) or raise LONGREACH_MAX_READ_BYTES")
    return data


def read_text_file(path: str | Path) -> str:
    """Read one UTF-8 text file (``-`` = stdin), refusing missing, folder, special, empty, binary, non-UTF-8."""
    limit = _max_read()
    if str(path) == "-":
        return _decode(_read_bounded(sys.stdin.buffer, "<stdin>", limit), "<stdin>")
    p = _regular(path)
    try:
        with p.open("rb") as fh:
            data = _read_bounded(fh, shown(p), limit)
    except PermissionError:
        raise InputError(f"{shown(p)}: permission denied; make the file readable") from None
    except OSError as exc:
        raise InputError(f"{shown(p)}: cannot be read ({exc.strerror or exc}); check the file") from None
    return _decode(data, shown(p))


def check_text_file(path: str | Path, sniff: int = 1 << 16) -> Path:
    """Validate a file without reading all of it (for readers that stream): a regular file, not empty, no
    NUL bytes and valid UTF-8 in its first ``sniff`` bytes. Returns the path."""
    p = _regular(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(sniff)
    except OSError as exc:
        raise InputError(f"{shown(p)}: cannot be read ({exc.strerror or exc}); check the file") from None
    text = _decode(head, shown(p), partial=len(head) == sniff)
    del text
    return p


def _decode(data: bytes, name: str, partial: bool = False) -> str:
    if b"\x00" in data:
        raise InputError(f"{name}: looks binary (NUL bytes); give a UTF-8 text file (convert PDFs etc. first)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 3:  # a character cut by the sniff window
            text = data[: exc.start].decode("utf-8-sig")
        else:
            raise InputError(
                f"{name}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                f"convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
    if not text.replace("\ufeff", "").strip():
        raise InputError(f"{name}: the file is empty (no text after the byte-order mark and white space); "
                         "give a document with text in it")
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
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; pass one with -q 'What is ...?'")
    return question.strip()


# ------------------------------------------------------------------------------------------- corpora
@dataclasses.dataclass
class Corpus:
    """The files of one request, in order, with the names shown in evidence (``docs/a.txt``)."""

    files: list[Path]
    names: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)  # one line per file left out


def warn_stderr(message: str) -> None:
    print(f"longreach: warning: {message}", file=sys.stderr)


def iter_utf8(path: Path, block: int = 1 << 20) -> Iterator[str]:
    """The text of a UTF-8 file, decoded block by block (BOM dropped) without holding it; a NUL byte or a
    bad UTF-8 sequence stops it with a one-line InputError naming the byte."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    with path.open("rb") as fh:
        while True:
            data = fh.read(block)
            if b"\x00" in data:
                raise InputError(f"{shown(path)}: looks binary (NUL bytes); give a UTF-8 text file")
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise InputError(f"{shown(path)}: not UTF-8 (near byte {offset + exc.start}); convert it, "
                                 "e.g. `iconv -f latin1 -t utf-8`") from None
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def check_utf8_file(path: Path, block: int = 1 << 20) -> None:
    """Validate a whole file in blocks (NUL bytes, UTF-8, not blank) without holding it: one-line InputError."""
    check_text_file(path)
    for _ in iter_utf8(path, block):
        pass


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return found


def _is_dir(p: Path) -> bool:
    """A folder that can be walked; False for anything else, including a name the system refuses (too long,
    a NUL), which :func:`check_text_file` then names in one line."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def open_corpus(paths: Iterable[str | Path], warn: Callable[[str], None] = warn_stderr) -> Corpus:
    """The files named by ``paths`` (files and folders) as one corpus. Files inside a folder that cannot be
    read as text are skipped with one ``warn`` line each; a folder with no text file is an error."""
    paths = list(paths)
    if not paths:
        raise InputError("no document given; pass one or more text files or folders, or - for stdin")
    if any(str(given) == "" for given in paths):
        raise InputError("an empty file name; give the path of a text file or folder (. for this folder)")
    named = {i: check_text_file(Path(given)) for i, given in enumerate(paths) if not _is_dir(Path(given))}
    files: list[Path] = []  # every named file is checked above, before any folder is walked and warned about
    skipped: list[str] = []
    for i, given in enumerate(paths):
        p = Path(given)
        if i in named:
            files.append(named[i])  # named explicitly: must be text (sniffed; streamed later)
            continue
        inside = 0
        for f in _walk(p):
            try:
                check_utf8_file(_regular(f))
            except InputError as exc:
                skipped.append(str(exc))
                warn(f"skipped {exc}")
                continue
            files.append(f)
            inside += 1
        if not inside:
            raise InputError(f"{shown(p)}: is a folder with no readable text file"
                             f"{f' ({len(skipped)} skipped)' if skipped else ''}; put UTF-8 text files in it")
    return Corpus(files, [str(f) for f in files], skipped)
