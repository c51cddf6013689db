"""The simulator's budget scenarios (simulator/budgets.py): the service's pacer holds a
spend target in a replay, a price cut moves traffic to the cut model, and the
`budgets` command runs end to end, all on small synthetic tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.budgets.pacer import Pacer, PacerTarget
from simulator.budgets import (
    HYBRID,
    BudgetTask,
    Change,
    PacedResult,
    PriceCut,
    budget_task,
    recovery_steps,
    reference,
    replay_paced,
    rolling,
    run_budgets,
    summarise_change,
)
from simulator.data import RoutingData
from simulator.replay import cost_scale_of, replay_online, seeded_order
from simulator.scenarios import Scenario
from simulator.simulate import build

MODELS = ["cheap", "mid", "best"]
COSTS = np.array([1e-4, 5e-4, 2e-3])  # USD per call


def synthetic(n: int = 2400, seed: int = 0) -> tuple[RoutingData, np.ndarray]:
    """Three models, dearer ones better where the context's first coordinate is
    positive (hard prompts) and all alike elsewhere, so spend falls smoothly as λ
    rises. Returns the table and its contexts, shape (n, 5) (4 features and a bias)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    hard = x[:, 0] > 0
    p = np.where(hard[:, None], [0.3, 0.55, 0.9], [0.7, 0.72, 0.75])
    quality = (rng.random((n, 3)) < p).astype(np.float64)
    # prompt lengths vary the cost by ±20%, as token counts do
    cost = COSTS[None, :] * rng.uniform(0.8, 1.2, size=(n, 1))
    data = RoutingData(
        name="synthetic",
        prompts=[f"prompt {i}" for i in range(n)],
        tasks=np.where(hard, "hard", "easy"),
        split=np.full(n, "train"),
        models=list(MODELS),
        quality=quality,
        cost=cost,
    )
    contexts = np.hstack([x / np.linalg.norm(x, axis=1, keepdims=True), np.ones((n, 1))])
    return data, contexts


def test_fixed_lambda_replays_exactly_like_the_simulators_online_replay() -> None:
    data, X = synthetic(600)
    scale = cost_scale_of(data)
    order = seeded_order(len(data), 3)
    ours = replay_paced(
        build(HYBRID, data, X.shape[1], 3, 0.3, scale),
        X,
        data,
        Scenario().stream(data, order),
        pacer=None,
        lam=0.3,
        seed=3,
    )
    theirs = replay_online(
        build(HYBRID, data, X.shape[1], 3, 0.3, scale),
        X,
        data,
        order,
        lam=0.3,
        cost_scale=scale,
        seed=3,
    )
    np.testing.assert_array_equal(ours.chosen, theirs.chosen)
    np.testing.assert_array_equal(ours.lam, np.full(len(order), 0.3))


def test_paced_spend_lands_on_the_target_after_warm_up() -> None:
    data, X = synthetic()
    _, best_cost = reference(data)
    target = 0.5 * best_cost  # USD per call; λ = 0 spends about 0.7 of best_cost here
    res = budget_task(BudgetTask(0, 0.2, cost_scale_of(data), 1000 * target, 0.02), data, X, None)
    realised = res.cost[800:].mean()
    assert abs(realised / target - 1) < 0.02
    # λ moved: the pacer drove the routing, not the starting value
    assert res.lam.std() > 0.01


def test_paced_lambda_is_what_the_pacer_says_after_each_outcome() -> None:
    """The λ a decision routes with is the pacer's after the outcomes applied before it
    (immediate feedback: every earlier step), as the service's learner sets it."""
    data, X = synthetic(300)
    target = PacerTarget("usd_per_1k", 0.5)
    res = budget_task(BudgetTask(1, 0.2, cost_scale_of(data), 0.5, 0.02), data, X, None)
    pacer = Pacer(target, lam=0.2, step=0.02)
    for t in range(len(res.cost)):
        assert res.lam[t] == pytest.approx(pacer.lam)
        pacer.observe(float(res.cost[t]), MODELS[res.chosen[t]], float(t))


def test_delayed_feedback_holds_lambda_between_batches() -> None:
    from simulator.feedback import FeedbackSpec

    data, X = synthetic(400)
    res = budget_task(
        BudgetTask(0, 0.2, cost_scale_of(data), 0.5, 0.02, feedback=FeedbackSpec(batch=50)),
        data,
        X,
        None,
    )
    # λ changes only when a batch is applied: at most one change per 50 decisions
    assert np.count_nonzero(np.diff(res.lam)) <= len(res.lam) // 50


