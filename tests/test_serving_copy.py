"""The hybrid learner's serving copy (`prepare_serving`): a worker's choice from the
folded float32 copy decides like the exact path, and any change to the policy drops
the copy, so a stale one is never served."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from policies import make_policy

MODELS = [f"m{i}" for i in range(6)]


def trained(seed: int = 0, dim: int = 24, n: int = 400):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    p = make_policy("hybrid", MODELS, dim, seed=seed)
    w = rng.normal(size=(len(MODELS), dim)) * 0.3
    for _ in range(n):
        x = rng.normal(size=dim) / np.sqrt(dim)
        d = p.choose(x)
        k = MODELS.index(d.model)
        q = float(np.clip(0.5 + x @ w[k] + rng.normal(0, 0.1), 0, 1))
        p.learn(x, d.model, q, 0.001 * (k + 1), propensity=d.propensity)
    return p, rng


@pytest.mark.parametrize("exploration", ["thompson", "ucb"])
def test_the_serving_copy_decides_like_the_exact_path(exploration: str) -> None:
    p, rng = trained()
    p.exploration = exploration  # type: ignore[attr-defined]
    exact = copy.deepcopy(p)
    p.prepare_serving()
    assert p._served is not None  # type: ignore[attr-defined]
    for _ in range(50):
        x = rng.normal(size=p.dim) / np.sqrt(p.dim)
        a = exact.choose(x, cost_weight=0.3)
        b = p.choose(x, cost_weight=0.3)
        for m in MODELS:
            assert b.probabilities[m] == pytest.approx(a.probabilities[m], abs=1e-5)
            assert b.expected_quality is not None and a.expected_quality is not None
            assert b.expected_quality[m] == pytest.approx(a.expected_quality[m], abs=1e-5)


def test_any_change_drops_the_serving_copy() -> None:
    p, rng = trained()
    x = rng.normal(size=p.dim) / np.sqrt(p.dim)
    for change in (
        lambda: p.learn(x, "m1", 0.9, 0.002, propensity=0.5),
        lambda: p.add_model("m9"),
        lambda: p.remove_model("m9"),
    ):
        p.prepare_serving()
        assert p._served is not None  # type: ignore[attr-defined]
        change()
        assert p._served is None  # type: ignore[attr-defined]
    # and a choice after a change is the exact path's, with the change in it
    exact = copy.deepcopy(p)
    assert p.choose(x).probabilities == exact.choose(x).probabilities
