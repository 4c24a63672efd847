"""``longins`` (LongIns, arXiv 2406.17588, synthetic analogue): many numbered arithmetic Q-A items, about
``wrong`` of them with a wrong answer; the model lists the numbers of the wrong items.
Scorer: F1 between the item numbers in the answer and the wrong ones. Parameters: ``wrong`` (share of
wrong items, default 0.1).
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..task import Sample, Task, f1, fit_units, register_task


def item(seed: int, i: int, wrong_share: float) -> tuple[str, bool]:
    rng = random.Random(f"longins-{seed}-{i}")
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    right = a + b if op == "+" else a - b if op == "-" else a * b
    wrong = rng.random() < wrong_share
    shown = right + rng.choice([-10, -2, -1, 1, 2, 10]) if wrong else right
    return f"Item {i + 1}. Q: What is {a} {op} {b}? A: {shown}", wrong


@register_task
class LongIns(Task):
    name = "longins"
    family = "LongIns"
    summary = "find the wrongly answered items among many arithmetic Q-A pairs"
    scorer = "F1 of the item numbers listed vs the wrong ones"
    max_new_tokens = 48

    wrong: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.wrong < 0.5:
            raise ValueError(f"wrong must be within (0, 0.5), got {self.wrong}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        def build(n: int) -> Sample:
            items = [item(seed, i, self.wrong) for i in range(n + 1)]
            bad = [str(i + 1) for i, (_, w) in enumerate(items) if w]
            context = ("Below are numbered question-answer items. Some answers are wrong.\n" +
                       "\n".join(text for text, _ in items))
            question = ("List the numbers of all items whose answer is wrong, separated by commas. "
                        "If every answer is right, answer none.")
            return Sample(context, question, "The wrong items are:", bad, {"items": n + 1})

        _, sample, tokens = fit_units(build, tokenizer, budget, what="items")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        predicted = set(re.findall(r"\d+", prediction))
        return f1(predicted, set(sample.references))
