"""Tasks: a registry of generators + scorers, and the helpers every generator shares.

A task is a small pydantic dataclass (its fields are its parameters, validated like method parameters)
registered with :func:`register_task`.  ``task.generate(tokenizer, length, seed, depth)`` returns a
:class:`Sample` whose *whole prompt* (chat template or completion template, document, question, answer
prefix: exactly what the reader feeds the model) is at most ``length - max_new_tokens`` tokens of the
evaluated model's tokenizer, and as close to it as the haystack's granularity allows (binary search on
haystack units, :func:`fit_units`).  Nothing is ever truncated: a prompt that cannot fit raises
:class:`BenchError`.  ``task.score(sample, prediction)`` returns a float in [0, 1].

Task specs use the method grammar: ``niah_single_2`` or ``niah:haystack=essays,keys=2``.
"""

from __future__ import annotations

import bisect
import contextvars
import dataclasses
import re
from collections.abc import Callable
from typing import Any, ClassVar

import pydantic

from ..errors import LongreachError
from ..prompt import build_prompt, encode
from ..registry import Registry

TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[^\s+,=:]+$")


class BenchError(LongreachError):
    """A task, sweep or results folder that cannot be used as given."""


class SampleRefused(BenchError):
    """One sample a task will not build at this length (e.g. a row of a user's benchmark file whose prompt
    does not fit: refused, never truncated). The runner records it as a refused sample and goes on;
    ``tokens``: the prompt's tokens when they were measured."""

    def __init__(self, message: str, tokens: int | None = None):
        super().__init__(message)
        self.tokens = tokens


@dataclasses.dataclass
class Sample:
    """One generated prompt and what a right answer contains."""

    context: str
    question: str
    answer_prefix: str
    references: list[str]
    meta: dict[str, Any]  # task, spec, length, tokens (real prompt tokens), seed, depth, ...
    max_new_tokens: int = 32
    # decode exactly max_new_tokens steps: a stop token (EOS) does not end decoding, so decode tok/s
    # compares methods on the same number of steps; the prediction scored is still the text before the
    # first stop token (set by the runner from ``BenchConfig.decode_tokens``)
    ignore_eos: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        return cls(**d)


class Task:
    """Base of every task. Subclasses are pydantic dataclasses decorated with :func:`register_task`.

    Class attributes: ``name`` (registry key), ``family`` (file / benchmark it comes from), ``paper``
    (the paper it follows: title and arXiv id), ``summary``,
    ``scorer`` (one line naming the metric), ``uses_depth`` (the sweep varies the needle depth),
    ``kind`` (``"generate"``: answered by the reader; ``"loglik"``: scored from log-likelihoods),
    ``max_new_tokens`` (generation budget, counted inside the requested length), ``version``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the paper (title, arXiv id) or source the task follows; `longreach tasks` shows it
    summary: ClassVar[str] = ""
    scorer: ClassVar[str] = ""
    uses_depth: ClassVar[bool] = False
    kind: ClassVar[str] = "generate"
    higher_is_better: ClassVar[bool] = True
    max_new_tokens: ClassVar[int] = 32
    version: ClassVar[int] = 1

    def generate(self, tokenizer: Any, length: int, seed: int = 0, depth: float | None = 0.5,
                 answer_tokens: int | None = None, **params: Any) -> Sample:
        """A sample whose full prompt fits in ``length`` tokens (answer budget included).

        ``answer_tokens``: tokens kept for the answer instead of the task's ``max_new_tokens`` (the
        sample's ``max_new_tokens`` becomes it), e.g. a sweep that decodes a fixed number of tokens."""
        if params:
            return make_task(self.name, **{**self.params(), **params}).generate(tokenizer, length, seed, depth,
                                                                                answer_tokens)
        if depth is not None and not 0.0 <= float(depth) <= 1.0:
            raise BenchError(f"depth must be within [0, 1], got {depth}")
        answer = self.max_new_tokens if answer_tokens is None else answer_tokens
        budget = length - answer
        if budget < 16:
            raise BenchError(f"length {length} is too short for task {self.name!r} "
                             f"(it generates up to {answer} tokens); use a longer length")
        sample = self._generate(tokenizer, budget, seed, 0.5 if depth is None else float(depth))
        sample.max_new_tokens = answer
        sample.meta.update(task=self.name, spec=self.spec, length=length, seed=seed,
                           depth=depth if self.uses_depth else None)
        if "tokens" not in sample.meta:
            sample.meta["tokens"] = prompt_tokens(tokenizer, sample)
        return sample

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        raise NotImplementedError

    def score(self, sample: Sample, prediction: str) -> float:
        raise NotImplementedError

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Task-specific numbers of a finished cell from its sample records (e.g. ``ppl``); default none."""
        return {}

    # -- a second request per sample (e.g. the same question with no document: beliefs)
    def baseline(self, sample: Sample) -> Sample | None:
        """A second prompt the runner also asks, under the same plan, for ``sample`` (built from the sample
        alone, so a cached sample gives the same one; its ``meta["tokens"]`` set); the answer is stored as
        the record's ``baseline_prediction`` and scored by :meth:`score_pair`. Default None: one request."""
        return None

    def score_pair(self, sample: Sample, prediction: str, baseline_prediction: str | None) -> float:
        """Score of ``prediction`` given the baseline's answer (None: no baseline); default :meth:`score`."""
        return self.score(sample, prediction)

    def answer_meta(self, sample: Sample, prediction: str, baseline_prediction: str | None = None) -> dict[str, Any]:
        """What the task reads from an answer, added to the record's ``meta`` (e.g. parsed stances); default none."""
        return {}

    # -- several questions about one context (the query-agnostic protocol, bench/shared_context.py)
    def questions(self, sample: Sample, k: int) -> list[Sample] | None:
        """Up to ``k`` samples sharing ``sample.context`` exactly, each with its own question, answer prefix,
        references and ``meta["query_index"]`` (0, 1, ...), built from the sample alone (a cached sample
        gives the same ones; see :func:`ask_also`). Default None: the task has one question per context."""
        return None

    # -- description
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        shown = [f"{k}={_fmt(v)}" for k, v in self.params().items() if v != defaults.get(k)]
        return self.name + (":" + ",".join(shown) if shown else "")


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


