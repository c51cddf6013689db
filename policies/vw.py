"""Contextual bandit routing with Vowpal Wabbit's `--cb_explore_adf` reductions.

One call is one multi-line VW example: a shared example (namespace s) carrying the
context x and the cost weight lambda, then one action example per candidate
(namespace a) carrying a one-hot of the model name. Interacting s with a gives every
model its own linear cost model in x and lambda. Examples are built by pushing hashed
features straight into VW's feature groups (no text formatting or parsing), and are
reused across calls: the bindings set an example up before each call and undo it after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import vowpal_wabbit_next as vw

from policies.base import Decision, Policy, PolicyError, check_positive, check_probability

#: --cb_type values each exploration accepts in vowpal-wabbit-next 0.7 (VW 9.9)
_CB_TYPES: dict[str, tuple[str, ...]] = {
    "squarecb": ("mtr",),
    "epsilon": ("mtr", "ips", "dr", "dm", "sm"),
    "softmax": ("mtr", "ips", "dr", "dm", "sm"),
    "cover": ("mtr", "ips", "dr"),
    "bag": ("mtr", "ips", "dr", "dm", "sm"),
    "regcb": ("mtr",),
    "regcbopt": ("mtr",),
}
# Explorations that read --epsilon as their uniform exploration mass; SquareCB and
# RegCB have their own exploration and are left alone.
_USES_EPSILON = ("epsilon", "softmax", "cover", "bag")
# RegCB's confidence bounds need the range of the CB cost -(quality - lambda * cost_norm),
# which is [-1, 1] while lambda * normalised cost stays within 1 (VW's default is [0, 1]).
_REGCB_COST_RANGE = ("--cb_min_cost", "-1", "--cb_max_cost", "1")
# Learning without a logged propensity uses VW's current probability, which bag and
# regcb may put at 0; the floor caps the importance weight 1/p at 100.
_MIN_PROPENSITY = 0.01
_LAMBDA_FEATURE = "lam"


class VowpalPolicy(Policy):
    """Vowpal Wabbit contextual bandit over per-call action sets.

    VW's explorers work on one scalar, so quality and cost are folded into one
    reward here: the CB cost is -(quality - lambda * normalised cost), with the
    lambda the decision used (LinUCB and Thompson sampling model quality and cost
    separately and apply lambda only when choosing). Lambda is also a shared
    feature, so a per-call lambda conditions the choice.

    Hyper-parameters:
    exploration: one of "squarecb", "epsilon", "softmax", "cover", "bag", "regcb"
        (RegCB-elim) or "regcbopt" (optimistic RegCB).
    epsilon: uniform exploration mass in [0, 1] for epsilon, softmax, cover and bag
        (cover keeps it fixed; VW decays cover's epsilon only when it is not given).
    gamma_scale: SquareCB's gamma scale (> 0); larger means greedier.
    inverse_temperature: softmax's VW --lambda (> 0); larger means greedier.
    learning_rate: VW's -l (> 0).
    cb_type: VW's --cb_type; squarecb and RegCB accept only "mtr", cover no "dm"/"sm".
    interactions: namespace interactions, each 2-3 letters from "s" (shared) and
        "a" (action); ("sa",) gives each model a linear model in x and lambda.
    ensemble: number of policies for cover and bag (>= 1).
    extra_args: further VW command-line arguments, e.g. ("-b", "20").

    A restored policy decides exactly as the original on the same inputs. Cover and
    bag (ensemble >= 2) drift apart from the original once both go on learning: VW
    does not serialise all of their internal state. The other explorations stay
    identical through further learning.
    """

    name = "vw"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        exploration: str = "squarecb",
        epsilon: float = 0.05,
        gamma_scale: float = 10.0,
        inverse_temperature: float = 10.0,
        learning_rate: float = 0.5,
        cb_type: str = "mtr",
        interactions: Sequence[str] = ("sa",),
        ensemble: int = 4,
        extra_args: Sequence[str] = (),
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        if exploration not in _CB_TYPES:
            raise PolicyError(
                f"exploration must be one of {sorted(_CB_TYPES)}, got {exploration!r}"
            )
        self.exploration = exploration
        self.epsilon = check_probability("epsilon", epsilon)
        self.gamma_scale = check_positive("gamma_scale", gamma_scale)
        self.inverse_temperature = check_positive("inverse_temperature", inverse_temperature)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        if cb_type not in _CB_TYPES[exploration]:
            raise PolicyError(
                f"cb_type must be one of {list(_CB_TYPES[exploration])} with exploration "
                f"{exploration!r}, got {cb_type!r}"
            )
        self.cb_type = cb_type
        self.interactions = _check_strings("interactions", interactions)
        for term in self.interactions:
            if not 2 <= len(term) <= 3 or set(term) - {"s", "a"}:
                raise PolicyError(
                    f"interactions terms must be 2-3 letters of 's'/'a', got {term!r}"
                )
        if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
            raise PolicyError(f"ensemble must be a positive integer, got {ensemble!r}")
        self.ensemble = ensemble
        self.extra_args = _check_strings("extra_args", extra_args)
        # models are added once the workspace exists (the base validates dim and seed first)
        super().__init__([], dim, cost_weight=cost_weight, cost_scale=cost_scale, seed=seed)
        try:
            self._ws = vw.Workspace(self._vw_args())
        except (RuntimeError, ValueError) as exc:
            raise PolicyError(f"extra_args rejected by Vowpal Wabbit: {exc}") from exc
        self._x_index = np.array(
            [self._ws.get_index_for_scalar_feature(str(i), namespace_name="s") for i in range(dim)],
            dtype=np.uint64,
        )
        self._lam_index = self._ws.get_index_for_scalar_feature(_LAMBDA_FEATURE, namespace_name="s")
        self._shared = vw.Example()
        self._shared.set_label(vw.CBLabel(shared=True))
        self._shared_s = self._shared["s"]
        self._actions: dict[str, vw.Example] = {}
        # times each model was removed: a re-added model hashes to fresh weights
        self._removals: dict[str, int] = {}
        for m in models:
            self.add_model(m)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "exploration": self.exploration,
            "epsilon": self.epsilon,
            "gamma_scale": self.gamma_scale,
            "inverse_temperature": self.inverse_temperature,
            "learning_rate": self.learning_rate,
            "cb_type": self.cb_type,
            "interactions": list(self.interactions),
            "ensemble": self.ensemble,
            "extra_args": list(self.extra_args),
        }

    def _vw_args(self, *, with_seed: bool = True) -> list[str]:
        args = ["--cb_explore_adf", "--quiet", "--cb_type", self.cb_type]
        args += ["-l", repr(self.learning_rate)]
        if with_seed:
            args += ["--random_seed", str(self.seed)]
        for term in self.interactions:
            args += ["--interactions", term]
        if self.exploration == "squarecb":
            args += ["--squarecb", "--gamma_scale", repr(self.gamma_scale)]
        elif self.exploration == "softmax":
            args += ["--softmax", "--lambda", repr(self.inverse_temperature)]
        elif self.exploration in ("cover", "bag"):
            args += [f"--{self.exploration}", str(self.ensemble)]
        elif self.exploration in ("regcb", "regcbopt"):
            args += [f"--{self.exploration}", *_REGCB_COST_RANGE]
        if self.exploration in _USES_EPSILON:
            args += ["--epsilon", repr(self.epsilon)]
        return args + list(self.extra_args)

    # ---- model bookkeeping -----------------------------------------------
    def _add_model(self, model: str) -> None:
        n = self._removals.get(model, 0)
        feature = model if n == 0 else f"{model}~{n}"
        ex = vw.Example()
        ex.set_label(vw.CBLabel())
        index = self._ws.get_index_for_scalar_feature(feature, namespace_name="a")
        ex["a"].push_feature(index, 1.0)
        self._actions[model] = ex

    def _remove_model(self, model: str) -> None:
        del self._actions[model]
        self._removals[model] = self._removals.get(model, 0) + 1

    # ---- examples ------------------------------------------------------------
    def _fill_shared(self, x: np.ndarray, lam: float) -> vw.Example:
        """Load x, shape (dim,), and lambda into the reused shared example."""
        group = self._shared_s
        group.truncate_to(0)
        # zero-valued features are dropped, as VW's own text parser does
        nz = np.flatnonzero(x)
        # the bindings' stub writes the dtype where numpy's typing expects the shape
        group.push_many_features(
            self._x_index[nz],  # type: ignore[arg-type]
            x[nz].astype(np.float32),  # type: ignore[arg-type]
        )
        if lam != 0.0:
            group.push_feature(self._lam_index, lam)
        return self._shared

    # The public Workspace.predict_one / learn_one re-read the workspace's label type
    # once per example (about 40% of a 29-model predict); ours are always CB examples,
    # so the bound workspace is called directly.
    def _vw_predict(self, examples: list[vw.Example]) -> list[tuple[int, float]]:
        """ActionProbs: [(index into the action examples, probability)], best first."""
        pred = self._ws._workspace.predict_multi_ex_one([e._example for e in examples])
        return cast(list[tuple[int, float]], pred)

    def _vw_learn(self, examples: list[vw.Example]) -> None:
        self._ws._workspace.learn_multi_ex_one([e._example for e in examples])

    def _pmf(self, examples: list[vw.Example]) -> np.ndarray:
        """VW's action probabilities in example order, renormalised in float64."""
        pred = self._vw_predict(examples)
        probs = [0.0] * (len(examples) - 1)
        for i, p in pred:
            probs[i] = p
        total = sum(probs)  # float32 probabilities: off 1 by ~1e-7
        if total <= 0:
            return np.full(len(probs), 1.0 / len(probs))
        return np.array(probs) / total

    # ---- choose / learn ------------------------------------------------------
    def _choose(
        self, x: np.ndarray, candidates: list[str], lam: float, text: str | None
    ) -> Decision:
        examples = [self._fill_shared(x, lam), *(self._actions[c] for c in candidates)]
        probs = self._pmf(examples)
        chosen = self._sample(probs)
        return Decision(
            model=candidates[chosen],
            propensity=float(probs[chosen]),
            probabilities={c: float(p) for c, p in zip(candidates, probs, strict=True)},
        )

    def _learn(
        self,
        x: np.ndarray,
        model: str,
        quality: float,
        cost: float,
        propensity: float | None,
        lam: float,
    ) -> None:
        # VW minimises cost: cost = -(quality - lambda * cost / cost_scale)
        label_cost = -(quality - lam * self.normalised_cost(cost))
        examples = [self._fill_shared(x, lam), *(self._actions[m] for m in self._models)]
        if propensity is None:
            p_now = self._pmf(examples)[self._models.index(model)]
            propensity = max(float(p_now), _MIN_PROPENSITY)
        action = self._actions[model]
        action.set_label(vw.CBLabel(label=(label_cost, propensity)))
        try:
            self._vw_learn(examples)
        finally:
            action.set_label(vw.CBLabel())

    # ---- state -------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {"vw_model": np.frombuffer(self._ws.serialize(), dtype=np.uint8)}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        # The model carries VW's random state as its --random_seed (bag advances it), so
        # the seed is left to the model; performance counters are kept so that the
        # restored workspace serialises byte for byte like the original.
        args = self._vw_args(with_seed=False) + ["--preserve_performance_counters"]
        self._ws = vw.Workspace(args, model_data=arrays["vw_model"].tobytes())

    def _extra(self) -> dict[str, Any]:
        return {"removals": self._removals}

    def _load_extra(self, extra: Mapping[str, Any]) -> None:
        self._removals = {str(m): int(n) for m, n in extra.get("removals", {}).items()}
        for m in self._models:  # rebuild the action features with the restored salts
            self._add_model(m)


def _check_strings(name: str, values: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise PolicyError(f"{name} must be a list of strings, got {values!r}")
    return tuple(values)
