"""Supervised reference routers on synthetic data with a known best model per cluster."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from simulator.supervised import KNNRouter, MFRouter, RidgeRouter, SupervisedRouter

DIM = 6
N_CLUSTERS = 3
PER_CLUSTER = 80
# model 3 is cheap; the others cost 100x more
COSTS = np.array([0.01, 0.01, 0.01, 0.0001])
COST_SCALE = 0.01
# P(correct) per cluster (rows) and model (columns): model c is best in cluster c; in
# cluster 2 the cheap model 3 ties with model 2 (make_clusters copies the outcomes).
P_CORRECT = np.array(
    [
        [0.95, 0.10, 0.10, 0.10],
        [0.10, 0.95, 0.10, 0.10],
        [0.10, 0.10, 0.90, 0.90],
    ]
)

ROUTERS: dict[str, Callable[[], SupervisedRouter]] = {
    "knn": lambda: KNNRouter(k=10),
    "ridge": lambda: RidgeRouter(alpha=1.0),
    "mf": lambda: MFRouter(rank=8, steps=600, lr=0.03, seed=0),
}


def make_clusters(per_cluster: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contexts near the first N_CLUSTERS unit axes, with 0/1 outcomes.

    Returns (contexts (n, DIM), cluster (n,), quality (n, 4)); cost is COSTS per call.
    """
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(N_CLUSTERS), per_cluster)
    x = np.eye(DIM)[cluster] + 0.05 * rng.standard_normal((cluster.size, DIM))
    p = P_CORRECT[cluster]
    quality = (rng.random(p.shape) < p).astype(np.float64)
    tie = cluster == 2
    quality[tie, 3] = quality[tie, 2]
    return x, cluster, quality


def costs_for(n: int) -> np.ndarray:
    return np.tile(COSTS, (n, 1))


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, _, q = make_clusters(PER_CLUSTER, seed=1)
    return x, q, costs_for(len(x))


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    x, cluster, _ = make_clusters(20, seed=2)
    return x, cluster


@pytest.fixture(scope="module", params=sorted(ROUTERS))
def fitted(request: pytest.FixtureRequest, train: tuple) -> SupervisedRouter:
    return ROUTERS[request.param]().fit(*train)


def test_routes_each_cluster_to_its_best_model_at_zero_cost_weight(
    fitted: SupervisedRouter, held_out: tuple
) -> None:
    x, cluster = held_out
    chosen = fitted.route(x, lam=0.0, cost_scale=COST_SCALE)
    assert np.all(chosen[cluster == 0] == 0)
    assert np.all(chosen[cluster == 1] == 1)
    # cluster 2: models 2 and 3 tie on quality, either is right when cost is ignored
    assert np.all(np.isin(chosen[cluster == 2], [2, 3]))


def test_prefers_the_cheap_model_where_quality_ties(
    fitted: SupervisedRouter, held_out: tuple
) -> None:
    x, cluster = held_out
    chosen = fitted.route(x, lam=0.2, cost_scale=COST_SCALE)
    assert np.all(chosen[cluster == 2] == 3)
    # elsewhere the quality gap (~0.85) dwarfs the cost penalty (0.2)
    assert np.all(chosen[cluster == 0] == 0)
    assert np.all(chosen[cluster == 1] == 1)


def test_predictions_have_the_right_shape_and_range(
    fitted: SupervisedRouter, held_out: tuple
) -> None:
    x, _ = held_out
    q, c = fitted.predict_quality(x), fitted.predict_cost(x)
    assert q.shape == c.shape == (len(x), 4)
    assert np.all((q >= 0) & (q <= 1))
    assert np.all(c >= 0)
    np.testing.assert_allclose(c, costs_for(len(x)), rtol=0.05)


def test_available_mask_excludes_models(fitted: SupervisedRouter, held_out: tuple) -> None:
    x, cluster = held_out
    mask = np.ones((len(x), 4), dtype=bool)
    mask[:, 0] = False
    chosen = fitted.route(x, lam=0.0, cost_scale=COST_SCALE, available=mask)
    assert not np.any(chosen == 0)
    assert np.all(chosen[cluster == 1] == 1)


