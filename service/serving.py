"""The policies a worker serves from: read-only copies of the learner's snapshots,
swapped in when the published version moves, without blocking requests."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import numpy as np

from policies import Policy, PolicyError, load_policy, make_policy
from service.priors import Catalogue, add_model, set_priors
from service.settings import PolicyConfig
from service.store.base import Snapshot, Store, StoreUnavailable

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


def features_json(featurizer: Any) -> str:
    """A featurizer's describe() as the JSON a snapshot carries."""
    return json.dumps(featurizer.describe(), sort_keys=True, separators=(",", ":"))


def check_features(name: str, snap: Snapshot, features: str) -> None:
    """Refuse a snapshot learned on contexts of another featurizer (another embedding
    model, projection seed or layout), even one of the same dimension."""
    if not snap.features or not features or snap.features == features:
        return
    theirs, ours = json.loads(snap.features), json.loads(features)
    for described in (theirs, ours):  # unnamed: torch, so the error names both backends
        described.setdefault("embed_backend", "torch")
    if theirs != ours:
        diff = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        raise PolicyError(
            f"policy {name!r}: stored state was learned with other features ({', '.join(diff)}"
            f" differ: {[theirs.get(k) for k in diff]} there, {[ours.get(k) for k in diff]} "
            "here); a changed featurizer needs a new policy name"
        )


def check_dim(name: str, policy: Policy, dim: int) -> None:
    if policy.dim != dim:
        raise PolicyError(
            f"policy {name!r}: stored state has context dimension {policy.dim} but the "
            f"featurizer gives {dim}; a changed projection_dim needs a new policy name"
        )


class ServingPolicy:
    """One named policy as a worker sees it: the newest snapshot it has loaded."""

    def __init__(
        self, name: str, policy: Policy, version: int = 0, features: str = "", pacers: str = ""
    ) -> None:
        self.name = name
        # the pacers' states published with this snapshot ("" the policy's own, else a
        # tenant's: service.budgets), and each tenant's λ from them
        self.pacer_states = pacer_states(pacers)
        self.paced = {k: float(v["lam"]) for k, v in self.pacer_states.items() if k}
        self.features = features  # this worker's features_json(): snapshots must match
        # every worker draws its own stream (OS entropy), never the learner's
        self.rng = np.random.default_rng()
        policy.use_rng(self.rng)
        # a served copy only chooses until the next snapshot: let it precompute
        policy.prepare_serving()
        self.policy = policy
        self.version = version
        self.rejected = 0  # the newest snapshot version refused: never fetched again
        self._reloading: asyncio.Task[None] | None = None
        # one reload at a time (background and status reads), so none can swap in a
        # snapshot older than the one another just installed
        self._reload_lock = asyncio.Lock()

    def sync_models(self, catalogue: Catalogue) -> None:
        """Serve newly registered models at once (cold-start prior) and drop removed
        ones; the learner makes the same change in the state it publishes."""
        if _sync(self.policy, catalogue):
            self.policy.prepare_serving()  # the change dropped what it had precomputed

    def notice_version(self, store: Store, seen: int, catalogue: Catalogue) -> None:
        """Called with the version read alongside a decision; reloads in the background."""
        if seen > max(self.version, self.rejected) and (
            self._reloading is None or self._reloading.done()
        ):
            self._reloading = asyncio.create_task(self.reload(store, catalogue))

    async def reload(self, store: Store, catalogue: Catalogue) -> None:
        """Swap in the published snapshot if it is newer than the one served. The new
        state is checked and synced with the catalogue before it is swapped in, with
        its version, in one step: a failure leaves the served policy and version as
        they were, and a refused version is not fetched again."""
        async with self._reload_lock:
            try:
                snap = await store.load_snapshot(self.name)
            except StoreUnavailable:
                return
            if snap is None or snap.version <= max(self.version, self.rejected):
                return
            try:
                # decoding a large state takes milliseconds: keep it off the event loop
                policy = await asyncio.to_thread(load_policy, snap.state)
                check_dim(self.name, policy, self.policy.dim)
                check_features(self.name, snap, self.features)
                _sync(policy, catalogue)
                # so does the serving copy's precomputation (the hybrid's: ~20 ms)
                await asyncio.to_thread(policy.prepare_serving)
            except PolicyError as exc:
                self.rejected = max(self.rejected, snap.version)
                log.error("policy %s: snapshot v%d rejected: %s", self.name, snap.version, exc)
                return
            if snap.version <= self.version:  # re-checked after the awaits
                return
            policy.use_rng(self.rng)
            self.policy, self.version = policy, snap.version
            states = pacer_states(snap.pacers)
            self.pacer_states = states
            self.paced = {k: float(v["lam"]) for k, v in states.items() if k}


def pacer_states(pacers: str) -> dict[str, dict[str, Any]]:
    """A snapshot's pacer states by key ("" the policy's own: its cost_weight already);
    an unreadable field is logged and read as none (tenants then route with their
    start λ)."""
    if not pacers:
        return {}
    try:
        states = json.loads(pacers)
        for v in states.values():
            float(v["lam"])
        return {str(k): dict(v) for k, v in states.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("snapshot pacers unreadable (%s): tenants route with their start λ", exc)
        return {}


def _sync(policy: Policy, catalogue: Catalogue) -> bool:
    """Add and remove models to match `catalogue`; whether anything changed."""
    known = set(policy.models)
    changed = False
    for m in catalogue:
        if m not in known:
            add_model(policy, m, catalogue)
            changed = True
    for m in known - set(catalogue):
        policy.remove_model(m)
        changed = True
    return changed
