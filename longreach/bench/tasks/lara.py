"""LaRA-style tasks (arXiv 2502.09977, github:Alibaba-NLP/LaRA): the four query types LaRA uses to compare
retrieval with reading the whole context, rebuilt offline from Paul Graham's essays and invented facts.

LaRA's own data (novels, papers, financial statements at 32k / 128k tokens, judged by GPT-4o) cannot ship
or run here; these tasks keep its four types and its judging rules, with facts no model has seen (invented
towns, people and numbers from a seeded generator) so a right answer can only come from the context:

- ``lara_location``: one fact at the sample's depth, asked directly.
  Scorer: 1 iff every answer keyword is present (whole words, case-insensitive), 0 if the answer declines.
- ``lara_reasoning``: two facts at two depths (the sample's and a seeded other at least 0.1 away) that must
  be combined: founding years (``years``: "B was founded 12 years after A"), heights (``height``), days of
  the week (``weekday``: "two days after the market day"), where an object is kept (``location``:
  object -> person's house -> town), a departure year (``age``: born in Y, left at the age of K).
  Scorer: 1 iff the derived value is present, 0 if the answer declines.
- ``lara_comparison``: two towns, one comparable attribute each (``length`` of the main bridge, ``age``
  from the founding year, ``size`` of the lake, ``height`` of the clock tower), at two depths; "Which town
  has the longer main bridge, X or Y?". Scorer: 1 iff the first of the two town names in the answer is
  the right one (so "X, not Y" and "X is longer than Y" count, "Y is shorter than X" does not), 0 if the
  answer declines or names neither.
- ``lara_hallucination`` (LaRA ``hallu``): two facts about a town at two depths make the question look
  answerable, but the attribute asked is never stated. Scorer: 1 iff the answer declines
  (:func:`longreach.answers.declines`), as LaRA's judge counts only answers saying the text lacks it.

Every question ends with :data:`longreach.answers.UNANSWERABLE_INSTRUCTION`, the same for the four types so
the instruction does not give the type away; the model answers freely (no answer prefix). Parameters:
``haystack`` (essays | noise | a path) and ``template`` (``any`` = a seeded choice, or one template name).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any, ClassVar

from ...answers import UNANSWERABLE_INSTRUCTION, declines
from ..haystack import Haystack
from ..task import Sample, Task, register_task
from ..words import COLORS, NAMES, OBJECTS, PLACES
from ._haystack_doc import needle_sample

HERBS = "saffron juniper fennel caraway rosemary thyme sage cardamom aniseed lavender".split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
COUNTS = {2: "two", 3: "three", 4: "four"}
THINGS = [o for o in OBJECTS if "-" not in o]  # a hyphenated keyword would be written with a space


# ------------------------------------------------------------------------------------- scoring helpers
def _norm(text: str) -> str:
    """Lower case, hyphens as spaces, no thousands separators, single spaces."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower().replace("-", " "))
    return " ".join(text.split())


def find_word(prediction: str, keyword: str) -> int:
    """Where ``keyword`` first occurs in ``prediction`` as a whole word or number (-1 when absent).

    A number may be followed by letters ("14th") but not by digits; a word by neither."""
    kw = _norm(keyword)
    if not kw:
        return -1
    left = r"(?<![0-9])" if kw[0].isdigit() else r"(?<![a-z0-9])"
    right = r"(?![0-9])" if kw[-1].isdigit() else r"(?![a-z0-9])"
    m = re.search(left + re.escape(kw) + right, _norm(prediction))
    return m.start() if m else -1


def all_keywords(prediction: str, keywords: list[str]) -> float:
    """1.0 iff every keyword is in the prediction (whole words) and the prediction does not decline."""
    if not keywords or declines(prediction):
        return 0.0
    return float(all(find_word(prediction, k) >= 0 for k in keywords))


def first_named(prediction: str, right: str, wrong: str) -> float:
    """1.0 iff ``right`` is named and before ``wrong`` (or ``wrong`` is not named); 0 if it declines."""
    if declines(prediction):
        return 0.0
    r, w = find_word(prediction, right), find_word(prediction, wrong)
    return float(r >= 0 and (w < 0 or r < w))


# -------------------------------------------------------------------------------------- fact makers
Facts = tuple[list[str], str, list[str], dict[str, Any]]  # (fact sentences, question, references, meta)


