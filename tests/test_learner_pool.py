"""Learners sharded over a pool (service.learner_pool) on the real Redis, under a key
prefix of their own: with 3 learners and 30 policies each policy has exactly one
learner at any time; one killed, the other two absorb its policies; started again,
the load spreads back; every accepted feedback applied once through all of it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import redis.asyncio as aioredis

from policies import Policy, make_policy
from service.learner import Learner
from service.learner_pool import LearnerFactory, LearnerPool, member_of, owner_of
from service.store import DecisionRecord, FeedbackEvent, MemoryStore, RedisStore, Store
from tests.service_helpers import REDIS_URL, drop_prefix

MODELS = ["cheap", "strong"]
DIM = 4
TTL_MS = 450
POLICIES = [f"p{i:02d}" for i in range(30)]


def fresh() -> Policy:
    return make_policy("linucb", MODELS, DIM, seed=0)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"brtest-pool-{uuid.uuid4().hex[:8]}"
    yield p
    drop_prefix(p)


def pool(store: Store, member: str, policies: list[str] = POLICIES) -> LearnerPool:
    def factory(name: str) -> LearnerFactory:
        return lambda owner: Learner(
            store, name, fresh, every_n=10, every_ms=50, lease_ttl_ms=TTL_MS, owner=owner
        )

    return LearnerPool(
        store,
        {p: factory(p) for p in policies},
        lease_ttl_ms=TTL_MS,
        member=member,
    )


async def feed(store: Store, policy: str, n: int, start: int) -> None:
    """n accepted feedbacks for `policy`."""
    rng = np.random.default_rng(start)
    now = time.time()
    for i in range(start, start + n):
        rec = DecisionRecord(
            event_id=f"{policy}.{i}",
            policy=policy,
            model=MODELS[i % 2],
            propensity=0.5,
            policy_version=0,
            context=rng.standard_normal(DIM),
            candidates=MODELS,
            cost_weight=0.0,
            created_at=now,
            deadline=now + 600,
        )
        await store.put_decision(rec)
        ev = FeedbackEvent.join(rec, quality=float(i % 2), cost_usd=0.0, source="user", now=now)
        assert (await store.submit_feedback(policy, rec.event_id, ev, now)).value == "accepted"


@dataclass
class Watch:
    """What the lease keys said, sampled every few ms."""

    holders: dict[str, str | None] = field(default_factory=dict)  # policy -> member
    last_owned: dict[str, float] = field(default_factory=dict)  # policy -> monotonic
    longest_unowned: float = 0.0
    double: list[tuple[str, list[str]]] = field(default_factory=list)
    samples: int = 0


async def watch(prefix: str, pools: dict[str, LearnerPool], w: Watch, stop: asyncio.Event) -> None:
    keys = [f"{prefix}:{{{p}}}:lease" for p in POLICIES]
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        while not stop.is_set():
            values = await client.mget(keys)
            now = time.monotonic()
            for p, v in zip(POLICIES, values, strict=True):
                w.holders[p] = None if v is None else member_of(v.decode())
                if v is not None:
                    w.last_owned[p] = now
                elif p in w.last_owned:
                    w.longest_unowned = max(w.longest_unowned, now - w.last_owned[p])
            # in the processes: no policy is learned by two live members at once
            for p in POLICIES:
                learning = [pl.member for pl in pools.values() if p in pl.holding()]
                if len(learning) > 1:
                    w.double.append((p, learning))
            w.samples += 1
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def converge(
    w: Watch, members: list[str], timeout: float, since: float | None = None
) -> float:
    """Seconds from `since` (monotonic; default now) until every policy's lease is
    held by its rendezvous owner."""
    start = time.monotonic() if since is None else since
    want = {p: owner_of(p, sorted(members)) for p in POLICIES}
    while time.monotonic() - start < timeout:
        if w.holders == want:
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    wrong = {p: (w.holders.get(p), o) for p, o in want.items() if w.holders.get(p) != o}
    raise AssertionError(f"not converged on {members} after {timeout} s: {wrong}")


def test_three_learners_thirty_policies_kill_and_restart(prefix: str) -> None:
    async def main() -> None:
        feeder = RedisStore(REDIS_URL, prefix=prefix)
        stores = {m: RedisStore(REDIS_URL, prefix=prefix) for m in ("a", "b", "c", "c2")}
        pools = {m: pool(stores[m], m) for m in ("a", "b", "c")}
        stops = {m: asyncio.Event() for m in ("a", "b", "c", "c2")}
        tasks = {m: asyncio.create_task(pools[m].run(stops[m])) for m in pools}
        w, stop_watch = Watch(), asyncio.Event()
        watcher = asyncio.create_task(watch(prefix, pools, w, stop_watch))
        fed = 0

        async def feed_all(n: int) -> None:
            nonlocal fed
            for p in POLICIES:
                await feed(feeder, p, n, fed)
            fed += n

        await feed_all(5)
        await converge(w, ["a", "b", "c"], timeout=10)
        for m in ("a", "b", "c"):
            assert m in w.holders.values(), f"{m} learns nothing"
        await feed_all(5)

        # c dies without a goodbye: no release, no publish, its heartbeat just stops
        victims = [p for p in POLICIES if w.holders[p] == "c"]
        killed = time.monotonic()
        tasks["c"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks["c"]
        del pools["c"]
        # feedback keeps coming while the two take c's policies over
        took, _ = await asyncio.gather(
            converge(w, ["a", "b"], timeout=10, since=killed), feed_all(5)
        )
        # within about 2 lease periods (a beat of slack for a loaded machine)
        assert took < 2 * TTL_MS / 1000 + 0.3, took
        assert {w.holders[p] for p in victims} <= {"a", "b"}

        # started again (a new process: a new member id), the load spreads back
        pools["c2"] = pool(stores["c2"], "c2")
        tasks["c2"] = asyncio.create_task(pools["c2"].run(stops["c2"]))
        await feed_all(5)
        await converge(w, ["a", "b", "c2"], timeout=10)
        assert "c2" in w.holders.values()
        await feed_all(5)

        # a graceful stop of all: each learner drains, publishes and releases
        for m in ("a", "b", "c2"):
            stops[m].set()
        await asyncio.gather(tasks["a"], tasks["b"], tasks["c2"])
        await asyncio.sleep(0.05)
        stop_watch.set()
        await watcher
        assert w.samples > 50
        assert not w.double, w.double[:5]
        # a lease is never missing for longer than ~2 lease periods (handovers: a
        # third of one; c's leases lapsed while they were held, by a dead member)
        assert w.longest_unowned < 2 * TTL_MS / 1000, w.longest_unowned
        assert set(w.holders.values()) == {None}  # every lease released
        assert await feeder.heartbeat("learners", "probe", 1) == ["probe"]  # all left
        for p in POLICIES:
            snap = await feeder.load_snapshot(p)
            assert snap is not None
            # exactly once: every accepted feedback applied, none twice
            assert snap.applied == await feeder.feedback_total(p) == fed, p
        for s in (feeder, *stores.values()):
            await s.close()

    asyncio.run(main())


def test_rendezvous_moves_only_the_joiners_share() -> None:
    policies = [f"t{i}" for i in range(300)]
    three = {p: owner_of(p, ["a", "b", "c"]) for p in policies}
    four = {p: owner_of(p, ["a", "b", "c", "d"]) for p in policies}
    moved = [p for p in policies if three[p] != four[p]]
    assert all(four[p] == "d" for p in moved)  # nothing moves between the old members
    counts = {m: sum(o == m for o in four.values()) for m in "abcd"}
    assert min(counts.values()) > 300 / 4 * 0.6, counts
    # the order members are listed in never matters
    assert {p: owner_of(p, ["d", "c", "b", "a"]) for p in policies} == four


def test_pool_of_one_on_the_in_process_store_learns_every_policy() -> None:
    async def main() -> None:
        store = MemoryStore()
        lone = LearnerPool(
            store,
            {
                p: (
                    lambda owner, p=p: Learner(
                        store, p, fresh, every_n=5, every_ms=20, lease_ttl_ms=300, owner=owner
                    )
                )
                for p in POLICIES[:5]
            },
            lease_ttl_ms=300,
            settle=False,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(lone.run(stop))
        for i, p in enumerate(POLICIES[:5]):
            await feed(store, p, 3, 10 * i)
        end = time.monotonic() + 5
        while time.monotonic() < end and len(lone.holding()) < 5:
            await asyncio.sleep(0.02)
        assert lone.holding() == POLICIES[:5]
        stop.set()
        await task
        for p in POLICIES[:5]:
            snap = await store.load_snapshot(p)
            assert snap is not None and snap.applied == 3
        assert lone.learners() == []  # no state kept once stopped

    asyncio.run(main())
