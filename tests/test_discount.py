"""Policy.discount: a shrunk copy of the learned evidence, the prior of a tenant's own
policy. The means stay close, the uncertainty grows, and the result learns on."""

from __future__ import annotations

import numpy as np
import pytest

from policies import PolicyError, load_policy, make_policy

MODELS = ["a", "b", "c"]
DIM = 8


def _trained(kind: str, n: int = 600) -> object:
    policy = make_policy(kind, MODELS, DIM, seed=1)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, DIM))
    for _ in range(n):
        x = rng.normal(size=DIM)
        for i, m in enumerate(MODELS):
            q = float(np.clip(0.5 + 0.1 * w[i] @ x + rng.normal(0, 0.05), 0, 1))
            policy.learn(x, m, q, 0.001 * (i + 1))
    return policy


def _estimates(policy: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # the augmented context each family learns on ([x, 1], the hybrid's projected)
    z = policy._z(x) if hasattr(policy, "_z") else policy._augment(x)  # type: ignore[attr-defined]
    mean, sd, _ = policy.estimates(z, np.arange(3))  # type: ignore[attr-defined]
    return mean, sd


@pytest.mark.parametrize("kind", ["hybrid", "linucb", "thompson"])
def test_discount_keeps_means_and_widens(kind: str) -> None:
    policy = _trained(kind)
    before = load_policy(policy.to_bytes())  # type: ignore[attr-defined]
    policy.discount(0.1)  # type: ignore[attr-defined]
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = rng.normal(size=DIM)
        m0, s0 = _estimates(before, x)
        m1, s1 = _estimates(policy, x)
        # the prior now weighs ten times as much against the data: a little pull
        # toward it, no more
        assert np.max(np.abs(m1 - m0)) < 0.1
        # a tenth of the evidence: widths about sqrt(10) times wider, never narrower
        assert np.all(s1 > s0 * 2.0)
    stats0, stats1 = before.stats(), policy.stats()  # type: ignore[attr-defined]
    for m in MODELS:
        assert stats1[m].pulls == round(stats0[m].pulls * 0.1)


@pytest.mark.parametrize("kind", ["hybrid", "linucb", "thompson"])
def test_discounted_policy_learns_and_round_trips(kind: str) -> None:
    policy = _trained(kind, 200)
    policy.discount(0.5)  # type: ignore[attr-defined]
    x = np.ones(DIM) / DIM
    for _ in range(50):
        policy.learn(x, "a", 1.0, 0.0)  # type: ignore[attr-defined]
    again = load_policy(policy.to_bytes())  # type: ignore[attr-defined]
    a = policy.choose(x, None, 0.0)  # type: ignore[attr-defined]
    b = again.choose(x, None, 0.0)
    assert a.expected_quality == b.expected_quality


def test_weight_one_changes_nothing_and_bad_weights_are_refused() -> None:
    policy = _trained("linucb", 50)
    state = policy.to_bytes()  # type: ignore[attr-defined]
    policy.discount(1.0)  # type: ignore[attr-defined]
    assert policy.to_bytes() == state  # type: ignore[attr-defined]
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(PolicyError, match="weight"):
            policy.discount(bad)  # type: ignore[attr-defined]


def test_vw_cannot_discount_and_static_routers_need_not() -> None:
    vw = make_policy("vw", MODELS, DIM)
    with pytest.raises(PolicyError, match="cannot discount"):
        vw.discount(0.5)
    fixed = make_policy("fixed", MODELS, DIM, model="b")
    fixed.discount(0.5)
    assert fixed.choose(np.zeros(DIM), None, 0.0).model in MODELS
