"""benchmarks/icl_uncertainty.py: the Bayes posterior predictive against independent computations (the
function-space / Gaussian-process form, numpy lstsq for the mean, importance sampling from the prior), the
metrics, the model's shapes and its attention mask (no look at y_i or later pairs), and one training step."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "icl_uncertainty.py"


@pytest.fixture(scope="module")
def icl():
    spec = importlib.util.spec_from_file_location("icl_uncertainty_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and much faster on a busy machine
    yield module
    torch.set_num_threads(threads)


def tasks(icl, d=3, n=7, b=4, noise=0.5, w_scale=1.0, seed=0):
    return icl.sample_tasks(np.random.default_rng(seed), icl.Prior(d, noise, w_scale), b, n)


@pytest.mark.parametrize(("noise", "w_scale"), [(0.5, 1.0), (1.3, 0.7)])
def test_bayes_matches_the_function_space_form(icl, noise, w_scale):
    """y_1..n, y_q are jointly Gaussian with cov w_scale^2 X X' + noise^2 I: condition y_q on y_1..n."""
    x, y = tasks(icl, noise=noise, w_scale=w_scale)
    mean, var = icl.bayes_predictive(x, y, noise, w_scale)
    assert mean.shape == var.shape == y.shape
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            xc, yc, xq = x[b, :i], y[b, :i], x[b, i]
            if i == 0:
                want_mean, want_var = 0.0, w_scale**2 * xq @ xq + noise**2
            else:
                k = w_scale**2 * xc @ xc.T + noise**2 * np.eye(i)  # (i, i)
                kq = w_scale**2 * xc @ xq  # (i,)
                want_mean = kq @ np.linalg.solve(k, yc)
                want_var = w_scale**2 * xq @ xq + noise**2 - kq @ np.linalg.solve(k, kq)
            assert mean[b, i] == pytest.approx(want_mean, rel=1e-9, abs=1e-9)
            assert var[b, i] == pytest.approx(want_var, rel=1e-9)


def test_bayes_mean_is_the_ridge_lstsq_solution(icl):
    """The posterior mean of w is the least-squares solution of [X / s; I / tau] w = [y / s; 0]."""
    d, noise, w_scale = 4, 0.8, 1.5
    x, y = tasks(icl, d=d, n=12, b=3, noise=noise, w_scale=w_scale, seed=1)
    mean, _ = icl.bayes_predictive(x, y, noise, w_scale)
    for b in range(3):
        for i in (1, 3, 8, 11):
            a = np.vstack([x[b, :i] / noise, np.eye(d) / w_scale])
            rhs = np.concatenate([y[b, :i] / noise, np.zeros(d)])
            w_hat = np.linalg.lstsq(a, rhs, rcond=None)[0]
            assert mean[b, i] == pytest.approx(x[b, i] @ w_hat, rel=1e-8, abs=1e-10)


def test_bayes_predictive_by_importance_sampling(icl):
    """Monte Carlo: draw w from the prior, weight by the likelihood of the context, predict y_q = w.x_q + eps."""
    d, n, noise = 2, 3, 0.7
    x, y = tasks(icl, d=d, n=n + 1, b=1, noise=noise, seed=2)
    mean, var = icl.bayes_predictive(x, y, noise)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((400_000, d))  # (S, d) prior samples
    resid = y[0, :n][None] - w @ x[0, :n].T  # (S, n)
    logw = -0.5 * (resid**2).sum(1) / noise**2
    p = np.exp(logw - logw.max())
    p /= p.sum()
    f = w @ x[0, n]  # (S,) noiseless prediction at the query
    mc_mean = p @ f
    mc_var = p @ (f - mc_mean) ** 2 + noise**2
    sd = math.sqrt(var[0, n])
    assert abs(mean[0, n] - mc_mean) < 0.02 * sd
    assert mc_var == pytest.approx(var[0, n], rel=0.03)


def test_metrics(icl):
    y, mean, var = np.array([0.0, 1.0, 3.0]), np.zeros(3), np.array([1.0, 1.0, 1.0])
    nll = icl.gaussian_nll(y, mean, var)
    assert nll[0] == pytest.approx(0.5 * math.log(2 * math.pi))
    assert nll[2] == pytest.approx(0.5 * math.log(2 * math.pi) + 4.5)
    assert icl.covered(y, mean, var).tolist() == [True, True, False]
    # calibrated by construction: y drawn from the predictive itself covers 90%
    rng = np.random.default_rng(0)
    m, v = rng.standard_normal(200_000), rng.uniform(0.1, 4.0, 200_000)
    draws = m + np.sqrt(v) * rng.standard_normal(200_000)
    assert icl.covered(draws, m, v).mean() == pytest.approx(0.9, abs=0.005)


def test_attention_mask(icl):
    mask = icl.attention_mask(3)  # True = blocked; tokens c0 c1 c2 q0 q1 q2
    allowed = (~mask).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1]]


def test_model_shapes_and_no_leak(icl):
    prior = icl.Prior(d=3)
    model = icl.build_model(prior, seed=0, width=16, layers=2, heads=2).eval()
    x, y = (torch.from_numpy(a).float() for a in tasks(icl, d=3, n=6, b=5))
    mean, log_var = model(x, y)
    assert mean.shape == log_var.shape == (5, 6)
    assert torch.isfinite(mean).all() and torch.isfinite(log_var).all()
    # the prediction for y_i depends on pairs j < i and x_i only: changing y_i and everything after leaves it
    i = 3
    x2, y2 = x.clone(), y.clone()
    y2[:, i:] += 5.0
    x2[:, i + 1:] += 1.0
    with torch.no_grad():
        m1, v1 = model(x, y)
        m2, v2 = model(x2, y2)
    torch.testing.assert_close(m1[:, : i + 1], m2[:, : i + 1])
    torch.testing.assert_close(v1[:, : i + 1], v2[:, : i + 1])
    assert not torch.allclose(m1[:, i + 1:], m2[:, i + 1:])


def test_one_training_step_reduces_the_loss(icl):
    prior = icl.Prior(d=3)
    model = icl.build_model(prior, seed=0, width=16, layers=2, heads=2)
    x, y = (torch.from_numpy(a).float() for a in tasks(icl, d=3, n=8, b=32, seed=5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = icl.nll_loss(y, *model(x, y))
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = icl.nll_loss(y, *model(x, y))
    assert after.item() < before.item()


def test_train_and_evaluate_smoke(icl):
    """A few steps of the real loop and the evaluation: every condition and predictor, one value per n."""
    prior = icl.Prior(d=2)
    model = icl.build_model(prior, seed=0, width=16, layers=1, heads=2)
    curve = icl.train(model, prior, steps=4, n_points=5, batch=8, lr=1e-3, seed=0)
    assert curve[-1]["step"] == 4 and all(math.isfinite(c["loss"]) for c in curve)
    ev = icl.evaluate(model, prior, n_tasks=16, n_points=5, seed=0)
    assert list(ev) == ["in distribution", "noise x2", "w x2", "x shifted +1"]
    assert set(ev["in distribution"]["predictors"]) == {"model", "bayes"}
    assert set(ev["noise x2"]["predictors"]) == {"model", "bayes", "bayes-oracle"}
    for r in ev.values():
        for s in r["predictors"].values():
            assert all(len(v) == 5 for v in s.values())
    assert "nats" in icl.conclusion(ev, d=2)
