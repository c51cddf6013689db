"""The hard-cap ledger's contract, run against MemoryLedger and RedisLedger, then the
Redis ledger raced and killed by real processes.

Synchronous tests running their coroutines with `asyncio.run`, like test_store.py.
Times are `now` arguments (a fixed epoch far from today) wherever the API takes them;
the Redis ledger uses the shared server under a key prefix unique to each test,
deleted afterwards. The worker processes are forked, each with its own connection.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import multiprocessing.synchronize
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from redis.crc import key_slot

from service.budgets.config import CapConfig
from service.budgets.ledger import EPS_USD, BudgetState, Ledger
from service.store import MemoryStore, RedisStore, Store, StoreUnavailable
from tests.service_helpers import drop_prefix, require_redis, scan_keys, sync_client

SHARED_URL = "redis://127.0.0.1:6379/0"
RUN_ID = uuid.uuid4().hex[:8]
HOUR = 3600.0
T0 = 400_000 * HOUR + 10.0  # 10 s into an hour window, in 2015
CAP = CapConfig(usd=1.0, window="hour", reservation_ttl_s=60.0)

Body = Callable[[Ledger], Awaitable[None]]


class Backend:
    """A fresh store of one kind per run (inside that run's event loop)."""

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
                assert store.ledger() is store.ledger()
                await body(store.ledger())
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
    b = Backend(kind, tmp_path, SHARED_URL if kind == "memory" else require_redis(kind))
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


# ---- the contract ------------------------------------------------------------------
def test_reserve_within_the_cap_and_refuse_over_it_changing_nothing(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        r = await led.reserve("acme", "e1", 0.7, CAP, T0)
        assert r.ok and r.spent == 0 and r.reserved == pytest.approx(0.7)
        assert r.remaining == pytest.approx(0.3) and r.retry_after_s == 0
        assert (r.cap, r.window_start, r.window_end) == (1.0, T0 - 10, T0 - 10 + HOUR)
        before = await led.state("acme", CAP, T0)
        refused = await led.reserve("acme", "e2", 0.31, CAP, T0 + 1)
        assert not refused.ok and refused.reserved == pytest.approx(0.7)
        assert await led.state("acme", CAP, T0 + 1) == before
        assert before.open_reservations == 1 and before.remaining == pytest.approx(0.3)
        # exactly the rest fits
        assert (await led.reserve("acme", "e3", 0.3, CAP, T0 + 2)).ok

    backend.run(body)


def test_settle_moves_the_reservation_into_spent_exactly_once(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        await led.reserve("acme", "e1", 0.5, CAP, T0)
        assert await led.settle("acme", "e1", 0.2, CAP, T0 + 5)
        s = await led.state("acme", CAP, T0 + 5)
        assert (s.spent, s.reserved, s.open_reservations) == (pytest.approx(0.2), 0, 0)
        assert not await led.settle("acme", "e1", 0.2, CAP, T0 + 6)
        assert not await led.release("acme", "e1")
        # a settled event id holds nothing more when reserved again
        assert (await led.reserve("acme", "e1", 0.9, CAP, T0 + 7)).ok
        assert await led.state("acme", CAP, T0 + 7) == s

    backend.run(body)


def test_settle_after_the_reservation_expired_still_charges(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        await led.reserve("acme", "late", 0.5, CAP, T0)
        await led.reserve("acme", "later", 0.1, CAP, T0)
        assert (await led.state("acme", CAP, T0 + 61)).reserved == 0  # both purged
        assert await led.settle("acme", "late", 0.4, CAP, T0 + 62)
        # its hold gone, it is charged to the current window all the same
        assert await led.settle("acme", "unreserved", 0.25, CAP, T0 + 63)
        s = await led.state("acme", CAP, T0 + 63)
        assert s.spent == pytest.approx(0.65) and s.open_reservations == 0

    backend.run(body)


def test_release_frees_the_reservation_without_charging(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        await led.reserve("acme", "e1", 0.9, CAP, T0)
        assert not (await led.reserve("acme", "e2", 0.2, CAP, T0)).ok
        assert await led.release("acme", "e1")
        assert not await led.release("acme", "e1")
        assert not await led.release("nobody", "e1")
        s = await led.state("acme", CAP, T0)
        assert (s.spent, s.reserved, s.open_reservations, s.remaining) == (0, 0, 0, 1.0)
        assert (await led.reserve("acme", "e2", 0.2, CAP, T0)).ok

    backend.run(body)


def test_expired_reservations_stop_holding_the_cap(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        assert (await led.reserve("acme", "a", 0.6, CAP, T0)).ok
        assert (await led.reserve("acme", "b", 0.4, CAP, T0 + 30)).ok
        assert not (await led.reserve("acme", "c", 0.5, CAP, T0 + 59.9)).ok
        # "a" expired at T0 + 60, "b" still holds until T0 + 90
        r = await led.reserve("acme", "c", 0.5, CAP, T0 + 60)
        assert r.ok and r.reserved == pytest.approx(0.9)
        assert (await led.state("acme", CAP, T0 + 60)).open_reservations == 2
        s = await led.state("acme", CAP, T0 + 200)
        assert (s.reserved, s.open_reservations, s.remaining) == (0, 0, 1.0)

    backend.run(body)


def test_a_new_window_starts_at_zero_and_a_late_settle_charges_its_own(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        end = T0 - 10 + HOUR
        await led.reserve("acme", "a", 0.3, CAP, T0)
        await led.settle("acme", "a", 0.3, CAP, T0)
        await led.reserve("acme", "b", 0.6, CAP, end - 1)  # settles after the hour
        nxt = await led.state("acme", CAP, end)
        assert (nxt.spent, nxt.reserved, nxt.window_start) == (0, 0, end)
        # the new hour has all of its cap: "b" belongs to the old one
        assert (await led.reserve("acme", "c", 1.0, CAP, end + 1)).ok
        assert await led.settle("acme", "b", 0.5, CAP, end + 2)
        old = await led.state("acme", CAP, end - 0.5)
        assert old.spent == pytest.approx(0.8) and old.reserved == 0
        assert (await led.state("acme", CAP, end + 2)).spent == 0

    backend.run(body)


def test_retry_after_is_the_expiry_that_makes_room_else_the_window_end(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        end = T0 - 10 + HOUR
        await led.reserve("acme", "a", 0.2, CAP, T0)  # expires T0 + 60
        await led.reserve("acme", "b", 0.5, CAP, T0 + 20)  # expires T0 + 80
        await led.reserve("acme", "c", 0.2, CAP, T0 + 30)  # expires T0 + 90
        # 0.3 needs 0.2 more room: "a" alone frees it
        assert (await led.reserve("acme", "x", 0.3, CAP, T0 + 40)).retry_after_s == 20
        # 0.6 needs 0.5: "a" and "b"
        assert (await led.reserve("acme", "x", 0.6, CAP, T0 + 40)).retry_after_s == 40
        # the room comes within a second: still at least 1
        assert (await led.reserve("acme", "x", 0.3, CAP, T0 + 59.5)).retry_after_s == 1
        await led.settle("acme", "a", 0.4, CAP, T0 + 59.5)
        # spent alone leaves too little: only the next window helps
        wait = (await led.reserve("acme", "x", 0.7, CAP, T0 + 100)).retry_after_s
        assert wait == pytest.approx(end - T0 - 100)
        # an amount over the whole cap waits for the window too (and then still fails)
        assert (await led.reserve("acme", "x", 5.0, CAP, T0 + 100)).retry_after_s == wait

    backend.run(body)


def test_a_retried_reserve_holds_once(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        await led.reserve("acme", "e1", 0.4, CAP, T0)
        again = await led.reserve("acme", "e1", 0.4, CAP, T0 + 1)
        assert again.ok and again.reserved == pytest.approx(0.4)
        assert (await led.state("acme", CAP, T0 + 1)).open_reservations == 1

    backend.run(body)


def test_tenants_and_window_lengths_keep_apart(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        await led.reserve("acme", "e1", 1.0, CAP, T0)
        await led.settle("acme", "e1", 1.0, CAP, T0)
        assert (await led.reserve("globex", "e1", 1.0, CAP, T0)).ok
        # a cap moved from hours to days does not read the hour's spend as the day's
        daily = CapConfig(usd=1.0, window="day")
        assert (await led.state("acme", daily, T0)).spent == 0

    backend.run(body)


def test_sums_fit_the_cap_whatever_the_rounding(backend: Backend) -> None:
    async def body(led: Ledger) -> None:
        for i in range(10):
            assert (await led.reserve("acme", f"r{i}", 0.1, CAP, T0)).ok
        assert not (await led.reserve("acme", "r10", 1e-6, CAP, T0)).ok
        for i in range(10):
            assert await led.settle("acme", f"r{i}", 0.1, CAP, T0)
        s = await led.state("acme", CAP, T0)
        assert s.spent == pytest.approx(1.0) and s.reserved == 0 and s.remaining < 1e-12

    backend.run(body)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda led: led.reserve("acme", "e", -0.1, CAP, T0), "amount"),
        (lambda led: led.reserve("acme", "e", math.nan, CAP, T0), "amount"),
        (lambda led: led.reserve("acme", "e", math.inf, CAP, T0), "amount"),
        (lambda led: led.reserve("", "e", 0.1, CAP, T0), "tenant"),
        (lambda led: led.reserve("a{b}", "e", 0.1, CAP, T0), "tenant"),
        (lambda led: led.reserve("acme", "", 0.1, CAP, T0), "event_id"),
        (lambda led: led.settle("acme", "e", -1.0, CAP, T0), "cost_usd"),
        (lambda led: led.settle("acme", "", 1.0, CAP, T0), "event_id"),
        (lambda led: led.release("", "e"), "tenant"),
        (lambda led: led.state("", CAP, T0), "tenant"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    backend: Backend, call: Callable[[Ledger], Awaitable[object]], named: str
) -> None:
    async def body(led: Ledger) -> None:
        with pytest.raises(ValueError, match=named):
            await call(led)

    backend.run(body)


# ---- Redis ---------------------------------------------------------------------------
def test_redis_keys_share_one_slot_and_expire_on_their_own(redis_backend: Backend) -> None:
    short = CapConfig(usd=1.0, window=10.0, reservation_ttl_s=5.0)

    async def body(led: Ledger) -> None:
        # spend in twelve successive windows: the old ones leave the balance hash
        for w in range(12):
            await led.settle("acme", f"s{w}", 0.1, short, T0 + 10 * w)
        await led.reserve("acme", "open", 0.2, short, T0 + 115)

    redis_backend.run(body)
    keys = redis_backend.keys()
    base = f"{redis_backend.prefix}:budget:{{t:acme}}"
    assert {f"{base}:bal", f"{base}:res", f"{base}:exp", f"{base}:done:s0"} <= set(keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    with sync_client(redis_backend.url) as r:
        ttl = {k: r.pttl(k) for k in keys}
        assert r.hlen(f"{base}:bal") <= 15
    assert all(t > 0 for t in ttl.values())
    assert ttl[f"{base}:done:s0"] > 86_000_000  # settled ids are kept at least a day
    assert ttl[f"{base}:res"] >= 5_000 and ttl[f"{base}:exp"] >= 5_000
    assert ttl[f"{base}:bal"] <= 20_000  # a window after the current one ends


def test_redis_unreachable_raises_store_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        led = store.ledger()
        try:
            with pytest.raises(StoreUnavailable, match="unavailable"):
                await led.reserve("acme", "e1", 0.1, CAP, T0)
            with pytest.raises(StoreUnavailable, match="known down"):
                await led.settle("acme", "e1", 0.1, CAP, T0)
        finally:
            await store.close()

    asyncio.run(main())


async def _race(
    prefix: str, seed: int, rounds: int, tasks: int, url: str = SHARED_URL
) -> tuple[int, int, float]:
    """Reserve-and-settle cycles from `tasks` coroutines; (ok, refused, USD settled)."""
    store = RedisStore(url, prefix=prefix)
    led = store.ledger()
    rng = random.Random(seed)
    ok = refused = 0
    settled = 0.0

    async def one(t: int) -> None:
        nonlocal ok, refused, settled
        for i in range(rounds):
            est = rng.uniform(0.005, 0.05)
            event_id = f"w{seed}-{t}-{i}"
            if not (await led.reserve("acme", event_id, est, CAP, T0)).ok:
                refused += 1
                continue
            ok += 1
            await asyncio.sleep(0)  # let the other coroutines in between
            cost = est if rng.random() < 0.5 else rng.uniform(0.0, est)
            assert await led.settle("acme", event_id, cost, CAP, T0)
            settled += cost

    try:
        await asyncio.gather(*(one(t) for t in range(tasks)))
    finally:
        await store.close()
    return ok, refused, settled


def _racer(
    prefix: str, url: str, seed: int, go: multiprocessing.synchronize.Event, out: Connection
) -> None:
    go.wait(10)
    out.send(asyncio.run(_race(prefix, seed, rounds=25, tasks=16, url=url)))


def test_concurrent_reservations_from_two_workers_never_overspend_a_cap(
    redis_backend: Backend,
) -> None:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [
        ctx.Process(target=_racer, args=(redis_backend.prefix, redis_backend.url, seed, go, send))
        for seed, (_, send) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    go.set()
    results: list[tuple[int, int, float]] = []
    for recv, _ in pipes:
        assert recv.poll(30), "a worker did not report"
        results.append(recv.recv())
    for p in procs:
        p.join(10)
    assert all(p.exitcode == 0 for p in procs)
    state: list[BudgetState] = []

    async def body(led: Ledger) -> None:
        state.append(await led.state("acme", CAP, T0))

    redis_backend.run(body)
    (s,) = state
    ok = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    assert refused > 0 and ok + refused == 2 * 16 * 25  # the cap was contended
    assert s.spent <= CAP.usd + EPS_USD
    assert s.spent == pytest.approx(sum(r[2] for r in results), abs=1e-9)
    assert (s.reserved, s.open_reservations) == (0, 0)


def _dier(prefix: str, url: str, cap: CapConfig, out: Connection) -> None:
    async def main() -> None:
        store = RedisStore(url, prefix=prefix)
        now = time.time()
        r = await store.ledger().reserve("acme", "dying", cap.usd, cap, now)
        out.send((r.ok, now))
        await asyncio.sleep(60)  # killed before it settles

    asyncio.run(main())


def test_a_killed_workers_reservation_is_released_after_its_timeout(
    redis_backend: Backend,
) -> None:
    cap = CapConfig(usd=1.0, window="day", reservation_ttl_s=1.5)
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_dier, args=(redis_backend.prefix, redis_backend.url, cap, send))
    proc.start()
    try:
        assert recv.poll(10)
        ok, reserved_at = recv.recv()
        proc.kill()
        proc.join(5)
    finally:
        if proc.is_alive():
            proc.kill()
    assert ok and proc.exitcode == -9

    async def body(led: Ledger) -> None:
        blocked = await led.reserve("acme", "next", 0.5, cap, time.time())
        assert not blocked.ok and 1.0 <= blocked.retry_after_s <= 1.5
        assert (await led.state("acme", cap, time.time())).open_reservations == 1
        await asyncio.sleep(max(0.0, reserved_at + 1.3 - time.time()))
        assert not (await led.reserve("acme", "next", 0.5, cap, time.time())).ok
        await asyncio.sleep(max(0.0, reserved_at + 1.55 - time.time()))
        r = await led.reserve("acme", "next", 0.5, cap, time.time())
        assert r.ok and r.reserved == pytest.approx(0.5)

    redis_backend.run(body)
