"""InfiniRetri on the real SmolLM2 at 2k tokens: the needle is retained and the key answered, and the
scoring layer's attention equals the model's eager attention on a real prompt."""

from __future__ import annotations

import pytest
import torch

import longreach
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey
from longreach.engine import Engine
from longreach.readers.infiniretri import question_attention

pytestmark = pytest.mark.integration


def test_passkey_through_infiniretri(smollm2):
    doc = make_passkey_document(smollm2.tokenizer, 2000, depth=0.3, seed=5)
    a = longreach.ask(text=doc.text, question=QUESTION, model=smollm2, answer_prefix=ANSWER_PREFIX,
                      method="infiniretri:chunk=512,top_k=100", max_new_tokens=8)
    assert any(doc.key in e for e in a.evidence), a.evidence
    assert score_passkey(a.answer, doc.key) == 1.0, a.answer


def test_real_scoring_layer_matches_eager(smollm2):
    ids = smollm2.tokenizer("The grass is green. The pass key is 71432. What is the pass key?").input_ids
    with Engine(smollm2).session("infiniretri") as s:
        ours = question_attention(s, ids, smollm2.info.layers - 1, len(ids) - 6)
    before = smollm2.model.config._attn_implementation
    smollm2.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = smollm2.model(torch.tensor([ids]), output_attentions=True)
    finally:
        smollm2.model.set_attn_implementation(before)
    torch.testing.assert_close(ours, out.attentions[-1][0, :, len(ids) - 6:].float(), rtol=1e-4, atol=1e-5)
