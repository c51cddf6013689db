"""Thompson sampling's closed-form propensities against a high-precision reference.

The logged propensity feeds IPS, SNIPS and DR, so a small win probability must be
right in relative terms, also when the models' posterior widths differ by orders of
magnitude (a well-explored model next to a new one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from policies.thompson import win_probabilities


def reference(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """P(model m has the largest draw), each by adaptive quadrature over m's own
    density, with breakpoints where another model's cdf steps."""
    out = []
    for m in range(len(mu)):
        others = [k for k in range(len(mu)) if k != m]

        def f(s: float, m: int = m, others: list[int] = others) -> float:
            return float(
                norm.pdf(s, mu[m], sigma[m])
                * np.prod([norm.cdf(s, mu[k], sigma[k]) for k in others])
            )

        lo, hi = mu[m] - 15 * sigma[m], mu[m] + 15 * sigma[m]
        cuts = {mu[m]} | {mu[k] + j * sigma[k] for k in others for j in (-3, 0, 3)}
        points = sorted(p for p in cuts if lo < p < hi)
        value, _ = integrate.quad(f, lo, hi, points=points or None, limit=1000, epsrel=1e-11)
        out.append(value)
    return np.array(out)


@pytest.mark.parametrize("ratio", [1.0, 10.0, 100.0, 1e3, 1e4])
def test_win_probabilities_match_a_high_precision_reference(ratio: float) -> None:
    worst = 0.0
    for d in np.linspace(-5.0, 5.0, 11):
        for k in (2, 3):
            sigma = np.array([1.0] + [1.0 / ratio] * (k - 1))
            mu = np.array([0.0] + [d + 0.3 * i / ratio for i in range(k - 1)])
            ref = reference(mu, sigma)
            got = win_probabilities(mu, sigma)
            assert got.sum() == pytest.approx(1.0)
            seen = ref > 1e-6
            worst = max(worst, float(np.max(np.abs(got[seen] - ref[seen]) / ref[seen])))
    print(f"sigma ratio {ratio:g}: worst relative error {worst:.4f}")
    assert worst < 0.01


def test_random_configurations_are_accurate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(12):
        k = int(rng.integers(2, 6))
        sigma = 0.01 * np.exp(rng.uniform(0.0, np.log(1e3), k))
        mu = rng.normal(0.0, 0.03, k)
        ref = reference(mu, sigma)
        got = win_probabilities(mu, sigma)
        seen = ref > 1e-6
        np.testing.assert_allclose(got[seen], ref[seen], rtol=0.01)
