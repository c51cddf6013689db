"""Redis goes away under a running service (a real uvicorn process and a standalone
learner) and comes back: routing degrades to the fallback model instead of failing,
feedback is refused with 503 + Retry-After instead of being lost, and once Redis is
back every feedback that was ever accepted is learned exactly once, including those
still waiting in the stream when Redis died.

The Redis here is private (a redis-server of our own on a free port, never the shared
one), with an fsync'ed append-only file so that SIGKILL loses nothing it acknowledged."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.embedder import Embedder
from tests.process_helpers import Procs, free_port, service_config, wait_for
from tests.service_helpers import drop_prefix, make_settings

REDIS_SERVER = shutil.which("redis-server")
POLICY = "default"
FALLBACK = "small"
# generous: two cores shared with other work, and the service loads torch
START_TIMEOUT_S = 180.0
WAIT_S = 60.0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
        p.dump_logs()  # pytest shows it only when the test failed


class PrivateRedis:
    """A redis-server on its own port and directory; every write is fsync'ed to the
    append-only file before it is acknowledged, so a restart keeps all of them."""

    def __init__(self, procs: Procs, directory: Path) -> None:
        assert REDIS_SERVER is not None
        self.procs = procs
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = self.procs.start("redis", argv)
        wait_for(f"redis on port {self.port}", self.answers, WAIT_S)

    def answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    def crash(self) -> None:
        assert self.proc is not None
        Procs.kill(self.proc)


def route(client: httpx.Client, query: str) -> dict[str, Any]:
    r = client.post("/v1/route", json={"query": query})
    assert r.status_code == 200, r.text
    return dict(r.json())


def feedback(client: httpx.Client, event_id: str, quality: float = 0.7) -> httpx.Response:
    return client.post(
        "/v1/feedback", json={"event_id": event_id, "quality": quality, "cost_usd": 2e-4}
    )


def routed(client: httpx.Client, query: str) -> str:
    body = route(client, query)
    assert not body["degraded"] and body["event_id"], body
    return str(body["event_id"])


@pytest.mark.slow
@pytest.mark.skipif(REDIS_SERVER is None, reason="needs a redis-server binary")
def test_redis_outage_degrades_then_recovers_without_losing_feedback(
    tmp_path: Path, procs: Procs
) -> None:
    store = PrivateRedis(procs, tmp_path / "redis")
    store.start()
    config = tmp_path / "banditroute.toml"
    config.write_text(
        service_config(
            f"redis://127.0.0.1:{store.port}/0",
            policy=POLICY,
            fallback=FALLBACK,
            snapshot_every_n=20,
        )
    )
    procs.env["BANDITROUTE_KEY_PREFIX"] = f"brout-{uuid.uuid4().hex[:10]}"
    procs.env["BANDITROUTE_STATE_DIR"] = str(tmp_path / "state")
    port = free_port()
    serve = ("serve", "--config", str(config), "--port", str(port), "--workers", "1")
    server = procs.banditroute(*serve, BANDITROUTE_RUN_LEARNER="false")
    learner = procs.banditroute("learner", "--config", str(config))
    # keep-alive shorter than uvicorn's 5 s, so no request races the server's close
    limits = httpx.Limits(keepalive_expiry=1.0)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits)

    def ready() -> bool:
        assert server.poll() is None, f"serve exited with {server.returncode}"
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def policy_status() -> dict[str, Any]:
        r = client.get(f"/v1/policies/{POLICY}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    try:
        wait_for("the service to be ready", ready, START_TIMEOUT_S)
        accepted = 0

        # before: every pair is accepted
        answered = []
        for i in range(60):
            if i == 40:
                # freeze the learner once it has caught up, so the last 20 accepted
                # feedbacks are still waiting in the stream when Redis dies
                wait_for(
                    "the learner",
                    lambda: policy_status()["updates_applied"] == 40,
                    START_TIMEOUT_S,
                )
                os.killpg(learner.pid, signal.SIGSTOP)
            event_id = routed(client, f"before the outage, question {i}")
            r = feedback(client, event_id)
            assert r.status_code == 202, r.text
            answered.append(event_id)
            accepted += 1
        # decisions whose feedback will only arrive during the outage
        pending = [routed(client, f"answered late, question {i}") for i in range(5)]
        status = policy_status()
        assert (status["updates_applied"], status["feedback_waiting"]) == (40, 20), status

        store.crash()
        # the learner lives through the outage too (it reconnects by itself)
        os.killpg(learner.pid, signal.SIGCONT)
        wait_for("readiness to drop", lambda: not ready(), WAIT_S)

        # during: routing degrades, feedback is refused with a retry hint, nothing crashes
        r = client.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "degraded" and r.json()["detail"]["store"] is False
        for i in range(10):
            body = route(client, f"during the outage, question {i}")
            assert body["degraded"] is True, body
            assert body["model"] == FALLBACK, body
            assert body["propensity"] == 1.0, body
            assert body.get("event_id") is None, body
        for event_id in pending:
            r = feedback(client, event_id)
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) >= 1, r.headers
            detail = r.json()["detail"]
            assert isinstance(detail, str) and "Traceback" not in detail, detail
            assert "unreachable" in detail, detail
        r = client.get(f"/v1/policies/{POLICY}")
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        assert server.poll() is None and learner.poll() is None

        store.start()

        # after: routing recovers by itself, and the refused feedback can be retried
        def routes_again() -> bool:
            return not route(client, "is it back?")["degraded"]

        wait_for("routing to recover", routes_again, WAIT_S)
        wait_for("readiness to recover", ready, WAIT_S)
        for event_id in pending:
            r = feedback(client, event_id)
            assert r.status_code == 202, r.text
            accepted += 1
        # what was accepted before the crash survived it: a repeat is a duplicate
        r = feedback(client, answered[0])
        assert r.status_code == 409, r.text
        for i in range(40):
            event_id = routed(client, f"after the outage, question {i}")
            r = feedback(client, event_id)
            assert r.status_code == 202, r.text
            accepted += 1

        def all_applied() -> bool:
            s = policy_status()
            return s["updates_applied"] >= accepted and s["feedback_waiting"] == 0

        wait_for(f"{accepted} updates to be applied", all_applied, WAIT_S)
        status = policy_status()
        assert status["feedback_total"] == accepted, status
        assert status["updates_applied"] == accepted, status
        time.sleep(2)  # and no event is applied a second time later
        status = policy_status()
        assert status["updates_applied"] == accepted, status
        assert sum(int(m["pulls"]) for m in status["models"].values()) == accepted, status
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.skipif(REDIS_SERVER is None, reason="needs a redis-server binary")
def test_a_hung_redis_degrades_routes_at_once_not_after_a_timeout_each(
    tmp_path: Path, procs: Procs, embedder: Embedder
) -> None:
    """Redis stops answering (SIGSTOP: connections hang, nothing is refused). Once the
    store knows it is down, routes degrade and feedback is refused at once instead of
    each waiting for the socket timeout (1 s), and both recover by themselves when
    Redis answers again."""
    store = PrivateRedis(procs, tmp_path / "redis")
    store.start()
    assert store.proc is not None
    s = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{store.port}/0")
    with TestClient(create_app(s, embedder=embedder)) as c:
        first = c.post("/v1/route", json={"query": "before the outage"}).json()
        assert not first["degraded"], first
        os.kill(store.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            bodies = [c.post("/v1/route", json={"query": f"hung {i}"}).json() for i in range(10)]
            answer = {"event_id": first["event_id"], "quality": 1, "cost_usd": 0}
            refused = [c.post("/v1/feedback", json=answer) for _ in range(5)]
            elapsed = time.monotonic() - t0
        finally:
            os.kill(store.proc.pid, signal.SIGCONT)
        assert all(b["degraded"] and b["model"] == "small" for b in bodies), bodies
        assert [r.status_code for r in refused] == [503] * 5
        # at most the first call (and a probe) waits for the timeout: 15 calls, not 15 s
        assert elapsed < 4.0, elapsed

        def routes_again() -> bool:
            return not c.post("/v1/route", json={"query": "back?"}).json()["degraded"]

        wait_for("routing to recover", routes_again, WAIT_S)
        r = c.post("/v1/feedback", json=answer)
        assert r.status_code == 202, r.text
        metrics = c.get("/metrics").text  # the sweep's backlog and the memory cap's sheds
        assert 'banditroute_expiry_backlog{policy="default"} 0.0' in metrics
        assert "banditroute_decisions_shed 0.0" in metrics
    drop_prefix(s.key_prefix, f"redis://127.0.0.1:{store.port}/0")
