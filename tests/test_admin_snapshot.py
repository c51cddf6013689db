"""`banditroute admin`: snapshot export -> import into a fresh store reproduces
identical decisions for the same seeded queries (issue 14's test that must hold);
the import goes through the lease like a learner's publish; `admin replay` rebuilds
a policy from its decision log."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from typer.testing import CliRunner

from policies import Policy, load_policy
from service.learner import Learner
from service.serving import build_policy
from service.settings import load_settings
from service.store import DecisionRecord, FeedbackEvent, MemoryStore, RedisStore, Snapshot, Store
from simulator.cli import app
from tests.service_helpers import REDIS_URL, drop_prefix

runner = CliRunner()
T = TypeVar("T")
MODELS = ["small", "large"]
PROJECTION = 6
DIM = PROJECTION + 2  # the featurizer's bias and log-length


def config(tmp_path: Path, prefix: str | None, kind: str = "thompson") -> Path:
    """A config file for the CLI: Redis under `prefix`, or (None) the in-process
    store's state directory."""
    where = f'redis_url = "{REDIS_URL}"\nkey_prefix = "{prefix}"\n' if prefix else ""
    path = tmp_path / f"{prefix or 'memory'}.toml"
    path.write_text(
        where
        + f'state_dir = "{tmp_path / "state"}"\n'
        + f"projection_dim = {PROJECTION}\nlease_ttl_ms = 500\n"
        + "".join(
            f'[[models]]\nname = "{m}"\ninput_per_m = {p}\noutput_per_m = {p}\n'
            for m, p in zip(MODELS, (0.1, 2.0), strict=True)
        )
        + f'[policies.default]\nkind = "{kind}"\n'
    )
    return path


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for p in made:
        drop_prefix(p)


def new_prefix(prefixes: list[str]) -> str:
    prefixes.append(f"brtest-admin-{uuid.uuid4().hex[:8]}")
    return prefixes[-1]


def fresh(path: Path) -> Policy:
    settings = load_settings(path)
    catalogue = {m.name: m.price() for m in settings.models}
    return build_policy("default", settings.policies["default"], catalogue, DIM)


async def feed(store: Store, n: int, seed: int = 0) -> None:
    """n accepted feedbacks of policy "default": "large" is better on feature 0 > 0."""
    rng = np.random.default_rng(seed)
    now = time.time()
    for i in range(n):
        x = rng.standard_normal(DIM)
        model = MODELS[i % 2]
        rec = DecisionRecord(
            event_id=f"default.{seed}.{i}",
            policy="default",
            model=model,
            propensity=0.5,
            policy_version=0,
            context=x,
            candidates=MODELS,
            cost_weight=0.0,
            created_at=now,
            deadline=now + 600,
        )
        await store.put_decision(rec)
        quality = float((x[0] > 0) == (model == "large"))
        ev = FeedbackEvent.join(rec, quality=quality, cost_usd=0.001, source="user", now=now)
        assert (await store.submit_feedback("default", rec.event_id, ev, now)).value == "accepted"


async def learn(store: Store, make: Policy, n: int) -> Snapshot:
    """Feed n events and let a learner publish them all; its snapshot."""
    lr = Learner(store, "default", lambda: make, every_n=50, every_ms=50, lease_ttl_ms=500)
    stop = asyncio.Event()
    task = asyncio.create_task(lr.run(stop))
    await feed(store, n)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        snap = await store.snapshot_info("default")
        if snap is not None and snap.applied >= n:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task
    snap = await store.load_snapshot("default")
    assert snap is not None and snap.applied == n
    return snap


def decisions(state: bytes, seed: int = 7) -> list[tuple[str, float, dict[str, float]]]:
    """What the policy in `state` decides for 200 seeded queries (its RNG as stored)."""
    policy = load_policy(state)
    xs = np.random.default_rng(seed).standard_normal((200, DIM))
    out = []
    for x in xs:
        d = policy.choose(x)
        out.append((d.model, d.propensity, dict(d.scores or {})))
    return out


