"""The simulation run end to end on a synthetic table with a known answer, through the
real CLI command: every router, both protocols, OPE, scenarios, report and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.data import load_routing_data
from simulator.simulate import learning_spec, run_online, static_specs
from tests.test_replay_options import two_region_data

pytestmark = pytest.mark.slow


def _table(tmp_path: Path, n: int = 400) -> Path:
    """Two kinds of prompt; "cheap" is right on maths, "strong" on everything, at 10x
    the cost; "weak" is never right."""
    rng = np.random.default_rng(0)
    maths = rng.random(n) < 0.5
    prompts = [
        f"Solve the equation {i} x + 3 = 7" if m else f"Who wrote the novel number {i}?"
        for i, m in enumerate(maths)
    ]
    df = pd.DataFrame(
        {
            "sample_id": [str(i) for i in range(n)],
            "prompt": prompts,
            "eval_name": np.where(maths, "maths", "trivia"),
            "split": np.where(np.arange(n) < n * 3 // 4, "train", "test"),
            "cheap": maths.astype(float),
            "cheap|total_cost": 0.0001,
            "strong": 1.0,
            "strong|total_cost": 0.001,
            "weak": 0.0,
            "weak|total_cost": 0.0001,
        }
    )
    path = tmp_path / "synthetic.parquet"
    df.to_parquet(path)
    return path


def test_online_summary_ranks_the_routers() -> None:
    data, x = two_region_data(900)
    specs = [learning_spec("linucb"), *static_specs(data, 0.2, 0.001)]
    run = run_online(data, x, specs, seeds=2, lam=0.2, cost_scale=0.001)
    s = run.summary()
    assert run.warmup() == 300
    # "a" and "b" are each right on half the prompts: the best fixed model earns ~0.3;
    # the bandit learns the regions and beats it after warm-up
    assert s["linucb"]["reward_after_warmup"].mean > 0.7
    assert s["random"]["reward"].mean < 0.5
    best = next(n for n in s if n.startswith("best fixed"))
    assert s[best]["regret_best_fixed"].mean == pytest.approx(0.0)
    assert s["linucb"]["regret_best_fixed"].mean < 0


def test_simulate_command_writes_the_report(tmp_path: Path) -> None:
    data = _table(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(data),
            "--out",
            str(out),
            "--seeds",
            "2",
            "--policies",
            "linucb,vw-epsilon",
            "--supervised",
            "knn,ridge",
            "--lams",
            "0,1,5",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for section in ("Online protocol", "Deploy protocol", "Off-policy", "Scenario: drift"):
        assert section in report
    assert "### Greedy (exploration off)" in report and "| linucb (greedy) |" in report
    # three models: no strong/weak pair, so no APGR section
    assert "Strong/weak" not in report and not (out / "apgr.csv").exists()
    for png in (
        "regret.png",
        "frontier.png",
        "frontier-greedy.png",
        "share-linucb.png",
        "scenario-drift.png",
    ):
        assert (out / png).stat().st_size > 1000
    assert len(load_routing_data(data).models) == 3
