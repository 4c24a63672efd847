"""Prompt building: the prompt formats, what ``auto`` becomes for a model, and derived answer prefixes.

A prompt format is ``BASE[+MOD...]`` (e.g. ``plain``, ``chat+instruct``, ``plain+qfirst+prefix``):

- BASE ``chat``: the model's chat template, everything in one user turn (document, blank line, question);
  ``plain``: a completion prompt (document, blank line, ``Question: ...``, ``Answer:``; with an answer
  prefix the prefix follows the question directly, see :data:`PREFIXED_TEMPLATE`); ``auto``: the format
  measured best for the model, from ``longreach/data/prompt_formats.json`` (by model name, else
  ``chat_default`` for a model with a chat template and ``base_default`` for one without).
  ``auto+MODS`` is the model's measured base (chat or plain) with exactly these modifiers.
- MOD ``qfirst``: the question before the document only; ``both``: the question before and after the
  document (Liu et al., "Lost in the Middle", arXiv:2307.03172, put the query on both sides for
  decoder-only models); ``instruct``: a short instruction first (:data:`INSTRUCTION`); ``prefix``: when
  the caller gave no answer prefix, one derived from the question (:func:`derive_prefix`, e.g. "Which shelf
  holds the missing ledger?" -> "The shelf that holds the missing ledger is") starts the answer.

``auto`` is resolved to a concrete format once per request (``Engine.run``, ``longreach ask``) or per sweep
(the bench runner, which records the concrete format) by :func:`resolve_format`; :func:`build_prompt` given
``auto`` (a caller that does not know the model's name) resolves it from the tokenizer's template alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import InputError

BASES = ("auto", "chat", "plain")
MODIFIERS = ("instruct", "qfirst", "both", "prefix")  # canonical order in a resolved format
PROMPT_FORMATS = BASES  # the bare formats (kept for callers that list them)
COMPLETION_TEMPLATE = "{document}\n\nQuestion: {question}\nAnswer:"
# With an answer prefix, small models copy from the document far more reliably when the prefix follows the
# question directly than after "Question:/Answer:" labels, which send SmolLM2-135M into loops ("the pass key
# is the pass key ..."): measured on pass-key documents at 1k-6k tokens.
PREFIXED_TEMPLATE = "{document}\n{question} {answer_prefix}"
#: the ``instruct`` modifier's text: short and model-agnostic
INSTRUCTION = ("Answer the question from the text. Copy the exact words from the text; "
               "answer in one short sentence.")
FORMAT_TABLE = Path(__file__).resolve().parent / "data" / "prompt_formats.json"
FORMAT_TABLE_ENV = "LONGREACH_PROMPT_FORMATS"  # a table of your own, e.g. from benchmarks/prompt_formats.py
_HELP = "use auto, chat or plain, optionally with +qfirst, +both, +instruct or +prefix (e.g. plain+prefix)"


# ------------------------------------------------------------------------------------------ formats
@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """A parsed ``BASE[+MOD...]`` format; ``str()`` is its canonical spelling (modifiers in fixed order)."""

    base: str
    mods: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return "+".join([self.base] + [m for m in MODIFIERS if m in self.mods])

    @property
    def before(self) -> bool:
        """The question comes before the document."""
        return bool(self.mods & {"qfirst", "both"})

    @property
    def after(self) -> bool:
        """The question comes after the document."""
        return "qfirst" not in self.mods


def parse_format(fmt: Any) -> PromptFormat:
    """``fmt`` checked and parsed; an InputError naming the problem and the fix otherwise."""
    if not isinstance(fmt, str) or not fmt.strip():
        raise InputError(f"prompt format {fmt!r} is not a format name; {_HELP}")
    text = fmt.strip().lower()
    base, *mods = [part.strip() for part in text.split("+")]
    if base not in BASES:
        hint = f" ({base} is a modifier: put a base first, e.g. plain+{base})" if base in MODIFIERS else ""
        raise InputError(f"unknown prompt format {fmt!r}{hint}; {_HELP}")
    for m in mods:
        if m not in MODIFIERS:
            raise InputError(f"unknown prompt modifier {m!r} in {fmt!r}; use qfirst, both, instruct or prefix")
        if mods.count(m) > 1:
            raise InputError(f"prompt format {fmt!r} repeats {m!r}; give each modifier once")
    if "qfirst" in mods and "both" in mods:
        raise InputError(f"prompt format {fmt!r}: qfirst puts the question only before the document, both "
                         "before and after it; use one of them")
    return PromptFormat(base, frozenset(mods))


def check_format(fmt: Any) -> str:
    """The canonical spelling of ``fmt`` (``auto`` stays ``auto``); InputError when it is not a format."""
    return str(parse_format(fmt))


def format_arg(value: str) -> str:
    """argparse ``type=`` for ``--prompt``: the canonical format, or a usage error naming the problem."""
    import argparse

    try:
        return check_format(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def is_auto(fmt: str) -> bool:
    """Whether ``fmt`` still needs a model to become concrete."""
    return parse_format(fmt).base == "auto"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@functools.cache
def format_table(path: str | None = None) -> dict[str, Any]:
    """The per-model table of what ``auto`` becomes, checked: ``path``, else the file named by
    ``$LONGREACH_PROMPT_FORMATS`` (your own measured table, same layout), else the shipped
    ``longreach/data/prompt_formats.json``. Read once per process."""
    own = os.environ.get(FORMAT_TABLE_ENV)
    where = Path(path) if path else Path(own) if own else FORMAT_TABLE
    fix = f"fix or unset ${FORMAT_TABLE_ENV}" if own and not path else "reinstall longreach"
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the prompt format table {where}: {exc}; {fix}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise InputError(f"{where} has no 'models' object; {fix}")
    for key in ("chat_default", "base_default", *[f"models.{k}" for k in models]):
        value = models[key[7:]] if key.startswith("models.") else data.get(key)
        try:
            parsed = parse_format(value)
        except InputError as exc:
            raise InputError(f"{where} {key}: {exc}") from None
        if parsed.base == "auto" or (key == "base_default" and parsed.base == "chat"):
            raise InputError(f"{where} {key}: {value!r} is not a concrete format for such a model; "
                             "give chat or plain (with modifiers)")
    return data


def resolve_format(fmt: str, model_name: str | None, has_template: bool) -> str:
    """The concrete format (canonical spelling) ``fmt`` means for a model named ``model_name`` (None:
    unknown) with or without a chat template. ``auto``: the table's entry for the model, else its
    chat / base default; ``auto+MODS``: that entry's base with exactly ``MODS``. InputError for ``chat``
    on a model without a chat template."""
    parsed = parse_format(fmt)
    if parsed.base == "auto":
        table = format_table()
        chosen = _table_entry(model_name)
        if chosen is not None and not has_template and chosen.base == "chat":
            chosen = None  # e.g. a base model folder that happens to share a known name
        parsed = _with_mods(chosen or parse_format(table["chat_default" if has_template else "base_default"]),
                            parsed.mods)
    if parsed.base == "chat" and not has_template:
        raise InputError("this model has no chat template; use --prompt plain (or auto)")
    return str(parsed)


def resolve_by_name(fmt: str, model_name: str) -> str | None:
    """``fmt`` made concrete for a model the table names, without its tokenizer; None for another model
    (a concrete ``fmt`` is returned as it is)."""
    parsed = parse_format(fmt)
    if parsed.base != "auto":
        return str(parsed)
    entry = _table_entry(model_name)
    return str(_with_mods(entry, parsed.mods)) if entry is not None else None


def _table_entry(model_name: str | None) -> PromptFormat | None:
    entry = format_table()["models"].get(model_name.strip().lower()) if isinstance(model_name, str) else None
    return parse_format(entry) if entry else None


def _with_mods(entry: PromptFormat, mods: frozenset[str]) -> PromptFormat:
    """``auto+MODS``: the entry's base with exactly MODS; bare ``auto``: the entry as it is."""
    return PromptFormat(entry.base, mods) if mods else entry


