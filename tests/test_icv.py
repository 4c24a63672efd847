"""The icv reader: demonstration parsing, the in-context vector (shape, PCA against scikit-learn), the steering
hook against a manual computation, removal (the model bit-identical), caching, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama, wrap

import longreach
from longreach.bench.tasks.icl import ManyLabelICL
from longreach.errors import InputError, SpecError
from longreach.readers.icv import (
    capture,
    clear_vectors,
    decoder_layers,
    pair_differences,
    parse_demonstrations,
    principal_vector,
    rank_demos,
    steer,
    vector_for,
)
from longreach.spec import Plan

IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 120, 64]])


@pytest.fixture
def lm():
    return wrap(tiny_llama(window=2048), "tiny-llama")


@pytest.fixture
def sample(lm):
    return ManyLabelICL(labels=4, shots=8).generate(lm.tokenizer, 1500, seed=1)


def logits(model):
    with torch.inference_mode():
        return model(IDS).logits


# ------------------------------------------------------------------------------------------- parsing
def test_parses_many_label_icl(sample):
    demos = parse_demonstrations(sample.context)
    assert len(demos.pairs) == sample.meta["demos"] == 8
    assert demos.preamble.startswith("Classify each sentence with one of these labels:")
    assert "Sentence:" not in demos.preamble
    assert {p.y for p in demos.pairs} <= set(sample.meta["label_names"])
    p = demos.pairs[0]
    assert p.prompt == f"Sentence: {p.x}\nLabel:" and p.completion == f" {p.y}"
    assert p.text in sample.context
    # all pairs shown again: the document's words, preamble first
    assert demos.document(list(range(8))).split() == sample.context.split()


def test_parses_generic_layouts():
    text = ("Translate to French.\nInput: cat\nOutput: chat\n\nInput: dog\nOutput: chien\n"
            "red => rouge\nblue=>bleu\nSome trailing note.")
    demos = parse_demonstrations(text)
    assert [(p.x, p.y) for p in demos.pairs] == [("cat", "chat"), ("dog", "chien"), ("red", "rouge"), ("blue", "bleu")]
    assert demos.pairs[2].prompt == "red =>" and demos.pairs[2].completion == " rouge"
    assert demos.preamble == "Translate to French.\nSome trailing note."


def test_no_pairs_is_one_line_error():
    with pytest.raises(InputError, match="no demonstration pairs") as err:
        parse_demonstrations("Just an essay.\nWith two lines, no labels at all.")
    assert "\n" not in str(err.value) and "Label:" in str(err.value) and "=>" in str(err.value)


def test_rank_demos_puts_the_shared_rare_word_first():
    text = "\n".join(["the cat sat on the mat => a", "the dog sat on the mat => b", "a zebra ran => c"])
    demos = parse_demonstrations(text)
    assert rank_demos(demos, "Where did the zebra go?")[0] == 2
    assert rank_demos(demos, "Which dog?")[:2] == [1, 0]  # dog first, then document order


# ------------------------------------------------------------------------------------------- the vector
def test_principal_vector_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    diffs = rng.normal(size=(12, 16)) + np.linspace(0, 3, 16)  # a mean shift + noise
    v = principal_vector(torch.tensor(diffs)).double().numpy()
    u = PCA(n_components=1, svd_solver="full").fit(diffs).components_[0]
    mean = diffs.mean(0)
    u = u if mean @ u >= 0 else -u
    np.testing.assert_allclose(v, (mean @ u) * u, rtol=1e-5, atol=1e-6)
    one = principal_vector(torch.tensor(diffs[:1])).double().numpy()
    np.testing.assert_allclose(one, diffs[0], rtol=1e-5)  # one pair: its own difference


def test_vector_shape_and_differences(lm, sample):
    from longreach.engine import Engine

    engine = Engine.for_model(lm)
    demos = parse_demonstrations(sample.context)
    diffs, read = pair_differences(engine, Plan.from_spec("none"), demos.pairs)
    assert diffs.shape == (8, lm.info.layers, lm.info.hidden)
    # the first pair's difference, by two separate forward passes with output_hidden_states
    p = demos.pairs[0]
    from longreach.prompt import encode

    x, xy = encode(lm.tokenizer, p.prompt), encode(lm.tokenizer, p.prompt + p.completion)
    assert read >= len(xy) * 8
    with torch.inference_mode():
        hx = lm.model(torch.tensor([x]), output_hidden_states=True).hidden_states
        hxy = lm.model(torch.tensor([xy]), output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is layer l's output (the last one after the final norm: compare the others)
    for layer in range(lm.info.layers - 1):
        torch.testing.assert_close(diffs[0, layer], hxy[layer + 1][0, -1] - hx[layer + 1][0, -1], rtol=1e-4, atol=1e-5)
    clear_vectors()
    entry, cached = vector_for(engine, Plan.from_spec("none"), demos)
    assert entry.vector.shape == (lm.info.layers, lm.info.hidden) and not cached
    assert vector_for(engine, Plan.from_spec("none"), demos)[1]  # second time: from the cache


# ------------------------------------------------------------------------------------------- the hook
def test_hook_adds_strength_times_v_then_rescales(lm):
    model = lm.model
    blocks = decoder_layers(model)
    assert len(blocks) == lm.info.layers
    torch.manual_seed(1)
    vector = torch.randn(lm.info.layers, lm.info.hidden)  # (L, H)
    strength = 0.7
    with capture(blocks) as plain, torch.inference_mode():
        model(IDS)
    h0 = plain[0].clone()  # (1, T, H) layer 0's output, unsteered
    with steer(model, vector, strength, [0]), capture(blocks) as box, torch.inference_mode():
        model(IDS)
    # the independent reference, in numpy: h + s v, rescaled to |h| per position
    h = h0[0].double().numpy()
    moved = h + strength * vector[0].double().numpy()
    want = moved * (np.linalg.norm(h, axis=-1, keepdims=True) / np.linalg.norm(moved, axis=-1, keepdims=True))
    np.testing.assert_allclose(box[0][0].double().numpy(), want, rtol=1e-5, atol=1e-6)
    # steering the last layer only: the logits are the final norm + head of the manually steered state
    with capture(blocks) as plain, torch.inference_mode():
        model(IDS)
    last = plain[-1][0].double().numpy()
    moved = last + strength * vector[-1].double().numpy()
    manual = moved * (np.linalg.norm(last, axis=-1, keepdims=True) / np.linalg.norm(moved, axis=-1, keepdims=True))
    with torch.inference_mode():
        expect = model.lm_head(model.model.norm(torch.tensor(manual, dtype=torch.float32)[None]))
        with steer(model, vector, strength, [lm.info.layers - 1]):
            got = model(IDS).logits
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


def test_removal_restores_logits_exactly(lm, sample):
    model = lm.model
    before = logits(model)
    vector = torch.randn(lm.info.layers, lm.info.hidden)
    with steer(model, vector, 2.0, list(range(lm.info.layers))):
        assert not torch.equal(logits(model), before)  # the hook did something
    assert torch.equal(logits(model), before)
    with pytest.raises(RuntimeError, match="boom"), steer(model, vector, 2.0, [0, 1]):
        raise RuntimeError("boom")
    assert all(not b._forward_hooks for b in decoder_layers(model))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = longreach.ask(text=sample.context, question=sample.question, model=lm, method="icv:strength=1,demos=2",
                      answer_prefix=sample.answer_prefix, max_new_tokens=4)
    assert torch.equal(logits(model), before)  # bit-identical after a whole read
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not b._forward_hooks for b in decoder_layers(model))
    assert a.extra["icv"]["pairs"] == 8 and a.extra["icv"]["demos"] == 2


def test_read_extra_cache_and_zero_control(lm, sample):
    clear_vectors()
    kw = dict(text=sample.context, question=sample.question, model=lm, answer_prefix=sample.answer_prefix,
              max_new_tokens=4)
    a = longreach.ask(method="icv:strength=0.5", **kw)
    extra = a.extra["icv"]
    assert extra["pairs"] == 8 and extra["demos"] == 0 and extra["layers"] == lm.info.layers
    assert not extra["cached"] and extra["vector_seconds"] > 0
    assert a.input_tokens == extra["prompt_tokens"] + extra["vector_tokens"]
    assert extra["prompt_tokens"] < 200  # the label list and the question only (8 demos would be ~500)
    b = longreach.ask(method="icv:strength=0.5,layers=1", **kw)  # same document: the cached vector
    assert b.extra["icv"]["cached"] and b.extra["icv"]["vector_seconds"] == 0 and b.extra["icv"]["layers"] == 1
    assert b.input_tokens == b.extra["icv"]["prompt_tokens"]
    # strength 0 is an exact control: a plain read of the preamble + question
    zero = longreach.ask(method="icv:strength=0", **kw)
    plain = longreach.ask(**{**kw, "text": parse_demonstrations(sample.context).document([])}, method="none")
    assert zero.answer == plain.answer and zero.extra["icv"]["prompt_tokens"] == plain.input_tokens


def test_refusals(lm):
    with pytest.raises(InputError, match="no demonstration pairs") as err:
        longreach.ask(text="An essay with no pairs.", question="What?", model=lm, method="icv:fallback=false",
                      max_new_tokens=2)
    assert "\n" not in str(err.value)
    a = longreach.ask(text="An essay with no pairs.", question="What?", model=lm, method="icv", max_new_tokens=2)
    assert a.extra["icv"]["pairs"] == 0 and "no demonstration pairs" in a.extra["icv"]["fallback"]
    with pytest.raises(SpecError, match="last layer"):
        Plan.from_spec("icv:layers=1-5").check(lm.info)
    for bad in ("icv:layers=3-1", "icv:layers=x", "icv:demos=-1", "icv:strength=1000"):
        with pytest.raises(SpecError):
            Plan.from_spec(bad)


@pytest.mark.parametrize("build", ["tiny_gemma3", "tiny_gpt2"])
def test_other_architectures_steer_and_restore(build):
    import conftest

    lm = wrap(getattr(conftest, build)(), build)
    s = ManyLabelICL(labels=3, shots=4).generate(lm.tokenizer, 500, seed=2)
    before = logits(lm.model)
    assert len(decoder_layers(lm.model)) == lm.info.layers
    a = longreach.ask(text=s.context, question=s.question, model=lm, method="icv:strength=2",
                      answer_prefix=s.answer_prefix, max_new_tokens=3)
    assert a.extra["icv"]["pairs"] == 4 and a.extra["icv"]["layers"] == lm.info.layers
    assert torch.equal(logits(lm.model), before)
