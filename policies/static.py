"""Static routers: a fixed model, a weighted random choice, and a rule router.

They learn nothing (feedback only updates the per-model tallies every policy keeps),
but meet the same contract, so the service, simulator and A/B layer treat them like
the learning policies. With epsilon > 0 the deterministic ones log propensities that
support off-policy evaluation of other policies; the default 0 serves exactly the
route a team runs today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from policies.base import Decision, Policy, PolicyError, check_positive, check_probability


class _StaticPolicy(Policy):
    uses_context = False

    def __init__(
        self, models: Sequence[str], dim: int, *, epsilon: float = 0.0, **kwargs: Any
    ) -> None:
        self.epsilon = check_probability("epsilon", epsilon, open_upper=True)
        super().__init__(models, dim, **kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "epsilon": self.epsilon}

    def _target(self, candidates: list[str], text: str | None) -> np.ndarray:
        """Probabilities before the epsilon floor, shape (K,)."""
        raise NotImplementedError

    def _choose(
        self, x: np.ndarray, candidates: list[str], lam: float, text: str | None
    ) -> Decision:
        base = self._target(candidates, text)
        probs = (1.0 - self.epsilon) * base + self.epsilon / len(candidates)
        i = self._sample(probs)
        return Decision(
            model=candidates[i],
            propensity=float(probs[i]),
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
        return None

    def _discount(self, weight: float) -> None:
        pass  # nothing learned: a static router routes alike at any weight

    def _first_available(self, preferred: Sequence[str], candidates: list[str]) -> np.ndarray:
        """One-hot on the first of `preferred` among the candidates, else the first
        candidate in registration order (a fixed, documented fallback)."""
        for m in preferred:
            if m in candidates:
                return np.asarray([c == m for c in candidates], dtype=np.float64)
        order = sorted(candidates, key=self._models.index)
        return np.asarray([c == order[0] for c in candidates], dtype=np.float64)


class FixedRouter(_StaticPolicy):
    """Always the same model (when it is a candidate)."""

    name = "fixed"

    def __init__(self, models: Sequence[str], dim: int, *, model: str, **kwargs: Any) -> None:
        if not isinstance(model, str) or not model:
            raise PolicyError(f"model must be a model name, got {model!r}")
        self.model = model
        super().__init__(models, dim, **kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "model": self.model}

    def _target(self, candidates: list[str], text: str | None) -> np.ndarray:
        return self._first_available([self.model], candidates)


class RandomRouter(_StaticPolicy):
    """A weighted random choice; models without a weight get weight 1."""

    name = "random"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.weights = {
            str(m): check_positive(f"weights[{m!r}]", w, allow_zero=True)
            for m, w in (weights or {}).items()
        }
        super().__init__(models, dim, **kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "weights": dict(self.weights)}

    def _target(self, candidates: list[str], text: str | None) -> np.ndarray:
        w = np.asarray([self.weights.get(c, 1.0) for c in candidates], dtype=np.float64)
        if w.sum() <= 0:
            raise PolicyError(f"weights give every candidate of {candidates} weight 0")
        return w / w.sum()


class RuleRouter(_StaticPolicy):
    """Deterministic routing on the query text: the first matching rule wins.

    rules: each a mapping with "model" and any of "keywords" (list of case-insensitive
    substrings, any of which matches), "min_chars", "max_chars" (query length bounds).
    A rule whose conditions all hold matches; with no match, or no text given, the
    `default` model is chosen. Rules naming a non-candidate are skipped.
    """

    name = "rule"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        rules: Sequence[Mapping[str, Any]],
        default: str,
        **kwargs: Any,
    ) -> None:
        self.rules = [self._check_rule(i, r) for i, r in enumerate(rules)]
        if not isinstance(default, str) or not default:
            raise PolicyError(f"default must be a model name, got {default!r}")
        self.default = default
        super().__init__(models, dim, **kwargs)

    @staticmethod
    def _check_rule(i: int, rule: Mapping[str, Any]) -> dict[str, Any]:
        allowed = {"model", "keywords", "min_chars", "max_chars"}
        extra = set(rule) - allowed
        if extra:
            raise PolicyError(
                f"rules[{i}] has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}"
            )
        if not isinstance(rule.get("model"), str) or not rule["model"]:
            raise PolicyError(f"rules[{i}].model must be a model name")
        out: dict[str, Any] = {"model": rule["model"]}
        if "keywords" in rule:
            kws = rule["keywords"]
            if isinstance(kws, str) or not all(isinstance(k, str) and k for k in kws):
                raise PolicyError(f"rules[{i}].keywords must be a list of non-empty strings")
            out["keywords"] = [k.lower() for k in kws]
        for key in ("min_chars", "max_chars"):
            if key in rule:
                v = rule[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise PolicyError(f"rules[{i}].{key} must be a non-negative integer")
                out[key] = v
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "rules": [dict(r) for r in self.rules], "default": self.default}

    def matching_models(self, text: str | None) -> list[str]:
        """Models of the rules that match `text`, in rule order, then the default."""
        if text is None:
            return [self.default]
        low, n = text.lower(), len(text)
        hits = [
            r["model"]
            for r in self.rules
            if ("keywords" not in r or any(k in low for k in r["keywords"]))
            and n >= r.get("min_chars", 0)
            and n <= r.get("max_chars", n)
        ]
        return [*hits, self.default]

    def _target(self, candidates: list[str], text: str | None) -> np.ndarray:
        return self._first_available(self.matching_models(text), candidates)
