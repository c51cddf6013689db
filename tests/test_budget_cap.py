"""The hard cap over real sockets (benchmarks/budget_cap.py in small): 50 concurrent
chat completions through the gateway, split across two apps served by uvicorn in this
process on one Redis key prefix (two workers: two runtimes, two connection pools, one
ledger), calling a real upstream process whose completions are drawn per call within
`max_tokens`. The tenant's settled spend stays within its cap plus one request's
largest cost, and equals what the clients were told each call cost.

The same burst against a reserve that reads the budget and then writes its hold (not
one atomic step) overspends the cap by several requests: the check has teeth. And the
output bound reserved for a request with `n` choices counts all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.budgets.config import CapConfig, TenantConfig
from service.budgets.ledger import EPS_USD, Reservation
from service.budgets.ledger_redis import RedisLedger
from service.embedder import Embedder
from service.gateway.config import UpstreamConfig
from service.gateway.request import ChatCompletionRequest
from service.settings import ModelConfig, PolicyConfig
from tests.gateway_helpers import Served, serve_app
from tests.service_helpers import REDIS_URL, drop_prefix, make_settings, redis_up
from tests.upstream_helpers import Upstream, start_upstream

N = 50
MAX_TOKENS = 300
# USD per 1M input / output tokens
PRICES = {"small": (0.15, 0.6), "medium": (1.0, 4.0), "large": (5.0, 15.0)}
WEIGHTS = {"small": 0.15, "medium": 0.25, "large": 0.6}
TENANT = "capped"


def questions(n: int, seed: int) -> list[str]:
    return [f"Question {seed}-{i}: how do budget caps hold under load, briefly?" for i in range(n)]


def largest_cost(qs: list[str]) -> float:
    """The most one request can cost (USD): its prompt and MAX_TOKENS at the dearest
    model (the gateway counts a prompt as characters // 4 tokens, as the upstream does)."""
    tokens = max(max(1, len(q) // 4) for q in qs)
    return max((tokens * i + MAX_TOKENS * o) / 1e6 for i, o in PRICES.values())


@dataclass(frozen=True)
class Burst:
    cap: float
    statuses: list[int]
    costs: list[float]  # x-banditroute-cost-usd of each 200
    refusals: list[tuple[str | None, str]]  # (Retry-After, body) of each 429
    state: dict[str, Any]  # GET /v1/tenants/capped's cap, after the burst
    largest: float


async def _fire(workers: list[Served], qs: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    clients = [httpx.AsyncClient(base_url=w.base, limits=limits, timeout=60) for w in workers]
    go = asyncio.Event()

    async def one(i: int, q: str) -> httpx.Response:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": q}],
            "max_tokens": MAX_TOKENS,
        }
        await go.wait()
        return await clients[i % len(clients)].post(
            "/v1/chat/completions", json=body, headers={"x-banditroute-tenant": TENANT}
        )

    async def warm(i: int, q: str) -> None:
        r = await clients[i % len(clients)].post("/v1/route", json={"query": q})
        assert r.status_code == 200, r.text

    try:
        # each worker embeds its questions beforehand and opens its connections, so the
        # burst reaches the gate together: the harshest race for the ledger
        await asyncio.gather(*(warm(i, q) for i, q in enumerate(qs)))
        tasks = [asyncio.create_task(one(i, q)) for i, q in enumerate(qs)]
        await asyncio.sleep(0.05)
        go.set()  # released together
        return list(await asyncio.gather(*tasks))
    finally:
        for c in clients:
            await c.aclose()


def burst(tmp_path: Path, embedder: Embedder, up: Upstream, seed: int) -> Burst:
    qs = questions(N, seed)
    largest = largest_cost(qs)
    cap = 3 * largest  # a few of the dearest calls; the burst asks for many times more
    rng = np.random.default_rng(seed)
    up.reset()
    # each call: MAX_TOKENS/2..MAX_TOKENS completion tokens (a word a token) after
    # 100-300 ms, so actual costs differ from the estimates and the calls overlap
    up.script(
        [
            {
                "words": int(rng.integers(MAX_TOKENS // 2, MAX_TOKENS + 1)),
                "delay_ms": float(rng.uniform(100, 300)),
            }
            for _ in range(N)
        ]
    )
    upstream = UpstreamConfig(base_url=up.url, max_connections=N)
    settings = make_settings(
        tmp_path,
        redis_url=REDIS_URL,
        models=[
            ModelConfig(name=m, input_per_m=i, output_per_m=o, upstream=upstream)
            for m, (i, o) in PRICES.items()
        ],
        policies={"default": PolicyConfig(kind="random", params={"weights": WEIGHTS})},
        tenants={TENANT: TenantConfig(cap=CapConfig(usd=cap, window=366 * 86400.0))},
    )
    try:
        with ExitStack() as stack:
            workers = [
                stack.enter_context(serve_app(create_app(settings, embedder=embedder)))
                for _ in range(2)
            ]
            answers = asyncio.run(_fire(workers, qs))
            state = httpx.get(f"{workers[1].url}/tenants/{TENANT}", timeout=10).json()["cap"]
    finally:
        drop_prefix(settings.key_prefix)
    return Burst(
        cap,
        [r.status_code for r in answers],
        [float(r.headers["x-banditroute-cost-usd"]) for r in answers if r.status_code == 200],
        [(r.headers.get("retry-after"), r.text) for r in answers if r.status_code == 429],
        state,
        largest,
    )


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    if not redis_up():
        pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
    with start_upstream() as u:
        yield u


@pytest.mark.slow
def test_50_concurrent_requests_on_two_workers_stay_within_the_cap(
    tmp_path: Path, embedder: Embedder, up: Upstream
) -> None:
    b = burst(tmp_path, embedder, up, seed=1)
    assert set(b.statuses) <= {200, 429}, b.statuses
    # the cap binds (some refused) and serves (some answered)
    assert b.costs and b.refusals, b.statuses
    for retry_after, body in b.refusals:
        assert retry_after is not None and int(retry_after) >= 1
        assert "budget" in body
    spent = b.state["spent_usd"]
    # every call settled exactly once, with the cost its client was told; none held
    assert spent == pytest.approx(sum(b.costs), rel=1e-9, abs=1e-12)
    assert b.state["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    assert b.state["open_reservations"] == 0
    assert max(b.costs) <= b.largest
    # the goal: never over the cap by more than one request's cost
    assert spent <= b.cap + b.largest, (spent, b.cap, b.largest)
    # and as the estimates bound the calls here, never over it at all
    assert spent <= b.cap + EPS_USD


# the test client and both apps share one interpreter, so a burst reaches the gate a
# few ms a request apart; a racy reserve's window is widened to span the whole burst,
# as many workers on many cores would overlap it
RACE_WINDOW_S = 1.0


async def _racy_reserve(
    self: RedisLedger, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
) -> Reservation:
    """Read what is left, then hold without a check: two steps where the real reserve
    takes one."""
    st = await self._state(tenant, cap, now)
    if amount > st.remaining + EPS_USD:
        return Reservation(False, st.spent, st.reserved, cap.usd, st.window_start, st.window_end, 1)
    await asyncio.sleep(RACE_WINDOW_S)
    unchecked = cap.model_copy(update={"usd": 1e9})
    held, _ = await RedisLedger._run(self, tenant, event_id, amount, unchecked, time.time())
    return held


@pytest.mark.slow
def test_the_check_catches_a_reserve_that_is_not_atomic(
    tmp_path: Path, embedder: Embedder, up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisLedger, "_reserve", _racy_reserve)
    b = burst(tmp_path, embedder, up, seed=1)
    # the bound the test above holds the real ledger to, broken
    assert b.state["spent_usd"] > b.cap + b.largest, (b.state, b.cap, b.largest)


def test_the_reserved_output_bound_counts_every_choice() -> None:
    # the upstream's usage counts the tokens of all `n` choices: so does the estimate
    def bound(**body: Any) -> int | None:
        msgs = [{"role": "user", "content": "hi"}]
        return ChatCompletionRequest(model="auto", messages=msgs, **body).max_output_tokens

    assert bound(max_tokens=100) == 100
    assert bound(max_tokens=100, n=3) == 300
    assert bound(max_completion_tokens=50, max_tokens=100, n=2) == 100
    assert bound(n=3) is None
    assert bound(max_tokens=100, n=True) == 100


@pytest.mark.slow
def test_an_upstream_refusal_releases_its_reservation(
    tmp_path: Path, embedder: Embedder, up: Upstream
) -> None:
    """A 4xx from the upstream generated nothing: its hold is released at once, not
    left to block the cap until its timeout."""
    up.reset()
    up.script([{"status": 400}])
    upstream = UpstreamConfig(base_url=up.url)
    settings = make_settings(
        tmp_path,
        redis_url=REDIS_URL,
        models=[ModelConfig(name="small", input_per_m=1.0, output_per_m=1.0, upstream=upstream)],
        policies={"default": PolicyConfig(kind="random")},
        tenants={TENANT: TenantConfig(cap=CapConfig(usd=1.0))},
    )
    try:
        with serve_app(create_app(settings, embedder=embedder)) as w:
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(
                f"{w.base}/v1/chat/completions",
                json=body,
                headers={"x-banditroute-tenant": TENANT},
                timeout=30,
            )
            assert r.status_code == 400, r.text
            state = httpx.get(f"{w.url}/tenants/{TENANT}", timeout=10).json()["cap"]
    finally:
        drop_prefix(settings.key_prefix)
    assert state["open_reservations"] == 0
    assert state["reserved_usd"] == pytest.approx(0.0, abs=1e-12)
    assert state["spent_usd"] == 0.0
