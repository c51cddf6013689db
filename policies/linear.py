"""Disjoint ridge regression per model: the learned core of LinUCB and linear Thompson sampling.

Each model m keeps exact sufficient statistics over augmented contexts z = [x, 1]:
A_m = reg * I + sum z z^T, b_q = sum (quality - prior_quality) z, b_c = sum cost z.
Quality and cost share A_m (same contexts), so one inverse serves both. The inverse
and the coefficients are caches updated by Sherman-Morrison, O(d^2) per update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.linalg.blas import dger

from policies.base import Decision, Policy, PolicyError, check_positive, check_probability

# Sherman-Morrison drifts slowly in float64; an exact re-inverse every this many
# updates of a model keeps the cache honest at an amortised O(d^3 / 1024).
_REFRESH_EVERY = 1024
# Pending contexts are folded into A this many at a time. With forgetting, A also
# regains (1 - gamma) * reg * I per update (so it never decays below reg * I); that
# term is not rank-1, so the inverse is refreshed exactly as often as gamma requires
# (`_forgetting_refresh`).
_BATCH = 32
_PER_MODEL = (
    "_A",
    "_A_inv",
    "_bq",
    "_bc",
    "_theta_q",
    "_theta_c",
    "_since_refresh",
    "_Z",
    "_zw",
    "_pending",
    "_decay",
)


def _forgetting_refresh(gamma: float) -> int:
    """Updates between exact refreshes under forgetting. Between two, A^{-1} lacks the
    (1 - gamma^n) reg I that forgetting gives back to the prior; refreshing before that
    reaches 1% of reg keeps every width within ~0.5% of the exact one (at gamma = 0.9
    that is every update: an O(d^3) inverse, the price of fast forgetting)."""
    return max(1, int(0.01 / (1.0 - gamma)))


# Dimension from which a SymmetricStack splits its matrices into row blocks, and how many
_BLOCKED_FROM = 64
_ROW_BLOCKS = 4


class SymmetricStack:
    """float32 copies of n symmetric p x p matrices S_m, kept for the quadratic forms
    z^T S_m z that a choice reads (the exploration widths), in about 5/8 of the bytes.

    The choice is memory-bound: at 9 models of 387 dims one stack is 5.4 MB, read once
    per choice, and between requests other work evicts it from the caches. So each
    matrix keeps only its upper triangle, as B row blocks of one width w (p padded with
    zeros to P = B w): block I holds rows [I w, (I + 1) w) and columns [I w, P), the
    columns right of its diagonal block doubled (they stand for their mirror images
    below the diagonal too), so that with z padded likewise

        z^T S z = sum_I z_I^T (B_I z[I w:]).

    A choice is one gemv over every model's block I at a time, then one contraction:
    with 4 blocks it measured ~25% faster than one gemv over the full matrices with the
    caches warm and ~20% faster with them cold. Small matrices stay one block.
    """

    def __init__(self, p: int) -> None:
        self.nb = _ROW_BLOCKS if p >= _BLOCKED_FROM else 1
        self.w = -(-p // self.nb)
        self.p = p
        self.padded = self.nb * self.w
        self.blocks = [
            np.zeros((0, self.w, self.padded - i * self.w), dtype=np.float32)
            for i in range(self.nb)
        ]

    @classmethod
    def of(cls, S: np.ndarray) -> SymmetricStack:
        """The stack of S, shape (n, p, p)."""
        out = cls(S.shape[1])
        out.blocks = [out._block(S, i) for i in range(out.nb)]
        return out

    def _block(self, S: np.ndarray, i: int) -> np.ndarray:
        """Block i of every matrix of S, shape (n, p, p)."""
        a, w, p = i * self.w, self.w, self.p
        rows = min(w, p - a)
        blk = np.zeros((S.shape[0], w, self.padded - a), dtype=np.float32)
        blk[:, :rows, : p - a] = S[:, a : a + rows, a:]
        blk[:, :, w:] *= 2.0  # a power of two: exact in float32
        return blk

    def __len__(self) -> int:
        return self.blocks[0].shape[0]

    def set(self, i: int, S: np.ndarray) -> None:
        """Overwrite matrix i with S, shape (p, p): in place (a learner's every update),
        the zero padding left as it is."""
        w, p = self.w, self.p
        for j, blk in enumerate(self.blocks):
            a = j * w
            rows = min(w, p - a)
            out = blk[i]
            out[:rows, :rows] = S[a : a + rows, a : a + rows]
            # doubled on the way in (and cast to float32): one pass, no temporary
            np.multiply(
                S[a : a + rows, a + w :], 2.0, out=out[:rows, w : p - a], casting="same_kind"
            )

    def append(self, S: np.ndarray) -> None:
        """Add matrix S, shape (p, p), as the last one."""
        self.blocks = [
            np.concatenate([blk, self._block(S[None], j)]) for j, blk in enumerate(self.blocks)
        ]

    def delete(self, i: int) -> None:
        self.blocks = [np.delete(blk, i, axis=0) for blk in self.blocks]

    def quadratic(self, z32: np.ndarray) -> np.ndarray:
        """z^T S_m z for every m: shape (n,), float32, for z32 of shape (p,), float32."""
        n, w = len(self), self.w
        if self.padded == self.p:
            z = z32
        else:
            z = np.zeros(self.padded, dtype=np.float32)
            z[: self.p] = z32
        part = np.empty((self.nb, n * w), dtype=np.float32)
        for i, blk in enumerate(self.blocks):
            np.matmul(blk.reshape(n * w, -1), z[i * w :], out=part[i])
        return np.einsum("inw,iw->n", part.reshape(self.nb, n, w), z.reshape(self.nb, w))


def _ger(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> None:
    """a += alpha * x y^T in place, for a C-contiguous symmetric float64 matrix `a`."""
    out = dger(alpha, x, y, a=a.T, overwrite_a=True)
    if not np.shares_memory(out, a):  # BLAS had to copy: write the result back
        a[...] = out.T


class LinearPolicy(Policy):
    """Per-model ridge estimates of quality and cost with their uncertainty.

    Hyper-parameters:
    reg: ridge strength (> 0), also the weight of the prior in pseudo-observations.
    prior_quality: quality a model is assumed to have before any feedback, in [0, 1];
        the default 1.0 is optimistic, so a new model gets tried.
    gamma: forgetting factor in (0, 1]; each update of a model first multiplies its
        statistics by gamma, so old feedback fades and the policy follows drift.
    epsilon: probability floor mass in [0, 1); every candidate keeps >= epsilon / K.
    """

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        reg: float = 1.0,
        prior_quality: float = 1.0,
        gamma: float = 1.0,
        epsilon: float = 0.01,
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        self.reg = check_positive("reg", reg)
        self.prior_quality = check_probability("prior_quality", prior_quality)
        self.gamma = check_positive("gamma", gamma)
        if self.gamma > 1:
            raise PolicyError(f"gamma must lie in (0, 1], got {gamma}")
        self.epsilon = check_probability("epsilon", epsilon, open_upper=True)
        d = dim + 1
        self._index: dict[str, int] = {}
        self._A = np.zeros((0, d, d))
        self._A_inv = np.zeros((0, d, d))
        self._A_inv32 = SymmetricStack(d)  # what choose reads of A_inv
        self._bq = np.zeros((0, d))
        self._bc = np.zeros((0, d))
        self._theta_q = np.zeros((0, d))
        self._theta_c = np.zeros((0, d))
        self._since_refresh = np.zeros(0, dtype=np.int64)
        self._Z = np.zeros((0, _BATCH, d))  # pending contexts not yet folded into A
        self._zw = np.zeros((0, _BATCH))  # their forgetting weights
        self._pending = np.zeros(0, dtype=np.int64)
        self._decay = np.zeros(0)  # gamma^n owed by A for the pending batch
        super().__init__(models, dim, cost_weight=cost_weight, cost_scale=cost_scale, seed=seed)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "reg": self.reg,
            "prior_quality": self.prior_quality,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
        }

    # ---- model bookkeeping -----------------------------------------------
    def _add_model(self, model: str) -> None:
        d = self.dim + 1
        eye = np.eye(d)
        self._index[model] = self._A.shape[0]
        self._A = np.concatenate([self._A, (self.reg * eye)[None]])
        self._A_inv = np.concatenate([self._A_inv, (eye / self.reg)[None]])
        self._A_inv32.append(self._A_inv[-1])
        zeros = np.zeros((1, d))
        self._bq = np.concatenate([self._bq, zeros])
        self._bc = np.concatenate([self._bc, zeros])
        self._theta_q = np.concatenate([self._theta_q, zeros])
        self._theta_c = np.concatenate([self._theta_c, zeros])
        self._since_refresh = np.append(self._since_refresh, 0)
        self._Z = np.concatenate([self._Z, np.zeros((1, _BATCH, d))])
        self._zw = np.concatenate([self._zw, np.zeros((1, _BATCH))])
        self._pending = np.append(self._pending, 0)
        self._decay = np.append(self._decay, 1.0)

    def _remove_model(self, model: str) -> None:
        i = self._index.pop(model)
        for name in _PER_MODEL:
            setattr(self, name, np.delete(getattr(self, name), i, axis=0))
        self._A_inv32.delete(i)
        self._index = {m: j for j, m in enumerate(self._models)}

    # ---- estimates ---------------------------------------------------------
    def _augment(self, x: np.ndarray) -> np.ndarray:
        return np.append(x, 1.0)

    def estimates(
        self, z: np.ndarray, idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected quality, its standard error (unit noise), expected cost in USD.

        z: augmented context, shape (d + 1,); idx: model rows, shape (K,).
        Returns three arrays of shape (K,).
        """
        # gemvs over the whole stack read each inverse once (fancy-indexing first would
        # copy K d^2 floats), in float32: the read is the cost, and an exploration width
        # needs no more than 7 digits. Every model, then the candidates' entries:
        # gathering rows first would copy them
        var = self._A_inv32.quadratic(z.astype(np.float32))
        width = np.sqrt(np.maximum(var[idx], 0.0)).astype(np.float64)
        mean_q = self.prior_quality + (self._theta_q @ z)[idx]
        cost = np.maximum((self._theta_c @ z)[idx], 0.0)
        return mean_q, width, cost

    def _choose(
        self, x: np.ndarray, candidates: list[str], lam: float, text: str | None
    ) -> Decision:
        z = self._augment(x)
        idx = np.fromiter((self._index[c] for c in candidates), dtype=np.int64)
        mean_q, width, cost = self.estimates(z, idx)
        scale = self._normalised_cost_scale()
        cost_norm = cost / scale if scale else np.zeros_like(cost)
        probs, chosen, scores = self._decide(mean_q, width, cost_norm, lam)
        # tolist(): one call for the Python floats of a whole row, not one float() each
        return Decision(
            model=candidates[chosen],
            propensity=float(probs[chosen]),
            probabilities=dict(zip(candidates, probs.tolist(), strict=True)),
            expected_quality=dict(zip(candidates, np.clip(mean_q, 0, 1).tolist(), strict=True)),
            expected_cost=dict(zip(candidates, cost.tolist(), strict=True)),
            scores=dict(zip(candidates, scores.tolist(), strict=True)),
        )

    def _decide(
        self, mean_q: np.ndarray, width: np.ndarray, cost_norm: np.ndarray, lam: float
    ) -> tuple[np.ndarray, int, np.ndarray]:
        """Return (probabilities, chosen index, scores); each array shape (K,)."""
        raise NotImplementedError

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
        i = self._index[model]
        z = self._augment(x)
        g = self.gamma
        yq = quality - self.prior_quality
        if g < 1.0:
            # forget: scaling A and b by g leaves theta alone and divides A^{-1} by g
            self._bq[i] *= g
            self._bc[i] *= g
            self._A_inv[i] /= g
            self._zw[i, : self._pending[i]] *= g
            self._decay[i] *= g
        self._bq[i] += yq * z
        self._bc[i] += cost * z
        # z z^T joins A lazily (folded in by one matrix product per batch), so the
        # hot path touches one d x d matrix, not two
        self._Z[i, self._pending[i]] = z
        self._zw[i, self._pending[i]] = 1.0
        self._pending[i] += 1
        # Sherman-Morrison as recursive least squares, with k = A^{-1} z / (1 + z^T A^{-1} z):
        # A^{-1} <- A^{-1} - k (A^{-1} z)^T ;  theta <- theta + k (y - z^T theta)
        Az = self._A_inv[i] @ z
        k = Az / (1.0 + z @ Az)
        _ger(-1.0, k, Az, self._A_inv[i])
        self._A_inv32.set(i, self._A_inv[i])
        self._theta_q[i] += k * (yq - z @ self._theta_q[i])
        self._theta_c[i] += k * (cost - z @ self._theta_c[i])
        self._since_refresh[i] += 1
        if self._pending[i] == _BATCH:
            self._fold(i)
        every = _REFRESH_EVERY if g == 1.0 else _forgetting_refresh(g)
        if self._since_refresh[i] >= every:
            self._refresh(i)

    def _fold(self, i: int) -> None:
        """A <- decay A + (1 - decay) reg I + sum_j w_j z_j z_j^T over the pending batch."""
        n = self._pending[i]
        Z = self._Z[i, :n]
        w = self._zw[i, :n]
        decay = self._decay[i]
        if decay != 1.0:
            self._A[i] *= decay
            self._A[i] += (1.0 - decay) * self.reg * np.eye(Z.shape[1])
        self._A[i] += (Z * w[:, None]).T @ Z
        self._pending[i] = 0
        self._decay[i] = 1.0

    def _refresh(self, i: int) -> None:
        """Recompute the caches exactly from the sufficient statistics."""
        self._fold(i)
        self._A_inv[i] = np.linalg.inv(self._A[i])
        self._A_inv32.set(i, self._A_inv[i])
        self._theta_q[i] = self._A_inv[i] @ self._bq[i]
        self._theta_c[i] = self._A_inv[i] @ self._bc[i]
        self._since_refresh[i] = 0

    def _discount(self, weight: float) -> None:
        eye = self.reg * np.eye(self.dim + 1)
        for i in range(self._A.shape[0]):
            self._fold(i)
            # A = reg I + sum z z^T: only the data part shrinks
            self._A[i] = weight * (self._A[i] - eye) + eye
            self._bq[i] *= weight
            self._bc[i] *= weight
            self._refresh(i)

    # ---- state -------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "A": self._A,
            "A_inv": self._A_inv,
            "bq": self._bq,
            "bc": self._bc,
            "since_refresh": self._since_refresh,
            "Z": self._Z,
            "zw": self._zw,
            "pending": self._pending,
            "decay": self._decay,
            # caches saved too, so a restored policy decides bit-for-bit alike
            "theta_q": self._theta_q,
            "theta_c": self._theta_c,
        }

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._A = np.array(arrays["A"], dtype=np.float64)
        self._A_inv = np.array(arrays["A_inv"], dtype=np.float64)
        self._A_inv32 = SymmetricStack.of(self._A_inv)
        self._bq = np.array(arrays["bq"], dtype=np.float64)
        self._bc = np.array(arrays["bc"], dtype=np.float64)
        self._since_refresh = np.array(arrays["since_refresh"], dtype=np.int64)
        self._Z = np.array(arrays["Z"], dtype=np.float64)
        self._zw = np.array(arrays["zw"], dtype=np.float64)
        self._pending = np.array(arrays["pending"], dtype=np.int64)
        self._decay = np.array(arrays["decay"], dtype=np.float64)
        self._theta_q = np.array(arrays["theta_q"], dtype=np.float64)
        self._theta_c = np.array(arrays["theta_c"], dtype=np.float64)
