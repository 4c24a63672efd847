"""benchmarks/bf16_rope.py's error function on tiny random q/k (no model weights), against an independent
float64 computation: RoPE as complex rotation, which depends on the distance m - n only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_rope.py"
D, BASE = 32, 10_000.0
FAR = (8192, 12288, 16384, 24576, 32768)  # query positions where bf16 angles break
NEAR = (16, 64, 256)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bf16_rope_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qk():
    """q (H, N, D), k (H, M, D): random, bf16-representable (as the real bfloat16 model's are)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, D, generator=g).to(torch.bfloat16).double()
    k = torch.randn(2, 5, D, generator=g).to(torch.bfloat16).double()
    return q, k


def numpy_logits(q: torch.Tensor, k: torch.Tensor, q_pos, k_pos) -> np.ndarray:
    """(G, H, N, M): Re(sum_i zq_i conj(zk_i) e^{i (m - n) theta_i}), zq_i = q_i + i q_{i + D/2}."""
    qn, kn = q.numpy(), k.numpy()
    theta = BASE ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    zq = qn[..., : D // 2] + 1j * qn[..., D // 2:]  # (H, N, D/2)
    zk = kn[..., : D // 2] + 1j * kn[..., D // 2:]  # (H, M, D/2)
    rel = np.asarray(q_pos, dtype=np.float64) - np.asarray(k_pos, dtype=np.float64)  # (G,)
    phase = np.exp(1j * rel[:, None] * theta)  # (G, D/2)
    return np.einsum("hni,hmi,gi->ghnm", zq, zk.conj(), phase).real


def grid(positions, distances=(0, 1, 3, 17, 100)):
    pairs = [(p, p - d) for p in positions for d in distances if d <= p]
    return torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])


def inv_freq() -> torch.Tensor:
    return torch.from_numpy(BASE ** (-np.arange(0, D, 2, dtype=np.float64) / D))


def test_float64_mode_matches_the_complex_reference(bench, qk):
    q, k = qk
    qp, kp = grid(NEAR + FAR)
    got = bench.rope_logits(q, k, inv_freq(), qp, kp, "float64", scaling=0.5).numpy()
    want = 0.5 * numpy_logits(q, k, qp, kp)
    assert np.abs(got - want).max() < 1e-9 * np.abs(want).max()


def relative_errors(bench, q, k, qp, kp, mode) -> np.ndarray:
    """|logit - independent float64 logit| / (|q| |k|), shape (G, H, N, M)."""
    scale = (q.norm(dim=-1)[:, :, None] * k.norm(dim=-1)[:, None, :]).numpy()  # (H, N, M)
    got = bench.rope_logits(q, k, inv_freq(), qp, kp, mode).numpy()
    return np.abs(got - numpy_logits(q, k, qp, kp)) / scale


BOUND = 2.0 ** -5  # bf16 rounding of q/k, cos/sin and the rotation: a few 2^-9 relative steps per logit


def test_bf16_angles_break_far_positions_and_float32_angles_do_not(bench, qk):
    """Same short distances (0..100), absolute positions from 16 to 32k."""
    q, k = qk
    near = {m: relative_errors(bench, q, k, *grid(NEAR), m) for m in ("bf16-angles", "longreach")}
    far = {m: relative_errors(bench, q, k, *grid(FAR), m) for m in ("bf16-angles", "longreach", "float32")}
    # float32 angles (longreach): bounded by bf16 rounding everywhere, and not growing with position
    assert far["longreach"].max() < BOUND and near["longreach"].max() < BOUND
    assert far["longreach"].mean() < 2.0 * near["longreach"].mean()
    assert far["float32"].max() < 1e-3  # float32 throughout: only the float32 rounding of the angles
    # bf16 angles: far past the bound at >= 8k, ten times longreach's error, growing with the position
    assert far["bf16-angles"].max() > 4 * BOUND
    assert far["bf16-angles"].mean() > 10 * far["longreach"].mean()
    at_32k = relative_errors(bench, q, k, *grid((32768,)), "bf16-angles")
    assert at_32k.mean() > 5 * near["bf16-angles"].mean()


def test_a_bf16_inv_freq_buffer_breaks_long_distances(bench, qk):
    """transformers 5 multiplies in float32, so a bf16-rounded buffer is a wrong frequency: relative
    (it depends on m - n only) but off by up to 2^-9 theta_i per token of distance."""
    q, k = qk
    short = grid(FAR, distances=(0, 1, 3, 17, 100))
    long = grid((8192, 16384, 32768), distances=(8192,)), grid((16384, 32768), distances=(16384,))
    long = tuple(torch.cat([a, b]) for a, b in zip(*long, strict=True))
    short_err = {m: relative_errors(bench, q, k, *short, m) for m in ("bf16-buffer", "longreach")}
    long_err = {m: relative_errors(bench, q, k, *long, m) for m in ("bf16-buffer", "longreach", "float32")}
    assert short_err["bf16-buffer"].max() < BOUND  # short distances: still fine, even at 32k
    assert long_err["bf16-buffer"].max() > 4 * BOUND
    assert long_err["bf16-buffer"].mean() > 10 * long_err["longreach"].mean()
    assert long_err["longreach"].max() < BOUND
    assert long_err["longreach"].mean() < 2.0 * short_err["longreach"].mean()
    assert long_err["float32"].max() < 1e-3


def test_logit_errors_is_the_mean_absolute_error_per_grid_point(bench, qk):
    q, k = qk
    qp, kp = grid(NEAR + FAR)
    errors, std = bench.logit_errors(q, k, inv_freq(), qp, kp, scaling=0.25, chunk=7)
    ref = 0.25 * numpy_logits(q, k, qp, kp)
    assert std == pytest.approx(ref.std(), rel=1e-9)
    for mode, err in errors.items():
        got = bench.rope_logits(q, k, inv_freq(), qp, kp, mode, scaling=0.25).numpy()
        want = np.abs(got - ref).reshape(len(qp), -1).mean(1)  # (G,)
        assert err.shape == (len(qp),)
        assert np.allclose(err.numpy(), want, rtol=1e-6, atol=1e-12), mode


def test_grids_and_buckets(bench):
    qp, kp = bench.distance_grid(per=4)
    d = qp - kp
    assert int(qp.max()) <= bench.MAX_POS and int(kp.min()) == 0
    assert {0, 1, 2, 1024, 32768} <= set(d.tolist())
    assert int((d == 32768).sum()) == 1  # only p = 0 fits
    pq, pk = bench.position_grid()
    assert set(pq.tolist()) == set(bench.QUERY_POSITIONS) and int((pq - pk).max()) == 128
    means = bench.bucket_means(torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([0, 1, 2, 10]), (0, 1, 4, 100))
    assert means == [1.0, 4.0, 7.0]
