"""Durable files of a results folder: framed JSONL records, atomic writes, fsync, folder locks.

- **Records** (``samples.jsonl``): one JSON object per line, written with ``ensure_ascii`` so that every
  byte of a line is ASCII: no character of a prediction (U+2028, U+2029, U+0085, a lone surrogate, which
  becomes ``\\ud800``) can split a line or fail to encode. Read with the same rule: a line ends at the
  byte ``\\n`` only, never at what ``str.splitlines`` also splits on.
- **Repair on open** (:func:`read_records` with ``repair=True``): a torn last line (a kill or a full disk
  mid-write) is cut off; a last record that lost only its final newline gets it back, so the next record
  never merges with it; complete lines that do not parse (or repeat an id) are dropped by rewriting the
  file with the good lines byte for byte. Complete records in a line merged by an older version are
  recovered. Nothing else is ever rewritten.
- **Atomic writes** (:func:`atomic_write`): a temporary file, fsynced, renamed over the target, then the
  folder fsynced: a reader sees the old file or the new one, never a part.
- **Locks** (:class:`FolderLock`): ``fcntl.flock`` on a lock file; the kernel drops it when its process
  dies (SIGKILL included), so a stale lock never blocks a resume. :func:`write_lock` serializes the
  shared files of a folder (``sweep.json``, ``config.json``, ``results.json``, ``results.sqlite``).
- Every ``OSError`` of a write (``ENOSPC`` above all) becomes a one-line :class:`StorageError`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .task import BenchError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second process on one folder is not detected
    fcntl = None  # type: ignore[assignment]

_RECORD_START = re.compile(r'\{\s*"id"\s*:')
_DECODER = json.JSONDecoder()


class StorageError(BenchError):
    """A results folder cannot be written (disk full, read-only, permissions)."""


def _hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space and re-run the same command: finished samples are kept"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the folder's permissions, or give another --out"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP):
        return "give another --out (a folder, or a name that is not taken)"
    return "re-run the same command to resume: finished samples are kept"


@contextmanager
def storage(path: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` (and sqlite's disk errors) raised inside into a one-line :class:`StorageError`."""
    import sqlite3

    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"cannot write {path}: {reason}; {_hint(exc)}") from None
    except sqlite3.Error as exc:
        text = " ".join(str(exc).split())[:200]
        raise StorageError(f"cannot write {path}: {text}; free some space or fix the folder, then re-run "
                           f"(the table is rebuilt from the samples)") from None


