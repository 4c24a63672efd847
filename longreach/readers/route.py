"""Route reader: read the whole document when the model is measured to read that length, retrieve
otherwise, and read long when retrieval says it cannot answer.

Papers: LaRA, "Benchmarking Retrieval-Augmented Generation and Long-Context LLMs" (arXiv 2502.09977: no
single winner; RAG for inputs past what the model reads well, long context within it) and Self-Route,
"Retrieval Augmented Generation or Long-Context LLMs?" (arXiv 2407.16833: answer from the retrieved
chunks or declare the question unanswerable; only declined questions are read with the full context).

Decision per question, ``n`` = the document's tokens counted with the model's tokenizer (the document
streamed in pieces; counting stops once ``n`` is past every length that matters), ``+ prompt + answer``
= the prompt around the document and the answer's ``max_new_tokens``:

1. ``n + prompt + answer`` <= the measured effective length of ``none`` -> full read with ``none``;
2. else a position method (rope / attention slot) whose measured effective length covers it and which
   the model takes -> full read with it (the most accurate at that length if several);
3. else ``rag`` with :data:`~longreach.answers.UNANSWERABLE_INSTRUCTION` after the question; when the
   answer declines (:func:`~longreach.answers.declines`), the fallback is on and ``n <= max_fallback``
   -> a long read (the plain model when the input fits its window, else a position method measured to
   cover ``n``, else ``infiniretri``), whose answer stands.

Measured effective lengths come from the calibration table (:func:`load_table`, package data
``longreach/data/effective_lengths.json``, written by ``longreach calibrate`` from ``longreach bench``
results): per model and method spec, the accuracy at each tested length and the largest length L with
accuracy >= threshold at L and at every tested length below it (RULER's rule, with a threshold). A model
the table lacks gets half its window for ``none``, with that reason. Every sub-read goes through
``engine.run(sub_plan, request)``; this reader installs nothing itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..answers import UNANSWERABLE_INSTRUCTION, declines
from ..errors import InputError, LongreachError, SpecError
from ..prompt import build_prompt, encode
from ..spec import MethodCall, Plan, build_method
from ..textio import Corpus, read_documents, read_text_file, shown
from . import EngineLike, ReadResult, Request
from .sentences import BLOCK_CHARS, iter_text

#: The packaged calibration table (``longreach calibrate ... --out`` rewrites it; ``route:table=FILE`` reads another).
PACKAGED_TABLE = Path(__file__).resolve().parent.parent / "data" / "effective_lengths.json"
TABLE_VERSION = 1
DEFAULT_THRESHOLD = 0.8
POSITION_SLOTS = ("rope", "attention")


# ------------------------------------------------------------------------------------ calibration table
def empty_table(threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    return {"version": TABLE_VERSION, "threshold": threshold, "models": {}}


def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """The calibration table at ``path`` ('' / None = the packaged one; an absent packaged file is an empty
    table). One-line :class:`InputError` for a file that is missing or not a table."""
    p = Path(path) if path else PACKAGED_TABLE
    try:
        found = p.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        found = False
    if not found:
        if not path:
            return empty_table()
        raise InputError(f"{shown(p)}: no such calibration table; write one with `longreach calibrate RESULTS_DIR "
                         f"--out {shown(p)}`, or leave table= empty for the packaged one")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{shown(p)}: not a calibration table ({' '.join(str(exc).split())}); "
                         "regenerate it with `longreach calibrate RESULTS_DIR --out FILE`") from None
    check_table(data, shown(p))
    return data


def check_table(data: Any, name: str = "calibration table") -> None:
    """Raise a one-line InputError unless ``data`` has the table's shape (version 1, models -> methods ->
    entries with ``effective_length`` and ``tested`` points ``[length, accuracy, samples]``)."""
    fix = "regenerate it with `longreach calibrate RESULTS_DIR --out FILE`"
    if not isinstance(data, dict) or data.get("version") != TABLE_VERSION or not isinstance(data.get("models"), dict):
        raise InputError(f"{name}: not a version-{TABLE_VERSION} calibration table (no 'models'); {fix}")
    for model, methods in data["models"].items():
        if not isinstance(methods, dict):
            raise InputError(f"{name}: model {model!r} is not a mapping of method specs; {fix}")
        for spec, entry in methods.items():
            where = f"{name}: {model} / {spec}"
            if not isinstance(entry, dict) or not _count(entry.get("effective_length")):
                raise InputError(f"{where} has no whole-number effective_length; {fix}")
            tested = entry.get("tested", [])
            if not isinstance(tested, list) or not all(_point(p) for p in tested):
                raise InputError(f"{where}: 'tested' must be a list of [length, accuracy 0..1, samples]; {fix}")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _point(p: Any) -> bool:
    return (isinstance(p, list) and len(p) == 3 and _count(p[0]) and _count(p[2])
            and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and 0 <= p[1] <= 1)


def effective_lengths(model_name: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The table's entries of ``model_name``: method spec -> entry ({} when the table lacks the model)."""
    return dict(load_table(path)["models"].get(model_name, {}))


