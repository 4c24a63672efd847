"""Agent context manager: DeepMiner's dynamic context window over a long tool conversation.

DeepMiner ("Beyond Turn Limits", arXiv 2510.08276) keeps a long agent trajectory inside a fixed window by
sliding over the *tool responses* only: the most recent tool outputs stay in full, older ones are replaced by
a short omission placeholder, and every assistant turn (reasoning, tool calls) and user turn stays verbatim;
no external summariser. :class:`ContextWindow` holds an OpenAI-style chat transcript (``system`` / ``user`` /
``assistant`` / ``tool`` message dicts) and returns the transcript to send under a token budget:

- ``policy="dynamic"`` (DeepMiner): the last ``keep_last`` tool outputs in full, older ones replaced by
  ``placeholder`` (``{i}``: the tool output's 1-based ordinal in the transcript, ``{n}``: its tokens);
  if that is still over the budget, the oldest turns are dropped as well;
- ``policy="truncate"`` (plain truncation): every message verbatim, the oldest turns dropped until the rest
  fits, i.e. the newest turns that fit, whole;
- ``policy="full"``: every message verbatim; a transcript over the budget is an error.

A *turn* is a user message, or an assistant message together with the tool messages that answer it (a
tool message is never sent without the call it answers). The system message(s) and the last user message
are never dropped. Tokens are counted by one function, :func:`count_tokens`: the tokenizer's chat template
when it has one (with the generation prompt, BOS once), else the plain rendering :func:`render_transcript`;
a ``counter`` may replace it (e.g. the full prompt a harness task builds around the rendered transcript).
The budget is never exceeded: a transcript whose minimum (system + last user message under
``dynamic``/``truncate``, everything under ``full``) does not fit raises :class:`ContextBudgetError`.

Dropping searches the number of oldest turns to drop by bisection (O(log turns) counts) and returns only a
candidate it has counted within the budget.
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Callable, Iterable
from typing import Any

from .errors import InputError
from .prompt import encode

POLICIES = ("dynamic", "truncate", "full")
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_PLACEHOLDER = "[tool output {i} omitted: {n} tokens]"

Message = dict[str, Any]


class ContextBudgetError(InputError):
    """Even the smallest transcript a policy allows is over the token budget. ``needed``: its tokens;
    ``budget``: the budget."""

    def __init__(self, message: str, needed: int, budget: int):
        super().__init__(message)
        self.needed, self.budget = needed, budget


# ------------------------------------------------------------------------------------------ rendering
def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", "")
    if not isinstance(args, str):
        args = json.dumps(args)
    return f"{fn.get('name', '?')}({args})"


def render_message(message: Message) -> str:
    """One message as plain text: ``[role] content`` and, for an assistant's tool calls, one
    ``-> call name(arguments)`` line each; a tool message names its tool when it has ``name``."""
    role = message["role"]
    if role == "tool" and message.get("name"):
        role = f"tool {message['name']}"
    lines = [f"[{role}] {message.get('content') or ''}".rstrip()]
    lines += [f"-> call {_call_text(c)}" for c in message.get("tool_calls") or []]
    return "\n".join(lines)


def render_transcript(messages: Iterable[Message]) -> str:
    """The plain rendering of a transcript (no chat template): messages separated by blank lines."""
    return "\n\n".join(render_message(m) for m in messages)


def count_tokens(tokenizer: Any, messages: list[Message]) -> int:
    """Tokens of ``messages`` as sent: the chat template with the generation prompt when the tokenizer has
    one, else :func:`render_transcript`; BOS counted once when the tokenizer adds it."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises TemplateError / TypeError on roles or contents it cannot render
            msg = " ".join(str(exc).split())[:160]
            raise InputError(f"the tokenizer's chat template cannot render this transcript ({msg}); "
                             "pass counter= to ContextWindow to count it another way") from None
    else:
        text = render_transcript(messages)
    return len(encode(tokenizer, text))


# --------------------------------------------------------------------------------------- the window
def _check_message(message: Any) -> Message:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise InputError(f"a message must be a dict with role one of {', '.join(ROLES)}; got {message!r:.80}")
    content = message.get("content")
    if content is None and not (message["role"] == "assistant" and message.get("tool_calls")):
        raise InputError(f"a {message['role']} message needs a string content (None only for an assistant "
                         "message with tool_calls)")
    if content is not None and not isinstance(content, str):
        raise InputError(f"message content must be a string, got {type(content).__name__}; join text parts first")
    return copy.deepcopy(message)


