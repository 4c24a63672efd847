"""Readers: the loop that feeds a document to the model and produces an answer.

A reader has one method, ``read(engine, plan, request, progress) -> ReadResult``; it does all model
work through the :class:`EngineLike` it is given (:class:`longreach.engine.Engine`: checks, sessions
that install the plan and undo it, prefill, decode, probes). The default is
:class:`~longreach.readers.chunked.ChunkedReader` (chunked prefill into the KV cache, greedy decode);
methods in the ``reader`` slot (InfiniRetri, retrieval, ...) bring their own. ``ask``, ``bench`` and
``serve`` all call ``Engine.run``: they differ only in where documents come from and where answers go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from ..sampling import CancelToken, Sampling, Step


@dataclasses.dataclass
class Request:
    """One question about one document."""

    document: Any  # str; readers with ``streams = True`` also take a file path or an iterable of str
    question: str
    max_new_tokens: int = 64
    answer_prefix: str = ""  # text that starts the answer (e.g. "The pass key is")
    chunk_size: int = 2048  # prefill chunk in tokens
    memory_limit: int | None = None  # bytes; None = what the machine has available
    prompt: str = "auto"  # prompt format BASE[+MOD...] (longreach.prompt); Engine.run resolves auto
    ignore_eos: bool = False  # decode exactly max_new_tokens (decode-speed cells); the answer still ends at EOS


@dataclasses.dataclass
class ReadResult:
    answer: str
    output_ids: list[int]
    input_tokens: int
    prefill_seconds: float
    decode_seconds: float
    kv_cache_bytes: int
    evidence: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------- what readers get
class SessionLike(Protocol):
    """An installed plan (see :class:`longreach.engine.Session`)."""

    @property
    def model(self) -> Any:
        """The model, for readers that install forward hooks (icv); they remove them before the session ends."""
        ...

    def make_cache(self, prompt: str | None = None, ids: list[int] | None = None,
                   question: str | None = None) -> Any: ...

    def prefill(self, ids: list[int], cache: Any, chunk_size: int, progress: bool = False,
                start: int = 0, cancel: CancelToken | None = None) -> torch.Tensor: ...

    def prefill_logprobs(self, ids: list[int], cache: Any, chunk_size: int, top_k: int | None,
                         cancel: CancelToken | None = None) -> tuple[torch.Tensor, list[Step | None]]: ...

    def stream(self, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
               stop_ids: Iterable[int] | None = None, sampling: Sampling = ...,
               cancel: CancelToken | None = None) -> Iterator[Step]: ...

    def decode(self, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
               stop_ids: Iterable[int] | None = None, sampling: Sampling = ...,
               cancel: CancelToken | None = None) -> list[int]: ...

    def loglik(self, ids: list[int], chunk: int = 512, cache: Any = None) -> torch.Tensor: ...

    def probe(self, ids: list[int], layer: int | Sequence[int],
              fn: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> Any: ...


class EngineLike(Protocol):
    """What a reader may use of the engine (see :class:`longreach.engine.Engine`)."""

    tokenizer: Any
    info: Any

    @property
    def device(self) -> torch.device: ...

    def eos_ids(self) -> set[int]: ...

    def check_request(self, plan: Any, input_tokens: int, max_new_tokens: int, chunk_size: int = 2048,
                      memory_limit: int | None = None) -> None: ...

    def check_memory(self, plan: Any, tokens: int, chunk_size: int = 2048,
                     memory_limit: int | None = None) -> None: ...

    def session(self, plan: Any, total_tokens: int | None = None) -> AbstractContextManager[SessionLike]: ...

    def run(self, plan: Any, request: Request, progress: bool = False, prefix_cache: Any = None) -> ReadResult:
        """A whole sub-request under another plan (its checks, then its reader): a reader that routes
        (``route``) reads through other plans this way and never installs anything itself.
        ``prefix_cache`` (plain plans): reuse the KV cache of an earlier prompt's shared prefix."""
        ...


class Reader(Protocol):
    """The reader slot's object: ``Plan.make_reader()``."""

    name: str

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult: ...


def decode_answer(engine: EngineLike, s: SessionLike, cache: Any, logits: torch.Tensor, position: int,
                  request: Request) -> tuple[list[int], list[int]]:
    """Greedy decoding for a reader: (all decoded ids, the answer's ids). With ``request.ignore_eos``
    every one of ``max_new_tokens`` steps runs and the answer is cut at the first EOS id."""
    if not request.ignore_eos:
        out = s.decode(cache, logits, position, request.max_new_tokens)
        return out, out
    out = s.decode(cache, logits, position, request.max_new_tokens, stop_ids=set())
    eos = engine.eos_ids()
    end = next((i for i, t in enumerate(out) if t in eos), len(out))
    return out, out[:end]
