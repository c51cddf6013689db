"""Learners shared out over many processes: each policy learned by exactly one.

Every learner process is a member of a pool. It beats a heartbeat in the store every
third of a lease and reads back the live members; from them it computes which
policies are its own by rendezvous hashing (a policy belongs to the member with the
highest hash of (member, policy)), so every member reaches the same answer without a
coordinator, and a member that joins or leaves moves only its own share. It runs a
`Learner` for its own policies only, so the memory and CPU of a process grow with its
share, not with the number of policies.

A policy that now belongs to another member is handed over gracefully: its learner
drains the stream, publishes and releases the lease, which the new owner (trying every
third of a lease) then takes. A member that dies stops beating: within one lease its
heartbeat and its leases lapse, and the members left take its policies over.

Two members may disagree for a moment (one has seen a heartbeat expire, the other not
yet) and both try to learn a policy: only the lease holder does, and publishing is
fenced by the lease, so there is never a second writer. Each learner takes the lease
under an owner id of its own (`<member>#<n>`), so even two learners of one policy in
one process (one draining, one starting) cannot share a lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policies import Policy
from service.budgets import registry
from service.budgets.config import TenantConfig
from service.budgets.tenancy import pacers_for
from service.learner import Learner, learner_id
from service.priors import Catalogue
from service.store.base import Store, StoreUnavailable

if TYPE_CHECKING:
    from service.settings import PolicyConfig, Settings

log = logging.getLogger("banditroute.learner.pool")

# owner id -> a learner of one policy, holding no state until it runs
LearnerFactory = Callable[[str], Learner]


def pool_connections(settings: Settings, base: int = 64) -> int:
    """The Redis connection pool a process that runs the learners needs: each learner
    waits on its stream with a blocking read that holds a connection, and a member
    alone (or the last one left) learns every policy, so one per policy beside the
    `base` the rest of the process uses."""
    return base + len(settings.policies) + len(registry.own_state_policies(settings))


def learner_factories(
    settings: Settings,
    store: Store,
    *,
    fresh: Callable[[str, PolicyConfig], Callable[[], Policy]],
    models: Callable[[], Catalogue | None],
    features: str,
    tenants: Callable[[], Mapping[str, TenantConfig]],
) -> dict[str, LearnerFactory]:
    """Every policy a learner pool shares: the configured ones, and each tenant's own
    state ("<policy>@<tenant>", a cold start from its policy's snapshot discounted to
    the tenant's prior weight, the policy's config with the tenant's λ).

    fresh(name, config): the cold-start builder of a policy of that config."""

    def make(
        name: str,
        build: Callable[[], Policy],
        seed_from: str | None = None,
        prior_weight: float = 1.0,
    ) -> LearnerFactory:
        return lambda owner: Learner(
            store,
            name,
            build,
            every_n=settings.snapshot_every_n,
            every_ms=settings.snapshot_every_ms,
            lease_ttl_ms=settings.lease_ttl_ms,
            default_reward=settings.default_reward,
            models=models,
            owner=owner,
            features=features,
            pacers=pacers_for(settings, tenants, name),
            seed_from=seed_from,
            prior_weight=prior_weight,
        )

    out = {name: make(name, fresh(name, cfg)) for name, cfg in settings.policies.items()}
    for own, (base, tenant) in registry.own_state_policies(settings).items():
        t = settings.tenants[tenant]
        cfg = settings.policies[base]
        if t.cost_weight is not None:
            cfg = cfg.model_copy(update={"cost_weight": t.cost_weight})
        out[own] = make(own, fresh(base, cfg), seed_from=base, prior_weight=t.prior_weight)
    return out


def _weight(member: str, policy: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{policy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(policy: str, members: Sequence[str]) -> str:
    """The member that learns `policy` (rendezvous hashing; ties cannot matter: the
    weights are 64-bit hashes). `members` must not be empty."""
    return max(members, key=lambda m: (_weight(m, policy), m))


def member_of(owner: str) -> str:
    """The pool member behind a lease owner id `<member>#<n>`."""
    return owner.rpartition("#")[0] or owner


@dataclass
class _Running:
    learner: Learner
    stop: asyncio.Event
    task: asyncio.Task[None]


class LearnerPool:
    """Runs the learners of this member's share of `factories` (policy -> factory).

    lease_ttl_ms: the learners' lease; a member's heartbeat lives as long, and is
    beaten every third of it. group: the pool's name in the store (members of one
    group share the policies). settle: wait one heartbeat after joining before taking
    any policy, so processes started together do not first take everything and then
    hand most of it back (off for a pool of one, such as the in-process store's).
    """

    def __init__(
        self,
        store: Store,
        factories: Mapping[str, LearnerFactory],
        *,
        lease_ttl_ms: int,
        group: str = "learners",
        member: str | None = None,
        settle: bool = True,
    ) -> None:
        if lease_ttl_ms <= 0:
            raise ValueError(f"lease_ttl_ms must be > 0, got {lease_ttl_ms}")
        self.store = store
        self.factories = dict(factories)
        self.lease_ttl_ms = lease_ttl_ms
        self.group = group
        self.member = member or learner_id()
        self.settle = settle
        self.members: list[str] = []
        self._running: dict[str, _Running] = {}
        self._stopping: dict[str, _Running] = {}
        self._seq = 0
        self._share: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())

    @property
    def beat_s(self) -> float:
        return self.lease_ttl_ms / 3000

    def share(self, members: Sequence[str]) -> frozenset[str]:
        """The policies this member learns when `members` are alive."""
        key = tuple(members)
        if self._share[0] != key:
            mine = frozenset(p for p in self.factories if owner_of(p, key) == self.member)
            self._share = (key, mine)
        return self._share[1]

    def owned(self) -> list[str]:
        """Policies this member runs a learner for (holding the lease or waiting for it)."""
        return sorted(self._running)

    def holding(self) -> list[str]:
        """Policies whose lease a learner of this member holds now."""
        held = [
            p for p, r in {**self._stopping, **self._running}.items() if r.learner.stats.holds_lease
        ]
        return sorted(held)

    def learners(self) -> list[Learner]:
        return [r.learner for r in (*self._running.values(), *self._stopping.values())]

    async def run(self, stop: asyncio.Event) -> None:
        """Beat, rebalance, until `stop`; then leave the pool and stop every learner
        (each drains, publishes and releases its lease). Cancelled (a crash, as with
        SIGKILL) it stops the learners at once: no publish, no release, no goodbye."""
        try:
            settled = not self.settle
            down = False
            while not stop.is_set():
                try:
                    self.members = await self.store.heartbeat(
                        self.group, self.member, self.lease_ttl_ms
                    )
                    if down:
                        log.info("pool %s: store answers again", self.member)
                        down = False
                    if settled:
                        self._rebalance(self.members)
                    settled = True
                except StoreUnavailable as exc:
                    # the running learners wait the outage out themselves; their leases
                    # may lapse meanwhile, and the lease decides who learns afterwards
                    if not down:
                        log.warning("pool %s: store unavailable (%s)", self.member, exc)
                        down = True
                self._reap()
                await _sleep_or_stop(stop, self.beat_s)
        except asyncio.CancelledError:
            for r in (*self._running.values(), *self._stopping.values()):
                r.task.cancel()
            raise
        await self._close()

    def _rebalance(self, members: list[str]) -> None:
        if self.member not in members:  # the store answered without us: a race with expiry
            members = sorted([*members, self.member])
        mine = self.share(members)
        before = len(self._running)
        for policy in [p for p in self._running if p not in mine]:
            r = self._running.pop(policy)
            r.stop.set()  # drains, publishes, releases: the new owner takes it then
            self._stopping[policy] = r
        for policy in sorted(mine - self._running.keys()):
            if policy in self._stopping:
                continue  # still handing over its last state: start it after
            self._start(policy)
        if len(self._running) != before:
            log.info(
                "pool %s: learns %d of %d policies (%d members)",
                self.member,
                len(self._running),
                len(self.factories),
                len(members),
                extra={"member": self.member, "owned": len(self._running)},
            )

    def _start(self, policy: str) -> None:
        self._seq += 1
        learner = self.factories[policy](f"{self.member}#{self._seq}")
        stop = asyncio.Event()
        task = asyncio.create_task(learner.run(stop), name=f"learner-{policy}")
        self._running[policy] = _Running(learner, stop, task)

    def _reap(self) -> None:
        for policy in [p for p, r in self._stopping.items() if r.task.done()]:
            del self._stopping[policy]
        for policy in [p for p, r in self._running.items() if r.task.done()]:
            # Learner.run returns only when stopped: one that ended otherwise is
            # started again at the next beat (from the published snapshot)
            r = self._running.pop(policy)
            if not r.task.cancelled() and r.task.exception() is not None:
                log.error("pool %s: learner %s ended: %r", self.member, policy, r.task.exception())

    async def _close(self) -> None:
        # leave first: the others start their learners for our policies now and take
        # each lease the moment our learner releases it, rather than a heartbeat later
        try:
            await self.store.leave(self.group, self.member)
        except StoreUnavailable:
            pass
        everything = [*self._running.values(), *self._stopping.values()]
        self._stopping.update(self._running)
        self._running.clear()
        for r in everything:
            r.stop.set()
        await asyncio.gather(*(r.task for r in everything), return_exceptions=True)
        self._stopping.clear()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
