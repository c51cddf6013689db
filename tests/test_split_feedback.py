"""A decision's cost and its quality arriving apart, and the gateway's session pins.

Every store test runs against MemoryStore and RedisStore (the shared server on
127.0.0.1:6379, under a key prefix unique to the test, deleted afterwards). Either
order of cost and quality must give one learning event with the measured cost; a
quality alone learns with an estimate, flagged; a quality parked for a cost that never
comes is learned once, at the deadline, with its estimate. The HTTP tests go through
the real app (real embedder), like tests/test_api.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis.crc import key_slot

from service.batcher import FeatureBatcher
from service.embedder import Embedder
from service.metrics import Metrics
from service.outcomes import Recorded, apply_cost, apply_quality
from service.runtime_state import Runtime
from service.schemas import RouteRequest
from service.serving import ServingPolicy
from service.shadow import increments as shadow_increments
from service.store import (
    DecisionRecord,
    FeedbackEvent,
    FeedbackOutcome,
    MemoryStore,
    ModelPrice,
    RedisStore,
    Store,
)
from tests.service_helpers import (
    REDIS_URL,
    drop_prefix,
    make_settings,
    require_redis,
    scan_keys,
    sync_client,
)

POLICY = "alpha"
Body = Callable[[Store], Awaitable[None]]


class Backend:
    """Opens a fresh store of one kind inside the test's event loop, runs a body."""

    def __init__(self, kind: str, url: str = REDIS_URL) -> None:
        self.kind = kind  # "memory", "redis" or "cluster"
        self.url = url
        self.prefix = f"brtest-split-{uuid.uuid4().hex[:10]}"

    def run(self, body: Body) -> None:
        async def main() -> None:
            store: Store = MemoryStore() if self.kind == "memory" else self.redis()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())

    def redis(self) -> RedisStore:
        return RedisStore(self.url, prefix=self.prefix)


def _backend(kind: str) -> Iterator[Backend]:
    b = Backend(kind, REDIS_URL if kind == "memory" else require_redis(kind))
    try:
        yield b
    finally:
        if b.kind != "memory":
            drop_prefix(b.prefix, b.url)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from _backend(str(request.param))


