"""Sampling: validated settings, the top-p nucleus against an independent numpy reference, seeded draws,
greedy = argmax, log-probabilities = torch.log_softmax of the raw logits, cancellation tokens."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from longreach.errors import LongreachError, SettingError
from longreach.sampling import (
    Cancelled,
    CancelToken,
    Sampling,
    Step,
    distribution,
    make_generator,
    pick,
    step_logprobs,
    steps_logprobs,
)

V = 50


def _logits(seed: int, v: int = V, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(v, generator=torch.Generator().manual_seed(seed)) * scale  # (V,)


# ------------------------------------------------------------------------------------------- settings
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5) | st.booleans() | st.text(max_size=3))
@settings(max_examples=200, deadline=None)
def test_temperature_is_a_number_from_0_to_2(t):
    ok = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 <= t <= 2
    if ok:
        assert Sampling(temperature=t).temperature == t
    else:
        with pytest.raises(SettingError, match="temperature") as err:
            Sampling(temperature=t)
        assert "\n" not in str(err.value) and "0" in str(err.value) and "2" in str(err.value)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 2) | st.booleans())
@settings(max_examples=200, deadline=None)
def test_top_p_is_in_0_1(p):
    ok = isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0 < p <= 1
    if ok:
        assert Sampling(top_p=p).top_p == p
    else:
        with pytest.raises(SettingError, match=r"top_p.*\(0, 1\]"):
            Sampling(top_p=p)


@given(st.integers(-(2**70), 2**70) | st.booleans() | st.floats(allow_nan=False) | st.none())
@settings(max_examples=200, deadline=None)
def test_seed_is_a_whole_number_torch_accepts(seed):
    ok = seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and -(2**63) <= seed < 2**64)
    if ok:
        s = Sampling(temperature=1.0, seed=seed)
        gen = make_generator(s, "cpu")
        assert (gen is None) == (seed is None)
    else:
        with pytest.raises(SettingError, match="seed"):
            Sampling(seed=seed)


@given(st.integers(-3, 30) | st.booleans() | st.floats(allow_nan=False) | st.none())
@settings(max_examples=100, deadline=None)
def test_top_logprobs_is_0_to_20(k):
    ok = k is None or (isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 20)
    if ok:
        assert Sampling(top_logprobs=k).top_logprobs == k
    else:
        with pytest.raises(SettingError, match="top_logprobs.*0 to 20"):
            Sampling(top_logprobs=k)


def test_sampling_is_frozen_and_greedy_by_default():
    s = Sampling()
    assert s.greedy and s.top_p == 1.0 and s.seed is None and s.top_logprobs is None
    with pytest.raises(AttributeError):
        s.temperature = 1.0  # type: ignore[misc]
    assert issubclass(SettingError, LongreachError)


# ------------------------------------------------------------------------------------------- nucleus
def _reference_nucleus(logits: np.ndarray, temperature: float, top_p: float) -> tuple[set[int], np.ndarray]:
    """Independent reference: sort by probability, add tokens until the running sum reaches top_p."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    kept: set[int] = set()
    total = 0.0
    for i in sorted(range(len(p)), key=lambda j: -p[j]):
        kept.add(i)
        total += p[i]
        if total >= top_p:
            break
    q = np.where([i in kept for i in range(len(p))], p, 0.0)
    return kept, q / q.sum()


