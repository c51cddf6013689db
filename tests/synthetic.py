"""Synthetic linear bandits with a known best model per context (for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies import Policy


@dataclass
class LinearBandit:
    """K models; model k answers context x correctly with probability
    clip(base_k + theta_k . x, 0.02, 0.98). Contexts are unit vectors in R^dim.

    theta: shape (K, dim); base: shape (K,); costs: USD per call, shape (K,).
    """

    theta: np.ndarray
    base: np.ndarray
    costs: np.ndarray
    models: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        if not self.models:
            self.models = [f"m{k}" for k in range(self.theta.shape[0])]

    @property
    def dim(self) -> int:
        return int(self.theta.shape[1])

    def context(self) -> np.ndarray:
        x = self.rng.standard_normal(self.dim)
        return x / np.linalg.norm(x)

    def mean_quality(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.base + self.theta @ x, 0.02, 0.98)

    def outcome(self, x: np.ndarray, k: int) -> float:
        return float(self.rng.random() < self.mean_quality(x)[k])


def regional_bandit(dim: int = 8, k: int = 3, seed: int = 0) -> LinearBandit:
    """Each model is best in its own direction of context space."""
    rng = np.random.default_rng(1000 + seed)
    theta = rng.standard_normal((k, dim))
    theta *= 0.45 / np.linalg.norm(theta, axis=1, keepdims=True)
    base = np.full(k, 0.5)
    costs = np.geomspace(1e-4, 1e-2, k)
    return LinearBandit(theta=theta, base=base, costs=costs, seed=seed)


def run(policy: Policy, env: LinearBandit, rounds: int, lam: float = 0.0) -> np.ndarray:
    """Play `rounds`; return the per-round regret in expected quality, shape (rounds,)."""
    regret = np.empty(rounds)
    for t in range(rounds):
        x = env.context()
        d = policy.choose(x, cost_weight=lam)
        k = env.models.index(d.model)
        q = env.outcome(x, k)
        policy.learn(x, d.model, q, float(env.costs[k]), propensity=d.propensity)
        mq = env.mean_quality(x)
        regret[t] = mq.max() - mq[k]
    return regret
