"""ALR² reader: retrieve (the model quotes the sentences it needs), verify the quotes, reason from them.

Paper: "ALR²: A Retrieve-then-Reason Framework for Long-context Question Answering" (arXiv 2410.03227).
This is the paper's prompted two-stage baseline (no alignment training) with a verification step between
the stages, the "cheap check" the paper's hallucinated-retrieval measure suggests.

1. **Source text** (``source``): ``rag`` = the chunks :meth:`~longreach.readers.rag.RagReader.retrieve`
   packs for the quote prompt; ``infiniretri`` = the sentences InfiniRetri retains (a sub-read through
   ``engine.run``; its one-token answer is discarded), one per line; ``none`` = the whole document (it must
   fit one window with the quote prompt).
2. **Retrieve**: one greedy generation (``engine.run`` with the outer plan's other methods, no reader) of
   at most ``quote_tokens`` tokens from the source text and the question followed by
   :data:`QUOTE_INSTRUCTION`; :func:`~longreach.readers.quotes.parse_quotes` keeps the first ``quotes``.
3. **Verify** each quote against the source text (:mod:`longreach.readers.quotes`): exact after whitespace
   normalisation, else a fuzzy match >= ``fuzzy`` to one of its sentences (that SOURCE sentence stands for
   the quote), else hallucinated: dropped and counted.
4. **Reason**: the answer from the verified source sentences only (they are the document of the normal
   prompt, with the request's question, answer prefix and ``max_new_tokens``). No verified quote: the
   answer is :data:`DECLINE` ("unanswerable", which :func:`longreach.answers.declines` recognises) without
   a model call, and ``extra["reason"]`` says so.

``evidence`` = the verified source sentences (document order); ``extra``: ``quotes``, ``verified``,
``hallucinated``, ``hallucinated_quotes``, ``source``, the source step's own extra under ``retrieval``.
``output_ids`` = every token decoded (the quotes, then the answer), matching ``decode_seconds``;
``input_tokens`` = every token read (the source step's, the quote prompt's and the answer prompt's).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from ..answers import strip_instruction
from ..errors import TooLongError
from ..prompt import build_prompt, encode
from ..spec import Plan
from . import EngineLike, ReadResult, Request
from .infiniretri import pass_span
from .quotes import Verifier, parse_quotes
from .route import for_reader, full_text, materialize

QUOTE_INSTRUCTION = "First copy, word for word, the sentences of the text needed to answer, one per line."
DECLINE = "unanswerable"  # the word UNANSWERABLE_INSTRUCTION asks for; longreach.answers.declines(DECLINE)


@dataclasses.dataclass
class SourceText:
    """The text the quotes are taken from and checked against, and what getting it cost."""

    text: str
    input_tokens: int = 0  # tokens read to find it (rag: the document; infiniretri: its passes)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    kv_cache_bytes: int = 0
    output_ids: list[int] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Alr2Reader:
    """Quote, verify, reason (see the module docstring)."""

    source: str = "rag"
    fuzzy: float = 90.0
    quotes: int = 8
    quote_tokens: int = 256
    retriever: str = "hybrid"
    chunk: int = 0  # 0 = the source's default (rag 256, infiniretri 1024)
    overlap: int = 32
    top_k: int = 0  # 0 = the source's default (rag 5, infiniretri 300)
    name = "alr2"
    streams = True  # rag / infiniretri stream the document; none reads it whole
    corpus = True  # rag reads a textio.Corpus file by file; the others join its files

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        tok = engine.tokenizer
        carried = Plan.from_spec([m for m in getattr(plan, "methods", []) if m.slot != "reader"])
        query = strip_instruction(request.question)
        quote_question = f"{query}\n{QUOTE_INSTRUCTION}" if query else QUOTE_INSTRUCTION
        quote_req = dataclasses.replace(request, question=quote_question, answer_prefix="",
                                        max_new_tokens=self.quote_tokens, ignore_eos=False)
        # 1. the source text
        src = self._source(engine, carried, quote_req, query, progress)
        # 2. retrieve: the model quotes it (nothing to quote from: no model call)
        if src.text.strip():
            quoted = engine.run(carried, dataclasses.replace(quote_req, document=src.text), progress=progress)
        else:
            quoted = ReadResult("", [], 0, 0.0, 0.0, 0)
        found = parse_quotes(tok.decode(quoted.output_ids, skip_special_tokens=True), self.quotes)
        # 3. verify
        t0 = time.perf_counter()
        verifier = Verifier(src.text, self.fuzzy)
        verdicts = [verifier.check(q) for q in found]
        evidence = verifier.evidence(verdicts)
        verify_seconds = time.perf_counter() - t0
        bad = [v.quote for v in verdicts if not v.verified]
        steps = [src, quoted]
        extra: dict[str, Any] = {
            "source": self.source, "quotes": len(found), "verified": len(found) - len(bad), "hallucinated": len(bad),
            "hallucinated_quotes": bad, "exact": sum(v.how == "exact" for v in verdicts),
            "fuzzy": sum(v.how == "fuzzy" for v in verdicts), "fuzzy_threshold": self.fuzzy,
            "source_tokens": len(encode(tok, src.text)), "verify_seconds": round(verify_seconds, 4),
            "retrieval": src.extra,
        }
        # 4. reason from the verified sentences only
        if not evidence:
            why = ("the source gave no text to quote" if not src.text.strip() else
                   f"none of the {len(found)} quotes was found in the source text" if found else "the model quoted nothing")
            extra["reason"] = f"{why}, so the answer is '{DECLINE}' (no reasoning step)"
            answer, out = DECLINE, list(quoted.output_ids)
        else:
            answered = engine.run(carried, dataclasses.replace(request, document="\n".join(evidence)),
                                  progress=progress)
            steps.append(answered)
            answer, out = answered.answer, list(quoted.output_ids) + list(answered.output_ids)
            extra["answer_prompt_tokens"] = answered.input_tokens
        return ReadResult(
            answer=answer,
            output_ids=[*src.output_ids, *out],
            input_tokens=sum(s.input_tokens for s in steps),
            prefill_seconds=math.fsum(s.prefill_seconds for s in steps) + verify_seconds,
            decode_seconds=math.fsum(s.decode_seconds for s in steps),
            kv_cache_bytes=max(s.kv_cache_bytes for s in steps),
            evidence=evidence,
            extra=extra,
        )

    # -- the source text of each kind
    def _source(self, engine: EngineLike, carried: Plan, quote_req: Request, query: str,
                progress: bool) -> SourceText:
        if self.source == "rag":
            from .rag import RagReader

            rag = RagReader(self.retriever, self.chunk or 256, self.overlap, self.top_k or 5)
            r = rag.retrieve(engine, carried, quote_req, progress, query=query)
            return SourceText(r.text, r.extra["document_tokens"], prefill_seconds=time.perf_counter() - r.started,
                          extra=r.extra)
        if self.source == "infiniretri":
            own = Plan.from_spec(f"infiniretri:chunk={self.chunk or 1024},top_k={self.top_k or 300},answer=false")
            sub = Plan.from_spec([*own.methods, *carried.methods])
            doc = for_reader(materialize(quote_req.document), sub.make_reader())
            r = engine.run(sub, dataclasses.replace(quote_req, document=doc, question=query), progress=progress)
            kept = self._fit(engine, carried, quote_req, list(r.evidence))
            return SourceText("\n".join(kept), r.input_tokens, r.prefill_seconds, r.decode_seconds, r.kv_cache_bytes,
                          list(r.output_ids), {**r.extra, "retained": len(r.evidence), "kept": len(kept)})
        text = full_text(materialize(quote_req.document))
        self._check_fits(engine, carried, quote_req, text)
        return SourceText(text)

    def _prompt_tokens(self, engine: EngineLike, req: Request, text: str) -> int:
        tok = engine.tokenizer
        return len(encode(tok, build_prompt(tok, text, req.question, req.answer_prefix, req.prompt)))

    def _fit(self, engine: EngineLike, carried: Plan, req: Request, sentences: list[str]) -> list[str]:
        """The retained sentences, the last ones dropped until the quote prompt fits one pass."""
        span = pass_span(carried, engine.info)
        while sentences and self._prompt_tokens(engine, req, "\n".join(sentences)) + req.max_new_tokens > span:
            sentences = sentences[:-1]
        return sentences

    def _check_fits(self, engine: EngineLike, carried: Plan, req: Request, text: str) -> None:
        span = pass_span(carried, engine.info)
        needed = self._prompt_tokens(engine, req, text) + req.max_new_tokens
        if needed > span:
            raise TooLongError(
                f"alr2:source=none reads the whole document in one pass, but the quote prompt and "
                f"{req.max_new_tokens} quote tokens need {needed:,} tokens and {engine.info.name} reads {span:,}; "
                f"use alr2:source=rag or alr2:source=infiniretri", needed=needed, reach=span, suggestion="alr2")

