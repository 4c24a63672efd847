"""The Engine: every request on a loaded model goes through it, start to end.

::

    engine = Engine.for_model(lm)        # the model's engine; every Engine(lm) of one model shares its lock
    result = engine.run(plan, request)   # whole request: checks, memory, the plan's reader -> ReadResult
    engine.check_request(plan, input_tokens, max_new_tokens, chunk_size=2048, memory_limit=None)
    engine.refuse(plan, tokens, chunk_size=2048, memory_limit=None) -> str | None   # same, as a reason
    ids = engine.generate(plan, ids, max_new_tokens, stop=None, chunk_size=2048)    # greedy, token ids
    nll = engine.loglik(plan, ids, chunk=512)          # (n-1,) float64 per-token NLL (perplexity)
    c = engine.complete(plan, ids, max_new_tokens, sampling=Sampling(), stop_ids=None, prompt_logprobs=None,
                        on_step=None, cancel=None, prefix_cache=None, chunk_size=2048, memory_limit=None)
                                                       # the server's request: token ids -> Completion

    with engine.session(plan, total_tokens) as s:      # lock, install the plan, undo it at the end
        cache = s.make_cache(prompt, ids, question)    # the plan's cache (or a DynamicCache); prompt /
                                                       #   ids / question: where a question-agnostic
                                                       #   cache must stop compressing (optional)
        logits = s.prefill(ids, cache, chunk_size, progress=False, start=0, cancel=None)   # (1, V)
        logits, steps = s.prefill_logprobs(ids, cache, chunk_size, top_k, cancel=None)    # + every prompt
                                                       #   token's logprob and top k: [None, Step, ...]
        for step in s.stream(cache, logits, position, max_new_tokens, stop_ids, sampling, cancel): ...
        out_ids = s.decode(cache, logits, position, max_new_tokens, stop_ids)  # list[int] (greedy default)
        nll = s.loglik(ids, chunk)                     # (n-1,) float64
        attn = s.probe(ids, layer, fn)                 # one pass stopped at ``layer``'s attention:
                                                       #   fn(module, hidden, cos, sin) -> result

``plan`` is a :class:`~longreach.spec.Plan` or a spec string. ``total_tokens`` is the request's input +
max new tokens (length-dependent methods such as ``dynamic-ntk`` fix their frequencies from it).

**Nothing outlives a request.** A session installs, in this order, the cache method's hooks (e.g. the
query-capture pre-hooks of SnapKV / H2O, KVQuant's rotation hooks), the rope method (inverse
frequencies) and the attention method (:mod:`longreach.methods.attention.base`: one function per method
class, registered once per process; the per-request closure lives in a weak map keyed by the attention
module), then undoes all of it in reverse order when the block ends, even on an error: no hook, buffer,
attention implementation or registry entry is left, and methods keep no per-request state.

**Threads.** A per-model reader-writer lock (:class:`ModelLock`): a session whose plan changes the
model (rope / attention methods, cache methods that need hooks, InfiniRetri's scoring probe) holds it
exclusively; plain sessions (``none``, cache methods without hooks) share it. A request that has to
wait logs one INFO line ``waiting for <spec> on <model>``. Sessions do not nest in one thread.

**Devices.** Every tensor the engine creates (token ids, positions) is created on the model's device.

**Completions** (:meth:`Engine.complete`, what ``longreach serve`` runs). Refusals come before any work:
a reader plan (``Engine.run`` is its path), empty or out-of-vocabulary ids, then :meth:`check_request`
(TooLongError / MemoryBudgetError, one line) and the plan's checks. ``max_new_tokens`` may be 0 (echo
scoring: prefill only, ``finish_reason`` "length"); a stop id ends with "stop" and is not returned, as
does ``on_step(step)`` returning True. ``prompt_logprobs=k`` keeps every prompt position's logits, one
chunk of at most :data:`PROMPT_LOGPROB_CHUNK` positions at a time (never a (T, V) tensor for the whole
prompt): entry i is log p(ids[i] | ids[:i]) + its top k, entry 0 None.

**Sampling** (:mod:`longreach.sampling`): ``Sampling(temperature, top_p, seed, top_logprobs)``; temperature
0 is the argmax (exactly the greedy path), otherwise temperature, top-p nucleus and ``torch.multinomial``
with a per-request generator seeded on the model's device (same seed, same tokens). Log-probabilities
are those of the raw logits (temperature 1), as OpenAI and vLLM report them.

**Cancellation.** A :class:`~longreach.sampling.CancelToken` (thread-safe, set from any thread) is checked
before every prefill chunk and every decode step; :class:`~longreach.sampling.Cancelled` (its message: the
reason) then unwinds the session, so the plan is undone as after any error.

**Prefix reuse** (:class:`~longreach.prefix_cache.PrefixCache`). When ``prefix_cache`` is given, no
``prompt_logprobs`` are asked for and :meth:`Plan.reuses_prefix` holds (every method's K/V for a token
depend only on the tokens up to it: no cache method, no length-dependent rope, every layer full
attention), the request starts from a copy of the cache of the longest earlier prompt it shares at
least ``min_tokens`` tokens with (entries keyed by ``(plan.spec, id(model))`` + the token prefix) and
prefills only the rest at positions L..; afterwards its cache, cropped to the prompt, is stored (LRU by
bytes). ``Completion.cached_tokens`` = L. Greedy tokens are those of a request without the cache (the
suffix is prefilled as its own chunk, so logits may differ by float rounding, as between chunk sizes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import InputError, LongreachError, SettingError, TooLongError
from .memory import available_bytes, cache_bytes, check_fits, estimate_request
from .prefix_cache import PrefixCache, crop_to, held_bytes, plan_key
from .prompt import resolve_format
from .qk import attention_modules, rotary_inputs
from .readers import ReadResult, Request
from .sampling import (
    GREEDY,
    MAX_TOP_LOGPROBS,
    CancelToken,
    Sampling,
    Step,
    make_generator,
    pick,
    step_logprobs,
    steps_logprobs,
)
from .spec import Plan
from .units import format_bytes

log = logging.getLogger("longreach")

#: installation order inside a session: the cache's hooks see the model as loaded (KVQuant calibrates
#: on it), attention methods read the (possibly replaced) rotary frequencies when installed.
INSTALL_ORDER = ("cache", "rope", "attention")


class SessionError(LongreachError):
    """A session used the wrong way (nested in one thread, a probe under a shared lock)."""


# ------------------------------------------------------------------------------------------- device
def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a model without parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------- lock
class ModelLock:
    """Reader-writer lock of one model: many shared holders or one exclusive holder.

    A waiting exclusive request blocks new shared ones (no writer starvation). A thread that already
    holds the lock cannot take it again (sessions do not nest): :class:`SessionError`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._holders: set[int] = set()

    def _free(self, exclusive: bool) -> bool:
        if exclusive:
            return not self._exclusive and self._shared == 0
        return not self._exclusive and self._waiting_exclusive == 0

    @contextmanager
    def hold(self, exclusive: bool, what: str = "a request") -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if me in self._holders:
                raise SessionError("this thread already holds a session on this model; close it before "
                                   "opening another (sessions do not nest)")
            if not self._free(exclusive):
                log.info("waiting for %s", what)
                if exclusive:
                    self._waiting_exclusive += 1
                try:
                    self._cond.wait_for(lambda: self._free(exclusive))
                finally:
                    if exclusive:
                        self._waiting_exclusive -= 1
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
            self._holders.add(me)
        try:
            yield
        finally:
            with self._cond:
                self._holders.discard(me)
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> ModelLock
# id(model) -> Engine, weakly: an engine holds its model, so a model-keyed map would keep both forever
_ENGINES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.RLock()