def question_last(fmt: str) -> str:
    """``fmt`` with the question after the document (``qfirst`` dropped): for a reader that scores the
    document with the attention of the question rows that follow it (InfiniRetri)."""
    parsed = parse_format(fmt)
    return str(PromptFormat(parsed.base, parsed.mods - {"qfirst"}))


# ----------------------------------------------------------------------------------------- building
def effective_prefix(question: str, answer_prefix: str, fmt: str) -> str:
    """The answer prefix the prompt of ``fmt`` ends with: the caller's, else (``+prefix``) the derived one."""
    if answer_prefix:
        return answer_prefix
    return derive_prefix(question) if "prefix" in parse_format(fmt).mods else ""


def user_turn(document: str, question: str, fmt: str) -> str:
    """The single user message of a chat format (instruction, question, document, question)."""
    parsed = parse_format(fmt)
    parts = [INSTRUCTION] if "instruct" in parsed.mods else []
    parts += [question.strip()] * parsed.before + [document.strip()] + [question.strip()] * parsed.after
    return "\n\n".join(parts)


def build_prompt(tokenizer: Any, document: str, question: str, answer_prefix: str = "",
                 fmt: str = "auto") -> str:
    """The full prompt text for ``document`` + ``question`` (``answer_prefix`` starts the answer)."""
    has_template = has_chat_template(tokenizer)
    parsed = parse_format(resolve_format(fmt, None, has_template) if is_auto(fmt) else fmt)
    if parsed.base == "chat" and not has_template:
        raise InputError("this model has no chat template; use --prompt plain (or auto)")
    prefix = effective_prefix(question, answer_prefix, str(parsed))
    if parsed.base == "chat":
        messages = [{"role": "user", "content": user_turn(document, question, str(parsed))}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prefix
    head = [INSTRUCTION] if "instruct" in parsed.mods else []
    head += [f"Question: {question.strip()}"] if parsed.before else []
    start = "\n\n".join(head) + "\n\n" if head else ""
    if prefix:  # the prefix starts the answer right after the question (landmark / passkey style)
        if parsed.after:
            return start + PREFIXED_TEMPLATE.format(document=document.strip(), question=question.strip(),
                                                    answer_prefix=prefix.strip())
        return f"{start}{document.strip()}\n{prefix.strip()}"
    if parsed.after:
        return start + COMPLETION_TEMPLATE.format(document=document.strip(), question=question.strip())
    return f"{start}{document.strip()}\n\nAnswer:"


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a full prompt. Adds BOS exactly once when the tokenizer wants one."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos = getattr(tokenizer, "bos_token_id", None)
    wants_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if bos is not None and wants_bos and (not ids or ids[0] != bos) and not text.startswith(
        str(getattr(tokenizer, "bos_token", "\0"))
    ):
        ids = [bos] + ids
    return ids


# ------------------------------------------------------------------------------------ derived prefix
_BE = {"is", "are", "was", "were"}
_DO = {"do", "does", "did", "has", "have", "had", "can", "could", "will", "would", "should", "must", "may"}
_ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their", "our", "my", "your"}
_PREPOSITIONS = {"of", "in", "for", "with", "from", "about", "on", "at", "to", "by", "into", "under", "behind"}
_IRREGULAR = {"hidden", "kept", "held", "found", "built", "written", "made", "put", "left", "hung", "sent", "sold",
              "bought", "given", "taken", "known", "seen", "shown", "stolen", "set", "laid", "born", "told", "said",
              "paid", "lost", "won", "broken", "chosen", "drawn", "driven", "eaten", "fallen", "frozen", "grown",
              "thrown", "worn", "hit", "cut", "shut", "read", "run", "begun", "sung", "struck", "sunk", "spent", "lit"}
_CONTRACTIONS = {"what's": "what is", "who's": "who is", "where's": "where is", "when's": "when is",
                 "how's": "how is"}
_HOW_ADJ = {"old", "long", "tall", "far", "big", "large", "deep", "high", "heavy", "wide", "often"}
_MAX_WORDS = 30  # longer questions get no prefix
_WORD = re.compile(r"[^\W_][\w'’.,-]*", re.UNICODE)


def _participle(word: str) -> bool:
    w = word.lower()
    return w in _IRREGULAR or (len(w) > 4 and w.endswith("ed"))


def _split_participle(rest: list[str]) -> int | None:
    """Index of a trailing participle phrase in ``rest`` ("the ledger kept in" -> 2), None when none: the
    participle, only prepositions after it, and a subject with a word besides articles before it."""
    k = len(rest)
    while k > 0 and rest[k - 1].lower() in _PREPOSITIONS:
        k -= 1
    if k == 0 or not _participle(rest[k - 1]):
        return None
    subject = rest[:k - 1]
    return k - 1 if any(w.lower() not in _ARTICLES for w in subject) else None


def _be_clause(subject: list[str], be: str) -> str:
    """"X is" / "X is kept in" for the words ``subject`` after "What/Who/Where/When is"."""
    k = _split_participle(subject)
    if k is None:
        return " ".join(subject + [be])
    return " ".join(subject[:k] + [be] + subject[k:])


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:] if text else ""


