"""The shared generator shape: needles inserted at depths into a prefix of a haystack, sized by bisection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..haystack import Haystack
from ..task import Sample, fit_units, insert_at_depths, token_depth


def needle_sample(tokenizer: Any, budget: int, haystack: Haystack, needles: list[str], depths: list[float],
                  question: str, answer_prefix: str, references: list[str], preamble: str = "",
                  meta: dict[str, Any] | None = None, join: str = " ",
                  units: Callable[[int], list[str]] | None = None) -> Sample:
    """The largest haystack prefix that fits ``budget`` prompt tokens, with ``needles`` at ``depths``."""
    take = units or haystack.take

    def build(n: int) -> Sample:
        body, _ = insert_at_depths(take(n), needles, depths)
        context = (preamble + "\n" if preamble else "") + join.join(body)
        return Sample(context, question, answer_prefix, list(references), dict(meta or {}))

    n, sample, tokens = fit_units(build, tokenizer, budget)
    sample.meta.update(tokens=tokens, haystack_units=n, haystack=haystack.source,
                       haystack_repeats=haystack.repeats(n) if units is None else 0)
    if needles:
        sample.meta["depth_actual"] = [round(token_depth(tokenizer, sample.context, nd), 4) for nd in needles]
    return sample
