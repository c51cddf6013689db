"""What a chat-completions request asks of the gateway: the body's fields the gateway
reads (everything else passes through to the upstream untouched), the router or
model that `model` names, and banditroute's own request headers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from service.budgets.config import TENANT_NAME, TENANT_RE
from service.runtime_state import Runtime
from service.schemas import Text

ROUTER_PREFIX = "banditroute/"
MAX_OUTPUT_TOKENS = 10**9
AUTO = ("auto", "banditroute", "banditroute/auto")


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions body. Only the fields below are read; any other
    (tools, response_format, temperature, ...) is forwarded as given."""

    model_config = ConfigDict(extra="allow")

    model: Text = Field(min_length=1, max_length=300)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: Text | None = Field(default=None, max_length=256)

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The body for the upstream: as given, with its model name, and for a stream
        the final usage requested (the call's cost comes from it)."""
        body = self.model_dump(exclude_unset=True)
        body["model"] = upstream_model
        if self.stream:
            body["stream_options"] = {**(self.stream_options or {}), "include_usage": True}
        return body

    @property
    def wants_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def max_output_tokens(self) -> int | None:
        """The answer's token bound, if the body sets one (for a capped reservation):
        the per-choice bound times `n`, as the usage counts every choice's tokens."""
        extra = self.model_extra or {}
        n = extra.get("n")
        choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
        for key in ("max_completion_tokens", "max_tokens"):
            v = extra.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                # a bound beyond any model's is no bound: capped, so that pricing it
                # stays a finite number (a huge one then fits no cap: a 429, not a 500)
                return min(v * choices, MAX_OUTPUT_TOKENS)
        return None


@dataclass(frozen=True)
class Target:
    """A router (`policy` or `experiment`, or neither for the defaults) or, with
    `model`, one catalogue model called directly (no routing, nothing learned)."""

    policy: str | None = None
    experiment: str | None = None
    model: str | None = None

    @property
    def routed(self) -> bool:
        return self.model is None


def router_names(rt: Runtime) -> list[str]:
    """Every `model` value that routes: auto, and banditroute/<policy or experiment>."""
    names = ["auto"] + [ROUTER_PREFIX + p for p in rt.policies]
    return names + [ROUTER_PREFIX + e for e in rt.experiments if e not in rt.policies]


def resolve(rt: Runtime, model: str, upstreams: list[str]) -> Target:
    """The target `model` names; 404 listing the known names otherwise. A catalogue
    model without an upstream cannot be called, so it is unknown here too."""
    if model in AUTO:
        return Target()
    if model.startswith(ROUTER_PREFIX):
        name = model[len(ROUTER_PREFIX) :]
        if name in rt.policies:
            return Target(policy=name)
        if name in rt.experiments:
            return Target(experiment=name)
    elif model in rt.catalogue and model in upstreams:
        return Target(model=model)
    known = router_names(rt) + sorted(m for m in upstreams if m in rt.catalogue)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"model: unknown model {model!r}; known: {known}"
    )


@dataclass(frozen=True)
class Extensions:
    """banditroute's request headers (an OpenAI client sends them as extra_headers)."""

    cost_weight: float | None
    session: str | None
    unit: str | None
    sensitive: bool = False  # x-banditroute-sensitive: the caller says it is
    tenant: str | None = None  # x-banditroute-tenant (a tenant's key names it already)


def extensions(
    request: Request, body: ChatCompletionRequest, session_from_user: bool
) -> Extensions:
    h = request.headers
    raw = h.get("x-banditroute-cost-weight")
    cost_weight = None
    if raw is not None:
        try:
            cost_weight = float(raw)
        except ValueError:
            cost_weight = -1.0
        if not math.isfinite(cost_weight) or cost_weight < 0:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"x-banditroute-cost-weight: {raw!r} is not a finite number >= 0",
            )
    session = h.get("x-banditroute-session") or (body.user if session_from_user else None)
    unit = h.get("x-banditroute-unit") or body.user or session
    for name, value in (("x-banditroute-session", session), ("x-banditroute-unit", unit)):
        if value is not None and len(value) > 256:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: longer than 256 characters"
            )
    sensitive = h.get("x-banditroute-sensitive", "").strip().lower() in ("1", "true", "yes")
    tenant = h.get("x-banditroute-tenant")
    if tenant is not None and not TENANT_RE.match(tenant):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"x-banditroute-tenant: {tenant[:80]!r} must match {TENANT_NAME}",
        )
    return Extensions(cost_weight, session, unit, sensitive, tenant)
