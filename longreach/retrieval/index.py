"""The retrieval index of a document or corpus, built once and cached on disk by content hash.

Layout of one index folder (``$LONGREACH_CACHE/rag/<key>``, default ``~/.cache/longreach/rag``)::

    meta.json            sources (names), settings, number of chunks and of document tokens
    chunks.jsonl         one chunk per line (:class:`~longreach.retrieval.chunks.Chunk` fields)
    offsets.npy          (N + 1,) int64 byte offsets of the lines: a chunk is read without the others
    bm25/                the bm25s index (memory-mapped when loaded)
    dense-<encoder>.npy  (N, d) float32 unit vectors, one file per encoder, built on first use

The key hashes the content of every source (files read in blocks), the tokenizer, ``chunk`` and
``overlap``: a changed file gives a new key, so a stale index is never read. Building streams the
documents (chunk texts go straight to disk, embeddings are written batch by batch into a memory-mapped
array); the BM25 term ids of all chunks are held while the bm25s index is built (int32 per term). A
folder is built under a temporary name and renamed when complete, so a crash leaves no half index.
Sources that are neither text nor a file (an iterable of pieces) cannot be hashed before reading:
their index is built in a temporary folder and removed by :meth:`Index.close`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..models import cache_dir
from ..readers.sentences import Document
from .bm25 import BM25, TermCounter
from .chunks import Chunk, iter_document_chunks
from .embed import Embedder
from .fuse import rrf, top

VERSION = 1
RETRIEVERS = ("bm25", "dense", "hybrid")
_BLOCK = 1 << 20  # bytes hashed per read; rows scored per dense block below
_ROWS = 1 << 16


@dataclasses.dataclass
class Source:
    """One document of a corpus: a display name (a file name, or '' for text) and its content."""

    name: str
    document: Document


def index_root() -> Path:
    return cache_dir() / "rag"


def content_hash(document: Document) -> str | None:
    """sha256 of a text or a file (read in blocks); None for an iterable that can only be read once."""
    h = hashlib.sha256()
    if isinstance(document, str):
        h.update(b"text\0" + document.encode("utf-8", "surrogatepass"))
    elif isinstance(document, os.PathLike):
        h.update(b"file\0")
        with open(document, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    else:
        return None
    return h.hexdigest()


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


class Index:
    """An index folder: chunks by number, BM25 and dense scores, hybrid search."""

    def __init__(self, folder: Path, temporary: bool = False, built: bool = False):
        self.folder = folder
        self.temporary = temporary
        self.built = built  # True when this call built it (False: read from the cache)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.names: list[str] = self.meta["names"]
        self.size: int = self.meta["chunks"]
        self.tokens: int = self.meta["tokens"]  # the documents' tokens (each counted once)
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self._bm25: BM25 | None = None

    # -- chunks
    def chunk(self, i: int) -> Chunk:
        with open(self.folder / "chunks.jsonl", "rb") as f:
            f.seek(int(self.offsets[i]))
            return Chunk(**json.loads(f.read(int(self.offsets[i + 1] - self.offsets[i]))))

    def iter_chunks(self) -> Iterator[Chunk]:
        with open(self.folder / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                yield Chunk(**json.loads(line))

    # -- scores
    def bm25_scores(self, query: str) -> np.ndarray:
        """(N,) BM25 scores."""
        if self._bm25 is None:
            self._bm25 = BM25(self.folder / "bm25")
        return self._bm25.scores(query)

    def dense_matrix(self, embedder: Embedder, progress: bool = False) -> np.ndarray:
        """(N, d) unit vectors of the chunks under ``embedder``, built (batch by batch) on first use."""
        path = self.folder / f"dense-{embedder.fingerprint}.npy"
        if not path.is_file():
            tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.size, embedder.dim))
            bar = tqdm(total=self.size, unit="chunk", desc="rag: embed", disable=not progress, leave=False)
            batch: list[str] = []
            row = 0
            for c in self.iter_chunks():
                batch.append(c.text)
                if len(batch) == embedder.batch * 4:
                    out[row:row + len(batch)] = embedder.embed(batch)
                    row += len(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                out[row:row + len(batch)] = embedder.embed(batch)
                bar.update(len(batch))
            bar.close()
            out.flush()
            del out
            os.replace(tmp, path)
        return np.load(path, mmap_mode="r")

    def dense_scores(self, query: str, embedder: Embedder, progress: bool = False) -> np.ndarray:
        """(N,) cosine similarities, exact, computed block by block over the memory-mapped vectors."""
        matrix = self.dense_matrix(embedder, progress)  # (N, d)
        q = embedder.embed([query])[0]  # (d,)
        out = np.empty(self.size, dtype=np.float32)
        for lo in range(0, self.size, _ROWS):
            out[lo:lo + _ROWS] = np.asarray(matrix[lo:lo + _ROWS]) @ q  # (rows,)
        return out

    def search(self, query: str, retriever: str, depth: int, embedder: Embedder | None = None,
               progress: bool = False) -> list[int]:
        """Chunk numbers best first: BM25 (chunks with a query term), dense, or both fused by RRF."""
        if retriever not in RETRIEVERS:
            raise ValueError(f"retriever={retriever!r}; use one of {', '.join(RETRIEVERS)}")
        rankings = []
        if retriever in ("bm25", "hybrid"):
            rankings.append(top(self.bm25_scores(query), depth, positive=True))
        if retriever in ("dense", "hybrid"):
            if embedder is None:
                raise ValueError("dense retrieval needs an embedder")
            rankings.append(top(self.dense_scores(query, embedder, progress), depth))
        return rankings[0] if len(rankings) == 1 else rrf(rankings)

    # -- lifetime
    def close(self) -> None:
        self._bm25 = None
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_index(sources: Sequence[Source], tokenizer: Any, chunk: int, overlap: int, progress: bool = False,
               root: Path | None = None) -> Index:
    """The index of ``sources`` from the cache, built first when missing (or when a source changed)."""
    hashes = [content_hash(s.document) for s in sources]
    root = root or index_root()
    root.mkdir(parents=True, exist_ok=True)
    if any(h is None for h in hashes):
        folder = Path(tempfile.mkdtemp(prefix="stream-", dir=root))
        _build(folder, sources, tokenizer, chunk, overlap, progress)
        return Index(folder, temporary=True, built=True)
    key = index_key(hashes, [s.name for s in sources], tokenizer, chunk, overlap)  # type: ignore[arg-type]
    folder = root / key
    if (folder / "meta.json").is_file():
        return Index(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
    try:
        _build(tmp, sources, tokenizer, chunk, overlap, progress)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process built it meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(folder, built=True)


def _build(folder: Path, sources: Sequence[Source], tokenizer: Any, chunk: int, overlap: int,
           progress: bool) -> None:
    terms = TermCounter()
    offsets = [0]
    tokens = 0
    bar = tqdm(unit="chunk", desc="rag: index", disable=not progress, leave=False)
    with open(folder / "chunks.jsonl", "wb") as f:
        for n, source in enumerate(sources):
            for c in iter_document_chunks(source.document, tokenizer, chunk, overlap, source=n):
                line = (json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                offsets.append(offsets[-1] + len(line))
                terms.add(c.text)
                tokens += c.new_tokens
                bar.update(1)
    bar.close()
    if len(offsets) == 1:
        raise InputError("the document holds no text to retrieve from; give a document with text in it")
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    (folder / "bm25").mkdir()
    terms.save(folder / "bm25")
    meta = {"version": VERSION, "names": [s.name for s in sources], "chunks": len(offsets) - 1, "tokens": tokens,
            "chunk": chunk, "overlap": overlap}
    (folder / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks a complete index