def lock_for(model: Any) -> ModelLock:
    """The one lock of ``model`` (created on first use, dropped with the model)."""
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock


# ------------------------------------------------------------------------------------- model passes
@torch.inference_mode()
def prefill(model: Any, ids: list[int], cache: Any, chunk_size: int, progress: bool = False,
            start: int = 0, cancel: CancelToken | None = None) -> torch.Tensor:
    """Feed ``ids`` into ``cache`` chunk by chunk at positions ``start..``; logits of the last one, (1, V).

    Chunked prefill keeps activations bounded by the chunk (not the document) and computes logits for
    the last position only; it gives the same next-token logits as one pass over the whole prompt.
    ``cancel`` is checked before every chunk (:class:`~longreach.sampling.Cancelled`).
    """
    n = len(ids)
    device = model_device(model)
    tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, n)
    bar = tqdm(total=n, unit="tok", unit_scale=True, desc="prefill", disable=not progress, leave=False)
    logits = None
    for lo in range(0, n, chunk_size):
        if cancel is not None:
            cancel.check()
        hi = min(n, lo + chunk_size)
        positions = torch.arange(start + lo, start + hi, device=device).unsqueeze(0)  # (1, c)
        out = model(input_ids=tokens[:, lo:hi], position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1, :]  # (1, V)
        bar.update(hi - lo)
    bar.close()
    if logits is None:
        raise ValueError("prefill needs at least one token")
    return logits


