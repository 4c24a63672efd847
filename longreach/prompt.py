"""Prompt building: document first, question last.

``fmt="auto"`` (default): chat models get their chat template (one user turn: document, blank line,
question); base models (no template, e.g. Gemma 3 270M) get a plain completion prompt ending in
``Answer:``. ``fmt="chat"`` / ``fmt="plain"`` force one of them (small chat models often copy facts out
of a long document better from the plain completion prompt: measure it, e.g. with the pass-key task).
"""

from __future__ import annotations

from typing import Any

from .errors import InputError

PROMPT_FORMATS = ("auto", "chat", "plain")
COMPLETION_TEMPLATE = "{document}\n\nQuestion: {question}\nAnswer:"
# With an answer prefix, small models copy from the document far more reliably when the prefix follows the
# question directly than after "Question:/Answer:" labels, which send SmolLM2-135M into loops ("the pass key
# is the pass key ..."): measured on pass-key documents at 1k-6k tokens.
PREFIXED_TEMPLATE = "{document}\n{question} {answer_prefix}"


def build_prompt(tokenizer: Any, document: str, question: str, answer_prefix: str = "",
                 fmt: str = "auto") -> str:
    """The full prompt text for ``document`` + ``question`` (``answer_prefix`` starts the answer)."""
    if fmt not in PROMPT_FORMATS:
        raise InputError(f"unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt == "chat" and not has_template:
        raise InputError("this model has no chat template; use --prompt plain (or auto)")
    if fmt == "chat" or (fmt == "auto" and has_template):
        messages = [{"role": "user", "content": f"{document.strip()}\n\n{question.strip()}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix
    if answer_prefix:  # the prefix starts the answer right after the question (landmark / passkey style)
        return PREFIXED_TEMPLATE.format(document=document.strip(), question=question.strip(),
                                        answer_prefix=answer_prefix.strip())
    return COMPLETION_TEMPLATE.format(document=document.strip(), question=question.strip())


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