def test_chosen_cost_never_rises_with_the_cost_weight(
    fitted: SupervisedRouter, held_out: tuple
) -> None:
    # one fit traces the frontier: the argmax of q - lam * c moves to cheaper models only
    x, _ = held_out
    cost = fitted.predict_cost(x)
    chosen = [fitted.route(x, lam, COST_SCALE) for lam in np.linspace(0.0, 5.0, 21)]
    picked = np.stack([cost[np.arange(len(x)), c] for c in chosen])
    assert np.all(np.diff(picked, axis=0) <= 1e-15)
    assert np.all(chosen[-1] == 3)  # at lam=5 the cheap model wins everywhere


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_missing_outcomes_are_masked_not_counted_as_zero(name: str, held_out: tuple) -> None:
    x, cluster, q = make_clusters(PER_CLUSTER, seed=3)
    cost = costs_for(len(x))
    # model 1's cluster-1 outcomes: all NaN but every 4th, and those are all 1.0
    rows = np.flatnonzero(cluster == 1)
    q[rows, 1] = np.nan
    q[rows[::4], 1] = 1.0
    cost[rows[1::4], 1] = np.nan  # a missing cost alone must not break the cost fit
    router = ROUTERS[name]().fit(x, q, cost)
    xt, ct = held_out
    pred = router.predict_quality(xt)[ct == 1, 1]
    # counting NaN as 0 would give about 0.25 here
    assert pred.min() > 0.8
    np.testing.assert_allclose(router.predict_cost(xt)[:, 1], 0.01, rtol=0.05)
    assert np.all(router.route(xt, 0.0, COST_SCALE)[ct == 1] == 1)


def test_knn_is_the_mean_over_the_k_nearest_by_cosine(train: tuple) -> None:
    x, q, c = train
    rng = np.random.default_rng(5)
    # rescaling contexts must not matter: similarity is cosine
    router = KNNRouter(k=7).fit(x * rng.uniform(0.5, 3.0, (len(x), 1)), q, c)
    xt = rng.standard_normal((5, DIM))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    near = np.argsort(-(xt / np.linalg.norm(xt, axis=1, keepdims=True)) @ xn.T, axis=1)[:, :7]
    np.testing.assert_allclose(router.predict_quality(xt), q[near].mean(axis=1))


def test_knn_with_k_above_n_uses_every_observed_row(train: tuple) -> None:
    x, q, c = train
    q = q.copy()
    q[::3, 2] = np.nan
    router = KNNRouter(k=10_000).fit(x, q, c)
    pred = router.predict_quality(x[:4])
    np.testing.assert_allclose(pred, np.tile(np.nanmean(q, axis=0), (4, 1)))


def test_ridge_recovers_a_linear_target() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 4))
    w = np.array([0.05, -0.1, 0.08, 0.0])
    quality = np.column_stack([0.5 + x @ w, 0.3 + 0 * x[:, 0]])
    cost = np.column_stack([0.002 + 0.001 * x[:, 0] ** 2, np.full(300, 0.01)])
    router = RidgeRouter(alpha=1e-6).fit(x, quality, cost)
    xt = 0.5 * rng.standard_normal((10, 4))
    np.testing.assert_allclose(router.predict_quality(xt)[:, 0], 0.5 + xt @ w, atol=1e-6)
    np.testing.assert_allclose(router.predict_quality(xt)[:, 1], 0.3, atol=1e-6)
    np.testing.assert_allclose(router.predict_cost(xt)[:, 1], 0.01, atol=1e-9)


