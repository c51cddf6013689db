"""A schema-driven fuzz of the running service: schemathesis generates requests from
the served OpenAPI document and checks every response against it, over real sockets
against a real `banditroute serve` (in-process store, a temporary state dir).

It must find nothing: no 5xx, no response that breaks the documented schema, status
codes, content types or headers, no undocumented method allowed, no request the
schema calls invalid accepted, no auth ignored. The one check left out is
`positive_data_acceptance`: some rules are no JSON Schema's to express (a candidate
must be a registered model, a judge score must lie in [score_min, score_max], an event
must exist), and the server rightly refuses such schema-valid requests with a 4xx.

The server counts what it answered (/metrics), so the request total and the number
of 5xx come from the server's side, not the fuzzer's. Size: BANDITROUTE_FUZZ_EXAMPLES
examples per operation and phase (default 150: ~2,400 requests, ~90 s on 2 cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process_helpers import Procs, free_port, wait_for

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = int(os.environ.get("BANDITROUTE_FUZZ_EXAMPLES", "150"))
MIN_REQUESTS = int(os.environ.get("BANDITROUTE_FUZZ_MIN_REQUESTS", "2000"))
ADMIN, CLIENT = "fuzz-admin-key", "fuzz-client-key"

CONFIG = f"""
admin_key = "{ADMIN}"
client_keys = ["{CLIENT}"]
fallback_model = "small"
projection_dim = 32
decision_ttl_s = 600

[[models]]
name = "small"
input_per_m = 0.1
output_per_m = 0.1

[[models]]
name = "medium"
input_per_m = 0.5
output_per_m = 0.5

[[models]]
name = "large"
input_per_m = 2.0
output_per_m = 2.0

[policies.default]
kind = "linucb"
params = {{ epsilon = 0.05 }}

[policies.shadow]
kind = "thompson"
shadow_of = "default"
"""

# known names for the operations that read an existing resource, so part of their
# requests get past the 404
ST_CONFIG = """
[[operations]]
include-path-regex = "^/v1/(policies|log)/"
parameters = { "path.name" = "default", "path.policy" = "default" }
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    procs = Procs(tmp_path)
    config = tmp_path / "banditroute.toml"
    config.write_text(CONFIG)
    port = free_port()
    proc = procs.banditroute(
        "serve", "--config", str(config), "--port", str(port), "--log-level", "warning",
        BANDITROUTE_STATE_DIR=str(tmp_path / "state"),
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("the service", ready, timeout=180)
        yield url
        assert proc.poll() is None, "the service died during the fuzz"
    except BaseException:
        procs.dump_logs()
        raise
    finally:
        procs.cleanup()


def _answered(url: str) -> dict[str, int]:
    """Requests the server answered, by status code (its own counter)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {CLIENT}"}).text
    by_status: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "banditroute_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                code = sample.labels["status"]
                by_status[code] = by_status.get(code, 0) + int(sample.value)
    return by_status


def test_schema_fuzz_finds_nothing(server: str, tmp_path: Path) -> None:
    spec = httpx.get(f"{server}/openapi.json", headers={"Authorization": f"Bearer {CLIENT}"})
    assert spec.status_code == 200
    (tmp_path / "openapi.json").write_text(spec.text)
    (tmp_path / "schemathesis.toml").write_text(ST_CONFIG)
    before = _answered(server)
    res = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file", str(tmp_path / "schemathesis.toml"),
            "run", str(tmp_path / "openapi.json"),
            "--url", server,
            "--header", f"Authorization: Bearer {ADMIN}",
            "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(EXAMPLES),
            "--seed", "20261127",
            "--workers", "1",
            "--request-timeout", "60",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = res.stdout[-6000:] + res.stderr[-2000:]
    print(tail)
    after = _answered(server)
    answered = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(answered.values())
    server_errors = {k: v for k, v in answered.items() if k.startswith("5") and v}
    generated = re.search(r"(\d+) generated", res.stdout)
    print(f"server answered {total} requests: {dict(sorted(answered.items()))}")
    assert res.returncode == 0, tail
    assert not server_errors, server_errors
    assert generated is not None and total >= MIN_REQUESTS, (total, generated)