def _attributes(rng: random.Random, town: str) -> dict[str, tuple[str, str, list[str]]]:
    """Invented facts about ``town``: attribute -> (sentence, question, answer keywords)."""
    founder, librarian = rng.sample(NAMES, 2)
    bridge, well, year, day = rng.randint(120, 980), rng.randint(11, 95), rng.randint(1412, 1899), rng.randint(2, 28)
    month, herb, color, thing = rng.choice(MONTHS), rng.choice(HERBS), rng.choice(COLORS), rng.choice(THINGS)
    return {
        "bridge": (f"The main bridge of {town} is {bridge} metres long.",
                   f"How long is the main bridge of {town}?", [str(bridge)]),
        "founder": (f"{town} was founded by a cartographer named {founder}.", f"Who founded {town}?", [founder]),
        "festival": (f"The lantern festival of {town} is held every year on {month} {day}.",
                     f"On which date is the lantern festival of {town} held?", [month, str(day)]),
        "gift": (f"In {town}, the traditional wedding gift is a {color} {thing}.",
                 f"What is the traditional wedding gift in {town}?", [color, thing]),
        "librarian": (f"The head librarian of {town} is a retired sailor called {librarian}.",
                      f"Who is the head librarian of {town}?", [librarian]),
        "bread": (f"The bakers of {town} flavour their bread with {herb}.",
                  f"What do the bakers of {town} flavour their bread with?", [herb]),
        "well": (f"The old well in the square of {town} is {well} metres deep.",
                 f"How deep is the old well in the square of {town}?", [str(well)]),
        "bell": (f"The great bell of {town} was cast in {year}.", f"In which year was the great bell of {town} cast?",
                 [str(year)]),
    }


ATTRIBUTES = ("bridge", "founder", "festival", "gift", "librarian", "bread", "well", "bell")


def _location(rng: random.Random, template: str) -> Facts:
    town = rng.choice(PLACES)
    key = rng.choice(ATTRIBUTES) if template == "any" else template
    fact, question, keywords = _attributes(rng, town)[key]
    return [fact], question, keywords, {"type": key, "entity": town}


def _reasoning(rng: random.Random, template: str) -> Facts:
    kind = rng.choice(REASONING) if template == "any" else template
    a, b = rng.sample(PLACES, 2)
    if kind == "years":
        year, gap, after = rng.randint(1620, 1880), rng.randint(3, 60), rng.random() < 0.5
        facts = [f"{a} was founded in {year}.", f"{b} was founded {gap} years {'after' if after else 'before'} {a}."]
        answer, question = str(year + gap if after else year - gap), f"In which year was {b} founded?"
    elif kind == "height":
        height, more = rng.randint(20, 90), rng.randint(3, 40)
        facts = [f"The clock tower of {a} is {height} metres tall.",
                 f"The clock tower of {b} is {more} metres taller than the clock tower of {a}."]
        answer, question = str(height + more), f"How tall is the clock tower of {b}?"
    elif kind == "weekday":
        day, gap = rng.randrange(7), rng.choice(sorted(COUNTS))
        facts = [f"The market of {a} is held every {WEEKDAYS[day]}.",
                 f"The fair of {b} is held every week, {COUNTS[gap]} days after the market day of {a}."]
        answer, question = WEEKDAYS[(day + gap) % 7], f"On which day of the week is the fair of {b} held?"
    elif kind == "location":
        person, color, thing = rng.choice(NAMES), rng.choice(COLORS), rng.choice(THINGS)
        facts = [f"{person} keeps the {color} {thing} in the cellar of the family house.",
                 f"The family house of {person} stands in {a}."]
        answer, question = a, f"In which town is the {color} {thing} kept?"
    else:  # age
        person, born, age = rng.choice(NAMES), rng.randint(1700, 1950), rng.randint(14, 40)
        facts = [f"{person} was born in {born}.", f"{person} left for {a} at the age of {age}."]
        answer, question = str(born + age), f"In which year did {person} leave for {a}?"
    return facts, question, [answer], {"type": kind, "entities": [a, b]}


REASONING = ("years", "height", "weekday", "location", "age")

#: comparison template -> (sentence, question, True when the larger value wins, value range)
COMPARISONS: dict[str, tuple[str, str, bool, tuple[int, int]]] = {
    "length": ("The main bridge of {t} is {v} metres long.", "Which town has the longer main bridge, {x} or {y}?",
               True, (120, 980)),
    "age": ("{t} was founded in {v}.", "Which town is older, {x} or {y}?", False, (1400, 1890)),
    "size": ("The lake beside {t} covers {v} square kilometres.", "Which town has the larger lake, {x} or {y}?",
             True, (12, 480)),
    "height": ("The clock tower of {t} is {v} metres tall.", "Which town has the taller clock tower, {x} or {y}?",
               True, (20, 140)),
}


