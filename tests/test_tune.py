"""`banditroute tune` on cases with a known answer: the grid, the scoring at the target
λ, the sensitivity table, and a config the service really loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from policies import make_policy
from service.settings import load_settings
from simulator.data import RoutingData
from simulator.tune import GridPoint, TuneResult, TuneRow, grid, run_tune, service_config
from tests.test_simulate import _table


def cheap_or_strong(n: int = 900, seed: int = 0) -> tuple[RoutingData, np.ndarray]:
    """Region 0: "cheap" and "strong" both right; region 1: only "strong". "strong" costs
    10x "cheap" (the cost unit). At target λ = 0.5 the best routing (cheap on region 0,
    strong on region 1) earns 0.5·0.95 + 0.5·0.5 = 0.725; routing with λ = 2 makes
    "strong" look worse than a wrong cheap answer, so it earns 0.5·0.95 − 0.5·0.05 = 0.45
    at the target."""
    rng = np.random.default_rng(seed)
    region = rng.integers(0, 2, n)
    x = np.zeros((n, 3))
    x[np.arange(n), region] = 1.0
    x[:, 2] = 1.0
    quality = np.column_stack([(region == 0).astype(float), np.ones(n)])
    data = RoutingData(
        name="cheap-or-strong",
        prompts=[f"p{i}" for i in range(n)],
        tasks=np.where(region == 0, "t0", "t1"),
        split=np.full(n, "train"),
        models=["cheap", "strong"],
        quality=quality,
        cost=np.tile([0.0001, 0.001], (n, 1)),
    )
    return data, x


def test_grid_is_the_cross_product_and_rejects_bad_axes() -> None:
    points = grid(["linucb", "vw-epsilon"], {"alpha": [0.1, 1.0], "gamma": [1.0]}, [32, 64], [0.2])
    # linucb: 2 alpha x 1 gamma x 2 dims; vw-epsilon: 3 default epsilons x 2 dims
    assert len(points) == 4 + 6
    eps = next(p for p in points if p.kind == "vw-epsilon")
    assert eps.policy_kind == "vw" and eps.policy_params()["exploration"] == "epsilon"
    with pytest.raises(ValueError, match="unknown policy 'ucb'"):
        grid(["ucb"], {}, [64], [0.2])
    with pytest.raises(ValueError, match="alpha"):
        grid(["linucb"], {"alpha": []}, [64], [0.2])
    with pytest.raises(ValueError, match="learn_lams"):
        grid(["linucb"], {}, [64], [])


def test_scores_at_the_target_lambda_and_picks_the_right_routing_lambda() -> None:
    data, x = cheap_or_strong()
    points = grid(["linucb"], {"alpha": [0.3], "gamma": [1.0]}, [3], [0.5, 2.0])
    result = run_tune(points, lambda dim: x, data, target_lam=0.5, cost_scale=0.001, seeds=2)
    by_lam = {r.point.learn_lam: r for r in result.rows}
    assert result.best().point.learn_lam == 0.5
    # learned quickly: near the best routing's 0.725 (exploration costs a little)
    assert by_lam[0.5].score.mean == pytest.approx(0.725, abs=0.04)
    # scored at the target, not at its own λ (which would give 0.5·0.8 − 0.5·0.2 = 0.3);
    # early tries of "strong" on region 0 cost it a little below 0.45
    assert 0.38 < by_lam[2.0].score.mean < 0.5


def _row(kind: str, alpha: float, dim: int, scores: list[float]) -> TuneRow:
    return TuneRow(GridPoint(kind, (("alpha", alpha),), dim, 0.2), scores, scores)


def test_sensitivity_table_by_hand() -> None:
    result = TuneResult(
        0.2,
        2,
        [
            _row("linucb", 0.1, 32, [0.4, 0.6]),  # mean 0.5
            _row("linucb", 0.1, 64, [0.2, 0.2]),  # 0.2
            _row("linucb", 1.0, 32, [0.3, 0.3]),  # 0.3
            _row("linucb", 1.0, 64, [0.1, 0.3]),  # 0.2
        ],
    )
    table = result.sensitivity()
    alpha = {e[1]: e for e in table["alpha"]}
    assert alpha[0.1][2] == pytest.approx(0.5) and alpha[0.1][3] == pytest.approx(0.35)
    assert alpha[1.0][2] == pytest.approx(0.3) and alpha[1.0][3] == pytest.approx(0.25)
    dims = {e[1]: e for e in table["projection_dim"]}
    assert dims[32][2] == pytest.approx(0.5) and dims[64][3] == pytest.approx(0.2)
    assert result.best().point.params == (("alpha", 0.1),)
    assert result.best().point.projection_dim == 32


def test_config_of_the_best_setting_loads_in_the_service(tmp_path: Path) -> None:
    row = TuneRow(GridPoint("vw-epsilon", (("epsilon", 0.1),), 32, 0.5), [0.5], [0.5])
    models = [{"name": "a", "input_per_m": 0.1, "output_per_m": 0.2}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(service_config(row, 0.2, models)))
    settings = load_settings(path)
    assert settings.projection_dim == 32
    p = settings.policies["default"]
    assert (p.kind, p.cost_weight) == ("vw", 0.5)
    assert p.params == {"epsilon": 0.1, "exploration": "epsilon"}
    policy = make_policy(p.kind, ["a", "b"], 32, cost_weight=p.cost_weight, **p.params)
    assert policy.params()["exploration"] == "epsilon"


@pytest.mark.slow
def test_tune_command_writes_report_and_config(tmp_path: Path) -> None:
    from simulator.cli import app

    data = _table(tmp_path, n=300)
    out = tmp_path / "tune"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--data",
            str(data),
            "--out",
            str(out),
            "--policies",
            "linucb,thompson",
            "--alpha",
            "0.1,1",
            "--v",
            "0.3",
            "--gamma",
            "1",
            "--projection-dims",
            "16",
            "--learn-lams",
            "0.2",
            "--seeds",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("tune.md", "tune.csv", "sensitivity.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    settings = load_settings(out / "config.yaml")
    assert settings.policies["default"].kind in ("linucb", "thompson")
    assert settings.projection_dim == 16
    assert (out / "tune.csv").read_text().count("\n") == 1 + 3  # header and 3 settings
    assert "## Sensitivity" in (out / "tune.md").read_text()
    bad = CliRunner().invoke(app, ["tune", "--data", str(data), "--alpha", "x"])
    assert bad.exit_code != 0 and "not a comma-separated list" in bad.output


def test_simulate_settings_overrides_parse_and_reject() -> None:
    from simulator.cli import parse_overrides

    got = parse_overrides(
        ["linucb.alpha=0.1", "vw.exploration=epsilon", "linucb.gamma=1"], {"linucb", "vw"}
    )
    assert got == {"linucb": {"alpha": 0.1, "gamma": 1.0}, "vw": {"exploration": "epsilon"}}
    for bad, why in (
        ("linucb.alpha", "POLICY.PARAM=VALUE"),
        ("alpha=1", "POLICY.PARAM"),
        ("ucb.alpha=1", "not a learning policy"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_overrides([bad], {"linucb"})