_MODALS = {"can", "could", "will", "would", "may", "might", "should", "must"}
_PAST = {"took", "held", "kept", "made", "wrote", "sent", "stole", "hid", "left", "won", "built", "found", "gave",
         "brought", "bought", "sold", "led", "ran", "drew", "chose", "told", "knew", "saw", "paid", "carried"}
_REQUESTS = ("please tell me", "tell me", "can you tell me", "could you tell me", "name", "give me")
_HAVE = {"does": "has", "do": "have", "did": "had"}


def _verb_like(word: str) -> bool:
    """A finite verb after a subject noun ("holds", "carried", "kept"), not a preposition or article."""
    w = word.lower()
    return w in _PAST or (w not in _PREPOSITIONS | _ARTICLES | _BE | _DO and (w.endswith("s") or w.endswith("ed")))


def _noun_like(word: str) -> bool:
    w = word.lower()
    return w not in _PREPOSITIONS | _ARTICLES | _BE | _DO | _MODALS and not w.endswith("ed")


def _question_prefix(words: list[str]) -> str:
    """The declarative start for the words of a direct question ("Which shelf holds the ledger")."""
    lower = [w.lower() for w in words]
    head, second = lower[0], lower[1]
    if head in {"what", "who", "where", "when"} and second in _BE and len(words) > 2:
        if head == "who" and lower[2] in _PREPOSITIONS:  # "Who is in charge of X?"
            return "The person " + " ".join(words[2:]) + " " + second
        return _be_clause(words[2:], second)
    if head == "who" and second not in _DO | _BE | _MODALS:
        return "The person who " + " ".join(words[1:]) + " is"
    if head in {"what", "which"} and len(words) > 3 and _noun_like(second):
        noun, verb, rest = words[1], lower[2], words[3:]
        if verb in _BE:
            if _split_participle(rest) is not None:
                return ""  # "What year was the bridge built?": no simple declarative start
            if head == "which":
                return " ".join(rest + [verb])  # "Which city is the capital?" -> "The capital is"
            return f"The {noun} of " + " ".join(rest) + f" {verb}"
        if _verb_like(verb):  # "Which shelf holds X?" / "What password opens X?"
            return f"The {noun} that " + " ".join(words[2:]) + " is"
        return ""
    if head == "how" and second in {"many", "much"} and len(words) > 2:
        what = "number" if second == "many" else "amount"
        noun, tail = words[2], lower[3:]
        if not tail:
            return f"The {what} of {noun} is"
        if tail[0] in _BE:
            return f"The {what} of " + " ".join([noun] + words[4:]) + " is"
        if tail[0] in _HAVE and lower[-1] == "have" and len(words) > 5:  # "How many N does X have?"
            return " ".join(words[4:-1]) + " " + _HAVE[tail[0]]
        if _verb_like(tail[0]) or tail[0] not in _DO | _MODALS:
            return f"The {what} of {noun} that " + " ".join(words[3:]) + " is"
        return ""
    if head == "how" and second in _HOW_ADJ and len(words) > 3 and lower[2] in _BE:
        return _be_clause(words[3:], lower[2])
    if head in _PREPOSITIONS and second in {"which", "what"} and len(words) > 5:  # "In which vault can X be found?"
        aux, rest = lower[3], words[4:]
        if aux in _BE:
            return _be_clause(rest, aux) + f" {head}"
        if aux in _MODALS and "be" in [w.lower() for w in rest[1:]]:
            i = 1 + [w.lower() for w in rest[1:]].index("be")
            return " ".join(rest[:i] + [aux] + rest[i:]) + f" {head}"
    return ""


