"""The HTTP API through the real FastAPI app: real embedder, real stores.

The in-process store is the default backend here; the bad-input suite also runs on
the shared Redis (127.0.0.1:6379) under a key prefix unique to the test, deleted
afterwards. No test asserts a speed.
"""

from __future__ import annotations

import hashlib
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
from service.settings import ModelConfig, PolicyConfig
from tests.service_helpers import data_file, make_settings

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def embedder() -> Embedder:
    emb = Embedder()
    emb.load()
    return emb




def _route(c: TestClient, query: str = "What is the capital of France?", **extra: Any) -> Any:
    r = c.post("/v1/route", json={"query": query, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _settled_status(c: TestClient, *, want_applied: int | None = None) -> dict[str, Any]:
    """The policy status once the learner has caught up with the stream."""
    deadline = time.monotonic() + 30
    while True:
        st = c.get("/v1/policies/default").json()
        caught_up = st["feedback_waiting"] == 0 and (
            want_applied is None or st["updates_applied"] == want_applied
        )
        if caught_up or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def _state(c: TestClient) -> tuple[int, int, int, str]:
    """What a bad request must not change: version, applied, total, and the bytes."""
    st = _settled_status(c)
    rt = c.app.state.runtime  # type: ignore[attr-defined]
    snap = c.portal.call(rt.store.load_snapshot, "default")  # type: ignore[union-attr]
    digest = "" if snap is None else hashlib.sha256(snap.state).hexdigest()
    return st["version"], st["updates_applied"], st["feedback_total"], digest


def _detail(r: Any) -> str:
    body = r.json()
    assert "Traceback" not in r.text
    return str(body["detail"])


# ---- the happy path ---------------------------------------------------------


def test_route_then_feedback_is_learned(client: TestClient) -> None:
    d = _route(client, explain=True)
    assert d["model"] in {"small", "medium", "large"}
    assert 0 < d["propensity"] <= 1
    assert d["policy"] == "default" and d["degraded"] is False
    probs = {m: e["probability"] for m, e in d["explanation"].items()}
    assert set(probs) == {"small", "medium", "large"}
    assert probs[d["model"]] == pytest.approx(d["propensity"])
    assert sum(probs.values()) == pytest.approx(1.0)

    r = client.post(
        "/v1/feedback",
        json={
            "event_id": d["event_id"],
            "quality": 0.8,
            "prompt_tokens": 1000,
            "completion_tokens": 500,
        },
    )
    assert r.status_code == 202, r.text
    price = {"small": 0.1, "medium": 0.5, "large": 2.0}[d["model"]]
    assert r.json()["cost_usd"] == pytest.approx(1500 * price / 1e6)
    st = _settled_status(client, want_applied=1)
    assert st["updates_applied"] == 1 and st["feedback_total"] == 1
    assert st["models"][d["model"]]["pulls"] == 1
    assert st["models"][d["model"]]["mean_quality"] == pytest.approx(0.8)


def test_route_on_messages_uses_the_last_user_message(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Translate 'cat' to French."},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "Prove that there are infinitely many primes."},
    ]
    d = _route_messages(client, messages)
    assert d["event_id"]
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    last = rt.batcher.embedder.lookup("Prove that there are infinitely many primes.")
    assert last is not None  # the last user message is what was embedded


def _route_messages(c: TestClient, messages: list[dict[str, str]]) -> Any:
    r = c.post("/v1/route", json={"messages": messages})
    assert r.status_code == 200, r.text
    return r.json()


def test_feedback_as_thumbs_and_judge_score(client: TestClient) -> None:
    a, b = _route(client, "first question"), _route(client, "second question")
    r = client.post(
        "/v1/feedback", json={"event_id": a["event_id"], "thumbs": "down", "cost_usd": 0}
    )
    assert r.status_code == 202 and r.json()["quality"] == 0.0
    r = client.post(
        "/v1/feedback",
        json={
            "event_id": b["event_id"],
            "score": 7,
            "score_min": 1,
            "score_max": 10,
            "cost_usd": 0.001,
            "source": "judge",
        },
    )
    assert r.status_code == 202 and r.json()["quality"] == pytest.approx(6 / 9)


def test_candidates_restrict_the_choice(client: TestClient) -> None:
    for i in range(20):
        assert _route(client, f"question {i}", candidates=["small", "large"])["model"] in {
            "small",
            "large",
        }
    d = _route(client, "only one", candidates=["medium"])
    assert d["model"] == "medium" and d["propensity"] == 1.0


def test_models_register_and_delete(client: TestClient) -> None:
    r = client.post("/v1/models", json={"name": "xl", "input_per_m": 5, "output_per_m": 15})
    assert r.status_code == 201, r.text
    assert "xl" in {m["id"] for m in client.get("/v1/models").json()["data"]}
    # the new model joins the served policy at once, with its optimistic prior
    assert _route(client, "hello", candidates=["xl"])["model"] == "xl"
    assert client.delete("/v1/models/xl").status_code == 204
    assert "xl" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    r = client.post("/v1/route", json={"query": "hello", "candidates": ["xl"]})
    assert r.status_code == 422 and "candidates" in _detail(r)
    r = client.delete("/v1/models/xl")
    assert r.status_code == 404 and "xl" in _detail(r)


def test_health_ready_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"]["store"] is True
    _route(client)
    text = client.get("/metrics").text
    assert "banditroute_requests_total" in text and "banditroute_decisions_total" in text
    assert 'banditroute_feedback_waiting{policy="default"} 0.0' in text
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/route", "/v1/feedback"}
    assert client.get("/docs").status_code == 200


# ---- bad input: a clear 4xx naming the field, and nothing reaches the policy ----


def test_bad_input_is_refused_and_changes_nothing(client: TestClient) -> None:
    good = _route(client)
    ok = client.post(
        "/v1/feedback", json={"event_id": good["event_id"], "quality": 1, "cost_usd": 0.001}
    )
    assert ok.status_code == 202
    before = _state(client)
    fresh = _route(client, "a decision that only ever gets bad feedback")
    eid = fresh["event_id"]

    def post(path: str, body: Any) -> Any:
        if isinstance(body, bytes):
            return client.post(path, content=body, headers={"content-type": "application/json"})
        return client.post(path, json=body)

    cases: list[tuple[str, Any, int, str]] = [
        ("/v1/feedback", b'{"event_id": "x", "quality": ', 400, "malformed JSON"),
        ("/v1/feedback", {"quality": 0.5, "cost_usd": 0}, 422, "event_id"),
        # neither a quality nor a cost (either alone is fine: they may come apart)
        ("/v1/feedback", {"event_id": eid}, 422, "quality"),
        ("/v1/feedback", {"event_id": eid, "quality": 0.5, "prompt_tokens": 3}, 422, "cost_usd"),
        ("/v1/feedback", {"event_id": eid, "quality": 1.5, "cost_usd": 0}, 422, "quality"),
        (
            "/v1/feedback",
            f'{{"event_id": "{eid}", "quality": NaN, "cost_usd": 0}}'.encode(),
            422,
            "quality",
        ),
        (
            "/v1/feedback",
            {"event_id": eid, "quality": 0.5, "prompt_tokens": -3, "completion_tokens": 10},
            422,
            "prompt_tokens",
        ),
        ("/v1/feedback", {"event_id": eid, "quality": 0.5, "cost_usd": -1}, 422, "cost_usd"),
        ("/v1/feedback", {"event_id": eid, "quality": 0.5, "cost_usd": 1e308}, 422, "cost_usd"),
        (
            "/v1/feedback",
            {"event_id": eid, "quality": 0.5, "prompt_tokens": 10**40, "completion_tokens": 1},
            422,
            "prompt_tokens",
        ),
        (
            "/v1/feedback",
            {
                "event_id": eid,
                "score": 1e308,
                "score_min": -1e308,
                "score_max": 1e308,
                "cost_usd": 0,
            },
            422,
            "score",
        ),
        (
            "/v1/feedback",
            {"event_id": "default.nope", "quality": 0.5, "cost_usd": 0},
            404,
            "event_id",
        ),
        ("/v1/feedback", {"event_id": "garbage", "quality": 0.5, "cost_usd": 0}, 404, "event_id"),
        (
            "/v1/feedback",
            {"event_id": good["event_id"], "quality": 0.2, "cost_usd": 0},
            409,
            "already recorded",
        ),
        ("/v1/route", {"query": "x" * 2_000_000}, 413, "limit"),
        ("/v1/route", {"query": "hi", "candidates": ["small", "gpt-9"]}, 422, "candidates"),
        ("/v1/route", {"query": "hi", "candidates": []}, 422, "candidates"),
        ("/v1/route", {"query": "hi", "cost_weight": -1}, 422, "cost_weight"),
        ("/v1/route", {}, 422, "query"),
        ("/v1/route", {"query": "hi", "policy": "nope"}, 404, "policy"),
    ]
    for path, body, code, needle in cases:
        r = post(path, body)
        assert r.status_code == code, (path, body if not isinstance(body, str) else "", r.text)
        assert needle in _detail(r), (needle, r.text)
    assert _state(client) == before
    # the refused event is still open: its first valid feedback counts
    r = client.post("/v1/feedback", json={"event_id": eid, "quality": 0.5, "cost_usd": 0})
    assert r.status_code == 202
    assert _settled_status(client, want_applied=before[1] + 1)["updates_applied"] == before[1] + 1


def test_chunked_body_over_the_limit_is_413(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path, max_query_chars=1000)

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(100):
            yield b"x" * 10_000
        yield b'"}'

    with TestClient(create_app(settings, embedder=embedder)) as c:
        r = c.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        # refused while reading, not after parsing a 1 MB query
        assert r.status_code == 413 and _detail(r).startswith("body:"), r.text
        assert _route(c, "still fine")["event_id"]


def test_expired_event_is_404(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path, decision_ttl_s=0.3)
    with TestClient(create_app(settings, embedder=embedder)) as c:
        d = _route(c)
        time.sleep(0.6)
        r = c.post("/v1/feedback", json={"event_id": d["event_id"], "quality": 1, "cost_usd": 0})
        assert r.status_code == 404 and "expired" in _detail(r)
        assert _settled_status(c)["updates_applied"] == 0


def test_expired_event_gets_the_default_reward(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path, decision_ttl_s=0.2, default_reward=0.25)
    with TestClient(create_app(settings, embedder=embedder)) as c:
        d = _route(c)
        st = _settled_status(c, want_applied=1)
        assert st["updates_applied"] == 1
        assert st["models"][d["model"]]["mean_quality"] == pytest.approx(0.25)


def test_api_keys(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path, client_keys=["client-secret"], admin_key="admin-secret")
    with TestClient(create_app(settings, embedder=embedder)) as c:
        model = {"name": "xl", "input_per_m": 1, "output_per_m": 1}
        r = c.post("/v1/route", json={"query": "hi"})
        assert r.status_code == 401 and "Bearer" in _detail(r)
        r = c.post("/v1/route", json={"query": "hi"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "invalid API key" in _detail(r)
        client_h = {"Authorization": "Bearer client-secret"}
        admin_h = {"Authorization": "Bearer admin-secret"}
        assert c.post("/v1/route", json={"query": "hi"}, headers=client_h).status_code == 200
        r = c.post("/v1/models", json=model, headers=client_h)
        assert r.status_code == 403 and "admin" in _detail(r)
        assert c.post("/v1/models", json=model, headers=admin_h).status_code == 201
        assert c.post("/v1/route", json={"query": "hi"}, headers=admin_h).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


# ---- state survives a restart of the embedded service ------------------------


def test_embedded_restart_keeps_what_was_learned(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, embedder=embedder)) as c:
        for i in range(30):
            d = _route(c, f"question number {i}")
            r = c.post(
                "/v1/feedback", json={"event_id": d["event_id"], "quality": 0.9, "cost_usd": 0.0001}
            )
            assert r.status_code == 202
        st = _settled_status(c, want_applied=30)
        pulls = {m: s["pulls"] for m, s in st["models"].items()}
        assert st["updates_applied"] == 30
    assert (tmp_path / "state" / "default.snapshot").is_file()
    with TestClient(create_app(settings, embedder=embedder)) as c:
        st2 = c.get("/v1/policies/default").json()
        assert st2["updates_applied"] == 30 and st2["version"] >= st["version"]
        assert {m: s["pulls"] for m, s in st2["models"].items()} == pulls
        d = _route(c, "after the restart")
        r = c.post(
            "/v1/feedback", json={"event_id": d["event_id"], "quality": 0.9, "cost_usd": 0.0001}
        )
        assert r.status_code == 202
        assert _settled_status(c, want_applied=31)["updates_applied"] == 31


# ---- the service learns through its own API ----------------------------------


def _llmrouter_slice(
    n_prompts: int, seed: int
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    df = pd.read_parquet(data_file("llmrouter_14tasks.parquet"))
    models = [
        c
        for c in df.columns
        if "|" not in c and c not in {"sample_id", "prompt", "eval_name", "split"}
    ]
    df = df.dropna(subset=models).sample(n=n_prompts, random_state=seed)
    quality = df[models].to_numpy(dtype=float)
    cost = df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=float)
    return df["prompt"].tolist(), models, quality, cost


def test_service_learns_through_its_api(tmp_path: Path, embedder: Embedder) -> None:
    prompts, models, quality, cost = _llmrouter_slice(n_prompts=300, seed=7)
    # prices do not matter for the reward here: each feedback gives the logged cost
    settings = make_settings(
        tmp_path,
        models=[ModelConfig(name=m, input_per_m=1.0, output_per_m=1.0) for m in models],
        policies={"default": PolicyConfig(kind="linucb", cost_weight=0.2)},
        fallback_model=models[0],
    )
    cost_scale = float(np.nanmean(cost, axis=0).max())
    # three passes over the same prompts, each in its own order: the first and the last
    # third then hold the same queries, so the comparison is paired by construction
    rng = np.random.default_rng(7)
    order = np.concatenate([rng.permutation(len(prompts)) for _ in range(3)])
    rewards = []
    with TestClient(create_app(settings, embedder=embedder)) as c:
        for i in order:
            d = _route(c, prompts[i])
            j = models.index(d["model"])
            q, usd = float(quality[i, j]), float(cost[i, j])
            r = c.post(
                "/v1/feedback", json={"event_id": d["event_id"], "quality": q, "cost_usd": usd}
            )
            assert r.status_code == 202, r.text
            rewards.append(q - 0.2 * usd / cost_scale)
        assert _settled_status(c, want_applied=len(order))["updates_applied"] == len(order)
    third = len(rewards) // 3
    first, last = np.mean(rewards[:third]), np.mean(rewards[-third:])
    uniform = float(np.mean(quality - 0.2 * cost / cost_scale))  # a random router's value
    print(json.dumps({"first_third": first, "last_third": last, "random": uniform}))
    # measured: first ~0.40, last ~0.52, random 0.30 (paired thirds vary by ~0.02)
    assert last - first > 0.06, (first, last)
    assert last > uniform + 0.1, (last, uniform)


# ---- hardening: bad text, races, the contract, keys ---------------------------


def _raw(c: TestClient, path: str, body: bytes, **headers: str) -> Any:
    return c.post(path, content=body, headers={"content-type": "application/json", **headers})


def test_unpaired_surrogates_are_422_naming_the_field(client: TestClient) -> None:
    """JSON can carry "\\ud800", which is no text: the tokenizer raised on it and took
    its whole embedding batch down with it (500s for every neighbour)."""
    before = _state(client)[1:3]  # applied, total (a first snapshot may appear meanwhile)
    cases = [
        (b'{"query": "\\ud800 x"}', "query"),
        (b'{"messages": [{"role": "user", "content": "hi \\udc00"}]}', "messages"),
        (b'{"query": "hi", "candidates": ["\\ud800"]}', "candidates"),
        (b'{"query": "hi", "unit_id": "\\ud800"}', "unit_id"),
        (b'{"query": "hi", "\\ud800": 1}', "body"),
    ]
    for body, field in cases:
        r = _raw(client, "/v1/route", body)
        assert r.status_code == 422, (body, r.text)
        assert field in _detail(r) and r.json()["errors"], r.text
    feedback = b'{"event_id": "default.\\ud800", "quality": 1, "cost_usd": 0}'
    r = _raw(client, "/v1/feedback", feedback)
    assert r.status_code == 422 and "event_id" in _detail(r), r.text
    r = _raw(client, "/v1/models", b'{"name": "m\\ud800", "input_per_m": 1, "output_per_m": 1}')
    assert r.status_code == 422 and "name" in _detail(r), r.text
    assert _state(client)[1:3] == before
    assert _route(client, "a valid query after all that")["event_id"]


def test_one_bad_text_does_not_fail_its_batch(tmp_path: Path, embedder: Embedder) -> None:
    """Valid new queries sent with one the model fails on all succeed; before, every
    request of the batch got the bad one's 500."""
    import asyncio

    import httpx

    settings = make_settings(tmp_path, embed_batch_wait_ms=50)
    with TestClient(create_app(settings, embedder=embedder)) as c:
        app = c.app
        rt = app.state.runtime  # type: ignore[attr-defined]
        real = rt.batcher.embedder.embed_prepared

        def fails_on_poison(texts: Any) -> Any:
            if any("POISON" in t for t in texts):
                raise ValueError("the tokenizer failed")
            return real(texts)

        rt.batcher.embedder = type("E", (), {})()
        rt.batcher.embedder.embed_prepared = fails_on_poison
        rt.batcher.embedder.lookup_prepared = embedder.lookup_prepared

        async def burst() -> list[int]:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
                bodies = [{"query": f"fresh question {i} {time.time()}"} for i in range(12)]
                bodies.insert(5, {"query": "POISON"})
                rs = await asyncio.gather(*(h.post("/v1/route", json=b) for b in bodies))
                return [r.status_code for r in rs]

        codes = c.portal.call(burst)  # type: ignore[union-attr]
        assert codes.count(200) == 12 and codes[5] == 500, codes
        assert rt.batcher.batches >= 12


def test_full_embedding_queue_is_503_with_retry_after(
    tmp_path: Path, embedder: Embedder
) -> None:
    settings = make_settings(tmp_path, embed_queue_max=1)
    with TestClient(create_app(settings, embedder=embedder)) as c:
        rt = c.app.state.runtime  # type: ignore[attr-defined]

        async def jam() -> None:
            await rt.batcher.stop()  # nothing drains the queue now
            fut = __import__("asyncio").get_running_loop().create_future()
            rt.batcher._queue.put_nowait(("occupied", fut))

        c.portal.call(jam)  # type: ignore[union-attr]
        r = c.post("/v1/route", json={"query": "a query nobody has asked before"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "queue" in _detail(r)


def test_whitespace_only_message_is_refused_like_a_blank_query(client: TestClient) -> None:
    for body in (
        {"query": " \n\t "},
        {"messages": [{"role": "user", "content": "  \n "}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
    ):
        r = client.post("/v1/route", json=body)
        assert r.status_code == 422, (body, r.text)
    assert client.post("/v1/route", json={"query": "x", "policy": "default",
                                          "experiment": "e"}).status_code == 422


def test_concurrent_deletes_keep_the_catalogue_usable(
    tmp_path: Path, embedder: Embedder
) -> None:
    """Two deletes of one model gave 204 + 500, and two deletes of the last two models
    both succeeded, leaving nothing to route to while /readyz said ready."""
    import asyncio

    import httpx

    with TestClient(create_app(make_settings(tmp_path), embedder=embedder)) as c:
        app = c.app
        rt = app.state.runtime  # type: ignore[attr-defined]
        real = rt.store.delete_model

        async def slow_delete(name: str) -> None:
            await asyncio.sleep(0.05)  # widen the window between the check and the act
            await real(name)

        rt.store.delete_model = slow_delete

        async def both(a: str, b: str) -> list[int]:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
                rs = await asyncio.gather(h.delete(f"/v1/models/{a}"), h.delete(f"/v1/models/{b}"))
                return sorted(r.status_code for r in rs)

        assert c.portal.call(both, "small", "small") == [204, 404]  # type: ignore[union-attr]
        assert c.portal.call(both, "medium", "large") == [204, 409]  # type: ignore[union-attr]
        assert len([m for m in c.get("/v1/models").json()["data"] if m["kind"] == "model"]) == 1
        assert c.get("/readyz").status_code == 200
        assert _route(c, "still routable")["model"] in {"medium", "large"}
        r = c.delete(f"/v1/models/{next(iter(rt.catalogue))}")
        assert r.status_code == 409 and "last model" in _detail(r)
        rt.catalogue.clear()  # however it came about, an empty catalogue is not ready
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["detail"]["catalogue"] is False


def test_auth_comes_before_parsing(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path, client_keys=["client-secret"], admin_key="admin-secret")
    bad = b'{"query": '
    with TestClient(create_app(settings, embedder=embedder)) as c:
        assert _raw(c, "/v1/route", bad).status_code == 401
        assert _raw(c, "/v1/route", bad, authorization="Bearer nope").status_code == 401
        r = _raw(c, "/v1/route", bad, authorization="Bearer client-secret")
        assert r.status_code == 400 and "malformed" in _detail(r)
        r = _raw(c, "/v1/models", bad, authorization="Bearer client-secret")
        assert r.status_code == 403, r.text
        assert _raw(c, "/v1/models", bad, authorization="Bearer admin-secret").status_code == 400


def test_metrics_and_docs_need_a_key_unless_opened(tmp_path: Path, embedder: Embedder) -> None:
    keys: dict[str, Any] = {"client_keys": ["client-secret"], "admin_key": "admin-secret"}
    client_h = {"Authorization": "Bearer client-secret"}
    with TestClient(create_app(make_settings(tmp_path, **keys), embedder=embedder)) as c:
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=client_h).status_code == 200, path
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200
    opened = make_settings(tmp_path, public_metrics=True, public_docs=True, **keys)
    with TestClient(create_app(opened, embedder=embedder)) as c:
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 200, path


def test_openapi_tells_the_truth(client: TestClient) -> None:
    """The spec describes the 422 body actually sent, the answers each operation can
    give, and the one-of rule of /v1/route."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    route = spec["paths"]["/v1/route"]["post"]
    ref = route["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ValidationErrorOut")
    assert {"400", "401", "404", "413", "422", "503"} <= route["responses"].keys()
    delete = spec["paths"]["/v1/models/{name}"]["delete"]["responses"]
    assert {"401", "403", "404", "409"} <= delete.keys()
    body = schemas["RouteRequest"]
    assert [b["required"] for b in body["oneOf"]] == [["query"], ["messages"]]
    # the 422 actually sent matches its declared schema
    r = client.post("/v1/route", json={})
    assert r.status_code == 422
    from service.schemas import ValidationErrorOut

    ValidationErrorOut.model_validate(r.json(), strict=True)
    assert r.json()["errors"][0]["field"] == "body"