def _comparison(rng: random.Random, template: str) -> Facts:
    kind = rng.choice(sorted(COMPARISONS)) if template == "any" else template
    sentence, question, larger_wins, (lo, hi) = COMPARISONS[kind]
    a, b = rng.sample(PLACES, 2)
    va = rng.randint(lo, hi)
    vb = rng.choice([v for v in range(lo, hi + 1) if abs(v - va) >= max(3, (hi - lo) // 10)])
    right, wrong = (a, b) if (va > vb) == larger_wins else (b, a)
    x, y = (a, b) if rng.random() < 0.5 else (b, a)  # the right town is not always named first
    facts = [sentence.format(t=a, v=va), sentence.format(t=b, v=vb)]
    return facts, question.format(x=x, y=y), [right], {"type": kind, "entities": [a, b], "values": [va, vb],
                                                        "wrong": wrong}


def _hallucination(rng: random.Random, template: str) -> Facts:
    town = rng.choice(PLACES)
    table = _attributes(rng, town)
    asked = rng.choice(ATTRIBUTES) if template == "any" else template
    present = rng.sample([k for k in ATTRIBUTES if k != asked], 2)
    facts = [table[k][0] for k in present]
    return facts, table[asked][1], ["unanswerable"], {"type": asked, "entity": town, "present": present,
                                                      "absent_fact": table[asked][0]}


# --------------------------------------------------------------------------------------------- tasks
def _generate(task: Any, make: Callable[[random.Random, str], Facts], tokenizer: Any, budget: int, seed: int,
              depth: float) -> Sample:
    rng = random.Random(f"{task.name}-{seed}")
    facts, question, refs, meta = make(rng, task.template)
    other = (depth + 0.1 + 0.8 * rng.random()) % 1.0  # at least 0.1 from the sample's depth
    depths = [depth, other][: len(facts)]
    meta.update(facts=facts, depths=depths, template=task.template)
    return needle_sample(tokenizer, budget, Haystack(task.haystack, seed), facts, depths,
                         f"{question} {UNANSWERABLE_INSTRUCTION}", "", refs, meta=meta)


def _check_template(template: str, names: tuple[str, ...]) -> None:
    if template != "any" and template not in names:
        raise ValueError(f"template must be any or one of {', '.join(names)}, got {template!r}")


class _LaraTask(Task):
    """What the four LaRA tasks share: the essays haystack, a template chosen by seed (or named), the
    facts built by ``_facts`` and placed by :func:`_generate`; subclasses set the templates and the scorer."""

    family = "LaRA"
    paper = "LaRA: Benchmarking Retrieval-Augmented Generation and Long-Context LLMs (arXiv 2502.09977)"
    uses_depth = True
    max_new_tokens = 32
    _templates: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _check_template(self.template, self._templates)  # type: ignore[attr-defined]

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        return _generate(self, type(self)._facts, tokenizer, budget, seed, depth)

    @staticmethod
    def _facts(rng: random.Random, template: str) -> Facts:
        raise NotImplementedError


@register_task
class LaraLocation(_LaraTask):
    name = "lara_location"
    summary = "one invented fact about a town in the essays at a depth, asked directly"
    scorer = "1 iff every answer keyword is present (whole words); 0 if the answer declines"
    _templates = ATTRIBUTES
    _facts = staticmethod(_location)

    haystack: str = "essays"
    template: str = "any"

    def score(self, sample: Sample, prediction: str) -> float:
        return all_keywords(prediction, sample.references)


@register_task
class LaraReasoning(_LaraTask):
    name = "lara_reasoning"
    summary = "two facts at two depths combined (years, height, weekday, location, age)"
    scorer = "1 iff the derived value is present (whole word); 0 if the answer declines"
    _templates = REASONING
    _facts = staticmethod(_reasoning)

    haystack: str = "essays"
    template: str = "any"

    def score(self, sample: Sample, prediction: str) -> float:
        return all_keywords(prediction, sample.references)


@register_task
class LaraComparison(_LaraTask):
    name = "lara_comparison"
    summary = "two towns, one comparable attribute each at two depths; which is longer/older/larger/taller"
    scorer = "1 iff the first of the two towns named is the right one; 0 if the answer declines"
    _templates = tuple(sorted(COMPARISONS))
    _facts = staticmethod(_comparison)

    haystack: str = "essays"
    template: str = "any"

    def score(self, sample: Sample, prediction: str) -> float:
        return first_named(prediction, sample.references[0], sample.meta["wrong"])


@register_task
class LaraHallucination(_LaraTask):
    name = "lara_hallucination"
    summary = "two facts about a town at two depths; the attribute asked is absent (gold: decline)"
    scorer = "1 iff the answer declines (says the text does not contain it)"
    _templates = ATTRIBUTES
    _facts = staticmethod(_hallucination)

    haystack: str = "essays"
    template: str = "any"

    def score(self, sample: Sample, prediction: str) -> float:
        return float(declines(prediction))