def test_ridge_clips_quality_and_cost() -> None:
    x = np.linspace(-1.0, 1.0, 50)[:, None]
    quality = np.clip(0.5 + x[:, :1], 0.0, 1.0)
    cost = np.clip(0.01 * x[:, :1], 0.0, None)
    router = RidgeRouter(alpha=1e-6).fit(x, quality, cost)
    far = np.array([[-10.0], [10.0]])
    assert np.all((router.predict_quality(far) >= 0) & (router.predict_quality(far) <= 1))
    assert np.all(router.predict_cost(far) >= 0)


def test_mf_is_deterministic_given_its_seed(train: tuple, held_out: tuple) -> None:
    x, _ = held_out
    a = MFRouter(rank=4, steps=50, seed=7).fit(*train).predict_quality(x)
    b = MFRouter(rank=4, steps=50, seed=7).fit(*train).predict_quality(x)
    c = MFRouter(rank=4, steps=50, seed=8).fit(*train).predict_quality(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_refitting_replaces_the_previous_fit(train: tuple, held_out: tuple) -> None:
    x, q, c = train
    xt, _ = held_out
    router = KNNRouter(k=5)
    first = router.fit(x, q, c).predict_quality(xt)
    router.fit(x, 1.0 - q, c)
    np.testing.assert_allclose(router.predict_quality(xt), 1.0 - first)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_predicting_before_fit_raises(name: str) -> None:
    with pytest.raises(RuntimeError, match="fit"):
        ROUTERS[name]().predict_quality(np.ones((1, DIM)))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KNNRouter(k=0), "k"),
        (lambda: KNNRouter(k=True), "k"),
        (lambda: KNNRouter(k=2.0), "k"),
        (lambda: RidgeRouter(alpha=0.0), "alpha"),
        (lambda: RidgeRouter(alpha=float("nan")), "alpha"),
        (lambda: MFRouter(rank=0), "rank"),
        (lambda: MFRouter(steps=0), "steps"),
        (lambda: MFRouter(lr=-0.1), "lr"),
        (lambda: MFRouter(l2=-1.0), "l2"),
        (lambda: MFRouter(cost_alpha=0.0), "cost_alpha"),
        (lambda: MFRouter(seed=-1), "seed"),
    ],
)
def test_bad_hyperparameters_raise(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def _bad_fit_inputs() -> list[tuple[str, tuple, str]]:
    x = np.ones((4, 2))
    q = np.full((4, 3), 0.5)
    c = np.full((4, 3), 0.01)
    nan_col = q.copy()
    nan_col[:, 1] = np.nan
    inf_x = x.copy()
    inf_x[0, 0] = np.inf
    return [
        ("1-d contexts", (np.ones(4), q, c), "contexts"),
        ("empty contexts", (np.ones((0, 2)), q[:0], c[:0]), "contexts"),
        ("infinite contexts", (inf_x, q, c), "contexts"),
        ("quality rows", (x, q[:3], c), "quality"),
        ("quality above 1", (x, q + 0.6, c), "quality"),
        ("quality all NaN for a model", (x, nan_col, c), r"quality.*\[1\]"),
        ("negative cost", (x, q, -c), "cost"),
        ("cost columns", (x, q, c[:, :2]), "cost"),
    ]


@pytest.mark.parametrize(("label", "args", "match"), _bad_fit_inputs())
def test_bad_fit_inputs_raise(label: str, args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RidgeRouter().fit(*args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"contexts": np.ones((2, DIM + 1))}, "contexts"),
        ({"lam": -0.1}, "lam"),
        ({"lam": float("inf")}, "lam"),
        ({"cost_scale": 0.0}, "cost_scale"),
        ({"available": np.ones((2, 3), dtype=bool)}, "available"),
        ({"available": np.ones((2, 4))}, "available"),
        ({"available": np.array([[True] * 4, [False] * 4])}, "available"),
    ],
)
def test_bad_route_inputs_raise(kwargs: dict, match: str, train: tuple) -> None:
    router = KNNRouter(k=3).fit(*train)
    args = {"contexts": np.ones((2, DIM)), "lam": 0.1, "cost_scale": COST_SCALE}
    with pytest.raises(ValueError, match=match):
        router.route(**(args | kwargs))
