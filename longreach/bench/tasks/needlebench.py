"""NeedleBench (OpenCompass, arXiv 2407.11963): ``needlebench-srt``, ``needlebench-mrt``,
``needlebench-mrs`` and the Ancestral Trace Challenge ``atc``, with our own fictional needles.

- S-RT: one fact "Hidden in {place} is the legendary {color} {object}." at the sample's depth; scorer:
  fraction of the answer keywords (colour, object) in the answer.
- M-RT: ``needles`` such facts at depths spread over 5%..95%, all asked in one prompt; scorer: fraction
  of facts whose keywords are all present. ``--query-agnostic K``: one question per fact instead.
- M-RS: a kinship chain of ``needles`` statements spread through the essays; "who is the eldest relative
  that X can trace back to?"; scorer: the eldest name in the answer (in ``\\boxed{}`` when given).
- ATC: no haystack, only the shuffled chain of ``needles`` statements (0 = as many as fit the length,
  up to 512); question types ``eldest`` | ``nth-ancestor`` | ``nth-descendant`` | ``distance``; answer in
  ``\\boxed{}``, exact match after cleaning. Summary (report): the largest needle count before the first
  score below 60%.
"""

from __future__ import annotations

import random
import re
import statistics
from typing import Any

from ..haystack import Haystack
from ..task import Sample, Task, ask_also, fit_units, register_task, spread, string_match_all
from ..words import COLORS, NAMES, OBJECTS, PLACES
from ._haystack_doc import needle_sample

FACT = "Hidden in {place} is the legendary {color} {object}."
FACT_Q = "What legendary item is hidden in {place}?"

ONE_GEN = ["father", "mother", "dad", "mom"]
TWO_GEN = ["grandfather", "grandmother", "maternal grandmother", "maternal grandfather",
           "paternal grandfather", "paternal grandmother"]
TEMPLATES = [
    "{A} is {B}'s {rel}.",
    "{B}'s {rel} is {A}.",
    "{A}, as {B}'s {rel}, has a great influence on {B}'s upbringing.",
    "In {B}'s life, {A} plays the role of {B}'s {rel}.",
]
ATC_INSTRUCTION = ("Here is a test of long-text reasoning about family relationships. Read the statements "
                   "below and work out the answer. Give your final answer in the form \\boxed{answer}.")
QUESTIONS = {
    "eldest": "Given the context above, who is the eldest relative that {last} can trace back to?",
    "nth-ancestor": "Given the context above, who is {last}'s {gens}-generation ancestor "
                    "(counting parents as 1 generation)?",
    "nth-descendant": "Given the context above, who is {first}'s {gens}-generation descendant "
                      "(counting children as 1 generation)?",
    "distance": "Given the context above, how many generations separate {first} and {last}? "
                "Answer with a number.",
}


