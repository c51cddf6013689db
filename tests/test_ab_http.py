"""Live A/B tests through the real HTTP API on a real Redis (127.0.0.1:6379), with
outcomes drawn from a shared dataset, so the true difference between variants is
known: interval coverage over seeded runs, A/A false positives under repeated looks,
stickiness across restarts, workers and weight changes, bad configs, the guardrail,
and the decision log. Every run is seeded, so a run's outcome is reproducible."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.embedder import Embedder
from service.settings import ModelConfig, PolicyConfig, Settings
from tests.service_helpers import REDIS_URL, SHARED, drop_prefix, make_settings, redis_up

pytestmark = pytest.mark.slow

CHEAP, STRONG = "gemma-2-9b-it", "llama-3.1-nemotron-51b-instruct"
# the reward's λ and cost unit: the strong model's extra quality is worth its price here
LAM, SCALE = 0.2, 0.003
POOL = 120


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return load_pool()


def load_pool() -> pd.DataFrame:
    """Prompts with both models' logged quality and cost."""
    df = pd.read_parquet(SHARED / "llmrouter_14tasks.parquet")
    df = df.dropna(subset=[CHEAP, STRONG, f"{CHEAP}|total_cost", f"{STRONG}|total_cost"])
    df = df[df["prompt"].str.len() < 2000]
    return df.sample(POOL, random_state=7).reset_index(drop=True)


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    if not redis_up():
        pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
    base: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "models": [
            ModelConfig(name=CHEAP, input_per_m=0.1, output_per_m=0.1),
            ModelConfig(name=STRONG, input_per_m=0.9, output_per_m=0.9),
        ],
        "policies": {
            "cheap": PolicyConfig(kind="fixed", params={"model": CHEAP}),
            "strong": PolicyConfig(kind="fixed", params={"model": STRONG}),
            "bandit": PolicyConfig(kind="linucb", params={"epsilon": 0.05}),
        },
        "default_policy": "cheap",
        "fallback_model": CHEAP,
        "guardrail_every_s": 0.2,
    }
    base.update(overrides)
    return make_settings(tmp_path, **base)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = settings_for(tmp_path)
    try:
        yield s
    finally:
        drop_prefix(s.key_prefix)


def experiment(name: str, a: str, b: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "variants": [
            {"name": "A", "policy": a, "weight": 1},
            {"name": "B", "policy": b, "weight": 1},
        ],
        "cost_weight": LAM,
        "cost_scale": SCALE,
        **extra,
    }


def put(c: TestClient, body: dict[str, Any]) -> Any:
    r = c.put(f"/v1/experiments/{body['name']}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def serve_units(
    c: TestClient,
    pool: pd.DataFrame,
    name: str,
    units: list[str],
    rng: np.random.Generator,
    on_feedback: Any = None,
) -> None:
    """Each unit sends one query drawn from the pool; its outcome is the logged one."""
    for i, unit in enumerate(units):
        j = int(rng.integers(len(pool)))
        r = c.post(
            "/v1/route",
            json={"query": pool.prompt[j], "experiment": name, "unit_id": unit},
        )
        assert r.status_code == 200, r.text
        d = r.json()
        f = c.post(
            "/v1/feedback",
            json={
                "event_id": d["event_id"],
                "quality": float(pool[d["model"]][j]),
                "cost_usd": float(pool[f"{d['model']}|total_cost"][j]),
            },
        )
        assert f.status_code == 202, f.text
        if on_feedback is not None:
            on_feedback(i + 1)


def true_margin(pool: pd.DataFrame) -> float:
    r = {m: pool[m] - LAM * pool[f"{m}|total_cost"] / SCALE for m in (CHEAP, STRONG)}
    return float((r[STRONG] - r[CHEAP]).mean())


def test_interval_covers_the_true_margin_over_seeded_runs(
    settings: Settings, embedder: Embedder, pool: pd.DataFrame
) -> None:
    truth = true_margin(pool)
    assert truth > 0.03  # B is better by a real margin
    covered, runs, units = 0, 50, 120
    with TestClient(create_app(settings, embedder=embedder)) as c:
        for seed in range(runs):
            name = f"cov{seed}"
            put(c, experiment(name, "cheap", "strong"))
            rng = np.random.default_rng(seed)
            serve_units(c, pool, name, [f"s{seed}-u{i}" for i in range(units)], rng)
            rep = c.get(f"/v1/experiments/{name}").json()
            lo, hi = rep["differences"][0]["reward"]["interval"]
            covered += lo <= truth <= hi
            assert sum(v["feedback"] for v in rep["variants"]) == units
    print(f"coverage of the true margin {truth:+.4f}: {covered}/{runs}")
    assert covered / runs >= 0.9