def test_price_cut_applies_from_its_step_to_its_model_only() -> None:
    data, _ = synthetic(100)
    stream = Change(cut=PriceCut("best", 0.5, 0.4)).stream(data, np.arange(100))
    assert stream.switch == 40
    np.testing.assert_allclose(stream.cost[:40], data.cost[:40])
    np.testing.assert_allclose(stream.cost[40:, 2], 0.5 * data.cost[40:, 2])
    np.testing.assert_allclose(stream.cost[40:, :2], data.cost[40:, :2])
    with pytest.raises(ValueError, match="factor"):
        PriceCut("best", 0.0)


def test_price_cut_raises_the_cut_models_share_and_spend_returns_to_target() -> None:
    data, X = synthetic(3000)
    run = run_budgets(
        data,
        X,
        cost_scale=cost_scale_of(data),
        fractions=(),
        lams=(),
        seeds=2,
        changes=["price-cut"],
    )
    s = summarise_change(run, "price-cut")
    assert s.model == "best"
    assert s.share_after.mean > s.share_before.mean + 0.05
    assert abs(s.spend_after.mean / s.target - 1) < 0.03
    assert s.recovery is not None and s.recovery <= 1000


def test_recovery_steps_known_answer() -> None:
    n, switch = 3000, 1000
    cost = np.full(n, 1.0)
    cost[switch : switch + 300] = 0.5  # off target for 300 queries after the change
    run = PacedResult(
        0, ["a"], np.zeros(n, dtype=np.int64), np.zeros(n), cost, np.zeros(n), switch=switch
    )
    # from k on, the spend to the end is 1 - 0.5 (300 - k) / (2000 - k): within 2% from
    # k = 229.2, so 230 on a grid of 10
    assert recovery_steps([run], 1.0, min_window=500, every=10) == 230
    assert recovery_steps([run], 1.0, min_window=500, tol=0.1) == 0
    assert recovery_steps([run], 1.0, min_window=2500) is None


def test_rolling_is_a_trailing_mean() -> None:
    np.testing.assert_allclose(rolling(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])


def _write_table(path: Path, data: RoutingData) -> None:
    cols: dict[str, object] = {
        "sample_id": np.arange(len(data)),
        "prompt": data.prompts,
        "eval_name": data.tasks,
        "split": data.split,
    }
    for k, m in enumerate(data.models):
        cols[m] = data.quality[:, k]
        cols[f"{m}|total_cost"] = data.cost[:, k]
    pd.DataFrame(cols).to_parquet(path)


def _seed_cache(cache: Path, prompts: list[str]) -> None:
    """Embeddings for `prompts` already in the cache, so the command loads no model."""
    from service.embedder import Embedder
    from simulator.embeddings import _store_path, text_key

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(prompts), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = _store_path(cache, Embedder())
    path.parent.mkdir(parents=True)
    np.savez(path, keys=np.asarray([text_key(p) for p in prompts], dtype="U64"), vectors=vectors)


def test_budgets_command_smoke(tmp_path: Path) -> None:
    from simulator.cli import app

    data, _ = synthetic(300)
    table = tmp_path / "synthetic.parquet"
    _write_table(table, data)
    _seed_cache(tmp_path / "cache", data.prompts)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "budgets",
            "--data",
            str(table),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--seeds",
            "2",
            "--lams",
            "0,0.5,3",
            "--projection-dim",
            "8",
            "--jobs",
            "1",
            "--prefix",
            "syn",
            "--step",
            "0.02,0.005",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "paced spend after warm-up" in res.output
    figures = json.loads((out / "budgets.json").read_text())
    assert [c["fraction"] for c in figures["compliance"]] == [0.25, 0.5, 0.75]
    assert {c["name"] for c in figures["changes"]} == {"price-cut", "quality-drop", "new-model"}
    for name in ("spend", "price-cut", "quality-drop", "new-model"):
        assert (out / f"syn-budget-{name}.png").stat().st_size > 0
    # a second step: its own report beside the first, on the same fixed-λ grid
    other = json.loads((out / "step-0.005" / "budgets.json").read_text())
    assert other["step"] == 0.005 and other["fixed"] == figures["fixed"]
    assert other["changes"] == []


def test_budgets_command_rejects_a_bad_grid(tmp_path: Path) -> None:
    from simulator.cli import app

    data, _ = synthetic(30)
    table = tmp_path / "synthetic.parquet"
    _write_table(table, data)
    res = CliRunner().invoke(app, ["budgets", "--data", str(table), "--lams", "0,x"])
    assert res.exit_code == 2
    assert "--lams" in res.output
