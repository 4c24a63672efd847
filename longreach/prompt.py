"""Prompt building: document first, question last.

Chat models get their chat template (one user turn: document, blank line, question); base models
(no template, e.g. Gemma 3 270M) get a plain completion prompt ending in ``Answer:``.
"""

from __future__ import annotations

from typing import Any

COMPLETION_TEMPLATE = "{document}\n\nQuestion: {question}\nAnswer:"


def build_prompt(tokenizer: Any, document: str, question: str, answer_prefix: str = "") -> str:
    """The full prompt text for ``document`` + ``question`` (``answer_prefix`` starts the answer)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{document.strip()}\n\n{question.strip()}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix
    text = COMPLETION_TEMPLATE.format(document=document.strip(), question=question.strip())
    return text + (" " + answer_prefix if answer_prefix else "")


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
