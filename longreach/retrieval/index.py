"""The retrieval index of a document or corpus, built once and cached on disk by content hash.

Layout of one index folder (``$LONGREACH_CACHE/rag/<key>``, default ``~/.cache/longreach/rag``)::

    meta.json            sources (names), settings, number of chunks and of document tokens, build seconds
    chunks.jsonl         one chunk per line (:class:`~longreach.retrieval.chunks.Chunk` fields)
    offsets.npy          (N + 1,) int64 byte offsets of the lines: a chunk is read without the others
    bm25/                the sharded BM25 index (:mod:`.bm25`), memory-mapped when scored
    dense-<encoder>-w<window>-s<situated>/   chunk vectors under one encoder setting, filled on demand:
        rows.npy         (N,) int32 chunk -> distinct embedding input (identical inputs share one vector)
        firsts.npy       (U,) int64 the first chunk of each distinct input
        vectors.npy      (U, d) float32 unit vectors (memory-mapped, written batch by batch)
        done.npy         (U,) bool: which vectors are computed

The key hashes the content of every source, the tokenizer, ``chunk`` and ``overlap``: a changed file
gives a new key, so a stale index is never read. A file's sha256 is kept in a stat cache
(``<root>/hashes.json``: resolved path -> size, mtime_ns, ctime_ns, inode, sha256) so an unchanged file
is not read again on the next request; a change of any of those four re-hashes it (a file modified in
the last 2 seconds is not cached, so a write within the clock's resolution cannot go unseen).

Dense vectors are computed only for the chunks a search needs (``pool``: the BM25 best chunks of a
hybrid search) and kept, so a second question on the same index embeds only new chunks; identical
embedding inputs (repeated filler text) are embedded once.

Memory bound. Building streams the documents: chunk texts go straight to disk, BM25 postings are
written a shard at a time (:mod:`.bm25`: the vocabulary plus at most one shard of postings in memory),
and per chunk only a few bytes are held (its byte offset, BM25 length, 8-byte text digest for
deduplication). Searching holds O(N) numbers (scores, ranks) and reads chunk texts and vectors through
memory maps. So memory grows with the number of chunks (about 30 bytes each) and distinct terms, never
with the text itself. A folder is built under a temporary name and renamed when complete, so a crash
leaves no half index. Sources that are neither text nor a file (an iterable of pieces) cannot be hashed
before reading: their index is built in a temporary folder and removed by :meth:`Index.close`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..models import cache_dir
from ..readers.sentences import Document
from .bm25 import BM25, SHARD, BM25Writer
from .chunks import Chunk, iter_document_chunks
from .embed import Embedder
from .fuse import rrf, top

VERSION = 2
RETRIEVERS = ("bm25", "dense", "hybrid")
_BLOCK = 1 << 20  # bytes hashed per read
_ROWS = 1 << 16  # rows scored per dense block
DUPLICATE_SLACK = 8  # each ranking is read this many times deeper, then copies of a text are folded
RACY_NS = 2_000_000_000  # a file modified this recently is hashed but its hash is not cached
CHARS_PER_TOKEN = 4  # situated context: ``situated`` tokens ~ 4 x situated characters


@dataclasses.dataclass
class Source:
    """One document of a corpus: a display name (a file name, or '' for text) and its content."""

    name: str
    document: Document


def index_root() -> Path:
    return cache_dir() / "rag"


# ------------------------------------------------------------------------------------------ hashing
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class HashCache:
    """``path -> (size, mtime_ns, ctime_ns, inode, sha256)`` in a JSON file: an unchanged file is not re-read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        try:
            st = os.stat(file)
        except OSError as exc:
            raise InputError(f"{file}: cannot be read ({exc.strerror}); check the path") from None
        key = str(Path(file).resolve())
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.data.get(key)
        if isinstance(entry, list) and entry[:4] == sig and len(entry) == 5:
            return str(entry[4])
        digest = file_sha256(file)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            self.data[key] = [*sig, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        """Merge into the file on disk (atomic replace); a failure to write only costs a re-hash later."""
        if not self.dirty:
            return
        try:
            try:
                merged = json.loads(self.path.read_text())
            except (OSError, ValueError):
                merged = {}
            merged.update(self.data)
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps(merged))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass


def content_hash(document: Document, hashes: HashCache | None = None) -> str | None:
    """Digest of a text or a file (through ``hashes`` when given); None for an iterable read once."""
    if isinstance(document, str):
        return hashlib.sha256(b"text\0" + document.encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(document, os.PathLike):
        digest = hashes.sha256(Path(document)) if hashes is not None else file_sha256(Path(document))
        return hashlib.sha256(b"file\0" + digest.encode()).hexdigest()
    return None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    probe = "Retrieval probe: 12,345 chunks; naïve café. 本"
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), str(len(tokenizer)),
             str(tokenizer(probe, add_special_tokens=False).input_ids)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def index_key(hashes: Sequence[str], names: Sequence[str], tokenizer: Any, chunk: int, overlap: int) -> str:
    h = hashlib.sha256(f"v{VERSION}\0{tokenizer_fingerprint(tokenizer)}\0{chunk}\0{overlap}".encode())
    for name, digest in zip(names, hashes):
        h.update(f"\0{name}\0{digest}".encode())
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------ situated inputs
def situated_item(before: str, chunk: Chunk, after: str, chars: int) -> tuple[str, int, int]:
    """(context + chunk + context, start, end): up to ``chars`` characters of the document on each side."""
    head = before[-chars:] if chars else ""
    return head + chunk.text + after[:chars], len(head), len(head) + len(chunk.text)


def iter_situated(chunks: Iterator[Chunk], chars: int) -> Iterator[tuple[str, int, int]]:
    """:func:`situated_item` of every chunk in order, streamed: a rolling buffer of the document's text
    (about 2 x ``chars`` + one chunk of characters) instead of the whole source."""
    buf, base, total = "", 0, 0  # buf = the source's text from character ``base`` to ``total``
    pending: deque[tuple[Chunk, int, int]] = deque()  # chunks waiting for their following context
    source = None

    def emit(final: bool) -> Iterator[tuple[str, int, int]]:
        while pending and (final or pending[0][2] + chars <= total):
            c, start, end = pending.popleft()
            lo, hi = max(0, start - chars), min(total, end + chars)
            text = buf[lo - base:hi - base]
            yield text, start - lo, end - lo

    for c in chunks:
        if c.source != source:
            yield from emit(True)
            buf, base, total, source = "", 0, 0, c.source
        start = total - c.overlap_chars
        buf += c.new_text
        total += len(c.new_text)
        pending.append((c, start, total))
        yield from emit(False)
        cut = (pending[0][1] if pending else total - len(c.new_text)) - chars
        if cut > base:
            buf, base = buf[cut - base:], cut
    yield from emit(True)


