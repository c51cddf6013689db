"""Catalogue priors: what a deployment knows of a model before its first feedback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies import Policy
from service.store.base import ModelPrice

Catalogue = Mapping[str, ModelPrice] | Sequence[str]


def set_priors(policy: Policy, catalogue: Catalogue) -> None:
    """Every catalogue model's prior, on a policy that has not learned yet."""
    if isinstance(catalogue, Mapping):
        for name, price in catalogue.items():
            if name in policy.models:
                policy.set_prior(name, **price.prior())


def add_model(policy: Policy, name: str, catalogue: Catalogue) -> None:
    """Register `name` with the prior its catalogue entry gives (a plain list of names
    gives none: the policy's own cold start)."""
    policy.add_model(name)
    if isinstance(catalogue, Mapping) and name in catalogue:
        policy.set_prior(name, **catalogue[name].prior())