@pytest.fixture(params=["redis", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from _backend(str(request.param))


def record(
    event_id: str,
    now: float,
    *,
    ttl: float = 60.0,
    policy: str = POLICY,
    awaits_cost: bool = False,
    unit: str | None = None,
    **extra: Any,
) -> DecisionRecord:
    x = np.random.default_rng(abs(hash(event_id)) % 2**32).standard_normal(6)
    return DecisionRecord(
        event_id=event_id,
        policy=policy,
        model="mid",
        propensity=0.5,
        policy_version=1,
        context=x,
        candidates=["cheap", "mid"],
        cost_weight=0.3,
        created_at=now,
        deadline=now + ttl,
        experiment="exp",
        variant="B",
        unit=unit,
        prompt_tokens=40,
        awaits_cost=awaits_cost,
        **extra,
    )


def quality_event(
    rec: DecisionRecord, now: float, quality: float, cost: float = 0.5, *, estimated: bool = True
) -> FeedbackEvent:
    """A quality with the cost its sender had: by default a (poor) estimate."""
    ev = FeedbackEvent.join(rec, quality=quality, cost_usd=cost, source="user", now=now)
    return dataclasses.replace(ev, cost_estimated=estimated)


async def submit(store: Store, ev: FeedbackEvent, now: float) -> FeedbackOutcome:
    return await store.submit_feedback(ev.policy, ev.event_id, ev, now)


async def events(store: Store, policy: str = POLICY) -> list[FeedbackEvent]:
    return [ev for _, ev in await store.read_feedback(policy, "0-0", 10_000)]


# ---- the record and the event ---------------------------------------------------


def test_old_records_and_events_decode_and_the_cost_is_no_part_of_meta() -> None:
    now = time.time()
    rec = record("r", now, awaits_cost=True, cost_usd=0.4)
    enc = rec.encode()
    assert "cost_usd" not in json.loads(enc["meta"])  # kept apart by the store
    back = DecisionRecord.decode(enc)
    assert back.awaits_cost and back.cost_usd is None
    assert DecisionRecord.decode({**enc, "cost": b"0.25"}).cost_usd == 0.25
    old = json.loads(enc["meta"])
    del old["awaits_cost"]
    got = DecisionRecord.decode({"meta": json.dumps(old).encode(), "x": enc["x"]})
    assert not got.awaits_cost and got.cost_usd is None
    ev_enc = quality_event(rec, now, 0.7).encode()
    old_ev = json.loads(ev_enc["meta"])
    del old_ev["cost_estimated"]
    ev = FeedbackEvent.decode({"meta": json.dumps(old_ev).encode(), "x": ev_enc["x"]})
    assert ev.cost_usd == 0.5 and not ev.cost_estimated
    # a measured cost beside meta wins over meta's, and is not an estimate
    measured = FeedbackEvent.decode({**ev_enc, "cost": b"0.125"})
    assert (measured.cost_usd, measured.cost_estimated) == (0.125, False)


# ---- cost and quality apart ------------------------------------------------------


def test_cost_then_quality_learns_the_measured_cost(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("a", now)
        await store.put_decision(rec)
        assert await store.attach_cost(POLICY, "a", 0.0123, now) is FeedbackOutcome.ACCEPTED
        got = await store.get_decision(POLICY, "a", now)
        assert got is not None and got.cost_usd == 0.0123
        assert await events(store) == []  # a cost alone teaches nothing yet
        assert await store.attach_cost(POLICY, "a", 0.9, now) is FeedbackOutcome.DUPLICATE
        assert await submit(store, quality_event(rec, now, 0.8), now) is FeedbackOutcome.ACCEPTED
        (ev,) = await events(store)
        assert (ev.quality, ev.cost_usd, ev.cost_estimated) == (0.8, 0.0123, False)
        (_, logged), *_ = await store.read_log(POLICY, "0-0", 10)
        assert (logged.cost_usd, logged.cost_estimated) == (0.0123, False)
        assert await submit(store, quality_event(rec, now, 0.1), now) is FeedbackOutcome.DUPLICATE
        assert await store.attach_cost(POLICY, "a", 0.9, now) is FeedbackOutcome.DUPLICATE
        assert await store.feedback_total(POLICY) == 1

    backend.run(body)


def test_a_quality_first_waits_for_the_cost_of_a_decision_that_awaits_it(
    backend: Backend,
) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("p", now, awaits_cost=True)
        await store.put_decision(rec)
        assert await submit(store, quality_event(rec, now, 0.6), now) is FeedbackOutcome.PARKED
        assert await events(store) == []
        # still open for its cost (and priced from its record), but its quality is taken
        got = await store.get_decision(POLICY, "p", now)
        assert got is not None and got.awaits_cost and got.cost_usd is None
        assert await store.was_answered(POLICY, "p")
        assert await submit(store, quality_event(rec, now, 0.1), now) is FeedbackOutcome.DUPLICATE
        assert await store.attach_cost(POLICY, "p", 0.002, now + 1) is FeedbackOutcome.ACCEPTED
        (ev,) = await events(store)
        assert (ev.quality, ev.cost_usd, ev.cost_estimated, ev.source) == (
            0.6,
            0.002,
            False,
            "user",
        )
        assert ev.context.tobytes() == rec.context.tobytes()
        assert await store.get_decision(POLICY, "p", now) is None  # answered: a tombstone
        assert await store.attach_cost(POLICY, "p", 0.003, now) is FeedbackOutcome.DUPLICATE
        assert await submit(store, quality_event(rec, now, 0.2), now) is FeedbackOutcome.DUPLICATE
        assert await store.expire_due(POLICY, rec.deadline + 1, 0.25) == 0
        assert len(await events(store)) == 1 and await store.feedback_total(POLICY) == 1

    backend.run(body)


def test_a_cost_after_the_deadline_or_for_nothing_is_unknown(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        rec = record("late", now, ttl=5)
        await store.put_decision(rec)
        assert await store.attach_cost(POLICY, "nope", 0.1, now) is FeedbackOutcome.UNKNOWN
        assert await store.attach_cost(POLICY, "late", 0.1, now + 6) is FeedbackOutcome.UNKNOWN
        assert await store.expire_due(POLICY, now + 6, None) == 1
        assert await store.attach_cost(POLICY, "late", 0.1, now + 1) is FeedbackOutcome.UNKNOWN
        with pytest.raises(ValueError):
            await store.attach_cost(POLICY, "late", -1.0, now)
        with pytest.raises(ValueError):
            await store.attach_cost(POLICY, "late", float("nan"), now)

    backend.run(body)


def test_a_parked_quality_is_learned_once_at_the_deadline_with_its_estimate(
    backend: Backend,
) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        a, b = (
            record("a", now, ttl=10, awaits_cost=True),
            record("b", now, ttl=20, awaits_cost=True),
        )
        for rec, q in ((a, 0.9), (b, 0.4)):
            await store.put_decision(rec)
            parked = quality_event(rec, now, q, 0.0007)
            assert await submit(store, parked, now) is FeedbackOutcome.PARKED
        assert await store.due_backlog(POLICY, now + 15) == 1
        # with or without a default reward, the parked quality is what is learned
        assert await store.expire_due(POLICY, now + 15, None) == 1
        assert await store.expire_due(POLICY, now + 25, 0.25) == 1
        got = [
            (e.event_id, e.quality, e.cost_usd, e.cost_estimated, e.source)
            for e in await events(store)
        ]
        assert got == [("a", 0.9, 0.0007, True, "user"), ("b", 0.4, 0.0007, True, "user")]
        # it was answered: late outcomes are duplicates, and nothing is swept twice
        assert await store.was_answered(POLICY, "a")
        assert await store.attach_cost(POLICY, "a", 0.001, now + 5) is FeedbackOutcome.DUPLICATE
        assert await submit(store, quality_event(a, now, 0.1), now + 5) is FeedbackOutcome.DUPLICATE
        assert await store.expire_due(POLICY, now + 30, 0.25) == 0
        assert await store.feedback_total(POLICY) == 2

    backend.run(body)


def test_an_attached_cost_without_quality_gets_the_default_reward_with_that_cost(
    backend: Backend,
) -> None:
    async def body(store: Store) -> None:
        await store.put_model(ModelPrice("mid", 1.0, 2.0, {"expected_output_tokens": 100}))
        now = time.time()
        paid, unpaid = record("paid", now, ttl=1), record("unpaid", now, ttl=2)
        await store.put_decision(paid)
        await store.put_decision(unpaid)
        assert await store.attach_cost(POLICY, "paid", 0.0042, now) is FeedbackOutcome.ACCEPTED
        assert await store.expire_due(POLICY, now + 10, None) == 2  # no default: nothing learned
        assert await events(store) == []

        paid, unpaid = record("paid2", now, ttl=1), record("unpaid2", now, ttl=2)
        await store.put_decision(paid)
        await store.put_decision(unpaid)
        assert await store.attach_cost(POLICY, "paid2", 0.0042, now) is FeedbackOutcome.ACCEPTED
        assert await store.expire_due(POLICY, now + 10, 0.3) == 2
        got = {
            e.event_id: (e.quality, e.cost_usd, e.cost_estimated, e.source)
            for e in await events(store)
        }
        assert got == {
            "paid2": (0.3, 0.0042, False, "default"),
            "unpaid2": (0.3, pytest.approx((40 * 1.0 + 100 * 2.0) / 1e6), True, "default"),
        }

    backend.run(body)


def test_counters_are_the_same_whichever_way_the_outcome_arrives(backend: Backend) -> None:
    """The experiment counters and per-unit sums of one (quality, cost) traffic, fed
    directly, cost first, quality first (parked), and parked until the sweep."""
    rng = random.Random(5)
    traffic = [
        (rng.random(), rng.uniform(0, 0.01), rng.choice([None, "u1", "u2", "u3"]))
        for _ in range(30)
    ]

    async def body(store: Store) -> None:
        now = time.time()
        for i, (q, c, unit) in enumerate(traffic):

            def rec(
                path: str, awaits: bool = False, i: int = i, unit: str | None = unit
            ) -> DecisionRecord:
                # deadlines in traffic order: the sweep appends in deadline order
                ttl = 30 + i / 100
                return record(
                    f"{path}{i}", now, policy=path, awaits_cost=awaits, unit=unit, ttl=ttl
                )

            direct = rec("direct")
            await store.put_decision(direct)
            assert await submit(store, quality_event(direct, now, q, c, estimated=False), now) is (
                FeedbackOutcome.ACCEPTED
            )
            first = rec("first")
            await store.put_decision(first)
            assert await store.attach_cost("first", first.event_id, c, now) is (
                FeedbackOutcome.ACCEPTED
            )
            assert (
                await submit(store, quality_event(first, now, q), now) is FeedbackOutcome.ACCEPTED
            )
            parked = rec("parked", awaits=True)
            await store.put_decision(parked)
            assert await submit(store, quality_event(parked, now, q), now) is FeedbackOutcome.PARKED
            assert await store.attach_cost("parked", parked.event_id, c, now) is (
                FeedbackOutcome.ACCEPTED
            )
            swept = rec("swept", awaits=True)
            await store.put_decision(swept)
            assert (
                await submit(store, quality_event(swept, now, q, c), now) is FeedbackOutcome.PARKED
            )
        assert await store.expire_due("swept", now + 60, None) == len(traffic)
        want = await store.experiment_counts("direct", "exp", "B")
        assert want[0]["n"] == len(traffic) and want[0]["u_units"] > 0
        for path in ("first", "parked", "swept"):
            assert await store.experiment_counts(path, "exp", "B") == want, path
            costs = [e.cost_usd for e in await events(store, path)]
            assert costs == [c for _, c, _ in traffic], path

    backend.run(body)


def test_cost_and_quality_racing_give_one_event_with_the_measured_cost(backend: Backend) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        recs = [record(f"r{i}", now, awaits_cost=True) for i in range(50)]
        await asyncio.gather(*(store.put_decision(r) for r in recs))
        cost = {r.event_id: (i + 1) / 1e4 for i, r in enumerate(recs)}
        quality = {r.event_id: (i % 10) / 10 for i, r in enumerate(recs)}
        calls: list[Awaitable[FeedbackOutcome]] = []
        for r in recs:
            calls.append(store.attach_cost(POLICY, r.event_id, cost[r.event_id], now))
            calls.append(submit(store, quality_event(r, now, quality[r.event_id]), now))
        random.Random(11).shuffle(calls)
        outcomes = await asyncio.gather(*calls)
        assert set(outcomes) <= {FeedbackOutcome.ACCEPTED, FeedbackOutcome.PARKED}
        got = await events(store)
        assert sorted(e.event_id for e in got) == sorted(cost)
        for e in got:
            assert (e.cost_usd, e.quality, e.cost_estimated) == (
                cost[e.event_id],
                quality[e.event_id],
                False,
            )
        assert await store.feedback_total(POLICY) == 50

    backend.run(body)


def test_a_measured_cost_remakes_the_shadow_copies(backend: Backend) -> None:
    """The copies' shadow increments depend on the cost: made with the sender's
    estimate, they must be made again with the cost that wins."""

    async def body(store: Store) -> None:
        now = time.time()
        rec = record("s", now, awaits_cost=True)
        await store.put_decision(rec)
        ev = dataclasses.replace(
            quality_event(rec, now, 0.7, 0.5),
            copies={"sh": shadow_increments(2.0, 0.7, 0.5), "var": None},
        )
        assert await submit(store, ev, now) is FeedbackOutcome.PARKED
        assert await store.attach_cost(POLICY, "s", 0.01, now) is FeedbackOutcome.ACCEPTED
        batch = await store.read_feedback(POLICY, "0-0", 10)
        await store.forward_copies(POLICY, batch)
        want = shadow_increments(2.0, 0.7, 0.01)
        assert batch[0][1].copies == {"sh": want, "var": None}
        assert await store.shadow_counts("sh") == pytest.approx(want)
        (copy,) = await events(store, "sh")
        assert (copy.cost_usd, copy.cost_estimated) == (0.01, False)

    backend.run(body)


# ---- the shared application functions (service.outcomes) ------------------------------


def tiny_runtime(store: Store, tmp_path: Path) -> Runtime:
    """A Runtime with what service.outcomes uses: the store, the served policy names,
    the catalogue and the metrics."""
    return Runtime(
        settings=make_settings(tmp_path),
        store=store,
        batcher=cast(FeatureBatcher, None),
        metrics=Metrics(),
        policies={POLICY: cast(ServingPolicy, None)},
        catalogue={"mid": ModelPrice("mid", 1.0, 2.0, {"expected_output_tokens": 100})},
    )


def test_apply_quality_estimates_a_missing_cost_and_says_so(
    backend: Backend, tmp_path: Path
) -> None:
    async def body(store: Store) -> None:
        rt = tiny_runtime(store, tmp_path)
        now = time.time()
        own = record(f"{POLICY}.own", now, expected_cost=0.0031)
        priced = record(f"{POLICY}.priced", now)
        for rec in (own, priced):
            await store.put_decision(rec)
        assert await apply_quality(rt, own.event_id, 0.8, source="judge", now=now) == Recorded(
            "accepted", 0.8, 0.0031, True
        )
        done = await apply_quality(rt, priced.event_id, 0.5, source="user", now=now)
        assert (done.status, done.quality, done.cost_estimated) == ("accepted", 0.5, True)
        assert done.cost_usd == pytest.approx((40 + 200) / 1e6)  # price x prompt + output
        got = {e.event_id: (e.cost_usd, e.cost_estimated, e.source) for e in await events(store)}
        assert got == {
            own.event_id: (0.0031, True, "judge"),
            priced.event_id: (pytest.approx(240 / 1e6), True, "user"),
        }
        assert (await apply_quality(rt, own.event_id, 0.1, source="user")).status == "duplicate"
        assert (await apply_quality(rt, f"{POLICY}.nope", 0.1, source="user")).status == "unknown"
        assert (await apply_quality(rt, "nopolicy.x", 0.1, source="user")).status == "unknown"
        given = record(f"{POLICY}.given", now)
        await store.put_decision(given)
        assert await apply_quality(
            rt, given.event_id, 1.0, source="user", cost_usd=0.02, now=now
        ) == Recorded("accepted", 1.0, 0.02, False)
        samples = {
            s.labels["outcome"]: s.value
            for m in rt.metrics.registry.collect()
            if m.name == "banditroute_feedback"
            for s in m.samples
            if s.name.endswith("_total")
        }
        assert samples == {"accepted": 3.0, "duplicate": 1.0, "unknown": 1.0}

    backend.run(body)


def test_apply_cost_and_quality_in_either_order(backend: Backend, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        rt = tiny_runtime(store, tmp_path)
        now = time.time()
        first = record(f"{POLICY}.first", now)
        later = record(f"{POLICY}.later", now, awaits_cost=True)
        for rec in (first, later):
            await store.put_decision(rec)
        assert await apply_cost(rt, first.event_id, 0.004, now=now) == Recorded(
            "cost_attached", None, 0.004, False
        )
        assert await apply_quality(rt, first.event_id, 0.9, source="user", cost_usd=1.0) == (
            Recorded("accepted", 0.9, 0.004, False)  # the attached cost wins over the caller's
        )
        assert await apply_quality(rt, later.event_id, 0.3, source="judge", now=now) == Recorded(
            "awaiting_cost", 0.3, None, False
        )
        assert (await apply_quality(rt, later.event_id, 0.3, source="user")).status == "duplicate"
        assert (await apply_cost(rt, later.event_id, 0.006, now=now)).status == "cost_attached"
        assert (await apply_cost(rt, later.event_id, 0.006, now=now)).status == "duplicate"
        assert (await apply_cost(rt, "nopolicy.x", 0.006)).status == "unknown"
        got = {e.event_id: (e.quality, e.cost_usd, e.cost_estimated) for e in await events(store)}
        assert got == {first.event_id: (0.9, 0.004, False), later.event_id: (0.3, 0.006, False)}

    backend.run(body)


# ---- session pins ---------------------------------------------------------------------


def test_a_pin_lasts_its_turns_and_sessions_are_independent(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.pin_session(POLICY, "s1", "e1", "mid", 3, 60)
        await store.pin_session(POLICY, "s2", "e2", "cheap", 2, 60)
        await store.pin_session("beta", "s1", "e3", "strong", 5, 60)
        assert await store.session_turn(POLICY, "s1") == ("e1", "mid", 2)
        assert await store.session_turn(POLICY, "s2") == ("e2", "cheap", 2)
        assert await store.session_turn(POLICY, "s1") == ("e1", "mid", 3)
        assert await store.session_turn(POLICY, "s1") is None  # used up
        assert await store.session_turn(POLICY, "s1") is None
        assert await store.session_turn(POLICY, "s2") is None
        assert await store.session_turn("beta", "s1") == ("e3", "strong", 2)
        assert await store.session_turn(POLICY, "never") is None
        # a new pin replaces the old; a single turn leaves nothing to reuse
        await store.pin_session("beta", "s1", "e4", "mid", 2, 60)
        assert await store.session_turn("beta", "s1") == ("e4", "mid", 2)
        await store.pin_session(POLICY, "one", "e5", "mid", 1, 60)
        assert await store.session_turn(POLICY, "one") is None
        for bad in (("", 2, 60.0), ("s", 0, 60.0), ("s", 2, 0.0), ("s", 2, float("nan"))):
            with pytest.raises(ValueError):
                await store.pin_session(POLICY, bad[0], "e", "m", bad[1], bad[2])

    backend.run(body)


def test_a_pin_expires_its_ttl_after_the_last_turn(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.pin_session(POLICY, "idle", "e1", "mid", 10, 0.3)
        await store.pin_session(POLICY, "busy", "e2", "mid", 10, 0.8)
        await asyncio.sleep(0.5)
        assert await store.session_turn(POLICY, "idle") is None
        assert await store.session_turn(POLICY, "busy") == ("e2", "mid", 2)  # refreshed
        await asyncio.sleep(0.5)  # 1 s after the pin, 0.5 s after its last turn
        assert await store.session_turn(POLICY, "busy") == ("e2", "mid", 3)
        await asyncio.sleep(1.0)
        assert await store.session_turn(POLICY, "busy") is None

    backend.run(body)


def test_a_redis_pin_lives_under_the_policy_hash_tag(redis_backend: Backend) -> None:
    backend = redis_backend

    async def body(store: Store) -> None:
        await store.pin_session(POLICY, "s{x}", "e1", "mid", 3, 60)

    backend.run(body)
    with sync_client(backend.url) as r:
        keys = [k.decode() for k in scan_keys(r, f"{backend.prefix}:*")]
        assert keys == [f"{backend.prefix}:{{{POLICY}}}:s:s{{x}}"]
        assert key_slot(keys[0].encode()) == key_slot(f"{{{POLICY}}}".encode())
        assert 59_000 < r.pttl(keys[0]) <= 60_000


# ---- through the real app ---------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    emb = Embedder()
    emb.load()
    return emb




def _route(c: TestClient, query: str, **extra: Any) -> str:
    r = c.post("/v1/route", json={"query": query, **extra})
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def _logged(c: TestClient, event_id: str) -> FeedbackEvent:
    rt = c.app.state.runtime  # type: ignore[attr-defined]
    log = c.portal.call(rt.store.read_log, "default", "0-0", 1000)  # type: ignore[union-attr]
    (ev,) = [e for _, e in log if e.event_id == event_id]
    return cast(FeedbackEvent, ev)


@pytest.mark.slow
def test_http_cost_alone_then_quality_alone(client: TestClient) -> None:
    eid = _route(client, "How many moons has Mars?")
    r = client.post("/v1/feedback", json={"event_id": eid, "cost_usd": 0.0042})
    assert r.status_code == 202, r.text
    assert r.json() == {
        "event_id": eid,
        "status": "cost_attached",
        "quality": None,
        "cost_usd": 0.0042,
        "cost_estimated": False,
    }
    r = client.post("/v1/feedback", json={"event_id": eid, "cost_usd": 0.001})
    assert r.status_code == 409 and "already attached" in r.json()["detail"], r.text
    r = client.post("/v1/feedback", json={"event_id": eid, "thumbs": "up"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["status"], body["quality"], body["cost_usd"], body["cost_estimated"]) == (
        "accepted",
        1.0,
        0.0042,
        False,
    )
    ev = _logged(client, eid)
    assert (ev.quality, ev.cost_usd, ev.cost_estimated) == (1.0, 0.0042, False)
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.2})
    assert r.status_code == 409 and "already recorded" in r.json()["detail"], r.text


@pytest.mark.slow
def test_http_quality_alone_learns_an_estimated_cost(client: TestClient) -> None:
    eid = _route(client, "Name a prime above 100.")
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.7})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["cost_estimated"] is True
    assert body["cost_usd"] > 0  # the policy's estimate or the catalogue price, never free
    ev = _logged(client, eid)
    assert (ev.quality, ev.cost_usd, ev.cost_estimated) == (0.7, body["cost_usd"], True)
    # the tokens alone are priced at the decision's model and attached
    other = _route(client, "Spell 'necessary'.")
    r = client.post(
        "/v1/feedback", json={"event_id": other, "prompt_tokens": 1000, "completion_tokens": 500}
    )
    assert r.status_code == 202 and r.json()["status"] == "cost_attached", r.text
    assert r.json()["cost_usd"] > 0


@pytest.mark.slow
def test_http_feedback_needs_a_quality_or_a_cost(client: TestClient) -> None:
    eid = _route(client, "What is 2 + 2?")
    for body, needles in (
        ({"event_id": eid}, ("quality", "cost_usd")),
        ({"event_id": eid, "quality": 0.5, "prompt_tokens": 3}, ("cost_usd", "completion_tokens")),
        ({"event_id": eid, "quality": 0.5, "thumbs": "up"}, ("at most one",)),
    ):
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 422, (body, r.text)
        assert all(n in r.json()["detail"] for n in needles), (needles, r.text)
    r = client.post("/v1/feedback", json={"event_id": "default.nope", "cost_usd": 0.1})
    assert r.status_code == 404, r.text
    # refused requests took nothing: the first valid feedback counts
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.5, "cost_usd": 0})
    assert r.status_code == 202 and r.json()["status"] == "accepted", r.text


@pytest.mark.slow
@pytest.mark.skipif(
    "cost_later" not in RouteRequest.model_fields, reason="/v1/route has no cost_later yet"
)
def test_http_a_quality_waits_for_a_cost_announced_at_route_time(client: TestClient) -> None:
    eid = _route(client, "Translate 'dog' to German.", cost_later=True)
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.9})
    assert r.status_code == 202 and r.json()["status"] == "awaiting_cost", r.text
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.9})
    assert r.status_code == 409, r.text
    r = client.post("/v1/feedback", json={"event_id": eid, "cost_usd": 0.003})
    assert r.status_code == 202 and r.json()["status"] == "cost_attached", r.text
    ev = _logged(client, eid)
    assert (ev.quality, ev.cost_usd, ev.cost_estimated) == (0.9, 0.003, False)
