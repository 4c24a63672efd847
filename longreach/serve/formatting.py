"""Text in and out of the server: chat prompts, reader inputs, incremental detokenization with stop
strings, and the OpenAI shapes of logprobs and usage."""

from __future__ import annotations

import functools
import math
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InputError
from .schemas import ChatMessage

ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


# --------------------------------------------------------------------------------------------- prompts
def chat_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """The prompt text for ``messages``: the tokenizer's chat template with the generation prompt when it
    has one, else a plain transcript (``System: ...\\nUser: ...\\nAssistant:``)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
        try:
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2's TemplateError (e.g. "roles must alternate"), ValueError
            raise InputError(f"the model's chat template refused these messages: {' '.join(str(exc).split())[:300]}"
                             ) from None
    return transcript(messages)


def transcript(messages: Iterable[ChatMessage]) -> str:
    """A plain transcript for models without a chat template, ending in ``Assistant:``."""
    lines = [f"{ROLE_LABELS[m.role]}: {m.text.strip()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def split_text(text: str) -> tuple[str, str]:
    """(document, question) of one text: split at its last blank line (no blank line: no document)."""
    body = text.rstrip()
    cut = body.rfind("\n\n")
    if cut < 0:
        return "", body.strip()
    return body[:cut].strip(), body[cut + 2:].strip()


def reader_input(messages: Sequence[ChatMessage]) -> tuple[str, str]:
    """(document, question) for a reader method: the last user message is the question and every message
    before it the document (joined by blank lines); a lone message is split at its last blank line."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise InputError("a reader method answers the last user message; the request has no user message")
    last = users[-1]
    if last != len(messages) - 1:
        raise InputError("a reader method answers the last user message; remove the messages after it")
    before = [m.text.strip() for m in messages[:last] if m.text.strip()]
    if not before:
        return split_text(messages[last].text)
    return "\n\n".join(before), messages[last].text.strip()


# ------------------------------------------------------------------------------------ detokenization
class TextStream:
    """Generated token ids -> text, one token at a time, cut before the first stop string.

    Decoding is incremental (a window of the last tokens, as vLLM's detokenizer does), so multi-byte
    characters split over tokens are held until complete and SentencePiece's leading spaces survive.
    :meth:`take` returns the text that is safe to send: everything except a tail that could still
    become a stop string.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string appeared (the text is cut before it)
        self._prefix = 0  # ids[_prefix:_read] decode to the text's last piece (context for the next one)
        self._read = 0
        self._checked = 0  # text before this offset holds no stop string
        self._sent = 0
        self._longest = max((len(s) for s in self.stops), default=0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def add(self, token_id: int) -> bool:
        """Append one generated token; True once a stop string has appeared (stop generating)."""
        if self.stopped:
            return True
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._append(after[len(before):])
            self._prefix, self._read = self._read, len(self.ids)
        return self.stopped

    def finish(self) -> None:
        """Flush what the last tokens decode to (an incomplete character included)."""
        if self.stopped or self._read == len(self.ids):
            return
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._append(after[len(before):])
        self._prefix = self._read = len(self.ids)

    def _append(self, piece: str) -> None:
        self.text += piece
        if not self.stops:
            return
        start = max(0, self._checked - self._longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
        self._checked = len(self.text)

    def take(self, final: bool = False) -> str:
        """The text not sent yet that is safe to send (all of it once ``final`` or stopped)."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_tail()
        end = max(end, self._sent)
        piece = self.text[self._sent:end]
        self._sent = end
        return piece

    def _held_tail(self) -> int:
        """Length of the longest end of the text that is a proper start of a stop string."""
        for k in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) and len(s) > k for s in self.stops):
                return k
        return 0


# ------------------------------------------------------------------------------------------- tokens
@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in of each byte -> the byte (its ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback


class TokenText:
    """Per-token strings and bytes for logprobs (cached per request)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        s = self._text.get(token_id)
        if s is None:
            s = self._text[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return s

    def bytes(self, token_id: int) -> list[int]:
        """The token's UTF-8 bytes; exact for byte-level BPE and SentencePiece byte pieces, whose single
        tokens may hold part of a character (their text is then U+FFFD)."""
        s = self.text(token_id)
        if "\ufffd" in s:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str):
                table = _byte_decoder()
                if piece and all(c in table for c in piece):
                    return [table[c] for c in piece]
                m = _BYTE_PIECE.match(piece)
                if m:
                    return [int(m.group(1), 16)]
        return list(s.encode("utf-8"))


# ------------------------------------------------------------------------------------------ logprobs
LOGPROB_FLOOR = -9999.0  # stands for -inf (a token the model gives no probability): JSON has no infinity


def finite(logprob: float | None) -> float | None:
    if logprob is None:
        return None
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def chat_logprobs(tt: TokenText, steps: Iterable[Any], k: int) -> dict[str, Any]:
    """Chat shape: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [k objects]}]}``."""
    content = []
    for step in steps:
        top = [{"token": tt.text(i), "logprob": finite(lp), "bytes": tt.bytes(i)} for i, lp in (step.top or [])[:k]]
        content.append({"token": tt.text(step.token_id), "logprob": finite(step.logprob),
                        "bytes": tt.bytes(step.token_id), "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(tt: TokenText, entries: Iterable[tuple[int, Any]], k: int,
                        offset: int = 0) -> dict[str, Any]:
    """Completions shape: four parallel lists, one entry per ``(token id, Step | None)``.

    ``top_logprobs[i]`` is a dict token text -> logprob holding the ``max(k, 1)`` most likely tokens and
    the chosen one (lm-eval reads the top-1 to decide greediness); when two ids share a text the more
    likely one keeps the key. An entry without a step (the first echoed prompt token) is ``null``.
    ``text_offset`` counts characters from ``offset``.
    """
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    pos = offset
    for token_id, step in entries:
        s = tt.text(token_id)
        out["tokens"].append(s)
        out["text_offset"].append(pos)
        pos += len(s)
        if step is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        top: dict[str, float] = {}
        for i, lp in (step.top or [])[:max(k, 1)]:
            top.setdefault(tt.text(i), finite(lp))
        if step.logprob is not None:
            top.setdefault(s, finite(step.logprob))
        out["token_logprobs"].append(finite(step.logprob))
        out["top_logprobs"].append(top)
    return out


def merge_completion_logprobs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {key: [v for p in parts for v in p[key]] for key in ("tokens", "token_logprobs", "top_logprobs",
                                                                   "text_offset")}


# ------------------------------------------------------------------------------------------- usage
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
