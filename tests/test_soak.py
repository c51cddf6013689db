"""Soak: many route + feedback pairs through the store and the learner, half answered
and half left to expire (short TTL, short grace, a default reward). Memory must stay
flat in the in-process store and the number of keys bounded on Redis: answered and
closed decisions shrink to tombstones that go at deadline + grace, the sweep drains
its backlog, streams are trimmed at each publish and the decision log is capped.

The store and learner APIs are driven directly (what the claim is about; HTTP would
only add the embedder's time), with the service's 384-dimensional contexts (what a
decision record weighs) and a uniformly random router, whose state does not grow or
cost time, so what is measured is the store. BANDITROUTE_SOAK_PAIRS sets the size
(50,000 here)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from policies import Policy, make_policy
from service.learner import Learner
from service.store import DecisionRecord, FeedbackEvent, MemoryStore, RedisStore, Store
from tests.process_helpers import free_port, wait_for

PAIRS = int(os.environ.get("BANDITROUTE_SOAK_PAIRS", "50000"))
WARM = PAIRS // 10  # the level after the first 5,000 pairs is the reference
SAMPLES = 10
MODELS = ["small", "medium", "large"]
DIM = 384  # the service's default context: what a decision record weighs
TTL_S, GRACE_S = 0.3, 0.2
POLICY = "soak"

pytestmark = pytest.mark.slow


def fresh() -> Policy:
    return make_policy("random", MODELS, DIM, seed=0)


def rss_mb() -> float:
    """Resident memory after handing freed heap pages back (glibc's malloc_trim), so
    the figure follows what is live, not what the allocator keeps for later."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def soak(store: Store, measure: Callable[[], float]) -> list[tuple[int, float]]:
    """PAIRS route + feedback pairs; `measure` sampled after WARM and then SAMPLES
    times. Returns [(pairs done, measure())]."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((512, DIM))
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    router = fresh()
    learner = Learner(
        store, POLICY, fresh, every_n=500, every_ms=200, default_reward=0.5, owner="soak"
    )
    marks = {WARM, *(WARM + (PAIRS - WARM) * k // SAMPLES for k in range(1, SAMPLES + 1))}
    out = []
    accepted = 0
    for i in range(1, PAIRS + 1):
        x = xs[i % len(xs)]
        d = router.choose(x)
        now = time.time()
        rec = DecisionRecord(
            event_id=f"{POLICY}.{i}",
            policy=POLICY,
            model=d.model,
            propensity=d.propensity,
            policy_version=learner.stats.version,
            context=x,
            candidates=list(d.probabilities),
            cost_weight=router.cost_weight,
            created_at=now,
            deadline=now + TTL_S,
            prompt_tokens=100,
            expected_cost=(d.expected_cost or {}).get(d.model),
        )
        await store.put_decision(rec)
        if i % 2:  # answered; the other half expires and gets the default reward
            ev = FeedbackEvent.join(rec, quality=1.0, cost_usd=1e-4, source="user", now=now)
            assert (await store.submit_feedback(POLICY, rec.event_id, ev, now)).value == "accepted"
            accepted += 1
        if i % 200 == 0:
            await learner.step()
        if i in marks:
            gc.collect()
            out.append((i, measure()))
    # everything left expires and is learned: nothing lost on the way
    await asyncio.sleep(TTL_S + 0.1)
    learner._last_sweep = 0.0
    await learner.step()
    await learner.drain()
    total = await store.feedback_total(POLICY)
    assert total == PAIRS, (total, PAIRS)
    assert learner.stats.applied == PAIRS and learner.stats.closed == PAIRS - accepted
    return out


def report(name: str, unit: str, samples: list[tuple[int, float]], seconds: float) -> None:
    print(f"\nsoak {name}: {PAIRS} pairs in {seconds:.1f} s")
    for n, v in samples:
        print(f"  after {n:>6} pairs: {v:10.1f} {unit}")


def test_memory_stays_flat_in_the_in_process_store() -> None:
    store = MemoryStore(None, grace_s=GRACE_S, log_max=2000)
    t0 = time.monotonic()
    samples = asyncio.run(soak(store, rss_mb))
    report("in-process store, resident memory", "MiB", samples, time.monotonic() - t0)
    base = samples[0][1]
    worst = max(v for _, v in samples[1:])
    assert worst <= base * 1.10, (base, worst, samples)
    st = store._policies[POLICY]
    # what is left: the decisions of the last TTL + grace, the capped log, no stream
    assert len(st.decisions) < 5000 and len(st.log) <= 2000 and len(st.stream) == 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs a redis-server binary")
def test_keys_stay_bounded_on_redis(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp_path), "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, socket_timeout=5)
    try:

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.ConnectionError:
                return False

        wait_for("the soak's redis", up, 30)
        store = RedisStore(
            f"redis://127.0.0.1:{port}/0",
            prefix=f"soak-{uuid.uuid4().hex[:6]}",
            grace_s=GRACE_S,
            log_max=2000,
        )

        def keys() -> float:
            return float(probe.dbsize())

        async def main() -> list[tuple[int, float]]:
            try:
                return await soak(store, keys)
            finally:
                await store.close()

        t0 = time.monotonic()
        samples = asyncio.run(main())
        report("redis, keys", "keys", samples, time.monotonic() - t0)
        print(f"  redis used_memory: {probe.info('memory')['used_memory_human']}")
        # live decisions (those of the last TTL + grace + a sweep round: ~1,000 here)
        # and a few fixed keys per policy; anything that leaked one key in ten pairs
        # would pass 5,000 long before the end
        assert max(v for _, v in samples) <= 5000, samples
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=30)
