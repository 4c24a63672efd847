"""The dynaicl reader: the controller (against scikit-learn's own pipeline), its storage, the budget (never
exceeded: hypothesis), calibration with a tiny model and a fake judge, the fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_llama, wrap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import longreach
from longreach.bench.backends import byte_tokenizer
from longreach.bench.tasks.icl import ManyLabelICL
from longreach.errors import InputError, SpecError
from longreach.prompt import build_prompt, encode
from longreach.readers import Request
from longreach.readers.dynaicl import (
    ALL,
    CalibrationSample,
    Controller,
    allocate,
    calibrate,
    controller_path,
    fit_controller,
    forget_controller,
    load_controller,
    query_features,
    save_controller,
)
from longreach.readers.icv import parse_demonstrations, rank_demos

TOK = byte_tokenizer()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def lm():
    return wrap(tiny_llama(window=4096), "tiny-llama-dynaicl")


def test_controller_matches_sklearn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6))
    y = np.array([0, 4, 16])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    c = fit_controller(x.tolist(), y.tolist())
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    test = rng.normal(size=(50, 6))
    assert [c.predict(t) for t in test] == ref.predict(test).tolist()
    two = fit_controller(x.tolist(), np.where(x[:, 0] > 0, 64, ALL).tolist())  # binary: one coefficient row
    ref2 = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, np.where(x[:, 0] > 0, 64, ALL))
    assert [two.predict(t) for t in test] == ref2.predict(test).tolist()
    assert fit_controller(x.tolist(), [4] * 90).predict(test[0]) == 4  # one class: a constant


def test_controller_storage(cache):
    c = Controller([0, 16], [1.0, 2.0], [0.5, 1.0], [[1.0, -1.0]], [0.25], samples=3)
    path = save_controller("some/model name", c)
    assert path == controller_path("some/model name") and path.parent == cache / "dynaicl"
    assert json.loads(path.read_text())["counts"] == [0, 16]
    forget_controller("some/model name")
    assert load_controller("some/model name") == c  # from disk
    assert load_controller("never-fitted") is None


def _sample(labels: int, shots: int, seed: int):
    return ManyLabelICL(labels=labels, shots=shots).generate(TOK, 100_000, seed=seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=st.integers(2, 12), shots=st.integers(1, 40), seed=st.integers(0, 10_000),
       count=st.sampled_from([0, 1, 4, 16, 64, ALL]), budget=st.integers(16, 3000), cap=st.integers(0, 20))
def test_budget_is_never_exceeded(labels, shots, seed, count, budget, cap):
    s = _sample(labels, shots, seed)
    demos = parse_demonstrations(s.context)
    req = Request(s.context, s.question, 12, s.answer_prefix, prompt="plain")
    try:
        chosen, tokens = allocate(TOK, demos, req, count, budget, cap)
    except InputError as exc:  # only when the prompt without demonstrations is already over the budget
        assert "\n" not in str(exc)
        assert len(encode(TOK, build_prompt(TOK, demos.document([]), s.question, s.answer_prefix, "plain"))) > budget
        return
    # measured independently: the prompt the reader will feed
    real = len(encode(TOK, build_prompt(TOK, demos.document(chosen), s.question, s.answer_prefix, "plain")))
    assert real == tokens <= budget
    want = shots if count == ALL else min(count, shots)
    want = min(want, cap) if cap else want
    ranked = rank_demos(demos, s.question)
    assert chosen == ranked[: len(chosen)] and len(chosen) <= want
    if len(chosen) < want:  # the next most relevant one would not fit
        more = ranked[: len(chosen) + 1]
        assert len(encode(TOK, build_prompt(TOK, demos.document(more), s.question, s.answer_prefix, "plain"))) > budget


def test_features():
    s = _sample(5, 10, 3)
    demos = parse_demonstrations(s.context)
    f = query_features(demos, s.question, TOK)
    assert len(f) == 6 and all(np.isfinite(f))
    assert f[4] == pytest.approx(np.log1p(10)) and f[5] == pytest.approx(np.log1p(len({p.y for p in demos.pairs})))
    cue_in_a_demo = any(set(p.x.lower().split()) & set(s.question.lower().split()) for p in demos.pairs)
    assert (f[2] > 0) == cue_in_a_demo


def test_calibration_with_a_fake_judge(lm, cache):
    """The judge says a query needs 0 demonstrations when its question is short, 16 when long: the fitted
    controller learns it from the length feature, and the reader then keeps that many."""
    samples, needs = [], []
    for i in range(12):
        s = _sample(4, 20, i)
        long = i % 2 == 1
        q = s.question + (" Please think about the exact wording of the sentence carefully." if long else "")
        samples.append(CalibrationSample(s.context, q, s.answer_prefix, s.references, max_new_tokens=2))
        needs.append(16 if long else 0)
    need = {id(s): n for s, n in zip(samples, needs)}
    seen = []

    def judge(sample, count, prediction):
        seen.append((id(sample), count))
        return count != ALL and count >= need[id(sample)]

    c = calibrate(longreach.engine.Engine.for_model(lm), samples, budget=3000, counts=(0, 4, 16, 64, ALL),
                  judge=judge)
    assert sorted(c.counts) == [0, 16] and c.samples == 12
    assert all(count <= need[sid] for sid, count in seen)  # stops at the first success
    assert controller_path(lm.info.name).is_file()
    short, long = samples[0], samples[1]
    kw = dict(model=lm, method="dynaicl:budget=3000", answer_prefix=short.answer_prefix, max_new_tokens=2,
              prompt="plain")
    a = longreach.ask(text=short.document, question=short.question, **kw)
    b = longreach.ask(text=long.document, question=long.question, **kw)
    assert a.extra["dynaicl"]["predicted"] == 0 and a.extra["dynaicl"]["kept"] == 0
    assert b.extra["dynaicl"]["predicted"] == 16 and b.extra["dynaicl"]["kept"] == 16
    assert b.extra["dynaicl"]["controller"].startswith("fitted")
    assert b.input_tokens == b.extra["dynaicl"]["prompt_tokens"] <= 3000
    forget_controller(lm.info.name)


def test_fallback_and_refusals(lm, cache):
    forget_controller(lm.info.name)
    s = _sample(4, 30, 7)
    a = longreach.ask(text=s.context, question=s.question, model=lm, method="dynaicl:budget=600",
                      answer_prefix=s.answer_prefix, max_new_tokens=2, prompt="plain")
    d = a.extra["dynaicl"]
    assert d["predicted"] == ALL and "fallback" in d["controller"] and 0 < d["kept"] < 30
    assert a.input_tokens == d["prompt_tokens"] <= 600
    capped = longreach.ask(text=s.context, question=s.question, model=lm, method="dynaicl:budget=4k,max_demos=3",
                           answer_prefix=s.answer_prefix, max_new_tokens=2, prompt="plain")
    assert capped.extra["dynaicl"]["kept"] == 3
    with pytest.raises(InputError, match="raise budget") as err:
        longreach.ask(text=s.context, question=s.question, model=lm, method="dynaicl:budget=16", max_new_tokens=2)
    assert "\n" not in str(err.value)
    plain = longreach.ask(text="No pairs here.", question="What?", model=lm, method="dynaicl", max_new_tokens=2)
    assert plain.extra["dynaicl"]["pairs"] == 0
    for bad in ("dynaicl:budget=8", "dynaicl:max_demos=-1"):
        with pytest.raises(SpecError):
            longreach.spec.Plan.from_spec(bad)
