"""`banditroute tune` on cases with a known answer: the grid, the scoring at the target
λ, the sensitivity table, the held-out replay on the test split, and a config the
service really loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policies import make_policy
from service.settings import load_settings
from simulator.data import RoutingData, load_routing_data
from simulator.replay import seeded_order
from simulator.tune import (
    TABLE_SPLIT,
    GridPoint,
    TuneResult,
    TuneRow,
    grid,
    run_heldout,
    run_tune,
    score_point,
    service_config,
    split_rows,
)
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
    for name in ("tune.md", "tune.csv", "sensitivity.png", "config.yaml", "heldout.json"):
        assert (out / name).stat().st_size > 0
    settings = load_settings(out / "config.yaml")
    assert settings.policies["default"].kind in ("linucb", "thompson")
    assert settings.projection_dim == 16
    assert (out / "tune.csv").read_text().count("\n") == 1 + 3  # header and 3 settings
    report = (out / "tune.md").read_text()
    assert "## Result: held-out reward on the test split" in report
    assert "## Sensitivity (train split)" in report
    # the table's own split: 225 train rows and 75 test rows
    heldout = json.loads((out / "heldout.json").read_text())
    assert (heldout["train_rows"], heldout["test_rows"]) == (225, 75)
    assert {"linucb", "thompson", "only strong"} <= {r["router"] for r in heldout["routers"]}
    bad = CliRunner().invoke(app, ["tune", "--data", str(data), "--alpha", "x"])
    assert bad.exit_code != 0 and "not a comma-separated list" in bad.output


def shifted(
    test_a: np.ndarray, test_b: np.ndarray, n_train: int = 300
) -> tuple[RoutingData, RoutingData, np.ndarray, np.ndarray]:
    """Train rows: "a" always right, "b" never. Test rows: the planted qualities. Both
    models cost one cost unit (0.001 USD), so reward at λ is quality − λ. One constant
    context: the learners can only learn which model is better on average."""
    n = n_train + len(test_a)
    quality = np.vstack([np.tile([1.0, 0.0], (n_train, 1)), np.column_stack([test_a, test_b])])
    data = RoutingData(
        name="shifted",
        prompts=[f"p{i}" for i in range(n)],
        tasks=np.full(n, "t"),
        split=np.array(["train"] * n_train + ["test"] * len(test_a)),
        models=["a", "b"],
        quality=quality,
        cost=np.full((n, 2), 0.001),
    )
    train, test, how = split_rows(data)
    assert how == TABLE_SPLIT and len(train) == n_train
    return data.subset(train), data.subset(test), train, test


LAM, SCALE = 0.2, 0.001


def test_heldout_reward_is_earned_on_the_test_rows_not_the_tuned_ones() -> None:
    # planted: "a" is best on train, "b" on test (0/1 outcomes, means about 0.1 and 0.5)
    rng = np.random.default_rng(1)
    qa = (rng.random(300) < 0.1).astype(float)
    qb = (rng.random(300) < 0.5).astype(float)
    train, test, _, _ = shifted(qa, qb)
    x = np.ones((len(train) + len(test), 1))
    points = grid(
        ["linucb", "thompson"], {"alpha": [0.1, 1.0], "v": [0.1], "gamma": [1.0]}, [8], [LAM]
    )
    result = run_tune(
        points, lambda dim: x[: len(train)], train, target_lam=LAM, cost_scale=SCALE, seeds=2
    )
    held = run_heldout(result, lambda dim: x[len(train) :], train, test, cost_scale=SCALE)
    assert (held.train_rows, held.test_rows, held.seeds) == (300, 300, 2)
    assert held.warmup == 100  # a third of a stream shorter than 3,000, as simulate's rule

    # static routers by hand from the planted test rows; "best fixed" was chosen on train
    fixed = held.row("best fixed (a)")
    assert fixed.rewards == pytest.approx([qa.mean() - LAM] * 2)
    assert held.row("only b").reward.mean == pytest.approx(qb.mean() - LAM)
    for seed, after in enumerate(fixed.after_warmup):
        assert after == pytest.approx(qa[seeded_order(300, seed)][100:].mean() - LAM)
    assert not fixed.learns and fixed.train_score is None

    # each kind's chosen setting: what it earns replayed afresh on the test rows alone
    for kind in ("linucb", "thompson"):
        row, chosen = held.row(kind), result.best(kind)
        assert row.setting == chosen.point.label()
        again = score_point(
            chosen.point, x[len(train) :], test, target_lam=LAM, cost_scale=SCALE, seeds=2
        )
        assert row.rewards == pytest.approx(again.scores)
        # on train "a" is always right (≈ 1 − λ = 0.8); no router does better on test
        # than always "b" (≈ 0.3): a figure from the tuned rows would fail both
        assert row.train_score is not None and row.train_score.mean > 0.7
        assert row.reward.mean <= qb.mean() - LAM + 1e-9
        assert row.train_score.mean - row.reward.mean > 0.4
        # it learns the switch to "b": above the model chosen on train
        assert row.reward_after_warmup.mean > fixed.reward.mean + 0.2
    assert held.winner == result.best().point.kind
    assert held.as_dict()["winner"]["setting"] == result.best().point.label()


def test_heldout_learner_figure_is_exact_when_the_test_models_tie() -> None:
    # on test both models earn 0.3 on every row: any routing, exploration included, earns
    # exactly 0.3 − λ = 0.1 there, while on train the learner earns close to 0.8
    train, test, _, _ = shifted(np.full(150, 0.3), np.full(150, 0.3))
    x = np.ones((450, 2))
    points = grid(["linucb"], {"alpha": [0.3], "gamma": [1.0]}, [2], [0.5])
    result = run_tune(points, lambda dim: x[:300], train, target_lam=LAM, cost_scale=SCALE, seeds=3)
    held = run_heldout(result, lambda dim: x[300:], train, test, cost_scale=SCALE)
    row = held.row("linucb")
    assert row.rewards == pytest.approx([0.1] * 3)
    assert row.after_warmup == pytest.approx([0.1] * 3)
    assert row.train_score is not None and row.train_score.mean > 0.7


def test_split_rows_uses_the_tables_split_else_a_seeded_half() -> None:
    data, _ = cheap_or_strong(n=101)  # every row "train": no split
    train, test, how = split_rows(data)
    assert "50/50" in how and "seed 0" in how
    assert (len(train), len(test)) == (50, 51)
    assert not set(train) & set(test) and set(train) | set(test) == set(range(101))
    assert list(train) == sorted(train)
    again, _, _ = split_rows(data)
    other, _, _ = split_rows(data, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    labelled = replace(data, split=np.where(np.arange(101) % 4 == 0, "test", "train"))
    train, test, how = split_rows(labelled)
    assert how == TABLE_SPLIT and list(test) == list(range(0, 101, 4))
    with pytest.raises(ValueError, match="too few rows"):
        split_rows(data.subset(np.arange(1)))


def test_tune_command_reports_heldout_on_a_table_without_a_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI end to end, with made-up contexts in place of the embedding model."""
    import simulator.cli as cli

    rng = np.random.default_rng(2)
    n = 200
    cheap = (rng.random(n) < 0.6).astype(float)
    path = tmp_path / "nosplit.parquet"
    pd.DataFrame(
        {
            "prompt": [f"p{i}" for i in range(n)],
            "cheap": cheap,
            "cheap|total_cost": 0.0001,
            "strong": 1.0,
            "strong|total_cost": 0.001,
        }
    ).to_parquet(path)
    monkeypatch.setattr(
        cli,
        "_embedded",
        lambda data, limit, cache_dir: (load_routing_data(data), lambda dim: np.ones((n, 2))),
    )
    out = tmp_path / "tune"
    args = ["tune", "--data", str(path), "--out", str(out), "--policies", "linucb"]
    args += ["--alpha", "0.3", "--gamma", "1", "--projection-dims", "2", "--learn-lams", "0.2"]
    result = CliRunner().invoke(cli.app, [*args, "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "HELD-OUT" in result.output and "held-out reward on test" in result.output

    heldout = json.loads((out / "heldout.json").read_text())
    assert "50/50" in heldout["split"]
    assert (heldout["train_rows"], heldout["test_rows"]) == (100, 100)
    routers = {r["router"]: r for r in heldout["routers"]}
    assert heldout["winner"]["policy"] == "linucb" and routers["linucb"]["winner"]
    assert routers["linucb"]["train_score"] is not None
    # "only cheap" on the held-out half by hand: the table's own seeded split
    _, test, _ = split_rows(load_routing_data(path))
    scale = 0.001  # the priciest model's mean cost on train
    expected = cheap[test].mean() - 0.2 * 0.0001 / scale
    assert routers["only cheap"]["heldout_reward"]["mean"] == pytest.approx(expected)
    assert routers["only strong"]["heldout_reward"]["mean"] == pytest.approx(1 - 0.2)

    report = (out / "tune.md").read_text()
    assert report.index("## Result: held-out reward on the test split") < report.index(
        "## Tuning on the train split (selection only)"
    )
    rows = (out / "tune.csv").read_text().splitlines()
    assert rows[0].endswith("heldout_reward,heldout_low,heldout_high,heldout_after_warmup")
    assert f"{routers['linucb']['heldout_reward']['mean']:.6f}" in rows[1]
    assert "held-out reward on the test split" in (out / "config.yaml").read_text()


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
