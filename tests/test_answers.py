"""declines(): an answer saying the question cannot be answered from the text, and nothing else."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.answers import UNANSWERABLE_INSTRUCTION, declines

DECLINES = [
    "The pass key is not available.",  # smollm2-135m's own wording (route on a real text)
    "The ship's captain is not known to exist.",
    "Her age remains unknown.",
    "unanswerable",
    "Unanswerable.",
    "  UNANSWERABLE  ",
    "The question is unanswerable from the given text.",
    "This is not answerable from the passage.",
    "The text does not mention when the bridge was built.",
    "The provided text doesn't say.",
    "The context does not provide the population of Velmora.",
    "The passage doesn\u2019t actually state the year.",  # curly apostrophe
    "The document did not specify it.",
    "The text is silent on this point.",
    "There is no information about the head librarian.",
    "No information.",
    "There is not enough information to answer.",
    "Insufficient information in the text.",
    "There is no mention of a festival.",
    "Not mentioned.",
    "The year is not specified.",
    "It is not explicitly stated.",
    "The answer is not provided in the text.",
    "That detail is not given in the context.",
    "The length cannot be determined from the text.",
    "It can't be determined.",
    "I cannot answer this question from the essays.",
    "I am unable to determine the answer.",
    "It is impossible to say.",
    "I don't know.",
    "I do not know.",
    "I could not find the answer.",
    "I couldn't find any information about it.",
    "I could not find it in the provided text.",
    "Out of context.",
    "No answer",
    "Unknown.",
    "N/A",
]

ANSWERS = [
    "",
    "   ",
    "\n",
    "It is not Paris but Pellmore.",
    "Pellmore was founded in 1885, not 1873.",
    "1885",
    "Answer: 42",
    "Velmora, not Tarnwick.",
    "The bridge of Velmora is not shorter: it is 410 metres long.",
    "The museum does not contain any paintings.",
    "Permission was not given by the king.",
    "He did not know that the fair was on Wednesday.",
    "The text says the well is 41 metres deep.",
    "The answer is Saffron.",
    "No, it is 42.",
    "I could not find it.",  # no answer / information named and no place in the text: not a declaration
    "The known answer is 12.",
    "Unknown soldiers founded Velmora in 1620.",
]


@pytest.mark.parametrize("text", DECLINES)
def test_declines(text):
    assert declines(text) is True


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_not_declines(text):
    assert declines(text) is False


def test_the_instruction_asks_for_a_reply_that_declines():
    assert UNANSWERABLE_INSTRUCTION == "If the text does not contain the answer, reply exactly: unanswerable."
    reply = UNANSWERABLE_INSTRUCTION.rsplit(":", 1)[1].strip().rstrip(".")
    assert reply == "unanswerable" and declines(reply)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_gives_a_bool(text):
    assert isinstance(declines(text), bool)


PIECES = ["the", "text", "does", "not", "n't", "no", "information", "could", "find", "in", "context", "it",
          "unanswerable", "mentioned", "provided", "cannot", "be", "determined", "I", "know", "don't", ".", ",",
          "\u2019", "-", "1885", "Velmora", "\n", "  "]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map(" ".join))
def test_strings_made_of_trigger_words_give_a_bool(text):
    assert isinstance(declines(text), bool)
    assert declines(text) == declines(text.upper())  # case-insensitive


def test_long_inputs_are_fast():
    # bounded gaps in the patterns: no runaway backtracking on long near-misses
    for text in ["could not find " * 20_000, "the text " * 20_000 + "does not", "not " * 50_000]:
        start = time.perf_counter()
        declines(text)
        assert time.perf_counter() - start < 2.0
    assert declines("x " * 50_000 + "unanswerable")


def test_strip_instruction_leaves_the_question_for_the_retriever():
    from longreach.answers import UNANSWERABLE_INSTRUCTION, strip_instruction

    q = "Which shelf holds the ledger?"
    assert strip_instruction(f"{q} {UNANSWERABLE_INSTRUCTION}") == q
    assert strip_instruction(q) == q
    assert "unanswerable" not in strip_instruction(f"{q}\n{UNANSWERABLE_INSTRUCTION}")
