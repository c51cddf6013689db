"""End to end with real processes on the shared Redis, and on the shared 3-master Redis
Cluster: `banditroute serve --workers 2` beside a standalone `banditroute learner`,
which is SIGKILLed mid-stream and replaced.

Every accepted feedback must be applied exactly once (none lost with the dead learner,
none applied twice by its successor), and the learned state must survive a restart of
the whole service."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process_helpers import Procs, free_port, service_config
from tests.service_helpers import drop_prefix, require_redis

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = "default"
PAIRS = 2000
CONCURRENCY = 48
KILL_AFTER = 800  # accepted feedbacks before the learner is killed
# generous: two cores shared with other work, and each process loads torch
START_TIMEOUT_S = 180.0
APPLY_TIMEOUT_S = 120.0

TOPICS = [
    "sort a list in Python",
    "prove that the square root of two is irrational",
    "translate 'good morning' into French",
    "summarise the causes of the First World War",
    "write a haiku about autumn rain",
    "compute 17 times 23",
    "explain TCP slow start",
    "name the capital of Australia",
]


def wait_ready(base: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode} while starting"
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{base} not ready after {START_TIMEOUT_S} s")


def policy_status(base: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/v1/policies/{POLICY}", timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def pulls(status: dict[str, Any]) -> int:
    """Outcomes learned by the state the answering worker serves (it may lag the
    snapshot by a reload)."""
    return sum(int(m["pulls"]) for m in status["models"].values())


def wait_status(base: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the policy until `done` holds or APPLY_TIMEOUT_S passes; the last status."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    status = policy_status(base)
    while not done(status) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = policy_status(base)
    return status


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(store URL, key prefix of this run): one Redis, or the Redis Cluster."""
    url = require_redis(str(request.param))
    prefix = f"bre2e-{uuid.uuid4().hex[:10]}"
    try:
        yield url, prefix
    finally:
        drop_prefix(prefix, url)


@pytest.fixture
def procs(tmp_path: Path, redis_target: tuple[str, str]) -> Iterator[Procs]:
    p = Procs(tmp_path)
    p.env["BANDITROUTE_KEY_PREFIX"] = redis_target[1]
    p.env["BANDITROUTE_STATE_DIR"] = str(tmp_path / "state")
    try:
        yield p
    finally:
        p.cleanup()
        p.dump_logs()  # pytest shows it only when the test failed


async def route_then_feedback(client: httpx.AsyncClient, i: int, sem: asyncio.Semaphore) -> int:
    """One routed query and its feedback; returns the feedback's HTTP status."""
    query = f"Request {i}: please {TOPICS[i % len(TOPICS)]} (variant {i * 7919 % 1009})"
    async with sem:
        r = await client.post("/v1/route", json={"query": query})
        assert r.status_code == 200, r.text
        body = r.json()
        assert not body["degraded"] and body["event_id"], body
        quality = 1.0 if body["model"] == "large" else 0.4 + 0.1 * (i % 5)
        f = await client.post(
            "/v1/feedback",
            json={"event_id": body["event_id"], "quality": quality, "cost_usd": 1e-4},
        )
    return f.status_code


async def traffic(base: str, on_threshold: Callable[[], Awaitable[None]]) -> list[int]:
    """PAIRS route+feedback pairs, CONCURRENCY at a time; `on_threshold` (a coroutine
    function) runs, concurrently with the rest, once KILL_AFTER feedbacks are accepted."""
    sem = asyncio.Semaphore(CONCURRENCY)
    accepted = 0
    fired = asyncio.Event()
    # reuse a pooled connection only well within uvicorn's 5 s keep-alive: at its edge
    # the server may close a connection our next request is already on (a reset)
    limits = httpx.Limits(
        max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=1.0
    )
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(i: int) -> int:
            nonlocal accepted
            code = await route_then_feedback(client, i, sem)
            if code == 202:
                accepted += 1
                if accepted == KILL_AFTER:
                    fired.set()
            return code

        async def side() -> None:
            await fired.wait()
            await on_threshold()

        side_task = asyncio.create_task(side())
        codes = await asyncio.gather(*(one(i) for i in range(PAIRS)))
        assert fired.is_set()
        await side_task
    return list(codes)


@pytest.mark.slow
def test_learner_killed_mid_stream_applies_every_feedback_once(
    tmp_path: Path, procs: Procs, redis_target: tuple[str, str]
) -> None:
    config = tmp_path / "banditroute.toml"
    config.write_text(service_config(redis_target[0]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_args = ("serve", "--config", str(config), "--port", str(port), "--workers", "2")
    no_learner = {"BANDITROUTE_RUN_LEARNER": "false"}  # the workers only serve

    server = procs.banditroute(*serve_args, **no_learner)
    learner = procs.banditroute("learner", "--config", str(config))
    wait_ready(base, [server, learner])
    # a learner that takes the lease publishes its cold start (version 1) at once
    assert wait_status(base, lambda s: s["version"] >= 1)["version"] >= 1

    killed_at: dict[str, Any] = {}

    async def kill_learner() -> None:
        nonlocal learner
        # make sure the first learner is really learning, so its death matters
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        status = await asyncio.to_thread(policy_status, base)
        while status["updates_applied"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = await asyncio.to_thread(policy_status, base)
        killed_at.update(status)
        Procs.kill(learner)
        learner = procs.banditroute("learner", "--config", str(config))

    codes = asyncio.run(traffic(base, kill_learner))
    assert codes.count(202) == PAIRS, {c: codes.count(c) for c in set(codes)}
    assert 0 < killed_at["updates_applied"] < PAIRS, killed_at

    status = wait_status(base, lambda s: s["updates_applied"] >= PAIRS and pulls(s) >= PAIRS)
    assert status["updates_applied"] == PAIRS, status
    assert pulls(status) == PAIRS, status
    assert status["feedback_total"] == PAIRS, status
    assert status["feedback_waiting"] == 0, status
    # a second learner replaying what the first already published would push it past
    time.sleep(3)
    again = policy_status(base)
    assert again["updates_applied"] == PAIRS, again
    assert again["feedback_total"] == PAIRS, again
    assert pulls(again) == PAIRS, again
    version = again["version"]

    # the whole service goes down and comes back: the state lives in Redis
    Procs.stop(learner)
    Procs.stop(server)
    server = procs.banditroute(*serve_args, **no_learner)
    learner = procs.banditroute("learner", "--config", str(config))
    wait_ready(base, [server, learner])

    after = policy_status(base)
    assert after["updates_applied"] == PAIRS, after
    assert after["feedback_total"] == PAIRS, after
    assert after["version"] >= version, (after, version)
    assert pulls(after) == PAIRS, after
    r = httpx.post(f"{base}/v1/route", json={"query": "after the restart"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["degraded"] and body["policy_version"] >= version, body
