"""LinUCB: disjoint ridge regression per model with an upper-confidence bonus."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import argmax_distribution, check_positive, epsilon_mix
from policies.linear import LinearPolicy


class LinUCB(LinearPolicy):
    """Choose argmax of  q_hat + alpha * sqrt(z^T A^{-1} z) - lambda * c_hat / cost_scale.

    alpha: exploration width (>= 0). Ties split evenly; an epsilon floor keeps every
    candidate's propensity >= epsilon / K so the logs support off-policy evaluation.
    See `LinearPolicy` for reg, prior_quality, gamma, epsilon.
    """

    name = "linucb"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        alpha: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        super().__init__(models, dim, **kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}

    def _decide(
        self, mean_q: np.ndarray, width: np.ndarray, cost_norm: np.ndarray, lam: float
    ) -> tuple[np.ndarray, int, np.ndarray]:
        scores = mean_q + self.alpha * width - lam * cost_norm
        probs = epsilon_mix(argmax_distribution(scores), self.epsilon)
        return probs, self._sample(probs), scores
