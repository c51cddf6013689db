"""A learner SIGKILLed mid-stream: how long until its policies are learned again, and
whether every accepted feedback is still applied exactly once (issue 14's goal: 200
policies over 3 learner processes, taken over within 2 lease periods, count applied =
count accepted).

Three real `banditroute learner` processes (the learner pool) share 200 policies on
the real Redis, under a key prefix of their own. A feeder in this process appends
decisions and their feedback to all policies, round robin, at `--rate` events/s.
After `--before` seconds one learner is SIGKILLed (no release, no last publish); the
lease keys are sampled every 10 ms until each of its policies is held by another
learner. The killed learner is then started again (a new member) and the time until
the load spreads back is taken too. After `--after` more seconds the feeder stops,
the survivors drain, and every policy's snapshot is compared with what the store
accepted. Finally SIGTERM: each learner leaves, publishes and releases its leases.

    python -m benchmarks.learner_failover [--policies 200] [--learners 3]
        [--lease-ms 1000] [--rate 1000] [--before 4] [--after 4]
        [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from benchmarks.gateway import machine
from service.learner_pool import member_of, owner_of
from service.store import DecisionRecord, FeedbackEvent, RedisStore

MODELS = ("small", "large")
PROJECTION = 8
DIM = PROJECTION + 2


def write_config(path: Path, url: str, prefix: str, policies: list[str], lease_ms: int) -> None:
    lines = [
        f'redis_url = "{url}"',
        f'key_prefix = "{prefix}"',
        f"projection_dim = {PROJECTION}",
        f"lease_ttl_ms = {lease_ms}",
        "snapshot_every_n = 200",
        "snapshot_every_ms = 250",
        f'default_policy = "{policies[0]}"',
    ]
    for m, price in zip(MODELS, (0.1, 2.0), strict=True):
        lines += [
            "[[models]]",
            f'name = "{m}"',
            f"input_per_m = {price}",
            f"output_per_m = {price}",
        ]
    for p in policies:
        lines += [f"[policies.{p}]", 'kind = "linucb"']
    path.write_text("\n".join(lines) + "\n")


def start_learner(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "learner", "--config", str(config), "--log-json"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


class Leases:
    """The lease keys of every policy, read in one MGET."""

    def __init__(self, url: str, prefix: str, policies: list[str]) -> None:
        self.client = aioredis.Redis.from_url(url)
        self.policies = policies
        self.keys = [f"{prefix}:{{{p}}}:lease" for p in policies]

    async def holders(self) -> dict[str, str | None]:
        values = await self.client.mget(self.keys)
        return {
            p: None if v is None else member_of(v.decode())
            for p, v in zip(self.policies, values, strict=True)
        }


async def until(check: object, timeout: float, every: float = 0.01) -> float:
    """Seconds until the coroutine function `check()` is true (inf on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():  # type: ignore[operator]
            return time.monotonic() - start
        await asyncio.sleep(every)
    return float("inf")


async def feeder(
    store: RedisStore, policies: list[str], rate: float, stop: asyncio.Event, accepted: Counter[str]
) -> None:
    """Decisions and their feedback, round robin over the policies, at about `rate`/s."""
    rng = np.random.default_rng(0)
    i = 0
    start = time.monotonic()
    while not stop.is_set():
        # pace by the clock: a batch of 20, then wait for the schedule to catch up
        batch = []
        for _ in range(20):
            policy = policies[i % len(policies)]
            now = time.time()
            rec = DecisionRecord(
                event_id=f"{policy}.{i}",
                policy=policy,
                model=MODELS[i % 2],
                propensity=0.5,
                policy_version=0,
                context=rng.standard_normal(DIM),
                candidates=list(MODELS),
                cost_weight=0.0,
                created_at=now,
                deadline=now + 600,
            )
            batch.append(rec)
            i += 1

        async def one(rec: DecisionRecord) -> None:
            await store.put_decision(rec)
            now = time.time()
            ev = FeedbackEvent.join(
                rec, quality=float(rec.model == "large"), cost_usd=0.001, source="user", now=now
            )
            out = await store.submit_feedback(rec.policy, rec.event_id, ev, now)
            if out.value == "accepted":
                accepted[rec.policy] += 1

        await asyncio.gather(*(one(r) for r in batch))
        ahead = i / rate - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def main(args: argparse.Namespace) -> None:
    prefix = f"brbench-failover-{uuid.uuid4().hex[:8]}"
    policies = [f"p{i:03d}" for i in range(args.policies)]
    tmp = Path(tempfile.mkdtemp(prefix="br-failover-"))
    config = tmp / "learners.toml"
    write_config(config, args.redis_url, prefix, policies, args.lease_ms)
    lease_s = args.lease_ms / 1000
    leases = Leases(args.redis_url, prefix, policies)
    store = RedisStore(args.redis_url, prefix=prefix, max_connections=64)
    procs = [start_learner(config, tmp / f"learner{k}.log") for k in range(args.learners)]
    print(machine())
    print(
        f"{args.policies} policies, {args.learners} learner processes, lease {args.lease_ms} ms, "
        f"feeder {args.rate:g} events/s; logs in {tmp}"
    )
    try:

        async def settled() -> bool:
            # every policy held by its rendezvous owner among the members now holding
            h = await leases.holders()
            members = sorted({m for m in h.values() if m is not None})
            if None in h.values() or len(members) != args.learners:
                return False
            return all(h[p] == owner_of(p, members) for p in policies)

        took = await until(settled, timeout=60)
        held = await leases.holders()
        shares = sorted(Counter(held.values()).values())
        print(
            f"start: every policy held {took:.2f} s after launch (process start included); "
            f"shares {shares}"
        )

        stop_feed = asyncio.Event()
        accepted: Counter[str] = Counter()
        feed = asyncio.create_task(feeder(store, policies, args.rate, stop_feed, accepted))
        await asyncio.sleep(args.before)

        victim = procs[0]
        held = await leases.holders()
        members = {m for m in held.values() if m is not None}
        dead = next(m for m in members if f":{victim.pid}:" in m)
        orphans = [p for p, m in held.items() if m == dead]
        fed_before = sum(accepted.values())
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait()
        taken: dict[str, float] = {}
        by: dict[str, str | None] = {}
        while len(taken) < len(orphans) and time.monotonic() - killed < 30:
            h = await leases.holders()
            now = time.monotonic() - killed
            for p in orphans:
                if p not in taken and h[p] not in (None, dead):
                    taken[p] = now
                    by[p] = h[p]
            await asyncio.sleep(0.01)
        times = sorted(taken.values())
        all_taken = times[-1] if len(times) == len(orphans) else float("inf")
        survivors = Counter(by.values())
        print(
            f"SIGKILL of 1 learner holding {len(orphans)} policies ({fed_before} events fed so "
            f"far): all taken over after {all_taken * 1000:.0f} ms = "
            f"{all_taken / lease_s:.2f} lease periods (goal <= 2); per policy p50 "
            f"{np.median(times) * 1000:.0f} ms, max {all_taken * 1000:.0f} ms; absorbed as "
            f"{sorted(survivors.values())}"
        )

        procs[0] = start_learner(config, tmp / "learner0-restarted.log")
        restarted = time.monotonic()

        back = await until(settled, timeout=30)
        h = await leases.holders()
        print(
            f"restart: the new member learns its share {back:.2f} s after launch "
            f"(process start included); shares {sorted(Counter(h.values()).values())}"
        )
        await asyncio.sleep(max(0.0, args.after - (time.monotonic() - restarted)))
        stop_feed.set()
        await feed

        async def drained() -> bool:
            for p in policies:
                info = await store.snapshot_info(p)
                if info is None or info.applied < accepted[p]:
                    return False
            return True

        drain = await until(drained, timeout=60, every=0.1)
        applied = {p: (await store.snapshot_info(p)) for p in policies}
        total_applied = sum(s.applied for s in applied.values() if s is not None)
        total_accepted = sum(accepted.values())
        stream_total = sum([await store.feedback_total(p) for p in policies])
        wrong = [p for p, s in applied.items() if s is None or s.applied != accepted[p]]
        print(
            f"exactly once: accepted {total_accepted} (stream total {stream_total}), applied "
            f"{total_applied} summed over {len(policies)} snapshots after draining "
            f"({drain:.2f} s); policies off: {len(wrong)}"
        )

        for p in procs:
            p.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        codes = [p.wait(timeout=30) for p in procs]
        h = await leases.holders()
        print(
            f"SIGTERM: exit codes {codes} after {time.monotonic() - t_term:.2f} s; leases "
            f"still held: {sum(v is not None for v in h.values())}"
        )
        ok = all_taken <= 2 * lease_s and not wrong and total_applied == total_accepted
        print("PASS" if ok else "FAIL")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        await leases.client.aclose()
        client = aioredis.Redis.from_url(args.redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()
        await store.close()


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--learners", type=int, default=3)
    ap.add_argument("--lease-ms", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0, help="feedback events per second")
    ap.add_argument("--before", type=float, default=4.0, help="seconds fed before the kill")
    ap.add_argument("--after", type=float, default=4.0, help="seconds fed after the restart")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
