"""Cascades as arms from logged outcomes (simulator/cascades.py) and privacy restrictions
on logged data (simulator/privacy.py): hand-computed escalations, the seeded confidence,
missing outcomes, sensitive rows never routed off the local models, and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from simulator.cascades import (
    Cascade,
    cascade_steps,
    confidence,
    default_chains,
    evaluate,
    family,
    parse_chains,
    run_cascades,
    static_cascades,
    with_cascades,
)
from simulator.cli import app
from simulator.data import RoutingData
from simulator.privacy import (
    PrivacyTask,
    default_local,
    is_open_weight,
    parse_local,
    privacy_replay,
    privacy_steps,
    restrict,
    run_privacy,
    sensitive_rows,
)
from simulator.replay import replay_online
from simulator.simulate import learning_spec, run_deploy, run_online

nan = np.nan


def _table(quality: list[list[float]], cost: list[list[float]], models: list[str]) -> RoutingData:
    n = len(quality)
    return RoutingData(
        name="tiny",
        prompts=[f"p{i}" for i in range(n)],
        tasks=np.full(n, "t"),
        split=np.where(np.arange(n) < n // 2, "train", "test"),
        models=models,
        quality=np.array(quality, dtype=float),
        cost=np.array(cost, dtype=float),
    )


def _tiny() -> RoutingData:
    """a cheap (0.1), b strong (1.0), c strongest (3.0); a's quality 1, 0, 1, 0.5, 0.2."""
    return _table(
        [[1, 1, 1], [0, 1, 0], [1, 0, 1], [0.5, 1, 1], [0.2, 0.6, 1]],
        [[0.1, 1, 3]] * 5,
        ["a", "b", "c"],
    )


# --- hand-computed cascades -----------------------------------------------------------


def test_noise_zero_escalates_exactly_below_the_threshold() -> None:
    data = _tiny()
    conf = confidence(data, 0.0, seed=0)
    np.testing.assert_array_equal(conf, data.quality)  # σ = 0: c = q
    o = evaluate(data, Cascade(("a", "b"), 0.5), conf)
    # escalates where q_a < 0.5: rows 1 and 4 (row 3's 0.5 is not below 0.5)
    np.testing.assert_array_equal(o.escalated, [False, True, False, False, True])
    np.testing.assert_allclose(o.quality, [1, 1, 1, 0.5, 0.6])  # the final answer's
    np.testing.assert_allclose(o.cost, [0.1, 1.1, 0.1, 0.1, 1.1])  # the calls made
    o = evaluate(data, Cascade(("a", "b"), 0.7), conf)
    np.testing.assert_allclose(o.quality, [1, 1, 1, 1, 0.6])
    np.testing.assert_allclose(o.cost, [0.1, 1.1, 0.1, 1.1, 1.1])
    # threshold 0 never escalates: the cascade is its first model
    o = evaluate(data, Cascade(("a", "b"), 0.0), conf)
    np.testing.assert_allclose(o.quality, data.quality[:, 0])
    np.testing.assert_allclose(o.cost, data.cost[:, 0])


def test_a_chain_escalates_from_each_model_in_turn() -> None:
    data = _tiny()
    o = evaluate(data, Cascade(("a", "b", "c"), 0.7), confidence(data, 0.0, seed=0))
    # row 1: a 0 -> b 1 (stops); row 3: a 0.5 -> b 1; row 4: a 0.2 -> b 0.6 -> c 1
    np.testing.assert_array_equal(o.calls, [1, 2, 1, 2, 3])
    np.testing.assert_allclose(o.quality, [1, 1, 1, 1, 1])
    np.testing.assert_allclose(o.cost, [0.1, 1.1, 0.1, 1.1, 4.1])


def test_with_cascades_adds_columns_after_the_models() -> None:
    data = _tiny()
    cascades = family([("a", "b"), ("a", "b", "c")], [0.5, 0.7])
    assert [c.name for c in cascades] == ["a>b@0.5", "a>b@0.7", "a>b>c@0.5", "a>b>c@0.7"]
    aug, calls = with_cascades(data, cascades, 0.0, seed=0)
    assert aug.models == ["a", "b", "c", *(c.name for c in cascades)]
    np.testing.assert_array_equal(aug.quality[:, :3], data.quality)
    np.testing.assert_allclose(aug.cost[:, 3], [0.1, 1.1, 0.1, 0.1, 1.1])
    assert calls.shape == (5, 4) and calls[4, 3] == 3
    with pytest.raises(ValueError, match="clash"):
        with_cascades(data, [cascades[0], cascades[0]], 0.0, seed=0)