def test_aa_runs_rarely_flag_a_difference_even_read_every_100_feedbacks(
    settings: Settings, embedder: Embedder, pool: pd.DataFrame
) -> None:
    runs, units = 40, 400
    flagged = fixed_flagged = 0
    with TestClient(create_app(settings, embedder=embedder)) as c:
        for seed in range(runs):
            name = f"aa{seed}"
            put(c, experiment(name, "cheap", "cheap"))
            hits = {"seq": False, "fixed": False}

            def look(n: int, name: str = name, hits: dict[str, bool] = hits) -> None:
                if n % 100:
                    return
                diff = c.get(f"/v1/experiments/{name}").json()["differences"][0]["reward"]
                hits["seq"] |= diff["significant"]
                lo, hi = diff["interval"]
                hits["fixed"] |= lo is not None and (lo > 0 or hi < 0)

            rng = np.random.default_rng(1000 + seed)
            serve_units(c, pool, name, [f"aa{seed}-u{i}" for i in range(units)], rng, look)
            flagged += hits["seq"]
            fixed_flagged += hits["fixed"]
    print(f"A/A flagged: anytime-valid {flagged}/{runs}, fixed-horizon {fixed_flagged}/{runs}")
    assert flagged / runs <= 0.05


def _variants(c: TestClient, name: str, units: list[str]) -> list[str]:
    out = []
    for u in units:
        r = c.post("/v1/route", json={"query": "hello there", "experiment": name, "unit_id": u})
        assert r.status_code == 200, r.text
        out.append(r.json()["variant"])
    return out


def test_units_stick_across_restarts_workers_and_move_minimally_on_reweighting(
    settings: Settings, embedder: Embedder
) -> None:
    units = [f"user-{i}" for i in range(10_000)]
    exp = experiment("sticky", "cheap", "bandit")
    with TestClient(create_app(settings, embedder=embedder)) as w1:
        put(w1, exp)
        first = _variants(w1, "sticky", units)
    assert 0.47 < first.count("A") / len(units) < 0.53
    # a restart, and two workers side by side on the same Redis
    with (
        TestClient(create_app(settings, embedder=embedder)) as w2,
        TestClient(create_app(settings, embedder=embedder)) as w3,
    ):
        assert _variants(w2, "sticky", units[:5000]) == first[:5000]
        assert _variants(w3, "sticky", units[5000:]) == first[5000:]
        # a weight change on one worker reaches the other through the store
        exp["variants"][1]["weight"] = 7 / 3  # B: 50% -> 70%
        put(w2, exp)
        deadline = time.monotonic() + 10
        while w3.get("/v1/experiments").json()["sticky"]["variants"][1]["weight"] != 7 / 3:
            assert time.monotonic() < deadline, "the new weights never reached worker 3"
            time.sleep(0.05)
        after = _variants(w3, "sticky", units)
    moved = [(a, b) for a, b in zip(first, after, strict=True) if a != b]
    assert {m for m in moved} == {("A", "B")}
    assert len(moved) / len(units) == pytest.approx(0.2, abs=0.015)
    # counted per variant, decisions and distinct units (HyperLogLog: ~1% error)
    with TestClient(create_app(settings, embedder=embedder)) as w4:
        rep = w4.get("/v1/experiments/sticky").json()
    a, b = rep["variants"]
    assert a["decisions"] + b["decisions"] == 30_000
    assert a["units"] == pytest.approx(first.count("A"), rel=0.03)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": [{"name": "A", "policy": "cheap", "weight": 0}]}, "sum to 0"),
        (
            {
                "variants": [
                    {"name": "A", "policy": "cheap", "weight": 1},
                    {"name": "A", "policy": "strong", "weight": 1},
                ]
            },
            "duplicate variant names",
        ),
        (
            {"variants": [{"name": "A", "policy": "gpt-9", "weight": 1}]},
            "unknown policy 'gpt-9'",
        ),
        ({"control": "Z"}, "control: 'Z' is not a variant"),
        ({"name": "other"}, "name: the body names 'other'"),
    ],
)
def test_bad_changes_are_rejected_and_leave_the_running_experiment_whole(
    settings: Settings, embedder: Embedder, change: dict[str, Any], message: str
) -> None:
    with TestClient(create_app(settings, embedder=embedder)) as c:
        good = put(c, experiment("live", "cheap", "strong"))
        r = c.put("/v1/experiments/live", json={**experiment("live", "cheap", "strong"), **change})
        assert r.status_code == 422 and message in r.text, r.text
        assert c.get("/v1/experiments").json()["live"] == good
        assert c.post("/v1/route", json={"query": "hi", "experiment": "live"}).status_code == 200
        r = c.post("/v1/route", json={"query": "hi", "experiment": "nope"})
        assert r.status_code == 404 and "experiment: unknown experiment 'nope'" in r.text
        r = c.post("/v1/route", json={"query": "hi", "experiment": "live", "policy": "cheap"})
        assert r.status_code == 422 and "not both" in r.text


