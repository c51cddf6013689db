"""The ridge core of LinUCB and Thompson sampling against closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from policies import LinUCB
from policies.linear import _BATCH


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    q = rng.random(n)
    c = rng.random(n) * 1e-3
    return X, q, c


@pytest.mark.parametrize("n", [1, _BATCH - 1, _BATCH, 3 * _BATCH + 5, 1100])
def test_estimates_equal_closed_form_ridge(n: int) -> None:
    dim, reg, prior = 5, 2.0, 0.7
    X, q, c = _data(n, dim)
    p = LinUCB(["a", "b"], dim, reg=reg, prior_quality=prior, alpha=1.0)
    for x, qi, ci in zip(X, q, c, strict=True):
        p.learn(x, "a", float(qi), float(ci))
    Z = np.hstack([X, np.ones((n, 1))])
    A = reg * np.eye(dim + 1) + Z.T @ Z
    theta_q = np.linalg.solve(A, Z.T @ (q - prior))
    theta_c = np.linalg.solve(A, Z.T @ c)
    x_new = np.random.default_rng(9).standard_normal(dim)
    z = np.append(x_new, 1.0)
    idx = np.array([p._index["a"]])
    mean_q, width, cost = p.estimates(z, idx)
    assert mean_q[0] == pytest.approx(prior + z @ theta_q, abs=1e-9)
    # the width is computed from a float32 serving copy of A^{-1}
    assert width[0] == pytest.approx(np.sqrt(z @ np.linalg.solve(A, z)), rel=1e-5)
    assert cost[0] == pytest.approx(max(z @ theta_c, 0.0), abs=1e-12)
    # an untouched model sits at its prior with the prior's width
    idx_b = np.array([p._index["b"]])
    mq, wb, cb = p.estimates(z, idx_b)
    assert mq[0] == pytest.approx(prior)
    assert wb[0] == pytest.approx(np.linalg.norm(z) / np.sqrt(reg), rel=1e-6)
    assert cb[0] == 0.0


@pytest.mark.parametrize("n", [2 * _BATCH, 2 * _BATCH + 7])
def test_forgetting_equals_discounted_ridge(n: int) -> None:
    dim, reg, g = 4, 1.0, 0.95
    X, q, c = _data(n, dim, seed=1)
    p = LinUCB(["a"], dim, reg=reg, prior_quality=0.0, gamma=g)
    for x, qi, ci in zip(X, q, c, strict=True):
        p.learn(x, "a", float(qi), float(ci))
    Z = np.hstack([X, np.ones((n, 1))])
    w = g ** np.arange(n - 1, -1, -1)
    # A_n = g^n reg I + (1 - g^n) reg I + sum_j g^(n-j) z_j z_j^T: reg I never decays
    A = reg * np.eye(dim + 1) + (Z * w[:, None]).T @ Z
    theta = np.linalg.solve(A, (Z * w[:, None]).T @ q)
    z = np.append(np.ones(dim) / 2, 1.0)
    mean_q, width, _ = p.estimates(z, np.array([0]))
    exact_width = np.sqrt(z @ np.linalg.solve(A, z))
    if n % _BATCH == 0:  # a fold and exact refresh just happened
        assert mean_q[0] == pytest.approx(z @ theta, abs=1e-9)
        assert width[0] == pytest.approx(exact_width, rel=1e-5)
    else:  # between refreshes only the reg top-up of the last few updates is missing
        assert mean_q[0] == pytest.approx(z @ theta, abs=0.02)
        assert width[0] == pytest.approx(exact_width, rel=0.1)
    p._refresh(0)
    assert p._A[0] == pytest.approx(A, abs=1e-9)
    assert p.estimates(z, np.array([0]))[0][0] == pytest.approx(z @ theta, abs=1e-9)


def test_optimistic_prior_gets_a_new_model_tried() -> None:
    p = LinUCB(["old"], 3, alpha=0.0, epsilon=0.0)
    x = np.array([0.3, -0.2, 0.9])
    for _ in range(50):
        p.learn(x, "old", 0.6, 0.0)
    p.add_model("new")
    assert p.choose(x).model == "new"


@pytest.mark.parametrize("gamma", [0.9, 0.98, 0.999])
def test_forgetting_widths_match_a_direct_inverse_after_every_update(gamma: float) -> None:
    """With forgetting the prior reg * I must stay whole between refreshes: the width
    of a direction never explored is checked against the exact inverse at each step."""
    from policies.linear import _BATCH

    dim, reg, n = 4, 1.0, 3 * _BATCH + 7
    rng = np.random.default_rng(1)
    # contexts in the first two directions only: the others keep their prior width
    X = np.zeros((n, dim))
    X[:, :2] = rng.standard_normal((n, 2))
    p = LinUCB(["a"], dim, reg=reg, gamma=gamma, alpha=1.0)
    probe = np.append(np.array([0.0, 0.0, 1.0, 0.5]), 1.0)
    idx = np.array([p._index["a"]])
    worst = 0.0
    for t, x in enumerate(X):
        p.learn(x, "a", 0.5, 0.0)
        Z = np.hstack([X[: t + 1], np.ones((t + 1, 1))])
        w = gamma ** np.arange(t, -1, -1)
        A = reg * np.eye(dim + 1) + (Z * w[:, None]).T @ Z
        exact = np.sqrt(probe @ np.linalg.solve(A, probe))
        _, width, _ = p.estimates(probe, idx)
        worst = max(worst, abs(width[0] / exact - 1.0))
    assert worst < 0.01, worst