def test_cascade_validation() -> None:
    with pytest.raises(ValueError, match="at least two"):
        Cascade(("a",), 0.5)
    with pytest.raises(ValueError, match="once"):
        Cascade(("a", "a"), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Cascade(("a", "b"), 1.5)
    with pytest.raises(ValueError, match="noise"):
        confidence(_tiny(), -0.1, seed=0)


# --- the seeded confidence ------------------------------------------------------------------


def test_confidence_is_seeded_and_per_model() -> None:
    data = _tiny()
    c1, c2 = confidence(data, 0.25, seed=3), confidence(data, 0.25, seed=3)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, confidence(data, 0.25, seed=4))
    assert ((c1 >= 0) & (c1 <= 1)).all()
    # a model's draws do not depend on the other columns, nor on later rows
    narrowed, _ = data.select_models(["c", "a"])
    np.testing.assert_array_equal(confidence(narrowed, 0.25, seed=3), c1[:, [2, 0]])
    np.testing.assert_array_equal(confidence(data.subset(np.arange(3)), 0.25, seed=3), c1[:3])


def test_moderate_noise_on_binary_quality_is_a_noisy_correctness_signal() -> None:
    """σ = 0.25, threshold 0.5: a wrong answer escalates with P(ε < 0.5) = Φ(2), a right
    one with Φ(-2); the clip at 0 and 1 does not move either side of 0.5."""
    n = 20_000
    rng = np.random.default_rng(0)
    qa = (rng.random(n) < 0.6).astype(float)
    data = _table(np.column_stack([qa, np.ones(n)]).tolist(), [[0.1, 1.0]] * n, ["a", "b"])
    o = evaluate(data, Cascade(("a", "b"), 0.5), confidence(data, 0.25, seed=0))
    phi2 = NormalDist().cdf(2.0)
    assert o.escalated[qa == 0].mean() == pytest.approx(phi2, abs=0.01)
    assert o.escalated[qa == 1].mean() == pytest.approx(1 - phi2, abs=0.01)


# --- missing outcomes ---------------------------------------------------------------------


def test_missing_outcomes_stay_masked() -> None:
    data = _table(
        [[nan, 1], [0, nan], [1, nan], [0, 1]],
        [[nan, 1], [0.1, nan], [0.1, nan], [0.1, 1]],
        ["a", "b"],
    )
    aug, calls = with_cascades(data, [Cascade(("a", "b"), 0.5)], 0.0, seed=0)
    # row 0: no first answer; row 1: escalates to a model with no outcome; row 2: a
    # answers without escalating, so b's missing outcome does not matter
    np.testing.assert_array_equal(aug.available[:, 2], [False, False, True, True])
    np.testing.assert_allclose(aug.quality[2:, 2], [1, 1])
    np.testing.assert_allclose(aug.cost[2:, 2], [0.1, 1.1])
    np.testing.assert_array_equal(calls[:, 0], [0, 0, 1, 2])
    # the replay never offers a cascade where it has no outcome
    policy = learning_spec("linucb")
    from simulator.simulate import build

    run = replay_online(
        build(policy, aug, 1, 0, 0.0, 1.0),
        np.ones((4, 1)),
        aug,
        np.arange(4),
        lam=0.0,
        cost_scale=1.0,
    )
    for row, k in zip(run.rows, run.chosen, strict=True):
        assert aug.available[row, k]


def test_static_cascades_skip_rows_without_an_outcome() -> None:
    data = _table(
        [[1, 1], [0, 1], [nan, 1], [0, nan], [1, 0], [0, 1]],
        [[0.1, 1], [0.1, 1], [nan, 1], [0.1, nan], [0.1, 1], [0.1, 1]],
        ["a", "b"],
    )
    # test rows 3, 4, 5: row 3 escalates to a missing b; rows 4 (a right) and 5 (escalates)
    (s,) = static_cascades(data, [Cascade(("a", "b"), 0.5)], 0.0, seeds=2)
    assert s.quality.mean == pytest.approx(1.0)
    assert s.cost.mean == pytest.approx((0.1 + 1.1) / 2)
    assert s.escalated.mean == pytest.approx(0.5)
    assert s.quality.low == s.quality.high  # σ = 0: every seed alike


