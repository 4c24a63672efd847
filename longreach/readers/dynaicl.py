"""DynaICL reader: a small controller picks how many demonstrations each query gets, under a token budget.

Paper: "Efficient Prompting via Dynamic In-Context Learning", Zhou et al. 2023 (arXiv 2305.11170). The paper
trains a meta controller (a small LM) to predict, per query, the number of demonstrations the model needs,
then allocates demonstrations under a token budget. Here the controller is a scikit-learn
``LogisticRegression`` (after a ``StandardScaler``) over cheap features of the query (:func:`query_features`)
whose classes are a few shot counts (:data:`COUNTS`: 0, 4, 16, 64, all).

**Calibration** (:func:`calibrate`): for each calibration sample, the model answers with each count in turn,
smallest first (the demonstrations most relevant to the query, :func:`~longreach.readers.icv.rank_demos`,
within the budget); the sample's class is the smallest count it answered right with (else "all"). One
controller per model, fitted once: kept in memory and written to ``$LONGREACH_CACHE/dynaicl/<model>.json``
(:func:`save_controller` / :func:`load_controller`; coefficients as JSON, never a pickle). The samples come
from the caller (the layers below the harness cannot generate tasks): ``benchmarks/icl_methods.py
--calibrate`` runs it on generated many-label-icl samples.

**Reading**: parse the document (:func:`~longreach.readers.icv.parse_demonstrations`), predict k, keep the k
most relevant demonstrations (with ``max_demos`` as a cap), and drop the least relevant until the whole
prompt (template, preamble, demonstrations, question) is at most ``budget`` tokens; even with none it must
fit (else a one-line :class:`InputError`). **Fallback** with no fitted controller for the model: the
budget-filling count (every demonstration that fits, most relevant first), noted in ``extra["dynaicl"]
["controller"]``. A document without demonstration pairs is read plainly (``pairs`` 0 and the reason
under ``"fallback"``). ``extra["dynaicl"]``: ``pairs``, ``predicted`` (the controller's count; -1 = all),
``kept``, ``prompt_tokens``, ``budget``, ``controller``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..answers import strip_instruction
from ..errors import InputError
from ..models import cache_dir
from ..prompt import build_prompt, encode
from ..retrieval.bm25 import stopwords, terms
from ..spec import Plan
from . import EngineLike, ReadResult, Request
from .icv import Demonstrations, answer_with, parse_demonstrations, plain_read, rank_demos
from .route import full_text, materialize

ALL = -1  # the class "every demonstration that fits the budget"
COUNTS: tuple[int, ...] = (0, 4, 16, 64, ALL)
FEATURES = ("log query tokens", "query terms in the preamble", "best demo overlap", "log demos sharing a term",
            "log pairs", "log labels")


# ------------------------------------------------------------------------------------------- features
def query_features(demos: Demonstrations, question: str, tokenizer: Any) -> list[float]:
    """Cheap features of a query against its document (:data:`FEATURES`): its length, how much of it the
    preamble (the label list) and the demonstrations cover, and how many pairs / labels there are."""
    stop = stopwords()
    query = strip_instruction(question)
    q = set(terms(query, stop))
    pre = set(terms(demos.preamble, stop))
    xs = [set(terms(p.x, stop)) for p in demos.pairs]
    shared = [len(q & x) / max(1, len(q | x)) for x in xs]
    return [math.log1p(len(encode(tokenizer, query))),
            len(q & pre) / max(1, len(q)),
            max(shared, default=0.0),
            math.log1p(sum(s > 0 for s in shared)),
            math.log1p(len(demos.pairs)),
            math.log1p(len({p.y for p in demos.pairs}))]


# ----------------------------------------------------------------------------------------- controller
@dataclasses.dataclass
class Controller:
    """A fitted shot-count predictor: standardised features -> logistic regression -> a count of :data:`COUNTS`."""

    counts: list[int]  # the classes the regression predicts (a constant controller: one)
    mean: list[float]
    scale: list[float]
    coef: list[list[float]]  # (classes or 1, features)
    intercept: list[float]
    samples: int = 0

    def predict(self, features: Sequence[float]) -> int:
        if len(self.counts) == 1:
            return self.counts[0]
        x = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)  # (F,)
        z = np.asarray(self.coef) @ x + np.asarray(self.intercept)  # (C,) or (1,) for two classes
        if len(self.counts) == 2:
            return self.counts[int(z[0] > 0)]
        return self.counts[int(np.argmax(z))]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Controller:
        return cls(**json.loads(text))


def fit_controller(features: Sequence[Sequence[float]], needed: Sequence[int]) -> Controller:
    """A :class:`Controller` fitted on ``features`` (n, F) and each sample's needed count (one of COUNTS)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)  # (n, F)
    y = np.asarray(needed)
    classes = sorted(set(y.tolist()))
    if len(classes) == 1:  # every sample needed the same count
        f = x.shape[1]
        return Controller(classes, [0.0] * f, [1.0] * f, [[0.0] * f], [0.0], len(y))
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
    return Controller([int(c) for c in lr.classes_], scaler.mean_.tolist(), scaler.scale_.tolist(),
                      lr.coef_.tolist(), lr.intercept_.tolist(), len(y))


_CONTROLLERS: dict[str, Controller] = {}
_LOCK = threading.Lock()


def controller_path(model_name: str) -> Path:
    return cache_dir() / "dynaicl" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_name) + ".json")


