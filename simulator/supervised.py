"""Supervised reference routers: fitted on the `train` split with every label (each
model's quality and cost on every training prompt), evaluated on `test`.

They show what a label-hungry router achieves, the reference our label-free bandits
should approach. Each router predicts every model's quality and cost for a context, so
one fitted router traces the whole cost-quality frontier by sweeping `lam` in `route`
without refitting. Missing outcomes (NaN) are masked in training, never counted as 0.

    router = KNNRouter().fit(X[train], data.quality[train], data.cost[train])
    chosen = router.route(X[test], lam=0.2, cost_scale=s, available=data.available[test])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import numpy as np

_EPS = 1e-12
# Test rows per block in kNN, so the (block, n_train) similarity matrix stays small.
_KNN_BLOCK = 1024


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_contexts(name: str, contexts: object, dim: int | None = None) -> np.ndarray:
    x = np.asarray(contexts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (as in fit), got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def _check_outcomes(name: str, values: object, n: int, low: float, high: float) -> np.ndarray:
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != n or y.shape[1] == 0:
        raise ValueError(f"{name} must have shape ({n}, K) with K >= 1, got {y.shape}")
    seen = y[~np.isnan(y)]
    if np.any(seen < low) or np.any(seen > high):
        raise ValueError(f"{name} must lie in [{low}, {high}] (NaN for missing)")
    empty = np.flatnonzero(np.isnan(y).all(axis=0))
    if empty.size:
        raise ValueError(f"{name} has no observed value for model column(s) {empty.tolist()}")
    return y


class SupervisedRouter(ABC):
    """Predicts each model's quality and cost from a context and routes to the model
    with the best predicted quality - lam * cost / cost_scale.

    Public methods validate and hand over to the private `_fit` / `_predict`.
    """

    name = "supervised"

    def __init__(self) -> None:
        self._dim: int | None = None
        self._n_models = 0

    def fit(self, contexts: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> Self:
        """Fit on training prompts with every label.

        contexts: shape (n, d), any real features (e.g. the replay's featurizer output).
        quality: shape (n, K), in [0, 1], NaN where a model has no result.
        cost: shape (n, K), USD per call, >= 0, NaN where a model has no result.
        Each model needs at least one observed quality and one observed cost.
        """
        x = _check_contexts("contexts", contexts)
        q = _check_outcomes("quality", quality, x.shape[0], 0.0, 1.0)
        c = _check_outcomes("cost", cost, x.shape[0], 0.0, np.inf)
        if c.shape[1] != q.shape[1]:
            raise ValueError(f"cost must have {q.shape[1]} columns like quality, got {c.shape[1]}")
        self._fit(x, q, c)
        self._dim, self._n_models = x.shape[1], q.shape[1]
        return self

    def predict_quality(self, contexts: np.ndarray) -> np.ndarray:
        """Predicted quality of every model, shape (m, K), in [0, 1]."""
        return self._predict(self._checked(contexts))[0]

    def predict_cost(self, contexts: np.ndarray) -> np.ndarray:
        """Predicted cost of every model, shape (m, K), USD per call, >= 0."""
        return self._predict(self._checked(contexts))[1]

    def route(
        self,
        contexts: np.ndarray,
        lam: float,
        cost_scale: float,
        available: np.ndarray | None = None,
    ) -> np.ndarray:
        """Index of the chosen model per row, shape (m,), int64: the argmax over available
        models of predicted quality - lam * predicted cost / cost_scale (ties: lowest index).

        lam: quality points per `cost_scale` USD, >= 0. cost_scale: USD, > 0.
        available: bool mask, shape (m, K), at least one True per row; None means all.
        """
        x = self._checked(contexts)
        lam = _check_positive("lam", lam, allow_zero=True)
        cost_scale = _check_positive("cost_scale", cost_scale)
        m, k = x.shape[0], self._n_models
        if available is None:
            mask = np.ones((m, k), dtype=bool)
        else:
            mask = np.asarray(available)
            if mask.shape != (m, k) or mask.dtype != np.bool_:
                raise ValueError(f"available must be a bool array of shape ({m}, {k})")
            if not mask.any(axis=1).all():
                raise ValueError("available must allow at least one model in every row")
        q, c = self._predict(x)
        score = np.where(mask, q - lam * c / cost_scale, -np.inf)
        return np.argmax(score, axis=1).astype(np.int64)

    def _checked(self, contexts: np.ndarray) -> np.ndarray:
        if self._dim is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit first")
        return _check_contexts("contexts", contexts, self._dim)

    @abstractmethod
    def _fit(self, x: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> None: ...

    @abstractmethod
    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(quality, cost), each shape (m, K)."""


class KNNRouter(SupervisedRouter):
    """RouterBench's kNN router (arXiv 2403.12031): a model's predicted quality and cost
    on a prompt are the means over the k training prompts most cosine-similar to it.

    Contexts are normalised to unit length, so any feature vectors work. Missing outcomes
    are handled per model: its neighbours are the k most similar training prompts that
    have an outcome for that model (all of them if it has fewer than k). Without NaN
    this is exactly RouterBench's rule; with NaN it never counts a missing outcome as 0
    and, unlike RouterBench's masked mean over one shared neighbourhood, never leaves a
    model with no neighbour at all.
    k defaults to 50, RouterBench's `n_neighbors` (withmartian/routerbench,
    routers/knn_router.py).
    """

    name = "knn"

    def __init__(self, k: int = 50) -> None:
        super().__init__()
        self.k = _check_int("k", k, 1)

    def _fit(self, x: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> None:
        self._x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        self._y = np.hstack([quality, cost])  # shape (n, 2K)
        # columns sharing a missingness pattern share their neighbour search
        patterns, inverse = np.unique(~np.isnan(self._y).T, axis=0, return_inverse=True)
        self._groups = [
            (np.flatnonzero(observed), np.flatnonzero(inverse.ravel() == p))
            for p, observed in enumerate(patterns)
        ]

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        out = np.vstack([self._block(x[s : s + _KNN_BLOCK]) for s in range(0, len(x), _KNN_BLOCK)])
        k = out.shape[1] // 2
        return out[:, :k], out[:, k:]

    def _block(self, x: np.ndarray) -> np.ndarray:
        sim = x @ self._x.T  # cosine similarity, shape (m, n)
        out = np.empty((x.shape[0], self._y.shape[1]))
        for rows, cols in self._groups:
            k = min(self.k, rows.size)
            near = rows[np.argpartition(-sim[:, rows], k - 1, axis=1)[:, :k]]  # shape (m, k)
            out[:, cols] = self._y[:, cols][near].mean(axis=1)
        return out


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ridge with an unpenalised intercept, each column fitted on its own
    observed rows. x: shape (n, d); y: shape (n, K) with NaN. Returns (W (d, K), b (K,))."""
    d, k = x.shape[1], y.shape[1]
    w, b = np.zeros((d, k)), np.zeros(k)
    for j in range(k):
        rows = ~np.isnan(y[:, j])
        xj, yj = x[rows], y[rows, j]
        # centring removes the intercept from the penalised problem
        mx, my = xj.mean(axis=0), yj.mean()
        xc = xj - mx
        # w = (Xc^T Xc + alpha I)^-1 Xc^T (y - mean y); solve, never invert
        w[:, j] = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ (yj - my))
        b[j] = my - mx @ w[:, j]
    return w, b


class RidgeRouter(SupervisedRouter):
    """One ridge regression per model of quality, and one of cost, on the context
    (closed form, intercept unpenalised, each model on its observed rows only).

    Predicted quality is clipped to [0, 1] and cost to >= 0.
    alpha: L2 penalty on the weights, > 0.
    """

    name = "ridge"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_positive("alpha", alpha)

    def _fit(self, x: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> None:
        self._quality = _ridge(x, quality, self.alpha)
        self._cost = _ridge(x, cost, self.alpha)

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (wq, bq), (wc, bc) = self._quality, self._cost
        return np.clip(x @ wq + bq, 0.0, 1.0), np.maximum(x @ wc + bc, 0.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + e^-z)


class MFRouter(SupervisedRouter):
    """Matrix-factorisation router after RouteLLM (arXiv 2406.18665), adapted to predict
    each model's quality instead of pairwise wins.

    RouteLLM scores s(m, x) = w^T (normalise(v_m) * (W x)) and trains
    sigmoid(s(a, x) - s(b, x)) on human preference pairs. Here, with every model's
    quality observed, the loss is pointwise:
        quality[x, m] ~ sigmoid(v_m . (P x) + b_m),
    P: shape (r, d), a learned projection; v_m: shape (r,) (RouteLLM's w is absorbed
    into v_m, which is not normalised); b_m a per-model bias RouteLLM does not need.
    Trained by full-batch Adam on binary cross-entropy (soft labels in [0, 1]) over the
    observed (prompt, model) cells only, plus l2/2 * (|P|^2 + |v|^2); no input noise.
    Cost is not factorised: it comes from a per-model ridge (`RidgeRouter`'s cost).

    rank: latent dimension r. steps, lr: Adam iterations and step size. l2: penalty.
    seed: initialisation; same seed, same data -> same predictions.
    """

    name = "mf"

    def __init__(
        self,
        rank: int = 32,
        *,
        steps: int = 1000,
        lr: float = 0.01,
        l2: float = 1e-4,
        cost_alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.rank = _check_int("rank", rank, 1)
        self.steps = _check_int("steps", steps, 1)
        self.lr = _check_positive("lr", lr)
        self.l2 = _check_positive("l2", l2, allow_zero=True)
        self.cost_alpha = _check_positive("cost_alpha", cost_alpha)
        self.seed = _check_int("seed", seed, 0)

    def _fit(self, x: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> None:
        d, k = x.shape[1], quality.shape[1]
        rng = np.random.default_rng(self.seed)
        seen = ~np.isnan(quality)
        target = np.where(seen, quality, 0.0)
        # start at each model's mean quality so the factors only learn the variation
        mean = np.clip(np.nanmean(quality, axis=0), 0.01, 0.99)
        params = [
            rng.standard_normal((self.rank, d)) / np.sqrt(d),  # P
            rng.standard_normal((k, self.rank)) * 0.1 / np.sqrt(self.rank),  # V
            np.log(mean / (1.0 - mean)),  # b
        ]
        first = [np.zeros_like(p) for p in params]
        second = [np.zeros_like(p) for p in params]
        beta1, beta2 = 0.9, 0.999
        n_seen = seen.sum()
        for t in range(1, self.steps + 1):
            p, v, b = params
            h = x @ p.T  # shape (n, r)
            # d(mean BCE)/d(logit) = sigmoid(z) - y, zero on unobserved cells
            g = np.where(seen, _sigmoid(h @ v.T + b) - target, 0.0) / n_seen
            grads = [(g @ v).T @ x + self.l2 * p, g.T @ h + self.l2 * v, g.sum(axis=0)]
            for i, grad in enumerate(grads):
                first[i] = beta1 * first[i] + (1 - beta1) * grad
                second[i] = beta2 * second[i] + (1 - beta2) * grad**2
                step = first[i] / (1 - beta1**t)
                scale = np.sqrt(second[i] / (1 - beta2**t)) + 1e-8
                params[i] = params[i] - self.lr * step / scale
        self._p, self._v, self._b = params
        self._cost = _ridge(x, cost, self.cost_alpha)

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wc, bc = self._cost
        quality = _sigmoid((x @ self._p.T) @ self._v.T + self._b)
        return quality, np.maximum(x @ wc + bc, 0.0)
