"""``infiniretri``: read an unbounded document chunk by chunk, keeping the sentences the model attends to."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import pydantic

from ...spec import Length, Method, register


def _layer(value: Any) -> Any:
    """A layer number (``-1``, ``"12"``) or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        raise ValueError("use a layer number (-1 = the last full-attention layer) or auto")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("use a layer number (-1 = the last full-attention layer) or auto") from None


@register
class InfiniRetri(Method):
    """InfiniRetri: attention-guided retrieval over sentence-aligned chunks, training-free.

    Paper: "Infinite Retrieval: Attention Enhanced LLMs in Long-Context Processing", Ye et al. 2025,
    https://arxiv.org/abs/2502.12962. For every chunk one forward pass reads (retained sentences + chunk
    + question); the question's attention in one layer scores the context tokens and the whole sentences
    holding the ``top_k`` best tokens are carried to the next chunk; the answer is read from them.
    Time is linear in the document length and memory is bounded by one pass.

    Parameters:
      chunk   new document tokens per pass (sentence-aligned), default 1024; must leave room for the
              retained sentences inside the model's window.
      top_k   context tokens selected per pass; their whole sentences are retained, default 300.
      window  width of the phrase-level smoothing of the scores along the context, default 8.
      layer   scoring layer: ``auto`` (default) = the earliest full-attention layer whose attention ranks
              planted needles as well as the best layer's (calibrated once per model on a few generated
              documents, then cached; each pass stops there, so an earlier layer is a cheaper pass:
              0.3-0.5x the time of the last layer, as accurate, in benchmarks/results/infiniretri-auto.md;
              a window too small for a calibration document falls back to -1); a number = that layer
              (negative counts from the end; -1 = the last full-attention layer, the paper's choice).
      answer  false = retrieval only: the retained sentences are the evidence and no answer is read
              (what ``alr2:source=infiniretri`` uses; it quotes from them itself). Default true.
    """

    name = "infiniretri"
    slot = "reader"
    paper = "Infinite Retrieval: Attention Enhanced LLMs in Long-Context Processing (arXiv 2502.12962)"
    summary = "attention-guided retrieval of whole sentences, chunk by chunk: unbounded input, flat memory"
    extends = True

    chunk: Length = 1024
    top_k: int = 300
    window: int = 8
    layer: Annotated[Union[int, Literal["auto"]], pydantic.BeforeValidator(_layer)] = "auto"

    answer: bool = True

    def __post_init__(self) -> None:
        if self.chunk < 16:
            raise ValueError(f"chunk={self.chunk} is too small; use at least 16 tokens (default 1024)")
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (default 300)")
        if self.window < 1:
            raise ValueError(f"window={self.window} must be at least 1 (default 8)")

    def check(self, info: Any) -> None:
        from ...readers.infiniretri import resolve_layer

        resolve_layer(info, -1 if self.layer == "auto" else self.layer)  # auto: needs a full-attention layer

    def reach(self, info: Any) -> int | None:
        return None  # unbounded: the document is streamed, one window-sized pass at a time

    def modifies_model(self, info: Any) -> bool:
        return True  # each scoring pass puts a pre-hook on the scoring layer (exclusive session)

    def make_reader(self) -> Any:
        from ...readers.infiniretri import InfiniRetriReader

        return InfiniRetriReader(self.chunk, self.top_k, self.window, self.layer, self.answer)