@torch.inference_mode()
def prefill_logprobs(model: Any, ids: list[int], cache: Any, chunk_size: int, top_k: int | None,
                     cancel: CancelToken | None = None) -> tuple[torch.Tensor, list[Step | None]]:
    """Prefill ``ids`` into ``cache`` (positions 0..) keeping every position's logits, chunk by chunk:
    (last logits (1, V), steps) with steps[0] None and steps[i] = Step(ids[i], log p(ids[i] | ids[:i]),
    the ``top_k`` most likely there). Only one chunk's logits (c, V) exist at a time."""
    n = len(ids)
    if n == 0:
        raise ValueError("prefill needs at least one token")
    device = model_device(model)
    tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, n)
    steps: list[Step | None] = [None]
    logits = None
    for lo in range(0, n, chunk_size):
        if cancel is not None:
            cancel.check()
        hi = min(n, lo + chunk_size)
        positions = torch.arange(lo, hi, device=device).unsqueeze(0)  # (1, c)
        out = model(input_ids=tokens[:, lo:hi], position_ids=positions, cache=cache, use_cache=True)
        chunk_logits = out.logits[0]  # (c, V): position j predicts token lo + j + 1
        targets = tokens[0, lo + 1:hi + 1]  # (c',) c' = c, or c - 1 in the last chunk
        if len(targets):
            steps.extend(steps_logprobs(chunk_logits[: len(targets)], targets, top_k))
        logits = chunk_logits[-1:].clone()  # (1, V)
        del out, chunk_logits
    assert logits is not None
    return logits, steps


def decode_steps(model: Any, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
                 stop: Iterable[int], sampling: Sampling = GREEDY, cancel: CancelToken | None = None
                 ) -> Iterator[Step]:
    """Decode from ``logits`` (1, V) with the filled ``cache``, the first new token at ``position``: yield
    one :class:`~longreach.sampling.Step` per token (logprobs when ``sampling.top_logprobs`` is set); stop
    before any id in ``stop`` (never yielded) or after ``max_new_tokens``. ``cancel`` is checked before
    every step. The last token is not fed back (its logits are never needed)."""
    stop = set(stop)
    device = model_device(model)
    gen = make_generator(sampling, logits.device)
    for step in range(max_new_tokens):
        if cancel is not None:
            cancel.check()
        next_id = pick(logits[0], sampling, gen)
        if next_id in stop:
            return
        if sampling.top_logprobs is None:
            yield Step(next_id)
        else:
            yield step_logprobs(logits[0], next_id, sampling.top_logprobs)
        if step == max_new_tokens - 1:
            return
        if cancel is not None:
            cancel.check()
        with torch.inference_mode():
            result = model(input_ids=torch.tensor([[next_id]], device=device),
                           position_ids=torch.tensor([[position + step]], device=device),
                           cache=cache, use_cache=True, logits_to_keep=1)
        logits = result.logits[:, -1, :]  # (1, V)