def test_static_cascades_are_the_bandits_cascade_arms_on_test() -> None:
    data, _ = _cheap_strong(300)
    cascade = Cascade(("cheap", "strong"), 0.5)
    (s,) = static_cascades(data, [cascade], 0.4, seeds=1)
    aug, calls = with_cascades(data, [cascade], 0.4, seed=0)
    test = data.split == "test"
    assert s.quality.mean == pytest.approx(aug.quality[test, 2].mean())
    assert s.cost.mean == pytest.approx(aug.cost[test, 2].mean())
    assert s.escalated.mean == pytest.approx((calls[test, 0] > 1).mean())


# --- which cascades ---------------------------------------------------------------------


def test_default_chains_and_parsing() -> None:
    data = _table(
        [[0.5, 0.9, 0.7, 0.4]] * 4,
        [[0.1, 2.0, 0.5, 0.3]] * 4,
        ["cheap", "strong", "mid", "worse"],
    )
    # "worse" costs between cheap and strong but answers worse than cheap: not a mid
    assert default_chains(data) == [("cheap", "strong"), ("cheap", "mid", "strong")]
    assert parse_chains("auto", data) == default_chains(data)
    assert parse_chains("cheap>strong, mid>strong", data) == [
        ("cheap", "strong"),
        ("mid", "strong"),
    ]
    with pytest.raises(ValueError, match="unknown model"):
        parse_chains("cheap>zz", data)
    with pytest.raises(ValueError, match="at least two"):
        parse_chains("cheap", data)
    one = _table([[0.9, 0.5]] * 2, [[0.1, 1.0]] * 2, ["best", "other"])
    with pytest.raises(ValueError, match="both the cheapest and the strongest"):
        default_chains(one)


# --- the bandit over models and cascades -------------------------------------------------


