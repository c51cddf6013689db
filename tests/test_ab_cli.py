"""The operator's path end to end against a real `banditroute serve` process (embedded
store): an experiment from the config file, traffic over HTTP, then `ab report
--plot`, `log export` to parquet, and `ope` on the exported log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.ope import REQUIRED_COLUMNS
from tests.process_helpers import Procs, free_port, service_config, wait_for

pytestmark = pytest.mark.slow

EXPERIMENT = """
[policies.small_only]
kind = "fixed"
params = { model = "small" }

[[experiments]]
name = "exp1"
cost_weight = 0.2
cost_scale = 0.001

[[experiments.variants]]
name = "A"
policy = "default"
weight = 1

[[experiments.variants]]
name = "B"
policy = "small_only"
weight = 1
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    procs = Procs(tmp_path)
    procs.env["BANDITROUTE_STATE_DIR"] = str(tmp_path / "state")
    config = tmp_path / "banditroute.toml"
    config.write_text(service_config("") + EXPERIMENT)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = procs.banditroute("serve", "--config", str(config), "--port", str(port))

    def ready() -> bool:
        assert proc.poll() is None, "the service exited"
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the service", ready, timeout=180)
        yield base
    finally:
        procs.cleanup()
        procs.dump_logs()


def test_report_plot_export_and_ope_from_a_running_service(server: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=server, timeout=30) as c:
        variants = []
        for i in range(240):
            r = c.post(
                "/v1/route",
                json={
                    "query": f"question {i % 12} about topic {i % 5}",
                    "unit_id": f"u{i}",
                    "experiment": "exp1",
                },
            )
            assert r.status_code == 200, r.text
            d = r.json()
            variants.append(d["variant"])
            quality = 0.9 if d["model"] == "large" else 0.5
            f = c.post(
                "/v1/feedback",
                json={"event_id": d["event_id"], "quality": quality, "cost_usd": 0.0002},
            )
            assert f.status_code == 202, f.text

    runner = CliRunner(env={"COLUMNS": "220"})  # rich would wrap the tables at 80
    plots = tmp_path / "plots"
    r = runner.invoke(
        app, ["ab", "report", "exp1", "--url", server, "--plot", str(plots), "--every", "40"]
    )
    assert r.exit_code == 0, r.output
    assert "experiment exp1" in r.output and "anytime-valid" in r.output
    assert "A (control)" in r.output and str(variants.count("A")) in r.output
    assert (plots / "exp1-B.png").stat().st_size > 0
    missing = runner.invoke(app, ["ab", "report", "nope", "--url", server])
    assert missing.exit_code == 1 and "unknown experiment 'nope'" in missing.output

    log = tmp_path / "log.parquet"
    r = runner.invoke(
        app, ["log", "export", "--out", str(log), "--policy", "default", "--url", server]
    )
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(log)
    assert len(df) == variants.count("A")
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    assert (df["variant"] == "A").all() and (df["experiment"] == "exp1").all()

    r = runner.invoke(
        app, ["ope", "--log", str(log), "--policy", "fixed:small", "--policy", "random"]
    )
    assert r.exit_code == 0, r.output
    assert "IPS" in r.output and "SNIPS" in r.output and "fixed:small" in r.output