def test_bad_configs_fail_at_load_time(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulator.cli import app

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "models: [{name: a, input_per_m: 1, output_per_m: 1}]\n"
        "policies: {default: {kind: linucb}}\n"
        "experiments:\n"
        "  - name: e\n"
        "    variants: [{name: A, policy: default, weight: 1},\n"
        "               {name: B, policy: ghost, weight: 1}]\n"
    )
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg)])
    assert r.exit_code != 0 and "variant 'B' uses unknown policy 'ghost'" in r.output


def test_guardrail_stops_a_worse_variant_and_says_why(
    settings: Settings, embedder: Embedder, pool: pd.DataFrame
) -> None:
    # B routes everything to the cheap model but pays 500x for it: clearly worse
    with TestClient(create_app(settings, embedder=embedder)) as c:
        body = experiment("guard", "cheap", "cheap", guardrail={"margin": 0.05, "min_feedback": 50})
        put(c, body)
        rng = np.random.default_rng(5)
        for i in range(400):
            j = int(rng.integers(len(pool)))
            d = c.post(
                "/v1/route",
                json={"query": pool.prompt[j], "experiment": "guard", "unit_id": f"g{i}"},
            ).json()
            cost = float(pool[f"{CHEAP}|total_cost"][j]) * (500 if d["variant"] == "B" else 1)
            c.post(
                "/v1/feedback",
                json={
                    "event_id": d["event_id"],
                    "quality": float(pool[CHEAP][j]),
                    "cost_usd": cost,
                },
            )
        deadline = time.monotonic() + 15
        while "B" not in c.get("/v1/experiments/guard").json()["stopped"]:
            assert time.monotonic() < deadline, "the guardrail never stopped B"
            time.sleep(0.1)
        rep = c.get("/v1/experiments/guard").json()
        assert "below -0.05" in rep["stopped"]["B"]["reason"]
        assert rep["variants"][1]["weight"] == 0
        got = {
            c.post(
                "/v1/route", json={"query": "x", "experiment": "guard", "unit_id": f"n{i}"}
            ).json()["variant"]
            for i in range(50)
        }
        assert got == {"A"}


def test_decision_log_and_history_through_the_api(
    settings: Settings, embedder: Embedder, pool: pd.DataFrame, tmp_path: Path
) -> None:
    with TestClient(create_app(settings, embedder=embedder)) as c:
        put(c, experiment("logged", "cheap", "strong"))
        serve_units(c, pool, "logged", [f"l{i}" for i in range(300)], np.random.default_rng(3))
        page = c.get("/v1/log/cheap", params={"limit": 5000}).json()
        events = page["events"]
        assert events and all(e["experiment"] == "logged" and e["variant"] == "A" for e in events)
        e = events[0]
        assert (
            e["candidates"] == [CHEAP, STRONG] and len(e["context"]) == 32 + 2
        )  # projection, bias, log length
        assert 0 < e["propensity"] <= 1 and e["model"] == CHEAP
        rest = c.get("/v1/log/cheap", params={"after": page["next"]}).json()
        assert rest["events"] == []
        assert c.get("/v1/log/ghost").status_code == 404
        assert c.get("/v1/log/cheap", params={"after": "x"}).status_code == 422
        hist = c.get("/v1/experiments/logged/history", params={"every": 50}).json()
        assert hist["truncated"] is False
        pts = hist["series"]["B"]
        assert [p["feedback"] for p in pts] == list(range(50, 301, 50))
        rep = c.get("/v1/experiments/logged").json()
        assert pts[-1]["difference"] == pytest.approx(rep["differences"][0]["reward"]["difference"])