#: Every task class by name; the built-in ones register when :mod:`longreach.bench.tasks` is imported.
TASKS: Registry[Task] = Registry("task", TASK_NAME_RE, BenchError, builtins="longreach.bench.tasks",
                                 hint="(see `longreach tasks`)")


def register_task(cls: type) -> type:
    """Class decorator: make ``cls`` a validated pydantic dataclass and register it under ``cls.name``."""

    def convert(cls: type) -> type:
        if "__dataclass_fields__" not in cls.__dict__:  # subclasses of a task re-declare their defaults
            from ..spec import bounded_post_init  # numbers finite and bounded, as method parameters

            cls.__post_init__ = bounded_post_init(getattr(cls, "__post_init__", None))
            cls = pydantic.dataclasses.dataclass(cls, config=pydantic.ConfigDict(extra="forbid", allow_inf_nan=False))
        return cls

    return TASKS.register(cls, convert)


def _load_builtin_tasks() -> None:
    TASKS.load()  # imports longreach.bench.tasks once: every built-in task registers itself


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(TASKS)


def parse_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"niah:haystack=essays,keys=2"`` -> ``("niah", {"haystack": "essays", "keys": "2"})``."""
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if not TASK_NAME_RE.match(name):
        raise BenchError(f"bad task name {name!r}: use lower-case letters, digits, '-' and '_'")
    params: dict[str, str] = {}
    if colon:
        for item in rest.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or not _KEY_RE.match(key) or not _VALUE_RE.match(value):
                raise BenchError(f"bad parameter {item.strip()!r} for task {name!r}: write key=value")
            if key in params:
                raise BenchError(f"parameter {key!r} given twice for task {name!r}")
            params[key] = value
    return name, params


def make_task(spec: str, **overrides: Any) -> Task:
    """Build a task from a spec string (``name[:key=value,...]``) and keyword overrides."""
    _load_builtin_tasks()
    name, params = parse_task_spec(spec)
    params = {**params, **overrides}
    cls = TASKS.get(name)
    if cls is None:
        raise BenchError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} (see `longreach tasks`)")
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in params:
        if key not in fields:
            raise BenchError(f"task {name!r} has no parameter {key!r}; its parameters: "
                             f"{', '.join(sorted(fields)) or 'none'}")
    try:
        return cls(**params)
    except pydantic.ValidationError as exc:
        from ..units import shown_value

        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        if not where:  # a check in __post_init__: its message names the parameters
            raise BenchError(f"invalid parameters for task {name}: {msg}") from None
        raise BenchError(f"invalid {name}:{where}: {msg} (got {shown_value(err.get('input'))})") from None
    except ValueError as exc:
        raise BenchError(f"invalid parameters for task {name!r}: {exc}") from None


def describe_tasks() -> list[dict[str, Any]]:
    """Rows for ``longreach tasks``: name, family, paper, summary, scorer, parameters with defaults."""
    _load_builtin_tasks()
    rows = []
    for name in sorted(TASKS):
        cls = TASKS[name]
        params = [{"name": f.name, "default": f.default if f.default is not dataclasses.MISSING else None}
                  for f in dataclasses.fields(cls)]
        rows.append({"name": name, "family": cls.family, "paper": cls.paper, "summary": cls.summary, "scorer": cls.scorer,
                     "uses_depth": cls.uses_depth, "kind": cls.kind, "params": params})
    return rows


# ------------------------------------------------------------------------------------------- sizing
#: Prompt format the reader will use (BASE[+MOD...], longreach.prompt); the runner sets it for a sweep, to
#: the concrete format ``auto`` resolves to for the sweep's model (sizing and sample caching follow it).
PROMPT_FORMAT: contextvars.ContextVar[str] = contextvars.ContextVar("prompt_format", default="auto")


def prompt_tokens(tokenizer: Any, sample: Sample) -> int:
    """Tokens of the full prompt the reader will feed for ``sample`` (template, BOS included)."""
    text = build_prompt(tokenizer, sample.context, sample.question, sample.answer_prefix, PROMPT_FORMAT.get())
    return len(encode(tokenizer, text))


def fit_units(build: Callable[[int], Sample], tokenizer: Any, budget: int, limit: int | None = None,
              what: str = "haystack units",
              counter: Callable[[Any, Sample], int] | None = None) -> tuple[int, Sample, int]:
    """Largest ``n`` (<= ``limit``) whose sample ``build(n)`` has a full prompt of at most ``budget`` tokens.

    Returns ``(n, sample, tokens)``. Doubling then bisection: O(log n) tokenizations.
    """

    def count(n: int) -> int:
        return (counter or prompt_tokens)(tokenizer, build(n))

    base = count(0)
    if base > budget:
        raise BenchError(f"the prompt without any {what} is already {base} tokens, more than the "
                         f"{budget} available; use a longer length")

    def ok(n: int) -> bool:
        return (limit is None or n <= limit) and count(n) <= budget

    lo, hi = 0, 1
    while ok(hi):  # grow until too long (or past the limit)
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # largest n that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    sample = build(lo)
    return lo, sample, count(lo)


def insert_at_depths(units: list[str], needles: list[str], depths: list[float]) -> tuple[list[str], list[int]]:
    """Insert each needle at the unit boundary nearest its relative depth, measured in characters.

    Returns the new unit list and the index of each needle in it.
    """
    cum = [0]
    for u in units:
        cum.append(cum[-1] + len(u) + 1)
    slots = []
    for d in depths:
        target = d * cum[-1]
        at = bisect.bisect_left(cum, target)
        if at > 0 and (at == len(cum) or target - cum[at - 1] <= cum[at] - target):
            at -= 1
        slots.append(at)
    out: list[str] = []
    order = sorted(range(len(needles)), key=lambda i: (slots[i], i))
    where = [0] * len(needles)
    k = 0
    for pos in range(len(units) + 1):
        while k < len(order) and slots[order[k]] == pos:
            where[order[k]] = len(out)
            out.append(needles[order[k]])
            k += 1
        if pos < len(units):
            out.append(units[pos])
    return out, where


def token_depth(tokenizer: Any, context: str, needle: str) -> float:
    """Where ``needle`` starts in ``context``: tokens before it / tokens of the context without it."""
    at = context.find(needle)
    if at < 0:
        return float("nan")
    total = len(tokenizer(context, add_special_tokens=False).input_ids)
    before = len(tokenizer(context[:at], add_special_tokens=False).input_ids)
    own = len(tokenizer(needle, add_special_tokens=False).input_ids)
    return before / max(1, total - own)


# ------------------------------------------------------------------------------------------ scoring
def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER: mean over references of (reference in prediction), case-insensitive."""
    if not references:
        return 0.0
    pred = normalize(prediction)
    return sum(normalize(r) in pred for r in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER QA: 1 if any reference is in the prediction."""
    pred = normalize(prediction)
    return float(any(normalize(r) in pred for r in references))


def f1(predicted: set[Any], gold: set[Any]) -> float:
    if not predicted and not gold:
        return 1.0
    tp = len(predicted & gold)
    if tp == 0:
        return 0.0
    p, r = tp / len(predicted), tp / len(gold)
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------- more questions, one context
def ask_also(sample: Sample, index: int, question: str, answer_prefix: str, references: list[str],
             **meta: Any) -> Sample:
    """Question ``index`` about ``sample``'s context (for :meth:`Task.questions`): the same context, task
    meta and answer budget; its own question, prefix and references. ``meta["tokens"]`` is dropped (the
    runner measures the new prompt) and ``meta["query_index"] = index``."""
    kept = {k: v for k, v in sample.meta.items() if k != "tokens"}
    return dataclasses.replace(sample, question=question, answer_prefix=answer_prefix,
                               references=list(references), meta={**kept, **meta, "query_index": index})


def spread(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly from the first to the last (fewer when n < k)."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
