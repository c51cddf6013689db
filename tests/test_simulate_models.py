"""Replaying a subset of a table's models (`--models`), the strong/weak metrics of a
two-model table (APGR, CPT), the greedy frozen evaluation, and `--jobs` (worker
processes give exactly the serial results)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from policies import Decision, make_policy
from service.embedder import Embedder
from simulator.cli import app
from simulator.data import RoutingData, load_routing_data
from simulator.embeddings import embed_texts
from simulator.replay import greedy_choice, replay_deploy, replay_online
from simulator.simulate import (
    DeployTask,
    RouterSpec,
    deploy_task,
    learning_spec,
    pair_metrics,
    run_deploy,
    run_online,
    static_specs,
    strong_share_curve,
)
from tests.test_replay_options import two_region_data

runner = CliRunner()


# --- selecting models -----------------------------------------------------------------


def _small() -> RoutingData:
    nan = np.nan
    return RoutingData(
        name="small",
        prompts=["p0", "p1", "p2", "p3"],
        tasks=np.array(["t"] * 4),
        split=np.array(["train", "train", "test", "test"]),
        models=["a", "b", "c"],
        quality=np.array([[1.0, 0.0, 1.0], [nan, nan, 1.0], [0.0, nan, 0.0], [1.0, 1.0, nan]]),
        cost=np.array([[0.1, 0.2, 0.3], [nan, nan, 0.3], [0.1, nan, 0.3], [0.1, 0.2, nan]]),
    )


def test_select_models_keeps_their_columns_and_rows_with_an_outcome() -> None:
    data, rows = _small().select_models(["b", "a"])
    assert data.models == ["b", "a"]
    # row 1 has an outcome only for "c": nothing to route there, so it is dropped
    assert rows.tolist() == [0, 2, 3]
    assert data.prompts == ["p0", "p2", "p3"]
    np.testing.assert_array_equal(data.quality[:, 1], [1.0, 0.0, 1.0])
    # b's missing outcome on row 2 stays missing (masked), never 0
    assert np.isnan(data.quality[1, 0]) and not data.available[1, 0]
    np.testing.assert_array_equal(data.cost[:, 0], [0.2, np.nan, 0.2])


def test_select_models_names_the_unknown_and_lists_the_known() -> None:
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['zz'\].*\['a', 'b', 'c'\]"):
        _small().select_models(["a", "zz"])
    with pytest.raises(ValueError, match="more than once"):
        _small().select_models(["a", "a"])
    with pytest.raises(ValueError, match="no model selected"):
        _small().select_models([])


def _table(tmp_path: Path, n: int = 240) -> Path:
    """Three models on maths and trivia prompts. A is right on all trivia and on 70% of
    the maths; B on all maths and 20% of trivia; C never. Some rows have no A and B
    outcome (dropped by --models A,B), some test rows no B outcome (outside the pair)."""
    rng = np.random.default_rng(0)
    maths = rng.random(n) < 0.5
    a = np.where(maths, rng.random(n) < 0.7, 1.0).astype(float)
    b = np.where(maths, 1.0, rng.random(n) < 0.2).astype(float)
    c = np.zeros(n)
    a_cost, b_cost, c_cost = np.full(n, 0.002), np.full(n, 0.0002), np.full(n, 0.0001)
    a[[5, 17]] = b[[5, 17]] = np.nan
    a_cost[[5, 17]] = b_cost[[5, 17]] = np.nan
    b[[200, 230]] = b_cost[[200, 230]] = np.nan
    c[[3, 201]] = c_cost[[3, 201]] = np.nan
    df = pd.DataFrame(
        {
            "sample_id": [str(i) for i in range(n)],
            "prompt": [
                f"Solve the equation {i} x + 3 = 7" if m else f"Who wrote the novel number {i}?"
                for i, m in enumerate(maths)
            ],
            "eval_name": np.where(maths, "maths", "trivia"),
            "split": np.where(np.arange(n) < n * 3 // 4, "train", "test"),
            "A": a,
            "A|total_cost": a_cost,
            "B": b,
            "B|total_cost": b_cost,
            "C": c,
            "C|total_cost": c_cost,
        }
    )
    path = tmp_path / "three.parquet"
    df.to_parquet(path)
    return path


def _oracle_apgr(path: Path) -> float:
    """The oracle ordering's APGR, by hand: on the test rows with both outcomes, sort by
    the true gain of the strong model over the weak, send the top k to strong."""
    df = pd.read_parquet(path)
    test = df[(df.split == "test") & df.A.notna() & df.B.notna()]
    qa, qb = test.A.to_numpy(), test.B.to_numpy()
    qs, qw = (qa, qb) if qa.mean() > qb.mean() else (qb, qa)
    gain = np.sort(qs - qw)[::-1]
    n = len(gain)
    quality = qw.mean() + np.concatenate(([0.0], np.cumsum(gain))) / n
    pgr = (quality - qw.mean()) / (qs.mean() - qw.mean())
    f = np.arange(n + 1) / n
    return float(np.sum(np.diff(f) * (pgr[1:] + pgr[:-1]) / 2))


def test_unknown_model_is_a_bad_parameter_naming_it(tmp_path: Path) -> None:
    data = _table(tmp_path)
    for command in ("simulate", "replay"):
        res = runner.invoke(
            app,
            [command, "--data", str(data), "--models", "A,nope", "--cache-dir", str(tmp_path)],
            env={"COLUMNS": "300"},
        )
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert "--models" in text
        assert "unknown model(s) ['nope']" in text and "['A', 'B', 'C']" in text


# --- strong/weak curves ------------------------------------------------------------------


def test_the_share_curve_splits_ties_at_random_in_expectation() -> None:
    qs = np.array([1.0, 1.0, 0.0, 1.0])
    qw = np.array([0.0, 1.0, 0.0, 0.0])
    # every prompt tied: the straight line of the random router, APGR 0.5
    f, q = strong_share_curve(np.zeros(4), qs, qw)
    assert f.tolist() == [0.0, 1.0]
    assert pair_metrics(f, q, qw.mean(), qs.mean())["apgr"] == pytest.approx(0.5)
    # the right order: the two gains first; PGR 0, 1/2, 1, 1, 1 at k = 0..4
    f, q = strong_share_curve(np.array([3.0, 0.0, 1.0, 2.0]), qs, qw)
    m = pair_metrics(f, q, qw.mean(), qs.mean())
    assert m["apgr"] == pytest.approx((0.25 + 0.75 + 1 + 1) / 4)
    assert m["cpt50"] == pytest.approx(0.25) and m["cpt80"] == pytest.approx(0.4)
    # the worst order: the gains last
    f, q = strong_share_curve(np.array([0.0, 3.0, 2.0, 1.0]), qs, qw)
    assert pair_metrics(f, q, qw.mean(), qs.mean())["apgr"] == pytest.approx(1 / 4)


# --- greedy frozen evaluation ------------------------------------------------------------


def _cheap_or_strong(n: int = 1200) -> tuple[RoutingData, np.ndarray]:
    """Region 0: "cheap" (1/10 of the price) and "strong" both right; region 1: only
    "strong". At lam = 0.5 (cost scale = strong's price) the best reward is cheap's
    0.95 in region 0 and strong's 0.5 in region 1."""
    data, x = two_region_data(n, seed=3)
    region = (data.tasks == "t1").astype(int)
    quality = np.stack([1.0 - region, np.ones(n)], axis=1)
    cost = np.tile([0.0001, 0.001], (n, 1))
    return RoutingData(
        "cheap-strong", data.prompts, data.tasks, data.split, ["cheap", "strong"], quality, cost
    ), x


def test_greedy_frozen_evaluation_is_the_argmax_of_expected_reward() -> None:
    data, x = _cheap_or_strong()
    lam, scale = 0.5, 0.001
    # a wide epsilon floor: the policy as deployed often serves the wrong model
    policy = make_policy(
        "linucb", data.models, 3, seed=0, alpha=0.0, epsilon=0.5, cost_weight=lam, cost_scale=scale
    )
    _, deployed = replay_deploy(policy, x, data, lam=lam, cost_scale=scale, seed=0)
    test = np.flatnonzero(data.split == "test")
    greedy = replay_online(
        policy, x, data, test, lam=lam, cost_scale=scale, learn=False, greedy=True
    )
    # by hand: expected quality - lam * expected cost / scale, from the frozen estimates
    by_hand = []
    for i in test:
        d = policy.choose(x[i], data.models, lam)
        assert d.expected_quality is not None and d.expected_cost is not None
        score = [d.expected_quality[m] - lam * d.expected_cost[m] / scale for m in data.models]
        by_hand.append(int(np.argmax(score)))
    np.testing.assert_array_equal(greedy.chosen, by_hand)
    np.testing.assert_array_equal(greedy.chosen, (data.tasks[test] == "t1").astype(int))
    assert (greedy.propensity == 1.0).all()
    assert (deployed.chosen != greedy.chosen).mean() > 0.1
    assert greedy.reward.mean() > deployed.reward.mean()
    # the same through the simulator's deploy task
    spec = RouterSpec("linucb", "linucb", {"alpha": 0.0, "epsilon": 0.5}, True)
    out = deploy_task(DeployTask(spec, lam, 0, scale), data, x, None)
    assert out.greedy == pytest.approx((float(greedy.cost.mean()), 1.0))
    assert out.deployed == pytest.approx((float(deployed.cost.mean()), deployed.quality.mean()))


def test_greedy_choice_without_expected_values_takes_the_most_probable_model() -> None:
    d = Decision("b", 0.2, {"a": 0.7, "b": 0.2, "c": 0.1})
    assert greedy_choice(d, 0.5, 1.0) == "a"
    d = Decision("a", 0.5, {"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.8}, {"a": 2.0, "b": 0.0})
    assert greedy_choice(d, 0.0, 1.0) == "a"
    assert greedy_choice(d, 0.5, 4.0) == "b"  # 0.9 - 0.5 * 2 / 4 < 0.8


# --- jobs -----------------------------------------------------------------------------


def test_worker_processes_give_the_serial_results() -> None:
    full, x = two_region_data(400)
    data, rows = full.select_models(["a", "b"])
    x = x[rows]
    specs = [learning_spec("linucb"), learning_spec("vw"), *static_specs(data, 0.2, 0.001)]
    kw = {"seeds": 2, "lam": 0.2, "cost_scale": 0.001}
    serial = run_online(data, x, specs, jobs=1, **kw)  # type: ignore[arg-type]
    forked = run_online(data, x, specs, jobs=2, **kw)  # type: ignore[arg-type]
    assert list(serial.runs) == list(forked.runs)
    for name, reps in serial.runs.items():
        for a, b in zip(reps, forked.runs[name], strict=True):
            for field in ("rows", "chosen", "propensity", "reward", "rewards_all"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    learning = specs[:2]
    dkw = {"lams": [0.0, 1.0], "seeds": 2, "cost_scale": 0.001, "pair_lam": 0.2}
    d1 = run_deploy(data, x, learning, ["ridge"], jobs=1, **dkw)  # type: ignore[arg-type]
    d2 = run_deploy(data, x, learning, ["ridge"], jobs=2, **dkw)  # type: ignore[arg-type]
    assert d1.points == d2.points and d1.greedy == d2.greedy
    assert d1.pair is not None and d2.pair is not None
    assert set(d1.pair.scores) == {"linucb", "vw", "ridge"}
    for name, per_seed in d1.pair.scores.items():
        for a, b in zip(per_seed, d2.pair.scores[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert d1.pair.table() == d2.pair.table()
    # VW reports no expected quality: its ranking falls back, and says so
    assert d1.pair.ranked_by["linucb"] == "expected quality"
    assert d1.pair.ranked_by["vw"].startswith("P(strong)")


# --- end to end through the CLI -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_model_runs(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> dict:
    """`simulate --models A,B` on the three-model table, with --jobs 1 and --jobs 2.
    The prompts are embedded once beforehand into the runs' cache."""
    tmp = tmp_path_factory.mktemp("two-models")
    data = _table(tmp)
    cache = tmp / "cache"
    embed_texts(load_routing_data(data).prompts, embedder, cache_dir=cache, progress=False)
    outs = {}
    for jobs in (1, 2):
        out = tmp / f"out-jobs{jobs}"
        res = runner.invoke(
            app,
            [
                "simulate",
                "--data",
                str(data),
                "--models",
                "A,B",
                "--out",
                str(out),
                "--seeds",
                "2",
                "--policies",
                "linucb,vw",
                "--supervised",
                "knn,ridge",
                "--lams",
                "0,0.5,2",
                "--cache-dir",
                str(cache),
                "--jobs",
                str(jobs),
            ],
        )
        assert res.exit_code == 0, res.output
        outs[jobs] = out
    return {"data": data, "outs": outs}


def _apgr_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "apgr.csv").open() as f:
        return {row["router"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_apgr_of_random_and_oracle_end_to_end(two_model_runs: dict) -> None:
    out = two_model_runs["outs"][2]
    rows = _apgr_rows(out)
    assert set(rows) == {"random", "oracle", "linucb", "vw", "knn", "ridge"}
    assert float(rows["random"]["apgr"]) == pytest.approx(0.5, abs=1e-12)
    assert float(rows["random"]["cpt50"]) == pytest.approx(0.5, abs=1e-12)
    oracle = _oracle_apgr(two_model_runs["data"])
    assert oracle > 0.6  # far from random: the check below can tell them apart
    assert float(rows["oracle"]["apgr"]) == pytest.approx(oracle, abs=1e-12)
    # the bandits over two seeds: an interval around the mean
    assert float(rows["linucb"]["apgr_low"]) <= float(rows["linucb"]["apgr"])
    assert rows["linucb"]["fits"] == "2" and rows["knn"]["fits"] == "1"
    report = (out / "report.md").read_text()
    assert "Strong/weak routing: A (strong) vs B (weak)" in report
    assert "| C " not in report and "only C" not in report
    assert "### Greedy (exploration off)" in report and "| linucb (greedy) |" in report
    assert (out / "frontier-greedy.png").stat().st_size > 1000
    # 240 prompts less the two with neither an A nor a B outcome
    assert "238 prompts, 2 models" in report


@pytest.mark.slow
def test_jobs_two_gives_the_serial_report(two_model_runs: dict) -> None:
    one, two = (two_model_runs["outs"][j] for j in (1, 2))
    assert (one / "report.md").read_text() == (two / "report.md").read_text()
    assert (one / "apgr.csv").read_text() == (two / "apgr.csv").read_text()
    assert "| linucb |" in (one / "report.md").read_text()


@pytest.mark.slow
def test_replay_command_takes_models_and_jobs(tmp_path: Path, embedder: Embedder) -> None:
    data = _table(tmp_path)
    cache = tmp_path / "cache"
    embed_texts(load_routing_data(data).prompts, embedder, cache_dir=cache, progress=False)
    res = runner.invoke(
        app,
        [
            "replay",
            "--data",
            str(data),
            "--models",
            "B,A",
            "--seeds",
            "2",
            "--jobs",
            "2",
            "--policies",
            "linucb,random,best-fixed",
            "--cache-dir",
            str(cache),
        ],
        env={"COLUMNS": "300"},
    )
    assert res.exit_code == 0, res.output
    assert "238 prompts, 2 models" in res.output
    assert "best-fixed (" in res.output