def save_controller(model_name: str, controller: Controller, disk: bool = True) -> Path | None:
    """Keep ``controller`` for ``model_name`` in memory and (``disk``) under the cache folder."""
    with _LOCK:
        _CONTROLLERS[model_name] = controller
    if not disk:
        return None
    path = controller_path(model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(controller.to_json())
    tmp.replace(path)
    return path


def load_controller(model_name: str) -> Controller | None:
    """The controller fitted for ``model_name`` (memory, then the cache folder), or None."""
    with _LOCK:
        if model_name in _CONTROLLERS:
            return _CONTROLLERS[model_name]
    path = controller_path(model_name)
    if not path.is_file():
        return None
    controller = Controller.from_json(path.read_text())
    with _LOCK:
        _CONTROLLERS[model_name] = controller
    return controller


def forget_controller(model_name: str) -> None:
    """Drop the in-memory controller of ``model_name`` (the file stays)."""
    with _LOCK:
        _CONTROLLERS.pop(model_name, None)


# ----------------------------------------------------------------------------------------- allocation
def prompt_tokens(tokenizer: Any, demos: Demonstrations, chosen: list[int], request: Request) -> int:
    text = build_prompt(tokenizer, demos.document(chosen), request.question, request.answer_prefix, request.prompt)
    return len(encode(tokenizer, text))


def allocate(tokenizer: Any, demos: Demonstrations, request: Request, count: int, budget: int,
             max_demos: int = 0) -> tuple[list[int], int]:
    """The demonstrations to show (indices, most relevant first) and the prompt's tokens: the ``count`` most
    relevant (ALL: every one; capped by ``max_demos`` when set), then as many of them as fit ``budget``
    prompt tokens (binary search: the prompt grows with each demonstration). InputError when even the
    prompt without demonstrations is over the budget."""
    ranked = rank_demos(demos, request.question)
    want = len(ranked) if count == ALL else min(count, len(ranked))
    if max_demos:
        want = min(want, max_demos)
    lo_tokens = prompt_tokens(tokenizer, demos, [], request)
    if lo_tokens > budget:
        raise InputError(f"the prompt without demonstrations is {lo_tokens:,} tokens, over dynaicl's budget of "
                         f"{budget:,}; raise budget (dynaicl:budget=...)")
    lo, hi, best = 0, want, lo_tokens  # lo demonstrations fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = prompt_tokens(tokenizer, demos, ranked[:mid], request)
        if n <= budget:
            lo, best = mid, n
        else:
            hi = mid - 1
    return ranked[:lo], best


# ------------------------------------------------------------------------------------------ calibration
@dataclasses.dataclass
class CalibrationSample:
    """One calibration query: a document of demonstrations, a question and its right answers."""

    document: str
    question: str
    answer_prefix: str
    references: list[str]
    max_new_tokens: int = 12


def _default_judge(sample: CalibrationSample, count: int, prediction: str) -> bool:
    return any(r.lower() in prediction.lower() for r in sample.references)


def calibrate(engine: EngineLike, samples: Sequence[CalibrationSample], plan: Any = None, budget: int = 2048,
              counts: Sequence[int] = COUNTS, judge: Callable[[CalibrationSample, int, str], bool] | None = None,
              prompt: str = "auto", save: bool = True, progress: Callable[[int, int], None] | None = None
              ) -> Controller:
    """Fit the controller of ``engine``'s model: each sample answered with each of ``counts`` (ascending, ALL
    last) until ``judge(sample, count, prediction)`` (default: a reference in the prediction) says it is
    right; its class is that count (else the last). Saved for the model (memory; ``save``: and disk)."""
    carried = Plan.from_spec([m for m in Plan.from_spec(plan).methods if m.slot != "reader"])
    judge = judge or _default_judge
    order = sorted(counts, key=lambda c: math.inf if c == ALL else c)
    feats: list[list[float]] = []
    needed: list[int] = []
    for i, sample in enumerate(samples):
        demos = parse_demonstrations(sample.document)
        request = Request(sample.document, sample.question, sample.max_new_tokens, sample.answer_prefix,
                          prompt=prompt)
        feats.append(query_features(demos, sample.question, engine.tokenizer))
        label = order[-1]
        for count in order:
            chosen, _ = allocate(engine.tokenizer, demos, request, count, budget)
            result = answer_with(engine, carried, request, demos.document(chosen), progress=False)
            if judge(sample, count, result.answer):
                label = count
                break
        needed.append(label)
        if progress is not None:
            progress(i + 1, len(samples))
    controller = fit_controller(feats, needed)
    save_controller(engine.info.name, controller, disk=save)
    return controller


# ------------------------------------------------------------------------------------------- the reader
@dataclasses.dataclass
class DynaIclReader:
    """Predict the number of demonstrations, keep the most relevant within the budget, answer."""

    budget: int = 2048
    max_demos: int = 0
    name = "dynaicl"

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        carried = Plan.from_spec([m for m in getattr(plan, "methods", []) if m.slot != "reader"])
        text = full_text(materialize(request.document))
        try:
            demos = parse_demonstrations(text)
        except InputError as exc:
            return plain_read(engine, carried, dataclasses.replace(request, document=text), progress, "dynaicl",
                              f"{exc}; read the whole document instead")
        controller = load_controller(engine.info.name)
        if controller is None:
            predicted = ALL
            how = (f"none fitted for {engine.info.name}: fallback, as many demonstrations as fit the budget "
                   "(fit one with benchmarks/icl_methods.py --calibrate)")
        else:
            predicted = controller.predict(query_features(demos, request.question, engine.tokenizer))
            how = f"fitted ({controller.samples} samples)"
        chosen, tokens = allocate(engine.tokenizer, demos, request, predicted, self.budget, self.max_demos)
        result = answer_with(engine, carried, request, demos.document(chosen), progress)
        result.extra["dynaicl"] = {"pairs": len(demos.pairs), "predicted": predicted, "kept": len(chosen),
                                   "prompt_tokens": tokens, "budget": self.budget, "controller": how}
        return result
