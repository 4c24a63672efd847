"""The query-agnostic protocol: prefill (and compress) a context once without any question, then ask it
several questions, each from a copy of the compressed cache.

This is how NVIDIA kvpress evaluates KV-cache compression (``KVPressTextGenerationPipeline`` takes one
context and a list of questions; github.com/NVIDIA/kvpress) and what KVzip calls query-agnostic
compression (KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction, arXiv 2505.23416):
a compressor that keeps what the question needs only because it saw the question is flattered by the
usual one-question protocol; here the cache is compressed before any question exists, as a cache kept for
a document that users ask about later would be.

Sweep option ``query_agnostic: K`` (``longreach bench --query-agnostic K``, 1..64; 0 = off). For a task
with :meth:`~longreach.bench.task.Task.questions` (``kv-retrieval``, the RULER ``niah_*`` tasks,
``needlebench-mrt``), each sample's K questions (fewer when the context offers fewer) share its context:

1. every question's full prompt is built and tokenized as an independent request would; the shared part
   is their common token prefix, ending before the first token of any question (chat template, document,
   separator);
2. one :meth:`~longreach.engine.Engine.session` under the cell's plan: the cache method's cache is made
   *without* the question (``Session.make_cache()``: no prompt, ids or question) and the shared tokens are
   prefilled into it: compression happens there, seeing only the context;
3. for each question: a deep copy of the compressed cache (the last question takes the cache itself), its
   ``context_end`` set to the shared length (the question and the answer are appended uncompressed, as the
   question-agnostic mode of every compressing cache keeps them), the question's own tokens prefilled at
   positions L.., then greedy decoding as the chunked reader does.

One record per question (``id`` ``<sample>-q<i>``, ``meta``: ``query_index``, ``shared`` True,
``context_tokens``, ``shared_prefill_seconds``, ``kv_context_bytes``: what the compressed context cache
held before any question); ``seconds`` / ``prefill_seconds`` are the question's own. Records are written
one question at a time, so a killed run resumes with the questions still missing (the context is
prefilled again for them). With ``method none`` the answers are those of independent requests (same
token ids; only the prefill's chunk boundaries differ, as between chunk sizes).

Fallbacks, recorded as a one-line ``shared_note`` (never an error): a task without the hook runs its one
question per sample as usual; a plan with a reader-slot method (``rag``, ``infiniretri``, ``alr2``,
``route``: they read each prompt themselves) and backends other than ``local`` (``oracle``, ``openai``:
they answer whole prompts) ask each of the K questions as an independent request.

Cell metrics (:func:`shared_metrics`): ``by_query`` (score per query index), ``shared_prefill_seconds``
(mean per context: paid once), ``question_seconds_mean`` (per question), ``kv_context_bytes`` (mean
bytes of the compressed context cache), ``questions_per_context``, ``shared`` and ``shared_note``.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..engine import Engine
from ..kv.base import question_start
from ..memory import PeakMemory, cache_bytes
from ..prompt import build_prompt, encode
from ..readers import Request, decode_answer
from ..spec import Plan
from .cache import cached_sample
from .task import BenchError, Sample, SampleRefused, prompt_tokens

if TYPE_CHECKING:  # pragma: no cover
    from .backends import Backend
    from .runner import BenchConfig, Cell

#: most questions asked of one context (``query_agnostic`` is 0 = off, or 1..MAX_QUERIES)
MAX_QUERIES = 64


def fallback_reason(backend: Any, plan: Plan) -> str | None:
    """Why the K questions of a context cannot share one prefill under ``plan`` on ``backend`` (they are
    then asked as independent requests), or None when they can."""
    engine = getattr(backend, "engine", None)
    if not isinstance(engine, Engine):
        return f"the {getattr(backend, 'name', '?')} backend answers whole prompts: independent requests"
    reader = plan.get("reader")
    if reader is not None:
        return f"{reader.name} reads each prompt itself (a reader-slot method): independent requests"
    return None


@dataclasses.dataclass
class SharedPrompts:
    """The tokenized prompts of one context's questions and the token prefix they share."""

    ids: list[list[int]]  # one full prompt per question, exactly as an independent request encodes it
    shared: int  # tokens of the shared prefix (the context part, before any question token)


def split_prompts(tokenizer: Any, samples: list[Sample], fmt: str) -> SharedPrompts:
    """Each question's prompt ids and their shared prefix: the longest common token prefix of all the
    prompts, cut before the first token of any question and before each prompt's last token (a question
    always feeds at least one token of its own)."""
    texts = [build_prompt(tokenizer, s.context, s.question, s.answer_prefix, fmt) for s in samples]
    ids = [encode(tokenizer, t) for t in texts]
    shared = min(len(x) - 1 for x in ids)
    first = ids[0]
    for x in ids[1:]:
        same = next((i for i, (a, b) in enumerate(zip(first, x)) if a != b), min(len(first), len(x)))
        shared = min(shared, same)
    for text, x, s in zip(texts, ids, samples):
        start = question_start(tokenizer, text, x, s.question)
        if start is not None:
            shared = min(shared, start)
    return SharedPrompts(ids, max(0, shared))


