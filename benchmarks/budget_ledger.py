"""The hard cap's cost in the request path: the Redis ledger's reserve + settle round
trips per second from one and from two worker processes, and the latency of one
reserve, each beside the same figure for plain Redis GETs in the same run (the ratio
is the figure to read: the machine is shared and noisy).

Each worker process has its own RedisStore (one connection pool) and `--concurrency`
coroutines looping reserve -> settle against one tenant's cap (large enough that
nothing is refused: the figure is the scripts' cost, not the refusals'); the GET rows
run the same loop with two GETs a cycle. Latency: one coroutine alternating a reserve
(then an untimed settle) with a GET, so noise hits both alike.

    python -m benchmarks.budget_ledger [--seconds 3] [--concurrency 8]
        [--latency-n 5000] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.synchronize
import time
import uuid
from multiprocessing.connection import Connection

import numpy as np
import redis

from benchmarks.gateway import machine
from service.budgets.config import CapConfig
from service.store import RedisStore

CAP = CapConfig(usd=1e12, window="day", reservation_ttl_s=300.0)


async def _loop(url: str, prefix: str, kind: str, seconds: float, concurrency: int) -> int:
    """Cycles done in `seconds`: reserve + settle, or two GETs."""
    store = RedisStore(url, prefix=prefix)
    led = store.ledger()
    get_key = f"{prefix}:plain"
    done = 0
    stop = time.perf_counter() + seconds

    async def one(c: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            if kind == "ledger":
                event_id = f"{prefix}-{c}-{i}"
                now = time.time()
                await led.reserve("bench", event_id, 0.01, CAP, now)
                await led.settle("bench", event_id, 0.008, CAP, now)
            else:
                await store.ledger_call(lambda r: r.get(get_key))
                await store.ledger_call(lambda r: r.get(get_key))
            i += 1
            done += 1

    try:
        await asyncio.gather(*(one(c) for c in range(concurrency)))
    finally:
        await store.close()
    return done


def _worker(
    url: str,
    prefix: str,
    kind: str,
    seconds: float,
    concurrency: int,
    go: multiprocessing.synchronize.Event,
    out: Connection,
) -> None:
    go.wait(30)
    out.send(asyncio.run(_loop(url, prefix, kind, seconds, concurrency)))


def throughput(url: str, prefix: str, kind: str, procs: int, args: argparse.Namespace) -> float:
    """Cycles per second from `procs` forked processes started together."""
    ctx = mp.get_context("fork")
    go = ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in range(procs)]
    workers = [
        ctx.Process(
            target=_worker,
            args=(url, f"{prefix}-{kind}{p}", kind, args.seconds, args.concurrency, go, send),
        )
        for p, (_, send) in enumerate(pipes)
    ]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let the children import and connect before the clock starts
    go.set()
    total = sum(recv.recv() for recv, _ in pipes)
    for w in workers:
        w.join(10)
    return total / args.seconds


async def latency(url: str, prefix: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds of n reserves and of n GETs, interleaved."""
    store = RedisStore(url, prefix=prefix)
    led = store.ledger()
    key = f"{prefix}:plain"
    res, get = np.empty(n), np.empty(n)
    try:
        for i in range(-200, n):  # the first 200: warm-up (pool, script cache)
            now = time.time()
            t0 = time.perf_counter()
            await led.reserve("lat", f"e{i}", 0.01, CAP, now)
            t1 = time.perf_counter()
            await store.ledger_call(lambda r: r.get(key))
            t2 = time.perf_counter()
            await led.settle("lat", f"e{i}", 0.01, CAP, now)
            if i >= 0:
                res[i], get[i] = (t1 - t0) * 1e6, (t2 - t1) * 1e6
    finally:
        await store.close()
    return res, get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-n", type=int, default=5000)
    args = parser.parse_args()
    prefix = f"brbench-{uuid.uuid4().hex[:8]}"
    print(f"machine: {machine()}")
    print(f"redis {args.redis_url}; {args.concurrency} coroutines a process, {args.seconds:g} s")
    try:
        for procs in (1, 2):
            led = throughput(args.redis_url, prefix, "ledger", procs, args)
            get = throughput(args.redis_url, prefix, "get", procs, args)
            print(
                f"{procs} process{'es' if procs > 1 else ''}: reserve+settle {led:8.0f}/s  "
                f"GET pairs {get:8.0f}/s  ratio {led / get:.2f}"
            )
        lat_res, lat_get = asyncio.run(latency(args.redis_url, prefix, args.latency_n))
        for q in (50, 99):
            r, g = float(np.percentile(lat_res, q)), float(np.percentile(lat_get, q))
            print(f"reserve p{q}: {r:6.0f} us  GET p{q}: {g:6.0f} us  ratio {r / g:.2f}")
    finally:
        with redis.Redis.from_url(args.redis_url) as r:
            keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])


if __name__ == "__main__":
    main()
