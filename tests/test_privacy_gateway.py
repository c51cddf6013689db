"""Privacy rules through the gateway, over real sockets to real upstream processes
that record what they received: a payment card never reaches a model without the
allowed tag, under 1,000 concurrent mixed requests; no log carries the matched text;
with no allowed model the answer is a 422 and no upstream is called."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.embedder import Embedder
from service.gateway.config import UpstreamConfig
from service.privacy.rules import PrivacyConfig, PrivacyRule
from service.settings import ModelConfig, PolicyConfig, Settings
from tests.gateway_helpers import Served, serve_app
from tests.service_helpers import make_settings
from tests.upstream_helpers import Upstream, start_upstream

pytestmark = pytest.mark.slow

TAGS = {"local-a": ["local"], "cloud-b": ["cloud"], "cloud-c": ["cloud", "eu"]}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with start_upstream() as a, start_upstream() as b, start_upstream() as c:
        yield {"local-a": a, "cloud-b": b, "cloud-c": c}


@pytest.fixture(autouse=True)
def _fresh(upstreams: dict[str, Upstream]) -> Iterator[None]:
    for u in upstreams.values():
        u.reset()
    yield


def settings(tmp_path: Path, ups: dict[str, Upstream], allow: list[str]) -> Settings:
    models = [
        ModelConfig(
            name=name,
            input_per_m=1.0,
            output_per_m=2.0,
            tags=TAGS[name],
            upstream=UpstreamConfig(base_url=u.url, model=name),
        )
        for name, u in ups.items()
    ]
    rules = [
        PrivacyRule(entities=["payment_card", "email", "api_key"], allow_tags=allow),
        PrivacyRule(entities=["flagged"], allow_tags=allow),
    ]
    return make_settings(
        tmp_path,
        models=models,
        fallback_model="cloud-b",
        policies={"default": PolicyConfig(kind="random")},
        privacy=PrivacyConfig(enabled=True, rules=rules),
    )


def card(rng: random.Random) -> str:
    """A random 16-digit Visa-shaped number with a valid Luhn check digit."""
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d2 = d * 2 if i % 2 == 0 else d
        total += d2 - 9 if d2 > 9 else d2
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else s


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def test_a_card_never_reaches_an_untagged_model_under_concurrent_mixed_traffic(
    tmp_path: Path,
    embedder: Embedder,
    upstreams: dict[str, Upstream],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(5)
    n = 1000
    bodies: list[tuple[str | None, dict[str, Any]]] = []
    for i in range(n):
        number = card(rng) if i % 2 == 0 else None
        text = (
            f"Please refund order {10_000 + i}; my card is {number}, thanks."
            if number
            else f"What is a good name for a cat, idea number {i}?"
        )
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        bodies.append((number, body))
    s = settings(tmp_path, upstreams, allow=["local"])
    with serve_app(create_app(s, embedder=embedder)) as srv:
        answers = asyncio.run(_send_all(srv, bodies, concurrency=50))
        sensitive = [_digits(num) for num, _ in bodies if num]
        for (number, _), (status, headers) in zip(bodies, answers, strict=True):
            assert status == 200
            if number:
                assert headers["x-banditroute-model"] == "local-a"
                assert headers["x-banditroute-restricted"] == "payment_card"
        # what every upstream process received
        for name in ("cloud-b", "cloud-c"):
            calls = upstreams[name].calls()
            assert calls, f"{name} got no traffic at all: the test would prove nothing"
            received = _digits(json.dumps([c["messages"] for c in calls]))
            assert not any(num in received for num in sensitive), name
        local = _digits(json.dumps([c["messages"] for c in upstreams["local-a"].calls()]))
        assert all(num in local for num in sensitive)
        # the decision log records the restriction and the entity type, never the text
        for _, headers in answers:
            r = httpx.post(
                f"{srv.base}/v1/feedback",
                json={"event_id": headers["x-banditroute-event-id"], "quality": 1.0},
            )
            assert r.status_code == 202
        log = httpx.get(f"{srv.base}/v1/log/default", params={"limit": 5000}).json()["events"]
        assert len(log) == n
        assert sum(e["restricted"] == ["payment_card"] for e in log) == n // 2
        dumped = _digits(json.dumps(log))
        assert not any(num in dumped for num in sensitive)
        metrics = httpx.get(f"{srv.base}/metrics").text
    logged = _digits(caplog.text + metrics)
    assert not any(num in logged for num in sensitive)


async def _send_all(
    srv: Served, bodies: list[tuple[str | None, dict[str, Any]]], concurrency: int
) -> list[tuple[int, httpx.Headers]]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:

        async def one(body: dict[str, Any]) -> tuple[int, httpx.Headers]:
            async with sem:
                r = await client.post("/chat/completions", json=body)
                return r.status_code, r.headers

        return list(await asyncio.gather(*(one(b) for _, b in bodies)))


def test_sessions_flags_and_direct_calls_stay_restricted(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    s = settings(tmp_path, upstreams, allow=["local"])
    with (
        serve_app(create_app(s, embedder=embedder)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):

        def ask(text: str, **headers: str) -> httpx.Response:
            body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
            return http.post("/chat/completions", json=body, headers=headers)

        first = ask(
            "My e-mail is jane.doe@example.org, please update it.",
            **{"x-banditroute-session": "s1"},
        )
        assert first.headers["x-banditroute-model"] == "local-a"
        # the same session stays on allowed models, sensitive or not
        for _ in range(10):
            later = ask("What time is it?", **{"x-banditroute-session": "s1"})
            assert later.headers["x-banditroute-model"] == "local-a"
            assert later.headers["x-banditroute-restricted"] == "email"
        # the caller's own flag restricts too
        for _ in range(10):
            flagged = ask("An ordinary question.", **{"x-banditroute-sensitive": "true"})
            assert flagged.headers["x-banditroute-model"] == "local-a"
        # a sensitive request naming a cloud model is refused, and nothing is called
        before = len(upstreams["cloud-b"].calls())
        r = http.post(
            "/chat/completions",
            json={
                "model": "cloud-b",
                "messages": [{"role": "user", "content": "key sk-" + "a1B2" * 10}],
            },
        )
        assert r.status_code == 422 and "api_key" in r.json()["detail"]
        assert len(upstreams["cloud-b"].calls()) == before


def test_with_no_allowed_model_the_answer_is_a_422_and_no_upstream_is_called(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    s = settings(tmp_path, upstreams, allow=["on-prem"])  # no model carries the tag
    with serve_app(create_app(s, embedder=embedder)) as srv:
        r = httpx.post(
            f"{srv.url}/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": "Card 4111 1111 1111 1111"}],
            },
            timeout=30,
        )
        assert r.status_code == 422
        assert "payment_card" in r.json()["detail"] and "on-prem" in r.json()["detail"]
        assert "4111" not in r.text
        # an ordinary request still routes
        ok = httpx.post(
            f"{srv.url}/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]},
            timeout=30,
        )
        assert ok.status_code == 200
    assert sum(len(u.calls()) for u in upstreams.values()) == 1


def test_route_restricts_its_candidates_too(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings(tmp_path, upstreams, ["local"]), embedder=embedder)) as c:
        for _ in range(10):
            r = c.post("/v1/route", json={"query": "Charge 4111 1111 1111 1111 please"})
            assert r.status_code == 200 and r.json()["model"] == "local-a"
        r = c.post(
            "/v1/route",
            json={"query": "Mail me at a.b@example.com", "candidates": ["cloud-b", "cloud-c"]},
        )
        assert r.status_code == 422 and "email" in r.json()["detail"]
        assert "example.com" not in r.text