def answer_shared(backend: Any, plan: Plan, samples: list[Sample], skip: set[int] | frozenset[int] = frozenset()
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Answer ``samples`` (questions about one context) from one prefill of their shared context on
    ``backend``'s engine (a :class:`~longreach.bench.backends.LocalBackend`); yields ``(index, result)`` per
    question as it is answered, the result shaped like ``LocalBackend.generate``'s plus ``shared`` numbers.
    ``skip``: indices already answered (not asked again). Checks (length, memory) come before any work."""
    engine: Engine = backend.engine
    tok = engine.tokenizer
    prompts = split_prompts(tok, samples, backend.prompt)
    todo = [i for i in range(len(samples)) if i not in skip]
    if not todo:
        return
    if prompts.shared < 1:
        raise BenchError("the questions' prompts share no context tokens to prefill once; run without "
                         "--query-agnostic")
    L = prompts.shared
    longest = max(len(prompts.ids[i]) for i in todo)
    budget = max(samples[i].max_new_tokens for i in todo)
    engine.check_request(plan, longest, budget, backend.chunk_size, backend.memory_limit)
    plan.check(engine.info)  # as Engine.run checks before its reader
    with PeakMemory(engine.device) as peak, engine.session(plan, longest + budget) as s:
        cache = s.make_cache()  # no prompt / question: the cache method compresses the context blind
        t0 = time.perf_counter()
        s.prefill(prompts.ids[todo[0]][:L], cache, backend.chunk_size)  # (1, V) logits unused: a question follows
        shared_seconds = time.perf_counter() - t0
        context_bytes = cache_bytes(cache)
        for n, i in enumerate(todo):
            sample, ids = samples[i], prompts.ids[i]
            c = cache if n == len(todo) - 1 else copy.deepcopy(cache)
            if hasattr(c, "set_context_end"):
                c.set_context_end(L)  # question and answer: kept after the compressed context, never evicted
            request = Request(sample.context, sample.question, sample.max_new_tokens, sample.answer_prefix,
                              backend.chunk_size, backend.memory_limit, prompt=backend.prompt,
                              ignore_eos=sample.ignore_eos)
            t1 = time.perf_counter()
            logits = s.prefill(ids[L:], c, backend.chunk_size, start=L)  # (1, V)
            t2 = time.perf_counter()
            out, answer_ids = decode_answer(engine, s, c, logits, len(ids), request)
            t3 = time.perf_counter()
            held = cache_bytes(c)
            del c
            yield i, {"prediction": tok.decode(answer_ids, skip_special_tokens=True).strip(),
                      "input_tokens": len(ids), "output_tokens": len(out), "prefill_seconds": round(t2 - t1, 3),
                      "decode_seconds": round(t3 - t2, 3), "peak_memory_bytes": _peak_now(peak),
                      "start_memory_bytes": peak.start, "kv_cache_bytes": held,
                      "shared": {"context_tokens": L, "shared_prefill_seconds": round(shared_seconds, 3),
                                 "kv_context_bytes": context_bytes}}


def _peak_now(peak: PeakMemory) -> int:
    """The high-water mark so far of a :class:`PeakMemory` block still open (its exit reads it)."""
    peak.__exit__(None, None, None)
    return int(peak.peak)


class _Answers:
    """``ask(sample, plan)`` for :func:`longreach.bench.runner.run_sample`: the next answer of an
    :func:`answer_shared` generator (an error it raised is raised again for every later question)."""

    def __init__(self, answers: Iterator[tuple[int, dict[str, Any]]], questions: list[Sample]):
        self.answers, self.questions, self.error = answers, questions, None

    def ask(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        try:
            i, result = next(self.answers)
        except StopIteration:
            self.error = BenchError("the shared context ran out of answers (a bug); re-run to redo the question")
            raise self.error from None
        except Exception as exc:
            self.error = exc
            raise
        if self.questions[i].meta["query_index"] != sample.meta["query_index"]:
            raise BenchError(f"shared answers out of order: got question {i} for {sample.meta['query_index']}")
        result = dict(result)
        result.update(result.pop("shared"))
        return result

    def close(self) -> None:
        close = getattr(self.answers, "close", None)
        if close is not None:
            close()  # ends the session (the plan is undone) when a run stops between questions


def run_questions(cell: Cell, backend: Backend, plan: Plan, sid: str, seed: int, depth: float | None,
                  cfg: BenchConfig, done: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records still missing from ``done`` for sample ``sid`` of ``cell`` under ``cfg.query_agnostic``:
    one per question (``<sid>-q<i>``), each yielded as soon as it is answered; a task without
    :meth:`~longreach.bench.task.Task.questions` (or a refused sample): the sample's one record ``sid``."""
    from .runner import run_sample  # the runner imports this module

    forced = cfg.decode_tokens if cfg.decode_tokens and cell.task.kind == "generate" else None
    budget = forced if forced and forced > cell.task.max_new_tokens else None
    try:
        sample = cached_sample(cell.task, backend.tokenizer, cell.length, seed, depth, answer_tokens=budget)
        questions = cell.task.questions(sample, cfg.query_agnostic) if cell.task.kind == "generate" else None
    except SampleRefused:  # run_sample records the refusal
        sample, questions = None, None
    if not questions:
        if sid not in done:
            record = run_sample(cell, backend, plan, sid, seed, depth, cfg.decode_tokens)
            if sample is not None:
                record["meta"].update(shared=False, shared_note=f"{cell.task.name} asks one question per context: "
                                                                f"independent requests")
            yield record
        return
    for q in questions:
        if forced:
            q.max_new_tokens, q.ignore_eos = forced, True
        q.meta["tokens"] = prompt_tokens(backend.tokenizer, q)
    ids = [f"{sid}-q{i}" for i in range(len(questions))]
    skip = {i for i, qid in enumerate(ids) if qid in done}
    if len(skip) == len(questions):
        return
    reason = fallback_reason(backend, plan)
    if reason is None and cell.task.baseline(sample) is not None:
        reason = f"{cell.task.name} asks a second prompt per question: independent requests"
    answers = None if reason else _Answers(answer_shared(backend, plan, questions, skip), questions)
    try:
        for i, q in enumerate(questions):
            if i in skip:
                continue
            q.meta.update(shared=reason is None, **({"shared_note": reason} if reason else {}))
            yield run_sample(cell, backend, plan, ids[i], seed, depth, cfg.decode_tokens, sample=q,
                             ask=answers.ask if answers is not None else None)
    finally:
        if answers is not None:
            answers.close()


def cell_records(plan_items: list[tuple[str, int, float | None]], done: dict[str, dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """A cell's records in sample-plan order: each sample's own record, or its questions' in query order."""
    by_sample: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for rid, rec in done.items():
        base, sep, q = rid.rpartition("-q")
        if sep and q.isdigit():
            by_sample.setdefault(base, []).append((int(q), rec))
    out = []
    for sid, _, _ in plan_items:
        if sid in done:
            out.append(done[sid])
        out.extend(rec for _, rec in sorted(by_sample.get(sid, []), key=lambda x: x[0]))
    return out


def shared_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A query-agnostic cell's numbers (see the module docstring); {} for a cell run without the option."""
    metas = [r["meta"] if isinstance(r.get("meta"), dict) else {} for r in records]
    if not any("shared" in m for m in metas):
        return {}
    by_query: dict[int, list[float]] = {}
    contexts: dict[str, dict[str, Any]] = {}  # sample id -> its first shared record (the prefill paid once)
    per_context: dict[str, int] = {}
    question_seconds = []
    for r, m in zip(records, metas):
        base, sep, _ = str(r["id"]).rpartition("-q")
        base = base if sep else str(r["id"])
        per_context[base] = per_context.get(base, 0) + 1
        if isinstance(m.get("query_index"), int):
            by_query.setdefault(m["query_index"], []).append(r["score"])
        if m.get("shared"):
            contexts.setdefault(base, r)
            question_seconds.append(float(r.get("seconds") or 0.0))
    notes = [m["shared_note"] for m in metas if m.get("shared_note")]

    def mean(key: str, digits: int) -> float | None:
        vals = [r[key] for r in contexts.values() if isinstance(r.get(key), (int, float))]
        return round(statistics.fmean(vals), digits) if vals else None

    return {"shared": bool(contexts),
            "by_query": {str(q): statistics.fmean(v) for q, v in sorted(by_query.items())},
            "shared_prefill_seconds": mean("shared_prefill_seconds", 3),
            "question_seconds_mean": round(statistics.fmean(question_seconds), 3) if question_seconds else None,
            "kv_context_bytes": mean("kv_context_bytes", 0),
            "questions_per_context": round(statistics.fmean(per_context.values()), 2),
            "shared_note": notes[0] if notes else None}


__all__ = ["MAX_QUERIES", "SharedPrompts", "answer_shared", "cell_records", "fallback_reason", "run_questions",
           "shared_metrics", "split_prompts"]
