"""The contract every routing policy meets, and the byte encoding of policy state.

A policy turns a context vector and a set of candidate models into a choice with
its probability (the propensity), and learns from (context, model, quality, cost).
Public methods validate and hand over to private ones that compute, so a policy
author writes only the maths.

Units used throughout:
- quality: a float in [0, 1] (user or judge score).
- cost: USD for one call, >= 0.
- cost_weight (lambda): quality points given up per unit of *normalised* cost, where
  normalised cost = cost / cost_scale and cost_scale (USD) defaults to the mean
  cost of the priciest model seen so far. So lambda = 0.2 means "paying as much as
  the priciest model must buy at least 0.2 more quality".
"""

from __future__ import annotations

import io
import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

SCHEMA_VERSION = 1
_MAGIC = b"BRP1"


class PolicyError(ValueError):
    """Bad input to a policy; the message names the offending argument."""


@dataclass(frozen=True)
class Decision:
    """One routing decision.

    model: the chosen model.
    propensity: probability with which the policy chose `model`, in (0, 1].
    probabilities: each candidate's probability of being chosen; sums to 1.
    expected_quality / expected_cost / scores: per candidate, when the policy
    models them (quality in [0, 1], cost in USD, score = quality - lambda * cost_norm).
    """

    model: str
    propensity: float
    probabilities: dict[str, float]
    expected_quality: dict[str, float] | None = None
    expected_cost: dict[str, float] | None = None
    scores: dict[str, float] | None = None


@dataclass
class ModelStats:
    """Running per-model tallies every policy keeps for reporting and cost scaling."""

    pulls: int = 0
    quality_sum: float = 0.0
    cost_sum: float = 0.0
    reward_sum: float = 0.0

    def as_list(self) -> list[float]:
        return [self.pulls, self.quality_sum, self.cost_sum, self.reward_sum]


@dataclass
class _Header:
    cls: str
    params: dict[str, Any]
    models: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def _check_finite_number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise PolicyError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise PolicyError(f"{name} must be finite, got {v}")
    return v


def check_probability(name: str, value: float, *, open_upper: bool = False) -> float:
    v = _check_finite_number(name, value)
    if v < 0 or v > 1 or (open_upper and v == 1):
        raise PolicyError(f"{name} must lie in [0, 1{')' if open_upper else ']'}, got {v}")
    return v


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = _check_finite_number(name, value)
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise PolicyError(f"{name} must be {bound}, got {v}")
    return v


