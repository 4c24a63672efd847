"""``tool-conversation`` (DeepMiner, arXiv 2510.08276): a generated ~``turns``-turn agent tool conversation
sent through :class:`longreach.ContextWindow`, and one question about a recent or an old tool output.

The conversation (OpenAI-style messages): a system message naming three tools, the user's task, then
``turns`` assistant turns, each a short sentence of intent and one tool call, answered by one tool message:

- ``read_file(path)`` -> a small TOML-like file (a section, three numeric settings, an owner, a region);
- ``search(query)`` -> four ranked results ``[doc <id>] <title> - <snippet>``;
- ``calculator(expression)`` -> ``<expression> = <result>`` (results below 100000).

Every setting value and document id is a distinct 6-digit number that appears in its tool output only
(never in an assistant turn), so it can be answered only from that output. ``ask=recent``: the question is
about a file setting or a result's document id in one of the last ``keep_last`` tool outputs; ``ask=old``:
one in the first half of the conversation (older than the last ``keep_last`` outputs). The gold is the
generator's value.

The sample's context is the transcript as :class:`ContextWindow` returns it under ``policy`` with the budget
set to the requested length (the whole prompt, question included, is what is counted), rendered as plain
text (:func:`longreach.context.render_transcript`):

- ``dynamic`` (DeepMiner): the last ``keep_last`` tool outputs in full, older ones as placeholders, the oldest
  turns dropped if still too long;
- ``truncate``: every message verbatim, the newest turns that fit;
- ``full``: the whole conversation verbatim; a length it does not fit raises BenchError.

The conversation is the same for every policy and length (per seed, ``turns``, ``ask``, ``keep_last``), so
the policies are compared on the same items; the prompt's size is set by the policy (``truncate`` fills the
length to within one turn, ``dynamic`` and ``full`` take what the conversation needs), not padded.

Scorer: 1 if the gold number appears in the answer as a whole number (not inside a longer one), else 0.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from ...context import ContextBudgetError, ContextWindow, render_transcript
from ..task import BenchError, Sample, Task, prompt_tokens, register_task
from ..words import ADJECTIVES, NAMES, NOUNS, PLACES

SYSTEM = ("You are a research agent working on a software project. Tools: read_file(path) returns a file's "
          "text; search(query) returns ranked knowledge-base results with document ids; calculator(expression) "
          "evaluates arithmetic. Call one tool per turn and keep notes short.")
TASK = ("Audit the {project} project: read its configuration files, search the knowledge base for anything "
        "related to its services, and check the cost figures. Report what you find at the end.")
SETTINGS = ["retry_limit", "timeout_ms", "max_connections", "cache_size", "batch_size", "port_offset", "quota_bytes",
            "shard_count", "buffer_kb", "heartbeat_ms", "queue_depth", "pool_size", "flush_interval", "max_payload"]
FOLDERS = ["config", "deploy", "settings", "etc", "ops", "infra"]
TITLE_KINDS = ["notes on", "a guide to", "incident report:", "design memo:", "FAQ:", "postmortem:", "overview of"]
READ_INTENT = ["Next I will read {path} to check its settings.", "Reading {path}.", "Let me look at {path}.",
               "I should check the configuration in {path}."]
SEARCH_INTENT = ["Searching the knowledge base for {q}.", "Let me search for {q}.", "I will look up {q}."]
CALC_INTENT = ["Computing the {w} cost.", "Let me check the {w} figure.", "Working out the {w} total."]
KINDS = ("read_file", "search", "calculator")
WEIGHTS = (0.4, 0.35, 0.25)
ANSWER_PREFIX = "Answer:"


class _Values:
    """Distinct 6-digit numbers for one conversation."""

    def __init__(self, r: random.Random):
        self.r, self.used = r, set()

    def __call__(self) -> int:
        while True:
            v = self.r.randint(100000, 999999)
            if v not in self.used:
                self.used.add(v)
                return v


def _unique(r: random.Random, used: set[str], make: Any) -> str:
    while True:
        s = make(r)
        if s not in used:
            used.add(s)
            return s


def conversation(seed: int, turns: int, target: int, target_kind: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """The messages and, per assistant turn, what its tool output holds (``facts``): for ``read_file``
    ``{"kind", "path", "values": {setting: value}}``, for ``search`` ``{"kind", "query", "results":
    [(doc id, title)]}``, for ``calculator`` ``{"kind", "expression", "result"}``. Turn ``target`` is of
    ``target_kind``."""
    r = random.Random(f"tool-conversation-{seed}-{turns}")
    value = _Values(r)
    paths: set[str] = set()
    queries: set[str] = set()
    titles: set[str] = set()
    project = f"{r.choice(ADJECTIVES)}-{r.choice(NOUNS)}"
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": TASK.format(project=project)}]
    facts: list[dict] = []
    for t in range(turns):
        kind = r.choices(KINDS, WEIGHTS)[0]
        if t == target:
            kind = target_kind
        call_id = f"call_{t + 1}"
        if kind == "read_file":
            path = _unique(r, paths, lambda r: f"{r.choice(NOUNS)}/{r.choice(FOLDERS)}/{r.choice(NOUNS)}.toml")
            keys = r.sample(SETTINGS, 3)
            values = {k: value() for k in keys}
            body = [f"# {path}", f"[{path.split('/')[0]}]", f'name = "{path.split("/")[-1][:-5]}"']
            body += [f"{k} = {v}" for k, v in values.items()]
            body += [f'owner = "{r.choice(NAMES)}"', f'region = "{r.choice(PLACES)}"']
            intent, args, output = r.choice(READ_INTENT).format(path=path), {"path": path}, "\n".join(body)
            facts.append({"kind": kind, "path": path, "values": values})
        elif kind == "search":
            query = _unique(r, queries, lambda r: f"{r.choice(ADJECTIVES)} {r.choice(NOUNS)} {r.choice(NOUNS)}")
            results = []
            for _ in range(4):
                title = _unique(r, titles, lambda r: f"{r.choice(TITLE_KINDS)} the {r.choice(ADJECTIVES)} "
                                                     f"{r.choice(NOUNS)}")
                results.append((value(), title))
            lines = [f'Results for "{query}":']
            lines += [f"{k}. [doc {d}] {title} - mentions the {r.choice(ADJECTIVES)} {r.choice(NOUNS)} in "
                      f"{r.choice(PLACES)}" for k, (d, title) in enumerate(results, start=1)]
            intent, args, output = r.choice(SEARCH_INTENT).format(q=f'"{query}"'), {"query": query}, "\n".join(lines)
            facts.append({"kind": kind, "query": query, "results": results})
        else:
            a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(1, 999)
            expression = f"{a} * {b} + {c}"
            intent = r.choice(CALC_INTENT).format(w=f"{r.choice(ADJECTIVES)} {r.choice(NOUNS)}")
            args, output = {"expression": expression}, f"{expression} = {a * b + c}"
            facts.append({"kind": kind, "expression": expression, "result": a * b + c})
        messages.append({"role": "assistant", "content": intent,
                         "tool_calls": [{"id": call_id, "type": "function",
                                         "function": {"name": kind, "arguments": json.dumps(args)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": kind, "content": output})
    return messages, facts


def question_for(fact: dict, r: random.Random) -> tuple[str, str]:
    """A question about one tool output and its gold value."""
    if fact["kind"] == "read_file":
        key = r.choice(sorted(fact["values"]))
        return (f"Earlier in this conversation the agent read the file {fact['path']}. What value did that file "
                f"set for {key}? Reply with the number only.", str(fact["values"][key]))
    doc, title = r.choice(fact["results"])
    return (f'Earlier in this conversation the agent searched for "{fact["query"]}". What was the document id '
            f'of the result titled "{title}"? Reply with the number only.', str(doc))


def score_value(prediction: str, gold: str) -> float:
    """1 if ``gold`` appears in ``prediction`` as a whole number (no digit right before or after it)."""
    return float(re.search(rf"(?<!\d){re.escape(gold)}(?!\d)", prediction) is not None)


@register_task
class ToolConversation(Task):
    """DeepMiner (arXiv 2510.08276): a long agent tool conversation under a context policy; a question about a
    recent or an old tool output."""

    name = "tool-conversation"
    family = "DeepMiner"
    paper = "Beyond Turn Limits: Training Deep Search Agents with Dynamic Context Window (DeepMiner, arXiv 2510.08276)"
    summary = "a ~N-turn agent tool conversation (file reads, searches, calculator) kept by a context policy"
    scorer = "1 if the gold setting value / document id appears in the answer as a whole number"

    turns: int = 100
    policy: str = "dynamic"
    keep_last: int = 3
    ask: str = "recent"

    def __post_init__(self) -> None:
        if self.policy not in ("dynamic", "truncate", "full"):
            raise ValueError(f"policy must be dynamic, truncate or full, got {self.policy!r}")
        if self.ask not in ("recent", "old"):
            raise ValueError(f"ask must be recent or old, got {self.ask!r}")
        if not 1 <= self.keep_last <= 50:
            raise ValueError(f"keep_last must be within 1..50, got {self.keep_last}")
        if not 2 * self.keep_last + 2 <= self.turns <= 1000:
            raise ValueError(f"turns must be within {2 * self.keep_last + 2}..1000 (at least 2 x keep_last + 2, so "
                             f"old turns exist), got {self.turns}")

    def _target(self, seed: int) -> tuple[int, str, random.Random]:
        r = random.Random(f"tool-conversation-target-{seed}-{self.turns}-{self.ask}-{self.keep_last}")
        if self.ask == "recent":
            at = self.turns - 1 - r.randrange(self.keep_last)
        else:
            at = r.randrange(self.turns // 2)
        return at, r.choice(["read_file", "search"]), r

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        at, kind, r = self._target(seed)
        messages, facts = conversation(seed, self.turns, at, kind)
        question, gold = question_for(facts[at], r)

        def build(msgs: list[dict[str, Any]]) -> Sample:
            return Sample(render_transcript(msgs), question, ANSWER_PREFIX, [gold], {})

        window = ContextWindow(tokenizer, budget, keep_last=self.keep_last, policy=self.policy,
                               counter=lambda msgs: prompt_tokens(tokenizer, build(msgs)))
        window.extend(messages)
        try:
            sent = window.messages()
        except ContextBudgetError as exc:
            what = (f"the full {self.turns}-turn conversation takes" if self.policy == "full"
                    else "the system and task messages alone take")
            hint = ", fewer turns or policy=dynamic" if self.policy == "full" else ""
            raise BenchError(f"{what} {exc.needed} prompt tokens, more than the {budget} available; "
                             f"use a longer length{hint}") from None
        sample = build(sent)
        call_ids = {c["id"] for m in sent for c in m.get("tool_calls") or []}
        kept = [t for t in range(self.turns) if f"call_{t + 1}" in call_ids]
        outputs = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
        omitted = sum(m["role"] == "tool" and m["content"] != outputs[m["tool_call_id"]] for m in sent)
        sample.meta.update(
            tokens=prompt_tokens(tokenizer, sample), turns=self.turns, policy=self.policy, ask=self.ask,
            keep_last=self.keep_last, target_turn=at + 1, turns_from_end=self.turns - at, tool=kind,
            kept_turns=len(kept), omitted_outputs=omitted, gold_in_context=score_value(sample.context, gold) == 1.0)
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return score_value(prediction, sample.references[0])

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``gold_in_context``: share of samples whose answer survived the policy; ``kept_turns``: mean
        assistant turns sent."""
        if not records:
            return {}
        n = len(records)
        return {"gold_in_context": sum(bool(r["meta"].get("gold_in_context")) for r in records) / n,
                "kept_turns": sum(r["meta"].get("kept_turns", 0) for r in records) / n}

