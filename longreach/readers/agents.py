"""Agents reader (ExtAgents): chunk agents note what bears on the question, share their best notes, and a
coordinator answers from the notes.

Paper: "Scaling External Knowledge Input Beyond Context Windows of LLMs via Multi-Agent Collaboration"
(Liu et al. 2025, arXiv 2505.21471). Every agent is the same model reading its own window-sized chunk;
no agent ever reads more than one window, so the document's length is unbounded.

1. **Split** (:func:`split_sentences`): the document (a str, a file path or pieces: it is streamed into
   sentences, :mod:`longreach.readers.sentences`) is cut at sentence boundaries into N contiguous chunks
   whose token counts are as even as possible (the smallest largest chunk for that N). Every character
   goes to exactly one agent: ``"".join(chunks) == document``. ``agents=0``: N = the fewest chunks that
   fit the chunk budget; ``agents=N``: exactly N (one-line error if a chunk would not fit).
   Chunk budget = the pass span - the longest agent prompt without its chunk - the finding budget
   (round 0's output) - the notes budget (the other agents' notes, when ``rounds >= 1``) - a small margin;
   ``chunk=T`` caps it lower. The finding budget is ``min(finding_tokens, span // 8)``; so is the notes
   budget.
2. **Round 0** (knowledge seeking): each agent reads its chunk and the question followed by
   :data:`AGENT_INSTRUCTION` and writes at most the finding budget (greedy);
   :func:`parse_findings` keeps at most ``findings`` lines, dropping list markers, preambles, repeats and
   lines that say nothing was found (:func:`~longreach.answers.declines` or "nothing relevant").
3. **Synchronisation rounds** (``rounds`` of them): all findings are ranked by :func:`rank_findings`
   (Okapi BM25, Lucene variant, over the findings themselves as the corpus with the question as the
   query; ties in document order: agent, then line). Each agent then reads its own chunk again with the
   best-ranked findings of the OTHER agents that fit the notes budget (best first), appended to the chunk
   under :data:`NOTES_HEADER`, with round 0's question and instruction unchanged (so the prompt starts as
   round 0's did, whatever the prompt format puts before the text: the chunk caches below), and its new
   findings replace its old ones. Greedy decoding and a stable ranking: the same input gives the same
   findings. (Before 2026-12-03 the synchronisation question carried its own instruction, "With the
   notes, list the facts ...", which a question-first format such as ``chat+both`` places before the
   chunk, so no prefix could be shared.)
4. **Coordinator** (knowledge-integrated reasoning): the request's own question, answer prefix and
   ``max_new_tokens`` over the final findings in document order, each tagged ``[part i]``; the
   lowest-ranked findings are dropped until the prompt fits one pass. No finding at all: the answer is
   :data:`DECLINE` without a model call and ``extra["reason"]`` says so.

Every model call is ``engine.run`` under the outer plan's other methods (rope, cache) with no reader:
the reader installs nothing itself. **Chunk caches** (rounds >= 1): a synchronisation prompt starts with
the agent's chunk, as its round-0 prompt did, so when the plan allows prefix reuse
(:meth:`longreach.spec.Plan.reuses_prefix`: full-attention layers, no cache method, static rope) round 0
keeps each agent's prompt cache (:class:`longreach.prefix_cache.PrefixCache`) and the later rounds prefill
only the notes and the question after the chunk: about half the tokens with one round. The caches take
at most half of the memory left beside one pass (``Request.memory_limit``, else what the device has
free; least recently stored dropped first, their agents read the chunk again) and are freed before the
coordinator; the answers are those of reading every chunk again, up to float rounding.
``workers > 1`` runs the agents of one round in a thread pool. A plan that changes the model (a rope or
attention method, a cache method with hooks) holds the model's lock exclusively
(:class:`longreach.engine.ModelLock`), so its agents run one at a time whatever ``workers`` says; plain plans
share the lock and overlap, which pays off on a GPU (on a CPU the cores are already busy with one agent, so
``workers=1`` is as fast).

``evidence``: the final findings, ``[part i] text`` (i = the agent and its chunk, 1-based, document
order). ``extra["agents"]``: agents, rounds, findings per round, findings_total, dropped (findings left
out of the coordinator prompt), declined (lines dropped as "nothing found"), chunk_tokens, seconds per
stage (split, read, sync, coordinate: wall time), tokens_read, tokens_reused (prompt tokens taken from
the chunk caches instead of prefilled), reuse_bytes (the chunk caches' memory budget; 0 = none kept).
``output_ids`` = every token decoded (every agent's notes, then the answer); ``input_tokens`` = every token
read (every agent prompt of every round, the coordinator prompt).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..answers import declines, strip_instruction
from ..errors import SpecError
from ..memory import available_bytes, estimate_request
from ..prefix_cache import PrefixCache
from ..prompt import build_prompt, encode
from ..retrieval.bm25 import K1, B, lucene_idf, stopwords, terms
from ..spec import Plan
from . import EngineLike, ReadResult, Request
from .quotes import parse_quotes
from .sentences import document_tail, iter_chunks, iter_sentences, iter_text

AGENT_INSTRUCTION = "List the facts in the text that help answer the question, one per line, or write: nothing relevant."
NOTES_HEADER = "Notes from the other parts of the text:"
DECLINE = "unanswerable"  # longreach.answers.declines(DECLINE); the answer when no agent found anything
MARGIN = 8  # tokens kept free in every agent prompt: sentences tokenized alone vs. joined may differ a little
MIN_CHUNK = 16  # a chunk budget below this is refused (the prompts leave no room for the text)
_NOTHING = re.compile(r"^\W*(?:nothing|none|n/?a)\b|\bnothing\s+(?:relevant|useful|found)\b|"
                      r"\b(?:not|no(?:thing)?)\s+relevant\b|\birrelevant\b", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------ split
def greedy_parts(sizes: Sequence[int], cap: int) -> list[int]:
    """Start indices of the parts that greedy packing of ``sizes`` under ``cap`` gives (fewest parts)."""
    starts, used = [0], 0
    for i, s in enumerate(sizes):
        if used and used + s > cap:
            starts.append(i)
            used = 0
        used += s
    return starts


def partition(sizes: Sequence[int], n: int) -> list[int]:
    """Start indices of ``n`` contiguous non-empty parts of ``sizes`` with the smallest largest part (binary
    search on the cap; parts split further at their middle until there are ``n``). ``1 <= n <= len(sizes)``."""
    lo, hi = max(sizes), sum(sizes)
    while lo < hi:  # the smallest cap greedy packs into at most n parts
        mid = (lo + hi) // 2
        if len(greedy_parts(sizes, mid)) <= n:
            hi = mid
        else:
            lo = mid + 1
    starts = greedy_parts(sizes, lo)
    while len(starts) < n:  # split the largest part of several items in two (each half stays <= the cap)
        ends = [*starts[1:], len(sizes)]
        k = max((k for k in range(len(starts)) if ends[k] - starts[k] > 1),
                key=lambda k: (sum(sizes[starts[k]:ends[k]]), -k))
        a, b = starts[k], ends[k]
        half, run, cut = sum(sizes[a:b]) / 2, 0, a + 1
        for i in range(a, b - 1):
            run += sizes[i]
            cut = i + 1
            if run >= half:
                break
        starts.insert(k + 1, cut)
    return starts


def split_sentences(sizes: Sequence[int], budget: int, agents: int = 0) -> list[int]:
    """Start indices of the agents' chunks over sentences of ``sizes`` tokens (each <= ``budget``).

    ``agents=0``: the fewest chunks of at most ``budget`` tokens, as even as possible; ``agents=N``: N chunks
    (SpecError when one would exceed ``budget`` or there are fewer than N sentences)."""
    if not sizes:
        return []
    fewest = len(greedy_parts(sizes, budget))  # greedy packing needs the fewest parts
    n = agents or fewest
    if n > len(sizes):
        raise SpecError(f"agents={agents} is more than the document's {len(sizes)} sentences; use agents<="
                        f"{len(sizes)} or agents=0 (as many as needed)")
    if n < fewest:
        raise SpecError(f"agents={agents} would give a chunk more than the {budget:,} tokens an agent reads; use "
                        f"agents>={fewest} or agents=0 (as many as needed)")
    return partition(sizes, n)


# ------------------------------------------------------------------------------------------------ notes
@dataclasses.dataclass(frozen=True)
class Finding:
    """One line an agent wrote: ``agent`` (0-based, its chunk), ``line`` (its order in the agent's list)."""

    agent: int
    line: int
    text: str


def parse_findings(text: str, limit: int) -> tuple[list[str], int]:
    """An agent's output -> (at most ``limit`` finding lines, lines dropped as "nothing found"). Lines are
    parsed like quotes (:func:`~longreach.readers.quotes.parse_quotes`: markers, quotation marks, preambles,
    short lines and repeats removed)."""
    kept, declined = [], 0
    for line in parse_quotes(text):
        if declines(line) or _NOTHING.search(line):
            declined += 1
            continue
        kept.append(line)
        if len(kept) == limit:
            break
    return kept, declined


def bm25_scores(texts: Sequence[str], query: str) -> list[float]:
    """Okapi BM25 (Lucene idf, k1 = 1.5, b = 0.75, English stop words removed; the terms and constants of
    :mod:`longreach.retrieval.bm25`) of ``query`` against each of ``texts``, the texts being the corpus."""
    stop = stopwords()
    docs = [Counter(terms(t, stop)) for t in texts]
    lengths = [sum(d.values()) for d in docs]
    avg = (sum(lengths) / len(lengths) if lengths else 0.0) or 1.0
    words = sorted(set(terms(query, stop)))
    idf = lucene_idf([sum(1 for d in docs if w in d) for w in words], len(docs)).tolist() if words else []

    def score(d: Counter, length: int) -> float:
        norm = K1 * (1 - B + B * length / avg)
        return math.fsum(idf[j] * d[w] / (d[w] + norm) for j, w in enumerate(words) if d[w])

    return [score(d, n) for d, n in zip(docs, lengths)]


def rank_findings(findings: Sequence[Finding], query: str) -> list[int]:
    """Indices of ``findings``, best first: :func:`bm25_scores` of ``query`` against the findings; equal
    scores keep document order (agent, then line). Deterministic: no randomness, no model."""
    scores = bm25_scores([f.text for f in findings], query)
    return sorted(range(len(findings)), key=lambda i: (-scores[i], findings[i].agent, findings[i].line))


# ----------------------------------------------------------------------------------------------- reader
class _LookupOnly:
    """A :class:`~longreach.prefix_cache.PrefixCache`'s lookups without its stores: the synchronisation
    rounds start from round 0's chunk caches and keep nothing of their own (their prompts would only evict
    chunks that later agents still need)."""

    def __init__(self, caches: PrefixCache):
        self.caches = caches

    def lookup(self, key: Any, ids: list[int]) -> tuple[Any, int]:
        return self.caches.lookup(key, ids)

    def store(self, key: Any, ids: list[int], cache: Any, nbytes: int) -> None:
        return None


@dataclasses.dataclass
class Stage:
    """What the sub-reads of one stage cost (summed over agents) and its wall time."""

    results: list[ReadResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


@dataclasses.dataclass
class AgentsReader:
    """Split, read, synchronise, coordinate (see the module docstring)."""

    agents: int = 0
    rounds: int = 1
    findings: int = 3
    chunk: int = 0
    finding_tokens: int = 96
    workers: int = 1
    name = "agents"
    streams = True  # reads Request.document given as a str, a file path or an iterable of str pieces

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        tok = engine.tokenizer
        carried = Plan.from_spec([m for m in getattr(plan, "methods", []) if m.slot != "reader"])
        t0 = time.perf_counter()
        document = request.document
        query = strip_instruction(request.question)
        if not query.strip():  # no question: the end of the document is what the agents look for (as rag)
            if not isinstance(document, (str, os.PathLike)):
                document = "".join(iter_text(document))  # a one-shot iterable: read once, kept for the split
            query = document_tail(document)
        budget, out_tokens = self.budgets(engine, carried, request, query)
        chunks = self.split(tok, document, budget)
        split_seconds = time.perf_counter() - t0
        n = len(chunks)
        stages: list[Stage] = []
        declined = 0
        # round 0: every agent reads its chunk (its prompt's cache kept for the synchronisation rounds)
        reuse_bytes = self.reuse_budget(engine, carried, request)
        kept_caches = PrefixCache(reuse_bytes, min_tokens=MIN_CHUNK, merge=False) if reuse_bytes else None
        ask = dataclasses.replace(request, question=f"{query}\n{AGENT_INSTRUCTION}", answer_prefix="",
                                  max_new_tokens=out_tokens, ignore_eos=False)
        stage = self._round(engine, carried, [dataclasses.replace(ask, document=c) for c in chunks], progress,
                            kept_caches)
        stages.append(stage)
        notes, d = self._notes(tok, stage.results)
        declined += d
        per_round = [len(notes)]
        # synchronisation rounds: every agent reads its chunk again with the others' best notes
        for _ in range(self.rounds):
            ranked = [notes[i] for i in rank_findings(notes, query)]
            # round 0's question: only the document grows (chunk + notes), so round 0's cache fits its start
            requests = [dataclasses.replace(ask, document=self._with_notes(tok, chunk, ranked, a, out_tokens))
                        for a, chunk in enumerate(chunks)]
            stage = self._round(engine, carried, requests, progress,
                                _LookupOnly(kept_caches) if kept_caches is not None else None)
            stages.append(stage)
            notes, d = self._notes(tok, stage.results)
            declined += d
            per_round.append(len(notes))
        if kept_caches is not None:
            kept_caches.clear()  # the coordinator reads the notes, not the chunks
        # coordinator: the question over the notes in document order
        t1 = time.perf_counter()
        kept = self._fit_notes(engine, carried, request, notes, query)
        evidence = [f"[part {f.agent + 1}] {f.text}" for f in kept]
        extra: dict[str, Any] = {}
        results = [r for s in stages for r in s.results]
        if kept:
            answered = engine.run(carried, dataclasses.replace(request, document="\n".join(evidence)),
                                  progress=progress)
            results.append(answered)
            answer = answered.answer
        else:
            answered, answer = None, DECLINE
            why = (f"none of the {n} agents found anything that bears on the question" if not notes else
                   "the question and the answer tokens leave no room for any finding in the coordinator prompt")
            extra["reason"] = f"{why}, so the answer is '{DECLINE}' (no coordinator step)"
        coordinate_seconds = time.perf_counter() - t1
        tokens_read = sum(r.input_tokens for r in results)
        extra["agents"] = {
            "agents": n, "rounds": self.rounds, "findings": per_round, "findings_total": len(notes),
            "dropped": len(notes) - len(kept), "declined": declined, "finding_tokens": out_tokens,
            "chunk_budget": budget, "chunk_tokens": [len(encode(tok, c)) for c in chunks],
            "workers": self.workers, "tokens_read": tokens_read,
            "tokens_reused": sum(int(r.extra.get("cached_tokens", 0)) for r in results), "reuse_bytes": reuse_bytes,
            "seconds": {"split": round(split_seconds, 4), "read": round(stages[0].seconds, 4),
                        "sync": round(math.fsum(s.seconds for s in stages[1:]), 4),
                        "coordinate": round(coordinate_seconds, 4)},
        }
        if answered is not None:
            extra["agents"]["answer_prompt_tokens"] = answered.input_tokens
        return ReadResult(
            answer=answer,
            output_ids=[t for r in results for t in r.output_ids],
            input_tokens=tokens_read,
            prefill_seconds=math.fsum(r.prefill_seconds for r in results) + split_seconds,
            decode_seconds=math.fsum(r.decode_seconds for r in results),
            kv_cache_bytes=max((r.kv_cache_bytes for r in results), default=0),
            evidence=evidence,
            extra=extra,
        )

    # -- sizes
    def budgets(self, engine: EngineLike, carried: Plan, request: Request, query: str) -> tuple[int, int]:
        """(tokens of document per agent, tokens each agent may write); one-line SpecError if none fit."""
        tok, info = engine.tokenizer, engine.info
        span = carried.pass_span(info)
        out = min(self.finding_tokens, span // 8)
        notes = out if self.rounds else 0

        def overhead(document: str, instruction: str) -> int:
            return len(encode(tok, build_prompt(tok, document, f"{query}\n{instruction}", "", request.prompt)))

        around = max(overhead("", AGENT_INSTRUCTION),
                     overhead(f"\n\n{NOTES_HEADER}\n", AGENT_INSTRUCTION) if self.rounds else 0)
        room = span - around - out - notes - MARGIN
        if room < MIN_CHUNK:
            raise SpecError(f"agents: the agent prompt ({around:,} tokens with the question), {out} finding tokens "
                            f"and {notes} note tokens leave {room} of {info.name}'s {span:,}-token window for the "
                            f"text; shorten the question, lower finding_tokens or use rounds=0")
        if self.chunk > room:
            raise SpecError(f"agents:chunk={self.chunk} does not fit {info.name}'s {span:,}-token window with the "
                            f"agent prompt and {out + notes} finding and note tokens; use chunk<={room} or chunk=0")
        return (self.chunk or room), out

    def reuse_budget(self, engine: EngineLike, carried: Plan, request: Request) -> int:
        """Bytes the agents' chunk caches may hold between rounds: half of what is left beside one pass
        (``request.memory_limit``, else the device's free memory); 0 when there is no synchronisation round
        or the plan cannot reuse a prefix (every round then reads its chunks again)."""
        info = engine.info
        if not self.rounds or not carried.reuses_prefix(info):
            return 0
        span = carried.pass_span(info)
        one_pass = estimate_request(info, span, request.chunk_size, carried.kv_cache_bytes(info, span)).total
        free = request.memory_limit if request.memory_limit is not None else available_bytes(engine.device)
        return max(0, (int(free) - one_pass) // 2)

    def split(self, tokenizer: Any, document: Any, budget: int) -> list[str]:
        """The agents' chunks (sentence-aligned, covering ``document`` exactly once; see :func:`split_sentences`)."""
        sentences = [s for c in iter_chunks(iter_sentences(iter_text(document)), tokenizer, budget) for s in c]
        if not sentences:
            return [""]  # an empty document: one agent with nothing to read
        starts = split_sentences([len(s.ids) for s in sentences], budget, self.agents)
        ends = [*starts[1:], len(sentences)]
        return ["".join(s.text for s in sentences[a:b]) for a, b in zip(starts, ends)]

    # -- one round
    def _round(self, engine: EngineLike, carried: Plan, requests: list[Request], progress: bool,
               caches: Any = None) -> Stage:
        t0 = time.perf_counter()

        def run(r: Request) -> ReadResult:
            if caches is None:
                return engine.run(carried, r, progress=progress)
            return engine.run(carried, r, progress=progress, prefix_cache=caches)

        if self.workers > 1 and len(requests) > 1:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(requests))) as pool:
                results = list(pool.map(run, requests))  # in agent order, whatever finishes first
        else:
            results = [run(r) for r in requests]
        return Stage(results, time.perf_counter() - t0)

    def _notes(self, tokenizer: Any, results: list[ReadResult]) -> tuple[list[Finding], int]:
        notes, declined = [], 0
        for a, r in enumerate(results):
            lines, d = parse_findings(tokenizer.decode(r.output_ids, skip_special_tokens=True), self.findings)
            notes += [Finding(a, i, line) for i, line in enumerate(lines)]
            declined += d
        return notes, declined

    def _with_notes(self, tokenizer: Any, chunk: str, ranked: list[Finding], agent: int, budget: int) -> str:
        """``chunk`` followed by the best-ranked notes of the other agents that fit ``budget`` tokens."""
        shown, used = [], 0
        for f in ranked:
            if f.agent == agent:
                continue
            cost = len(encode(tokenizer, f"- {f.text}\n"))
            if used + cost <= budget:
                shown.append(f"- {f.text}")
                used += cost
        return f"{chunk}\n\n{NOTES_HEADER}\n" + "\n".join(shown) if shown else chunk

    def _fit_notes(self, engine: EngineLike, carried: Plan, request: Request, notes: list[Finding],
                   query: str) -> list[Finding]:
        """The notes in document order, the lowest-ranked dropped until the coordinator prompt fits one pass."""
        tok = engine.tokenizer
        span = carried.pass_span(engine.info)
        order = rank_findings(notes, query)
        keep = len(order)

        def size(k: int) -> int:
            chosen = sorted(order[:k])  # document order
            text = "\n".join(f"[part {notes[i].agent + 1}] {notes[i].text}" for i in chosen)
            prompt = build_prompt(tok, text, request.question, request.answer_prefix, request.prompt)
            return len(encode(tok, prompt)) + request.max_new_tokens

        lo, hi = 0, keep  # the most best-ranked notes that fit (size grows with k)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size(mid) <= span:
                lo = mid
            else:
                hi = mid - 1
        return [notes[i] for i in sorted(order[:lo])]
