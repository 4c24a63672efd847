"""Integration tests on the real packaged models, at short lengths (<= 2k tokens)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import longreach
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey
from longreach.prompt import build_prompt, encode
from longreach.readers.chunked import prefill

pytestmark = pytest.mark.integration


def test_smollm2_info(smollm2):
    info = smollm2.info
    assert (info.arch, info.window, info.layers, info.heads, info.kv_heads, info.head_dim) == (
        "llama", 8192, 30, 9, 3, 64)
    assert info.rope["full_attention"]["rope_theta"] == 100000.0
    assert info.chat_template and 130e6 < info.parameters < 140e6


def test_smollm2_chat_template_puts_question_last(smollm2):
    text = build_prompt(smollm2.tokenizer, "DOCUMENT BODY", "What is it?")
    assert "<|im_start|>user" in text and text.index("DOCUMENT BODY") < text.index("What is it?")
    assert text.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.parametrize("doc,question,expected", [
    ("Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
     "What is the capital of France?", "paris"),
    ("Notes from the meeting: the budget was approved and the launch is planned for March.",
     "When is the launch planned?", "march"),
])
def test_smollm2_answers_from_the_document(smollm2, doc, question, expected):
    a = longreach.ask(text=doc, question=question, model=smollm2, max_new_tokens=16)
    assert expected in a.answer.lower(), a.answer


def test_smollm2_greedy_equals_transformers_generate(smollm2):
    """Chunked prefill + our greedy loop produce exactly the tokens of transformers' greedy generate()."""
    doc = make_passkey_document(smollm2.tokenizer, 700, depth=0.3, seed=5)
    ids = encode(smollm2.tokenizer, build_prompt(smollm2.tokenizer, doc.text, QUESTION))
    from longreach.readers.chunked import eos_ids, greedy_decode

    cache = DynamicCache(config=smollm2.model.config)
    ours = greedy_decode(smollm2.model, cache, prefill(smollm2.model, ids, cache, 256), len(ids), 10, set())
    with torch.inference_mode():
        ref = smollm2.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                     min_new_tokens=10, eos_token_id=None, pad_token_id=0)
    assert ours == ref[0, len(ids):].tolist()
    assert eos_ids(smollm2)  # the stop set is not empty for the chat model


def test_smollm2_passkey_1k(smollm2):
    """Short pass-key retrieval with the plain prompt (the format this 135M model copies digits from)."""
    hits = []
    for depth in (0.1, 0.5, 0.9):
        doc = make_passkey_document(smollm2.tokenizer, 1000, depth=depth, seed=1000 + int(depth * 10))
        assert 980 <= doc.tokens <= 1000
        a = longreach.ask(text=doc.text, question=QUESTION, model=smollm2, answer_prefix=ANSWER_PREFIX,
                          prompt="plain", max_new_tokens=12)
        hits.append((depth, doc.key, a.answer, score_passkey(a.answer, doc.key)))
    assert sum(h[-1] for h in hits) >= 2, hits


def _chunked_vs_single(lm, n_tokens, chunk):
    doc = make_passkey_document(lm.tokenizer, n_tokens, depth=0.5, seed=1)
    ids = encode(lm.tokenizer, build_prompt(lm.tokenizer, doc.text, QUESTION))
    with torch.inference_mode():
        single = lm.model(torch.tensor([ids]), logits_to_keep=1).logits[:, -1]
    chunked = prefill(lm.model, ids, DynamicCache(config=lm.model.config), chunk)
    return single, chunked


def test_smollm2_chunked_equals_single_pass(smollm2):
    single, chunked = _chunked_vs_single(smollm2, 1800, 512)
    torch.testing.assert_close(chunked, single, rtol=1e-3, atol=2e-3)
    assert int(chunked.argmax()) == int(single.argmax())


def test_gemma3_info_and_chunked_prefill(gemma3_real):
    info = gemma3_real.info
    assert info.arch == "gemma3_text" and info.window == 32768 and info.sliding_window == 512
    assert info.rope["sliding_attention"]["rope_theta"] == 10000.0
    assert info.rope["full_attention"]["rope_theta"] == 1000000.0
    assert not info.chat_template
    # 1.5k tokens > the 512-token sliding window: the sliding layers' cache must behave across chunks
    single, chunked = _chunked_vs_single(gemma3_real, 1500, 384)
    torch.testing.assert_close(chunked, single, rtol=1e-3, atol=5e-3)


def test_gemma3_completion_prompt_answers(gemma3_real):
    doc = make_passkey_document(gemma3_real.tokenizer, 600, depth=0.5, seed=3)
    a = longreach.ask(text=doc.text, question=QUESTION, model=gemma3_real, answer_prefix=ANSWER_PREFIX,
                      max_new_tokens=8)
    assert a.window == 32768 and a.input_tokens > 550
    assert score_passkey(a.answer, doc.key) == 1.0, (doc.key, a.answer)
