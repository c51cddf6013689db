"""`banditroute learner --metrics-port`: a standalone learner process serves its pool's
metrics (what it owns and holds, each policy's progress) for Prometheus to scrape."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.process_helpers import Procs, free_port, service_config
from tests.service_helpers import REDIS_URL, drop_prefix, require_redis


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    require_redis("redis")
    prefix = f"brtest-lm-{uuid.uuid4().hex[:8]}"
    p = Procs(tmp_path)
    p.env["BANDITROUTE_KEY_PREFIX"] = prefix
    p.env["BANDITROUTE_STATE_DIR"] = str(tmp_path / "state")
    try:
        yield p
    finally:
        p.cleanup()
        p.dump_logs()
        drop_prefix(prefix)


@pytest.mark.slow
def test_standalone_learner_serves_its_metrics(tmp_path: Path, procs: Procs) -> None:
    config = tmp_path / "banditroute.toml"
    config.write_text(service_config(REDIS_URL))
    port = free_port()
    learner = procs.banditroute("learner", "--config", str(config), "--metrics-port", str(port))
    deadline = time.monotonic() + 180
    text = ""
    while time.monotonic() < deadline:
        assert learner.poll() is None, "the learner exited"
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.TransportError:
            text = ""
        # the one policy's lease taken and its cold start published
        if 'banditroute_learner_policies{state="holding"} 1.0' in text and (
            'banditroute_learner_version{policy="default"} 1.0' in text
        ):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no holding learner in its metrics:\n{text}")
    assert "banditroute_learner_members 1.0" in text
    assert 'banditroute_learner_applied{policy="default"} 0.0' in text
    assert 'banditroute_learner_publish_age_seconds{policy="default"}' in text