def _cheap_strong(n: int = 600) -> tuple[RoutingData, np.ndarray]:
    """ "cheap" right on 70% of prompts, "strong" on all of them at 10x the cost."""
    rng = np.random.default_rng(1)
    right = (rng.random(n) < 0.7).astype(float)
    data = RoutingData(
        name="cheap-strong",
        prompts=[f"p{i}" for i in range(n)],
        tasks=np.full(n, "t"),
        split=np.where(np.arange(n) < 2 * n // 3, "train", "test"),
        models=["cheap", "strong"],
        quality=np.column_stack([right, np.ones(n)]),
        cost=np.column_stack([np.full(n, 0.0001), np.full(n, 0.001)]),
    )
    return data, np.ones((n, 1))


def test_run_cascades_a_bandit_over_models_and_cascades() -> None:
    data, x = _cheap_strong()
    spec = learning_spec("linucb")
    lams = [0.0, 0.5, 5.0]
    base = run_deploy(data, x, [spec], [], lams=lams, seeds=1, cost_scale=0.001)
    cascades = family([("cheap", "strong")], [0.5, 0.9])
    steps: list[int] = []
    run = run_cascades(
        data,
        x,
        [spec],
        base,
        cascades,
        noise=0.0,
        lams=lams,
        seeds=1,
        cost_scale=0.001,
        sensitivity=(0.4,),
        progress=steps.append,
    )
    assert sum(steps) == cascade_steps(data, 1, lams, 1)
    assert set(run.points) == {"linucb + cascades", "linucb + cascades (greedy)"}
    assert run.arms == ["cheap", "strong", "cheap>strong@0.5", "cheap>strong@0.9"]
    ref, ref_cost, ref_q, beat = run.reference()
    assert ref == "strong" and ref_q == 1.0 and beat == ref_cost
    # noise 0 on 0/1 quality: escalation exactly when cheap is wrong, so the cascade
    # alone answers everything right at 0.1 + 0.3 of strong's cost
    best = run.cheapest_static()
    assert best is not None and best.quality.mean == 1.0
    assert 100 * best.cost.mean / ref_cost == pytest.approx(10 + 100 * 0.3, abs=6)
    assert set(run.sensitivity) == {0.0, 0.4}
    # rewards at λ = 0.5: cheap 0.7 - 0.05, strong 1 - 0.5, cheap>strong@0.5 1 - 0.2:
    # the greedy learner routes (almost) everything to a cascade, at strong's quality
    # for less than its cost
    assert run.shares["linucb + cascades"][1][2:].sum() > 0.9
    r = run.reach("linucb + cascades (greedy)")
    assert r.frontier_pct < 100 and r.seeds_below == 1 and r.seeds == 1
    # the plain bandit over the models alone reaches quality 1 only by calling strong
    plain = run.reach("linucb (greedy)", greedy=True)
    assert not plain.frontier_pct < 100


# --- privacy ----------------------------------------------------------------------------


def test_sensitive_rows_are_seeded_and_restrict_hides_non_local_models() -> None:
    s = sensitive_rows(10_000, 0.2, seed=0)
    assert s.mean() == pytest.approx(0.2, abs=0.015)
    np.testing.assert_array_equal(s, sensitive_rows(10_000, 0.2, seed=0))
    np.testing.assert_array_equal(sensitive_rows(100, 0.2, seed=0), s[:100])
    assert not np.array_equal(s, sensitive_rows(10_000, 0.2, seed=1))
    with pytest.raises(ValueError, match="share"):
        sensitive_rows(5, 1.5, seed=0)
    data = _tiny()
    r = restrict(data, np.array([True, False, False, False, True]), ["a"])
    assert not r.available[0, 1:].any() and r.available[0, 0]
    assert r.available[1:4].all() and not r.available[4, 1:].any()


def test_default_local_models() -> None:
    assert is_open_weight("mistralai/mixtral-8x7b-chat") and is_open_weight("Yi-34B")
    for closed in ("gpt-4-1106-preview", "claude-v2", "gemini-1.5-pro-002", "openai/gpt-4o"):
        assert not is_open_weight(closed)
    data = _table([[1, 1, 1]] * 2, [[0.1, 1, 3]] * 2, ["llama-8b", "gpt-4", "claude-v1"])
    assert default_local(data) == ["llama-8b"]
    # every model open-weight: those at most the median model's mean cost
    data = _table([[1, 1, 1]] * 2, [[0.1, 1, 3]] * 2, ["a-7b", "b-13b", "c-70b"])
    assert default_local(data) == ["a-7b", "b-13b"]
    assert parse_local("c-70b, a-7b", data) == ["c-70b", "a-7b"]
    with pytest.raises(ValueError, match="unknown local"):
        parse_local("zz", data)
    with pytest.raises(ValueError, match="no open-weight"):
        default_local(_table([[1, 1]], [[1, 1]], ["gpt-4", "claude-v1"]))


def _sensitive_data(n: int = 800) -> tuple[RoutingData, np.ndarray]:
    """Two regions; the cloud model "gpt-x" is right everywhere, "local-a" only in region
    0, "local-b" only in region 1: a router would rather always call gpt-x."""
    rng = np.random.default_rng(2)
    region = rng.integers(0, 2, n)
    x = np.zeros((n, 3))
    x[np.arange(n), region] = 1.0
    x[:, 2] = 1.0
    quality = np.column_stack([region == 0, region == 1, np.ones(n)]).astype(float)
    quality[5, 1] = nan  # a missing outcome stays masked
    cost = np.tile([0.001, 0.001, 0.002], (n, 1))
    cost[5, 1] = nan
    data = RoutingData(
        "sensitive",
        [f"p{i}" for i in range(n)],
        np.full(n, "t"),
        np.full(n, "train"),
        ["local-a", "local-b", "gpt-x"],
        quality,
        cost,
    )
    return data, x


def test_sensitive_rows_are_never_routed_to_a_non_local_model() -> None:
    data, x = _sensitive_data()
    local = ("local-a", "local-b")
    for kind in ("linucb", "vw", "thompson"):
        spec = learning_spec(kind)
        task = PrivacyTask(spec, 0, 0.2, 0.002, 0.3, local, True)
        run = privacy_replay(task, data, x, None)
        sens = sensitive_rows(len(data), 0.3, seed=0)[run.rows]  # nothing was dropped
        assert sens.sum() > 150
        chosen = np.array(data.models)[run.chosen]
        assert set(chosen[sens]) <= set(local), kind
        assert "gpt-x" in set(chosen[~sens])  # elsewhere the cloud model is used
    # and without the restriction the same check would fail
    free = privacy_replay(replace(task, restricted=False), data, x, None)
    assert (np.array(data.models)[free.chosen][sens] == "gpt-x").any()


def test_run_privacy_reports_the_cost_of_compliance() -> None:
    data, x = _sensitive_data(600)
    specs = [learning_spec("linucb")]
    local = ["local-a", "local-b"]
    kw = {"share": 0.25, "local": local, "seeds": 2, "lam": 0.2, "cost_scale": 0.002}
    steps: list[int] = []
    fresh = run_privacy(data, x, specs, progress=steps.append, **kw)  # type: ignore[arg-type]
    assert sum(steps) == privacy_steps(data, 0.25, local, specs, 2)
    assert fresh.violations() == 0 and fresh.dropped == [0, 0]
    t = fresh.table()
    assert set(t) == {"linucb", "oracle", "best fixed (gpt-x), ranked fallback"}
    # the oracle already answers from the cheaper right local model: compliance costs it
    # nothing; the best fixed model falls back to one local model on sensitive rows
    q_off, q_on, dq = t["oracle"]["quality"]
    assert q_off.mean == q_on.mean == 1.0 and dq.mean == 0.0
    assert t["oracle"]["usd_per_1k"][2].mean == 0.0
    off, on, diff = t["best fixed (gpt-x), ranked fallback"]["quality"]
    assert off.mean == 1.0 and diff.mean < -0.05  # local-a alone on sensitive rows
    assert diff.mean == pytest.approx(on.mean - off.mean)
    assert 0.2 < fresh.sensitive_share() < 0.3
    # the plain online run is reused as the unrestricted side where nothing is dropped
    # (row 5's missing local-b is not on a sensitive row at these seeds, or is covered
    # by local-a): it gives exactly the fresh figures
    online = run_online(data, x, specs, seeds=2, lam=0.2, cost_scale=0.002)
    steps.clear()
    reused = run_privacy(data, x, specs, baseline=online.runs, progress=steps.append, **kw)  # type: ignore[arg-type]
    assert sum(steps) == privacy_steps(data, 0.25, local, specs, 2, reuse=True)
    assert sum(steps) < privacy_steps(data, 0.25, local, specs, 2)
    assert reused.outcomes == fresh.outcomes


def test_a_sensitive_row_without_a_local_outcome_is_left_out_of_both_sides() -> None:
    data, x = _sensitive_data(200)
    # no local outcome on row 0: if it is sensitive, nothing may answer it
    data.quality[0, :2] = nan
    data.cost[0, :2] = nan
    seed = next(s for s in range(50) if sensitive_rows(200, 0.3, s)[0])
    kw = {"share": 0.3, "local": ["local-a", "local-b"], "lam": 0.2, "cost_scale": 0.002}
    run = run_privacy(data, x, [learning_spec("linucb")], seeds=seed + 1, **kw)  # type: ignore[arg-type]
    assert run.dropped[seed] == 1
    off, on = run.outcomes["linucb"][seed]
    assert off.rows == on.rows == 199
    assert run.violations() == 0
    # the online replay order of the plain run covers 200 rows: never reused here
    online = run_online(
        data, x, [learning_spec("linucb")], seeds=seed + 1, lam=0.2, cost_scale=0.002
    )
    again = run_privacy(
        data, x, [learning_spec("linucb")], seeds=seed + 1, baseline=online.runs, **kw
    )  # type: ignore[arg-type]
    assert again.outcomes["linucb"][seed] == run.outcomes["linucb"][seed]


# --- the CLI ------------------------------------------------------------------------------


def _slice(tmp_path: Path) -> Path:
    """A small real slice: 200 train and 100 test prompts of the RouterBench set."""
    df = pd.read_parquet(
        Path(__file__).parent.parent / "data/routerbench_arc_mbpp_winogrande.parquet"
    )
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(df.split == "train"), 200, replace=False),
            rng.choice(np.flatnonzero(df.split == "test"), 100, replace=False),
        ]
    )
    path = tmp_path / "slice.parquet"
    df.iloc[np.sort(rows)].to_parquet(path)
    return path