def greedy_decode(model: Any, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
                  stop: Iterable[int]) -> list[int]:
    """Greedy decoding from ``logits`` (1, V) with the filled ``cache``; stops at any id in ``stop``."""
    return [s.token_id for s in decode_steps(model, cache, logits, position, max_new_tokens, stop)]


@torch.inference_mode()
def token_nll(model: Any, ids: list[int], cache: Any, chunk: int) -> torch.Tensor:
    """NLL of every token of ``ids`` given its prefix, fed ``chunk`` tokens at a time: (n-1,) float64."""
    n = len(ids)
    device = model_device(model)
    tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, n)
    nll = torch.zeros(max(0, n - 1), dtype=torch.float64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        out = model(input_ids=tokens[:, lo:hi], position_ids=torch.arange(lo, hi, device=device).unsqueeze(0),
                    cache=cache, use_cache=True)
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (c, V)
        targets = tokens[0, lo + 1:hi + 1]  # (c',) next tokens inside the text
        nll[lo:lo + len(targets)] = -logp[: len(targets)].gather(1, targets[:, None])[:, 0].double().cpu()
    return nll


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the model's / tokenizer's EOS and the usual end-of-turn tokens."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    for tok in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and tid != unk:
            ids.add(tid)
    return ids


def _token_ids(ids: Iterable[Any]) -> list[int]:
    """``ids`` as a list of Python ints (numpy / torch integers included); InputError for anything else."""
    out = []
    for t in ids:
        if isinstance(t, bool):
            raise InputError("token ids must be whole numbers, got a boolean")
        try:
            out.append(operator.index(t))
        except TypeError:
            raise InputError(f"token ids must be whole numbers, got {type(t).__name__}") from None
    return out


@dataclasses.dataclass
class Completion:
    """The result of :meth:`Engine.complete`: token ids in, steps out (no text: the caller detokenizes)."""

    steps: list[Step]  # generated tokens (a stop id is never included)
    finish_reason: str  # "stop" (a stop id, or on_step returned True) | "length" (max_new_tokens reached)
    prompt_tokens: int
    prompt_steps: list[Step | None] | None  # with prompt_logprobs=k: [None, Step(ids[1]), ...]; else None
    cached_tokens: int  # prompt tokens taken from the prefix cache (not prefilled)
    prefill_seconds: float
    decode_seconds: float
    kv_cache_bytes: int  # bytes the request's cache held at its end

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]


#: prefill chunk (tokens) when every prompt position's logits are kept (prompt_logprobs): bounds the
#: (chunk, vocab) logits, e.g. 256 x 49k x 4 bytes = 50 MB for SmolLM2
PROMPT_LOGPROB_CHUNK = 256


class _Stop(Exception):
    """Raised by a probe hook once it has its result: the rest of the forward pass is not needed."""


