"""Hybrid linear bandit: one model of the query shared by every LLM, plus per-LLM deviations.

A prompt that is hard for one model is usually hard for all of them, so feedback on any
model should sharpen every model's estimate. For model m and augmented context
z = [x, 1] the expected quality is

    q_m(z) = prior_quality + offset_m + z^T (beta + delta_m)

with beta shared by all models (ridge `reg`) and delta_m the model's own deviation
(ridge `dev_reg` on the context, `intercept_reg` on its intercept, so models differ
easily in level and only with evidence in shape). This is the hybrid model of
Li et al. (2010), with the shared features equal to the per-model ones. Cost is
learned the same way, against its own offset (the catalogue's expected cost).

Everything is exact ridge regression, updated in O(d^2) per feedback. With the
per-model precision A_m = D_m + G_m (D_m the diagonal prior, G_m the model's Gram
matrix) the shared system is

    A_0 = reg I + sum_m (D_m - D_m A_m^{-1} D_m),   b_0 = sum_m D_m A_m^{-1} b_m,

so one feedback on m changes A_0 by a rank-1 term and b_0 by a vector: two
Sherman-Morrison steps keep A_m^{-1} and A_0^{-1} current. A prediction needs
u = A_m^{-1} z and w = D_m u: mean = w^T beta + u^T b_m, and the posterior variance of
z^T (beta + delta_m) is w^T A_0^{-1} w + z^T u.

Exploration is UCB (mean + alpha * sd) or Thompson sampling (each model's score drawn
from its own marginal posterior, sd scaled by alpha). Either way the decision's
probabilities are exact for the draw actually made, then a cold cap limits models
with fewer than `cold_pulls` feedbacks to `cold_cap` each (their share moves to the
warm models), and the epsilon floor keeps every candidate at >= epsilon / K.

Learned projection (`project_dim` > 0): the policy learns in a k-dimensional basis of
its input, the top principal components of the contexts it has learned from (no
labels needed), refit on a doubling schedule. Every model's raw sufficient statistics
are kept, and the features are a linear map M of the raw context, so a refit rebuilds
the learned state exactly in the new basis (G = M G_raw M^T, b = M b_raw) instead of
starting over. M travels in the state bytes: every worker serving one version
projects a query identically. Before the first refit M is a seeded random projection.

Serving copy (`prepare_serving`): a worker's copy only chooses until the next snapshot,
so it folds the shared system into per-model quantities once: the coefficients
theta_m = A_m^{-1} (D_m beta + b_m) (mean = z^T theta_m) and V_m = A_m^{-1} +
A_m^{-1} D_m A_0^{-1} D_m A_m^{-1} (variance = z^T V_m z). A choice then reads the
V_m once for their quadratic forms (float32, upper triangles: linear.SymmetricStack)
and the stacked coefficients in one gemv (float64), instead of the gemv over the
inverses, a gemm against A_0^{-1} and the einsums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.base import (
    Decision,
    Policy,
    PolicyError,
    argmax_distribution,
    check_positive,
    check_probability,
)
from policies.linear import SymmetricStack, _ger
from policies.thompson import win_probabilities

EXPLORATIONS = ("ucb", "thompson")
# Exact re-inversion from the sufficient statistics every this many updates of a
# model (and of the shared system): Sherman-Morrison drifts slowly in float64.
_REFRESH_EVERY = 512
# The first refit of a learned projection waits for this many feedbacks, then the
# interval doubles up to `refit_every`.
_FIRST_REFIT = 256
_PER_MODEL = (
    "_D",
    "_Ainv",
    "_Ainv32",
    "_G",
    "_bq",
    "_bc",
    "_oq",
    "_oc",
    "_since_refresh",
    "_Graw",
    "_bq_raw",
    "_bc_raw",
)


@dataclass(frozen=True)
class _Served:
    """What a serving copy's choice reads (see the module doc), for n models of p dims."""

    V: SymmetricStack  # the V_m, float32, read for the quadratic forms only
    theta: np.ndarray  # (2n, p) float64: quality coefficients, then cost coefficients
    offset_q: np.ndarray  # (n,): prior_quality + each model's quality offset
    n: int
    p: int


