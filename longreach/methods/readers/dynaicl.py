"""``dynaicl``: a controller predicts how many demonstrations each query needs, allocated under a token budget."""

from __future__ import annotations

from typing import Any

from ...spec import Length, Method, register


@register
class DynaIcl(Method):
    """DynaICL: per query, a small controller picks the number of demonstrations; the most relevant are kept
    within a prompt-token budget.

    Paper: "Efficient Prompting via Dynamic In-Context Learning", Zhou et al. 2023,
    https://arxiv.org/abs/2305.11170. The controller is a scikit-learn logistic regression over cheap
    features of the query (its length, its overlap with the label list and the demonstrations, the number
    of pairs and labels) predicting one of 0 / 4 / 16 / 64 / all demonstrations; it is fitted once per model
    on a calibration run (the model's own success at each count on generated many-label-icl samples:
    ``benchmarks/icl_methods.py --calibrate``) and cached under ``$LONGREACH_CACHE/dynaicl``. Without a
    fitted controller it keeps every demonstration that fits the budget, and says so in the answer's extra.
    Demonstrations are ranked by idf-weighted word overlap with the query. Layouts as ``icv``; a document
    without pairs is read plainly. See docs/icl-methods.md.

    Parameters:
      budget     prompt tokens at most (template, preamble, demonstrations, question), default 2048.
      max_demos  demonstrations at most whatever the controller says; 0 = no cap (default).
    """

    name = "dynaicl"
    slot = "reader"
    paper = "Efficient Prompting via Dynamic In-Context Learning (arXiv 2305.11170)"
    summary = "a logistic-regression controller picks how many demonstrations each query gets, under a token budget"

    budget: Length = 2048
    max_demos: int = 0

    def __post_init__(self) -> None:
        if self.budget < 16:
            raise ValueError(f"budget={self.budget} is too small; use at least 16 prompt tokens (default 2048)")
        if self.max_demos < 0:
            raise ValueError(f"max_demos={self.max_demos} must be 0 (no cap, default) or more")

    def make_reader(self) -> Any:
        from ...readers.dynaicl import DynaIclReader

        return DynaIclReader(self.budget, self.max_demos)