def effective_length(tested: Iterable[Iterable[Any]], threshold: float) -> int:
    """The largest tested length L with accuracy >= ``threshold`` at L and at every tested length below it
    (RULER's effective length, arXiv 2404.06654, with a threshold); 0 when the shortest one already fails.
    ``tested``: points ``(length, accuracy, ...)`` in any order."""
    best = 0
    for length, accuracy, *_ in sorted(tested, key=lambda p: p[0]):
        if accuracy < threshold:
            break
        best = length
    return best


@dataclasses.dataclass(frozen=True)
class Measured:
    """What the table says one method reads on one model."""

    spec: str
    length: int  # effective length in tokens (0: fails at its shortest tested length)
    tasks: str = ""  # "passkey+niah_single_2"
    threshold: float = DEFAULT_THRESHOLD
    tested: tuple[tuple[int, float, int], ...] = ()
    assumed: str = ""  # why the length is assumed instead of measured ("" = measured)

    def accuracy_at(self, tokens: int) -> float:
        """Accuracy at the shortest tested length that holds ``tokens`` (the point that covers them)."""
        return next((a for n, a, _ in sorted(self.tested) if n >= tokens), 0.0)

    def describe(self, model: str) -> str:
        if self.assumed:
            return f"assumed effective length {self.length:,} of {self.spec} on {model} ({self.assumed})"
        return (f"measured effective length {self.length:,} of {self.spec} on {model} "
                f"({self.tasks or 'no tasks recorded'}, threshold {self.threshold:g})")


def canonical(spec: str) -> str:
    """A table key as ``Plan.spec`` writes it (``yarn:factor=4`` -> ``yarn:factor=4.0``); a spec this version
    cannot parse stays as it is (it is then never chosen)."""
    try:
        return Plan.from_spec(spec).spec
    except LongreachError:
        return spec


