"""Cascades as arms: model A answers, and model B answers instead when A's answer's
confidence falls below the cascade's threshold. The policy chooses a cascade like a
model (its decision and propensity are the cascade arm's); the cost learned is the
sum of the calls made (A, the confidence check, B when escalated) and the quality is
the final answer's. Confidence signals are pluggable: a judge model's grade, the
agreement of two samples of A, or A's own token log-probabilities."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from service.gateway.config import CascadeConfig
from service.gateway.judge import RUBRIC, parse_score
from service.gateway.pricing import Usage, call_cost
from service.gateway.upstreams import UpstreamPool
from service.store.base import ModelPrice

_WORD = re.compile(r"\w+", re.UNICODE)


def cascade_prices(
    cascades: list[CascadeConfig], models: Mapping[str, ModelPrice]
) -> dict[str, ModelPrice]:
    """Each cascade's catalogue entry: priced as both calls (the cost prior is an upper
    bound the learner corrects), tagged with what both models share (privacy rules
    let a cascade see only what both its models may)."""
    out = {}
    for c in cascades:
        a, b = models[c.first], models[c.then]
        tags = sorted(set(a.meta.get("tags") or ()) & set(b.meta.get("tags") or ()))
        meta = {"cascade": c.model_dump(), "tags": tags}
        out[c.name] = ModelPrice(
            c.name, a.input_per_m + b.input_per_m, a.output_per_m + b.output_per_m, meta
        )
    return out


@dataclass
class Call:
    """One upstream call of a cascade: the model, its status, its answer, its cost."""

    model: str
    status: int
    data: dict[str, Any] | None
    cost: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.data is not None

    @property
    def text(self) -> str:
        try:
            return str((self.data or {})["choices"][0]["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""


@dataclass
class Outcome:
    """What a cascade did: its calls in order, the final answer's call, its confidence
    in the first answer, whether it escalated, and the total cost (USD)."""

    calls: list[Call]
    final: Call
    confidence: float | None
    escalated: bool

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.calls)


async def call(
    pool: UpstreamPool, prices: Mapping[str, ModelPrice], model: str, body: dict[str, Any]
) -> Call:
    """One non-streamed call; failures come back as a Call with its status."""
    up = pool.get(model)
    if up is None:
        return Call(model, 502, None, 0.0, "no upstream")
    payload = {**body, "model": up.upstream_model, "stream": False}
    payload.pop("stream_options", None)
    try:
        resp = await up.client.send(up.request(payload, stream=False))
    except httpx.TimeoutException:
        return Call(model, 504, None, 0.0, "timeout")
    except httpx.HTTPError as exc:
        return Call(model, 502, None, 0.0, type(exc).__name__)
    try:
        data = resp.json() if resp.status_code == 200 else None
    except ValueError:
        data = None
    usage = Usage.parse((data or {}).get("usage"))
    price = prices.get(model)
    cost = call_cost(price, usage) if usage is not None and price is not None else 0.0
    if not isinstance(data, dict):
        data = None
    return Call(model, resp.status_code, data, cost)


def agreement(a: str, b: str) -> float:
    """The overlap of two answers' words (Jaccard, in [0, 1]): two samples that agree
    suggest the model is sure."""
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def mean_token_probability(data: dict[str, Any] | None) -> float | None:
    """exp(mean log-probability) of the answer's tokens, where the upstream returned
    `choices[0].logprobs.content`; None otherwise."""
    try:
        tokens = (data or {})["choices"][0]["logprobs"]["content"]
        lps = [float(t["logprob"]) for t in tokens]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return math.exp(sum(lps) / len(lps)) if lps else None


async def run(
    cfg: CascadeConfig,
    pool: UpstreamPool,
    prices: Mapping[str, ModelPrice],
    body: dict[str, Any],
    question: str,
    judge_model: str | None,
) -> Outcome:
    """Run the cascade for one request body (answered whole: the confidence needs the
    complete first answer)."""
    first_body = dict(body)
    if cfg.confidence == "logprobs":
        first_body["logprobs"] = True
    first = await call(pool, prices, cfg.first, first_body)
    calls = [first]
    if not first.ok:
        # the first model failed: the stronger one answers (an escalation)
        then = await call(pool, prices, cfg.then, body)
        return Outcome(calls + [then], then, None, True)
    confidence: float | None
    if cfg.confidence == "judge":
        grader = cfg.judge_model or judge_model
        grade = await call(pool, prices, grader or cfg.then, _rubric(question, first.text))
        calls.append(grade)
        confidence = parse_score(grade.text) if grade.ok else None
    elif cfg.confidence == "agreement":
        second = await call(pool, prices, cfg.first, body)
        calls.append(second)
        confidence = agreement(first.text, second.text) if second.ok else None
    else:
        confidence = mean_token_probability(first.data)
    # no usable signal: escalate, since the cascade cannot vouch for the cheap answer
    if confidence is not None and confidence >= cfg.threshold:
        return Outcome(calls, first, confidence, False)
    then = await call(pool, prices, cfg.then, body)
    return Outcome(calls + [then], then, confidence, True)


def _rubric(question: str, answer: str) -> dict[str, Any]:
    content = RUBRIC.format(question=question[:8000], answer=answer[:8000])
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 16}


def as_stream(data: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """A whole answer as an SSE stream (a cascade answers whole): one content chunk, the
    finish chunk with banditroute's metadata, and the end."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    base = {k: data.get(k) for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    content = {"index": 0, "delta": {"role": "assistant", "content": message.get("content")}}
    finish = {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}
    chunks = [{**base, "choices": [content]}, {**base, "choices": [finish], "banditroute": meta}]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )
