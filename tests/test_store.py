"""One contract suite run against every store: MemoryStore and RedisStore, the
latter on one Redis and on a Redis Cluster.

The tests are synchronous and run their coroutines with `asyncio.run` (no
pytest-asyncio). RedisStore uses the shared server on 127.0.0.1:6379, or the shared
3-master cluster on 127.0.0.1:7101-7103 (`deploy/redis-cluster.sh`), under a key
prefix unique to each test, deleted afterwards; the outage test starts a private
redis-server of its own and never touches the shared one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from service.store import (
    DecisionRecord,
    FeedbackEvent,
    FeedbackOutcome,
    MemoryStore,
    ModelPrice,
    RedisStore,
    Snapshot,
    Store,
    StoreUnavailable,
    open_store,
)
from service.store.base import parse_stream_id
from service.store.redis import _min_id_after
from tests.service_helpers import drop_prefix, require_redis, scan_keys, sync_client

SHARED_URL = "redis://127.0.0.1:6379/0"
RUN_ID = uuid.uuid4().hex[:8]
POLICY = "alpha"
DIM = 8

Body = Callable[[Store], Awaitable[None]]


class Backend:
    """Opens a fresh store of one kind inside the test's event loop, runs a body."""

    def __init__(self, kind: str, tmp_path: Path, url: str = SHARED_URL) -> None:
        self.kind = kind  # "memory", "redis" or "cluster"
        self.tmp_path = tmp_path
        self.url = url
        self.prefix = f"brtest-{RUN_ID}-{uuid.uuid4().hex[:6]}"

    def make(self) -> Store:
        if self.kind == "memory":
            return MemoryStore(self.tmp_path / "state")
        return RedisStore(self.url, prefix=self.prefix)

    def run(self, body: Body) -> None:
        async def main() -> None:
            store = self.make()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())

    def keys(self) -> list[str]:
        with sync_client(self.url) as r:
            return sorted(k.decode() for k in scan_keys(r, f"{self.prefix}:*"))

    def cleanup(self) -> None:
        if self.kind != "memory":
            drop_prefix(self.prefix, self.url)


def _backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    url = SHARED_URL if kind == "memory" else require_redis(kind)
    b = Backend(kind, tmp_path, url)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(str(request.param), tmp_path)


@pytest.fixture(params=["redis", "cluster"])
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(str(request.param), tmp_path)


# ---- helpers -----------------------------------------------------------------
def record(event_id: str, now: float, *, ttl: float = 60.0, policy: str = POLICY) -> DecisionRecord:
    rng = np.random.default_rng(abs(hash(event_id)) % 2**32)
    x = rng.standard_normal(DIM)
    # values whose bytes a lossy encoding would change
    x[:4] = [-0.0, 5e-324, np.inf, 1 / 3]
    return DecisionRecord(
        event_id=event_id,
        policy=policy,
        model="mid",
        propensity=0.8,
        policy_version=3,
        context=x,
        candidates=["cheap", "mid", "strong"],
        cost_weight=0.5,
        created_at=now,
        deadline=now + ttl,
        variant="B",
        experiment="exp1",
        prompt_tokens=42,
    )


def event(rec: DecisionRecord, now: float, quality: float = 1.0) -> FeedbackEvent:
    return FeedbackEvent.join(rec, quality=quality, cost_usd=0.002, source="user", now=now)


async def submit(store: Store, rec: DecisionRecord, now: float) -> FeedbackOutcome:
    return await store.submit_feedback(rec.policy, rec.event_id, event(rec, now), now)


async def stream(store: Store, policy: str = POLICY) -> list[tuple[str, FeedbackEvent]]:
    return await store.read_feedback(policy, "0-0", 10_000)


def snap(version: int, last_id: str = "0-0", state: bytes | None = None) -> Snapshot:
    body = state if state is not None else f"state-{version}".encode() + bytes(range(256))
    return Snapshot(
        state=body,
        version=version,
        last_id=last_id,
        applied=version * 10,
        published_at=1700000000.25 + version,
    )


# ---- decisions and feedback ----------------------------------------------------
def test_decision_round_trip(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("e1", now)
        assert await store.put_decision(rec) == 0
        got = await store.get_decision(POLICY, "e1", now)
        assert got is not None
        assert got.context.dtype == np.float64
        assert got.context.tobytes() == rec.context.tobytes()
        assert got.meta() == rec.meta()
        assert await store.get_decision(POLICY, "e1", rec.deadline) is not None
        assert await store.get_decision(POLICY, "e1", rec.deadline + 0.001) is None
        assert await store.get_decision(POLICY, "nope", now) is None
        assert await store.get_decision("beta", "e1", now) is None

    backend.run(body)


def test_feedback_at_most_once(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        a, b = record("a", now), record("b", now, ttl=10)
        await store.put_decision(a)
        await store.put_decision(b)
        assert await submit(store, a, now + 1) is FeedbackOutcome.ACCEPTED
        assert await submit(store, a, now + 2) is FeedbackOutcome.DUPLICATE
        # still a duplicate after the deadline, while the record is kept for the grace
        assert await submit(store, a, a.deadline + 100) is FeedbackOutcome.DUPLICATE
        ghost = record("ghost", now)
        assert await submit(store, ghost, now) is FeedbackOutcome.UNKNOWN
        assert await submit(store, b, b.deadline + 0.001) is FeedbackOutcome.UNKNOWN
        entries = await stream(store)
        assert [ev.event_id for _, ev in entries] == ["a"]
        assert await store.feedback_total(POLICY) == 1
        # b was refused without being closed: feedback in time is still taken
        assert await submit(store, b, b.deadline) is FeedbackOutcome.ACCEPTED
        assert await store.feedback_total(POLICY) == 2

    backend.run(body)


def test_feedback_event_must_match(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        a, b = record("a", now), record("b", now)
        await store.put_decision(a)
        with pytest.raises(ValueError):
            await store.submit_feedback(POLICY, "a", event(b, now), now)
        assert await stream(store) == []

    backend.run(body)


def test_bad_policy_names_are_refused(backend: Backend) -> None:
    async def body(store: Store) -> None:
        for name in ["", "a{b}", "../x", "a/b"]:
            with pytest.raises(ValueError):
                await store.put_decision(record("e", time.time(), policy=name))

    backend.run(body)


def test_read_feedback_in_order_after_id(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"e{i}", now) for i in range(5)]
        for rec in recs:
            await store.put_decision(rec)
            assert await submit(store, rec, now) is FeedbackOutcome.ACCEPTED
        entries = await stream(store)
        assert [ev.event_id for _, ev in entries] == [r.event_id for r in recs]
        ids = [parse_stream_id(i) for i, _ in entries]
        assert ids == sorted(ids) and len(set(ids)) == 5
        first = entries[0][1]
        assert first.context.tobytes() == recs[0].context.tobytes()
        assert (first.quality, first.cost_usd, first.source) == (1.0, 0.002, "user")
        after = await store.read_feedback(POLICY, entries[1][0], 100)
        assert [i for i, _ in after] == [i for i, _ in entries[2:]]
        assert len(await store.read_feedback(POLICY, "0-0", 2)) == 2
        assert await store.read_feedback(POLICY, entries[-1][0], 100) == []
        assert await store.read_feedback("beta", "0-0", 100) == []

    backend.run(body)


def test_read_feedback_blocks_until_an_event(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("late", now)
        await store.put_decision(rec)

        t0 = time.monotonic()
        assert await store.read_feedback(POLICY, "0-0", 10, block_ms=300) == []
        waited = time.monotonic() - t0
        assert 0.25 <= waited < 1.5

        async def later() -> None:
            await asyncio.sleep(0.7)  # past one of RedisStore's shorter blocking reads
            assert await submit(store, rec, time.time()) is FeedbackOutcome.ACCEPTED

        t0 = time.monotonic()
        task = asyncio.create_task(later())
        got = await store.read_feedback(POLICY, "0-0", 10, block_ms=5000)
        waited = time.monotonic() - t0
        await task
        assert [ev.event_id for _, ev in got] == ["late"]
        assert 0.6 <= waited < 2.0

    backend.run(body)


def test_expire_due_without_default(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        a, b, c = record("a", now, ttl=10), record("b", now, ttl=20), record("c", now, ttl=100)
        for rec in (a, b, c):
            await store.put_decision(rec)
        assert await submit(store, b, now) is FeedbackOutcome.ACCEPTED
        assert await store.expire_due(POLICY, now + 50, None) == 1  # a only
        assert [ev.event_id for _, ev in await stream(store)] == ["b"]
        assert await store.feedback_total(POLICY) == 1
        assert await store.get_decision(POLICY, "a", now) is None  # closed
        assert await submit(store, a, now + 60) is FeedbackOutcome.UNKNOWN
        assert await submit(store, a, now + 1) is FeedbackOutcome.UNKNOWN  # closed stays closed
        assert await store.expire_due(POLICY, now + 50, None) == 0
        assert await store.expire_due(POLICY, c.deadline, None) == 0  # deadline < now only
        assert await store.expire_due(POLICY, c.deadline + 1, 0.5) == 1
        assert [ev.event_id for _, ev in await stream(store)] == ["b", "c"]

    backend.run(body)


def test_expire_due_with_default(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"d{i}", now, ttl=10 + i) for i in range(3)]
        for rec in recs:
            await store.put_decision(rec)
        assert await submit(store, recs[1], now) is FeedbackOutcome.ACCEPTED
        later = now + 100
        assert await store.expire_due(POLICY, later, 0.25) == 2
        entries = await stream(store)
        assert [ev.event_id for _, ev in entries] == ["d1", "d0", "d2"]
        assert await store.feedback_total(POLICY) == 3
        for _, ev in entries[1:]:
            rec = recs[int(ev.event_id[1])]
            assert (ev.quality, ev.cost_usd, ev.source, ev.received_at) == (
                0.25,
                0.0,
                "default",
                later,
            )
            assert (ev.model, ev.propensity, ev.variant) == (rec.model, rec.propensity, "B")
            assert ev.context.tobytes() == rec.context.tobytes()
        assert await submit(store, recs[0], later) is FeedbackOutcome.UNKNOWN
        assert await store.expire_due(POLICY, later + 1, 0.25) == 0
        assert len(await stream(store)) == 3

    backend.run(body)


def test_expire_due_limit(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        for i in range(5):
            await store.put_decision(record(f"l{i}", now, ttl=1 + i))
        assert await store.expire_due(POLICY, now + 10, None, limit=2) == 2
        assert await store.expire_due(POLICY, now + 10, None, limit=10) == 3
        assert await store.expire_due(POLICY, now + 10, None) == 0

    backend.run(body)


def test_concurrent_feedback_is_at_most_once(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"c{i}", now) for i in range(100)]
        await asyncio.gather(*(store.put_decision(r) for r in recs))
        outcomes = await asyncio.gather(*(submit(store, r, now) for r in recs + recs))
        assert outcomes.count(FeedbackOutcome.ACCEPTED) == 100
        assert outcomes.count(FeedbackOutcome.DUPLICATE) == 100
        entries = await stream(store)
        assert sorted(ev.event_id for _, ev in entries) == sorted(r.event_id for r in recs)
        assert await store.feedback_total(POLICY) == 100

    backend.run(body)


# ---- snapshots and lease ---------------------------------------------------------
def test_snapshot_fencing_and_versions(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        assert await store.snapshot_version(POLICY) == 0
        assert await store.load_snapshot(POLICY) is None
        assert await store.acquire_lease(POLICY, "A", 300)
        assert not await store.acquire_lease(POLICY, "B", 300)
        assert not await store.publish_snapshot(POLICY, snap(1), "B")
        assert await store.load_snapshot(POLICY) is None
        assert await store.publish_snapshot(POLICY, snap(1), "A")
        assert await store.load_snapshot(POLICY) == snap(1)
        assert await store.snapshot_version(POLICY) == 1
        assert await store.put_decision(record("v1", now)) == 1
        assert await store.acquire_lease(POLICY, "A", 300)  # renewal
        await store.release_lease(POLICY, "B")  # not B's: no effect
        assert not await store.acquire_lease(POLICY, "B", 300)

        await asyncio.sleep(0.45)  # A's lease runs out
        assert await store.acquire_lease(POLICY, "B", 5000)
        assert not await store.publish_snapshot(POLICY, snap(2, state=b"stale"), "A")
        assert await store.publish_snapshot(POLICY, snap(2), "B")
        assert await store.load_snapshot(POLICY) == snap(2)
        assert await store.put_decision(record("v2", now)) == 2
        assert await store.snapshot_version(POLICY) == 2
        await store.release_lease(POLICY, "B")
        assert await store.acquire_lease(POLICY, "A", 5000)
        # unfenced publishing (a single-process deployment) is always allowed
        assert await store.publish_snapshot(POLICY, snap(3), None)
        assert await store.snapshot_version(POLICY) == 3
        assert await store.snapshot_version("beta") == 0
        assert await store.snapshot_info(POLICY) == dataclasses.replace(snap(3), state=b"")
        assert await store.snapshot_info("beta") is None

    backend.run(body)


def test_publish_trims_only_up_to_last_id(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"t{i}", now) for i in range(6)]
        for rec in recs:
            await store.put_decision(rec)
            await submit(store, rec, now)
        entries = await stream(store)
        assert await store.publish_snapshot(POLICY, snap(1, "0-0"), None)
        assert [i for i, _ in await stream(store)] == [i for i, _ in entries]
        assert await store.publish_snapshot(POLICY, snap(2, entries[2][0]), None)
        kept = await stream(store)
        assert [i for i, _ in kept] == [i for i, _ in entries[3:]]
        assert await store.publish_snapshot(POLICY, snap(3, entries[-1][0]), None)
        assert await stream(store) == []
        # the stream keeps growing after a full trim, with ids after the last one
        extra = record("t-next", now)
        await store.put_decision(extra)
        await submit(store, extra, now)
        ((new_id, ev),) = await store.read_feedback(POLICY, entries[-1][0], 10)
        assert ev.event_id == "t-next"
        assert parse_stream_id(new_id) > parse_stream_id(entries[-1][0])
        assert await store.feedback_total(POLICY) == 7

    backend.run(body)


def test_min_id_after() -> None:
    assert _min_id_after("0-0") == ""
    assert _min_id_after("1700000000000-3") == "1700000000000-4"
    assert _min_id_after(f"5-{2**64 - 1}") == "6-0"
    with pytest.raises(ValueError):
        _min_id_after("later")


# ---- catalogue and housekeeping --------------------------------------------------
def test_catalogue(backend: Backend) -> None:
    async def body(store: Store) -> None:
        if isinstance(store, RedisStore):
            # the catalogue key is shared by policies; keep the test inside its prefix
            assert store.models_key.startswith(backend.prefix)
        assert await store.get_models() == {}
        cheap = ModelPrice("cheap", 0.15, 0.6, {"provider": "x", "ctx": 128000})
        strong = ModelPrice("strong", 5.0, 15.0)
        await store.put_model(cheap)
        await store.put_model(strong)
        assert await store.get_models() == {"cheap": cheap, "strong": strong}
        cheaper = ModelPrice("cheap", 0.1, 0.4)
        await store.put_model(cheaper)
        assert (await store.get_models())["cheap"] == cheaper
        assert await store.delete_model("strong")
        assert not await store.delete_model("strong")
        assert await store.get_models() == {"cheap": cheaper}
        assert await store.ping()

    backend.run(body)


def test_redis_keys_share_the_policy_slot(redis_backend: Backend) -> None:
    backend = redis_backend

    async def body(store: Store) -> None:
        now = time.time()
        for policy in (POLICY, "beta"):
            a, b = record("a", now, policy=policy), record("b", now, ttl=1, policy=policy)
            await store.put_decision(a)
            await store.put_decision(b)
            await store.submit_feedback(policy, "a", event(a, now), now)
            assert await store.acquire_lease(policy, "me", 10_000)
            assert await store.publish_snapshot(policy, snap(1), "me")
        await store.put_model(ModelPrice("m", 1.0, 2.0))

    backend.run(body)
    keys = backend.keys()
    for policy in (POLICY, "beta"):
        mine = [k for k in keys if k.startswith(f"{backend.prefix}:{{{policy}}}:")]
        assert {k.removeprefix(f"{backend.prefix}:{{{policy}}}:") for k in mine} == {
            "d:a",
            "d:b",
            "due",
            "stream",
            "fbtotal",
            "log",
            "x:exp1:B",  # the experiment variant's counters
            "lease",
            "snap",
            "snapmeta",
        }
        assert all(f"{{{policy}}}" in k for k in mine)
        assert len({key_slot(k.encode()) for k in mine}) == 1
    others = [k for k in keys if "{" not in k]
    assert others == [f"{backend.prefix}:models"]


def test_atomic_steps_beside_the_feedback_path(backend: Backend) -> None:
    """The store's other multi-command steps (one MULTI on one Redis, one script on a
    cluster) leave the same state everywhere: copies with shadow counters, shadow
    decisions, session flags, experiment counters and their deletion across
    policies, tenant tombstones."""

    async def body(store: Store) -> None:
        now = time.time()
        ev = event(record("a", now), now)
        await store.append_feedback("beta", ev, {"n": 1.0, "sq": 0.25})
        await store.append_feedback("beta", ev)
        assert [e.event_id for _, e in await stream(store, "beta")] == ["a", "a"]
        assert await store.feedback_total("beta") == 2
        await store.count_shadow_decision("beta", True, 0.0)
        await store.count_shadow_decision("beta", False, 0.5)
        counts = await store.shadow_counts("beta")
        assert {k: counts[k] for k in ("n", "sq", "decisions", "agree", "unsupported")} == {
            "n": 1.0,
            "sq": 0.25,
            "decisions": 2.0,
            "agree": 1.0,
            "unsupported": 0.5,
        }
        await store.flag_session("s1", ["email"], 60)
        await store.flag_session("s1", ["iban"], 60)
        assert await store.session_flags("s1") == {"email", "iban"}
        assert await store.session_flags("s2") == set()

        await store.put_experiment("exp1", '{"name": "exp1"}')
        for policy in (POLICY, "beta"):
            rec = dataclasses.replace(record(f"x-{policy}", now, policy=policy), unit="u1")
            await store.put_decision(rec)
            assert await store.submit_feedback(policy, rec.event_id, event(rec, now), now) == (
                FeedbackOutcome.ACCEPTED
            )
            counters, units = await store.experiment_counts(policy, "exp1", "B")
            assert (counters["decisions"], counters["n"], units) == (1.0, 1.0, 1)
        assert await store.delete_experiment("exp1", [(POLICY, "B"), ("beta", "B")])
        assert not await store.delete_experiment("exp1", [(POLICY, "B"), ("beta", "B")])
        assert await store.get_experiments() == {}
        for policy in (POLICY, "beta"):
            assert await store.experiment_counts(policy, "exp1", "B") == ({}, 0)

        await store.put_tenant("acme", '{"name": "acme"}')
        assert await store.get_tenants() == {"acme": '{"name": "acme"}'}
        assert await store.delete_tenant("acme")
        assert not await store.delete_tenant("acme")
        assert await store.get_tenants(include_deleted=True) == {"acme": ""}

    backend.run(body)


def test_cluster_keeps_each_policy_on_one_node_and_spreads_policies(tmp_path: Path) -> None:
    """On the 3-master cluster: every key of a policy is served by the node of its
    slot, and a dozen policies (the learner's whole loop on each) land on more than
    one node."""
    policies = [f"p{i}" for i in range(12)]

    async def body(store: Store) -> None:
        now = time.time()
        for policy in policies:
            rec = record("a", now, policy=policy)
            assert await store.put_decision(rec) == 0
            assert await store.submit_feedback(policy, "a", event(rec, now), now) == (
                FeedbackOutcome.ACCEPTED
            )
            assert await store.acquire_lease(policy, "me", 10_000)
            assert await store.publish_snapshot(policy, snap(1), "me")
            assert (await store.load_snapshot(policy)) == snap(1)
            assert len(await store.read_feedback(policy, "0-0", 10)) == 1

    gen = _backend("cluster", tmp_path)
    backend = next(gen)
    try:
        backend.run(body)
        keys = backend.keys()
        for policy in policies:
            mine = [k for k in keys if f"{{{policy}}}" in k]
            assert len(mine) >= 6, mine
            assert len({key_slot(k.encode()) for k in mine}) == 1
        # where the keys really are: each primary's own keys, read from that node
        held: dict[str, set[str]] = {}  # policy -> the nodes holding some of its keys
        with sync_client(backend.url) as r:
            for node in r.get_primaries():  # type: ignore[attr-defined]
                with redis.Redis(host=node.host, port=node.port) as one:
                    for k in one.scan_iter(match=f"{backend.prefix}:*", count=1000):
                        name = k.decode()
                        if "{" not in name:
                            continue
                        policy = name.split("{", 1)[1].split("}", 1)[0]
                        held.setdefault(policy, set()).add(node.name)
        assert set(held) >= set(policies), held
        assert all(len(held[p]) == 1 for p in policies), held
        assert len({n for p in policies for n in held[p]}) > 1, held
    finally:
        next(gen, None)


def test_memory_snapshot_survives_restart(tmp_path: Path) -> None:
    async def body() -> None:
        first = MemoryStore(tmp_path)
        now = time.time()
        rec = record("r", now)
        await first.put_decision(rec)
        await submit(first, rec, now)
        ((last_id, _),) = await stream(first)
        assert await first.publish_snapshot(POLICY, snap(4, last_id), None)
        assert (tmp_path / f"{POLICY}.snapshot").exists()
        assert [p.name for p in tmp_path.iterdir()] == [f"{POLICY}.snapshot"]  # no temp left

        second = MemoryStore(tmp_path)  # a restarted process
        assert await second.put_decision(record("s", now)) == 4
        assert await second.snapshot_version(POLICY) == 4
        assert await second.load_snapshot(POLICY) == snap(4, last_id)
        # new feedback sorts after what the snapshot contains, whatever the clock says
        s = await second.get_decision(POLICY, "s", now)
        assert s is not None
        await submit(second, s, now)
        ((new_id, _),) = await second.read_feedback(POLICY, last_id, 10)
        assert parse_stream_id(new_id) > parse_stream_id(last_id)
        # only snapshots persist: decisions and feedback were the old process's
        assert await second.get_decision(POLICY, "r", now) is None

        third = MemoryStore(tmp_path)
        assert await third.publish_snapshot(POLICY, snap(5), None)
        assert await MemoryStore(tmp_path).load_snapshot(POLICY) == snap(5)
        assert await MemoryStore(tmp_path / "elsewhere").load_snapshot(POLICY) is None
        assert await MemoryStore(None).load_snapshot(POLICY) is None

    asyncio.run(body())


def test_memory_catalogue_survives_restart(tmp_path: Path) -> None:
    async def body() -> None:
        first = MemoryStore(tmp_path)
        await first.put_model(ModelPrice("a", 0.1, 0.2))
        await first.put_model(ModelPrice("b", 1.0, 2.0))
        assert await first.delete_model("a")
        assert await MemoryStore(tmp_path).get_models() == {"b": ModelPrice("b", 1.0, 2.0)}
        assert await MemoryStore(None).get_models() == {}

    asyncio.run(body())


def test_memory_corrupt_snapshot_is_unavailable_not_empty(tmp_path: Path) -> None:
    (tmp_path / f"{POLICY}.snapshot").write_bytes(b"garbage")

    async def body() -> None:
        with pytest.raises(StoreUnavailable):
            await MemoryStore(tmp_path).snapshot_version(POLICY)

    asyncio.run(body())


def test_open_store(tmp_path: Path) -> None:
    async def body() -> None:
        mem = await open_store(None, tmp_path)
        assert isinstance(mem, MemoryStore) and mem.state_dir == tmp_path
        red = await open_store(SHARED_URL, None, prefix=f"brtest-{RUN_ID}")
        assert isinstance(red, RedisStore) and red.prefix == f"brtest-{RUN_ID}"
        assert not red.cluster
        await red.close()
        # the scheme alone selects the cluster client
        clu = await open_store(require_redis("cluster"), None, prefix=f"brtest-{RUN_ID}")
        assert isinstance(clu, RedisStore) and clu.cluster and await clu.ping()
        await clu.close()
        await mem.close()

    asyncio.run(body())


# ---- Redis outage ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    with redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5) as r:
        while True:
            try:
                r.get("ready?")  # LOADING is an error too: wait for the data set
                return proc
            except redis.exceptions.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    msg = f"private redis-server on port {port} did not start"
                    raise RuntimeError(msg) from None
                time.sleep(0.05)


def _stop_redis(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
        proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_redis_outage_is_reported_fast_and_recovered(tmp_path: Path) -> None:
    port = _free_port()
    procs = [_start_redis(port, tmp_path)]

    async def unavailable(call: Awaitable[object]) -> float:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
            await call
        return time.monotonic() - t0

    async def body() -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="out", socket_timeout=1.0)
        try:
            now = time.time()
            a, b, c = record("a", now), record("b", now), record("c", now, ttl=5)
            for rec in (a, b, c):
                await store.put_decision(rec)
            assert await submit(store, a, now) is FeedbackOutcome.ACCEPTED
            assert await store.publish_snapshot(POLICY, snap(1), None)

            # paused: connections open but nothing answers -> the socket timeout
            os.kill(procs[0].pid, signal.SIGSTOP)
            assert await unavailable(store.get_decision(POLICY, "b", now)) < 2.0
            assert await unavailable(store.snapshot_version(POLICY)) < 2.0
            os.kill(procs[0].pid, signal.SIGCONT)
            # known down until a probe answers (readiness pings, or the next call
            # after PROBE_EVERY_S)
            assert await store.ping()
            assert await store.get_decision(POLICY, "b", now) is not None

            # stopped: connection refused -> reported at once
            await asyncio.to_thread(_stop_redis, procs[0])
            assert await unavailable(store.get_decision(POLICY, "b", now)) < 2.0
            assert await unavailable(submit(store, b, now)) < 2.0
            assert await unavailable(store.put_decision(record("d", now))) < 2.0
            assert await unavailable(store.read_feedback(POLICY, "0-0", 10, 2000)) < 2.0
            assert await unavailable(store.expire_due(POLICY, now + 10, 0.5)) < 2.0
            t0 = time.monotonic()
            assert await store.ping() is False
            assert time.monotonic() - t0 < 2.0

            # back on the same port and data: the same client carries on by itself,
            # and the scripts (gone with the restart) are loaded again
            procs.append(await asyncio.to_thread(_start_redis, port, tmp_path))
            assert await store.ping()
            got = await store.get_decision(POLICY, "b", now)
            assert got is not None and got.context.tobytes() == b.context.tobytes()
            with redis.Redis(port=port) as probe:
                sha = store._lua().submit.sha
                assert probe.script_exists(sha) == [False]  # the restart dropped it
                assert await submit(store, b, now) is FeedbackOutcome.ACCEPTED
                assert probe.script_exists(sha) == [True]  # NOSCRIPT -> loaded, re-run
            assert await submit(store, a, now) is FeedbackOutcome.DUPLICATE  # AOF kept it
            assert await store.expire_due(POLICY, now + 10, 0.5) == 1  # pipelined scripts
            assert [ev.event_id for _, ev in await stream(store)] == ["a", "b", "c"]
            assert await store.load_snapshot(POLICY) == snap(1)
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        for proc in procs:
            _stop_redis(proc)


def test_memory_decision_log_keeps_the_newest_and_outlives_publishing() -> None:
    async def body() -> None:
        store = MemoryStore(log_max=5)
        now = time.time()
        for i in range(8):
            rec = record(f"e{i}", now)
            await store.put_decision(rec)
            assert await submit(store, rec, now) is FeedbackOutcome.ACCEPTED
        entries = await store.read_feedback(POLICY, "0-0", 100)
        assert await store.acquire_lease(POLICY, "me", 10_000)
        assert await store.publish_snapshot(POLICY, Snapshot(b"s", 1, entries[-1][0], 8), "me")
        assert await store.feedback_pending(POLICY) == 0  # the stream is trimmed
        log = await store.read_log(POLICY, "0-0", 100)
        assert [e.event_id for _, e in log] == [f"e{i}" for i in range(3, 8)]
        assert log[0][1].candidates == record("e3", now).candidates
        later = await store.read_log(POLICY, log[1][0], 100)
        assert [e.event_id for _, e in later] == ["e5", "e6", "e7"]

    asyncio.run(body())


# ---- issue 11: tombstones, grace, caps, the sweep, default costs, copies ----------
def _store(backend: Backend, **kw: float) -> Store:
    if backend.kind == "memory":
        return MemoryStore(backend.tmp_path / "state", **kw)  # type: ignore[arg-type]
    return RedisStore(backend.url, prefix=backend.prefix, **kw)


def _run(backend: Backend, body: Body, **kw: float) -> None:
    async def main() -> None:
        store = _store(backend, **kw)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def _raw_decision(backend: Backend, store: Store, event_id: str) -> tuple[set[str], float]:
    """The fields a decision record still holds and when it goes (unix s; inf: never)."""
    if isinstance(store, MemoryStore):
        d = store._policies[POLICY].decisions[event_id]
        names = set() if d.fields is None else set(d.fields)
        return names | {"answered"}, d.expire_at
    with sync_client(backend.url) as r:
        key = f"{backend.prefix}:{{{POLICY}}}:d:{event_id}"
        names = {k.decode() for k in r.hkeys(key)}
        ms = r.pexpiretime(key)
        return names, (ms / 1000 if ms > 0 else float("inf"))


def test_answered_and_closed_decisions_keep_only_a_tombstone(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        a, b, c = record("a", now, ttl=30), record("b", now, ttl=30), record("c", now, ttl=1)
        for rec in (a, b, c):
            await store.put_decision(rec)
        fields, _ = _raw_decision(backend, store, "a")
        assert {"meta", "x"} <= fields
        assert await submit(store, a, now) is FeedbackOutcome.ACCEPTED
        fields, gone = _raw_decision(backend, store, "a")
        assert not {"meta", "x"} & fields  # the context is dropped at once
        assert gone == pytest.approx(a.deadline + 120, abs=0.01)  # deadline + grace
        assert await store.get_decision(POLICY, "a", now) is None
        assert await store.was_answered(POLICY, "a")
        assert not await store.was_answered(POLICY, "b")
        assert not await store.was_answered(POLICY, "nope")
        assert await submit(store, a, now + 1) is FeedbackOutcome.DUPLICATE
        assert await store.expire_due(POLICY, now + 5, 0.5) == 1  # c
        fields, gone = _raw_decision(backend, store, "c")
        assert not {"meta", "x"} & fields
        assert gone == pytest.approx(c.deadline + 120, abs=0.01)
        assert not await store.was_answered(POLICY, "c")
        assert await submit(store, c, now + 5) is FeedbackOutcome.UNKNOWN
        # the open one keeps its context beyond deadline + grace, for a lagging sweep
        fields, gone = _raw_decision(backend, store, "b")
        assert {"meta", "x"} <= fields and gone > b.deadline + 120 + 60

    _run(backend, body, grace_s=120.0)


def test_an_open_decision_outlives_its_grace_until_the_sweep_gives_its_default(
    backend: Backend,
) -> None:
    """A sweep that comes after deadline + grace still closes the decision with its
    default reward (the record used to be gone by then, and its reward with it)."""

    async def body(store: Store) -> None:
        now = time.time()
        rec = record("late", now, ttl=0.2)
        await store.put_decision(rec)
        await asyncio.sleep(0.6)  # past deadline + grace (0.1 s)
        assert await store.due_backlog(POLICY, time.time()) == 1
        assert await store.expire_due(POLICY, time.time(), 0.3) == 1
        assert [(e.event_id, e.source) for _, e in await stream(store)] == [("late", "default")]
        assert await store.due_backlog(POLICY, time.time()) == 0

    _run(backend, body, grace_s=0.1)


def test_a_short_grace_forgets_tombstones_soon(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("g", now, ttl=0.2)
        await store.put_decision(rec)
        assert await submit(store, rec, now) is FeedbackOutcome.ACCEPTED
        assert await store.was_answered(POLICY, "g")
        await asyncio.sleep(0.6)  # past deadline + grace
        await store.put_decision(record("other", time.time()))  # the memory store purges here
        assert not await store.was_answered(POLICY, "g")
        assert await submit(store, rec, time.time()) is FeedbackOutcome.UNKNOWN

    _run(backend, body, grace_s=0.1)


def test_default_reward_learns_an_imputed_cost(backend: Backend) -> None:
    """An unanswered decision's default reward comes with the policy's own estimate of
    the chosen model's cost, else the catalogue price of its prompt and expected
    output, never a free call."""

    async def body(store: Store) -> None:
        await store.put_model(
            ModelPrice("mid", 1.0, 2.0, {"expected_output_tokens": 100, "expected_input_tokens": 7})
        )
        now = time.time()
        estimated = dataclasses.replace(record("est", now, ttl=1), expected_cost=0.0031)
        priced = record("priced", now, ttl=2)  # prompt_tokens=42, no estimate
        unpriced = dataclasses.replace(record("ghost", now, ttl=3), model="unknown-model")
        no_prompt = dataclasses.replace(record("np", now, ttl=4), prompt_tokens=None)
        for rec in (estimated, priced, unpriced, no_prompt):
            await store.put_decision(rec)
        assert await store.expire_due(POLICY, now + 10, 0.25) == 4
        costs = {e.event_id: e.cost_usd for _, e in await stream(store)}
        assert costs == pytest.approx(
            {
                "est": 0.0031,
                "priced": (42 * 1.0 + 100 * 2.0) / 1e6,
                "ghost": 0.0,
                "np": (7 * 1.0 + 100 * 2.0) / 1e6,
            }
        )

    backend.run(body)


def test_memory_store_sheds_the_oldest_beyond_its_cap() -> None:
    async def body() -> None:
        store = MemoryStore(max_decisions=100)
        now = time.time()
        recs = [record(f"s{i}", now, ttl=60 + i) for i in range(250)]
        for rec in recs:
            await store.put_decision(rec)
        st = store._policies[POLICY]
        assert len(st.decisions) == 100 and store.decisions_shed == 150
        assert await submit(store, recs[0], now) is FeedbackOutcome.UNKNOWN  # shed
        assert await submit(store, recs[-1], now) is FeedbackOutcome.ACCEPTED
        # answering and re-pushing expiries never lets the heaps outgrow the records
        for i in range(5000):
            rec = record(f"t{i}", now, ttl=60 + 250 + i)
            await store.put_decision(rec)
            assert await submit(store, rec, now) is FeedbackOutcome.ACCEPTED
        assert len(st.decisions) == 100
        assert len(st.due) <= 2 * 100 + 1024 and len(st.expiry) <= 2 * 100 + 1024

    asyncio.run(body())


def _copies_event(rec: DecisionRecord, now: float) -> FeedbackEvent:
    shadow = {"n": 1.0, "sw": 2.5}
    return dataclasses.replace(event(rec, now), copies={"sh": shadow, "var": None})


def test_copies_travel_with_the_feedback_and_are_forwarded_once(backend: Backend) -> None:
    """Shadow and shared-feedback copies are recorded with the feedback, and
    forwarding them again (a learner re-reading after a crash) copies nothing twice."""

    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"f{i}", now) for i in range(3)]
        for rec in recs:
            await store.put_decision(rec)
            ev = _copies_event(rec, now)
            assert await store.submit_feedback(POLICY, rec.event_id, ev, now) is (
                FeedbackOutcome.ACCEPTED
            )
        batch = await stream(store)
        assert [e.copies for _, e in batch] == [{"sh": {"n": 1.0, "sw": 2.5}, "var": None}] * 3
        first = await store.forward_copies(POLICY, batch[:2])
        total = first + await store.forward_copies(POLICY, batch)
        assert await store.forward_copies(POLICY, batch) == 0
        assert total == (0 if isinstance(store, MemoryStore) else 6)  # memory: at submit
        for target in ("sh", "var"):
            got = await stream(store, target)
            assert [e.event_id for _, e in got] == ["f0", "f1", "f2"]
            assert all(e.copies is None and e.policy == POLICY for _, e in got)
            assert await store.feedback_total(target) == 3
            assert await store.read_log(target, "0-0", 10) == []  # the log is the served one's
        assert await store.shadow_counts("sh") == {"n": 3.0, "sw": 7.5}
        assert await store.shadow_counts("var") == {}

    backend.run(body)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_a_store_known_down_fails_fast_until_a_probe_answers(tmp_path: Path) -> None:
    """Redis hangs (SIGSTOP): the first call waits for the socket timeout, every call
    after it fails at once instead of waiting too, and once Redis answers again a
    call after PROBE_EVERY_S goes through by itself."""
    from service.store.redis import PROBE_EVERY_S

    port = _free_port()
    proc = _start_redis(port, tmp_path)

    async def body() -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="ff", socket_timeout=1.0)
        try:
            await store.put_decision(record("a", time.time()))
            os.kill(proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.snapshot_version(POLICY)
            assert time.monotonic() - t0 >= 0.9
            assert store.known_down
            t0 = time.monotonic()
            for _ in range(20):
                with pytest.raises(StoreUnavailable):
                    await store.put_decision(record("b", time.time()))
            assert time.monotonic() - t0 < 0.2
            os.kill(proc.pid, signal.SIGCONT)
            await asyncio.sleep(PROBE_EVERY_S + 0.1)
            assert await store.get_decision(POLICY, "a", time.time()) is not None
            assert not store.known_down
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        _stop_redis(proc)