# ------------------------------------------------------------------------------------------ the index
class Index:
    """An index folder: chunks by number, BM25 and dense scores, hybrid search."""

    def __init__(self, folder: Path, temporary: bool = False, built: bool = False, seconds: float = 0.0):
        self.folder = folder
        self.temporary = temporary
        self.built = built  # True when this call built it (False: read from the cache)
        self.index_seconds = seconds  # building the index or embeddings in this call (0 when all cached)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.names: list[str] = self.meta["names"]
        self.size: int = self.meta["chunks"]
        self.tokens: int = self.meta["tokens"]  # the documents' tokens (each counted once)
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self._bm25: BM25 | None = None

    # -- chunks
    def chunk(self, i: int) -> Chunk:
        return self.chunks_at([i])[0]

    def chunks_at(self, ids: Sequence[int]) -> list[Chunk]:
        """Chunks by number (one open file, seeks in order)."""
        out: dict[int, Chunk] = {}
        with open(self.folder / "chunks.jsonl", "rb") as f:
            for i in sorted(set(int(i) for i in ids)):
                f.seek(int(self.offsets[i]))
                out[i] = Chunk(**json.loads(f.read(int(self.offsets[i + 1] - self.offsets[i]))))
        return [out[int(i)] for i in ids]

    def iter_chunks(self) -> Iterator[Chunk]:
        with open(self.folder / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                yield Chunk(**json.loads(line))

    def iter_inputs(self, situated: int = 0) -> Iterator[str | tuple[str, int, int]]:
        """What the encoder reads for each chunk, in order: its text, or (situated > 0) a situated item."""
        if situated <= 0:
            return (c.text for c in self.iter_chunks())
        return iter_situated(self.iter_chunks(), CHARS_PER_TOKEN * situated)

    def input_at(self, i: int, situated: int = 0) -> str | tuple[str, int, int]:
        """:meth:`iter_inputs` of one chunk, read from its neighbours (same result as the stream)."""
        c = self.chunk(i)
        if situated <= 0:
            return c.text
        chars = CHARS_PER_TOKEN * situated
        before, j = "", i - 1  # the source's text before c's new part
        while j >= 0 and len(before) < chars + c.overlap_chars:
            p = self.chunk(j)
            if p.source != c.source:
                break
            before, j = p.new_text + before, j - 1
        after, j = "", i + 1
        while j < self.size and len(after) < chars:
            n = self.chunk(j)
            if n.source != c.source:
                break
            after, j = after + n.new_text, j + 1
        return situated_item(before[:len(before) - c.overlap_chars], c, after, chars)

    # -- scores
    def bm25_scores(self, query: str) -> np.ndarray:
        """(N,) BM25 scores."""
        if self._bm25 is None:
            self._bm25 = BM25(self.folder / "bm25")
        return self._bm25.scores(query)

    def dense(self, embedder: Embedder, window: int = 0, situated: int = 0) -> DenseVectors:
        return DenseVectors(self, embedder, window, situated)

    def dense_scores(self, query: str, embedder: Embedder, progress: bool = False, window: int = 0,
                     situated: int = 0) -> np.ndarray:
        """(N,) cosine similarities of every chunk (all embedded first), exact, block by block."""
        vectors = self.dense(embedder, window, situated)
        vectors.ensure(None, progress)
        return vectors.scores(embedder.embed([query])[0])

    def search(self, query: str, retriever: str, depth: int, embedder: Embedder | None = None,
               progress: bool = False, pool: int = 0, window: int = 0, situated: int = 0) -> list[int]:
        """Chunk numbers best first: BM25 (chunks with a query term), dense, or both fused by RRF.

        ``pool`` (hybrid only): dense scores only for the BM25 best ``pool`` chunks (0 or >= N: every
        chunk; the result is then that of the full hybrid search)."""
        if retriever not in RETRIEVERS:
            raise ValueError(f"retriever={retriever!r}; use one of {', '.join(RETRIEVERS)}")
        if pool < 0:
            raise ValueError(f"pool={pool} must be 0 (every chunk) or a number of chunks")
        rankings = []
        bm25 = None
        wide = depth * DUPLICATE_SLACK  # ranked before identical texts are folded (repeated filler)
        if retriever in ("bm25", "hybrid"):
            bm25 = self.bm25_scores(query)
            rankings.append(self.distinct(top(bm25, wide, positive=True), depth))
        if retriever in ("dense", "hybrid"):
            if embedder is None:
                raise ValueError("dense retrieval needs an embedder")
            vectors = self.dense(embedder, window, situated)
            if bm25 is not None and 0 < pool < self.size:
                cand = np.sort(np.asarray(top(bm25, pool), dtype=np.int64))  # (pool,) chunk numbers
            else:
                cand = None
            vectors.ensure(cand, progress)
            scores = vectors.scores(embedder.embed([query])[0], cand)  # (N,) or (pool,)
            local = top(scores, wide)
            rankings.append(self.distinct(local if cand is None else [int(cand[j]) for j in local], depth))
            self.index_seconds += vectors.seconds
        return rankings[0] if len(rankings) == 1 else rrf(rankings)

    def distinct(self, ranking: Sequence[int], depth: int) -> list[int]:
        """``ranking`` with chunks whose text repeats an earlier one's left out (the best-ranked copy stays),
        cut to ``depth``: a document that repeats itself (filler, a haystack read several times) would
        otherwise fill a ranking, and the fused top chunks, with copies of one passage."""
        seen: set[str] = set()
        out: list[int] = []
        for i, c in zip(ranking, self.chunks_at(ranking)):
            if c.text in seen:
                continue
            seen.add(c.text)
            out.append(int(i))
            if len(out) == depth:
                break
        return out

    # -- lifetime
    def close(self) -> None:
        self._bm25 = None
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _digest(item: str | tuple[str, int, int]) -> int:
    data = item if isinstance(item, str) else f"{item[1]}:{item[2]}:{item[0]}"
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class DenseVectors:
    """The chunk vectors of one index under one (encoder, window, situated) setting, computed on demand
    and kept in the index folder; identical embedding inputs share one vector."""

    def __init__(self, index: Index, embedder: Embedder, window: int = 0, situated: int = 0):
        self.index, self.embedder, self.situated = index, embedder, situated
        self.folder = index.folder / f"dense-{embedder.fingerprint}-w{window}-s{situated}"
        self.seconds = 0.0  # time spent here (distinct inputs, embeddings) in this call
        if not (self.folder / "done.npy").is_file():
            self._create()
        self.rows = np.load(self.folder / "rows.npy", mmap_mode="r")  # (N,) int32
        self.firsts = np.load(self.folder / "firsts.npy", mmap_mode="r")  # (U,) int64
        self.vectors = np.load(self.folder / "vectors.npy", mmap_mode="r+")  # (U, d) float32
        self.done = np.load(self.folder / "done.npy", mmap_mode="r+")  # (U,) bool

    def _create(self) -> None:
        """rows / firsts from the digests of every chunk's input; empty vectors; renamed into place."""
        t0 = time.perf_counter()
        digests = array("Q", (_digest(x) for x in self.index.iter_inputs(self.situated)))
        d = np.frombuffer(digests, dtype=np.uint64)  # (N,)
        _, first, inverse = np.unique(d, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # distinct inputs by first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        tmp = Path(tempfile.mkdtemp(prefix=f"{self.folder.name}.tmp-", dir=self.index.folder))
        np.save(tmp / "rows.npy", rank[inverse.reshape(-1)].astype(np.int32))
        np.save(tmp / "firsts.npy", first[order].astype(np.int64))
        del d, digests
        np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float32,
                                  shape=(len(order), self.embedder.dim)).flush()
        np.save(tmp / "done.npy", np.zeros(len(order), dtype=bool))
        try:
            os.rename(tmp, self.folder)
        except OSError:  # another process made it meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        self.seconds += time.perf_counter() - t0

    def _embed(self, inputs: list) -> np.ndarray:
        if self.situated > 0:
            return self.embedder.embed_situated(inputs)
        return self.embedder.embed(inputs)

    def ensure(self, chunks: np.ndarray | None, progress: bool = False) -> None:
        """Compute the missing vectors of ``chunks`` (None: every chunk), batch by batch."""
        t0 = time.perf_counter()
        wanted = np.arange(len(self.firsts)) if chunks is None else np.unique(self.rows[chunks])  # distinct rows
        missing = wanted[~self.done[wanted]]
        if not len(missing):
            return
        bar = tqdm(total=len(missing), unit="chunk", desc="rag: embed", disable=not progress, leave=False)
        step = self.embedder.batch * 4
        if chunks is None:  # every chunk: stream the inputs in order, embed each distinct one once
            need = set(missing.tolist())
            first_of = {int(self.firsts[u]): int(u) for u in missing}
            batch, rows = [], []
            for i, x in enumerate(self.index.iter_inputs(self.situated)):
                u = first_of.get(i)
                if u is None:
                    continue
                batch.append(x)
                rows.append(u)
                if len(batch) == step:
                    self._store(rows, batch, bar)
                    batch, rows = [], []
                need.discard(u)
                if not need:
                    break
            if batch:
                self._store(rows, batch, bar)
        else:
            for lo in range(0, len(missing), step):
                rows = missing[lo:lo + step].tolist()
                self._store(rows, [self.index.input_at(int(self.firsts[u]), self.situated) for u in rows], bar)
        bar.close()
        self.vectors.flush()
        self.done.flush()
        self.seconds += time.perf_counter() - t0

    def _store(self, rows: list[int], inputs: list, bar: Any) -> None:
        order = np.argsort(rows)  # memmap writes in row order
        idx = np.asarray(rows, dtype=np.int64)[order]
        self.vectors[idx] = self._embed(inputs)[order]  # (b, d)
        self.vectors.flush()
        self.done[idx] = True  # after the vectors are written
        bar.update(len(rows))

    def scores(self, q: np.ndarray, chunks: np.ndarray | None = None) -> np.ndarray:
        """Cosines with the unit query vector ``q`` (d,): of every chunk (N,), or of ``chunks`` (n,)."""
        if chunks is not None:
            return np.asarray(self.vectors[np.asarray(self.rows[chunks], dtype=np.int64)]) @ q  # (n,)
        per_row = np.empty(len(self.firsts), dtype=np.float32)  # (U,)
        for lo in range(0, len(per_row), _ROWS):
            per_row[lo:lo + _ROWS] = np.asarray(self.vectors[lo:lo + _ROWS]) @ q  # (rows,)
        return per_row[np.asarray(self.rows)]  # (N,)


# ------------------------------------------------------------------------------------------ building
def open_index(sources: Sequence[Source], tokenizer: Any, chunk: int, overlap: int, progress: bool = False,
               root: Path | None = None, shard: int = SHARD) -> Index:
    """The index of ``sources`` from the cache, built first when missing (or when a source changed)."""
    t0 = time.perf_counter()
    root = root or index_root()
    root.mkdir(parents=True, exist_ok=True)
    cache = HashCache(root / "hashes.json")
    hashes = [content_hash(s.document, cache) for s in sources]
    cache.save()
    if any(h is None for h in hashes):
        folder = Path(tempfile.mkdtemp(prefix="stream-", dir=root))
        _build(folder, sources, tokenizer, chunk, overlap, progress, shard)
        return Index(folder, temporary=True, built=True, seconds=time.perf_counter() - t0)
    key = index_key(hashes, [s.name for s in sources], tokenizer, chunk, overlap)  # type: ignore[arg-type]
    folder = root / key
    if (folder / "meta.json").is_file():
        return Index(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
    try:
        _build(tmp, sources, tokenizer, chunk, overlap, progress, shard)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process built it meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(folder, built=True, seconds=time.perf_counter() - t0)


def _build(folder: Path, sources: Sequence[Source], tokenizer: Any, chunk: int, overlap: int,
           progress: bool, shard: int = SHARD) -> None:
    t0 = time.perf_counter()
    bm25 = BM25Writer(folder / "bm25", shard=shard)
    offsets = array("q", [0])
    tokens = 0
    bar = tqdm(unit="chunk", desc="rag: index", disable=not progress, leave=False)
    with open(folder / "chunks.jsonl", "wb") as f:
        for n, source in enumerate(sources):
            for c in iter_document_chunks(source.document, tokenizer, chunk, overlap, source=n):
                line = (json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                offsets.append(offsets[-1] + len(line))
                bm25.add(c.text)
                tokens += c.new_tokens
                bar.update(1)
    bar.close()
    if len(offsets) == 1:
        raise InputError("the document holds no text to retrieve from; give a document with text in it")
    np.save(folder / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    bm25.close()
    meta = {"version": VERSION, "names": [s.name for s in sources], "chunks": len(offsets) - 1, "tokens": tokens,
            "chunk": chunk, "overlap": overlap, "shard": shard, "build_seconds": round(time.perf_counter() - t0, 3)}
    (folder / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks a complete index
