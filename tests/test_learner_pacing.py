"""The pacer in the learner (real stores): it observes the costs of the policy's own
feedback, sets the policy's λ, publishes its state with the snapshot, and a successor
learner resumes it; a tenant's pacer counts only that tenant's calls."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from policies import Policy, load_policy, make_policy
from service.budgets.config import PacerConfig
from service.learner import Learner
from service.store import DecisionRecord, FeedbackEvent, Snapshot, Store

POLICY = "paced"
MODELS = ["cheap", "strong"]
DIM = 4
TARGET = PacerConfig(usd_per_1k=1.0, step=0.05, scale="linear")  # $0.001 a call


def fresh() -> Policy:
    return make_policy("linucb", MODELS, DIM, seed=0, cost_weight=0.2)


async def feed(store: Store, costs: list[float], tenant: str | None = None, start: int = 0) -> None:
    now = time.time()
    for i, cost in enumerate(costs, start):
        rec = DecisionRecord(
            event_id=f"{POLICY}.{i}",
            policy=POLICY,
            model=MODELS[i % 2],
            propensity=0.5,
            policy_version=0,
            context=np.ones(DIM),
            candidates=MODELS,
            cost_weight=0.2,
            created_at=now + i,
            deadline=now + 600,
            tenant=tenant,
        )
        await store.put_decision(rec)
        ev = FeedbackEvent.join(rec, quality=0.5, cost_usd=cost, source="user", now=now)
        assert (await store.submit_feedback(POLICY, rec.event_id, ev, now)).value == "accepted"


def _learner(store: Store, specs: dict[str, tuple[PacerConfig, float]]) -> Learner:
    return Learner(
        store, POLICY, fresh, every_n=10, every_ms=50, lease_ttl_ms=600, pacers=lambda: specs
    )


async def _until_applied(store: Store, n: int) -> None:
    for _ in range(400):
        snap = await store.snapshot_info(POLICY)
        if snap is not None and snap.applied >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the learner never applied {n} events")


async def _learn_until(
    store: Store, specs: dict[str, tuple[PacerConfig, float]], n: int
) -> Snapshot:
    """Run a learner with `specs` until `n` events are applied, stop it gracefully, and
    return what it published."""
    learner = _learner(store, specs)
    stop = asyncio.Event()
    task = asyncio.create_task(learner.run(stop))
    await _until_applied(store, n)
    stop.set()
    await task
    snap = await store.load_snapshot(POLICY)
    assert snap is not None
    return snap


def test_pacer_sets_lambda_publishes_and_resumes(store_factory: type) -> None:
    async def main() -> None:
        store = store_factory()
        # overspend: every call costs twice the target, so λ climbs by step a call
        await feed(store, [0.002] * 40)
        snap = await _learn_until(store, {"": (TARGET, 0.2)}, 40)
        state = json.loads(snap.pacers)[""]
        assert state["n"] == 40
        assert state["lam"] == pytest.approx(0.2 + 40 * 0.05)
        # the policy's own λ is the pacer's, in the published state itself
        assert load_policy(snap.state).cost_weight == pytest.approx(state["lam"])
        # a successor resumes the pacer: underspending (cost 0) walks λ back down
        await feed(store, [0.0] * 20, start=40)
        snap = await _learn_until(store, {"": (TARGET, 0.2)}, 60)
        state = json.loads(snap.pacers)[""]
        assert state["n"] == 60
        assert state["lam"] == pytest.approx(0.2 + 40 * 0.05 - 20 * 0.05)
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_tenant_pacer_counts_only_its_tenant(store_factory: type) -> None:
    async def main() -> None:
        store = store_factory()
        await feed(store, [0.002] * 10, tenant="acme")
        await feed(store, [0.002] * 30, tenant=None, start=10)
        snap = await _learn_until(store, {"acme": (TARGET, 1.0)}, 40)
        states = json.loads(snap.pacers)
        assert set(states) == {"acme"}
        assert states["acme"]["n"] == 10
        assert states["acme"]["lam"] == pytest.approx(1.0 + 10 * 0.05)
        # no pacer of its own: the policy keeps its configured λ
        assert load_policy(snap.state).cost_weight == pytest.approx(0.2)
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_unreadable_pacer_state_is_paced_afresh(store_factory: type) -> None:
    """A snapshot whose pacer field is damaged (a bad import) must not stop learning."""

    async def main() -> None:
        store = store_factory()
        bad = Snapshot(
            state=fresh().to_bytes(), version=1, last_id="0-0", applied=0, pacers="{not json"
        )
        assert await store.publish_snapshot(POLICY, bad, None)
        await feed(store, [0.002] * 10)
        snap = await _learn_until(store, {"": (TARGET, 0.2)}, 10)
        assert json.loads(snap.pacers)[""]["n"] == 10
        await store.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))
