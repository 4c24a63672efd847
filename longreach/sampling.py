"""Choosing the next token: greedy or sampled (temperature, top-p, seed), log-probabilities, cancellation.

::

    sampling = Sampling(temperature=0.7, top_p=0.9, seed=1, top_logprobs=2)   # validated, one-line errors
    gen = make_generator(sampling, device)             # a seeded torch.Generator (None: no seed / greedy)
    token = pick(logits, sampling, gen)                # logits (V,) -> token id
    step = step_logprobs(logits, token, k)             # Step(token, its logprob, the k most likely)
    cancel = CancelToken(); cancel.cancel("client went away"); cancel.check()   # raises Cancelled

``temperature`` 0 is greedy: the argmax, exactly what :func:`longreach.engine.greedy_decode` has always
done. Otherwise the logits are divided by the temperature, softmaxed, cut to the top-p nucleus (the
smallest set of most likely tokens whose probabilities sum to at least ``top_p``; never empty) and one
token is drawn with ``torch.multinomial`` from the request's own generator, so a seed gives the same
tokens every time on one device. Log-probabilities are those of the raw logits (temperature 1), as
OpenAI and vLLM report them, whatever the sampling settings.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import torch

from .errors import LongreachError, SettingError

MAX_TEMPERATURE = 2.0
MAX_TOP_LOGPROBS = 20
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens (see the module docstring)."""

    temperature: float = 0.0  # 0 = greedy (argmax); else (0, 2]
    top_p: float = 1.0  # (0, 1]: nucleus of the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # per-request torch.Generator on the model's device; None: torch's global RNG
    top_logprobs: int | None = None  # None: no logprobs; k in 0..20: the chosen token's + the top k

    def __post_init__(self) -> None:
        t = self.temperature
        if not _number(t) or not math.isfinite(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise SettingError(f"temperature must be a number from 0 (greedy) to {MAX_TEMPERATURE:g}, got {t!r}")
        p = self.top_p
        if not _number(p) or not math.isfinite(p) or not 0 < p <= 1:
            raise SettingError(f"top_p must be a number in (0, 1] (1 = no nucleus cut), got {p!r}")
        s = self.seed
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or not SEED_MIN <= s <= SEED_MAX):
            raise SettingError(f"seed must be a whole number from -2**63 to 2**64-1 (or unset), got {s!r}")
        k = self.top_logprobs
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_TOP_LOGPROBS):
            raise SettingError(f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS} (or unset), "
                               f"got {k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


#: the default: greedy decoding, no logprobs (frozen, so one shared instance is safe as a default argument)
GREEDY = Sampling()


@dataclasses.dataclass
class Step:
    """One token: its id and, when asked for, its log-probability and the k most likely alternatives."""

    token_id: int
    logprob: float | None = None  # log_softmax of the RAW logits (temperature 1), like OpenAI / vLLM
    top: list[tuple[int, float]] | None = None  # the k most likely (id, logprob), most likely first


class Cancelled(LongreachError):
    """A request stopped by its :class:`CancelToken` (client gone, timeout, shutdown); str = the reason."""


class CancelToken:
    """A thread-safe stop signal for one request: set from any thread, checked by the engine between
    prefill chunks and before every decode step. The first reason given wins."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = str(reason) or "cancelled"
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        with self._lock:
            return self._reason

    def check(self) -> None:
        """Raise :class:`Cancelled` (its message: the reason) once :meth:`cancel` has been called."""
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled}, reason={self.reason!r})"


# ------------------------------------------------------------------------------------------ functions
def make_generator(sampling: Sampling, device: torch.device | str) -> torch.Generator | None:
    """A fresh generator on ``device`` seeded with ``sampling.seed``; None when greedy or unseeded."""
    if sampling.greedy or sampling.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def distribution(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The sampling distribution of logits (V,): softmax(logits / T) cut to the top-p nucleus and
    renormalised, (V,) float64 (float32 on MPS; zeros outside the nucleus). Needs temperature > 0."""
    if sampling.greedy:
        raise ValueError("distribution() needs temperature > 0 (temperature 0 is the argmax)")
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64  # MPS has no float64
    probs = torch.softmax(logits.to(dtype) / sampling.temperature, dim=-1)  # (V,)
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(descending=True)  # (V,), (V,)
        before = sorted_p.cumsum(0) - sorted_p  # (V,) mass of the more likely tokens
        keep = before < sampling.top_p  # (V,) the smallest prefix whose mass reaches top_p; [0] always
        keep[0] = True
        mask = torch.zeros_like(keep).scatter_(0, order, keep)  # (V,) back in vocabulary order
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """The next token from logits (V,): the argmax when greedy, else a draw from :func:`distribution`."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = distribution(logits, sampling)  # (V,)
    return int(torch.multinomial(probs, 1, generator=generator))


def step_logprobs(logits: torch.Tensor, token_id: int, k: int | None) -> Step:
    """Step for ``token_id`` with its log-probability under the raw logits (V,) and, for k >= 0, the k
    most likely tokens (most likely first); k None: no top list."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    top = None
    if k is not None:
        values, indices = logp.topk(min(k, logp.shape[-1]))  # (k,), (k,) sorted, most likely first
        top = list(zip(indices.tolist(), values.tolist()))
    return Step(int(token_id), float(logp[token_id]), top)


def steps_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int | None) -> list[Step]:
    """:func:`step_logprobs` for many positions at once: logits (T, V), token_ids (T,) -> T steps."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    chosen = logp.gather(1, token_ids[:, None])[:, 0].tolist()  # (T,)
    ids = token_ids.tolist()
    if k is None:
        return [Step(t, lp) for t, lp in zip(ids, chosen)]
    values, indices = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (T, k), (T, k)
    return [Step(t, lp, list(zip(i, v))) for t, lp, i, v in zip(ids, chosen, indices.tolist(), values.tolist())]


__all__ = ["GREEDY", "CancelToken", "Cancelled", "Sampling", "Step", "distribution", "make_generator", "pick",
           "step_logprobs", "steps_logprobs"]
