"""Routing policies: pure learning logic behind one contract (see `policies.base`)."""

from __future__ import annotations

from typing import Any

from policies.base import Decision, ModelStats, Policy, PolicyError, decode_state
from policies.hybrid import HybridLinear
from policies.linucb import LinUCB
from policies.static import FixedRouter, RandomRouter, RuleRouter
from policies.thompson import LinearThompson
from policies.vw import VowpalPolicy

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        LinUCB,
        LinearThompson,
        HybridLinear,
        VowpalPolicy,
        FixedRouter,
        RandomRouter,
        RuleRouter,
    )
}

LEARNING = ("linucb", "thompson", "hybrid", "vw")


def make_policy(kind: str, models: list[str], dim: int, **params: Any) -> Policy:
    """Build a registered policy by name; unknown names and parameters raise PolicyError."""
    cls = REGISTRY.get(kind)
    if cls is None:
        raise PolicyError(f"unknown policy {kind!r}; known: {sorted(REGISTRY)}")
    try:
        return cls(models, dim, **params)
    except TypeError as exc:  # an unknown keyword: name it for the user
        raise PolicyError(f"bad parameters for policy {kind!r}: {exc}") from exc


def load_policy(data: bytes) -> Policy:
    """Restore any registered policy from its state bytes."""
    return Policy.from_bytes(data)


__all__ = [
    "LEARNING",
    "REGISTRY",
    "Decision",
    "FixedRouter",
    "HybridLinear",
    "LinUCB",
    "LinearThompson",
    "ModelStats",
    "Policy",
    "PolicyError",
    "RandomRouter",
    "RuleRouter",
    "VowpalPolicy",
    "decode_state",
    "load_policy",
    "make_policy",
]