class ContextWindow:
    """A chat transcript sent within ``budget`` tokens (DeepMiner's dynamic window, arXiv 2510.08276).

    ``tokenizer``: the model's tokenizer (counts tokens and sizes the placeholders); ``budget``: most tokens
    :meth:`messages` may take; ``keep_last``: tool outputs kept in full under ``dynamic``; ``placeholder``:
    what replaces an older tool output (``{i}``, ``{n}``); ``policy``: ``dynamic`` | ``truncate`` | ``full``;
    ``counter``: tokens of a message list (default :func:`count_tokens` with ``tokenizer``).

    >>> w = ContextWindow(tok, budget=8192)            # doctest: +SKIP
    >>> w.add({"role": "user", "content": "Audit the repo"}); ...; w.messages()
    """

    def __init__(self, tokenizer: Any, budget: int, keep_last: int = 3, placeholder: str = DEFAULT_PLACEHOLDER,
                 policy: str = "dynamic", counter: Callable[[list[Message]], int] | None = None):
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InputError(f"budget must be a positive number of tokens, got {budget!r}")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise InputError(f"keep_last must be a whole number >= 0, got {keep_last!r}")
        if policy not in POLICIES:
            raise InputError(f"unknown context policy {policy!r}; use one of {', '.join(POLICIES)}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(placeholder) if f is not None}
            placeholder.format(i=1, n=1)
        except (ValueError, IndexError, KeyError) as exc:
            raise InputError(f"bad placeholder {placeholder!r} ({exc}); use the fields {{i}} and {{n}} only") from None
        if not fields <= {"i", "n"}:
            raise InputError(f"bad placeholder {placeholder!r}: use the fields {{i}} and {{n}} only")
        self.tokenizer, self.budget, self.keep_last = tokenizer, budget, keep_last
        self.placeholder, self.policy = placeholder, policy
        self._counter = counter or (lambda msgs: count_tokens(tokenizer, msgs))
        self._messages: list[Message] = []
        self._sizes: dict[int, int] = {}  # message index -> tokens of a tool output's content

    # -- building
    def add(self, message: Message) -> None:
        """Append one message (a copy); roles system / user / assistant / tool, content a string."""
        self._messages.append(_check_message(message))

    def extend(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.add(m)

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def transcript(self) -> list[Message]:
        """Every message added, verbatim (copies)."""
        return copy.deepcopy(self._messages)

    # -- what is sent
    def _content_tokens(self, index: int) -> int:
        if index not in self._sizes:
            text = self._messages[index].get("content") or ""
            self._sizes[index] = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        return self._sizes[index]

    def _shown(self) -> list[Message]:
        """The transcript with placeholders for the older tool outputs (``dynamic``), else verbatim."""
        shown = copy.deepcopy(self._messages)
        if self.policy != "dynamic":
            return shown
        tools = [k for k, m in enumerate(shown) if m["role"] == "tool"]
        old = tools[:max(0, len(tools) - self.keep_last)]
        for ordinal, k in enumerate(old, start=1):
            shown[k]["content"] = self.placeholder.format(i=ordinal, n=self._content_tokens(k))
        return shown

    def _turns(self) -> tuple[set[int], list[list[int]]]:
        """Indices never dropped, and the droppable turns (lists of message indices), oldest first."""
        users = [k for k, m in enumerate(self._messages) if m["role"] == "user"]
        kept = {k for k, m in enumerate(self._messages) if m["role"] == "system"} | set(users[-1:])
        turns: list[list[int]] = []
        for k, m in enumerate(self._messages):
            if k in kept:
                continue
            if m["role"] == "tool" and turns and turns[-1][-1] == k - 1:
                turns[-1].append(k)  # a tool output goes with the call it answers
            else:
                turns.append([k])
        return kept, turns

    def messages(self) -> list[Message]:
        """The transcript to send: at most ``budget`` tokens (raises :class:`ContextBudgetError` if the
        policy's minimum does not fit)."""
        shown = self._shown()
        whole = self._counter(shown)
        if whole <= self.budget:
            return shown
        if self.policy == "full":
            raise ContextBudgetError(f"the full transcript takes {whole} tokens, more than the "
                                     f"budget of {self.budget}; use policy dynamic or truncate, or a larger budget",
                                     whole, self.budget)
        _, turns = self._turns()

        def without(drop: int) -> list[Message]:  # the oldest ``drop`` turns removed
            gone = {k for turn in turns[:drop] for k in turn}
            return [m for k, m in enumerate(shown) if k not in gone]

        least = without(len(turns))
        smallest = self._counter(least)
        if smallest > self.budget:
            raise ContextBudgetError(f"even the system message and the last user message take "
                                     f"{smallest} tokens, more than the budget of {self.budget}; "
                                     "use a larger budget", smallest, self.budget)
        lo, hi = 0, len(turns)  # count(lo) > budget >= count(hi)
        best = least
        while hi - lo > 1:
            mid = (lo + hi) // 2
            candidate = without(mid)
            if self._counter(candidate) <= self.budget:
                hi, best = mid, candidate
            else:
                lo = mid
        return best

    def tokens(self) -> int:
        """Tokens of :meth:`messages` (counted the same way as the budget)."""
        return self._counter(self.messages())
