"""Shadow mode and shared feedback through the real HTTP API, on both stores: a
shadow sees every request without changing a response, learns from the served
feedback, and its off-policy value matches the truth known from the dataset."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.embedder import Embedder
from service.settings import PolicyConfig, Settings
from service.store.base import StoreUnavailable
from tests.service_helpers import REDIS_URL, drop_prefix, redis_up
from tests.test_ab_http import STRONG, load_pool, settings_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return load_pool()


def shadow_settings(tmp_path: Path, backend: str) -> Settings:
    policies = {
        "served": PolicyConfig(kind="random"),
        "strong": PolicyConfig(kind="fixed", params={"model": STRONG}, shadow_of="served"),
        "bandit": PolicyConfig(kind="linucb", params={"epsilon": 0.05}, shadow_of="served"),
        "b1": PolicyConfig(kind="linucb"),
        "b2": PolicyConfig(kind="linucb"),
    }
    s = settings_for(tmp_path, policies=policies, default_policy="served")
    if backend == "memory":
        s = s.model_copy(update={"redis_url": None})
    return s


@pytest.fixture(params=["memory", "redis"])
def client(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder
) -> Iterator[TestClient]:
    if request.param == "redis" and not redis_up():
        pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
    s = shadow_settings(tmp_path, request.param)
    try:
        with TestClient(create_app(s, embedder=embedder)) as c:
            yield c
    finally:
        drop_prefix(s.key_prefix)


def _waiting_done(c: TestClient, policy: str, want: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        st = c.get(f"/v1/policies/{policy}").json()
        if st["updates_applied"] >= want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_shadow_sees_learns_and_is_valued_without_touching_responses(
    client: TestClient, pool: pd.DataFrame
) -> None:
    c, n = client, 600
    rng = np.random.default_rng(11)
    served, qualities, draws = [], [], []
    for _ in range(n):
        j = int(rng.integers(len(pool)))
        d = c.post("/v1/route", json={"query": pool.prompt[j]}).json()
        assert d["policy"] == "served"
        served.append(d["model"])
        q = float(pool[d["model"]][j])
        qualities.append(q)
        draws.append(j)
        cost = float(pool[f"{d['model']}|total_cost"][j])
        r = c.post("/v1/feedback", json={"event_id": d["event_id"], "quality": q, "cost_usd": cost})
        assert r.status_code == 202
    # the served router is uniform over the two models: the shadows changed nothing
    assert 0.42 < served.count(STRONG) / n < 0.58

    rep = c.get("/v1/policies/strong/shadow", params={"cost_weight": 0}).json()
    assert rep["served_by"] == "served" and rep["decisions"] == n and rep["feedback"] == n
    assert rep["agreement"] == pytest.approx(served.count(STRONG) / n)
    # served value on the same events: exactly the mean served quality
    assert rep["served_reward"]["mean"] == pytest.approx(np.mean(qualities))
    truth = float(pool[STRONG].mean())
    for est in ("ips", "snips"):
        e = rep[est]
        half = e["high"] - e["mean"]
        # about 4 standard errors: fails by chance once in ~15,000 runs
        assert abs(e["mean"] - truth) <= 2 * half, (est, e, truth)
    # weights are 2 where the shadow agrees, else 0: (Σw)² / Σw² = the agreements
    assert rep["effective_sample_size"] == pytest.approx(served.count(STRONG))
    assert rep["warnings"] == []

    # the learning shadow got every served feedback through its own learner
    st = _waiting_done(c, "bandit", n)
    assert st["feedback_total"] == n and st["updates_applied"] == n
    assert c.get("/v1/policies/served/shadow").status_code == 404
    for bad in ("-1", "inf", "nan"):
        r = c.get("/v1/policies/strong/shadow", params={"cost_weight": bad})
        assert r.status_code == 422 and "cost_weight" in r.text


@pytest.mark.parametrize("share", [False, True])
def test_variants_learn_from_their_own_traffic_or_from_all(
    client: TestClient, pool: pd.DataFrame, share: bool
) -> None:
    body = {
        "name": f"share{int(share)}",
        "variants": [
            {"name": "A", "policy": "b1", "weight": 1},
            {"name": "B", "policy": "b2", "weight": 1},
        ],
        "share_feedback": share,
    }
    assert c_put(client, body).status_code == 200
    n, seen = 200, {"A": 0, "B": 0}
    for i in range(n):
        d = client.post(
            "/v1/route", json={"query": pool.prompt[i % len(pool)], "experiment": body["name"]}
        ).json()
        seen[d["variant"]] += 1
        client.post("/v1/feedback", json={"event_id": d["event_id"], "quality": 1.0, "cost_usd": 0})
    totals = {p: client.get(f"/v1/policies/{p}").json()["feedback_total"] for p in ("b1", "b2")}
    if share:
        assert totals == {"b1": n, "b2": n}
    else:
        assert totals == {"b1": seen["A"], "b2": seen["B"]}
    rep = client.get(f"/v1/experiments/{body['name']}").json()
    # the experiment's counters count each feedback once, in its own variant
    assert [v["feedback"] for v in rep["variants"]] == [seen["A"], seen["B"]]


def c_put(c: TestClient, body: dict[str, Any]) -> Any:
    return c.put(f"/v1/experiments/{body['name']}", json=body)


def test_a_shadow_must_follow_another_configured_policy(tmp_path: Path) -> None:
    for target in ("ghost", "self"):
        with pytest.raises(ValidationError, match="shadow_of"):
            Settings(
                models=[{"name": "a", "input_per_m": 1, "output_per_m": 1}],
                policies={"default": {}, "self": {"shadow_of": target}},
            )


def test_no_copy_is_lost_to_an_outage_after_the_feedback_was_accepted(
    client: TestClient, pool: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails every write made after the served feedback was accepted (as an
    outage or a crash right then would): the shadows' copies travel with the feedback
    itself, so each shadow still counts and learns every one."""
    rt = client.app.state.runtime  # type: ignore[attr-defined]

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("down right after the feedback")

    monkeypatch.setattr(rt.store, "append_feedback", down)
    n = 60
    for i in range(n):
        d = client.post("/v1/route", json={"query": pool.prompt[i % len(pool)]}).json()
        r = client.post(
            "/v1/feedback", json={"event_id": d["event_id"], "quality": 1.0, "cost_usd": 0.001}
        )
        assert r.status_code == 202, r.text
    st = _waiting_done(client, "bandit", n)
    assert st["feedback_total"] == n and st["updates_applied"] == n
    deadline = time.monotonic() + 30
    while client.get("/v1/policies/strong/shadow").json()["feedback"] < n:
        assert time.monotonic() < deadline, "the shadow counters missed copies"
        time.sleep(0.05)
    rep = client.get("/v1/policies/strong/shadow").json()
    assert rep["feedback"] == n and rep["decisions"] == n
