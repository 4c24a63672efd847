"""Reading a model's answer: does it say the question cannot be answered from the text?

Self-Route (arXiv 2407.16833) routes on the model's own declaration: the RAG prompt ends with an instruction
to reply "unanswerable" when the retrieved text lacks the answer, and only those queries are re-read with the
full context. LaRA (arXiv 2502.09977) scores its hallucination-detection questions the same way: an answer is
right only when it says the information is not in the text. Small models rarely reply with the exact word,
so :func:`declines` also recognises the usual paraphrases ("the text does not mention ...", "no information",
"I don't know", "cannot be determined", ...). An answer that merely contains "not" ("It is not Paris but
Pellmore.") and an empty answer are not declines.
"""

from __future__ import annotations

import re

#: Appended to a question when the reader (or benchmark) lets the model decline; the same for every task.
UNANSWERABLE_INSTRUCTION = "If the text does not contain the answer, reply exactly: unanswerable."

# where the information would be: "the text", "the provided context", "the passage above", ...
_SOURCE = (r"(?:text|context|document|passage|article|story|book|excerpt|essays?|paragraphs?|chunks?|"
           r"sources?|input|material|information(?:\s+(?:provided|given))?)")
_NEG = r"(?:does\s*n[o']t|do\s*n[o']t|did\s*n[o']t|doesnt|dont|didnt)"
_VERBS = (r"(?:say|mention|provide|state|specify|contain|include|give|indicate|reveal|disclose|discuss|"
          r"describe|tell|explain|offer|list|have|identify|name|address|cover|refer)")
_GAP = r"[^.!?\n]{0,60}?"  # a few words inside one sentence (bounded: no runaway backtracking)

_PATTERNS = [
    r"\bunanswerable\b",
    r"\bnot\s+answerable\b",
    r"\b(?:cannot|can\s*not|can'?t|could\s*n[o']t|could\s+not)\s+(?:be\s+)?(?:answered|determined|"
    r"found|known|inferred|deduced|established|ascertained|identified)\b",
    r"\b(?:cannot|can\s*not|can'?t|could\s*n[o']t|could\s+not|unable\s+to|impossible\s+to)\s+"
    r"(?:answer|determine|tell|say|know|infer|deduce|establish|ascertain|identify)\b",
    r"\bi\s+(?:do\s*n[o']t|dont|do\s+not)\s+know\b",
    r"\b(?:no|not\s+(?:any|enough)|insufficient|lacks?(?:\s+the)?|missing)\s+(?:relevant\s+|specific\s+|"
    r"such\s+|further\s+|sufficient\s+|explicit\s+)?(?:information|mention|details?|data|indication|evidence)\b",
    rf"\b{_SOURCE}\s+(?:provided\s+|given\s+|above\s+|here\s+)?{_NEG}\s+(?:\w+\s+){{0,2}}?{_VERBS}",
    rf"\b{_SOURCE}\s+(?:is\s+silent|says\s+nothing|lacks)\b",
    r"\bnot\s+(?:explicitly\s+|directly\s+|specifically\s+|clearly\s+)?(?:mentioned|specified|stated)\b",
    rf"\bnot\s+(?:explicitly\s+|directly\s+)?(?:provided|given|found|included|present|contained|disclosed|"
    rf"discussed|indicated|available|described|covered|addressed|listed|revealed)\s+(?:in|within|by|from)\s+"
    rf"(?:the\s+|this\s+|that\s+|any\s+)?(?:\w+\s+){{0,2}}?{_SOURCE}\b",
    r"\b(?:could\s*n[o']t|could\s+not|can\s*not|can'?t|cannot|did\s*n[o']t|unable\s+to)\s+find\s+"
    r"(?:any\s+|the\s+|an?\s+)?(?:answer|information|mention|details?|reference|data|evidence)\b",
    rf"\b(?:could\s*n[o']t|could\s+not|can\s*not|can'?t|cannot|did\s*n[o']t|unable\s+to)\s+find\b{_GAP}"
    rf"\b(?:in|within)\s+(?:the\s+|this\s+|that\s+)?(?:\w+\s+)?{_SOURCE}\b",
    r"\bout\s+of\s+context\b",
    # what small models write instead ("The pass key is not available.", "The captain is not known to exist.")
    r"\b(?:is|are|was|were|remains?)\s+(?:not\s+(?:available|known)|unknown)\b",
    r"^\W*(?:no\s+answer|unknown|n/?a)\W*$",
]
_DECLINE = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def declines(text: str) -> bool:
    """True when ``text`` says the question cannot be answered from the text it was given.

    Case-insensitive, any of a compiled list of phrasings; an empty answer is False (saying nothing is not
    a declaration). Never raises on a string.
    """
    if not text or not text.strip():
        return False
    return _DECLINE.search(" ".join(text.translate(_QUOTES).split())) is not None


def strip_instruction(question: str) -> str:
    """``question`` without :data:`UNANSWERABLE_INSTRUCTION` (what a retriever should search for)."""
    return " ".join(question.replace(UNANSWERABLE_INSTRUCTION, " ").split())