def test_delete_resets_counters_and_a_deleted_configured_experiment_stays_deleted(
    tmp_path: Path, embedder: Embedder, pool: pd.DataFrame
) -> None:
    configured = experiment("seeded", "cheap", "strong")
    s = settings_for(
        tmp_path,
        experiments=[configured, experiment("main", "cheap", "strong")],
        default_experiment="main",
    )
    try:
        with TestClient(create_app(s, embedder=embedder)) as c:
            serve_units(c, pool, "seeded", ["a", "b", "c"], np.random.default_rng(0))
            assert c.delete("/v1/experiments/main").status_code == 409
            bad = json.dumps(configured).replace(
                '"cost_scale"', '"stopped": {"B": {"at": Infinity, "reason": "x"}}, "cost_scale"'
            )
            r = c.put(
                "/v1/experiments/seeded", content=bad, headers={"content-type": "application/json"}
            )
            assert r.status_code == 422
            assert c.delete("/v1/experiments/seeded").status_code == 204
            assert c.get("/v1/experiments/seeded").status_code == 404
        # a restart does not bring the configured experiment back
        with TestClient(create_app(s, embedder=embedder)) as c:
            assert "seeded" not in c.get("/v1/experiments").json()
            put(c, configured)  # re-created by the admin: counted from zero
            rep = c.get("/v1/experiments/seeded").json()
            assert [v["decisions"] for v in rep["variants"]] == [0, 0]
            assert [v["feedback"] for v in rep["variants"]] == [0, 0]
    finally:
        drop_prefix(s.key_prefix)


def test_a_full_decision_log_is_flagged_in_the_history(
    tmp_path: Path, embedder: Embedder, pool: pd.DataFrame
) -> None:
    s = settings_for(tmp_path, decision_log_max=20)
    try:
        with TestClient(create_app(s, embedder=embedder)) as c:
            put(c, experiment("small", "cheap", "strong"))
            serve_units(c, pool, "small", [f"t{i}" for i in range(80)], np.random.default_rng(4))
            events = c.get("/v1/log/cheap", params={"limit": 5000}).json()["events"]
            # Redis trims approximately (MAXLEN ~, whole stream nodes): at least 20 stay
            assert len(events) >= 20
            assert c.get("/v1/experiments/small/history").json()["truncated"] is True
            # the counters are not the log: the report still counts every feedback
            rep = c.get("/v1/experiments/small").json()
            assert sum(v["feedback"] for v in rep["variants"]) == 80
    finally:
        drop_prefix(s.key_prefix)


def test_history_is_admin_only_paged_incremental_and_over_units(
    tmp_path: Path, embedder: Embedder, pool: pd.DataFrame
) -> None:
    s = settings_for(tmp_path, client_keys=["client-secret"], admin_key="admin-secret")
    admin = {"Authorization": "Bearer admin-secret"}
    try:
        with TestClient(create_app(s, embedder=embedder)) as c:
            c.headers["Authorization"] = "Bearer client-secret"
            r = c.put(
                "/v1/experiments/hist", json=experiment("hist", "cheap", "strong"), headers=admin
            )
            assert r.status_code == 200, r.text
            # 40 users, each back several times
            units = [f"h{i % 40}" for i in range(200)]
            serve_units(c, pool, "hist", units, np.random.default_rng(8))
            path = "/v1/experiments/hist/history"
            assert c.get(path).status_code == 403
            assert c.get(path, headers={"Authorization": ""}).status_code == 401
            whole = c.get(path, params={"every": 20}, headers=admin).json()
            assert whole["complete"] and not whole["truncated"] and whole["feedback"] == 200
            assert [p["feedback"] for p in whole["series"]["B"]] == list(range(20, 201, 20))
            pages, after = [], 0
            while True:
                page = c.get(
                    path, params={"every": 20, "after": after, "limit": 3}, headers=admin
                ).json()
                pages += page["series"]["B"]
                assert len(page["series"]["B"]) <= 3
                if page["complete"]:
                    break
                after = page["next"]
            assert pages == whole["series"]["B"]
            # the next call reads only the new events, and ends where the report is
            serve_units(c, pool, "hist", units[:40], np.random.default_rng(9))
            more = c.get(path, params={"every": 20, "after": 200}, headers=admin).json()
            assert [p["feedback"] for p in more["series"]["B"]] == [220, 240]
            rep = c.get("/v1/experiments/hist").json()["differences"][0]["reward"]
            last = more["series"]["B"][-1]
            assert last["difference"] == pytest.approx(rep["difference"])
            assert [last["low"], last["high"]] == pytest.approx(rep["interval"])
            assert [last["sequence_low"], last["sequence_high"]] == pytest.approx(rep["sequence"])
    finally:
        drop_prefix(s.key_prefix)
