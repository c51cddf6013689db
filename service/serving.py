"""The policies a worker serves from: read-only copies of the learner's snapshots,
swapped in when the published version moves, without blocking requests."""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np

from policies import Policy, PolicyError, load_policy, make_policy
from service.priors import Catalogue, add_model, set_priors
from service.settings import PolicyConfig
from service.store.base import Store, StoreUnavailable

log = logging.getLogger("banditroute.serving")

POLICY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def build_policy(name: str, cfg: PolicyConfig, models: Catalogue, dim: int) -> Policy:
    """A fresh policy as configured (the cold start before any snapshot exists), each
    model with its catalogue prior."""
    if not POLICY_NAME.match(name):
        raise PolicyError(f"policy name {name!r} must match {POLICY_NAME.pattern}")
    params = {"seed": 0, **cfg.params, "cost_weight": cfg.cost_weight}
    policy = make_policy(cfg.kind, list(models), dim, **params)
    set_priors(policy, models)
    return policy


def check_dim(name: str, policy: Policy, dim: int) -> None:
    if policy.dim != dim:
        raise PolicyError(
            f"policy {name!r}: stored state has context dimension {policy.dim} but the "
            f"featurizer gives {dim}; a changed projection_dim needs a new policy name"
        )


class ServingPolicy:
    """One named policy as a worker sees it: the newest snapshot it has loaded."""

    def __init__(self, name: str, policy: Policy, version: int = 0) -> None:
        self.name = name
        # every worker draws its own stream (OS entropy), never the learner's
        self.rng = np.random.default_rng()
        policy.use_rng(self.rng)
        self.policy = policy
        self.version = version
        self._reloading: asyncio.Task[None] | None = None

    def sync_models(self, catalogue: Catalogue) -> None:
        """Serve newly registered models at once (cold-start prior) and drop removed
        ones; the learner makes the same change in the state it publishes."""
        known = set(self.policy.models)
        for m in catalogue:
            if m not in known:
                add_model(self.policy, m, catalogue)
        for m in known - set(catalogue):
            self.policy.remove_model(m)

    def notice_version(self, store: Store, seen: int, catalogue: Catalogue) -> None:
        """Called with the version read alongside a decision; reloads in the background."""
        if seen > self.version and (self._reloading is None or self._reloading.done()):
            self._reloading = asyncio.create_task(self.reload(store, catalogue))

    async def reload(self, store: Store, catalogue: Catalogue) -> None:
        try:
            snap = await store.load_snapshot(self.name)
        except StoreUnavailable:
            return
        if snap is None or snap.version <= self.version:
            return
        try:
            # decoding a large state takes milliseconds: keep it off the event loop
            policy = await asyncio.to_thread(load_policy, snap.state)
            check_dim(self.name, policy, self.policy.dim)
        except PolicyError as exc:
            log.error("policy %s: snapshot v%d rejected: %s", self.name, snap.version, exc)
            return
        old = self.policy
        policy.use_rng(self.rng)
        self.policy = policy
        self.version = snap.version
        try:
            self.sync_models(catalogue)
        except PolicyError:
            self.policy = old
