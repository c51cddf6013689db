"""POST /v1/route: choose a model for a query."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from service.budgets.tenancy import check_named_candidates, request_tenant
from service.deps import Credentials, _role
from service.embedder import text_from_messages
from service.privacy.guard import all_text, refusal, tags_of
from service.routing import check_candidates, decide, resolve_policy
from service.runtime_state import Runtime
from service.schemas import CandidateExplanation, ErrorOut, RouteRequest, RouteResponse

router = APIRouter(prefix="/v1", tags=["routing"])
# what FastAPI serialises a response_model with (its dump_json fast path): the handler
# returns those bytes itself, so the body is the same and FastAPI's validation of the
# returned model and its serialisation step stay off the request path, while the
# decorator's response_model keeps documenting the body
_serializer = RouteResponse.__pydantic_serializer__


async def require_client(request: Request, creds: Credentials) -> Runtime:
    """`RuntimeDep` and `ClientAuth` (service.deps.require_client) as one dependency:
    the same check, the same 401s, the same security scheme in the OpenAPI document
    (whose 401 answers the app adds by this name), for one dependency solved per
    request instead of three: FastAPI pays a fixed cost for each."""
    rt: Runtime = request.app.state.runtime
    request.state.role = _role(rt, creds)
    return rt


ClientRuntime = Annotated[Runtime, Depends(require_client)]


def _query_text(req: RouteRequest) -> str:
    if req.query is not None:
        return req.query
    assert req.messages is not None
    try:
        return text_from_messages([m.model_dump() for m in req.messages])
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


async def _restrict(rt: Runtime, req: RouteRequest) -> tuple[list[str] | None, list[str] | None]:
    """The candidates the privacy rules leave for this query, and the entity types that
    restricted them (None: unrestricted)."""
    if rt.gateway is None:
        return req.candidates, None
    text = (
        req.query
        if req.query is not None
        else all_text([m.model_dump() for m in req.messages or []])
    )
    guard = await rt.gateway.privacy.check(rt.store, text, False, None)
    if not guard.applies:
        return req.candidates, None
    allowed = guard.allowed(req.candidates or list(rt.catalogue), tags_of(rt.catalogue))
    if not allowed:
        raise refusal(guard, "no candidate model carries one")
    return allowed, list(guard.entities)


@router.post(
    "/route",
    response_model=RouteResponse,
    response_model_exclude_none=True,
    responses={
        403: {"model": ErrorOut, "description": "a tenant this key may not name"},
        404: {"model": ErrorOut, "description": "an unknown policy, experiment or tenant"},
        413: {"model": ErrorOut, "description": "the query exceeds max_query_chars"},
        429: {"model": ErrorOut, "description": "no candidate fits the tenant's cap"},
        503: {"model": ErrorOut, "description": "the embedding queue is full; see Retry-After"},
    },
)
async def route(req: RouteRequest, request: Request, rt: ClientRuntime) -> Response:
    """Choose a model. A request names exactly one of `query` and `messages` (routed
    on the last user message, which needs text that is not only whitespace), and at
    most one of `policy` and `experiment`; `candidates` must be registered models.
    With `cost_later`, a quality feedback that arrives before the call's cost waits
    for it (until the decision's deadline)."""
    s = rt.settings
    text = _query_text(req)
    if len(text) > s.max_query_chars:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"query: {len(text)} characters exceeds the limit of {s.max_query_chars}",
        )
    tenant = request_tenant(rt, request.state.role, req.tenant)
    name, serving, experiment, variant, unit = resolve_policy(
        rt, req.policy, req.experiment, req.unit_id, tenant
    )
    check_candidates(rt, req.candidates)
    check_named_candidates(rt, tenant, req.candidates)
    candidates, restricted = await _restrict(rt, req)
    x = await rt.batcher.features(text)
    routed = await decide(
        rt,
        text,
        x,
        name,
        serving,
        candidates,
        req.cost_weight,
        experiment=experiment,
        variant=variant,
        unit=unit,
        awaits_cost=req.cost_later,
        restricted=restricted,
        tenant=tenant,
        max_output_tokens=req.max_output_tokens,
    )
    d = routed.decision
    explanation = None
    if req.explain and d is not None:
        quality, cost, scores = d.expected_quality or {}, d.expected_cost or {}, d.scores or {}
        explanation = {
            m: CandidateExplanation.model_construct(
                probability=p,
                expected_quality=quality.get(m),
                expected_cost_usd=cost.get(m),
                score=scores.get(m),
            )
            for m, p in d.probabilities.items()
        }
    # built from values of the declared types: constructed, not validated again
    body = RouteResponse.model_construct(
        event_id=None if routed.record is None else routed.record.event_id,
        model=routed.model,
        propensity=routed.propensity,
        policy=name,
        policy_version=routed.version,
        degraded=routed.degraded,
        experiment=routed.experiment,
        variant=routed.variant,
        explanation=explanation,
    )
    return Response(
        _serializer.to_json(body, exclude_none=True, by_alias=True),
        media_type="application/json",
    )
