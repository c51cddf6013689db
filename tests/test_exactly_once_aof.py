"""Exactly-once across a Redis restart: a private redis-server with an fsync'ed
append-only file is SIGKILLed and restarted while traffic runs through a real
`banditroute serve` and a standalone `banditroute learner`, with a shadow policy
beside the served one. Afterwards every feedback the service accepted (a 202, or a
409 for a retry of one that was recorded although its answer was lost) is applied
exactly once and logged exactly once: by the served policy, and, through the copies
that travel with each feedback, by its shadow (learned and counted)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process_helpers import Procs, free_port, service_config, wait_for
from tests.test_outage import REDIS_SERVER, START_TIMEOUT_S, PrivateRedis, procs  # noqa: F401

POLICY, SHADOW = "default", "shadow"
CRASH_AFTER = 120  # accepted feedbacks before Redis is killed
TOTAL = 300  # accepted feedbacks before the traffic stops
WAIT_S = 90.0

SHADOW_TOML = f"""
[policies.{SHADOW}]
kind = "linucb"
shadow_of = "{POLICY}"
params = {{ alpha = 0.5 }}
"""


class Traffic(threading.Thread):
    """Route + feedback pairs one after another until stopped, each feedback sent
    LAG routes after its decision (so some land while Redis is down). A degraded
    route has no decision to answer; a feedback refused with 503 is retried until it
    is taken."""

    LAG = 5

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        limits = httpx.Limits(keepalive_expiry=1.0)
        self.client = httpx.Client(base_url=base, timeout=30, limits=limits)
        self.stop = threading.Event()
        self.accepted: set[str] = set()
        self.pending: list[str] = []  # routed, feedback not taken yet
        self.codes: dict[int, int] = {}
        self.degraded = 0
        self.error: BaseException | None = None

    def feedback(self, event_id: str) -> bool:
        """True once the feedback is recorded (202, or 409: recorded before)."""
        try:
            r = self.client.post(
                "/v1/feedback", json={"event_id": event_id, "quality": 0.8, "cost_usd": 2e-4}
            )
        except httpx.TransportError:
            return False
        self.codes[r.status_code] = self.codes.get(r.status_code, 0) + 1
        assert r.status_code in (202, 409, 503), r.text
        if r.status_code in (202, 409):
            self.accepted.add(event_id)
            return True
        return False

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = self.client.post("/v1/route", json={"query": f"question {i} of the run"})
                except httpx.TransportError:
                    continue
                assert r.status_code == 200, r.text
                body = r.json()
                if body["degraded"]:
                    self.degraded += 1
                    self.pending = [e for e in self.pending if not self.feedback(e)]
                    time.sleep(0.05)
                    continue
                self.pending.append(body["event_id"])
                due, self.pending = self.pending[: -self.LAG], self.pending[-self.LAG :]
                self.pending = [e for e in due if not self.feedback(e)] + self.pending
        except BaseException as exc:  # reported by the test
            self.error = exc

    def settle(self) -> None:
        """Retry every feedback not taken yet until each is."""
        deadline = time.monotonic() + WAIT_S
        while self.pending:
            assert time.monotonic() < deadline, f"feedback never taken: {self.pending[:5]}"
            self.pending = [e for e in self.pending if not self.feedback(e)]
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(REDIS_SERVER is None, reason="needs a redis-server binary")
def test_a_redis_restart_loses_and_repeats_nothing_shadows_included(
    tmp_path: Path,
    procs: Procs,  # noqa: F811
) -> None:
    store = PrivateRedis(procs, tmp_path / "redis")
    store.start()
    config = tmp_path / "banditroute.toml"
    config.write_text(
        service_config(f"redis://127.0.0.1:{store.port}/0", policy=POLICY, snapshot_every_n=20)
        + SHADOW_TOML
    )
    procs.env["BANDITROUTE_KEY_PREFIX"] = f"braof-{uuid.uuid4().hex[:10]}"
    procs.env["BANDITROUTE_STATE_DIR"] = str(tmp_path / "state")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ("serve", "--config", str(config), "--port", str(port), "--workers", "1")
    server = procs.banditroute(*serve, BANDITROUTE_RUN_LEARNER="false")
    learner = procs.banditroute("learner", "--config", str(config))
    client = httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=1.0))

    def ready() -> bool:
        assert server.poll() is None, f"serve exited with {server.returncode}"
        assert learner.poll() is None, f"learner exited with {learner.returncode}"
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def status(policy: str) -> dict[str, Any]:
        r = client.get(f"/v1/policies/{policy}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def logged(policy: str) -> list[str]:
        ids, after = [], "0-0"
        while True:
            r = client.get(f"/v1/log/{policy}", params={"after": after, "limit": 5000})
            assert r.status_code == 200, r.text
            page = r.json()
            ids += [e["event_id"] for e in page["events"]]
            if len(page["events"]) < 5000:
                return ids
            after = page["next"]

    traffic = Traffic(base)
    try:
        wait_for("the service to be ready", ready, START_TIMEOUT_S)
        traffic.start()
        wait_for(f"{CRASH_AFTER} accepted", lambda: len(traffic.accepted) >= CRASH_AFTER, WAIT_S)
        store.crash()  # SIGKILL, mid-run: requests in flight
        time.sleep(1.5)
        assert traffic.error is None, traffic.error
        store.start()  # the same port and directory: the AOF is replayed
        wait_for(f"{TOTAL} accepted", lambda: len(traffic.accepted) >= TOTAL, WAIT_S)
        traffic.stop.set()
        traffic.join(timeout=60)
        assert traffic.error is None, traffic.error
        traffic.settle()
        accepted = traffic.accepted
        n = len(accepted)
        assert traffic.degraded > 0 or traffic.codes.get(503, 0) > 0, traffic.codes

        def caught_up() -> bool:
            served, shadow = status(POLICY), status(SHADOW)
            return (
                served["updates_applied"] >= n
                and served["feedback_waiting"] == 0
                and shadow["updates_applied"] >= n
                and shadow["feedback_waiting"] == 0
            )

        wait_for(f"{n} updates on both policies", caught_up, WAIT_S)
        time.sleep(2)  # and nothing is applied a second time later
        for policy in (POLICY, SHADOW):
            st = status(policy)
            assert st["feedback_total"] == n, (policy, st, traffic.codes)
            assert st["updates_applied"] == n, (policy, st, traffic.codes)
            assert sum(int(m["pulls"]) for m in st["models"].values()) == n, (policy, st)
        log = logged(POLICY)
        assert len(log) == n and set(log) == accepted, (len(log), n)
        rep = client.get(f"/v1/policies/{SHADOW}/shadow").json()
        assert rep["feedback"] == n, rep
        print(f"\naccepted {n}, codes {traffic.codes}, degraded routes {traffic.degraded}")
    finally:
        traffic.stop.set()
        traffic.join(timeout=60)
        traffic.client.close()
        client.close()
