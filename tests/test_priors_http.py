"""Catalogue priors and the cold cap through the real app: a model registered
mid-stream starts from its catalogue price, and takes at most its cap of traffic
until its own feedback arrives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.embedder import Embedder
from service.settings import PolicyConfig
from tests.service_helpers import make_settings

pytestmark = pytest.mark.slow

CAP = 0.15
QUERIES = [f"Question {i}: what is {i} times {i + 3}?" for i in range(60)]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    emb = Embedder()
    emb.load()
    return emb


@pytest.fixture
def client(tmp_path: Path, embedder: Embedder) -> Iterator[TestClient]:
    params = {"cold_cap": CAP, "cold_pulls": 10, "epsilon": 0.02, "alpha": 0.3}
    settings = make_settings(
        tmp_path, policies={"default": PolicyConfig(kind="hybrid", params=params)}
    )
    with TestClient(create_app(settings, embedder=embedder)) as c:
        yield c


def _warm_up(c: TestClient) -> None:
    """Feedback for every configured model, so none of them is cold any more."""
    for i in range(120):
        d = c.post("/v1/route", json={"query": QUERIES[i % len(QUERIES)]}).json()
        quality = {"small": 0.6, "medium": 0.7, "large": 0.8}[d["model"]]
        r = c.post(
            "/v1/feedback",
            json={"event_id": d["event_id"], "quality": quality, "cost_usd": 1e-5},
        )
        assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while c.get("/v1/policies/default").json()["updates_applied"] < 120:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _shares(
    c: TestClient, model: str, n: int = 150, **extra: Any
) -> tuple[float, float, float]:
    """(share of n routes that went to `model`, its largest probability, its expected
    cost in USD as the policy explains it)."""
    hits, top, cost = 0, 0.0, 0.0
    for i in range(n):
        body = {"query": QUERIES[i % len(QUERIES)], "explain": True, **extra}
        d = c.post("/v1/route", json=body).json()
        hits += d["model"] == model
        top = max(top, d["explanation"][model]["probability"])
        cost = d["explanation"][model]["expected_cost_usd"]
    return hits / n, top, cost


def _register(c: TestClient, **body: Any) -> None:
    r = c.post("/v1/models", json=body)
    assert r.status_code == 201, r.text


def test_a_pricey_new_model_stays_under_its_cap_and_a_neutral_one_is_tried(
    client: TestClient,
) -> None:
    _warm_up(client)
    # a very expensive newcomer that claims top quality: the cap bounds it
    _register(
        client,
        name="premium",
        input_per_m=500.0,
        output_per_m=500.0,
        prior_quality=1.0,
        prior_strength=5.0,
    )
    # routing on quality alone (lambda 0) it would take everything: the cap binds
    share, top, _ = _shares(client, "premium", cost_weight=0.0)
    assert top == pytest.approx(CAP)
    assert share <= CAP + 3 * (CAP * (1 - CAP) / 150) ** 0.5
    # at the policy's lambda its price keeps it well under the cap
    _, top, cost = _shares(client, "premium", n=20)
    assert top < CAP / 2
    # its expected cost is the catalogue's price x expected tokens (200 in, 256 out)
    assert cost == pytest.approx((200 + 256) * 500.0 / 1e6, rel=0.01)
    # a newcomer priced like the others, with no quality claim, is tried
    _register(client, name="peer", input_per_m=0.5, output_per_m=0.5)
    share_peer, top_peer, _ = _shares(client, "peer")
    assert share_peer > 0
    assert top_peer <= CAP + 1e-9
