"""``longins`` (LongIns, arXiv 2406.17588, synthetic analogue): many numbered Q-A items, about ``wrong`` of
them with a wrong answer; the model lists the numbers of the wrong items.
Scorer: F1 between the item numbers in the answer and the wrong ones. Parameters: ``wrong`` (share of
wrong items, default 0.1) and ``setting``, LongIns' three ways of giving the instruction:

- ``gist`` (default; Global Instruction & Single Task): one instruction at the top, arithmetic items only;
- ``list`` (Local Instruction & Single Task): the items come in segments of :data:`SEGMENT`, each opened by
  its own instruction line, arithmetic items only;
- ``limt`` (Local Instruction & Multiple Tasks): segments of different generated task types (arithmetic,
  letter counting, comparing numbers, sorting, reversing words, unit conversion), each opened by the
  instruction of its task; items are numbered across the whole document.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..task import Sample, Task, f1, fit_units, register_task
from ..words import NOUNS

SETTINGS = ("gist", "list", "limt")
SEGMENT = 8  # items per segment (LIST, LIMT)


def item(seed: int, i: int, wrong_share: float) -> tuple[str, bool]:
    rng = random.Random(f"longins-{seed}-{i}")
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    right = a + b if op == "+" else a - b if op == "-" else a * b
    wrong = rng.random() < wrong_share
    shown = right + rng.choice([-10, -2, -1, 1, 2, 10]) if wrong else right
    return f"Item {i + 1}. Q: What is {a} {op} {b}? A: {shown}", wrong


def _count(r: random.Random) -> tuple[str, str, str]:
    w = r.choice(NOUNS)
    letter = r.choice(sorted(set(w)))
    return f"How many times does the letter '{letter}' occur in '{w}'?", str(w.count(letter)), "count"


def _compare(r: random.Random) -> tuple[str, str, str]:
    a, b = r.sample(range(10, 999), 2)
    return f"Which is larger, {a} or {b}?", str(max(a, b)), "compare"


def _sort(r: random.Random) -> tuple[str, str, str]:
    xs = r.sample(range(1, 99), 4)
    return f"Sort {', '.join(map(str, xs))} in ascending order.", ", ".join(map(str, sorted(xs))), "sort"


def _reverse(r: random.Random) -> tuple[str, str, str]:
    w = r.choice([n for n in NOUNS if len(set(n)) > 2])
    return f"Reverse the word '{w}'.", w[::-1], "reverse"


def _convert(r: random.Random) -> tuple[str, str, str]:
    n, (unit, per, into) = r.randint(2, 40), r.choice([("hours", 60, "minutes"), ("minutes", 60, "seconds"),
                                                         ("days", 24, "hours"), ("kilometres", 1000, "metres")])
    return f"How many {into} are in {n} {unit}?", str(n * per), "convert"


def _wrong(r: random.Random, answer: str, kind: str) -> str:
    if kind == "sort":  # swap two neighbours
        xs = answer.split(", ")
        k = r.randrange(len(xs) - 1)
        xs[k], xs[k + 1] = xs[k + 1], xs[k]
        return ", ".join(xs)
    if kind == "reverse":  # swap two different neighbouring letters
        ks = [k for k in range(len(answer) - 1) if answer[k] != answer[k + 1]]
        k = r.choice(ks)
        return answer[:k] + answer[k + 1] + answer[k] + answer[k + 2:]
    if kind == "count":  # a count stays positive
        return str(int(answer) + r.choice([1, 2] if int(answer) < 2 else [-1, 1, 2]))
    return str(int(answer) + r.choice([-2, -1, 1, 2] if kind == "compare" else [-10, -1, 1, 10]))


#: task type -> (generator, local instruction)
TASK_TYPES = {
    "count": (_count, "Letter counting: each item asks how often a letter occurs in a word."),
    "compare": (_compare, "Comparison: each item asks which of two numbers is larger."),
    "sort": (_sort, "Sorting: each item asks for four numbers in ascending order."),
    "reverse": (_reverse, "Word reversal: each item asks for a word spelled backwards."),
    "convert": (_convert, "Unit conversion: each item asks to convert a quantity."),
}
ARITHMETIC = "Arithmetic: each item asks for the result of one operation."


def task_item(seed: int, i: int, wrong_share: float, kind: str) -> tuple[str, bool]:
    """Item ``i`` of task type ``kind`` (``arithmetic`` is :func:`item`)."""
    if kind == "arithmetic":
        return item(seed, i, wrong_share)
    r = random.Random(f"longins-{kind}-{seed}-{i}")
    q, answer, _ = TASK_TYPES[kind][0](r)
    wrong = r.random() < wrong_share
    return f"Item {i + 1}. Q: {q} A: {_wrong(r, answer, kind) if wrong else answer}", wrong


def segment_kind(seed: int, k: int) -> str:
    kinds = ["arithmetic", *TASK_TYPES]
    return random.Random(f"longins-segment-{seed}-{k}").choice(kinds)


@register_task
class LongIns(Task):
    name = "longins"
    family = "LongIns"
    paper = "LongIns: A Challenging Long-context Instruction-based Exam for LLMs (arXiv 2406.17588)"
    summary = "find the wrongly answered items among many arithmetic Q-A pairs"
    scorer = "F1 of the item numbers listed vs the wrong ones"
    max_new_tokens = 48

    wrong: float = 0.1
    setting: str = "gist"

    def __post_init__(self) -> None:
        if not 0.0 < self.wrong < 0.5:
            raise ValueError(f"wrong must be within (0, 0.5), got {self.wrong}")
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        question = ("List the numbers of all items whose answer is wrong, separated by commas. "
                    "If every answer is right, answer none.")

        def build(n: int) -> Sample:
            if self.setting == "gist":
                items = [item(seed, i, self.wrong) for i in range(n + 1)]
                context = ("Below are numbered question-answer items. Some answers are wrong.\n" +
                           "\n".join(text for text, _ in items))
                kinds = ["arithmetic"]
            else:
                blocks, items, kinds = [], [], []
                for k in range((n + SEGMENT) // SEGMENT):
                    kind = segment_kind(seed, k) if self.setting == "limt" else "arithmetic"
                    seg = [task_item(seed, i, self.wrong, kind) for i in range(k * SEGMENT, min(n + 1, (k + 1) * SEGMENT))]
                    local = ARITHMETIC if kind == "arithmetic" else TASK_TYPES[kind][1]
                    blocks.append(f"Segment {k + 1}. {local} Some answers may be wrong.\n" +
                                  "\n".join(text for text, _ in seg))
                    items += seg
                    kinds.append(kind)
                context = "\n\n".join(blocks)
            bad = [str(i + 1) for i, (_, w) in enumerate(items) if w]
            meta = {"items": n + 1}
            if self.setting != "gist":
                meta.update(setting=self.setting, segments=len(kinds), task_types=len(set(kinds)))
            return Sample(context, question, "The wrong items are:", bad, meta)

        _, sample, tokens = fit_units(build, tokenizer, budget, what="items")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        predicted = set(re.findall(r"\d+", prediction))
        return f1(predicted, set(sample.references))