class Policy(ABC):
    """Base class: validation, model bookkeeping, seeded randomness and state bytes.

    Subclasses implement `_choose`, `_learn`, `_add_model`, `_remove_model`, and
    `_arrays` / `_load_arrays` for their learned state.
    """

    #: registry name, also written into the state header
    name: ClassVar[str]
    #: whether the policy reads the context vector (static routers do not)
    uses_context: ClassVar[bool] = True

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise PolicyError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.cost_weight = check_positive("cost_weight", cost_weight, allow_zero=True)
        self.cost_scale = None if cost_scale is None else check_positive("cost_scale", cost_scale)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PolicyError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._models: list[str] = []
        self._stats: dict[str, ModelStats] = {}
        self.updates = 0
        for m in models:
            self.add_model(m)

    # ---- hyper-parameters -------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments (except models), JSON-serialisable."""
        return {
            "dim": self.dim,
            "cost_weight": self.cost_weight,
            "cost_scale": self.cost_scale,
            "seed": self.seed,
        }

    # ---- models -----------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._models)

    def stats(self) -> dict[str, ModelStats]:
        return {m: ModelStats(**vars(self._stats[m])) for m in self._models}

    def add_model(self, model: str) -> None:
        """Register a model; it starts from the policy's cold-start prior."""
        if not isinstance(model, str) or not model:
            raise PolicyError(f"model must be a non-empty string, got {model!r}")
        if model in self._stats:
            raise PolicyError(f"model {model!r} is already registered")
        self._models.append(model)
        self._stats[model] = ModelStats()
        self._add_model(model)

    def set_prior(
        self,
        model: str,
        *,
        quality: float | None = None,
        strength: float | None = None,
        cost: float | None = None,
    ) -> bool:
        """Tell the policy what is known of `model` before its feedback (an expected
        quality worth `strength` pseudo-observations, an expected cost in USD per call).
        Returns whether this policy uses priors; the default keeps its own cold start."""
        if model not in self._stats:
            raise PolicyError(f"unknown model {model!r}; known models: {self._models}")
        return False

    def remove_model(self, model: str) -> None:
        if model not in self._stats:
            raise PolicyError(f"unknown model {model!r}")
        self._models.remove(model)
        del self._stats[model]
        self._remove_model(model)

    # ---- validation -------------------------------------------------------
    def _check_context(self, x: Any) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != (self.dim,):
            raise PolicyError(f"context must have shape ({self.dim},), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise PolicyError("context contains NaN or infinite values")
        return arr

    def _check_candidates(self, candidates: Sequence[str] | None) -> list[str]:
        if candidates is None:
            cands = list(self._models)
        else:
            if isinstance(candidates, str):
                raise PolicyError("candidates must be a list of model names, not a string")
            cands = list(dict.fromkeys(candidates))
        if not cands:
            raise PolicyError("candidates must not be empty")
        unknown = [c for c in cands if c not in self._stats]
        if unknown:
            raise PolicyError(f"unknown candidate(s) {unknown}; known models: {self._models}")
        return cands

    def _normalised_cost_scale(self) -> float | None:
        """USD that one unit of normalised cost stands for; None before any cost is seen."""
        if self.cost_scale is not None:
            return self.cost_scale
        means = [s.cost_sum / s.pulls for s in self._stats.values() if s.pulls > 0]
        top = max(means, default=0.0)
        return top if top > 0 else None

    # ---- choose / learn ---------------------------------------------------
    def choose(
        self,
        x: Any,
        candidates: Sequence[str] | None = None,
        cost_weight: float | None = None,
        *,
        text: str | None = None,
    ) -> Decision:
        """Choose one of `candidates` (default: all models) for context `x`, shape (dim,).

        cost_weight: lambda for this call (default: the policy's); see the module doc.
        text: the query text, read only by routers that route on text (the rule router).
        """
        arr = self._check_context(x)
        cands = self._check_candidates(candidates)
        lam = (
            self.cost_weight
            if cost_weight is None
            else check_positive("cost_weight", cost_weight, allow_zero=True)
        )
        return self._choose(arr, cands, lam, text)

    def learn(
        self,
        x: Any,
        model: str,
        quality: float,
        cost: float,
        *,
        propensity: float | None = None,
        cost_weight: float | None = None,
    ) -> None:
        """Learn from one outcome: `model` answered context `x` with `quality` at `cost` USD.

        propensity: the logged probability of that choice (used by learners that
        correct for it, e.g. Vowpal Wabbit); cost_weight: the lambda the decision used.
        Everything is validated before any state changes.
        """
        arr = self._check_context(x)
        if model not in self._stats:
            raise PolicyError(f"unknown model {model!r}; known models: {self._models}")
        q = check_probability("quality", quality)
        c = check_positive("cost", cost, allow_zero=True)
        p = None if propensity is None else check_positive("propensity", propensity)
        if p is not None and p > 1:
            raise PolicyError(f"propensity must lie in (0, 1], got {p}")
        lam = (
            self.cost_weight
            if cost_weight is None
            else check_positive("cost_weight", cost_weight, allow_zero=True)
        )
        self._learn(arr, model, q, c, p, lam)
        st = self._stats[model]
        st.pulls += 1
        st.quality_sum += q
        st.cost_sum += c
        scale = self._normalised_cost_scale()
        st.reward_sum += q - (lam * c / scale if scale else 0.0)
        self.updates += 1

    def normalised_cost(self, cost: float) -> float:
        scale = self._normalised_cost_scale()
        return cost / scale if scale else 0.0

    @abstractmethod
    def _choose(
        self, x: np.ndarray, candidates: list[str], lam: float, text: str | None
    ) -> Decision: ...

    @abstractmethod
    def _learn(
        self,
        x: np.ndarray,
        model: str,
        quality: float,
        cost: float,
        propensity: float | None,
        lam: float,
    ) -> None: ...

    def _add_model(self, model: str) -> None:  # noqa: B027 - optional hook
        pass

    def _remove_model(self, model: str) -> None:  # noqa: B027 - optional hook
        pass

    def discount(self, weight: float) -> None:
        """Keep `weight` in (0, 1] of the evidence learned so far, as if every feedback
        had counted `weight` times: the prior stays whole, the means move little and
        the widths grow. A tenant's own policy starts from the global one discounted
        so (a shrunk prior worth a fraction of the global data), then learns its own."""
        w = _check_finite_number("weight", weight)
        if not 0 < w <= 1:
            raise PolicyError(f"weight must lie in (0, 1], got {w}")
        if w == 1:
            return
        self._discount(w)
        for s in self._stats.values():
            s.pulls = int(round(s.pulls * w))
            s.quality_sum *= w
            s.cost_sum *= w
            s.reward_sum *= w

    def _discount(self, weight: float) -> None:
        raise PolicyError(f"policy {self.name!r} cannot discount its learned state")

    def prepare_serving(self) -> None:  # noqa: B027 - optional hook
        """Precompute, from the current state, what `choose` reads, for a copy that only
        chooses until its next change (a worker's serving copy of a snapshot). Any
        change (learn, a model added or removed, a prior) drops it, and `choose`
        computes from the exact state again until the next call. A no-op for policies
        with nothing to precompute."""

    # ---- helpers for subclasses ------------------------------------------
    def _sample(self, probs: np.ndarray) -> int:
        """Draw an index with the policy's own generator (inverse-cdf: one uniform,
        a fraction of Generator.choice's overhead on the hot path)."""
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return min(i, len(probs) - 1)

    # ---- state ------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        """Learned state as named arrays (no pickling)."""
        return {}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        pass

    def _extra(self) -> dict[str, Any]:
        """Learned state that is not an array, JSON-serialisable."""
        return {}

    def _load_extra(self, extra: Mapping[str, Any]) -> None:  # noqa: B027
        pass

    def use_rng(self, rng: np.random.Generator) -> None:
        """Draw from `rng` from now on. A serving copy keeps one stream across the
        snapshots it loads: each snapshot carries the learner's RNG state, and
        adopting it at every reload would replay the same draws."""
        self._rng = rng

    def to_bytes(self) -> bytes:
        """The complete state: a JSON header (class, schema, parameters, models,
        counters, RNG state) followed by an .npz archive of arrays, no pickle."""
        header = {
            "cls": self.name,
            "schema": SCHEMA_VERSION,
            "params": self.params(),
            "models": self._models,
            "stats": {m: self._stats[m].as_list() for m in self._models},
            "updates": self.updates,
            "rng": self._rng.bit_generator.state,
            "extra": self._extra(),
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        buf = io.BytesIO()
        np.savez(buf, **self._arrays())  # type: ignore[arg-type]
        return _MAGIC + struct.pack(">I", len(head)) + head + buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        """Restore a policy of this class (or, on `Policy`, of the class named in the header)."""
        header, arrays = decode_state(data)
        if cls is not Policy and header["cls"] != cls.name:
            raise PolicyError(f"state holds a {header['cls']!r} policy, not {cls.name!r}")
        from policies import REGISTRY  # late import: the registry imports this module

        klass = REGISTRY.get(header["cls"])
        if klass is None:
            raise PolicyError(f"state names unknown policy class {header['cls']!r}")
        obj = klass.__new__(klass)
        obj._restore(header, arrays)
        return obj

    def _restore(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        # Rebuild through __init__ so every derived attribute exists, then overwrite
        # learned state; the model list is replayed so per-model buffers are allocated.
        params = dict(header["params"])
        type(self).__init__(self, [], **params)  # type: ignore[misc]
        for m in header["models"]:
            self.add_model(m)
        for m, vals in header["stats"].items():
            p, q, c, r = vals
            self._stats[m] = ModelStats(int(p), float(q), float(c), float(r))
        self.updates = int(header["updates"])
        self._rng.bit_generator.state = header["rng"]
        self._load_arrays(arrays)
        self._load_extra(header.get("extra", {}))


def decode_state(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split state bytes into the JSON header and the named arrays."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PolicyError("state must be bytes")
    data = bytes(data)
    if data[:4] != _MAGIC or len(data) < 8:
        raise PolicyError("not a banditroute policy state (bad magic)")
    (n,) = struct.unpack(">I", data[4:8])
    header = json.loads(data[8 : 8 + n])
    if header.get("schema") != SCHEMA_VERSION:
        raise PolicyError(f"unsupported state schema {header.get('schema')!r}")
    with np.load(io.BytesIO(data[8 + n :]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return header, arrays


def epsilon_mix(greedy: np.ndarray, epsilon: float) -> np.ndarray:
    """(1 - eps) * greedy + eps * uniform: every candidate keeps probability >= eps / K."""
    k = greedy.shape[0]
    return (1.0 - epsilon) * greedy + epsilon / k


def argmax_distribution(scores: np.ndarray) -> np.ndarray:
    """Uniform over the maximisers of `scores`, shape (K,)."""
    winners = scores >= scores.max() - 1e-12
    return winners / winners.sum()
