"""The OpenAI-compatible gateway end to end: the official `openai` client calls the
real app over a loopback socket, and the app calls real upstream processes
(`simulator.upstream`, one per model) that speak the chat-completions API with
scripted answers, usage, latency, 429s and 5xx. Nothing here asserts a speed."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from service.app import StartupError, create_app
from service.embedder import Embedder
from service.gateway.config import GatewayConfig, ImplicitConfig, JudgeConfig, UpstreamConfig
from service.settings import ModelConfig, PolicyConfig, Settings
from tests.gateway_helpers import Served, serve_app
from tests.service_helpers import make_settings
from tests.upstream_helpers import Upstream, start_upstream

pytestmark = pytest.mark.slow

PRICES = {"small": (0.1, 0.2), "medium": (1.0, 2.0), "large": (5.0, 15.0), "judge": (3.0, 6.0)}
CACHED = {"large": 0.5}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with (
        start_upstream() as small,
        start_upstream() as medium,
        start_upstream() as large,
        start_upstream() as judge,
    ):
        yield {"small": small, "medium": medium, "large": large, "judge": judge}


@pytest.fixture(autouse=True)
def _fresh_upstreams(upstreams: dict[str, Upstream]) -> Iterator[None]:
    for u in upstreams.values():
        u.reset()
    yield
    for u in upstreams.values():
        u.reset()


def settings(
    tmp_path: Path,
    ups: dict[str, Upstream],
    *,
    weights: dict[str, float] | None = None,
    gateway: GatewayConfig | None = None,
    read_timeout_s: float = 5.0,
    **overrides: Any,
) -> Settings:
    models = [
        ModelConfig(
            name=name,
            input_per_m=PRICES[name][0],
            output_per_m=PRICES[name][1],
            cached_input_per_m=CACHED.get(name),
            upstream=UpstreamConfig(
                base_url=u.url, model=f"{name}-up", read_timeout_s=read_timeout_s
            ),
        )
        for name, u in ups.items()
    ]
    # a weighted random router: its propensities are known exactly; the judge model
    # is a catalogue model that is never routed to
    w = {"small": 0.5, "medium": 0.3, "large": 0.2, "judge": 0.0, **(weights or {})}
    return make_settings(
        tmp_path,
        models=models,
        policies={"default": PolicyConfig(kind="random", params={"weights": w})},
        gateway=gateway or GatewayConfig(),
        **overrides,
    )


_clients: list[openai.OpenAI] = []


def client_of(srv: Served) -> openai.OpenAI:
    client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def log_of(srv: Served, policy: str = "default") -> list[dict[str, Any]]:
    r = httpx.get(f"{srv.base}/v1/log/{policy}", params={"limit": 5000})
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def expected_cost(model: str, usage: Any) -> float:
    """usage x catalogue price, by hand: cached prompt tokens at the cached rate."""
    inp, out = PRICES[model]
    cached_rate = CACHED.get(model, inp)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (details.cached_tokens if details is not None else 0) or 0
    return (
        (usage.prompt_tokens - cached) * inp + cached * cached_rate + usage.completion_tokens * out
    ) / 1e6


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def feedback(srv: Served, **body: Any) -> httpx.Response:
    return httpx.post(f"{srv.base}/v1/feedback", json=body, timeout=10)


# ---- a completion and a stream through the official client ------------------------


def test_completion_and_stream_through_the_openai_client(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 30, "cached_tokens": 80}
    for u in upstreams.values():
        u.configure(usage=usage)
    with serve_app(create_app(settings(tmp_path, upstreams), embedder=embedder)) as srv:
        client = client_of(srv)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
        completion = raw.parse()
        h = raw.headers
        model = h["x-banditroute-model"]
        assert model in ("small", "medium", "large")
        assert completion.model == model  # the answer is the upstream's but for `model`
        assert completion.choices[0].message.content.startswith(f"answer from {model}-up")
        assert completion.usage is not None and completion.usage.prompt_tokens == 120
        cost = expected_cost(model, completion.usage)
        assert float(h["x-banditroute-cost-usd"]) == pytest.approx(cost, rel=1e-12)
        assert float(h["x-banditroute-propensity"]) == pytest.approx(
            {"small": 0.5, "medium": 0.3, "large": 0.2}[model]
        )
        assert h["x-banditroute-policy"] == "default"
        # the call's cost is attached: a quality alone completes the event
        r = feedback(srv, event_id=h["x-banditroute-event-id"], quality=0.9)
        assert r.status_code == 202, r.text
        assert r.json()["cost_usd"] == pytest.approx(cost, rel=1e-12)
        assert r.json()["cost_estimated"] is False
        (row,) = [e for e in log_of(srv) if e["event_id"] == h["x-banditroute-event-id"]]
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-12)
        assert row["quality"] == 0.9 and row["model"] == model

        # a stream with usage requested: the final chunk carries usage and the event
        raw_stream = client.chat.completions.with_raw_response.create(
            model="banditroute/default",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
        hs = raw_stream.headers
        chunks = list(raw_stream.parse())
        model = hs["x-banditroute-model"]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith(f"answer from {model}-up")
        assert all(c.model == model for c in chunks)
        final = chunks[-1]
        assert final.usage is not None and not final.choices
        meta = (final.model_extra or {})["banditroute"]
        assert meta["event_id"] == hs["x-banditroute-event-id"]
        cost = expected_cost(model, final.usage)
        assert meta["cost_usd"] == pytest.approx(cost, rel=1e-12)
        r = feedback(srv, event_id=meta["event_id"], thumbs="up")
        assert r.status_code == 202, r.text
        (row,) = [e for e in log_of(srv) if e["event_id"] == meta["event_id"]]
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-12) and row["quality"] == 1.0

        # without include_usage the client sees no usage chunk; the finishing chunk
        # carries the event with its cost
        chunks = list(client.chat.completions.create(model="auto", messages=QUESTION, stream=True))
        assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
        meta = (chunks[-1].model_extra or {})["banditroute"]
        assert meta["cost_usd"] > 0 and meta["event_id"]
        # tools, response_format and other fields pass through untouched
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=QUESTION,
            temperature=0.3,
            response_format={"type": "json_object"},
            tools=tools,  # type: ignore[arg-type]
        )
        (call,) = [
            c
            for c in upstreams[raw.headers["x-banditroute-model"]].calls()
            if c["extra"].get("tools")
        ]
        assert call["extra"]["tools"] == tools
        assert call["extra"]["response_format"] == {"type": "json_object"}
        assert call["extra"]["temperature"] == 0.3
        calls = [c for u in upstreams.values() for c in u.calls()]
        # streams asked the upstream for usage, whatever the client asked
        assert all((c["stream_options"] or {}).get("include_usage") for c in calls if c["stream"])


# ---- fallbacks ------------------------------------------------------------------


def test_a_429_falls_back_to_the_next_candidate_with_both_outcomes_logged(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    upstreams["large"].configure(status=429)
    w = {"small": 0.5, "medium": 0.3, "large": 0.2}
    n = 40
    s = settings(tmp_path, upstreams, read_timeout_s=1.0)
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)
        served = []
        for _ in range(n):
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
            completion = raw.parse()  # exactly one answer, never an error
            h = raw.headers
            assert completion.model == h["x-banditroute-model"] != "large"
            served.append((h["x-banditroute-event-id"], h["x-banditroute-model"], h))
            r = feedback(srv, event_id=h["x-banditroute-event-id"], quality=1.0)
            assert r.status_code == 202
        fallbacks = [s for s in served if s[2].get("x-banditroute-fallbacks") == "1"]
        assert fallbacks, "the seeded router never chose the rate-limited model"
        events = log_of(srv)
        failed = [e for e in events if e["source"] == "upstream_error"]
        # each failed call is its own decision's outcome: the model, its propensity
        assert len(failed) == len(fallbacks) == len(upstreams["large"].calls())
        for e in failed:
            assert e["model"] == "large" and e["quality"] == 0.0 and e["cost_usd"] == 0.0
            assert e["propensity"] == pytest.approx(w["large"])
            assert sorted(e["candidates"]) == ["judge", "large", "medium", "small"]
        by_id = {e["event_id"]: e for e in events if e["source"] == "user"}
        for event_id, model, h in served:
            e = by_id[event_id]
            if h.get("x-banditroute-fallbacks") == "1":
                # the fallback chose among the candidates left: p(m) / (1 - p(large))
                assert e["propensity"] == pytest.approx(w[model] / (1 - w["large"]))
                assert "large" not in e["candidates"]
            else:
                assert e["propensity"] == pytest.approx(w[model])
            assert float(h["x-banditroute-propensity"]) == pytest.approx(e["propensity"])
        # one answer per request reached the client: one successful upstream call each
        ok = [c for m in ("small", "medium") for c in upstreams[m].calls() if c["status"] == 200]
        assert len(ok) == n

        # a hanging upstream hits its timeout and falls back too
        upstreams["large"].configure(status=None, latency_ms=3000)
        seen_timeout = False
        for _ in range(15):
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
            assert raw.parse().model != "large"
            seen_timeout |= raw.headers.get("x-banditroute-fallbacks") == "1"
        assert seen_timeout

        # every candidate failing: one OpenAI-style error, no stray answer
        for name in ("small", "medium", "large"):
            upstreams[name].configure(status=500, latency_ms=None)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="auto", messages=QUESTION)
        assert "tried" in str(err.value)


def test_a_stream_falls_back_before_its_first_byte(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    upstreams["large"].configure(status=503)
    s = settings(tmp_path, upstreams, weights={"small": 1, "medium": 0, "large": 9})
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=QUESTION, stream=True
            )
            chunks = list(raw.parse())
            assert raw.headers["x-banditroute-model"] == "small"
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            meta = (chunks[-1].model_extra or {})["banditroute"]
            assert meta["model"] == "small" and meta["cost_usd"] > 0
            if raw.headers.get("x-banditroute-fallbacks") == "1":
                # over the candidates left, small is the only one with weight: p = 1
                assert meta["propensity"] == pytest.approx(1.0)
        failed = [e for e in log_of(srv) if e["source"] == "upstream_error"]
        assert failed and all(e["model"] == "large" for e in failed)
        # the only candidates left have no chance: the client gets the failure, not a 422
        s2 = settings(tmp_path / "b", upstreams, weights={"small": 0, "medium": 0, "large": 1})
    with serve_app(create_app(s2, embedder=embedder)) as srv:
        with pytest.raises(openai.APIStatusError) as err:
            client_of(srv).chat.completions.create(model="auto", messages=QUESTION)
        assert err.value.status_code == 503


# ---- the judge ------------------------------------------------------------------


def _metric(srv: Served, name: str, **labels: str) -> float:
    metric = getattr(srv.runtime.metrics, name)
    return float(metric.labels(**labels)._value.get() if labels else metric._value.get())


def test_the_judge_grades_its_fraction_and_never_delays_a_response(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    # a judge slower than the whole run: a response that waited for it would hang
    upstreams["judge"].configure(latency_ms=300_000, content="Score: 9")
    fraction, n = 0.25, 1000
    judge = JudgeConfig(
        model="judge", fraction=fraction, max_per_minute=10_000, max_queue=n, seed=7
    )
    gateway = GatewayConfig(judge=judge, feedback_wait_s=3600)
    s = settings(tmp_path, upstreams, gateway=gateway, read_timeout_s=600)
    questions = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(20)]
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)
        for i in range(n):
            client.chat.completions.create(model="auto", messages=questions[i % 20])
        sampled = _metric(srv, "judge", outcome="sampled")
        sigma = math.sqrt(n * fraction * (1 - fraction))
        print(f"judge sampled {sampled:.0f} of {n} (expected {n * fraction:.0f} ± {3 * sigma:.0f})")
        assert abs(sampled - n * fraction) <= 3 * sigma
        # every response came back while the judge's calls were still running
        judge_calls = upstreams["judge"].calls()
        assert judge_calls and not any(c["completed"] for c in judge_calls)


def test_user_feedback_within_the_wait_wins_over_the_judge_exactly_once(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    upstreams["judge"].configure(content="Score: 10")
    judge = JudgeConfig(model="judge", fraction=1.0, seed=1)
    s = settings(tmp_path, upstreams, gateway=GatewayConfig(judge=judge, feedback_wait_s=1.5))
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)
        ids = []
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
            ids.append(raw.headers["x-banditroute-event-id"])
        rated, unrated = ids
        assert feedback(srv, event_id=rated, quality=0.2).status_code == 202
        wait_until(
            "the judge's grades to be applied or dropped",
            lambda: (
                _metric(srv, "machine_feedback", source="judge", outcome="applied") == 1
                and _metric(srv, "machine_feedback", source="judge", outcome="superseded") == 1
            ),
        )
        events = log_of(srv)
        assert [(e["source"], e["quality"]) for e in events if e["event_id"] == rated] == [
            ("user", 0.2)
        ]
        assert [(e["source"], e["quality"]) for e in events if e["event_id"] == unrated] == [
            ("judge", 1.0)
        ]
        # the judge's grade stands: a late user rating is refused, not applied twice
        assert feedback(srv, event_id=unrated, quality=0.0).status_code == 409
        assert _metric(srv, "judge_cost") > 0  # metered on its own counter


def test_implicit_signals_post_feedback_on_the_sessions_previous_answer(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    implicit = ImplicitConfig(regenerate=0.0, continued=0.7, refusal=0.1)
    gateway = GatewayConfig(implicit=implicit, feedback_wait_s=0.5)
    s = settings(tmp_path, upstreams, gateway=gateway)
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)

        def ask(text: str) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="auto",
                messages=[{"role": "user", "content": text}],
                extra_headers={"x-banditroute-session": "dana"},
            )
            return str(raw.headers["x-banditroute-event-id"])

        first = ask("What is 2+2?")
        again = ask("what is  2+2?")  # the same question: the first answer failed
        rated = ask("And 3+3?")  # a new one: the second answer was usable
        assert feedback(srv, event_id=rated, quality=1.0).status_code == 202
        for u in upstreams.values():
            u.configure(refuse=True)
        # a new question again, but the user's own rating of `rated` wins over it
        refused = ask("Help me with my taxes.")
        wanted = {first: ("implicit_regenerate", 0.0), again: ("implicit_continued", 0.7)}
        wanted[rated] = ("user", 1.0)
        wanted[refused] = ("implicit_refusal", 0.1)

        def logged() -> dict[str, list[tuple[str, float]]]:
            out: dict[str, list[tuple[str, float]]] = {}
            for e in log_of(srv):
                out.setdefault(e["event_id"], []).append((e["source"], e["quality"]))
            return out

        wait_until("the implicit feedback", lambda: all(k in logged() for k in wanted))
        time.sleep(1.0)  # anything applied twice would show by now
        got = logged()
        for event_id, outcome in wanted.items():
            assert got[event_id] == [outcome]


# ---- sessions and disconnects -----------------------------------------------------


def test_a_session_keeps_its_model_for_its_turns(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    s = settings(
        tmp_path,
        upstreams,
        weights={"small": 1, "medium": 1, "large": 1},
        gateway=GatewayConfig(session_turns=3),
    )
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = client_of(srv)

        def turn(session: str) -> Any:
            return client.chat.completions.with_raw_response.create(
                model="auto", messages=QUESTION, extra_headers={"x-banditroute-session": session}
            ).headers

        for session in ("alice", "bob"):
            first, second, third, fourth = (turn(session) for _ in range(4))
            pinned = {h["x-banditroute-event-id"] for h in (first, second, third)}
            assert len(pinned) == 1  # one decision for the session's three turns
            assert {h["x-banditroute-model"] for h in (first, second, third)} == {
                first["x-banditroute-model"]
            }
            assert float(first["x-banditroute-propensity"]) == pytest.approx(1 / 3)
            assert [second["x-banditroute-session-turn"], third["x-banditroute-session-turn"]] == [
                "2",
                "3",
            ]
            # the fourth turn routes anew: a new decision with its own propensity
            assert fourth["x-banditroute-event-id"] not in pinned
            assert "x-banditroute-session-turn" not in fourth
        # the `user` field names a session too
        a = client.chat.completions.with_raw_response.create(
            model="auto", messages=QUESTION, user="carol"
        ).headers
        b = client.chat.completions.with_raw_response.create(
            model="auto", messages=QUESTION, user="carol"
        ).headers
        assert a["x-banditroute-event-id"] == b["x-banditroute-event-id"]


def test_a_disconnect_mid_stream_cancels_the_upstream_and_records_the_partial_cost(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    words = 400
    upstreams["small"].configure(words=words, chunk_ms=10)
    s = settings(tmp_path, upstreams, weights={"small": 1, "medium": 0, "large": 0})
    prompt = "Tell me a long story about a lighthouse keeper."
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": True}
    with serve_app(create_app(s, embedder=embedder)) as srv:
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{srv.url}/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                event_id = resp.headers["x-banditroute-event-id"]
                read = 0
                for line in resp.iter_lines():
                    if line.startswith("data:") and _content(line[5:]):
                        read += 1
                    if read >= 5:
                        break
        calls = upstreams["small"].wait_for_calls(
            lambda cs: bool(cs) and cs[-1]["disconnected"], timeout=15
        )
        sent = calls[-1]["chunks_sent"]
        assert calls[-1]["completed"] is False and sent < words
        # a quality for the event completes it with the partial cost attached
        r = feedback(srv, event_id=event_id, quality=0.0)
        assert r.status_code == 202, r.text
        wait_until(
            "the event to be logged", lambda: any(e["event_id"] == event_id for e in log_of(srv))
        )
        (row,) = [e for e in log_of(srv) if e["event_id"] == event_id]
        inp, out = PRICES["small"]
        prompt_tokens = len(prompt) // 4
        assert (prompt_tokens * inp + 5 * out) / 1e6 <= row["cost_usd"]
        assert row["cost_usd"] <= (prompt_tokens * inp + sent * out) / 1e6
        assert _metric(srv, "upstream_calls", model="small", outcome="disconnected") == 1


def _content(payload: str) -> str:
    chunk = json.loads(payload)
    return "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])


# ---- bad input and start-up --------------------------------------------------------


def test_bad_requests_are_named_and_change_nothing(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    with serve_app(create_app(settings(tmp_path, upstreams), embedder=embedder)) as srv:
        client = client_of(srv)
        with pytest.raises(openai.NotFoundError) as nf:
            client.chat.completions.create(model="gpt-17", messages=QUESTION)
        assert "banditroute/default" in str(nf.value) and "small" in str(nf.value)
        r = httpx.post(f"{srv.url}/chat/completions", json={"model": "auto"})
        assert r.status_code == 422 and "messages" in r.json()["detail"]
        r = httpx.post(
            f"{srv.url}/chat/completions",
            json={"model": "auto", "messages": [{"role": "system", "content": "hi"}]},
        )
        assert r.status_code == 422 and "messages" in r.json()["detail"]
        r = httpx.post(
            f"{srv.url}/chat/completions",
            json={"model": "auto", "messages": QUESTION},
            headers={"x-banditroute-cost-weight": "-1"},
        )
        assert r.status_code == 422 and "x-banditroute-cost-weight" in r.json()["detail"]
        assert not [c for u in upstreams.values() for c in u.calls()]
        # a named catalogue model is called directly, with no decision
        direct = client.chat.completions.with_raw_response.create(model="medium", messages=QUESTION)
        assert direct.parse().model == "medium"
        assert "x-banditroute-event-id" not in direct.headers
        listed = {m.id for m in client.models.list()}
        assert {"auto", "banditroute/default", "small", "medium"} <= listed


def test_a_missing_api_key_variable_is_a_start_up_error_naming_the_model(
    tmp_path: Path,
    embedder: Embedder,
    upstreams: dict[str, Upstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings(tmp_path, upstreams)
    s.models[1].upstream = UpstreamConfig(
        base_url=upstreams["medium"].url, api_key_env="BR_TEST_KEY"
    )
    monkeypatch.delenv("BR_TEST_KEY", raising=False)
    with pytest.raises(StartupError, match=r"medium.*BR_TEST_KEY|BR_TEST_KEY.*medium"):
        with TestClient(create_app(s, embedder=embedder)):
            pass


def test_the_api_key_is_sent_upstream_and_never_logged(
    tmp_path: Path,
    embedder: Embedder,
    upstreams: dict[str, Upstream],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BR_TEST_KEY", "sk-test-123")
    with start_upstream(api_key="sk-test-123") as keyed:
        ups = {**upstreams, "medium": keyed}
        s = settings(tmp_path, ups, weights={"small": 0, "medium": 1, "large": 0})
        s.models[1].upstream = UpstreamConfig(base_url=keyed.url, api_key_env="BR_TEST_KEY")
        with serve_app(create_app(s, embedder=embedder)) as srv:
            out = client_of(srv).chat.completions.create(model="auto", messages=QUESTION)
            assert out.model == "medium"
        assert keyed.calls()[-1]["headers"]["authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in caplog.text
    assert "sk-test-123" not in json.dumps(s.model_dump(mode="json"))