# ------------------------------------------------------------------------------------------ writing
def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is continued, an error raised)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new or renamed file) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):  # file systems without dir fsync
            raise
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """``mkdir -p folder``, fsyncing the parent of each folder it creates (the new entries are durable)."""
    missing = []
    p = Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    with storage(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):
            fsync_dir(d.parent)


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a fsynced temporary file and a rename, then fsync its folder. Text is UTF-8
    (a lone surrogate becomes ``?`` rather than an error). Raises :class:`StorageError`."""
    path = Path(path)
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with storage(path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        fsync_dir(path.parent)


def record_line(record: dict[str, Any]) -> bytes:
    """One framed record: ASCII JSON (lone surrogates escaped, never an error) and ``\\n``."""
    return (json.dumps(record, ensure_ascii=True, default=str) + "\n").encode("ascii")


class RecordWriter:
    """Appends framed records to a JSONL file, each written with ``os.write`` and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        created = not path.exists()
        with storage(path):
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                fsync_dir(path.parent)

    def append(self, record: dict[str, Any]) -> None:
        with storage(self.path):
            write_all(self.fd, record_line(record))
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ reading
def is_record(rec: Any) -> bool:
    """The fields every stored sample record has, with the types the aggregates read; every other number
    finite and far from overflowing a sum (the score may be NaN or infinite: a perplexity can be)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
        return False
    if not _number(rec.get("score")) or not _number(rec.get("input_tokens")):
        return False
    if "seconds" in rec and not _number(rec["seconds"]):
        return False
    if not (math.isinf(rec["score"]) or math.isnan(rec["score"]) or abs(rec["score"]) < 1e100):
        return False  # a variance of scores must fit a float
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) < 1e300
           for k, v in rec.items() if k != "score"):
        return False
    if not isinstance(rec.get("meta", {}), dict) or not isinstance(rec.get("prediction", ""), str):
        return False
    if rec.get("error") is not None and not isinstance(rec["error"], str):
        return False
    return rec.get("depth") is None or _number(rec["depth"])


def _number(v: Any) -> bool:
    """A JSON number the aggregates can add up (an int beyond 64 bits cannot become a float)."""
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63)


def _parse_line(line: bytes, accept: Callable[[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], bool]:
    """The records of one complete line and whether the line is exactly one good record."""
    try:
        rec = json.loads(line.decode("utf-8"))
        if accept(rec):
            return [rec], True
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    # not one record: a line merged from a torn record and the next one (older versions) may still hold
    # complete records; each starts with {"id": (the order run_sample writes) and must be clean UTF-8
    text = line.decode("utf-8", "surrogateescape")
    found, pos = [], 0
    while (m := _RECORD_START.search(text, pos)) is not None:
        try:
            rec, end = _DECODER.raw_decode(text, m.start())
            text[m.start():end].encode("utf-8")  # raises where a corrupt byte fell inside this record
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            pos = m.start() + 1
            continue
        if accept(rec):
            found.append(rec)
        pos = end
    return found, False


def read_records(path: Path, accept: Callable[[dict[str, Any]], bool] = is_record,
                 repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL file in order, one per id (the last one of an id wins); records ``accept``
    refuses are left out. ``repair``: make the file hold exactly the records returned, touching as little
    as possible (cut a torn tail, add a lost final newline, or rewrite when a complete line is dropped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}; check the file") from None
    end = data.rfind(b"\n") + 1
    lines, tail = data[:end].split(b"\n")[:-1], data[end:]
    records: dict[str, dict[str, Any]] = {}
    clean = True  # every complete line is one good record with a new id
    for line in lines:
        found, whole = _parse_line(line, accept)
        clean = clean and whole and found[0]["id"] not in records
        for rec in found:
            records.pop(rec["id"], None)  # keeps the file's order of the last occurrences
            records[rec["id"]] = rec
    tail_rec = None
    if tail:  # no final newline: a torn write, or a record that lost only its newline
        found, whole = _parse_line(tail, accept)
        if whole:
            tail_rec = found[0]
            clean = clean and tail_rec["id"] not in records
        elif found:  # complete records inside a torn merged line
            clean = False
        for rec in found:
            records.pop(rec["id"], None)
            records[rec["id"]] = rec
    if repair:
        if not clean:
            atomic_write(path, b"".join(record_line(r) for r in records.values()))
        elif tail_rec is not None:  # lost only its newline: give it back before anything is appended
            with storage(path):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    write_all(fd, b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
        elif tail:  # a torn last line: cut it off, the complete lines stay as they are
            with storage(path):
                os.truncate(path, end)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    return list(records.values())


def read_json(path: Path) -> Any:
    """A JSON file's value; None when it is missing or does not parse (a corrupt file is rebuilt)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


# -------------------------------------------------------------------------------------------- locks
def _holders(path: Path) -> str:
    """Who holds a lock file, from the lines holders write into it: ``pid 123 on host (what)``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
    except OSError:
        lines = []
    here, out = socket.gethostname(), []
    for line in lines:
        pid, _, rest = line.partition(" ")
        host, _, what = rest.partition(" ")
        if not pid.isdigit():
            continue
        if host == here:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                continue  # an earlier holder that has ended
            except OSError:
                pass
        text = f"pid {pid} on {host}" + (f" ({what})" if what else "")
        if text not in out:
            out.append(text)
    return ", ".join(out[-3:]) or "another process"


class FolderLock:
    """``flock`` on ``path`` held for a ``with`` block: exclusive, or shared (shards of one sweep).
    Non-blocking: a conflict raises a one-line :class:`BenchError` naming the holder's pid."""

    def __init__(self, path: Path, what: str, shared: bool = False, conflict: str = ""):
        self.path, self.what, self.shared, self.conflict = Path(path), what, shared, conflict
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        if fcntl is None:
            return self
        with storage(self.path):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise BenchError(f"{self.conflict or self.path} is in use by {_holders(self.path)}; wait for it "
                             f"to finish, or give another --out") from None
        line = f"{os.getpid()} {socket.gethostname()} {self.what}\n".encode("utf-8", "replace")
        try:
            if not self.shared:
                os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_END)
            write_all(self.fd, line)
        except OSError:
            pass  # only the holder's name for another process' error message is lost
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextmanager
def write_lock(folder: Path) -> Iterator[None]:
    """Wait for, then hold, the exclusive lock on a folder's shared files (short sections only)."""
    if fcntl is None:
        yield
        return
    path = Path(folder) / ".write.lock"
    with storage(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
