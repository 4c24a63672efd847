"""Multi-hop and aggregation questions over facts scattered through the essays (family "Multi-hop"):
questions that one retrieved passage cannot answer, where multi-agent reading (``agents``) and
retrieve-then-reason (``alr2``) should beat plain retrieval.

- ``multihop`` (NeedleBench M-RS style, arXiv 2407.11963, with our own fictional entities): a chain of
  ``hops`` facts about invented people, institutions, towns and rivers ("Orvel Tansy works at the
  Quillmere Observatory." / "The Quillmere Observatory stands in the town of Brasket." / "The river Ostrel
  runs through Brasket."), asked as one question that needs every hop ("Which river runs through the town
  where Orvel Tansy works?"). The relation chain (works at / studied at / lives in / is located in / river /
  mayor / was founded by) is chosen per seed; the bridge entities never appear in the question, so
  retrieval by the question's words finds only the first hop. ``distractors`` more chains of the same
  relations over other entities of the same types (every organisation of a sample is of the same kind),
  the first of them starting from the question's own subject through a decoy relation ("Orvel Tansy once
  visited the Ashvane Observatory."), so no single fact answers and following any link out of the subject
  is not enough. All facts are shuffled and spread evenly over 5%..95% of the text. Scorer: 1 iff the
  answer's first sentence names the final entity (whole words, case-insensitive) and no other entity of its
  type from the sample (a hedge listing two rivers is wrong; the subject named in the question does not
  count); 0 if the answer declines
  (:func:`longreach.answers.declines`).
- ``aggregate`` (LooGLE long-dependency computation, arXiv 2311.04939, with our own entities):
  ``op=count``: "The lighthouse keeper of Varnholm logged a storm on 3 March." k times (k drawn per seed
  from ``items//2 .. items + items//2``, so the answer is not a constant), plus ``items`` distractors
  (other kinds of events by the same keeper, the same kind by another town's keeper); "How many storms did
  the lighthouse keeper of Varnholm log?". Scorer: the first number in the answer (digits, or words such as
  "six" / "twenty-one") equals k. ``op=compare``: ``items`` shipments of crates by two ships (split as
  evenly as possible, which ship gets the odd one chosen per seed), plus ``items//2`` distractors (a third
  ship's crates, the two ships' barrels); "Which ship carried more crates in total, the A or the B?"; the
  values are drawn so that the loser has the single largest shipment (the largest number is not the
  answer). Scorer: the winner is named, before the loser when both are (0 if the answer declines).

``filler=false`` (both tasks): the facts alone, without the essays around them, the question and scorer
unchanged: a control that tells the model's reasoning limit from a reading miss (a reader that fails the
question at length but answers it from the bare facts lost it in the reading; one that fails both never
could). The length then only bounds the sample.

Both are sized with the evaluated tokenizer (:func:`fit_units`, never truncated; a :class:`BenchError`
when the facts alone do not fit) and deterministic per seed.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ...answers import declines
from ..haystack import Haystack
from ..task import BenchError, Sample, Task, fit_units, insert_at_depths, register_task, token_depth
from ..words import NAMES
from .lara import find_word, first_named

# ------------------------------------------------------------------ invented entities (not in the essays)
SURNAMES = ("Tansy Vantreck Morrowby Quellan Ashgrove Brindlemore Corrick Dunstall Elderkin Farrowby Gethryn "
            "Hollisande Ibberton Jessamy Kettleby Lorrimer Mavrick Nettlefold Oakhurst Pellingham Quorrin "
            "Ravensby Stellwick Thimbleby Underhay Vosper Wickerby").split()
ORG_PREFIXES = ("Quillmere Ashvane Brightmoor Corvale Dunharrow Emberly Fallowmere Greyholt Hollowmere Ironvale "
                "Juniperholt Kestrelmoor Mossgrave Nightvale Oakenmere Pennrith Quarrystone Ravenmoor").split()
ORG_KINDS = ["Observatory", "Conservatory", "Glassworks", "Seed Library", "Map Archive", "Clock Museum",
             "Botanical Institute", "Printing House"]
TOWNS = ("Brasket Culvane Drennick Eskmoor Fothering Gallowmere Hestle Inchbury Jarrowdale Kilvane Lurrow "
         "Marchwick Nethercombe Ollerby Pendrake Quenby Rillstone Sallowfield Tavistrel Umberford Varnholm "
         "Wexcombe").split()
RIVERS = "Ostrel Vardle Mirren Quennet Tarrow Elleth Cawdle Fennow Hallan Isbeck Jorra Kellet".split()
TYPES = {"person": "people", "org": "institutions", "town": "towns", "river": "rivers"}

# link name -> (from type, to type, fact templates, decoy templates: the same types, another relation)
LINKS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "works": ("person", "org", ["{a} works at {b}.", "{a} has worked at {b} for many years.",
                                "{a} took a job at {b} after leaving school."],
              ["{a} once visited {b}.", "{a} applied for a post at {b} but was turned down."]),
    "studied": ("person", "org", ["{a} studied at {b}.", "{a} trained at {b} as a young apprentice."],
                ["{a} gave a single lecture at {b}.", "{a} once wrote a letter to {b}."]),
    "lives": ("person", "town", ["{a} lives in the town of {b}.", "{a} has a house in the town of {b} and lives there."],
              ["{a} was born in the town of {b}.", "{a} spent one summer in the town of {b}."]),
    "located": ("org", "town", ["{A} is located in the town of {b}.", "{A} stands in the town of {b}."], []),
    "river": ("town", "river", ["The river {b} runs through {a}.", "{A} lies on the banks of the river {b}."], []),
    "mayor": ("town", "person", ["The mayor of {a} is {b}.", "{B} is the mayor of {a}."], []),
    "founded": ("org", "person", ["{A} was founded by {b}.", "{B} founded {a}."], []),
}
# chains by hops: (links, question, answer prefix); {p} the subject, {kind} the organisations' kind
CHAINS: dict[int, list[tuple[tuple[str, ...], str, str]]] = {
    2: [(("works", "located"), "In which town is the {kind} where {p} works?", "The town is"),
        (("studied", "located"), "In which town is the {kind} where {p} studied?", "The town is"),
        (("lives", "river"), "Which river runs through the town where {p} lives?", "The river is the"),
        (("lives", "mayor"), "Who is the mayor of the town where {p} lives?", "The mayor is"),
        (("works", "founded"), "Who founded the {kind} where {p} works?", "The founder is")],
    3: [(("works", "located", "river"), "Which river runs through the town where {p} works?", "The river is the"),
        (("studied", "located", "river"), "Which river runs through the town where {p} studied?",
         "The river is the"),
        (("works", "located", "mayor"), "Who is the mayor of the town where {p} works?", "The mayor is"),
        (("studied", "located", "mayor"), "Who is the mayor of the town where {p} studied?", "The mayor is"),
        (("works", "founded", "lives"), "In which town does the founder of the {kind} where {p} works live?",
         "The town is")],
}
MULTIHOP_PREAMBLE = ("Some facts about invented people, institutions, towns and rivers are scattered through the "
                     "text below. A question may need several of them combined.")

# aggregate:op=count scenarios: (role, past verb, base verb, [(event, plural), ...])
SCENARIOS = [
    ("lighthouse keeper", "logged", "log", [("storm", "storms"), ("fog bank", "fog banks"),
                                            ("shipwreck", "shipwrecks"), ("whale sighting", "whale sightings")]),
    ("stationmaster", "recorded", "record", [("late train", "late trains"), ("lost parcel", "lost parcels"),
                                             ("signal failure", "signal failures"), ("flooded track", "flooded tracks")]),
    ("harbour master", "noted", "note", [("spring tide", "spring tides"), ("seal colony", "seal colonies"),
                                         ("broken mooring", "broken moorings"), ("ice floe", "ice floes")]),
]
EVENT = ["The {role} of {town} {verb} {an} {event} on {date}.", "On {date}, the {role} of {town} {verb} {an} {event}.",
         "{An} {event} was {verb} by the {role} of {town} on {date}."]
COUNT_PREAMBLE = "The text below mentions, here and there, events that some officials recorded."
SHIPS = ["Marrow Wren", "Pell Lantern", "Saltbright", "Corrie Dawn", "Grey Fulmar", "Amber Tern", "Quiet Heron",
         "Tidewise", "Kettle Moon", "Brackenmaid"]
CARGO = ["The {ship} carried {n} {goods} to {town} in {month}.", "In {month}, the {ship} delivered {n} {goods} to {town}.",
         "{n} {goods} came into {town} aboard the {ship} in {month}."]
SHIP_PREAMBLE = "The text below mentions, here and there, cargo that some ships carried."
MONTHS = ("January February March April May June July August September October November "
          "December").split()

# ------------------------------------------------------------------------------------- number reading
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER = re.compile(rf"(?<![\w.,])(\d{{1,3}}(?:,\d{{3}})+|\d+)(?![\d])"
                     rf"|\b(?:({'|'.join(_TENS)})(?:[\s-]+({'|'.join(_UNITS[1:10])}))?|({'|'.join(_UNITS)}))\b",
                     re.IGNORECASE)


def first_number(text: str) -> int | None:
    """The first integer in ``text``, written in digits ("12", "1,200") or words up to 99 ("six",
    "twenty-one", "Forty two"); None when there is none."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    digits, tens, unit, small = m.groups()
    if digits is not None:
        return int(digits.replace(",", ""))
    if small is not None:
        return _UNITS.index(small.lower())
    return 20 + 10 * _TENS.index(tens.lower()) + (_UNITS.index(unit.lower()) if unit else 0)


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end (a full stop not inside a number, '!', '?' or a line break)."""
    return re.split(r"(?<!\d)\.|\.(?!\d)|[!?\n]", text.strip(), maxsplit=1)[0]


def names_only(prediction: str, right: str, others: list[str]) -> float:
    """1.0 iff the first sentence names ``right`` and none of ``others`` (whole words); 0 if it declines."""
    if declines(prediction):
        return 0.0
    first = first_sentence(prediction)
    return float(find_word(first, right) >= 0 and all(find_word(first, o) < 0 for o in others if o != right))


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def spread_facts(tokenizer: Any, budget: int, haystack: str, seed: int, facts: list[str], preamble: str,
                 question: str, prefix: str, references: list[str], meta: dict[str, Any],
                 filler: bool = True) -> Sample:
    """The largest haystack prefix that fits ``budget``, ``facts`` (in the order given) spread evenly over
    5%..95% of it; ``meta["depths"]``: each fact's requested depth (fraction of the text's characters).
    ``filler=False``: no haystack at all, the facts alone one after another (the budget only bounds them)."""
    depths = [0.05 + 0.9 * i / max(1, len(facts) - 1) for i in range(len(facts))]
    hay = Haystack(haystack, seed)

    def build(n: int) -> Sample:
        body, _ = insert_at_depths(hay.take(n), facts, depths)
        return Sample(preamble + "\n" + " ".join(body), question, prefix, list(references),
                      {**meta, "depths": [round(d, 4) for d in depths]})

    n, sample, tokens = fit_units(build, tokenizer, budget, limit=None if filler else 0,
                                  what="haystack units (the facts alone do not fit)")
    sample.meta.update(tokens=tokens, haystack_units=n, haystack=hay.source, haystack_repeats=hay.repeats(n))
    return sample


# ------------------------------------------------------------------------------------------- multihop
class _Entities:
    """Fresh invented entities of each type, never two alike in one sample (people differ in both names)."""

    def __init__(self, rng: random.Random):
        self.kind = rng.choice(ORG_KINDS)
        self.pools = {"person": [f"{g} {s}" for g, s in zip(rng.sample(NAMES, len(SURNAMES)),
                                                           rng.sample(SURNAMES, len(SURNAMES)))],
                      "org": [f"the {p} {self.kind}" for p in rng.sample(ORG_PREFIXES, len(ORG_PREFIXES))],
                      "town": rng.sample(TOWNS, len(TOWNS)), "river": rng.sample(RIVERS, len(RIVERS))}
        self.used: dict[str, list[str]] = {t: [] for t in TYPES}

    def new(self, kind: str) -> str:
        name = self.pools[kind][len(self.used[kind])]
        self.used[kind].append(name)
        return name


def _fact(template: str, a: str, b: str) -> str:
    return template.format(a=a, b=b, A=_cap(a), B=_cap(b))


def _chain(rng: random.Random, ents: _Entities, links: tuple[str, ...], subject: str | None) -> tuple[list[str], list[str]]:
    """(facts, entities from subject to answer) of one chain; with ``subject`` the first link is a decoy."""
    first = LINKS[links[0]]
    names = [subject or ents.new(first[0])]
    facts = []
    for i, link in enumerate(links):
        _, dst, templates, decoys = LINKS[link]
        names.append(ents.new(dst))
        pool = decoys if (i == 0 and subject is not None) else templates
        facts.append(_fact(rng.choice(pool), names[-2], names[-1]))
    return facts, names


@register_task
class MultiHop(Task):
    name = "multihop"
    family = "Multi-hop"
    paper = ("NeedleBench: Can LLMs Do Retrieval and Reasoning in 1 Million Context Window? "
             "(arXiv 2407.11963)")
    summary = "2-3 chained facts about invented entities spread through the essays, distractor chains; one question"
    scorer = "the final entity named in the first sentence, no other of its type; 0 if it declines (0/1)"
    max_new_tokens = 32

    hops: int = 2
    distractors: int = 2
    haystack: str = "essays"
    filler: bool = True

    def __post_init__(self) -> None:
        if self.hops not in CHAINS:
            raise ValueError(f"hops must be 2 or 3, got {self.hops}")
        if not 0 <= self.distractors <= 8:
            raise ValueError(f"distractors must be within 0..8 (distractor chains), got {self.distractors}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"multihop-{self.hops}-{seed}")
        links, question, prefix = rng.choice(CHAINS[self.hops])
        ents = _Entities(rng)
        hop_facts, names = _chain(rng, ents, links, None)
        distractor_facts, wrong = [], []
        for i in range(self.distractors):  # the first one leaves the subject through a decoy relation
            facts, other = _chain(rng, ents, links, names[0] if i == 0 else None)
            distractor_facts += facts
            wrong.append(other[-1])
        facts = hop_facts + distractor_facts
        rng.shuffle(facts)
        answer_type = LINKS[links[-1]][1]
        question = question.format(p=names[0], kind=ents.kind.lower())
        answer = names[-1]
        sample = spread_facts(tokenizer, budget, self.haystack, seed, facts, MULTIHOP_PREAMBLE, question, prefix,
                              [answer], {"hops": self.hops, "chain": list(links), "subject": names[0],
                                         "bridges": names[1:-1], "hop_facts": hop_facts,
                                         "distractor_facts": distractor_facts, "distractor_answers": wrong,
                                         "candidates": [e for e in ents.used[answer_type] if e != names[0]]},
                              filler=self.filler)
        where = [facts.index(f) for f in hop_facts]
        sample.meta["hop_depths"] = [sample.meta["depths"][i] for i in where]
        sample.meta["hop_depths_actual"] = [round(token_depth(tokenizer, sample.context, f), 4) for f in hop_facts]
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        others = [c for c in sample.meta.get("candidates", []) if find_word(sample.question, c) < 0]
        return names_only(prediction, sample.references[0], others)


# ------------------------------------------------------------------------------------------ aggregate
def _dates(rng: random.Random, n: int) -> list[str]:
    return [f"{d % 28 + 1} {MONTHS[d // 28]}" for d in rng.sample(range(28 * 12), n)]


def _shipments(rng: random.Random, n_a: int, n_b: int) -> tuple[list[int], list[int]]:
    """Crates per shipment of the winner (``n_a`` shipments) and the loser (``n_b``): the winner's total
    is 5%..35% larger, the loser has the single largest shipment."""
    for _ in range(10_000):
        win = [rng.randint(20, 240) for _ in range(n_a)]
        lose = [rng.randint(20, 240) for _ in range(n_b)]
        margin = (sum(win) - sum(lose)) / sum(win)
        if 0.05 <= margin <= 0.35 and max(lose) > max(win):
            return win, lose
    raise BenchError(f"no shipments found for {n_a} and {n_b} items; use another items")  # pragma: no cover


@register_task
class Aggregate(Task):
    name = "aggregate"
    family = "Multi-hop"
    paper = "LooGLE: Can Long-Context Language Models Understand Long Contexts? (arXiv 2311.04939)"
    summary = "count events or compare two ships' totals from partial facts scattered through the essays"
    scorer = "count: the first number (digits or words) is right; compare: the winner named first (0/1)"
    max_new_tokens = 32

    op: str = "count"
    items: int = 6
    haystack: str = "essays"
    filler: bool = True

    def __post_init__(self) -> None:
        if self.op not in ("count", "compare"):
            raise ValueError(f"op must be count or compare, got {self.op!r}")
        low = 4 if self.op == "compare" else 2
        if not low <= self.items <= 40:
            raise ValueError(f"items must be within {low}..40 for op={self.op}, got {self.items}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"aggregate-{self.op}-{self.items}-{seed}")
        make = self._count if self.op == "count" else self._compare
        facts, preamble, question, prefix, answer, meta = make(rng)
        return spread_facts(tokenizer, budget, self.haystack, seed, facts, preamble, question, prefix, [answer],
                            {"op": self.op, "facts": facts, **meta}, filler=self.filler)

    def _count(self, rng: random.Random) -> tuple[list[str], str, str, str, str, dict[str, Any]]:
        role, verb, base, events = rng.choice(SCENARIOS)
        town, other_town = rng.sample(TOWNS, 2)
        (event, plural), *others = rng.sample(events, len(events))
        k = rng.randint(max(1, self.items // 2), self.items + self.items // 2)
        # distractors: half the same kind by another town's official, half other kinds by the same official
        who = [(town, event)] * k + [(other_town, event) if i % 2 else (town, rng.choice(others)[0])
                                     for i in range(self.items)]
        dates = _dates(rng, len(who))
        facts = [rng.choice(EVENT).format(role=role, town=t, verb=verb, event=e, date=d, an=_an(e), An=_cap(_an(e)))
                 for (t, e), d in zip(who, dates)]
        rng.shuffle(facts)
        question = f"How many {plural} did the {role} of {town} {base} in the text? Answer with a number."
        return (facts, COUNT_PREAMBLE, question, f"Number of {plural}:", str(k),
                {"count": k, "event": event, "distractors": self.items})

    def _compare(self, rng: random.Random) -> tuple[list[str], str, str, str, str, dict[str, Any]]:
        winner, loser, third = rng.sample(SHIPS, 3)
        n_win, n_lose = (self.items + 1) // 2, self.items // 2
        if rng.random() < 0.5:
            n_win, n_lose = n_lose, n_win
        win, lose = _shipments(rng, n_win, n_lose)
        cargo = [(winner, n, "crates") for n in win] + [(loser, n, "crates") for n in lose]
        for i in range(self.items // 2):  # a third ship's crates, the two ships' barrels
            cargo.append((third, rng.randint(20, 240), "crates") if i % 2 == 0 else
                         (rng.choice([winner, loser]), rng.randint(20, 240), "barrels"))
        facts = [_cap(rng.choice(CARGO).format(ship=s, n=n, goods=g, town=rng.choice(TOWNS), month=rng.choice(MONTHS)))
                 for s, n, g in cargo]
        rng.shuffle(facts)
        a, b = rng.sample([winner, loser], 2)
        question = f"Which ship carried more crates in total, the {a} or the {b}? Answer with the ship's name."
        return (facts, SHIP_PREAMBLE, question, "The ship that carried more crates in total is the", winner,
                {"loser": loser, "totals": {winner: sum(win), loser: sum(lose)}, "crates": {winner: win, loser: lose}})

    def score(self, sample: Sample, prediction: str) -> float:
        if sample.meta.get("op", self.op) == "count":
            return float(not declines(prediction) and first_number(prediction) == int(sample.references[0]))
        return first_named(prediction, sample.references[0], sample.meta["loser"])