def _request_prefix(words: list[str]) -> str:
    """The declarative start for an indirect question after "Tell me" ("where X is kept", "the password of
    X", "which ship carried X", "how many windows X has")."""
    lower = [w.lower() for w in words]
    head = lower[0]
    if head in {"where", "when", "what", "who"} and len(words) > 2:
        be = max((i for i, w in enumerate(lower) if w in _BE and i > 1), default=None)
        if be is not None:  # "where the diary is kept" -> "The diary is kept"
            return " ".join(words[1:be] + words[be:])
        if head == "who" and _verb_like(lower[1]):
            return "The person who " + " ".join(words[1:]) + " is"
        return ""
    if head == "which" and len(words) > 2 and _noun_like(lower[1]) and _verb_like(lower[2]):
        return f"The {words[1]} that " + " ".join(words[2:]) + " is"
    if head == "how" and len(words) > 4 and lower[1] in {"many", "much"} and lower[-1] in {"has", "have", "had"}:
        return " ".join(words[3:])  # "how many windows the cathedral has" -> "The cathedral has"
    if head in _ARTICLES - {"a", "an"} and len(words) > 1:  # "the password of X" -> "The password of X is"
        return " ".join(words) + " is"
    return ""


def derive_prefix(question: str) -> str:
    """The start of a declarative answer to an English question (or a "Tell me ..." request), for the model
    to complete, or "" when no rule applies (not a question, a yes/no question, do-support such as "When did
    X leave?", a very long question). Rules, on the last sentence:

    - What/Who/Where/When + is/are/was/were X -> "X is" ("What is the secret ingredient of the stew?" ->
      "The secret ingredient of the stew is"; "Where is the ledger kept?" -> "The ledger is kept");
    - What/Which NOUN is X -> "The NOUN of X is" / "X is"; What/Which NOUN VERB X -> "The NOUN that VERB X is";
    - Who VERB X -> "The person who VERB X is"; Who is in charge of X -> "The person in charge of X is";
    - How many / How much NOUN (are) X -> "The number / amount of NOUN (that VERB) X is"; How many NOUN does X
      have -> "X has"; How old/long/far/... is X -> "X is";
    - In which NOUN can X be found -> "X can be found in";
    - Tell me where X is kept / the NOUN of X / which NOUN VERB X / how many NOUN X has -> "X is kept" /
      "The NOUN of X is" / "The NOUN that VERB X is" / "X has".
    """
    if not isinstance(question, str) or len(question) > 400:
        return ""
    text = question.strip()
    last = re.split(r"(?<=[.!?])\s+|\n", text.rstrip("?.!").strip())[-1].strip() if text else ""
    asked = text.endswith("?")
    request = next((r for r in _REQUESTS if last.lower().startswith(r + " ")), None)
    if not asked and request is None:  # neither a question nor a request: no prefix
        return ""
    if request is not None:
        last = last[len(request):].strip()
    for short, full in _CONTRACTIONS.items():
        if last.lower().startswith(short):
            last = full + last[len(short):]
    words = [w.rstrip(".,") or w for w in _WORD.findall(last)]
    if len(words) < 2 or len(words) > _MAX_WORDS:
        return ""
    out = _request_prefix(words) if request is not None else _question_prefix(words)
    out = " ".join(out.split())
    return _capital(out) if len(out) <= 160 else ""
