"""The gateway's pure pieces: usage pricing, the judge's score parsing, implicit
signals and their session memory."""

from __future__ import annotations

import pytest

from service.gateway.config import ImplicitConfig
from service.gateway.implicit import Implicit, is_refusal
from service.gateway.judge import parse_score
from service.gateway.pricing import Usage, call_cost
from service.store.base import ModelPrice


def test_usage_prices_cached_prompt_tokens_at_their_rate_and_reasoning_as_output() -> None:
    price = ModelPrice("m", 2.0, 8.0, {"cached_input_per_m": 0.5})
    usage = Usage.parse(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 600},
            "completion_tokens_details": {"reasoning_tokens": 200},
        }
    )
    assert usage == Usage(1000, 300, 600, 200)
    assert call_cost(price, usage) == pytest.approx((400 * 2.0 + 600 * 0.5 + 300 * 8.0) / 1e6)
    # no cached price: cached tokens cost the input price
    assert call_cost(ModelPrice("m", 2.0, 8.0), usage) == pytest.approx(
        (1000 * 2.0 + 300 * 8.0) / 1e6
    )


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"prompt_tokens": 3},
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": True, "completion_tokens": 2},
        "12",
    ],
)
def test_missing_or_malformed_usage_is_none(usage: object) -> None:
    assert Usage.parse(usage) is None


@pytest.mark.parametrize(
    ("text", "quality"),
    [
        ("Score: 10", 1.0),
        ("score=1", 0.0),
        ("I'd give it 7.", 6 / 9),
        ("Score: 5.5", 0.5),
        ("Score: 0", None),
        ("Score: 11", None),
        ("no idea", None),
    ],
)
def test_judge_scores_map_1_to_10_onto_0_to_1(text: str, quality: float | None) -> None:
    got = parse_score(text)
    assert got == (None if quality is None else pytest.approx(quality))


def test_refusals_are_recognised_and_ordinary_answers_are_not() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with this request.")
    assert not is_refusal("The capital of France is Paris. I can't stress this enough.")
    assert not is_refusal("Here is how I would help: first, ...")


def test_implicit_signals_read_the_session_and_are_off_by_default() -> None:
    off = Implicit(ImplicitConfig())
    assert not off.enabled
    off.on_answer("s", "e1", 1.0, "What is 2+2?")
    assert off.on_request("s", "What is 2+2?") is None

    on = Implicit(ImplicitConfig(regenerate=0.0, continued=0.7, refusal=0.1))
    assert on.on_request("s", "anything") is None  # no previous turn
    on.on_answer("s", "e1", 1.0, "What is 2+2?")
    # the same question again (case and spacing aside): the answer failed
    prev, source, q = on.on_request("s", "  what is 2+2? ") or (None, "", -1.0)
    assert prev is not None and prev.event_id == "e1"
    assert (source, q) == ("implicit_regenerate", 0.0)
    signal = on.on_request("s", "And 3+3?")
    assert signal is not None and signal[1:] == ("implicit_continued", 0.7)
    assert on.on_request("other", "And 3+3?") is None  # sessions are apart
    assert on.refusal("I can't help with that.") == 0.1
    assert on.refusal("4") is None


def test_plain_stream_chunks_are_relayed_with_the_catalogue_name_unparsed() -> None:
    from service.gateway.proxy import _FastChunks

    fast = _FastChunks("up-model", "small", needs_text=False)
    line, content = fast.plain(
        '{"id":"c1","model":"up-model","choices":[{"index":0,"delta":{"content":"Hi"}}]}'
    ) or (b"", -1)
    assert line == (
        b'data: {"id":"c1","model":"small","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    )
    assert content == 1
    role = fast.plain(
        '{"model": "up-model", "choices": [{"delta": {"role": "assistant", "content": ""}}]}'
    )
    assert role is not None and role[1] == 0 and b'"model": "small"' in role[0]
    # usage, a finish reason, the name inside the content, another layout: parsed instead
    assert fast.plain('{"model":"up-model","choices":[],"usage":{"prompt_tokens":1}}') is None
    assert fast.plain('{"model":"up-model","choices":[{"finish_reason":"stop"}]}') is None
    assert (
        fast.plain(
            '{"model":"up-model","choices":[{"delta":{"content":"\\"model\\":\\"up-model\\""}}]}'
        )
        is not None
    )
    assert fast.plain('{"model" : "up-model"}') is None
    assert _FastChunks("up-model", "small", needs_text=True).plain('{"model":"up-model"}') is None
