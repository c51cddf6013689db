"""The learner: the single writer of a policy.

It holds the policy's lease, reads the feedback stream in order, applies each event
once, and publishes a snapshot every N events or T milliseconds. A snapshot records
the last stream entry it contains, so a learner that dies resumes from there: no
update is lost (the stream keeps what the snapshot lacks) and none is applied twice
(what the snapshot has is never read again). Publishing is fenced by the lease, so a
learner that lost its lease (paused, partitioned) cannot overwrite a newer state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from policies import Policy, PolicyError, load_policy
from service.budgets.config import PacerConfig
from service.budgets.pacer import Pacer
from service.priors import Catalogue, add_model
from service.store.base import (
    NOT_HELD,
    TAKEN,
    FeedbackEvent,
    Snapshot,
    Store,
    StoreUnavailable,
)

log = logging.getLogger("banditroute.learner")

READ_BATCH = 500
# the sweep closes expired decisions in batches of this many, each round until none
# is left or SWEEP_BUDGET_S (at most a third of the lease) has passed; the rest
# waits for the next round
SWEEP_BATCH = 1000
SWEEP_BUDGET_S = 2.0


def learner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class LearnerStats:
    applied: int = 0
    rejected: int = 0
    published: int = 0
    last_id: str = "0-0"
    version: int = 0
    holds_lease: bool = False
    last_publish: float = 0.0
    copies: int = 0  # feedback copies forwarded to shadows and sharing variants
    closed: int = 0  # expired decisions the sweep closed
    backlog: int = 0  # expired decisions still open after the last sweep


# what a learner paces: "" the policy's own λ, else a tenant's (sharing this policy's
# state) -> (its target, the λ it starts from)
PacerSpecs = Mapping[str, tuple[PacerConfig, float]]


class Learner:
    """Learns one named policy from its feedback stream.

    fresh: builds the cold-start policy when no snapshot exists.
    features: the featurizer's describe() as JSON, published with every snapshot so
    workers with another featurizer refuse it.
    models: returns the current catalogue (model names), so registered models join
    the policy and deleted ones leave it; None while the catalogue is not known.
    pacers: returns what to pace (PacerSpecs): each pacer observes the cost of every
    call of its own (this policy's decisions, not copies from others; a tenant's: its
    decisions) and the policy's own λ becomes its pacer's, published with the state.
    seed_from / prior_weight: a cold start copies that policy's newest snapshot with
    `prior_weight` of its evidence (a tenant's own state), else `fresh()`.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        fresh: Callable[[], Policy],
        *,
        every_n: int = 200,
        every_ms: int = 1000,
        lease_ttl_ms: int = 5000,
        default_reward: float | None = None,
        models: Callable[[], Catalogue | None] | None = None,
        owner: str | None = None,
        features: str = "",
        pacers: Callable[[], PacerSpecs] | None = None,
        seed_from: str | None = None,
        prior_weight: float = 1.0,
    ) -> None:
        self.store = store
        self.name = name
        self.fresh = fresh
        self.every_n = every_n
        self.every_ms = every_ms
        self.lease_ttl_ms = lease_ttl_ms
        self.default_reward = default_reward
        self.models = models
        self.owner = owner or learner_id()
        self.features = features  # Featurizer.describe() as JSON, stamped on snapshots
        self.pacer_specs = pacers
        self.seed_from = seed_from
        self.prior_weight = prior_weight
        self.pacers: dict[str, Pacer] = {}
        self._pacer_cfg: dict[str, PacerConfig] = {}
        self.stats = LearnerStats()
        self._policy: Policy | None = None
        self._dirty = 0
        self._last_sweep = 0.0
        # models admitted from the store ahead of our catalogue read: not to be dropped
        # as "deleted" until the catalogue we are given has caught up with them
        self._admitted: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Learn until `stop` is set; survives store outages by waiting them out."""
        while not stop.is_set():
            try:
                await self.step()
            except StoreUnavailable as exc:
                log.warning("learner %s: store unavailable (%s); retrying", self.name, exc)
                self._drop()
                await _sleep_or_stop(stop, 1.0)
            except Exception:
                # a learner that dies silently leaves the service accepting feedback it
                # never learns from: log, start over from the snapshot, keep going
                log.exception("learner %s: unexpected error; restarting from snapshot", self.name)
                self._drop()
                await _sleep_or_stop(stop, 1.0)
            if not self.stats.holds_lease:
                await _sleep_or_stop(stop, self.lease_ttl_ms / 3000)
        if self.stats.holds_lease:
            # a graceful stop: no new lease is taken (the loop is over), what the
            # stream holds is applied and published, and the lease is released so a
            # successor need not wait for it to lapse
            try:
                await self.drain()
                # nothing is learned from here on: not holding it any more, whatever
                # the release's reply (a successor may take it before that comes)
                self._drop()
                await self.store.release_lease(self.name, self.owner)
                log.info(
                    "learner %s: released the lease at v%d",
                    self.name,
                    self.stats.version,
                    extra={"policy": self.name, "owner": self.owner},
                )
            except StoreUnavailable:
                self._drop()

    async def drain(self) -> None:
        """Apply what the stream still holds and publish it: at a graceful stop the
        in-process store keeps only the snapshot, so nothing accepted may stay unread."""
        while self._policy is not None:
            batch = await self.store.read_feedback(self.name, self.stats.last_id, READ_BATCH)
            if not batch:
                break
            self.stats.copies += await self.store.forward_copies(self.name, batch)
            await self._admit_new_models(batch)
            await asyncio.to_thread(self._apply, batch)
        await self._publish()

    async def step(self) -> None:
        """One round: keep the lease, read and apply a batch, sweep, maybe publish."""
        lease = await self.store.acquire_lease(self.name, self.owner, self.lease_ttl_ms)
        if lease == NOT_HELD:
            self._drop()
            return
        # TAKEN after holding it means the lease lapsed meanwhile (a stall): another
        # learner may have published since, so our state is stale
        if lease == TAKEN or not self.stats.holds_lease or self._policy is None:
            await self._take_over()
        assert self._policy is not None
        self._sync_models()
        self._sync_pacers()
        block = min(self.every_ms, self.lease_ttl_ms // 3, 200)
        batch = await self.store.read_feedback(
            self.name, self.stats.last_id, READ_BATCH, block_ms=block
        )
        if batch:
            # copies first: a snapshot never contains an event whose copies are not out
            self.stats.copies += await self.store.forward_copies(self.name, batch)
            await self._admit_new_models(batch)
            await asyncio.to_thread(self._apply, batch)
        now = time.time()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            await self.sweep(now)
        due = (now - self.stats.last_publish) * 1000 >= self.every_ms
        if self._dirty >= self.every_n or (self._dirty and due):
            await self._publish()

    async def sweep(self, now: float) -> int:
        """Close the decisions that expired unanswered, the whole backlog (within
        SWEEP_BUDGET_S), so it cannot grow above the sweep's batch size per round."""
        start, closed = time.monotonic(), 0
        budget = min(SWEEP_BUDGET_S, self.lease_ttl_ms / 3000)
        backlog = -1
        while time.monotonic() - start < budget:
            n = await self.store.expire_due(self.name, now, self.default_reward, SWEEP_BATCH)
            closed += n
            if n < SWEEP_BATCH:
                # a short batch need not mean the end: records whose key vanished are
                # dropped from the due set without counting as closed. Go on while the
                # backlog still shrinks.
                left = await self.store.due_backlog(self.name, now)
                if left == 0 or left == backlog:
                    break
                backlog = left
        self.stats.closed += closed
        self.stats.backlog = await self.store.due_backlog(self.name, now)
        if self.stats.backlog:
            log.warning(
                "learner %s: %d expired decisions still open after the sweep",
                self.name,
                self.stats.backlog,
            )
        return closed

    async def _admit_new_models(self, batch: list[tuple[str, FeedbackEvent]]) -> None:
        """A worker serves a model the moment it is registered, while this learner reads
        the catalogue about once a second: feedback for a model it does not know yet is
        checked against the store's catalogue, and the model joins (with its prior)
        rather than the event being skipped. Only deleted models' events are skipped."""
        policy = self._policy
        assert policy is not None
        unknown = {ev.model for _, ev in batch} - set(policy.models)
        if not unknown:
            return
        catalogue = await self.store.get_models()
        for m in sorted(unknown & set(catalogue)):
            add_model(policy, m, catalogue)
            self._admitted.add(m)
            self._dirty += 1

    def _apply(self, batch: list[tuple[str, FeedbackEvent]]) -> None:
        policy = self._policy
        assert policy is not None
        for entry_id, ev in batch:
            try:
                policy.learn(
                    ev.context,
                    ev.model,
                    ev.quality,
                    ev.cost_usd,
                    propensity=ev.propensity,
                    cost_weight=ev.cost_weight,
                )
                self.stats.applied += 1
                if ev.policy == self.name:
                    self._pace(policy, ev)
            except PolicyError as exc:
                # e.g. the model was deleted meanwhile: skip the event, never stall
                self.stats.rejected += 1
                log.warning(
                    "learner %s: event %s skipped: %s",
                    self.name,
                    ev.event_id,
                    exc,
                    extra={"policy": self.name, "event_id": ev.event_id},
                )
            except Exception:
                # one event the policy cannot take must not block the stream for good
                self.stats.rejected += 1
                log.exception(
                    "learner %s: event %s skipped",
                    self.name,
                    ev.event_id,
                    extra={"policy": self.name, "event_id": ev.event_id},
                )
            self.stats.last_id = entry_id
            self._dirty += 1

    def _pace(self, policy: Policy, ev: FeedbackEvent) -> None:
        at = ev.created_at if ev.created_at is not None else ev.received_at
        own = self.pacers.get("")
        # the policy's pacer holds the spend of the requests it paces: those of no tenant
        # (a tenant's are its own pacer's, or routed at its own λ)
        if own is not None and (ev.tenant is None or self.seed_from is not None):
            policy.cost_weight = own.observe(ev.cost_usd, ev.model, at)
        if ev.tenant is not None and ev.tenant in self.pacers:
            self.pacers[ev.tenant].observe(ev.cost_usd, ev.model, at)

    def _sync_pacers(self, restored: Mapping[str, dict[str, object]] | None = None) -> None:
        """Match the pacers to their configuration: a new or changed target gets a
        pacer that continues from the old one's state (λ moves on from where it was),
        a removed one goes."""
        specs = {} if self.pacer_specs is None else self.pacer_specs()
        for key in list(self.pacers):
            if key not in specs:
                del self.pacers[key], self._pacer_cfg[key]
        for key, (cfg, lam) in specs.items():
            if restored is None and self._pacer_cfg.get(key) == cfg:
                continue
            state = restored.get(key) if restored is not None else None
            old = self.pacers.get(key)
            pacer = cfg.make(lam)
            if state is not None:
                try:
                    pacer.restore(dict(state))
                except (ValueError, TypeError) as exc:
                    log.error("learner %s: pacer %r state unreadable (%s)", self.name, key, exc)
                    pacer = cfg.make(lam)
            elif old is not None:
                pacer.restore(old.state())
            self.pacers[key], self._pacer_cfg[key] = pacer, cfg
        own = self.pacers.get("")
        if own is not None and self._policy is not None:
            self._policy.cost_weight = own.lam

    async def _cold_start(self) -> Policy:
        if self.seed_from is not None:
            prior = await self.store.load_snapshot(self.seed_from)
            if prior is not None:
                policy = await asyncio.to_thread(load_policy, prior.state)
                policy.discount(self.prior_weight)
                fresh = self.fresh()
                policy.cost_weight = fresh.cost_weight  # the tenant's λ, not the global one
                log.info(
                    "learner %s: starts from %s v%d at weight %g",
                    self.name,
                    self.seed_from,
                    prior.version,
                    self.prior_weight,
                )
                return policy
        return self.fresh()

    async def _take_over(self) -> None:
        snap = await self.store.load_snapshot(self.name)
        if snap is None:
            self._policy = await self._cold_start()
            self.stats.last_id, self.stats.version, applied = "0-0", 0, 0
        else:
            self._policy = await asyncio.to_thread(load_policy, snap.state)
            self.stats.last_id, self.stats.version, applied = (
                snap.last_id,
                snap.version,
                snap.applied,
            )
        self.stats.applied = applied
        self.pacers, self._pacer_cfg = {}, {}
        self._sync_pacers(_pacer_states(self.name, snap))
        self.stats.holds_lease = True
        self.stats.last_publish = time.time()
        self._dirty = 0 if snap is not None else 1  # publish a cold start at once
        log.info(
            "learner %s: took lease as %s at %s (v%d)",
            self.name,
            self.owner,
            self.stats.last_id,
            self.stats.version,
            extra={"policy": self.name, "owner": self.owner},
        )

    def _sync_models(self) -> None:
        if self.models is None or self._policy is None:
            return
        catalogue = self.models()
        if catalogue is None:  # not known for sure yet (store unread): change nothing
            return
        known = set(self._policy.models)
        self._admitted -= set(catalogue)
        for m in catalogue:
            if m not in known:
                add_model(self._policy, m, catalogue)
                self._dirty += 1
        for m in known - set(catalogue) - self._admitted:
            self._policy.remove_model(m)
            self._dirty += 1

    async def _publish(self) -> None:
        if self._policy is None or not self._dirty:
            return
        state = await asyncio.to_thread(self._policy.to_bytes)
        snap = Snapshot(
            state=state,
            version=self.stats.version + 1,
            last_id=self.stats.last_id,
            applied=self.stats.applied,
            published_at=time.time(),
            features=self.features,
            pacers=json.dumps({k: p.state() for k, p in self.pacers.items()}),
        )
        if await self.store.publish_snapshot(self.name, snap, self.owner):
            self.stats.version = snap.version
            self.stats.published += 1
            self.stats.last_publish = snap.published_at
            self._dirty = 0
        else:  # lost the lease: whatever we applied since is someone else's to redo
            log.warning("learner %s: lease lost before publishing; dropping state", self.name)
            self._drop()

    def _drop(self) -> None:
        self.stats.holds_lease = False
        self._policy = None
        self._dirty = 0


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _pacer_states(name: str, snap: Snapshot | None) -> dict[str, dict[str, object]]:
    """The pacers' states a snapshot carries; unreadable ones are logged and the pacers
    start afresh (a bad imported field must not keep the learner from learning)."""
    if snap is None or not snap.pacers:
        return {}
    try:
        states = json.loads(snap.pacers)
        if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
            raise ValueError("not an object of objects")
        for v in states.values():
            float(v.get("lam", 0.0))
        return {str(k): dict(v) for k, v in states.items()}
    except (ValueError, TypeError) as exc:
        log.error("learner %s: snapshot pacers unreadable (%s); pacing afresh", name, exc)
        return {}
