"""The hybrid (shared + per-model) learner against closed-form answers and its own draws."""

from __future__ import annotations

import numpy as np
import pytest

from policies import HybridLinear, PolicyError, load_policy

MODELS = ["a", "b", "c"]


def _stream(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    m = rng.integers(0, len(MODELS), n)
    q = rng.random(n)
    c = rng.random(n) * 1e-3
    return X, m, q, c


def _batch_ridge(
    X: np.ndarray,
    m: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    *,
    reg: float,
    dev_reg: float,
    intercept_reg: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The joint ridge problem written out: features [z | one block of z per model],
    prior precision [reg | dev_reg..., intercept_reg per model], sample weights w.
    Returns the solution and the joint precision matrix."""
    n, dim = X.shape
    p, k = dim + 1, len(MODELS)
    Z = np.hstack([X, np.ones((n, 1))])
    Phi = np.zeros((n, p * (k + 1)))
    Phi[:, :p] = Z
    for j in range(k):
        Phi[m == j, p * (j + 1) : p * (j + 2)] = Z[m == j]
    dev = np.append(np.full(dim, dev_reg), intercept_reg)
    prec = np.concatenate([np.full(p, reg), *([dev] * k)])
    A = np.diag(prec) + (Phi * w[:, None]).T @ Phi
    return np.linalg.solve(A, (Phi * w[:, None]).T @ y), A


def _phi(z: np.ndarray, j: int) -> np.ndarray:
    p = z.shape[0]
    out = np.zeros(p * (len(MODELS) + 1))
    out[:p] = z
    out[p * (j + 1) : p * (j + 2)] = z
    return out


@pytest.mark.parametrize("n", [1, 40, 1300])
def test_coefficients_equal_batch_ridge(n: int) -> None:
    dim, reg, dev_reg, ic, pq = 4, 2.0, 10.0, 0.5, 0.3
    X, m, q, c = _stream(n, dim)
    p = HybridLinear(
        MODELS, dim, reg=reg, dev_reg=dev_reg, intercept_reg=ic, prior_quality=pq, alpha=1.0
    )
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        p.learn(x, MODELS[j], float(qi), float(ci))
    kw = {"reg": reg, "dev_reg": dev_reg, "intercept_reg": ic}
    theta, A = _batch_ridge(X, m, q - pq, np.ones(n), **kw)
    theta_c, _ = _batch_ridge(X, m, c, np.ones(n), **kw)
    P = dim + 1
    for j, model in enumerate(MODELS):
        beta, total = p.coefficients(model)
        np.testing.assert_allclose(beta, theta[:P], atol=1e-9)
        np.testing.assert_allclose(total, theta[:P] + theta[P * (j + 1) : P * (j + 2)], atol=1e-9)
    z = np.append(np.random.default_rng(5).standard_normal(dim), 1.0)
    mean_q, sd, cost = p.estimates(z, np.arange(len(MODELS)))
    for j in range(len(MODELS)):
        f = _phi(z, j)
        assert mean_q[j] == pytest.approx(pq + f @ theta, abs=1e-6)
        # the width comes from float32 serving copies
        assert sd[j] == pytest.approx(np.sqrt(f @ np.linalg.solve(A, f)), rel=1e-4)
        assert cost[j] == pytest.approx(max(f @ theta_c, 0.0), abs=1e-9)


@pytest.mark.parametrize("gamma", [0.9, 0.98])
def test_forgetting_equals_weighted_batch_ridge(gamma: float) -> None:
    """Each update of a model multiplies that model's past statistics by gamma."""
    dim, n = 3, 200
    X, m, q, c = _stream(n, dim, seed=2)
    p = HybridLinear(MODELS, dim, gamma=gamma, prior_quality=0.5)
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        p.learn(x, MODELS[j], float(qi), float(ci))
    w = np.empty(n)
    for t in range(n):
        later = np.sum(m[t + 1 :] == m[t])  # updates of the same model after this one
        w[t] = gamma**later
    theta, _ = _batch_ridge(X, m, q - 0.5, w, reg=1.0, dev_reg=10.0, intercept_reg=1.0)
    for j, model in enumerate(MODELS):
        _, total = p.coefficients(model)
        P = dim + 1
        np.testing.assert_allclose(total, theta[:P] + theta[P * (j + 1) : P * (j + 2)], atol=1e-8)


def test_feedback_on_one_model_moves_every_model() -> None:
    """The point of sharing: a context that is hard for one model lowers the others'."""
    dim = 3
    x_hard = np.array([1.0, 0.0, 0.0])
    p = HybridLinear(MODELS, dim, prior_quality=0.5)
    before = p.estimates(np.append(x_hard, 1.0), np.array([1, 2]))[0]
    for _ in range(50):
        p.learn(x_hard, "a", 0.0, 0.0)
    after = p.estimates(np.append(x_hard, 1.0), np.array([1, 2]))[0]
    assert np.all(after < before - 0.1)


@pytest.mark.parametrize("exploration", ["ucb", "thompson"])
def test_propensities_match_sampling_frequencies(exploration: str) -> None:
    dim = 4
    X, m, q, c = _stream(300, dim, seed=4)
    p = HybridLinear(MODELS, dim, exploration=exploration, alpha=1.0, epsilon=0.1, seed=1)
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        p.learn(x, MODELS[j], float(qi * (j + 1) / 3), float(ci))
    x = X[0]
    probs = p.choose(x).probabilities
    n = 20_000
    counts = dict.fromkeys(MODELS, 0)
    for _ in range(n):
        d = p.choose(x)
        counts[d.model] += 1
        assert d.propensity == pytest.approx(probs[d.model])
    for model in MODELS:
        sd = np.sqrt(probs[model] * (1 - probs[model]) / n)
        assert abs(counts[model] / n - probs[model]) <= 4 * sd + 1e-9, (model, counts, probs)


def test_cold_model_takes_at_most_its_cap_until_feedback() -> None:
    dim = 2
    p = HybridLinear(["a", "b"], dim, exploration="ucb", cold_cap=0.1, cold_pulls=5, seed=3)
    x = np.array([0.3, -0.2])
    for _ in range(30):
        p.learn(x, "a", 0.2, 0.0)
        p.learn(x, "b", 0.3, 0.0)
    p.add_model("new")
    p.set_prior("new", quality=1.0, strength=10.0, cost=0.0)  # looks far better
    for _ in range(4):
        d = p.choose(x)
        assert d.probabilities["new"] == pytest.approx(0.1)
        assert sum(d.probabilities.values()) == pytest.approx(1.0)
        p.learn(x, "new", 1.0, 0.0)
    p.learn(x, "new", 1.0, 0.0)  # its fifth feedback: warm
    assert p.choose(x).probabilities["new"] > 0.9


def test_priors_set_the_cold_estimate_and_survive_a_round_trip() -> None:
    p = HybridLinear(["a"], 2, prior_quality=0.5)
    p.add_model("pricey")
    p.set_prior("pricey", quality=0.8, strength=4.0, cost=0.02)
    mean_q, _, cost = p.estimates(np.array([0.1, 0.2, 1.0]), np.array([1]))
    assert mean_q[0] == pytest.approx(0.8)
    assert cost[0] == pytest.approx(0.02)
    q = load_policy(p.to_bytes())
    assert isinstance(q, HybridLinear)
    assert q.priors()["pricey"] == {"quality": 0.8, "strength": 4.0, "cost": 0.02}
    p.learn(np.zeros(2), "pricey", 0.0, 0.0)
    with pytest.raises(PolicyError, match="already has feedback"):
        p.set_prior("pricey", quality=0.1)
    with pytest.raises(PolicyError, match="strength"):
        q.set_prior("a", strength=0.0)


def test_removing_a_model_equals_never_having_learned_it() -> None:
    dim = 3
    X, m, q, c = _stream(120, dim, seed=6)
    full = HybridLinear(MODELS, dim)
    kept = HybridLinear(["a", "b"], dim)
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        full.learn(x, MODELS[j], float(qi), float(ci))
        if MODELS[j] != "c":
            kept.learn(x, MODELS[j], float(qi), float(ci))
    full.remove_model("c")
    for model in ("a", "b"):
        np.testing.assert_allclose(
            full.coefficients(model)[1], kept.coefficients(model)[1], atol=1e-9
        )


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(PolicyError, match="exploration"):
        HybridLinear(MODELS, 2, exploration="greedy")
    with pytest.raises(PolicyError, match="dev_reg"):
        HybridLinear(MODELS, 2, dev_reg=0.0)
    with pytest.raises(PolicyError, match="cold_pulls"):
        HybridLinear(MODELS, 2, cold_pulls=-1)


def _low_rank_stream(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Contexts that vary mostly in 3 directions, so a 3-d basis keeps what matters."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, 3)))[0]
    X = rng.standard_normal((n, 3)) @ basis.T + 0.01 * rng.standard_normal((n, dim)) + 0.2
    m = rng.integers(0, len(MODELS), n)
    q = np.clip(0.5 + 0.3 * X[:, 0] * (m - 1), 0, 1)
    c = 1e-3 * (1 + m)
    return X, m, q, c


def test_refit_rebuilds_the_learned_state_exactly_in_the_new_basis() -> None:
    dim, k, n = 12, 3, 700
    X, m, q, c = _low_rank_stream(n, dim)
    p = HybridLinear(MODELS, dim, project_dim=k, prior_quality=0.5)
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        p.learn(x, MODELS[j], float(qi), float(ci))
    assert p.refits >= 2  # at 256 and 512 feedbacks
    # the same data learned from scratch in the final basis gives the same model
    Z = np.stack([p.project(x) for x in X])[:, :k]
    theta, _ = _batch_ridge(Z, m, q - 0.5, np.ones(n), reg=1.0, dev_reg=10.0, intercept_reg=1.0)
    P = k + 1
    for j, model in enumerate(MODELS):
        beta, total = p.coefficients(model)
        np.testing.assert_allclose(beta, theta[:P], atol=1e-8)
        np.testing.assert_allclose(total, theta[:P] + theta[P * (j + 1) : P * (j + 2)], atol=1e-8)
    # the basis is the contexts' principal subspace: projecting loses almost nothing
    centred = X - X.mean(axis=0)
    V = p._M[:k, :dim]
    recon = centred @ np.linalg.pinv(V) @ V
    assert np.linalg.norm(centred - recon) / np.linalg.norm(centred) < 0.05


def test_workers_on_one_version_project_identically_before_and_after_a_refit() -> None:
    dim = 10
    X, m, q, c = _low_rank_stream(600, dim, seed=3)
    learner = HybridLinear(MODELS, dim, project_dim=4, refit_every=256)
    probe = X[:20]

    def workers(published: bytes) -> list[np.ndarray]:
        copies = [load_policy(published) for _ in range(2)]
        assert all(isinstance(w, HybridLinear) for w in copies)
        return [np.stack([w.project(x) for x in probe]) for w in copies]  # type: ignore[attr-defined]

    for x, j, qi, ci in zip(X[:200], m[:200], q[:200], c[:200], strict=True):
        learner.learn(x, MODELS[j], float(qi), float(ci))
    a, b = workers(learner.to_bytes())
    assert learner.refits == 0 and a.tobytes() == b.tobytes()
    for x, j, qi, ci in zip(X[200:], m[200:], q[200:], c[200:], strict=True):
        learner.learn(x, MODELS[j], float(qi), float(ci))
    assert learner.refits >= 1
    a2, b2 = workers(learner.to_bytes())
    assert a2.tobytes() == b2.tobytes()
    assert not np.allclose(a, a2)  # the refit changed the basis every worker uses
    # a refit is deterministic: the same feedback gives the same basis
    twin = HybridLinear(MODELS, dim, project_dim=4, refit_every=256)
    for x, j, qi, ci in zip(X, m, q, c, strict=True):
        twin.learn(x, MODELS[j], float(qi), float(ci))
    assert twin.to_bytes() == learner.to_bytes()


@pytest.mark.parametrize("exploration", ["ucb", "thompson"])
def test_a_capped_cold_model_hands_its_share_to_the_best_warm_model(exploration: str) -> None:
    """The excess of a capped newcomer goes where the policy would route without it,
    not to the warm models in proportion to their exploration floor."""
    dim = 2
    p = HybridLinear(
        ["good", "bad1", "bad2"],
        dim,
        exploration=exploration,
        epsilon=0.03,
        cold_cap=0.2,
        cold_pulls=20,
        seed=2,
    )
    x = np.array([0.2, 0.1])
    for _ in range(60):
        p.learn(x, "good", 0.9, 0.0)
        p.learn(x, "bad1", 0.1, 0.0)
        p.learn(x, "bad2", 0.1, 0.0)
    p.add_model("new")
    p.set_prior("new", quality=1.0, strength=50.0)
    probs = p.choose(x).probabilities
    assert probs["new"] == pytest.approx(0.2)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["good"] > 0.75
    assert probs["bad1"] < 0.02 and probs["bad2"] < 0.02
    # and the draw follows the logged probabilities
    n = 4000
    hits = sum(p.choose(x).model == "new" for _ in range(n))
    assert abs(hits / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
