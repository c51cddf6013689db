"""Tenants through the real app (TestClient, real embedder, in-process store and the
shared Redis): a tenant's own policy starts as the global one and diverges with its
own feedback; tenants never see each other's decisions, logs or experiments; a hard
cap narrows the candidates, then answers 429; bad budget config is a 422 that names
the field and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.budgets.config import CapConfig, PacerConfig, TenantConfig
from service.budgets.gate import estimate
from service.embedder import Embedder
from service.experiments import ExperimentConfig, VariantConfig
from tests.service_helpers import MODELS, REDIS_URL, drop_prefix, make_settings, redis_up

pytestmark = pytest.mark.slow

TOPICS = ["algebra", "poetry", "cooking", "history", "python", "chemistry", "travel", "law"]


def queries(n: int, offset: int = 0) -> list[str]:
    return [
        f"Question {i} about {TOPICS[i % len(TOPICS)]}: explain the idea in detail."
        for i in range(offset, offset + n)
    ]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    overrides: dict[str, Any] = {}
    if request.param == "redis":
        if not redis_up():
            pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
        overrides["redis_url"] = REDIS_URL
    yield overrides


@contextmanager
def app(
    tmp_path: Path, embedder: Embedder, backend: dict[str, Any], **kw: Any
) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, **{**backend, **kw})
    if "key_prefix" in kw or "redis_url" not in backend:
        prefix = None
    else:
        prefix = settings.key_prefix
    try:
        with TestClient(create_app(settings, embedder=embedder)) as c:
            yield c
    finally:
        if prefix is not None:
            drop_prefix(prefix)


def _applied(c: TestClient, policy: str, n: int, **headers: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = c.get(f"/v1/policies/{policy}", headers=headers).json()
        if st["updates_applied"] >= n and st["feedback_waiting"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{policy}: {n} updates never applied")


def _best(c: TestClient, query: str, **body: Any) -> str:
    """The model with the highest expected quality (the policy's belief, free of its
    exploration draw)."""
    r = c.post("/v1/route", json={"query": query, "explain": True, **body})
    assert r.status_code == 200, r.text
    expl = r.json()["explanation"]
    return max(expl, key=lambda m: expl[m]["expected_quality"])


def _teach(c: TestClient, qs: list[str], good: str, **body: Any) -> int:
    for q in qs:
        r = c.post("/v1/route", json={"query": q, **body})
        assert r.status_code == 200, r.text
        d = r.json()
        quality = 1.0 if d["model"] == good else 0.0
        fb = {"event_id": d["event_id"], "quality": quality, "cost_usd": 0.0}
        assert c.post("/v1/feedback", json=fb).status_code == 202
    return len(qs)


# ---- a tenant's own policy: the global prior, then its own deviations ---------------
def test_tenant_starts_as_global_and_diverges_with_its_feedback(
    tmp_path: Path, embedder: Embedder, backend: dict[str, Any]
) -> None:
    prefix = f"brtest-tenant-{time.monotonic_ns()}"
    common: dict[str, Any] = {"key_prefix": prefix, "snapshot_every_ms": 50}
    try:
        with app(tmp_path, embedder, backend, **common) as c:
            n = _teach(c, queries(120), "large")
            _applied(c, "default", n)
        tenant = TenantConfig(own_state=True, prior_weight=0.5)
        with app(tmp_path, embedder, backend, tenants={"acme": tenant}, **common) as c:
            assert c.get("/v1/tenants/acme").json()["served_policy"] == "default@acme"
            probe = queries(30, offset=500)
            glob = [_best(c, q) for q in probe]
            mine = [_best(c, q, tenant="acme") for q in probe]
            # no feedback of its own: it routes like the global policy
            assert glob.count("large") >= 27, glob
            agree = sum(a == b for a, b in zip(glob, mine, strict=True))
            assert agree >= 27, (glob, mine)
            # strong feedback for "small": its own policy moves there
            m = _teach(c, queries(90, offset=1000), "small", tenant="acme")
            _applied(c, "default@acme", m)
            mine = [_best(c, q, tenant="acme") for q in probe]
            assert mine.count("small") >= 27, mine
    finally:
        if "redis_url" in backend:
            drop_prefix(prefix)


# ---- isolation ----------------------------------------------------------------------
def test_tenants_never_see_each_others_decisions_logs_or_experiments(
    tmp_path: Path, embedder: Embedder, backend: dict[str, Any]
) -> None:
    tenants = {
        "acme": TenantConfig(keys=["key-acme"]),
        "globex": TenantConfig(keys=["key-globex"], own_state=True),
    }
    exp = ExperimentConfig(
        name="gx",
        tenant="globex",
        variants=[VariantConfig(name="a", policy="default", weight=1.0)],
    )
    with app(
        tmp_path,
        embedder,
        backend,
        tenants=tenants,
        admin_key="key-admin",
        client_keys=["key-client"],
        experiments=[exp],
    ) as c:
        acme = {"Authorization": "Bearer key-acme"}
        globex = {"Authorization": "Bearer key-globex"}
        admin = {"Authorization": "Bearer key-admin"}
        client = {"Authorization": "Bearer key-client"}
        q = {"query": "What is the capital of France?"}
        assert c.post("/v1/route", json=q).status_code == 401
        assert (
            c.post("/v1/route", json=q, headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        r = c.post("/v1/route", json=q, headers=acme)
        assert r.status_code == 200, r.text
        event = r.json()["event_id"]
        assert event.split(".")[1] == "acme"
        # naming another tenant: 403, whoever asks but the admin
        assert c.post("/v1/route", json={**q, "tenant": "globex"}, headers=acme).status_code == 403
        assert (
            c.post("/v1/route", json={**q, "tenant": "globex"}, headers=client).status_code == 403
        )
        assert c.post("/v1/route", json={**q, "tenant": "nobody"}, headers=admin).status_code == 404
        # another tenant's decision does not exist for this key
        fb = {"event_id": event, "quality": 1.0}
        r = c.post("/v1/feedback", json=fb, headers=globex)
        assert r.status_code == 404, r.text
        assert c.post("/v1/feedback", json=fb, headers=acme).status_code == 202
        # tenants: their own only
        assert c.get("/v1/tenants/acme", headers=acme).status_code == 200
        assert c.get("/v1/tenants/globex", headers=acme).status_code == 404
        assert c.get("/v1/tenants/acme", headers=client).status_code == 403
        assert c.get("/v1/tenants", headers=acme).status_code == 403
        assert c.get("/v1/tenants/globex", headers=admin).status_code == 200
        # experiments: another tenant's is not listed, not readable, not joinable
        assert "gx" not in c.get("/v1/experiments", headers=acme).json()
        assert "gx" in c.get("/v1/experiments", headers=globex).json()
        assert c.get("/v1/experiments/gx", headers=acme).status_code == 404
        assert c.post("/v1/route", json={**q, "experiment": "gx"}, headers=acme).status_code == 404
        r = c.post("/v1/route", json={**q, "experiment": "gx"}, headers=globex)
        assert r.status_code == 200 and r.json()["experiment"] == "gx", r.text
        # a tenant-owned experiment is not the global callers' either
        assert (
            c.post("/v1/route", json={**q, "experiment": "gx"}, headers=client).status_code == 404
        )
        # logs, metrics and other tenants' own policies
        assert c.get("/v1/log/default", headers=acme).status_code == 403
        assert c.get("/metrics", headers=acme).status_code == 403
        assert c.get("/v1/policies/default@globex", headers=acme).status_code == 404
        assert c.get("/v1/policies/default@globex", headers=globex).status_code == 200
        # a tenant's own policy is reached through its key, never by name
        r = c.post("/v1/route", json={**q, "policy": "default@globex"}, headers=acme)
        assert r.status_code == 422  # not even a policy name
        r = c.post("/v1/route", json=q, headers=globex)
        assert r.json()["policy"] == "default@globex"


# ---- the hard cap ---------------------------------------------------------------------
def test_cap_narrows_candidates_then_answers_429(
    tmp_path: Path, embedder: Embedder, backend: dict[str, Any]
) -> None:
    # with 1,000 answer tokens: small $0.0001, medium $0.0005, large $0.002 per call
    cap = CapConfig(usd=0.0016, window="day")
    with app(tmp_path, embedder, backend, tenants={"lean": TenantConfig(cap=cap)}) as c:
        body = {"tenant": "lean", "max_output_tokens": 1000, "explain": True}
        prices = {m.name: m.price() for m in MODELS}
        spent, seen = 0.0, []
        for q in queries(60):
            # what fits what is left: the estimate is the prompt plus 1,000 answer tokens
            fits = {
                m
                for m, p in prices.items()
                if estimate(p, max(1, len(q) // 4), 1000) <= cap.usd - spent
            }
            r = c.post("/v1/route", json={"query": q, **body})
            if r.status_code == 429:
                assert not fits
                assert int(r.headers["retry-after"]) >= 1
                assert "budget" in r.json()["detail"]
                break
            assert r.status_code == 200, r.text
            d = r.json()
            # the policy chose among exactly the models that fit
            assert set(d["explanation"]) == fits
            seen.append(fits)
            # the call costs its estimate (the prompt is a few tokens): settled with it
            price = {"small": 0.1, "medium": 0.5, "large": 2.0}[d["model"]]
            cost = price * 1000 / 1e6
            spent += cost
            fb = {"event_id": d["event_id"], "quality": 0.5, "cost_usd": cost}
            assert c.post("/v1/feedback", json=fb).status_code == 202
            status = c.get("/v1/tenants/lean").json()["cap"]
            assert status["spent_usd"] == pytest.approx(spent, rel=1e-6)
            assert status["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
        else:
            raise AssertionError(f"never refused; spent {spent}")
        assert len(seen) > 1  # it served before it refused
        # the large model never fitted
        assert all("large" not in s for s in seen)
        assert spent <= cap.usd + 1e-12
        text = c.get("/metrics").text
        assert 'banditroute_budget_refused_total{tenant="lean"} 1.0' in text


# ---- bad config ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cap": {"usd": -1}}, "cap.usd"),
        ({"cap": {"usd": 5, "window": 0}}, "window"),
        ({"cap": {"usd": 5, "window": "fortnight"}}, "cap.window"),
        ({"pacer": {"usd_per_1k": 1.0, "share": 0.2, "share_models": ["small"]}}, "usd_per_1k"),
        ({"pacer": {"share": 0.2}}, "share_models"),
        ({"pacer": {"share": 0.2, "share_models": ["nope"]}}, "pacer.share_models"),
        ({"pacer": {"usd_per_hour": "lots"}}, "pacer.usd_per_hour"),
        ({"candidates": ["nope"]}, "candidates"),
        ({"policy": "nope"}, "policy"),
        ({"own_state": True}, "own_state"),
        ({"prior_weight": 2}, "prior_weight"),
        ({"budget": 5}, "budget"),
    ],
)
def test_budget_config_errors_are_422_naming_the_field(
    tmp_path: Path, embedder: Embedder, body: dict[str, Any], field: str
) -> None:
    good = TenantConfig(cap=CapConfig(usd=5.0), pacer=PacerConfig(usd_per_1k=2.0))
    with app(tmp_path, embedder, {}, tenants={"acme": good}) as c:
        before = c.get("/v1/tenants/acme").json()
        r = c.put("/v1/tenants/acme", json=body)
        assert r.status_code == 422, r.text
        assert field in r.text, r.text
        assert c.get("/v1/tenants/acme").json() == before
        # a good change is taken, whole
        r = c.put("/v1/tenants/acme", json={"cap": {"usd": 7.5, "window": "hour"}})
        assert r.status_code == 200, r.text
        after = c.get("/v1/tenants/acme").json()
        assert after["cap"]["usd"] == 7.5 and after["pacer"] is None


def test_a_tenants_allowlist_narrows_what_it_routes_to(tmp_path: Path, embedder: Embedder) -> None:
    narrow = TenantConfig(candidates=["small", "medium"])
    with app(tmp_path, embedder, {}, tenants={"narrow": narrow}) as c:
        for q in queries(10):
            r = c.post("/v1/route", json={"query": q, "tenant": "narrow", "explain": True})
            assert r.status_code == 200, r.text
            assert set(r.json()["explanation"]) == {"small", "medium"}
        # named candidates must all be the tenant's
        body = {"query": "hi", "tenant": "narrow", "candidates": ["large"]}
        r = c.post("/v1/route", json=body)
        assert r.status_code == 422 and "candidates" in r.text, r.text
        body["candidates"] = ["small"]
        assert c.post("/v1/route", json=body).json()["model"] == "small"


def test_config_file_tenant_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tenants\.acme\.keys"):
        make_settings(tmp_path, tenants={"acme": TenantConfig(keys=["k"])})
    with pytest.raises(ValueError, match=r"tenants\.acme\.policy"):
        make_settings(tmp_path, tenants={"acme": TenantConfig(policy="nope")})
    with pytest.raises(ValueError, match=r"tenants\.acme\.candidates"):
        make_settings(tmp_path, tenants={"acme": TenantConfig(candidates=["nope"])})
    with pytest.raises(ValueError, match=r"tenants\.a b"):
        make_settings(tmp_path, tenants={"a b": TenantConfig()})
