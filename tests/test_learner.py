"""The single-writer learner on real stores (the shared Redis under a unique key prefix,
and the in-process store): every accepted feedback is applied exactly once, across a
learner that dies without a goodbye and a successor that takes its lease over."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from policies import Policy, load_policy, make_policy
from service.learner import Learner
from service.store import DecisionRecord, FeedbackEvent, MemoryStore, RedisStore, Store
from tests.service_helpers import REDIS_URL

POLICY = "pol"
MODELS = ["cheap", "strong"]
DIM = 6


def fresh() -> Policy:
    return make_policy("linucb", MODELS, DIM, seed=0)


async def feed(store: Store, n: int, start: int = 0) -> None:
    """n accepted feedbacks; "strong" gets quality 1, "cheap" 0."""
    rng = np.random.default_rng(start)
    now = time.time()
    for i in range(start, start + n):
        model = MODELS[i % 2]
        rec = DecisionRecord(
            event_id=f"{POLICY}.{i}",
            policy=POLICY,
            model=model,
            propensity=0.5,
            policy_version=0,
            context=rng.standard_normal(DIM),
            candidates=MODELS,
            cost_weight=0.0,
            created_at=now,
            deadline=now + 600,
        )
        await store.put_decision(rec)
        ev = FeedbackEvent.join(
            rec, quality=float(model == "strong"), cost_usd=0.0, source="user", now=now
        )
        assert (await store.submit_feedback(POLICY, rec.event_id, ev, now)).value == "accepted"


def record(event_id: str, model: str, now: float, deadline: float) -> DecisionRecord:
    """A decision of POLICY with a constant context, as the sweep and copy tests need."""
    return DecisionRecord(
        event_id=event_id,
        policy=POLICY,
        model=model,
        propensity=0.5,
        policy_version=0,
        context=np.ones(DIM),
        candidates=[*dict.fromkeys([*MODELS, model])],
        cost_weight=0.0,
        created_at=now,
        deadline=deadline,
    )


async def wait_applied(store: Store, n: int, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = await store.load_snapshot(POLICY)
        if snap is not None and snap.applied >= n:
            return snap.applied
        await asyncio.sleep(0.02)
    snap = await store.load_snapshot(POLICY)
    return 0 if snap is None else snap.applied


def learner(store: Store, owner: str) -> Learner:
    return Learner(store, POLICY, fresh, every_n=25, every_ms=50, lease_ttl_ms=300, owner=owner)


def test_killed_learner_is_resumed_exactly_once(store_factory: type) -> None:
    async def main() -> None:
        store = store_factory()
        a = learner(store, "a")
        task = asyncio.create_task(a.run(asyncio.Event()))
        await feed(store, 150)
        assert await wait_applied(store, 150) == 150
        # more arrives and the learner dies at once, whatever it had read: no final
        # publish, no lease release (as with SIGKILL)
        await feed(store, 150, start=150)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await feed(store, 200, start=300)
        b = learner(store, "b")
        stop_b = asyncio.Event()
        task_b = asyncio.create_task(b.run(stop_b))
        applied = await wait_applied(store, 500)
        await asyncio.sleep(0.3)  # nothing more may arrive: none applied twice
        stop_b.set()
        await task_b
        snap = await store.load_snapshot(POLICY)
        assert snap is not None
        assert applied == 500 and snap.applied == 500
        policy = load_policy(snap.state)
        stats = policy.stats()
        assert stats["strong"].pulls + stats["cheap"].pulls == 500
        assert stats["strong"].quality_sum == 250
        assert (await store.feedback_total(POLICY)) == 500
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_lease_goes_to_one_learner_and_is_taken_over(store_factory: type) -> None:
    async def main() -> None:
        store = store_factory()
        await feed(store, 100)
        a, b = learner(store, "a"), learner(store, "b")
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a))
        await asyncio.sleep(0.1)
        task_b = asyncio.create_task(b.run(stop_b))
        assert await wait_applied(store, 100) == 100
        await asyncio.sleep(0.2)
        assert a.stats.holds_lease and not b.stats.holds_lease
        # the holder dies without releasing: the other takes over after the TTL
        task_a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_a
        await feed(store, 50, start=100)
        assert await wait_applied(store, 150) == 150
        assert b.stats.holds_lease
        stop_b.set()
        await task_b
        assert (await store.load_snapshot(POLICY)).applied == 150  # type: ignore[union-attr]
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_stale_learner_cannot_publish(store_factory: type) -> None:
    """A learner paused past its lease (GC, partition) must not overwrite the state of
    the learner that took over: publishing is fenced by the lease."""

    async def main() -> None:
        store = store_factory()
        await feed(store, 40)
        a = learner(store, "a")
        await a.step()
        assert a.stats.holds_lease
        await asyncio.sleep(0.4)  # a's lease lapses while it is "paused"
        b = learner(store, "b")
        await b.step()
        assert b.stats.holds_lease
        await b._publish()
        version_b = await store.snapshot_version(POLICY)
        a._dirty = 1
        await a._publish()  # refused: a no longer holds the lease
        assert not a.stats.holds_lease
        assert await store.snapshot_version(POLICY) == version_b
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_learner_whose_lease_lapsed_reloads_before_publishing(store_factory: type) -> None:
    """A stalls past its lease, B takes over, publishes and leaves; when A takes the
    free lease again it must start from B's snapshot, not from its own stale state."""

    async def main() -> None:
        store = store_factory()
        await feed(store, 30)
        a = learner(store, "a")
        await a.step()
        await a.step()
        await a._publish()
        await asyncio.sleep(0.4)  # a stalls; its lease lapses
        b = learner(store, "b")
        await feed(store, 20, start=30)
        await b.step()
        await b.step()
        await b._publish()
        await store.release_lease(POLICY, "b")
        assert (await store.load_snapshot(POLICY)).applied == 50  # type: ignore[union-attr]
        await feed(store, 10, start=50)
        await a.step()  # takes the free lease: must reload B's state first
        await a._publish()
        snap = await store.load_snapshot(POLICY)
        assert snap is not None and snap.applied == 60
        assert sum(s.pulls for s in load_policy(snap.state).stats().values()) == 60
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_graceful_stop_applies_everything_accepted(store_factory: type) -> None:
    async def main() -> None:
        store = store_factory()
        a = learner(store, "a")
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        await feed(store, 10)
        assert await wait_applied(store, 10) == 10
        await feed(store, 40, start=10)
        stop.set()  # at once: the 40 may not have been read yet
        await task
        snap = await store.load_snapshot(POLICY)
        assert snap is not None and snap.applied == 50
        assert await store.feedback_pending(POLICY) == 0
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


