"""Cascade arms through the gateway, against real upstream processes with scripted
usage: the cost is the sum of the calls made, the propensity is the policy's
probability of the cascade arm, and an escalation is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from service.app import create_app
from service.embedder import Embedder
from service.gateway.config import CascadeConfig, GatewayConfig, UpstreamConfig
from service.settings import ModelConfig, PolicyConfig
from tests.gateway_helpers import serve_app
from tests.service_helpers import make_settings
from tests.upstream_helpers import Upstream, start_upstream

pytestmark = pytest.mark.slow

PRICES = {"small": (0.1, 0.2), "large": (5.0, 15.0), "grader": (1.0, 2.0)}
USAGE = {
    "small": {"prompt_tokens": 100, "completion_tokens": 10},
    "large": {"prompt_tokens": 100, "completion_tokens": 20},
    "grader": {"prompt_tokens": 300, "completion_tokens": 3},
}
CASCADE = "small-then-large"
QUESTION = [{"role": "user", "content": "Explain photosynthesis briefly."}]


def cost(model: str) -> float:
    u, (inp, out) = USAGE[model], PRICES[model]
    return (u["prompt_tokens"] * inp + u["completion_tokens"] * out) / 1e6


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with start_upstream() as s, start_upstream() as lg, start_upstream() as g:
        yield {"small": s, "large": lg, "grader": g}


def test_a_cascade_costs_its_calls_logs_its_arms_propensity_and_records_escalations(
    tmp_path: Path, embedder: Embedder, upstreams: dict[str, Upstream]
) -> None:
    for name, u in upstreams.items():
        u.reset()
        u.configure(usage=USAGE[name])
    upstreams["grader"].configure(content="Score: 2")  # below the threshold: escalate
    models = [
        ModelConfig(
            name=n,
            input_per_m=PRICES[n][0],
            output_per_m=PRICES[n][1],
            upstream=UpstreamConfig(base_url=u.url, model=f"{n}-up"),
        )
        for n, u in upstreams.items()
    ]
    cascade = CascadeConfig(
        name=CASCADE, first="small", then="large", threshold=0.7, judge_model="grader"
    )
    weights = {CASCADE: 0.6, "small": 0.4, "large": 0.0, "grader": 0.0}
    s = make_settings(
        tmp_path,
        models=models,
        policies={"default": PolicyConfig(kind="random", params={"weights": weights})},
        gateway=GatewayConfig(cascades=[cascade]),
    )
    with serve_app(create_app(s, embedder=embedder)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        seen: dict[str, list[httpx.Headers]] = {"true": [], "false": []}
        for i in range(24):
            if i == 12:
                upstreams["grader"].configure(content="Score: 9")  # confident: keep
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
            out = raw.parse()
            h = raw.headers
            if h["x-banditroute-model"] != CASCADE:
                continue
            assert out.model == CASCADE
            escalated = h["x-banditroute-escalated"]
            seen[escalated].append(h)
            # the cost is the sum of the calls made: the first answer, its grade, and the
            # stronger model's answer when escalated
            want = cost("small") + cost("grader") + (cost("large") if escalated == "true" else 0)
            assert float(h["x-banditroute-cost-usd"]) == pytest.approx(want, rel=1e-12)
            assert h["x-banditroute-answered-by"] == ("large" if escalated == "true" else "small")
            assert out.choices[0].message.content.startswith(
                "answer from " + ("large-up" if escalated == "true" else "small-up")
            )
            r = httpx.post(
                f"{srv.base}/v1/feedback",
                json={"event_id": h["x-banditroute-event-id"], "quality": 0.8},
            )
            assert r.status_code == 202 and r.json()["cost_usd"] == pytest.approx(want)
        assert seen["true"] and seen["false"], "the seeded router never chose the cascade"
        log = httpx.get(f"{srv.base}/v1/log/default").json()["events"]
        arms = [e for e in log if e["model"] == CASCADE]
        assert len(arms) == len(seen["true"]) + len(seen["false"])
        assert all(e["propensity"] == pytest.approx(0.6) for e in arms)
        metrics = srv.runtime.metrics.cascades
        assert metrics.labels(CASCADE, "true")._value.get() == len(seen["true"])
        assert metrics.labels(CASCADE, "false")._value.get() == len(seen["false"])
        # a stream request is answered whole, as a stream
        for _ in range(10):
            raw_stream = client.chat.completions.with_raw_response.create(
                model="auto", messages=QUESTION, stream=True
            )
            chunks = list(raw_stream.parse())
            if raw_stream.headers["x-banditroute-model"] == CASCADE:
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert text.startswith("answer from small-up")
                meta = (chunks[-1].model_extra or {})["banditroute"]
                assert meta["escalated"] is False and meta["answered_by"] == "small"
                break
        else:
            pytest.fail("no stream request chose the cascade")