def measured(model: str, window: int, path: str | Path | None = None,
             threshold: float = 0.0) -> tuple[Measured, list[Measured]]:
    """(``none``, every other method) of ``model`` from the table. ``threshold`` > 0 re-derives each
    effective length from the tested points with that threshold (0 = each entry's own). A model (or its
    ``none``) the table lacks: half the window, with the reason."""
    entries = effective_lengths(model, path)

    def one(spec: str, e: dict[str, Any]) -> Measured:
        tested = tuple((int(n), float(a), int(k)) for n, a, k in e.get("tested", []))
        if threshold and tested:  # re-derived from the points with the route's own threshold
            return Measured(spec, effective_length(tested, threshold), "+".join(e.get("tasks", [])), threshold, tested)
        t = float(e.get("threshold", DEFAULT_THRESHOLD))
        return Measured(spec, int(e["effective_length"]), "+".join(e.get("tasks", [])), t, tested)

    others = [one(canonical(spec), e) for spec, e in sorted(entries.items()) if spec != "none"]
    if "none" in entries:
        return one("none", entries["none"]), others
    why = f"no calibration for {model}; assumed half the window" if not entries else \
        f"no calibration of none for {model}; assumed half the window"
    return Measured("none", window // 2, assumed=why), others


# ---------------------------------------------------------------------------------------- token count
class TokenCounter:
    """Counts a document's tokens lazily: :meth:`exceeds` reads further only while the count is at most
    the limit asked about, so a 1M-token file is not tokenized to learn that it is longer than 8k."""

    def __init__(self, document: Any, tokenizer: Any):
        self._pieces = _pieces(document)
        self._tok = tokenizer
        self._next: str | None = None  # the piece read ahead (so that the count knows when it is complete)
        self.n = 0
        self.done = False
        self.seconds = 0.0

    def exceeds(self, limit: int) -> bool:
        t0 = time.perf_counter()
        if self._next is None and not self.done:
            self._next = next(self._pieces, None)
            self.done = self._next is None
        while self._next is not None and (self.n <= limit or self.n == 0):  # at least one piece: a count to show
            self.n += len(self._tok(self._next, add_special_tokens=False).input_ids)
            self._next = next(self._pieces, None)
            self.done = self._next is None
        self.seconds += time.perf_counter() - t0
        return self.n > limit

    def shown(self, plus: int = 0) -> str:
        """``n + plus`` as text: exact once counting finished, else a lower bound."""
        return f"{self.n + plus:,}" if self.done else f"at least {self.n + plus:,}"


def _pieces(document: Any) -> Iterator[str]:
    """The text a full read would see, in pieces cut at white space (so that the pieces' token counts
    add up to the whole's, up to a token per piece for tokenizers that mark word starts)."""
    if isinstance(document, Corpus):
        several = len(document.files) > 1
        for i, path in enumerate(document.files):
            if several:  # read_documents' header and separator
                yield ("\n\n" if i else "") + f"=== {Path(str(path)).name} ===\n"
            yield from _whole_words(iter_text(Path(path)))
    else:
        yield from _whole_words(iter_text(document))


def _whole_words(pieces: Iterable[str]) -> Iterator[str]:
    carry = ""
    for p in pieces:
        text = carry + p
        cut = max(text.rfind(" "), text.rfind("\n"))
        if cut <= 0 and len(text) < 4 * BLOCK_CHARS:  # no white space yet (bounded: CJK text has none)
            carry = text
            continue
        cut = cut if cut > 0 else len(text)
        yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


def materialize(document: Any) -> Any:
    """A document every path can read: a str, a path or a Corpus as they are; a one-shot iterable of
    pieces joined into a str (it could not be read twice: counted, then retrieved, then read long)."""
    if isinstance(document, (str, os.PathLike, Corpus)):
        return document
    return "".join(iter_text(document))


def full_text(document: Any) -> str:
    """The whole document as one string, for a full read (a corpus: its files joined, as ``ask`` does)."""
    if isinstance(document, Corpus):
        return read_documents(document.files)
    if isinstance(document, os.PathLike):
        return read_text_file(document)
    return document


def for_reader(document: Any, reader: Any) -> Any:
    """``document`` as ``reader`` takes it (the same rule as ``longreach.ask``)."""
    if getattr(reader, "corpus", False):
        return document
    if getattr(reader, "streams", False):
        if isinstance(document, Corpus):
            return document.files[0] if len(document.files) == 1 else read_documents(document.files)
        return document
    return full_text(document)


def infiniretri_spec(window: int) -> str:
    """``infiniretri`` with its defaults, or scaled down to a small window (chunk = window/4, top_k = window/8)
    so that its chunk, the retained sentences and the prompt fit one pass."""
    if window >= 4096:
        return "infiniretri"
    return f"infiniretri:chunk={max(16, window // 4)},top_k={max(1, window // 8)}"


# --------------------------------------------------------------------------------------------- reader
@dataclasses.dataclass
class SubRead:
    """One sub-read: its plan, what it answered and what it cost."""

    spec: str
    result: ReadResult
    seconds: float
    declined: bool

    def row(self) -> dict[str, Any]:
        return {"method": self.spec, "seconds": round(self.seconds, 3), "input_tokens": self.result.input_tokens,
                "answer": self.result.answer, "declined": self.declined}


@dataclasses.dataclass
class RouteReader:
    """Full read if measured to fit, else rag; rag's declines read long (see the module docstring)."""

    rag: str = "hybrid"
    chunk: int = 256
    overlap: int = 32
    top_k: int = 5
    long: str = "auto"
    fallback: bool = True
    max_fallback: int = 131072
    table: str = ""
    threshold: float = 0.0
    name = "route"
    streams = True  # takes Request.document as a str, a file path or an iterable of str pieces
    corpus = True  # ... and a textio.Corpus (rag reads its files one by one; full reads join them)

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        info, tok = engine.info, engine.tokenizer
        carried = self._carried(plan)
        document = materialize(request.document)
        none, others = measured(info.name, info.window, self.table or None, self.threshold)
        counter = TokenCounter(document, tok)
        prompt = len(encode(tok, build_prompt(tok, "", request.question, request.answer_prefix, request.prompt)))
        around = prompt + request.max_new_tokens  # tokens a full read needs besides the document
        positions = self._positions(others, info, carried)
        paths: list[SubRead] = []

        def why(*parts: str, fits: bool = False) -> str:
            """The reason, with the counts as they stand when the answer is returned."""
            head = (f"{counter.shown(around)} tokens ({counter.shown()} document + {prompt:,} prompt + "
                    f"{request.max_new_tokens:,} answer) {'<=' if fits else '>'} {none.describe(info.name)}")
            return "; ".join([head, *parts])

        # 1. the plain model reads it well
        if not counter.exceeds(none.length - around):
            path = self._read(engine, Plan.from_spec(list(carried)), request, document, progress, paths)
            return self._result(path, paths, "full", why(fits=True), counter)
        # 2. a position method is measured to read it well
        best = self._best_position(positions, counter, around)
        if best is not None:
            m, sub = best
            path = self._read(engine, sub, request, document, progress, paths)
            return self._result(path, paths, "full", why(f"they fit the {m.describe(info.name)}"), counter)
        none_fits = "no position method is measured to hold them" if self.long == "auto" else \
            f"long={self._long_spec()} is not a position method measured to hold them"
        # 3. retrieval, allowed to decline (Self-Route)
        rag_plan = Plan.from_spec([self._rag_method(), *carried])
        question = f"{request.question.rstrip()} {UNANSWERABLE_INSTRUCTION}" if request.question.strip() \
            else request.question
        rag = self._read(engine, rag_plan, dataclasses.replace(request, question=question), document, progress,
                         paths)
        if not rag.declined:
            return self._result(rag, paths, "rag", why(none_fits, "rag answered"), counter)
        if not self.fallback:
            return self._result(rag, paths, "rag", why(none_fits, "rag declined and the fallback is off"), counter)
        if counter.exceeds(self.max_fallback):
            stands = (f"rag declined but the document has {counter.shown()} tokens > max_fallback "
                      f"{self.max_fallback:,}, so the rag answer stands")
            return self._result(rag, paths, "rag", why(none_fits, stands), counter)
        long_plan, how = self._long_plan(positions, counter, around, info, carried)
        if long_plan is None:
            return self._result(rag, paths, "rag", why(none_fits, f"rag declined but {how}, so the rag answer stands"),
                                counter)
        path = self._read(engine, long_plan, request, document, progress, paths)
        return self._result(path, paths, "rag->long", why(none_fits, f"rag declined, so {how} read the whole document"),
                            counter)

    # -- plans
    def _carried(self, plan: Any) -> list[Any]:
        """The outer plan's cache method, carried into every sub-read; rope / attention methods are refused
        (the router picks the position method itself)."""
        own = [m for m in getattr(plan, "methods", []) if m.slot in POSITION_SLOTS]
        if own:
            raise SpecError(f"route picks the position method itself from the calibration table; remove "
                            f"{own[0]} from the spec (or use route:long={own[0].name})")
        return [m for m in getattr(plan, "methods", []) if m.slot == "cache"]

    def _rag_method(self) -> Any:
        return build_method(MethodCall("rag", (("retriever", self.rag), ("chunk", str(self.chunk)),
                                               ("overlap", str(self.overlap)), ("top_k", str(self.top_k)))))

    def _long_spec(self) -> str:
        return Plan.from_spec(self.long).spec

    def _positions(self, others: list[Measured], info: Any, carried: list[Any]) -> list[tuple[Measured, Plan]]:
        """Table entries that are position methods (extending, no reader) the model takes, with the cache
        method carried; only ``long``'s spec when it is not ``auto``."""
        want = None if self.long == "auto" else self._long_spec()
        out = []
        for m in others:
            if want is not None and m.spec != want:
                continue
            try:
                p = Plan.from_spec(m.spec)
                if not p.extends or p.get("reader") is not None or (p.get("cache") is not None and carried):
                    continue
                p = Plan.from_spec([*p.methods, *carried])
                p.check(info)
            except LongreachError:
                continue  # a method this model (or this version) does not take
            reach = p.reach(info)
            cap = m.length if reach is None else min(m.length, reach)
            out.append((dataclasses.replace(m, length=cap), p))
        return out

    @staticmethod
    def _best_position(positions: list[tuple[Measured, Plan]], counter: TokenCounter,
                       around: int) -> tuple[Measured, Plan] | None:
        """The position method measured to hold the input: the most accurate at the tested length that covers
        it, then the longest effective length, then the spec."""
        if not positions or counter.exceeds(max(m.length for m, _ in positions) - around):
            return None
        tokens = counter.n + around  # exact: counting finished within the longest length
        fits = [(m, p) for m, p in positions if tokens <= m.length]
        if not fits:
            return None
        return min(fits, key=lambda mp: (-mp[0].accuracy_at(tokens), -mp[0].length, mp[0].spec))

    def _long_plan(self, positions: list[tuple[Measured, Plan]], counter: TokenCounter, around: int, info: Any,
                   carried: list[Any]) -> tuple[Plan | None, str]:
        """The fallback's plan and how it is described (or None and why there is none)."""
        if self.long == "auto":
            plain = Plan.from_spec(list(carried))
            reach = plain.reach(info)
            if reach is not None and not counter.exceeds(reach - around):  # Self-Route: the whole input, as is
                return plain, f"{plain.spec} (the whole input fits its {reach:,}-token window)"
            best = self._best_position(positions, counter, around)
            if best is not None:
                return best[1], f"{best[1].spec} ({best[0].describe(info.name)})"
            plan = Plan.from_spec([*Plan.from_spec(infiniretri_spec(info.window)).methods, *carried])
            return plan, plan.spec
        plan = Plan.from_spec([*Plan.from_spec(self.long).methods, *carried])
        reach = plan.reach(info)
        tokens = counter.n + around
        if reach is not None and tokens > reach:
            return None, f"{plan.spec} reads {reach:,} tokens < the {tokens:,} needed"
        return plan, plan.spec

    # -- sub-reads
    @staticmethod
    def _read(engine: EngineLike, plan: Plan, request: Request, document: Any, progress: bool,
              paths: list[SubRead]) -> SubRead:
        """``engine.run(plan, request)`` with the document as the plan's reader takes it; timed and recorded."""
        request = dataclasses.replace(request, document=for_reader(document, plan.make_reader()))
        t0 = time.perf_counter()
        result = engine.run(plan, request, progress=progress)
        path = SubRead(plan.spec, result, time.perf_counter() - t0, declines(result.answer))
        paths.append(path)
        return path

    @staticmethod
    def _result(path: SubRead, paths: list[SubRead], decision: str, reason: str, counter: TokenCounter) -> ReadResult:
        r = path.result
        route = {"decision": decision, "method": path.spec, "reason": reason + ".",
                 "document_tokens": counter.n if counter.done else None,
                 "count_seconds": round(counter.seconds, 3), "paths": [p.row() for p in paths]}
        return ReadResult(
            answer=r.answer,
            output_ids=r.output_ids,
            input_tokens=sum(p.result.input_tokens for p in paths),
            prefill_seconds=math.fsum(p.result.prefill_seconds for p in paths),
            decode_seconds=math.fsum(p.result.decode_seconds for p in paths),
            kv_cache_bytes=max(p.result.kv_cache_bytes for p in paths),
            evidence=list(r.evidence),
            extra={**r.extra, "route": route},
        )