# ------------------------------------------------------------------------------------------ session
class Session:
    """One installed plan on one model, inside :meth:`Engine.session` (see the module docstring)."""

    def __init__(self, engine: Engine, plan: Plan, total_tokens: int | None, exclusive: bool):
        self.engine = engine
        self.plan = plan
        self.total_tokens = total_tokens
        self.exclusive = exclusive

    @property
    def model(self) -> Any:
        return self.engine.model

    def make_cache(self, prompt: str | None = None, ids: list[int] | None = None,
                   question: str | None = None) -> Any:
        """A fresh cache for this request: the plan's cache method's, else a ``DynamicCache``.

        With ``prompt``, ``ids`` and ``question``, a compressing cache learns where the question starts
        (question-agnostic compression never scores with, nor evicts, the question).
        """
        m = self.plan.cache_method()
        if m is None:
            from transformers import DynamicCache

            return DynamicCache(config=self.model.config)
        cache = m.make_cache(self.model, self.engine.info)
        if prompt is not None and ids is not None and question is not None and hasattr(cache, "prepare"):
            cache.prepare(self.engine.tokenizer, prompt, ids, question)
        return cache

    def prefill(self, ids: list[int], cache: Any, chunk_size: int, progress: bool = False,
                start: int = 0, cancel: CancelToken | None = None) -> torch.Tensor:
        """Feed ``ids`` into ``cache`` at positions ``start..``; the last position's logits, (1, V)."""
        return prefill(self.model, ids, cache, chunk_size, progress=progress, start=start, cancel=cancel)

    def prefill_logprobs(self, ids: list[int], cache: Any, chunk_size: int, top_k: int | None,
                         cancel: CancelToken | None = None) -> tuple[torch.Tensor, list[Step | None]]:
        """Prefill ``ids`` (positions 0..) and score every prompt token: (last logits (1, V), steps) with
        steps[0] None and steps[i] = log p(ids[i] | ids[:i]) + its top ``top_k`` (:func:`prefill_logprobs`)."""
        return prefill_logprobs(self.model, ids, cache, chunk_size, top_k, cancel)

    def stream(self, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
               stop_ids: Iterable[int] | None = None, sampling: Sampling = GREEDY,
               cancel: CancelToken | None = None) -> Iterator[Step]:
        """Decode after ``logits`` (1, V) at ``position``, one :class:`Step` per token as it is made
        (:func:`decode_steps`); ``stop_ids`` default: the EOS ids. Consume it inside the session."""
        stop = self.engine.eos_ids() if stop_ids is None else stop_ids
        return decode_steps(self.model, cache, logits, position, max_new_tokens, stop, sampling, cancel)

    def decode(self, cache: Any, logits: torch.Tensor, position: int, max_new_tokens: int,
               stop_ids: Iterable[int] | None = None, sampling: Sampling = GREEDY,
               cancel: CancelToken | None = None) -> list[int]:
        """Decoding after ``logits`` (1, V) at ``position`` (greedy unless ``sampling`` says otherwise);
        ``stop_ids`` default: the EOS ids. The token ids, stop id excluded."""
        return [s.token_id for s in self.stream(cache, logits, position, max_new_tokens, stop_ids, sampling, cancel)]

    def loglik(self, ids: list[int], chunk: int = 512, cache: Any = None) -> torch.Tensor:
        """Per-token NLL of ``ids`` (each given its prefix, under the plan): (n-1,) float64."""
        return token_nll(self.model, ids, self.make_cache() if cache is None else cache, chunk)

    @torch.inference_mode()
    def probe(self, ids: list[int], layer: int | Sequence[int],
              fn: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> Any:
        """One forward pass over ``ids`` (no cache) that stops at decoder layer ``layer``'s attention.

        ``fn(module, hidden (1, T, hidden), cos (1, T, D), sin (1, T, D))`` gets the attention module and
        its inputs and returns the result. With a list of layers, ``fn`` runs at each of them and the pass
        stops at the last one; the result is then ``{layer: fn's result}``. The pre-hooks exist only
        during the pass.
        """
        if not self.exclusive:
            raise SessionError("probe() needs an exclusive session: the plan's reader must declare that "
                               "it changes the model (Method.modifies_model)")
        layers = [layer] if isinstance(layer, int) else sorted(set(layer))
        if not layers:
            raise ValueError("probe() needs at least one layer")
        box: dict[int, Any] = {}
        modules = attention_modules(self.model)  # any architecture (GPT-2: h[i].attn)

        def hook_for(index: int) -> Callable[..., None]:
            def hook(module: Any, args: tuple, kwargs: dict) -> None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                cos, sin = rotary_inputs(args, kwargs)  # (None, None) on a model without RoPE (GPT-2)
                box[index] = fn(module, hidden, cos, sin)
                if index == layers[-1]:
                    raise _Stop
            return hook

        device = self.engine.device
        handles = [modules[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in layers]
        try:
            self.model(input_ids=torch.tensor([ids], device=device),
                       position_ids=torch.arange(len(ids), device=device).unsqueeze(0),
                       use_cache=False, logits_to_keep=1)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i in layers if i not in box]
        if missing:
            raise RuntimeError(f"decoder layer {missing[0]}'s attention was never called")
        return box[layers[0]] if isinstance(layer, int) else box


# ------------------------------------------------------------------------------------------- engine
class Engine:
    """Runs requests on one :class:`~longreach.models.LoadedModel` (see the module docstring)."""

    def __init__(self, lm: Any):
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.info = lm.info
        self.lock = lock_for(lm.model)
        self._eos: set[int] | None = None

    @classmethod
    def for_model(cls, lm: Any) -> Engine:
        """The engine of ``lm`` (the same object while anyone holds it; every engine of one model object
        shares that model's lock, so ``Engine(lm)`` is safe too)."""
        with _REGISTRY_LOCK:
            engine = _ENGINES.get(id(lm.model))
            if engine is None or engine.lm is not lm:
                engine = cls(lm)
                _ENGINES[id(lm.model)] = engine
            return engine

    @property
    def device(self) -> torch.device:
        device = getattr(self.lm, "device", None)
        return device if isinstance(device, torch.device) else model_device(self.model)

    @property
    def name(self) -> str:
        return self.info.name

    def eos_ids(self) -> set[int]:
        if self._eos is None:
            self._eos = eos_ids(self.model, self.tokenizer)
        return set(self._eos)

    # -- checks
    def check_length(self, plan: Plan | str, input_tokens: int, max_new_tokens: int) -> None:
        """Refuse input the plan cannot read instead of truncating it; suggest what would read it."""
        plan = Plan.from_spec(plan)
        reach = plan.reach(self.info)
        needed = input_tokens + max_new_tokens
        if reach is None or needed <= reach:
            return
        from .spec import REGISTRY, method_names

        method_names()
        extenders = sorted(n for n, cls in REGISTRY.items() if cls.extends)
        suggestion = self.suggest_method(needed)
        if suggestion is not None:
            hint = f"add a method that reads it, e.g. --method {suggestion} (all that extend: {', '.join(extenders)})"
        elif extenders:
            hint = f"add a method that extends it, e.g. --method {extenders[0]} (all: {', '.join(extenders)})"
        else:
            hint = "shorten the document (no context-extending method is installed in this version)"
        what = f"{self.info.name} reads {reach:,} tokens" + (f" with {plan.spec}" if plan.methods else "")
        raise TooLongError(f"input is {input_tokens:,} tokens (+{max_new_tokens} to generate) but {what}; {hint}",
                           needed=needed, reach=reach, suggestion=suggestion)

    def suggest_method(self, needed: int) -> str | None:
        """A method spec checked to read ``needed`` tokens on this model (a YaRN factor that covers it, else
        the unbounded InfiniRetri reader), or None."""
        factor = max(2, math.ceil(needed / self.info.window))
        for spec in (f"yarn:factor={factor}", "infiniretri"):
            try:
                plan = Plan.from_spec(spec)
                plan.check(self.info)
            except LongreachError:
                continue
            reach = plan.reach(self.info)
            if reach is None or reach >= needed:
                return spec
        return None

    def check_memory(self, plan: Plan | str, tokens: int, chunk_size: int = 2048,
                     memory_limit: int | None = None) -> None:
        """Refuse (MemoryBudgetError) a request of ``tokens`` whose estimate exceeds the memory available."""
        plan = Plan.from_spec(plan)
        estimate = estimate_request(self.info, tokens, chunk_size, plan.kv_cache_bytes(self.info, tokens))
        check_fits(estimate, tokens, memory_limit, device=self.device)

    def check_request(self, plan: Plan | str, input_tokens: int, max_new_tokens: int, chunk_size: int = 2048,
                      memory_limit: int | None = None) -> None:
        """Length (the plan's reach) and memory pre-checks of a request; raises one-line errors."""
        self.check_length(plan, input_tokens, max_new_tokens)
        self.check_memory(plan, input_tokens + max_new_tokens, chunk_size, memory_limit)

    def refuse(self, plan: Plan | str, tokens: int, chunk_size: int = 2048,
               memory_limit: int | None = None) -> str | None:
        """A one-line reason why a request of ``tokens`` cannot run under ``plan``; None if it can."""
        plan = Plan.from_spec(plan)
        plan.check(self.info)
        reach = plan.reach(self.info)
        if reach is not None and tokens > reach:
            return f"{tokens:,} tokens is beyond what {self.info.name} reads with {plan.spec} ({reach:,})"
        held = plan.held_tokens(self.info, tokens)  # a streaming reader holds one pass at a time
        est = estimate_request(self.info, held, chunk_size, plan.kv_cache_bytes(self.info, held))
        budget = memory_limit if memory_limit is not None else available_bytes(self.device)
        if est.total > budget:
            return (f"{tokens:,} tokens need about {format_bytes(est.total)} but {format_bytes(budget)} is "
                    f"available (memory pre-check)")
        return None

    # -- sessions
    def changes_model(self, plan: Plan) -> bool:
        """True when ``plan`` changes the model for its request (it then holds the lock exclusively)."""
        return any(m.modifies_model(self.info) for m in plan.methods)

    @contextmanager
    def session(self, plan: Plan | str, total_tokens: int | None = None) -> Iterator[Session]:
        """Lock the model, install ``plan`` (cache hooks, rope, attention), yield a :class:`Session`, undo."""
        plan = Plan.from_spec(plan)
        exclusive = self.changes_model(plan)
        with self.lock.hold(exclusive, f"{plan.spec} on {self.info.name}"), ExitStack() as stack:
            for slot in INSTALL_ORDER:
                m = plan.get(slot)
                if m is None:
                    continue
                undo = m.install(self.model, self.info, total_tokens)
                if undo is not None:
                    stack.callback(undo)
            yield Session(self, plan, total_tokens, exclusive)

    # -- whole requests
    def run(self, plan: Plan | str, request: Request, progress: bool = False,
            prefix_cache: PrefixCache | None = None) -> ReadResult:
        """One whole request: the plan's checks, then its reader (default: chunked prefill + greedy).

        ``prefix_cache`` (plans without a reader only): the default reader starts from the longest prompt
        prefix it holds and stores the prompt's cache afterwards, when :meth:`Plan.reuses_prefix` allows it
        (as :meth:`complete`); a reader that reads its chunks twice (``agents``) passes one."""
        plan = Plan.from_spec(plan)
        plan.check(self.info)
        # every reader sees a concrete prompt format: "auto" becomes this model's measured one here
        fmt = resolve_format(request.prompt, self.info.name, self.info.chat_template)
        if fmt != request.prompt:
            request = dataclasses.replace(request, prompt=fmt)
        if prefix_cache is None:
            return plan.make_reader().read(self, plan, request, progress=progress)
        if plan.get("reader") is not None:
            raise SettingError(f"prefix_cache is for plain reads; {plan.get('reader').name} is a reader method "
                               "(give prefix_cache=None)")
        from .readers.chunked import ChunkedReader

        return ChunkedReader(prefix_cache=prefix_cache).read(self, plan, request, progress=progress)

    def generate(self, plan: Plan | str, ids: list[int], max_new_tokens: int, stop: Iterable[int] | None = None,
                 chunk_size: int = 2048) -> list[int]:
        """Greedy continuation of the token ids ``ids`` under ``plan`` (no reader, no checks)."""
        with self.session(plan, len(ids) + max_new_tokens) as s:
            cache = s.make_cache()
            logits = s.prefill(ids, cache, chunk_size)
            return s.decode(cache, logits, len(ids), max_new_tokens, stop)

    def loglik(self, plan: Plan | str, ids: list[int], chunk: int = 512) -> torch.Tensor:
        """Per-token NLL of ``ids`` under ``plan``: (n-1,) float64 (perplexity = exp(mean))."""
        with self.session(plan, len(ids)) as s:
            return s.loglik(ids, chunk)

    def complete(self, plan: Plan | str, ids: list[int], max_new_tokens: int, *, sampling: Sampling = GREEDY,
                 stop_ids: Iterable[int] | None = None, prompt_logprobs: int | None = None,
                 on_step: Callable[[Step], bool | None] | None = None, cancel: CancelToken | None = None,
                 prefix_cache: PrefixCache | None = None, chunk_size: int = 2048,
                 memory_limit: int | None = None) -> Completion:
        """One completion of the token ids ``ids`` under ``plan`` (what the server runs; see the module
        docstring): checks first (nothing is allocated for a refused request), then prefill (from the
        prefix cache's longest shared prefix when the plan allows it), then decoding with ``sampling``,
        calling ``on_step(step)`` after each token (True stops). ``max_new_tokens`` 0: prefill only."""
        plan = Plan.from_spec(plan)
        ids = _token_ids(ids)
        self._check_completion(plan, ids, max_new_tokens, prompt_logprobs, chunk_size)
        self.check_request(plan, len(ids), max_new_tokens, chunk_size, memory_limit)
        plan.check(self.info)
        stop = self.eos_ids() if stop_ids is None else set(stop_ids)
        reuse = prefix_cache is not None and prompt_logprobs is None and plan.reuses_prefix(self.info)
        key = plan_key(plan, self.model)
        if cancel is not None:
            cancel.check()
        with self.session(plan, len(ids) + max_new_tokens) as s:
            t0 = time.perf_counter()
            cache, cached = prefix_cache.lookup(key, ids) if reuse else (None, 0)  # type: ignore[union-attr]
            if cache is None:
                cache = s.make_cache()
            prompt_steps = None
            if prompt_logprobs is not None:
                logits, prompt_steps = s.prefill_logprobs(ids, cache, min(chunk_size, PROMPT_LOGPROB_CHUNK),
                                                          prompt_logprobs, cancel)
            else:
                logits = s.prefill(ids[cached:], cache, chunk_size, start=cached, cancel=cancel)  # (1, V)
            t1 = time.perf_counter()
            steps: list[Step] = []
            finish = "length"
            stream = s.stream(cache, logits, len(ids), max_new_tokens, stop, sampling, cancel)
            try:
                for step in stream:
                    steps.append(step)
                    if on_step is not None and on_step(step):
                        finish = "stop"
                        break
            finally:
                stream.close()
            if len(steps) < max_new_tokens:
                finish = "stop"  # a stop id came before max_new_tokens
            t2 = time.perf_counter()
            held = cache_bytes(cache)
            if reuse:
                crop_to(cache, len(ids))  # the prompt's entries only: decoded tokens differ per request
                prefix_cache.store(key, ids, cache, held_bytes(cache))  # type: ignore[union-attr]
        return Completion(steps=steps, finish_reason=finish, prompt_tokens=len(ids), prompt_steps=prompt_steps,
                          cached_tokens=cached, prefill_seconds=t1 - t0, decode_seconds=t2 - t1,
                          kv_cache_bytes=held)

    def _check_completion(self, plan: Plan, ids: list[int], max_new_tokens: int, prompt_logprobs: int | None,
                          chunk_size: int) -> None:
        """One-line refusals of a :meth:`complete` request that no check of the plan would catch."""
        reader = plan.get("reader")
        if reader is not None:
            raise SettingError(f"{reader.name} is a reader method (it reads a document and a question, not "
                               "token ids); use Engine.run with a Request")
        if not ids:
            raise InputError("the prompt is empty: give at least one token")
        low, high = min(ids), max(ids)
        if low < 0 or high >= self.info.vocab:
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is outside {self.info.name}'s vocabulary (0 to {self.info.vocab - 1})")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise SettingError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise SettingError(f"chunk_size must be a whole number >= 1, got {chunk_size!r}")
        if prompt_logprobs is not None and (isinstance(prompt_logprobs, bool) or not isinstance(prompt_logprobs, int)
                                            or not 0 <= prompt_logprobs <= MAX_TOP_LOGPROBS):
            raise SettingError(f"prompt_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS} (or unset), "
                               f"got {prompt_logprobs!r}")

    def __repr__(self) -> str:
        return f"Engine({self.info.name}, device={self.device})"


__all__ = ["Completion", "Engine", "ModelLock", "Session", "SessionError", "decode_steps", "eos_ids",
           "greedy_decode", "lock_for", "model_device", "prefill", "prefill_logprobs", "token_nll"]