class HybridLinear(Policy):
    """Shared-plus-deviation ridge bandit; see the module doc for the model.

    reg: ridge on the shared coefficients; dev_reg: ridge on each model's deviation in
    the context directions; intercept_reg: ridge on each model's own intercept.
    prior_quality: the quality level everything is learned relative to.
    exploration: "ucb" or "thompson"; alpha: the width (UCB bonus or posterior sd scale).
    gamma: forgetting per update of a model, in (0, 1] (< 1 costs two d^3 inversions).
    epsilon: probability floor mass; cold_cap / cold_pulls: a model with fewer than
    `cold_pulls` feedbacks gets at most `cold_cap` of the traffic (0 pulls: no cap).
    project_dim: learn in this many principal components of the input (0: the input
    as is); refit_every: the longest interval between refits (0: never refit).
    """

    name = "hybrid"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        exploration: str = "thompson",
        alpha: float = 0.15,
        reg: float = 1.0,
        dev_reg: float = 10.0,
        intercept_reg: float = 1.0,
        prior_quality: float = 0.5,
        gamma: float = 1.0,
        epsilon: float = 0.01,
        cold_cap: float = 0.2,
        cold_pulls: int = 0,
        project_dim: int = 0,
        refit_every: int = 4096,
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        if exploration not in EXPLORATIONS:
            raise PolicyError(f"exploration must be one of {EXPLORATIONS}, got {exploration!r}")
        self.exploration = exploration
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.reg = check_positive("reg", reg)
        self.dev_reg = check_positive("dev_reg", dev_reg)
        self.intercept_reg = check_positive("intercept_reg", intercept_reg)
        self.prior_quality = check_probability("prior_quality", prior_quality)
        self.gamma = check_positive("gamma", gamma)
        if self.gamma > 1:
            raise PolicyError(f"gamma must lie in (0, 1], got {gamma}")
        self.epsilon = check_probability("epsilon", epsilon, open_upper=True)
        self.cold_cap = check_probability("cold_cap", cold_cap)
        if isinstance(cold_pulls, bool) or not isinstance(cold_pulls, int) or cold_pulls < 0:
            raise PolicyError(f"cold_pulls must be an integer >= 0, got {cold_pulls!r}")
        self.cold_pulls = cold_pulls
        for name, value in (("project_dim", project_dim), ("refit_every", refit_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"{name} must be an integer >= 0, got {value!r}")
        if project_dim > dim:
            raise PolicyError(f"project_dim must be at most dim ({dim}), got {project_dim}")
        self.project_dim = project_dim
        self.refit_every = refit_every
        self._k = project_dim or dim  # the dimension the ridge models live in
        p = self._k + 1
        # raw statistics in the input's own coordinates, kept only when projecting
        raw = dim + 1 if project_dim else 0
        self._Graw = np.zeros((0, raw, raw))
        self._bq_raw = np.zeros((0, raw))
        self._bc_raw = np.zeros((0, raw))
        self._M = self._random_rows(dim, seed) if project_dim else np.zeros((0, 0))
        self._next_refit = _FIRST_REFIT
        self.refits = 0
        self._index: dict[str, int] = {}
        self._D = np.zeros((0, p))
        self._Ainv = np.zeros((0, p, p))
        self._Ainv32 = np.zeros((0, p, p), dtype=np.float32)
        self._G = np.zeros((0, p, p))
        self._bq = np.zeros((0, p))
        self._bc = np.zeros((0, p))
        self._oq = np.zeros(0)  # per-model offsets: the catalogue's prior quality and cost
        self._oc = np.zeros(0)
        self._since_refresh = np.zeros(0, dtype=np.int64)
        self._A0 = self.reg * np.eye(p)
        self._A0inv = np.eye(p) / self.reg
        self._A0inv32 = self._A0inv.astype(np.float32)
        self._b0q = np.zeros(p)
        self._b0c = np.zeros(p)
        self._beta_q = np.zeros(p)
        self._beta_c = np.zeros(p)
        self._shared_since_refresh = 0
        # the serving copy's precomputed choice (prepare_serving); None: compute from
        # the exact state. Every change of the state drops it
        self._served: _Served | None = None
        super().__init__(models, dim, cost_weight=cost_weight, cost_scale=cost_scale, seed=seed)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "exploration": self.exploration,
            "alpha": self.alpha,
            "reg": self.reg,
            "dev_reg": self.dev_reg,
            "intercept_reg": self.intercept_reg,
            "prior_quality": self.prior_quality,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "cold_cap": self.cold_cap,
            "cold_pulls": self.cold_pulls,
            "project_dim": self.project_dim,
            "refit_every": self.refit_every,
        }

    # ---- model bookkeeping -----------------------------------------------
    def _prior_diag(self) -> np.ndarray:
        return np.append(np.full(self._k, self.dev_reg), self.intercept_reg)

    def _random_rows(self, dim: int, seed: int) -> np.ndarray:
        """M before the first refit: a seeded Gaussian (Johnson-Lindenstrauss) projection
        of x, the bias passed through; shape (k + 1, dim + 1)."""
        rng = np.random.default_rng(seed)
        R = rng.standard_normal((self._k, dim)) / np.sqrt(self._k)
        M = np.zeros((self._k + 1, dim + 1))
        M[: self._k, :dim] = R
        M[self._k, dim] = 1.0
        return M

    def project(self, x: np.ndarray) -> np.ndarray:
        """The augmented context the ridge models see for input x: shape (k + 1,)."""
        arr = self._check_context(x)
        return self._z(arr)

    def _z(self, x: np.ndarray) -> np.ndarray:
        if not self.project_dim:
            return np.append(x, 1.0)
        return self._M @ np.append(x, 1.0)

    def _add_model(self, model: str) -> None:
        self._served = None
        p = self._k + 1
        raw = self._Graw.shape[1]
        diag = self._prior_diag()
        self._index[model] = self._D.shape[0]
        # an unobserved model adds nothing to the shared system (D - D D^{-1} D = 0)
        self._D = np.concatenate([self._D, diag[None]])
        self._Ainv = np.concatenate([self._Ainv, np.diag(1.0 / diag)[None]])
        self._Ainv32 = self._Ainv.astype(np.float32)
        self._G = np.concatenate([self._G, np.zeros((1, p, p))])
        self._bq = np.concatenate([self._bq, np.zeros((1, p))])
        self._bc = np.concatenate([self._bc, np.zeros((1, p))])
        self._oq = np.append(self._oq, 0.0)
        self._oc = np.append(self._oc, 0.0)
        self._since_refresh = np.append(self._since_refresh, 0)
        self._Graw = np.concatenate([self._Graw, np.zeros((1, raw, raw))])
        self._bq_raw = np.concatenate([self._bq_raw, np.zeros((1, raw))])
        self._bc_raw = np.concatenate([self._bc_raw, np.zeros((1, raw))])

    def _remove_model(self, model: str) -> None:
        self._served = None
        i = self._index.pop(model)
        for name in _PER_MODEL:
            setattr(self, name, np.delete(getattr(self, name), i, axis=0))
        self._index = {m: j for j, m in enumerate(self._models)}
        # its feedback leaves the shared estimate with it
        self._refresh_shared()

    def set_prior(
        self,
        model: str,
        *,
        quality: float | None = None,
        strength: float | None = None,
        cost: float | None = None,
    ) -> bool:
        """What a deployment knows of `model` before its feedback: an expected quality
        worth `strength` pseudo-observations (the precision of its intercept), and an
        expected cost per call in USD. The learned deviations are relative to these."""
        if model not in self._index:
            raise PolicyError(f"unknown model {model!r}; known models: {self._models}")
        q = None if quality is None else check_probability("quality", quality)
        n = None if strength is None else check_positive("strength", strength)
        c = None if cost is None else check_positive("cost", cost, allow_zero=True)
        i = self._index[model]
        if self._since_refresh[i] or self._G[i].any():
            raise PolicyError(f"model {model!r} already has feedback; set its prior before")
        self._served = None
        if q is not None:
            self._oq[i] = q - self.prior_quality
        if c is not None:
            self._oc[i] = c
        if n is not None:
            self._D[i, -1] = n
            self._Ainv[i] = np.diag(1.0 / self._D[i])
            self._Ainv32[i] = self._Ainv[i]
        return True

    def priors(self) -> dict[str, dict[str, float]]:
        """Each model's prior: quality, its strength and the expected cost."""
        return {
            m: {
                "quality": float(self.prior_quality + self._oq[i]),
                "strength": float(self._D[i, -1]),
                "cost": float(self._oc[i]),
            }
            for m, i in self._index.items()
        }

    # ---- estimates ---------------------------------------------------------
    def estimates(
        self, z: np.ndarray, idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected quality, its posterior sd (unit noise) and expected cost in USD for
        augmented context z (shape (d + 1,)) and model rows idx (shape (K,))."""
        z32 = z.astype(np.float32)
        n, p = self._Ainv32.shape[:2]
        # one gemv over the whole stack reads each inverse once; fancy-indexing first
        # would copy K p^2 floats. float32: the read is the cost, 7 digits are plenty
        U = (self._Ainv32.reshape(n * p, p) @ z32).reshape(n, p)[idx].astype(np.float64)
        W = self._D[idx] * U  # (K, p): D_m A_m^{-1} z
        mean_q = (
            self.prior_quality
            + self._oq[idx]
            + W @ self._beta_q
            + np.einsum("kp,kp->k", U, self._bq[idx])
        )
        cost = np.maximum(
            self._oc[idx] + W @ self._beta_c + np.einsum("kp,kp->k", U, self._bc[idx]), 0.0
        )
        shared = np.einsum("kp,kp->k", W, (self._A0inv32 @ W.T.astype(np.float32)).T)
        var = shared + U @ z
        return mean_q, np.sqrt(np.maximum(var, 0.0)), cost

    def prepare_serving(self) -> None:
        """Fold the shared system into per-model coefficients and variance matrices
        (module doc): O(K p^3) once, for a copy that then only chooses. The means are
        float64 (closer to the exact ones than `estimates`, whose float32 A_m^{-1} z
        they go through); the variances float32, like `estimates`."""
        n, p = self._D.shape
        # V_m = A_m^{-1} + W_m^T A_0^{-1} W_m with W_m = D_m A_m^{-1}, in float32 like the
        # copies `estimates` reads: two batched products, ~20 ms at 9 models of 387 dims
        # (float64: twice that), once per snapshot and off the event loop
        W = (self._D[:, :, None] * self._Ainv).astype(np.float32)
        V = self._Ainv32 + np.matmul(W.transpose(0, 2, 1), np.matmul(self._A0inv32, W))
        theta_q = np.einsum("kpq,kq->kp", self._Ainv, self._D * self._beta_q + self._bq)
        theta_c = np.einsum("kpq,kq->kp", self._Ainv, self._D * self._beta_c + self._bc)
        self._served = _Served(
            V=SymmetricStack.of(V),
            theta=np.ascontiguousarray(np.concatenate([theta_q, theta_c])),
            offset_q=self.prior_quality + self._oq,
            n=n,
            p=p,
        )

    def _served_estimates(
        self, sv: _Served, z: np.ndarray, idx: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`estimates` from the serving copy's precomputed state; idx None: every model
        in order (the usual choice among all, no gathers)."""
        var = sv.V.quadratic(z.astype(np.float32)).astype(np.float64)
        m = sv.theta @ z
        mean_q, cost = sv.offset_q + m[: sv.n], self._oc + m[sv.n :]
        if idx is not None:
            var, mean_q, cost = var[idx], mean_q[idx], cost[idx]
        return mean_q, np.sqrt(np.maximum(var, 0.0)), np.maximum(cost, 0.0)

    def coefficients(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(shared beta, this model's beta + delta) for quality, each shape (d + 1,)."""
        i = self._index[model]
        delta = self._Ainv[i] @ (self._bq[i] - self._G[i] @ self._beta_q)
        return self._beta_q.copy(), self._beta_q + delta

    # ---- choose ------------------------------------------------------------
    def _choose(
        self, x: np.ndarray, candidates: list[str], lam: float, text: str | None
    ) -> Decision:
        z = self._z(x)
        idx = np.fromiter((self._index[c] for c in candidates), dtype=np.int64)
        sv = self._served
        if sv is None:
            mean_q, sd, cost = self.estimates(z, idx)
        else:
            every = candidates == self._models  # rows in order: no gathers
            mean_q, sd, cost = self._served_estimates(sv, z, None if every else idx)
        scale = self._normalised_cost_scale()
        scores = mean_q - lam * (cost / scale) if scale else mean_q
        probs = self._distribution(scores, sd)
        probs = self._cap_cold(probs, idx, scores, sd)
        chosen = self._sample(probs)
        # tolist(): one call for the Python floats of a whole row, not one float() each
        return Decision(
            model=candidates[chosen],
            propensity=float(probs[chosen]),
            probabilities=dict(zip(candidates, probs.tolist(), strict=True)),
            expected_quality=dict(zip(candidates, np.clip(mean_q, 0, 1).tolist(), strict=True)),
            expected_cost=dict(zip(candidates, cost.tolist(), strict=True)),
            scores=dict(zip(candidates, scores.tolist(), strict=True)),
        )

    def _distribution(self, scores: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """Each candidate's probability under the exploration rule, with the ε floor."""
        if self.exploration == "ucb":
            probs = argmax_distribution(scores + self.alpha * sd)
        else:
            probs = win_probabilities(scores, np.maximum(self.alpha * sd, 1e-12))
        return (1.0 - self.epsilon) * probs + self.epsilon / len(scores)

    def _cap_cold(
        self, probs: np.ndarray, idx: np.ndarray, scores: np.ndarray, sd: np.ndarray
    ) -> np.ndarray:
        """At most cold_cap for each model with fewer than cold_pulls feedbacks. The rest
        of the mass goes to the warm candidates as the policy would split it among them
        alone (not in proportion to their share of the full draw, which under UCB is the
        ε floor: a cold favourite would hand its excess to the worst models). With no
        warm candidate there is nothing to protect, so no cap."""
        if self.cold_pulls == 0:
            return probs
        pulls = np.array([self._stats[self._models[i]].pulls for i in idx])
        cold = pulls < self.cold_pulls
        if not cold.any() or cold.all() or np.all(probs[cold] <= self.cold_cap):
            return probs
        out = np.zeros_like(probs)
        out[cold] = np.minimum(probs[cold], self.cold_cap)
        out[~cold] = (1.0 - out[cold].sum()) * self._distribution(scores[~cold], sd[~cold])
        return out

    # ---- learning ----------------------------------------------------------
    def _learn(
        self,
        x: np.ndarray,
        model: str,
        quality: float,
        cost: float,
        propensity: float | None,
        lam: float,
    ) -> None:
        self._served = None
        i = self._index[model]
        z = self._z(x)
        yq = quality - self.prior_quality - self._oq[i]
        yc = cost - self._oc[i]
        if self.project_dim:
            self._learn_raw(i, np.append(x, 1.0), yq, yc)
        if self.gamma < 1.0:
            self._learn_forgetting(i, z, yq, yc)
        else:
            self._learn_rank1(i, z, yq, yc)
        self._since_refresh[i] += 1
        self._shared_since_refresh += 1
        if self._since_refresh[i] >= _REFRESH_EVERY:
            self._refresh_model(i)
            self._since_refresh[i] = 0
        if self._shared_since_refresh >= _REFRESH_EVERY:
            self._refresh_shared()
        else:
            self._beta_q = self._A0inv @ self._b0q
            self._beta_c = self._A0inv @ self._b0c
        self._Ainv32[i] = self._Ainv[i]
        self._A0inv32 = self._A0inv.astype(np.float32)
        if self.project_dim and self.refit_every and self.updates + 1 >= self._next_refit:
            self.refit_projection()
            self._next_refit = self.updates + 1 + min(self.updates + 1, self.refit_every)

    def _learn_raw(self, i: int, zr: np.ndarray, yq: float, yc: float) -> None:
        if self.gamma < 1.0:
            self._Graw[i] *= self.gamma
            self._bq_raw[i] *= self.gamma
            self._bc_raw[i] *= self.gamma
        _ger(1.0, zr, zr, self._Graw[i])
        self._bq_raw[i] += yq * zr
        self._bc_raw[i] += yc * zr

    def refit_projection(self) -> None:
        """Refit the basis to the principal components of every context learned so far
        and rebuild each model's statistics in it, exactly (see the module doc)."""
        if not self.project_dim:
            raise PolicyError("refit_projection needs project_dim > 0")
        self._served = None
        S = self._Graw.sum(axis=0)
        n = S[-1, -1]
        if n < 2:
            return
        mu = S[:-1, -1] / n
        cov = S[:-1, :-1] / n - np.outer(mu, mu)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        top = np.argsort(vals)[::-1][: self._k]
        V = vecs[:, top]
        # eigenvectors are defined up to sign: fix it so a refit is deterministic
        V = V * np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])
        captured = float(np.clip(vals[top], 0.0, None).sum())
        scale = 1.0 / np.sqrt(captured) if captured > 0 else 1.0
        M = np.zeros((self._k + 1, self.dim + 1))
        M[: self._k, : self.dim] = scale * V.T
        M[: self._k, self.dim] = -scale * (V.T @ mu)
        M[self._k, self.dim] = 1.0
        self._M = M
        for i in range(self._D.shape[0]):
            self._G[i] = M @ self._Graw[i] @ M.T
            self._bq[i] = M @ self._bq_raw[i]
            self._bc[i] = M @ self._bc_raw[i]
            self._Ainv[i] = np.linalg.inv(np.diag(self._D[i]) + self._G[i])
            self._since_refresh[i] = 0
        self._Ainv32 = self._Ainv.astype(np.float32)
        self._refresh_shared()
        self.refits += 1

    def _learn_rank1(self, i: int, z: np.ndarray, yq: float, yc: float) -> None:
        u = self._Ainv[i] @ z
        s = 1.0 + z @ u
        v = self._D[i] * u
        # the shared system gains D u u^T D / s and b_0 gains v (y - u^T b_old) / s
        self._b0q += v * (yq - u @ self._bq[i]) / s
        self._b0c += v * (yc - u @ self._bc[i]) / s
        _ger(1.0 / s, v, v, self._A0)
        a0v = self._A0inv @ v
        _ger(-1.0 / (s + v @ a0v), a0v, a0v, self._A0inv)
        _ger(-1.0 / s, u, u, self._Ainv[i])
        _ger(1.0, z, z, self._G[i])
        self._bq[i] += yq * z
        self._bc[i] += yc * z

    def _learn_forgetting(self, i: int, z: np.ndarray, yq: float, yc: float) -> None:
        """Forget by gamma, then learn: A_m = D_m + gamma G_m + z z^T is no rank-1 step
        from before, so this model's inverse and the shared one are recomputed."""
        self._withdraw(i)
        g = self.gamma
        self._G[i] *= g
        self._bq[i] *= g
        self._bc[i] *= g
        _ger(1.0, z, z, self._G[i])
        self._bq[i] += yq * z
        self._bc[i] += yc * z
        self._Ainv[i] = np.linalg.inv(np.diag(self._D[i]) + self._G[i])
        self._contribute(i)
        self._A0inv = np.asarray(np.linalg.inv(self._A0), dtype=np.float64)

    def _withdraw(self, i: int, sign: float = -1.0) -> None:
        """Take model i's term out of (sign=-1) or into (+1) A_0 and b_0."""
        d = self._D[i]
        self._A0 += sign * (np.diag(d) - d[:, None] * self._Ainv[i] * d[None, :])
        self._b0q += sign * d * (self._Ainv[i] @ self._bq[i])
        self._b0c += sign * d * (self._Ainv[i] @ self._bc[i])

    def _contribute(self, i: int) -> None:
        self._withdraw(i, 1.0)

    def _refresh_model(self, i: int) -> None:
        self._withdraw(i)
        self._Ainv[i] = np.linalg.inv(np.diag(self._D[i]) + self._G[i])
        self._contribute(i)
        self._A0inv = np.asarray(np.linalg.inv(self._A0), dtype=np.float64)

    def _refresh_shared(self) -> None:
        """Recompute the shared system exactly from every model's statistics."""
        p = self._k + 1
        self._A0 = self.reg * np.eye(p)
        self._b0q = np.zeros(p)
        self._b0c = np.zeros(p)
        for i in range(self._D.shape[0]):
            self._contribute(i)
        self._A0inv = np.asarray(np.linalg.inv(self._A0), dtype=np.float64)
        self._A0inv32 = self._A0inv.astype(np.float32)
        self._beta_q = self._A0inv @ self._b0q
        self._beta_c = self._A0inv @ self._b0c
        self._shared_since_refresh = 0

    def _discount(self, weight: float) -> None:
        self._served = None
        # the priors D_m and the offsets stay; every Gram matrix and target sum shrinks
        for arr in (self._G, self._bq, self._bc, self._Graw, self._bq_raw, self._bc_raw):
            arr *= weight
        for i in range(self._D.shape[0]):
            self._Ainv[i] = np.linalg.inv(np.diag(self._D[i]) + self._G[i])
            self._since_refresh[i] = 0
        self._Ainv32 = self._Ainv.astype(np.float32)
        self._refresh_shared()

    # ---- state -------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "D": self._D,
            "Ainv": self._Ainv,
            "G": self._G,
            "bq": self._bq,
            "bc": self._bc,
            "oq": self._oq,
            "oc": self._oc,
            "since_refresh": self._since_refresh,
            "A0": self._A0,
            "A0inv": self._A0inv,
            "b0q": self._b0q,
            "b0c": self._b0c,
            # caches saved too, so a restored policy decides bit-for-bit alike
            "beta_q": self._beta_q,
            "beta_c": self._beta_c,
            "Graw": self._Graw,
            "bq_raw": self._bq_raw,
            "bc_raw": self._bc_raw,
            "M": self._M,
        }

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        for key in ("D", "Ainv", "G", "bq", "bc", "oq", "oc", "A0", "A0inv", "b0q", "b0c"):
            setattr(self, f"_{key}", np.array(arrays[key], dtype=np.float64))
        for key in ("Graw", "bq_raw", "bc_raw", "M"):
            setattr(self, f"_{key}", np.array(arrays[key], dtype=np.float64))
        self._since_refresh = np.array(arrays["since_refresh"], dtype=np.int64)
        self._beta_q = np.array(arrays["beta_q"], dtype=np.float64)
        self._beta_c = np.array(arrays["beta_c"], dtype=np.float64)
        self._Ainv32 = self._Ainv.astype(np.float32)
        self._A0inv32 = self._A0inv.astype(np.float32)
        self._served = None

    def _extra(self) -> dict[str, Any]:
        return {
            "shared_since_refresh": self._shared_since_refresh,
            "next_refit": self._next_refit,
            "refits": self.refits,
        }

    def _load_extra(self, extra: Mapping[str, Any]) -> None:
        self._shared_since_refresh = int(extra.get("shared_since_refresh", 0))
        self._next_refit = int(extra.get("next_refit", _FIRST_REFIT))
        self.refits = int(extra.get("refits", 0))
