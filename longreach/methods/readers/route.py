"""``route``: per question, read the whole document, retrieve, or retrieve and then read long (LaRA / Self-Route)."""

from __future__ import annotations

import re
from typing import Any, Literal

from ...errors import LongreachError
from ...spec import Length, Method, MethodCall, Plan, build_method, register


@register
class Route(Method):
    """Router between a full read and retrieval, decided per question from measured effective lengths.

    Papers: LaRA, "Benchmarking Retrieval-Augmented Generation and Long-Context LLMs" (Li et al. 2025,
    https://arxiv.org/abs/2502.09977): neither RAG nor long context wins everywhere; the choice depends
    on the model's long-context ability and the input's length. Self-Route, "Retrieval Augmented
    Generation or Long-Context LLMs? A Comprehensive Study and Hybrid Approach" (Li et al. 2024,
    https://arxiv.org/abs/2407.16833): answer from the retrieved chunks or declare the question
    unanswerable; only declined questions are re-read with the long context.

    Per question (n = the document's tokens, counted with the model's tokenizer): a full read with
    ``none`` if n + prompt + answer fits the effective length measured for the model (the calibration
    table of ``longreach calibrate``; a model it lacks: half its window); else a full read with a
    position method measured to cover it; else ``rag`` with an instruction to reply "unanswerable";
    when the answer declines and ``fallback`` is on, a long read (a position method measured to cover
    n, else ``infiniretri``) answers instead, up to ``max_fallback`` tokens. See docs/route.md.

    Parameters:
      rag           the retrieval path's retriever: bm25, dense or hybrid (default hybrid).
      chunk         rag's chunk size in tokens, default 256.
      overlap       rag's overlap between chunks in tokens (at most chunk/2), default 32.
      top_k         rag's chunks given to the model at most, default 5.
      long          the long path: auto (the best position method the table measures to cover the input,
                    else infiniretri) or a method name (infiniretri, or a position method such as
                    self-extend; the Python API takes a whole spec, e.g. ``long="yarn:factor=4"``).
      fallback      read long when rag declines (Self-Route), default true.
      max_fallback  the largest document (tokens) the fallback reads; beyond it the rag answer stands,
                    default 131072.
      table         calibration table file; '' = the packaged longreach/data/effective_lengths.json.
      threshold     accuracy a tested length must reach (with every shorter one) to count; 0 = the table's
                    own (0.8 as shipped), else in (0, 1]: effective lengths are re-derived from the points.
    """

    name = "route"
    slot = "reader"
    paper = ("LaRA (arXiv 2502.09977) + Self-Route: Retrieval Augmented Generation or Long-Context LLMs? "
             "(arXiv 2407.16833)")
    summary = "per question: full read if measured to fit, else rag; rag's 'unanswerable' re-read long"
    extends = True

    rag: Literal["bm25", "dense", "hybrid"] = "hybrid"
    chunk: Length = 256
    overlap: int = 32
    top_k: int = 5
    long: str = "auto"
    fallback: bool = True
    max_fallback: Length = 131072
    table: str = ""
    threshold: float = 0.0

    def __post_init__(self) -> None:
        self.rag_method()  # rag's own checks of chunk and top_k, in its words
        if self.long != "auto":
            self.long_plan()
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold:g} must be in (0, 1], or 0 for the table's own (0.8)")
        if self.table:
            from ...readers.route import load_table

            load_table(self.table)  # a missing or malformed table: one line now, not at the first question

    def rag_method(self) -> Any:
        try:
            return build_method(MethodCall("rag", (("retriever", self.rag), ("chunk", str(self.chunk)),
                                                   ("overlap", str(self.overlap)), ("top_k", str(self.top_k)))))
        except LongreachError as exc:  # rag's message, about route's parameters
            msg = re.sub(r"^invalid parameters for '?rag'?: ", "", str(exc)).replace("invalid rag:", "invalid route:")
            raise ValueError(msg) from None

    def long_plan(self) -> Plan:
        """The explicit long path's plan (``long`` other than auto)."""
        try:
            plan = Plan.from_spec(self.long)
        except LongreachError as exc:
            raise ValueError(f"long={self.long}: {exc}") from None
        names = {m.name for m in plan.methods}
        if not plan.extends or names & {"rag", "route"}:
            raise ValueError(f"long={self.long} does not read past the window on its own; use auto, infiniretri "
                             "or a position method (e.g. self-extend, yarn)")
        return plan

    def check(self, info: Any) -> None:
        self.rag_method().check(info)  # the encoder folder of dense / hybrid retrieval
        if self.long != "auto":
            self.long_plan().check(info)

    def reach(self, info: Any) -> int | None:
        return None  # rag streams any length; full reads happen only where the table says they fit

    def make_reader(self) -> Any:
        from ...readers.route import RouteReader

        return RouteReader(self.rag, self.chunk, self.overlap, self.top_k, self.long, self.fallback, self.max_fallback,
                           self.table, self.threshold)
