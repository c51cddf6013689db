"""The scripted upstream (simulator.upstream) as a real process, called through the
official OpenAI client: what the gateway's tests rely on it for must hold (the wire
shapes, usage, scripted errors, API keys, disconnects noticed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.upstream_helpers import Upstream, start_upstream

pytestmark = pytest.mark.slow

KEY = "sk-test-upstream"
MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with start_upstream(api_key=KEY, models=["sim-small", "sim-large"]) as up:
        yield up


@pytest.fixture
def up(upstream: Upstream) -> Upstream:
    upstream.reset()
    return upstream


@pytest.fixture
def client(up: Upstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.url, api_key=KEY, max_retries=0, timeout=5.0) as c:
        yield c


def test_completion_shape_usage_and_record(up: Upstream, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="sim-small",
        messages=MESSAGES,
        temperature=0.2,
        user="u-1",
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        extra_body={"not_openai": 7},
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == "sim-small" and r.choices[0].finish_reason == "stop"
    text = r.choices[0].message.content
    assert text is not None and text.startswith("answer from sim-small to: What is the capital")
    assert len(text.split()) == 12
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert r.usage is not None
    assert r.usage.prompt_tokens == chars // 4
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details
    assert r.usage.completion_tokens_details.reasoning_tokens == 0

    (call,) = up.calls()
    assert call["model"] == "sim-small" and call["messages"] == MESSAGES
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert call["extra"]["not_openai"] == 7 and call["extra"]["user"] == "u-1"
    assert call["extra"]["response_format"] == {"type": "json_object"}
    assert call["extra"]["tools"][0]["function"]["name"] == "f"
    assert call["status"] == 200 and call["completed"] and not call["disconnected"]
    assert [m.id for m in client.models.list()] == ["sim-small", "sim-large"]


def test_stream_with_usage_reassembles_the_plain_text(up: Upstream, client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == plain.usage.model_dump()  # type: ignore[union-attr]
    assert len(chunks) == 1 + 12 + 1 + 1
    call = up.calls()[-1]
    assert call["stream"] and call["stream_options"] == {"include_usage": True}
    assert call["chunks_sent"] == 12 and call["completed"] and not call["disconnected"]


def test_scripted_errors_then_normal(up: Upstream, client: openai.OpenAI) -> None:
    up.script([{"status": 429}, {"status": 500}, {"status": 503, "retry_after": 1}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.response.json()["error"]["code"] == "service_unavailable"
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices
    assert [c["status"] for c in up.calls()] == [429, 500, 503, 200]


def test_exact_usage_and_content_by_header_step(up: Upstream, client: openai.OpenAI) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 7, "cached_tokens": 40}
    step = {"usage": {**usage, "reasoning_tokens": 3}, "content": "exact text"}
    r = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-upstream-step": json.dumps(step)}
    )
    assert r.choices[0].message.content == "exact text"
    u = r.usage
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (100, 7, 107)
    assert u.prompt_tokens_details and u.prompt_tokens_details.cached_tokens == 40
    assert u.completion_tokens_details and u.completion_tokens_details.reasoning_tokens == 3
    up.configure(refuse=True)
    refused = client.chat.completions.create(model="m", messages=MESSAGES)
    assert refused.choices[0].message.content == "I'm sorry, but I can't help with that."


def test_api_key_is_required(up: Upstream) -> None:
    with openai.OpenAI(base_url=up.url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="m", messages=MESSAGES)
    bare = httpx.post(f"{up.url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert [(c["status"], c["headers"]["authorization"]) for c in up.calls()] == [
        (401, "Bearer sk-wrong"),
        (401, None),
    ]


def test_a_client_disconnect_mid_stream_is_recorded(up: Upstream) -> None:
    up.script([{"words": 50, "chunk_ms": 20}])
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=5.0) as http:
        with http.stream("POST", f"{up.url}/chat/completions", json=body, headers=headers) as r:
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 4:  # the role chunk and 3 words
                    break
    (call,) = up.wait_for_calls(lambda calls: bool(calls) and calls[0]["disconnected"])
    assert not call["completed"] and 3 <= call["chunks_sent"] < 50


def test_a_scripted_hang_times_the_client_out(up: Upstream, client: openai.OpenAI) -> None:
    up.script([{"delay_ms": 3000}])
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=MESSAGES)
    (call,) = up.wait_for_calls(lambda calls: bool(calls) and calls[0]["disconnected"])
    assert call["status"] is None and not call["completed"]