def facts(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """``n`` (place, colour, object) facts with distinct places."""
    places = rng.sample(PLACES, min(n, len(PLACES)))
    while len(places) < n:
        p = f"{rng.choice(PLACES)} {rng.choice(['North', 'South', 'East', 'West', 'Upper', 'Lower'])}"
        if p not in places:
            places.append(p)
    return [(p, rng.choice(COLORS), rng.choice(OBJECTS)) for p in places]


def people(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct invented names (given names, then given + family names)."""
    if n <= len(NAMES):
        return rng.sample(NAMES, n)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        name = f"{rng.choice(NAMES)} {rng.choice(PLACES)}"
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def kinship(rng: random.Random, names: list[str]) -> tuple[list[str], int]:
    """Statements linking names[i] (elder) to names[i+1]; returns (statements, total generations)."""
    statements, gens = [], 0
    for elder, younger in zip(names, names[1:]):
        two = rng.random() < 0.3
        gens += 2 if two else 1
        rel = rng.choice(TWO_GEN if two else ONE_GEN)
        statements.append(rng.choice(TEMPLATES).format(A=elder, B=younger, rel=rel))
    return statements, gens


def boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces kept; an unclosed one runs to the line end)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, out = 1, []
    for ch in text[start + len("\\boxed{"):]:
        if ch == "\n":
            break
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            break
        out.append(ch)
    return "".join(out)


def clean(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    return re.sub(r"[\s.,;:!?'\"*]+$", "", re.sub(r"^[\s'\"*]+", "", text)).strip().lower()


def atc_match(prediction: str, answer_prefix: str, reference: str) -> float:
    """Exact match of the boxed answer (prefix + prediction); without a box, of the first line."""
    full = answer_prefix + prediction
    got = boxed(full)
    if got is None:
        got = prediction.strip().splitlines()[0] if prediction.strip() else ""
    return float(clean(got) == clean(reference))


@register_task
class NeedleBenchSRT(Task):
    name = "needlebench-srt"
    family = "NeedleBench"
    paper = "NeedleBench: Can LLMs Do Retrieval and Reasoning in 1 Million Context Window? (arXiv 2407.11963)"
    summary = "single-needle retrieval: one fictional fact in the essays at a depth"
    scorer = "fraction of answer keywords (colour, object) in the answer"
    uses_depth = True
    max_new_tokens = 24

    haystack: str = "essays"

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        place, color, obj = facts(random.Random(f"srt-{seed}"), 1)[0]
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed),
                             [FACT.format(place=place, color=color, object=obj)], [depth],
                             FACT_Q.format(place=place), f"The legendary item hidden in {place} is the",
                             [color, obj])

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)


@register_task
class NeedleBenchMRT(Task):
    name = "needlebench-mrt"
    family = "NeedleBench"
    paper = "NeedleBench: Can LLMs Do Retrieval and Reasoning in 1 Million Context Window? (arXiv 2407.11963)"
    summary = "multi-needle retrieval: N facts at N depths, all asked at once"
    scorer = "fraction of facts whose colour and object are both in the answer"
    max_new_tokens = 96

    haystack: str = "essays"
    needles: int = 5

    def __post_init__(self) -> None:
        if not 2 <= self.needles <= 20:
            raise ValueError(f"needles must be within 2..20, got {self.needles}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        fs = facts(random.Random(f"mrt-{seed}"), self.needles)
        depths = [0.05 + 0.9 * i / (self.needles - 1) for i in range(self.needles)]
        question = "Please answer each question in order. " + " ".join(FACT_Q.format(place=p) for p, _, _ in fs)
        refs = [f"{c} {o}" for _, c, o in fs]
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed),
                             [FACT.format(place=p, color=c, object=o) for p, c, o in fs], depths, question,
                             "", refs, meta={"facts": [list(f) for f in fs]})

    def score(self, sample: Sample, prediction: str) -> float:
        pred = prediction.lower()
        found = [all(w in pred for w in ref.lower().split()) for ref in sample.references]
        return sum(found) / len(found)

    def questions(self, sample: Sample, k: int) -> list[Sample]:
        """One question per fact (S-RT's wording and answer prefix), up to ``k`` facts spread over the
        depths; the scorer is the same (its colour and object both in the answer)."""
        fs = sample.meta["facts"]
        return [ask_also(sample, q, FACT_Q.format(place=fs[i][0]), f"The legendary item hidden in {fs[i][0]} is the",
                         [f"{fs[i][1]} {fs[i][2]}"], fact=i) for q, i in enumerate(spread(len(fs), k))]


@register_task
class NeedleBenchMRS(Task):
    name = "needlebench-mrs"
    family = "NeedleBench"
    paper = "NeedleBench: Can LLMs Do Retrieval and Reasoning in 1 Million Context Window? (arXiv 2407.11963)"
    summary = "multi-needle reasoning: a kinship chain spread through the essays; name the eldest"
    scorer = "eldest name in the answer (boxed if given) (0/1)"
    max_new_tokens = 24

    haystack: str = "essays"
    needles: int = 3

    def __post_init__(self) -> None:
        if not 2 <= self.needles <= 32:
            raise ValueError(f"needles must be within 2..32, got {self.needles}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"mrs-{seed}")
        names = people(rng, self.needles + 1)
        statements, gens = kinship(rng, names)
        rng.shuffle(statements)
        depths = [0.05 + 0.9 * i / max(1, len(statements) - 1) for i in range(len(statements))]
        question = (QUESTIONS["eldest"].format(last=names[-1]) +
                    " Give your final answer in the form \\boxed{answer}.")
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed), statements, depths, question,
                             "The eldest relative is \\boxed{", [names[0]],
                             meta={"names": names, "generations": gens})

    def score(self, sample: Sample, prediction: str) -> float:
        if atc_match(prediction, sample.answer_prefix, sample.references[0]):
            return 1.0
        return float(sample.references[0].lower() in prediction.lower().split("}")[0])


@register_task
class AncestralTrace(Task):
    name = "atc"
    family = "NeedleBench"
    paper = "NeedleBench: Can LLMs Do Retrieval and Reasoning in 1 Million Context Window? (arXiv 2407.11963)"
    summary = "Ancestral Trace Challenge: a shuffled kinship chain, no haystack; answer in \\boxed{}"
    scorer = "exact match of the \\boxed{} answer after cleaning (0/1)"
    max_new_tokens = 24

    needles: int = 0  # 0 = as many as fit the length (recorded in the sample)
    question: str = "eldest"

    def __post_init__(self) -> None:
        if self.question not in QUESTIONS:
            raise ValueError(f"question must be one of {', '.join(QUESTIONS)}, got {self.question!r}")
        if not (self.needles == 0 or 2 <= self.needles <= 512):
            raise ValueError(f"needles must be 0 (fit the length) or within 2..512, got {self.needles}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        def build(n: int) -> Sample:
            n = max(n, 2) if self.needles == 0 else self.needles
            rng = random.Random(f"atc-{seed}-{n}")
            names = people(rng, n + 1)
            statements, gens = kinship(rng, names)
            rng.shuffle(statements)
            question = QUESTIONS[self.question].format(first=names[0], last=names[-1], gens=gens)
            answer = {"eldest": names[0], "nth-ancestor": names[0], "nth-descendant": names[-1],
                      "distance": str(gens)}[self.question]
            context = ATC_INSTRUCTION + "\n\n" + "\n".join(statements)
            return Sample(context, question, "The answer is \\boxed{", [answer],
                          {"needles": n, "generations": gens})

        if self.needles:
            sample = build(self.needles)
            _, _, tokens = fit_units(lambda _: sample, tokenizer, budget, limit=0, what="needles")
        else:
            _, sample, tokens = fit_units(lambda n: build(n + 2), tokenizer, budget, limit=510, what="needles")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return atc_match(prediction, sample.answer_prefix, sample.references[0])

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``needles``: the median chain length of the cell (the report's ATC summary sorts by it)."""
        return {"needles": statistics.median(r["meta"].get("needles", 0) for r in records) if records else None}