def _near_boundary(logits: np.ndarray, temperature: float, top_p: float) -> bool:
    """True when a running sum or a tie sits within rounding of the cut (the kept set is then ambiguous)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    s = np.sort(p)[::-1]
    return bool(np.any(np.abs(np.cumsum(s) - top_p) < 1e-9) or np.any(np.abs(np.diff(s)) < 1e-12))


@given(st.integers(0, 10_000), st.floats(0.05, 2.0), st.floats(0.01, 1.0), st.integers(2, 64))
@settings(max_examples=300, deadline=None)
def test_top_p_keeps_the_smallest_set_reaching_top_p(seed, temperature, top_p, v):
    logits = _logits(seed, v)
    assume(not _near_boundary(logits.numpy(), temperature, top_p))
    kept, ref = _reference_nucleus(logits.numpy(), temperature, top_p)
    probs = distribution(logits, Sampling(temperature=temperature, top_p=top_p)).numpy()
    assert set(np.flatnonzero(probs > 0).tolist()) == kept
    assert np.allclose(probs, ref, rtol=1e-9, atol=1e-12)
    assert len(kept) >= 1


def test_top_p_with_one_dominant_token_keeps_only_it_and_sampling_never_leaves_the_nucleus():
    logits = torch.tensor([10.0, 0.0, 0.0, -1.0])
    s = Sampling(temperature=1.0, top_p=0.5, seed=0)
    assert distribution(logits, s).tolist() == [1.0, 0.0, 0.0, 0.0]
    gen = make_generator(s, "cpu")
    assert {pick(logits, s, gen) for _ in range(50)} == {0}
    logits = _logits(5, scale=0.5)
    s = Sampling(temperature=1.0, top_p=0.6, seed=1)
    kept, _ = _reference_nucleus(logits.numpy(), 1.0, 0.6)
    assert 1 < len(kept) < V
    gen = make_generator(s, "cpu")
    drawn = {pick(logits, s, gen) for _ in range(300)}
    assert drawn <= kept and len(drawn) > 1  # several tokens drawn, none outside the nucleus


# ------------------------------------------------------------------------------------------- drawing
def test_greedy_is_the_argmax_whatever_the_generator():
    for seed in range(20):
        logits = _logits(seed)
        assert pick(logits, Sampling(), None) == int(logits.argmax())
        assert pick(logits, Sampling(top_p=0.1, seed=seed), torch.Generator().manual_seed(seed)) == int(logits.argmax())
    assert make_generator(Sampling(seed=3), "cpu") is None  # greedy: no generator needed


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = _logits(1, scale=0.5)  # flat: many likely tokens

    def draws(seed):
        s = Sampling(temperature=1.0, top_p=0.95, seed=seed)
        gen = make_generator(s, "cpu")
        return [pick(logits, s, gen) for _ in range(40)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sampled_frequencies_follow_the_distribution():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    s = Sampling(temperature=1.0, seed=0)
    gen = make_generator(s, "cpu")
    counts = np.bincount([pick(logits, s, gen) for _ in range(4000)], minlength=4) / 4000
    assert np.allclose(counts, torch.softmax(logits.double(), -1).numpy(), atol=0.03)
    hot = Sampling(temperature=0.25, seed=0)  # lower temperature: sharper
    gen = make_generator(hot, "cpu")
    assert np.mean([pick(logits, hot, gen) == 3 for _ in range(500)]) > 0.95


# ------------------------------------------------------------------------------------------- logprobs
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_step_logprobs_equal_log_softmax_and_top_k_is_sorted(k):
    logits = _logits(11, v=64)
    ref = torch.log_softmax(logits, dim=-1)
    step = step_logprobs(logits, 17, k)
    assert isinstance(step, Step) and step.token_id == 17
    assert step.logprob == pytest.approx(float(ref[17]), abs=1e-6)
    assert len(step.top) == k
    values = [lp for _, lp in step.top]
    assert values == sorted(values, reverse=True)
    expected = ref.argsort(descending=True)[:k].tolist()
    assert [i for i, _ in step.top] == expected
    for i, lp in step.top:
        assert lp == pytest.approx(float(ref[i]), abs=1e-6)
    assert step_logprobs(logits, 3, None).top is None


def test_logprobs_ignore_temperature_and_batch_equals_single():
    logits = _logits(2, v=40).repeat(3, 1) + torch.arange(3.0)[:, None] * torch.linspace(-1, 1, 40)  # (3, V)
    targets = torch.tensor([1, 7, 39])
    batch = steps_logprobs(logits, targets, 4)
    for row, step in enumerate(batch):
        single = step_logprobs(logits[row], int(targets[row]), 4)
        assert step.token_id == single.token_id
        assert step.logprob == pytest.approx(single.logprob, abs=1e-6)
        assert [i for i, _ in step.top] == [i for i, _ in single.top]


# ------------------------------------------------------------------------------------------- cancel
def test_cancel_token_first_reason_wins_and_check_raises():
    token = CancelToken()
    assert not token.cancelled and token.reason is None
    token.check()  # nothing yet
    token.cancel("client disconnected")
    token.cancel("server shutting down")
    assert token.cancelled and token.reason == "client disconnected"
    with pytest.raises(Cancelled, match="^client disconnected$"):
        token.check()


def test_cancel_token_is_set_from_another_thread():
    token = CancelToken()
    t = threading.Thread(target=token.cancel, args=("timeout",))
    t.start()
    t.join()
    with pytest.raises(Cancelled, match="timeout"):
        token.check()