# ---- issue 11 -----------------------------------------------------------------
def test_the_sweep_drains_its_whole_backlog_each_round(store_factory: type) -> None:
    """More decisions expire in a second than one sweep batch: a round closes all of
    them (with their default reward), so the backlog cannot grow without bound."""

    async def main() -> None:
        store = store_factory()
        now = time.time()
        n = 2500
        for i in range(n):
            rec = record(f"{POLICY}.x{i}", MODELS[i % 2], now, now + 0.05)
            await store.put_decision(rec)
        await asyncio.sleep(0.1)
        assert await store.due_backlog(POLICY, time.time()) == n
        lr = Learner(store, POLICY, fresh, every_n=10_000, default_reward=0.5, owner="a")
        await lr.step()
        assert lr.stats.closed == n and lr.stats.backlog == 0
        assert await store.due_backlog(POLICY, time.time()) == 0
        assert await store.feedback_total(POLICY) == n
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


async def _vanish(store: Store, event_id: str) -> None:
    """The decision's record is gone (its key expired) while it is still due."""
    if isinstance(store, RedisStore):
        await store._redis().delete(store._k(POLICY).decision(event_id))
    else:
        assert isinstance(store, MemoryStore)
        del store._policy(POLICY).decisions[event_id]


def test_the_sweep_goes_on_past_records_that_vanished(store_factory: type) -> None:
    """A learner away for long finds due decisions whose records already expired: they
    are dropped without counting as closed, and must not end the round early."""

    async def main() -> None:
        store = store_factory()
        now = time.time()
        n, gone = 2500, 1500
        for i in range(n):
            rec = record(
                f"{POLICY}.v{i}", MODELS[i % 2], now, now + 0.05 + (0.0 if i < gone else 0.01)
            )
            await store.put_decision(rec)
        for i in range(gone):
            await _vanish(store, f"{POLICY}.v{i}")
        await asyncio.sleep(0.15)
        lr = Learner(store, POLICY, fresh, every_n=10_000, default_reward=0.5, owner="a")
        await lr.step()
        assert lr.stats.closed == n - gone
        assert lr.stats.backlog == 0
        assert await store.due_backlog(POLICY, time.time()) == 0
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_copies_survive_a_learner_killed_before_it_forwarded_them(store_factory: type) -> None:
    """The served policy's feedback names its shadow; the learner dies after reading
    it but before forwarding: its successor forwards every copy, once."""

    async def main() -> None:
        store = store_factory()
        now = time.time()
        for i in range(30):
            rec = record(f"{POLICY}.c{i}", MODELS[i % 2], now, now + 600)
            await store.put_decision(rec)
            ev = FeedbackEvent.join(rec, quality=1.0, cost_usd=0.0, source="user", now=now)
            ev = dataclasses.replace(ev, copies={"shadowpol": {"n": 1.0}})
            assert (await store.submit_feedback(POLICY, rec.event_id, ev, now)).value == "accepted"
        a = learner(store, "a")
        await a.step()  # reads, forwards and applies; then "dies" without publishing
        await asyncio.sleep(0.4)  # its lease lapses
        b = learner(store, "b")
        await b.step()
        await b._publish()
        copies = await store.read_feedback("shadowpol", "0-0", 1000)
        assert sorted(e.event_id for _, e in copies) == sorted(f"{POLICY}.c{i}" for i in range(30))
        assert await store.shadow_counts("shadowpol") == {"n": 30.0}
        shadow = Learner(store, "shadowpol", fresh, every_n=1, owner="s")
        await shadow.step()
        await shadow._publish()
        snap = await store.load_snapshot("shadowpol")
        assert snap is not None and snap.applied == 30
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_the_standalone_learner_opens_the_store_as_the_service_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`banditroute learner` writes default rewards to the decision log: it must trim
    it at the configured decision_log_max (not the store's default), with the grace."""
    import signal

    import service.store
    from service.cli import _run_learners
    from service.settings import Settings

    seen: dict[str, object] = {}

    async def fake_open_store(*args: object, **kwargs: object) -> Store:
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(service.store, "open_store", fake_open_store)
    settings = Settings(
        redis_url=REDIS_URL,
        decision_log_max=250_000,
        decision_grace_s=60,
        models=[{"name": "a", "input_per_m": 1, "output_per_m": 1}],
    )
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(_run_learners(settings, signal))
    assert seen["log_max"] == 250_000 and seen["grace_s"] == 60


def test_feedback_for_a_model_registered_since_the_last_catalogue_read_is_learned(
    store_factory: type,
) -> None:
    """A worker serves a newly registered model at once; the learner, whose catalogue
    is a second old, learns its feedback instead of skipping it. An event for a model
    the catalogue does not hold is still skipped."""
    from service.store.base import ModelPrice

    async def main() -> None:
        store = store_factory()
        for m in (*MODELS, "newcomer"):
            await store.put_model(ModelPrice(m, 1.0, 1.0))
        stale = {m: ModelPrice(m, 1.0, 1.0) for m in MODELS}  # the learner's last read
        now = time.time()
        for i, model in enumerate(("newcomer", "ghost")):
            rec = record(f"{POLICY}.n{i}", model, now, now + 600)
            await store.put_decision(rec)
            ev = FeedbackEvent.join(rec, quality=1.0, cost_usd=0.0, source="user", now=now)
            await store.submit_feedback(POLICY, rec.event_id, ev, now)
        lr = Learner(store, POLICY, fresh, every_n=1, owner="a", models=lambda: stale)
        await lr.step()
        assert lr.stats.applied == 1 and lr.stats.rejected == 1
        snap = await store.load_snapshot(POLICY)
        assert snap is not None
        learned = load_policy(snap.state)
        assert learned.stats()["newcomer"].pulls == 1
        # the next rounds, still on the stale catalogue, do not drop what it learned
        await lr.step()
        assert lr._policy is not None and "newcomer" in lr._policy.models
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))
