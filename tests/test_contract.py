"""One suite of generic checks run against every registered policy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from policies import REGISTRY, Policy, PolicyError, load_policy, make_policy

DIM = 6
MODELS = ["cheap", "mid", "strong"]

# Every registered policy must appear here with parameters to build it.
PARAMS: dict[str, dict[str, Any]] = {
    "linucb": {},
    "thompson": {},
    "hybrid": {},
    "vw": {},
    "fixed": {"model": "mid"},
    "random": {"weights": {"cheap": 2.0}},
    "rule": {"rules": [{"model": "strong", "keywords": ["prove"]}], "default": "cheap"},
}


def test_every_registered_policy_is_covered() -> None:
    assert set(PARAMS) == set(REGISTRY)


@pytest.fixture(params=sorted(PARAMS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(kind: str, seed: int = 3) -> Policy:
    return make_policy(kind, list(MODELS), DIM, seed=seed, **PARAMS[kind])


def contexts(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def feed(policy: Policy, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for x in contexts(n, seed):
        d = policy.choose(x, text="prove it" if rng.random() < 0.3 else "hi")
        q = float(rng.random() < 0.3 + 0.2 * MODELS.index(d.model))
        policy.learn(x, d.model, q, 1e-3 * (1 + MODELS.index(d.model)), propensity=d.propensity)


def test_choose_before_learning(kind: str) -> None:
    d = build(kind).choose(contexts(1)[0])
    assert d.model in MODELS
    assert math.isclose(sum(d.probabilities.values()), 1.0, rel_tol=1e-9)
    assert d.propensity == pytest.approx(d.probabilities[d.model])
    assert 0 < d.propensity <= 1


def test_same_seed_same_decisions(kind: str) -> None:
    a, b = build(kind, seed=7), build(kind, seed=7)
    feed(a, 60)
    feed(b, 60)
    xs = contexts(50, seed=9)
    assert [a.choose(x).model for x in xs] == [b.choose(x).model for x in xs]


def test_state_round_trip_makes_identical_decisions(kind: str) -> None:
    p = build(kind)
    feed(p, 80)
    q = load_policy(p.to_bytes())
    assert type(q) is type(p)
    assert q.params() == p.params()
    assert q.models == p.models
    assert q.updates == p.updates == 80
    for x in contexts(100, seed=5):
        dp, dq = p.choose(x, text="prove"), q.choose(x, text="prove")
        assert (dp.model, dp.propensity) == (dq.model, dq.propensity)
    # and they keep agreeing after both learn the same thing
    feed(p, 20, seed=11)
    feed(q, 20, seed=11)
    assert p.to_bytes() == q.to_bytes()


def test_clone_is_independent(kind: str) -> None:
    p = build(kind)
    feed(p, 30)
    before = p.to_bytes()
    q = load_policy(before)
    feed(q, 30, seed=4)
    assert p.to_bytes() == before


def test_candidate_subset_is_respected(kind: str) -> None:
    p = build(kind)
    feed(p, 30)
    for x in contexts(40, seed=2):
        d = p.choose(x, candidates=["cheap", "strong"], text="prove")
        assert d.model in ("cheap", "strong")
        assert set(d.probabilities) == {"cheap", "strong"}


def test_add_and_remove_models(kind: str) -> None:
    p = build(kind)
    feed(p, 20)
    p.add_model("new")
    assert "new" in p.models
    d = p.choose(contexts(1)[0], candidates=["new"])
    assert d.model == "new" and d.propensity == pytest.approx(1.0)
    p.learn(contexts(1)[0], "new", 1.0, 0.0)
    p.remove_model("cheap")
    assert "cheap" not in p.models
    with pytest.raises(PolicyError, match="unknown"):
        p.choose(contexts(1)[0], candidates=["cheap"])
    assert load_policy(p.to_bytes()).models == p.models
    with pytest.raises(PolicyError, match="already registered"):
        p.add_model("new")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, x: p.choose(np.ones(DIM + 1)), "context must have shape"),
        (lambda p, x: p.choose(np.full(DIM, np.nan)), "NaN"),
        (lambda p, x: p.choose(x, candidates=["nope"]), "unknown candidate"),
        (lambda p, x: p.choose(x, candidates=[]), "candidates must not be empty"),
        (lambda p, x: p.choose(x, cost_weight=-1.0), "cost_weight"),
        (lambda p, x: p.learn(x, "cheap", 1.5, 0.0), "quality"),
        (lambda p, x: p.learn(x, "cheap", float("nan"), 0.0), "quality"),
        (lambda p, x: p.learn(x, "cheap", 0.5, -0.01), "cost"),
        (lambda p, x: p.learn(x, "cheap", 0.5, float("nan")), "cost"),
        (lambda p, x: p.learn(x, "gone", 0.5, 0.0), "unknown model"),
        (lambda p, x: p.learn(np.ones(3), "cheap", 0.5, 0.0), "context must have shape"),
        (lambda p, x: p.learn(x, "cheap", 0.5, 0.0, propensity=0.0), "propensity"),
    ],
)
def test_bad_input_raises_and_changes_nothing(kind: str, call: Any, match: str) -> None:
    p = build(kind)
    feed(p, 10)
    before = p.to_bytes()
    with pytest.raises(PolicyError, match=match):
        call(p, contexts(1)[0])
    assert p.to_bytes() == before


def test_bad_hyper_parameters_name_the_parameter() -> None:
    with pytest.raises(PolicyError, match="dim"):
        make_policy("linucb", MODELS, 0)
    with pytest.raises(PolicyError, match="alpha"):
        make_policy("linucb", MODELS, DIM, alpha=-1)
    with pytest.raises(PolicyError, match="gamma"):
        make_policy("linucb", MODELS, DIM, gamma=1.5)
    with pytest.raises(PolicyError, match="epsilon"):
        make_policy("thompson", MODELS, DIM, epsilon=1.0)
    with pytest.raises(PolicyError, match="v must"):
        make_policy("thompson", MODELS, DIM, v=0)
    with pytest.raises(PolicyError, match="unknown policy"):
        make_policy("nope", MODELS, DIM)
    with pytest.raises(PolicyError, match="bad parameters"):
        make_policy("linucb", MODELS, DIM, alfa=1.0)
    with pytest.raises(PolicyError, match="rules\\[0\\]"):
        make_policy("rule", MODELS, DIM, rules=[{"model": "a", "when": 1}], default="cheap")


def test_corrupt_state_is_rejected() -> None:
    with pytest.raises(PolicyError, match="magic"):
        load_policy(b"not a state")
