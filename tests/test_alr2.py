"""The alr2 reader (ALR², arXiv 2410.03227): quote parsing, quote verification on hand-made exact, near and
invented quotes, the counts reported with every answer, the zero-verified path (a fake engine controls
the model's text), each source (none, rag, infiniretri), and the reader end to end on the tiny Llama."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import longreach
from longreach.answers import UNANSWERABLE_INSTRUCTION, declines
from longreach.errors import SpecError, TooLongError
from longreach.readers import ReadResult, Request
from longreach.readers.alr2 import DECLINE, QUOTE_INSTRUCTION
from longreach.readers.quotes import Verifier, normalize, parse_quotes, source_sentences
from longreach.spec import Plan

SOURCE = ("The lighthouse keeper was called Orla Venn.\nShe kept the lamp for thirty-one years. "
          "The pass key of the tower is 4242.\n\nGulls nested on the north rock!  Storms came in March.")


# ------------------------------------------------------------------------------------------- verification
def test_exact_quotes_are_verified_as_their_whole_sentences():
    v = Verifier(SOURCE)
    assert source_sentences(SOURCE)[:2] == ["The lighthouse keeper was called Orla Venn.",
                                            "She kept the lamp for thirty-one years."]
    r = v.check("Gulls nested on the   north\nrock!")  # white space differs only
    assert (r.how, r.source, r.score) == ("exact", "Gulls nested on the north rock!", 100.0)
    r = v.check("pass key of the tower")  # part of a sentence -> that sentence
    assert (r.how, r.source) == ("exact", "The pass key of the tower is 4242.")
    r = v.check("thirty-one years. The pass key")  # across a boundary -> both sentences
    assert (r.how, r.source) == ("exact", "She kept the lamp for thirty-one years. The pass key of the tower is 4242.")


@pytest.mark.parametrize("quote", [
    "The pass key of the towr is 4242.",  # typo
    "THE PASS KEY OF THE TOWER IS 4242",  # case, no period
    "The pass-key of the tower, is 4242",  # punctuation
    "The pass key of the tower is 4243.",  # a changed digit: the SOURCE sentence stands for it
])
def test_near_quotes_are_verified_as_the_source_sentence(quote):
    r = Verifier(SOURCE).check(quote)
    assert r.how == "fuzzy" and r.source == "The pass key of the tower is 4242."
    assert 90 <= r.score <= 100


def test_fuzzy_score_is_the_indel_ratio_and_the_threshold_applies():
    # independent reference: ratio = 2 * matches / total length on lower-cased alphanumerics.
    # "the pass key of the towr is 4242" (32) vs "the pass key of the tower is 4242" (33): 32 matches.
    quote = "The pass key of the towr is 4242."
    assert Verifier(SOURCE).check(quote).score == pytest.approx(200 * 32 / 65)
    assert Verifier(SOURCE, fuzzy=99).check(quote).how == "hallucinated"
    with pytest.raises(ValueError, match=r"fuzzy=0 must be in \(0, 100\]"):
        Verifier(SOURCE, fuzzy=0)


@pytest.mark.parametrize("quote", [
    "The keeper's dog was named Biscuit.",  # invented
    "The pass key of the tower is 9817.",  # a real sentence with a different key (4 of 33 characters)
    "Storms came in March and the pass key of the tower is 9817 says the keeper.",  # contains a real sentence
])
def test_invented_quotes_are_hallucinated(quote):
    r = Verifier(SOURCE).check(quote)
    assert (r.how, r.source, r.verified) == ("hallucinated", "", False)


def test_evidence_is_each_source_once_in_document_order():
    v = Verifier(SOURCE)
    verdicts = [v.check(q) for q in ["Storms came in March.", "Orla Venn", "storms came in march",
                                     "thirty-one years. The pass key", "The pass key of the tower is 4242.",
                                     "A made-up sentence here."]]
    assert v.evidence(verdicts) == [
        "The lighthouse keeper was called Orla Venn.",
        "She kept the lamp for thirty-one years. The pass key of the tower is 4242.",  # holds the single one
        "Storms came in March.",
    ]


def test_parse_numbered_bulleted_and_quoted_lines():
    text = ('Here are the sentences:\n1. "The pass key of the tower is 4242."\n2) She kept the lamp.\n'
            "- \u201cGulls nested on the north rock!\u201d\n* 'Storms came in March.'\n\u2022 Orla Venn kept it.\n"
            "(3) Quote 4: The lighthouse keeper.\n[5] > Gulls nested on the north rock!\n\n6.\nYes.\n"
            '"An opening mark only')
    assert parse_quotes(text) == ["The pass key of the tower is 4242.", "She kept the lamp.",
                                  "Gulls nested on the north rock!", "Storms came in March.", "Orla Venn kept it.",
                                  "The lighthouse keeper.", "An opening mark only"]
    assert parse_quotes(text, limit=2) == ["The pass key of the tower is 4242.", "She kept the lamp."]
    assert normalize("  a \n\t b ") == "a b"


# --------------------------------------------------------------------------------- reader, fake engine
class FakeEngine:
    """The tiny Llama's tokenizer and info; the model's text is scripted: the quote step writes ``quotes``,
    the answer step answers ``4242``, infiniretri retains ``retained``. Records every sub-read."""

    def __init__(self, lm, quotes="", retained=()):
        self.tokenizer, self.info = lm.tokenizer, dataclasses.replace(lm.info, window=4096)  # room for the prompts
        self.quotes, self.retained = quotes, list(retained)
        self.calls: list[tuple[str, Request]] = []

    @property
    def device(self):
        return torch.device("cpu")

    def run(self, plan, request, progress=False):
        plan = Plan.from_spec(plan)
        self.calls.append((plan.spec, request))
        if plan.get("reader") is not None and plan.get("reader").name == "infiniretri":
            return ReadResult("x", [65], 1000, 2.0, 0.1, 7, evidence=list(self.retained), extra={"passes": 3})
        assert plan.get("reader") is None  # quote and answer steps: the plain reader under the carried plan
        if QUOTE_INSTRUCTION in request.question:
            ids = self.tokenizer(self.quotes, add_special_tokens=False).input_ids
            return ReadResult("", ids, 300, 1.0, 0.5, 11)
        return ReadResult("4242", [52, 50, 52, 50], 50, 0.25, 0.125, 5)


def read(engine, spec, document, question="What is the pass key of the tower?", max_new_tokens=4):
    plan = Plan.from_spec(spec)
    return plan.make_reader().read(engine, plan, Request(document, question, max_new_tokens))


def test_counts_evidence_and_the_answer_from_verified_quotes_only(llama):
    quotes = ("Sure, the sentences:\n1. The pass key of the tower is 4242.\n2. She kept the lamp for thirty-one years.\n"
              "3. The pass key of the towr is 4242.\n4. The tower's pass key is 9999.\n5. Orla had a cat named Ink.\n"
              "6. Storms came in March.\n")
    e = FakeEngine(llama, quotes)
    r = read(e, "alr2:source=none,quotes=5", SOURCE)
    x = r.extra
    assert (x["quotes"], x["verified"], x["hallucinated"], x["exact"], x["fuzzy"]) == (5, 3, 2, 2, 1)
    assert x["hallucinated_quotes"] == ["The tower's pass key is 9999.", "Orla had a cat named Ink."]
    assert x["source"] == "none" and "reason" not in x
    assert r.evidence == ["She kept the lamp for thirty-one years.", "The pass key of the tower is 4242."]
    (s1, quote_req), (s2, answer_req) = e.calls
    assert s1 == s2 == "none"
    assert quote_req.document == SOURCE and quote_req.max_new_tokens == 256 and QUOTE_INSTRUCTION in quote_req.question
    assert answer_req.document == "\n".join(r.evidence)  # the reasoning step reads the verified sentences only
    assert answer_req.question == "What is the pass key of the tower?" and answer_req.max_new_tokens == 4
    assert r.answer == "4242"
    assert r.input_tokens == 350 and r.decode_seconds == 0.625 and r.kv_cache_bytes == 11
    assert len(r.output_ids) == len(e.tokenizer(quotes, add_special_tokens=False).input_ids) + 4


def test_no_verified_quote_declines_without_a_reasoning_step(llama):
    e = FakeEngine(llama, "1. The keeper's dog was named Biscuit.\n2. The moon is made of cheese today.\n")
    r = read(e, "alr2:source=none", SOURCE)
    assert r.answer == DECLINE and declines(r.answer)
    assert (r.extra["quotes"], r.extra["verified"], r.extra["hallucinated"]) == (2, 0, 2)
    assert "none of the 2 quotes was found" in r.extra["reason"] and r.evidence == []
    assert len(e.calls) == 1  # the quote step only
    e = FakeEngine(llama, "::::::::")
    r = read(e, "alr2:source=none", SOURCE)
    assert r.answer == DECLINE and r.extra["quotes"] == 0 and "quoted nothing" in r.extra["reason"]


def test_decline_instruction_is_not_quoted_but_reaches_the_answer(llama):
    e = FakeEngine(llama, "The pass key of the tower is 4242.")
    question = f"What is the pass key? {UNANSWERABLE_INSTRUCTION}"
    read(e, "alr2:source=none", SOURCE, question=question)
    (_, quote_req), (_, answer_req) = e.calls
    assert UNANSWERABLE_INSTRUCTION not in quote_req.question and quote_req.question.startswith("What is the pass key?")
    assert answer_req.question == question


def test_rag_source_quotes_the_retrieved_chunks(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    doc = "\n".join([f"Filler line {i} is about weather." for i in range(60)] + [SOURCE] +
                    [f"More filler {i} about boats." for i in range(60)])
    # the second quote is in the document but not in the retrieved text: it is checked against the source
    e = FakeEngine(llama, "The pass key of the tower is 4242.\nMore filler 59 about boats.")
    r = read(e, "alr2:retriever=bm25,chunk=48,overlap=8,top_k=2,quote_tokens=24", doc)
    (s1, quote_req), _ = e.calls
    assert "The pass key of the tower is 4242." in quote_req.document and len(quote_req.document) < len(doc) / 4
    assert "More filler 59" not in quote_req.document
    assert (r.extra["verified"], r.extra["hallucinated"]) == (1, 1)
    assert r.extra["retrieval"]["retriever"] == "bm25" and r.extra["retrieval"]["retrieved"] >= 1
    assert r.evidence == ["The pass key of the tower is 4242."]
    assert r.input_tokens >= len(doc) + 300  # the document (rag's index) + the quote and answer prompts


def test_infiniretri_source_quotes_the_retained_sentences(llama):
    retained = ["The pass key of the tower is 4242.", "Storms came in March."]
    e = FakeEngine(llama, "Storms came in March.", retained)
    r = read(e, "alr2:source=infiniretri,chunk=64,top_k=16,quote_tokens=24", "ignored by the fake " * 50)
    (s0, sub), (_, quote_req), (_, answer_req) = e.calls
    assert s0 == "infiniretri:chunk=64,top_k=16,answer=false"  # retrieval only: no answer pass
    assert sub.question == "What is the pass key of the tower?"
    assert quote_req.document == "\n".join(retained)
    assert r.evidence == ["Storms came in March."] and answer_req.document == "Storms came in March."
    assert r.extra["retrieval"]["passes"] == 3 and r.extra["retrieval"]["kept"] == 2
    assert r.input_tokens == 1000 + 300 + 50


# --------------------------------------------------------------------------------------- real tiny model
@pytest.mark.parametrize("spec", ["alr2:retriever=bm25,chunk=32,overlap=8,top_k=4,quote_tokens=24",
                                  "alr2:source=infiniretri,chunk=64,top_k=16,quote_tokens=24",
                                  "alr2:source=none,quote_tokens=24"])
def test_end_to_end_on_the_tiny_llama(llama, tmp_path, monkeypatch, spec):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    n = 3 if "none" in spec else 12 if "infiniretri" in spec else 40  # none: one window; others: past it
    text = " ".join(f"Sentence {i} says the sky is blue." for i in range(n))
    a = longreach.ask(text=text, question="What does the sky say?", model=llama, method=spec, max_new_tokens=4)
    x = a.extra
    assert x["quotes"] == x["verified"] + x["hallucinated"] <= 8 and x["exact"] + x["fuzzy"] == x["verified"]
    assert len(x["hallucinated_quotes"]) == x["hallucinated"]
    assert (a.answer == DECLINE) == (not a.evidence)
    assert all(e in normalize(text) for e in a.evidence)  # evidence is the document's own text
    assert a.kv_cache_bytes > 0 and a.output_tokens >= 1 and a.input_tokens > len(text)


def test_source_none_too_long_and_bad_parameters_are_one_line(llama):
    with pytest.raises(TooLongError, match="use alr2:source=rag or alr2:source=infiniretri"):
        longreach.ask(text="word " * 200, question="q?", model=llama, method="alr2:source=none", max_new_tokens=4)
    for spec, fragment in [("alr2:fuzzy=101", "fuzzy=101 must be in (0, 100]"), ("alr2:quotes=0", "quotes=0"),
                           ("alr2:overlap=500", "overlap=500"), ("alr2:source=infiniretri,chunk=8", "chunk=8"),
                           ("alr2:source=web", "source")]:
        with pytest.raises(SpecError) as exc:
            Plan.from_spec(spec)
        assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert Plan.from_spec("alr2:source=none").reach(llama.info) == llama.info.window
    assert Plan.from_spec("alr2").reach(llama.info) is None
