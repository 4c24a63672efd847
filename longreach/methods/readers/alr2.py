"""``alr2``: retrieve-then-reason: the model quotes the sentences it needs, the quotes are verified, the answer
is reasoned from the verified ones only (ALR²)."""

from __future__ import annotations

import re
from typing import Any, Literal

from ...errors import LongreachError
from ...spec import Length, LengthOrZero, Method, MethodCall, build_method, register


@register
class Alr2(Method):
    """ALR²: retrieve (quote verbatim), verify, then reason from the verified quotes only.

    Paper: "ALR²: A Retrieve-then-Reason Framework for Long-context Question Answering", Li et al. 2024,
    https://arxiv.org/abs/2410.03227. Models "hallucinate retrieved facts": the facts they list are not in
    the context. This is the prompted two-stage version (no alignment training) with a check between the
    stages: every quote is verified against the source text, exactly (after whitespace normalisation)
    or with a fuzzy match (rapidfuzz) to one of its sentences, which then stands for the quote;
    unverified quotes are dropped and counted as hallucinated. No verified quote: the answer is
    "unanswerable". See docs/alr2.md.

    Parameters:
      source        where the quoted text comes from: rag (the retrieved chunks, default), infiniretri
                    (the sentences InfiniRetri retains) or none (the whole document; it must fit one window).
      fuzzy         rapidfuzz score (0-100] a non-exact quote needs against a source sentence, default 90.
      quotes        quotes kept from the model's list at most, default 8.
      quote_tokens  tokens the model may write for its quotes, default 256.
      retriever     rag's retriever: bm25, dense or hybrid (default hybrid); source=rag only.
      chunk         the source's chunk in tokens; 0 = its default (rag 256, infiniretri 1024).
      overlap       rag's overlap between chunks in tokens (at most chunk/2), default 32.
      top_k         rag: chunks retrieved at most (0 = 5); infiniretri: tokens selected per pass (0 = 300).
    """

    name = "alr2"
    slot = "reader"
    paper = "ALR²: A Retrieve-then-Reason Framework for Long-context Question Answering (arXiv 2410.03227)"
    summary = "quote the needed sentences, verify them (exact / fuzzy), answer from the verified ones only"
    extends = True

    source: Literal["rag", "infiniretri", "none"] = "rag"
    fuzzy: float = 90.0
    quotes: int = 8
    quote_tokens: Length = 256
    retriever: Literal["bm25", "dense", "hybrid"] = "hybrid"
    chunk: LengthOrZero = 0
    overlap: int = 32
    top_k: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fuzzy <= 100:
            raise ValueError(f"fuzzy={self.fuzzy:g} must be in (0, 100] (a rapidfuzz score), default 90")
        if self.quotes < 1:
            raise ValueError(f"quotes={self.quotes} must be at least 1 (default 8)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be 0 (the source's default) or more")
        self.source_method()  # the source's own checks of chunk, overlap and top_k, in its words

    def source_method(self) -> Method | None:
        """The retrieval source as a method (rag / infiniretri with these parameters); None for source=none."""
        if self.source == "none":
            return None
        if self.source == "rag":
            params = (("retriever", self.retriever), ("chunk", str(self.chunk or 256)),
                      ("overlap", str(self.overlap)), ("top_k", str(self.top_k or 5)))
        else:
            params = (("chunk", str(self.chunk or 1024)), ("top_k", str(self.top_k or 300)))
        try:
            return build_method(MethodCall(self.source, params))
        except LongreachError as exc:  # the source's message, about alr2's parameters
            msg = re.sub(rf"^invalid parameters for '?{self.source}'?: ", "", str(exc))
            raise ValueError(msg.replace(f"invalid {self.source}:", "invalid alr2:")) from None

    def check(self, info: Any) -> None:
        m = self.source_method()
        if m is not None:
            m.check(info)  # rag: the encoder folder; infiniretri: its scoring layer

    def reach(self, info: Any) -> int | None:
        return info.window if self.source == "none" else None  # rag / infiniretri stream any length

    def make_reader(self) -> Any:
        from ...readers.alr2 import Alr2Reader

        return Alr2Reader(self.source, self.fuzzy, self.quotes, self.quote_tokens, self.retriever, self.chunk,
                          self.overlap, self.top_k)
