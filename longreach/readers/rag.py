"""RAG reader: retrieve the chunks of a document (or corpus) that match the question, pack the best into
the window in document order, answer from them.

Steps: the index of the input (:mod:`longreach.retrieval.index`, cached on disk by content hash) ->
a ranking of chunks by BM25, dense cosine or both fused by reciprocal rank (hybrid: dense scores only
for the BM25 best ``pool`` chunks, their vectors cached in the index) -> the best chunks, in rank
order, while they fit the window minus the prompt and the answer (at most ``top_k``) -> those chunks in
document order (consecutive chunks joined without their overlap; one ``[file]`` header per group when
the corpus has several files) -> the normal prompt, chunked prefill and greedy decoding. Evidence: one
entry per group of consecutive chunks, ``[file:first-last] text`` (``[lines first-last]`` for text).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from ..answers import strip_instruction
from ..errors import SpecError
from ..memory import cache_bytes
from ..prompt import build_prompt, encode
from ..retrieval.chunks import Chunk
from ..retrieval.embed import load_embedder, resolve_folder
from ..retrieval.index import Index, Source, open_index
from ..textio import Corpus
from . import EngineLike, ReadResult, Request, decode_answer
from .infiniretri import pass_span
from .sentences import document_tail

SEARCH_DEPTH = 50  # chunks ranked per retriever before fusion (at least 4 x top_k)
POOL = 2048  # hybrid: chunks (the BM25 best) given dense scores; see docs/rag.md for the choice


def sources_of(document: Any) -> list[Source]:
    """The corpus of a request: a :class:`~longreach.textio.Corpus` (files), a file path, a text or pieces."""
    if isinstance(document, Corpus):
        return [Source(name, path) for name, path in zip(document.names, document.files)]
    if isinstance(document, os.PathLike):
        return [Source(os.fspath(document), document)]
    return [Source("", document)]


def groups(chosen: list[Chunk]) -> list[list[Chunk]]:
    """Chunks in document order, consecutive ones (same source, next index) grouped."""
    out: list[list[Chunk]] = []
    for c in sorted(chosen, key=lambda c: (c.source, c.index)):
        if out and out[-1][-1].source == c.source and out[-1][-1].index + 1 == c.index:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def group_text(group: list[Chunk]) -> str:
    return (group[0].text + "".join(c.new_text for c in group[1:])).strip()


def where(group: list[Chunk], names: list[str]) -> str:
    name = names[group[0].source]
    span = f"{group[0].first_line}-{group[-1].last_line}"
    return f"{name}:{span}" if name else f"lines {span}"


def context_text(chosen: list[Chunk], names: list[str]) -> str:
    """What the model reads: the chosen chunks in document order, a ``[file]`` header per group if several files."""
    several = len(set(names)) > 1
    parts = []
    for g in groups(chosen):
        head = f"[{names[g[0].source]}]\n" if several else ""
        parts.append(head + group_text(g))
    return "\n\n".join(parts)


@dataclasses.dataclass
class Retrieved:
    """What :meth:`RagReader.retrieve` found: the text the model reads (chunks in document order), the
    evidence and extra of the answer, the prompt built around the text, and when retrieval started."""

    text: str
    evidence: list[str]
    extra: dict[str, Any]
    prompt_text: str
    ids: list[int]  # prompt_text's token ids
    input_tokens: int  # every document token + the prompt around the chunks
    started: float  # time.perf_counter() when the index was opened


@dataclasses.dataclass
class RagReader:
    """Index, retrieve, pack in document order, answer."""

    retriever: str = "hybrid"
    chunk: int = 256
    overlap: int = 32
    top_k: int = 5
    embed_model: str = ""
    embed_window: int = 0
    situated: int = 0
    pool: int = POOL
    name = "rag"
    streams = True  # reads Request.document given as a str, a file path or an iterable of str pieces
    corpus = True  # ... and a textio.Corpus of several files

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        tok = engine.tokenizer
        r = self.retrieve(engine, plan, request, progress)
        engine.check_request(plan, len(r.ids), request.max_new_tokens, request.chunk_size, request.memory_limit)
        with engine.session(plan, len(r.ids) + request.max_new_tokens) as s:
            cache = s.make_cache(r.prompt_text, r.ids, request.question)
            logits = s.prefill(r.ids, cache, request.chunk_size, progress=progress)
            t2 = time.perf_counter()
            out, answer_ids = decode_answer(engine, s, cache, logits, len(r.ids), request)
            t3 = time.perf_counter()
            held = cache_bytes(cache)
        return ReadResult(
            answer=tok.decode(answer_ids, skip_special_tokens=True).strip(),
            output_ids=out,
            input_tokens=r.input_tokens,
            prefill_seconds=t2 - r.started,
            decode_seconds=t3 - t2,
            kv_cache_bytes=held,
            evidence=r.evidence,
            extra=r.extra,
        )

    def retrieve(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False,
                 query: str | None = None) -> Retrieved:
        """Retrieval without answering: the chunks packed for ``request``'s prompt (its question, answer prefix,
        format and ``max_new_tokens`` set the budget), the prompt built around them, evidence and extra.
        ``query``: the search text (default: the question without the decline instruction, else the tail)."""
        tok, info = engine.tokenizer, engine.info
        span = pass_span(plan, info)
        sources = sources_of(request.document)
        if query is None:
            query = strip_instruction(request.question)  # the decline instruction is not a search term
        query = query if query.strip() else self._tail(sources)
        empty = encode(tok, build_prompt(tok, "", request.question, request.answer_prefix, request.prompt))
        budget = span - len(empty) - request.max_new_tokens
        if budget < self.chunk:
            raise SpecError(f"rag:chunk={self.chunk} does not fit the {span:,}-token window of {info.name} with "
                            f"the prompt and {request.max_new_tokens} answer tokens; use chunk <= {max(8, budget)}")
        embedder = None
        if self.retriever != "bm25":
            folder = resolve_folder(self.embed_model)
            embedder = load_embedder(str(folder), str(engine.device), self.embed_window)
        t0 = time.perf_counter()
        with open_index(sources, tok, self.chunk, self.overlap, progress) as index:
            ranked = index.search(query, self.retriever, max(SEARCH_DEPTH, 4 * self.top_k), embedder, progress,
                                  pool=self.pool, window=self.embed_window, situated=self.situated)
            chosen = self._pack(index, ranked, budget)
            built, n_chunks, names, doc_tokens = index.built, index.size, index.names, index.tokens
            index_seconds = index.index_seconds
        text = context_text(chosen, names)
        prompt_text = build_prompt(tok, text, request.question, request.answer_prefix, request.prompt)
        ids = encode(tok, prompt_text)
        while len(ids) + request.max_new_tokens > span and chosen:  # headers / joins cost a few tokens more
            chosen = chosen[:-1]  # drop the lowest-ranked chunk
            text = context_text(chosen, names)
            prompt_text = build_prompt(tok, text, request.question, request.answer_prefix, request.prompt)
            ids = encode(tok, prompt_text)
        t1 = time.perf_counter()
        return Retrieved(
            text=text,
            evidence=[f"[{where(g, names)}] {group_text(g)}" for g in groups(chosen)],
            extra={"retriever": self.retriever, "chunks": n_chunks, "retrieved": len(chosen),
                   "index_built": built, "retrieval_seconds": round(t1 - t0, 3),
                   "index_seconds": round(index_seconds, 3),
                   "document_tokens": doc_tokens, "answer_prompt_tokens": len(ids),
                   "spans": [where(g, names) for g in groups(chosen)]},
            prompt_text=prompt_text,
            ids=ids,
            input_tokens=doc_tokens + len(empty),  # what was read: every document token + the prompt
            started=t0,
        )

    def _pack(self, index: Index, ranked: list[int], budget: int) -> list[Chunk]:
        """The best chunks, in rank order, while they fit ``budget`` tokens (2 per chunk for the joins)."""
        chosen, used = [], 0
        for c in index.chunks_at(ranked):
            if len(chosen) == self.top_k:
                break
            if used + c.tokens + 2 <= budget:
                chosen.append(c)
                used += c.tokens + 2
        return chosen

    @staticmethod
    def _tail(sources: list[Source]) -> str:
        """No question: the end of the (last) document is the query."""
        return document_tail(sources[-1].document)