def on(prefix: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """`work` on a store of its own under `prefix`, in an event loop of its own (the
    CLI runs its own loops between these)."""

    async def main() -> T:
        store = RedisStore(REDIS_URL, prefix=prefix)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def cli(*args: str) -> str:
    res = runner.invoke(app, ["admin", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_export_import_into_fresh_stores_decides_identically(
    tmp_path: Path, prefixes: list[str]
) -> None:
    src_prefix, dst_prefix = new_prefix(prefixes), new_prefix(prefixes)
    src_cfg = config(tmp_path, src_prefix)
    snap = on(src_prefix, lambda st: learn(st, fresh(src_cfg), 300))
    expected = decisions(snap.state)
    assert len({m for m, _, _ in expected}) == 2  # a learned policy, not a constant

    out = tmp_path / "default.snap"
    assert "300 events applied" in cli(
        "snapshot-export", "--policy", "default", "--out", str(out), "--config", str(src_cfg)
    )
    # into a fresh Redis deployment, and into a fresh in-process store (state on disk)
    for cfg in (config(tmp_path, dst_prefix), config(tmp_path, None)):
        assert "published v1" in cli(
            "snapshot-import", "--policy", "default", "--in", str(out), "--config", str(cfg)
        )

    async def imported() -> list[Snapshot | None]:
        dst = RedisStore(REDIS_URL, prefix=dst_prefix)
        try:
            return [
                await dst.load_snapshot("default"),
                # a new process on that state directory
                await MemoryStore(tmp_path / "state").load_snapshot("default"),
            ]
        finally:
            await dst.close()

    for got in asyncio.run(imported()):
        assert got is not None
        assert got.state == snap.state and got.version == 1
        assert (got.last_id, got.applied, got.features) == (snap.last_id, 300, snap.features)
        assert decisions(got.state) == expected


def test_import_waits_for_the_lease_and_refuses_damage(tmp_path: Path, prefixes: list[str]) -> None:
    prefix = new_prefix(prefixes)
    cfg = config(tmp_path, prefix)
    snap = on(prefix, lambda st: learn(st, fresh(cfg), 20))
    out = tmp_path / "s.snap"
    cli("snapshot-export", "-p", "default", "-o", str(out), "-c", str(cfg))
    on(prefix, lambda st: st.acquire_lease("default", "some-learner", 60_000))
    res = runner.invoke(
        app, ["admin", "snapshot-import", "-p", "default", "-i", str(out), "-c", str(cfg)]
    )
    assert res.exit_code == 1 and "holds its lease" in res.output
    assert on(prefix, lambda st: st.snapshot_version("default")) == snap.version  # unchanged

    damaged = tmp_path / "bad.snap"
    data = out.read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    res = runner.invoke(
        app, ["admin", "snapshot-import", "-p", "other", "-i", str(damaged), "-c", str(cfg)]
    )
    assert res.exit_code == 1 and "damaged" in res.output
    res = runner.invoke(
        app, ["admin", "snapshot-export", "-p", "nope", "-o", str(damaged), "-c", str(cfg)]
    )
    assert res.exit_code == 1 and "no published snapshot" in res.output


def test_replay_rebuilds_the_policy_from_its_decision_log(
    tmp_path: Path, prefixes: list[str]
) -> None:
    prefix = new_prefix(prefixes)
    cfg = config(tmp_path, prefix, kind="linucb")
    first = on(prefix, lambda st: learn(st, fresh(cfg), 200))
    # more feedback that no snapshot holds yet: the rebuilt state has it, and its
    # stream position says so
    on(prefix, lambda st: feed(st, 30, seed=1))
    out = tmp_path / "replayed.snap"
    text = cli("replay", "-p", "default", "--out", str(out), "--publish", "-c", str(cfg))
    assert "230 events replayed, 0 skipped" in text

    async def after(store: Store) -> tuple[Snapshot | None, list[tuple[str, FeedbackEvent]]]:
        snap = await store.load_snapshot("default")
        assert snap is not None
        return snap, await store.read_feedback("default", snap.last_id, 100)

    snap, pending = on(prefix, after)
    assert snap is not None
    assert (snap.version, snap.applied) == (first.version + 1, 230)
    assert pending == []  # a learner starting from it applies nothing twice
    assert out.read_bytes().endswith(snap.state)
    # what the learner itself makes of the same 230 events: the same policy (up to
    # rounding: the learner's state went through a snapshot at 200 and back)
    learned = on(new_prefix(prefixes), lambda st: _learn_all(st, fresh(cfg)))
    assert learned.applied == 230
    ours, theirs = decisions(snap.state), decisions(learned.state)
    assert [m for m, _, _ in ours] == [m for m, _, _ in theirs]
    for (_, p1, s1), (_, p2, s2) in zip(ours, theirs, strict=True):
        assert p1 == pytest.approx(p2) and s1 == pytest.approx(s2)


async def _learn_all(store: Store, make: Policy) -> Snapshot:
    """The 230 events of the replay test, learned by a learner on a store of its own."""
    await feed(store, 200)
    await feed(store, 30, seed=1)
    lr = Learner(store, "default", lambda: make, every_n=50, every_ms=50, lease_ttl_ms=500)
    stop = asyncio.Event()
    task = asyncio.create_task(lr.run(stop))
    end = time.monotonic() + 20
    while time.monotonic() < end and lr.stats.applied < 230:
        await asyncio.sleep(0.02)
    stop.set()
    await task
    snap = await store.load_snapshot("default")
    assert snap is not None
    return snap
