"""``ppl``: perplexity of real text as the context grows (the first check of a context-extension method:
does the loss stay flat past the native window?).

The sample is ``length`` tokens of the haystack (essays by default; any text file or folder with
``haystack=PATH``), read without a prompt template. The backend returns the summed negative log-
likelihood of every token given all the tokens before it (chunked prefill through the method's plan);
the score is the perplexity exp(mean NLL) (lower is better), and the record also keeps the perplexity of
the last quarter (``ppl_tail``), the part that needs the long context.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ...prompt import encode
from ..haystack import Haystack
from ..task import Sample, Task, fit_units, register_task


def raw_tokens(tokenizer: Any, sample: Sample) -> int:
    return len(encode(tokenizer, sample.context))


@register_task
class Perplexity(Task):
    name = "ppl"
    family = "language modelling"
    paper = "long-text perplexity as evaluated by PI (arXiv 2306.15595) and YaRN (arXiv 2309.00071)"
    summary = "perplexity of real text at this length (lower is better)"
    scorer = "exp(mean token NLL) over the whole text; ppl_tail over its last quarter"
    kind = "loglik"
    higher_is_better = False
    max_new_tokens = 0

    haystack: str = "essays"

    def generate(self, tokenizer: Any, length: int, seed: int = 0, depth: float | None = None,
                 **params: Any) -> Sample:
        if params:
            return super().generate(tokenizer, length, seed, depth, **params)
        hay = Haystack(self.haystack, seed)
        build = lambda n: Sample(" ".join(hay.take(n)), "", "", [], {})  # noqa: E731
        n, sample, tokens = fit_units(build, tokenizer, length, what="sentences", counter=raw_tokens)
        sample.max_new_tokens = 0
        sample.meta.update(task=self.name, spec=self.spec, length=length, seed=seed, depth=None, tokens=tokens,
                           haystack=self.haystack, haystack_units=n, haystack_repeats=hay.repeats(n))
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        """``prediction`` is the JSON-free summary "nll_sum tokens" written by the backend."""
        nll, n = nll_tokens(prediction)
        return math.exp(nll / max(1.0, n))

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``ppl``: exp(summed NLL / summed scored tokens) over the cell's samples (the corpus perplexity;
        equal to ``score``, the mean of the samples' perplexities, for one sample); ``ppl_tail``: geometric
        mean of the samples' last-quarter perplexities. Failed samples are left out."""
        scored = [nll_tokens(r["prediction"]) for r in records if not r.get("error") and r.get("prediction")]
        nll, n = sum(x for x, _ in scored), sum(k for _, k in scored)
        tails = [r["ppl_tail"] for r in records if not r.get("error") and r.get("ppl_tail")]
        return {"ppl": round(math.exp(nll / n), 4) if n > 0 else None,
                "ppl_tail": round(math.exp(statistics.fmean(math.log(t) for t in tails)), 4) if tails else None}


def nll_tokens(prediction: str) -> tuple[float, float]:
    """``"nll_sum tokens"`` (what a backend's ``loglik`` returns as the prediction) -> (nll_sum, tokens)."""
    nll, n = (float(x) for x in prediction.split()[:2])
    return nll, n