@pytest.mark.slow
def test_simulate_with_cascades_and_privacy_writes_both_sections(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(_slice(tmp_path)),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--policies",
            "linucb",
            "--supervised",
            "knn",
            "--lams",
            "0,1",
            "--limit",
            "300",
            "--jobs",
            "1",
            "--cascades",
            "auto",
            "--cascade-noise",
            "0.25",
            "--cascade-thresholds",
            "0.5,0.9",
            "--sensitive-share",
            "0.2",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "## Cascades" in report and "## Privacy" in report
    assert "| mistralai/mistral-7b-chat>gpt-4-1106-preview@0.9 |" in report
    assert "linucb + cascades (greedy)" in report
    assert "Learned cascade below every single model reaching it:" in report
    assert "routed to a non-local model under the restriction: 0." in report
    not_local = report.split("Not local: ")[1].split(". ")[0]
    assert "gpt-4-1106-preview" in not_local and "claude-v2" in not_local
    assert "Yi-34B" not in not_local
    assert (out / "cascades-frontier.png").stat().st_size > 1000
    # the sections come only with their options; a bad chain is a usage error
    bad = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(_slice(tmp_path)),
            "--out",
            str(out),
            "--cascades",
            "zz>y",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert bad.exit_code != 0 and "unknown model" in bad.output
