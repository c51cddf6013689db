"""POST /v1/feedback: a routed call's quality, its cost, or both, each taken at most
once per decision (the work is in service.outcomes)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from service.budgets.tenancy import check_visible, tenant_of_event
from service.deps import ClientAuth, RuntimeDep
from service.outcomes import Recorded, apply_cost, apply_quality, count, find_decision
from service.schemas import MAX_CALL_USD, FeedbackRequest, FeedbackResponse
from service.store.base import StoreUnavailable

router = APIRouter(prefix="/v1", tags=["routing"])

RETRY_AFTER_S = "1"
log = logging.getLogger("banditroute.feedback")


def _unavailable() -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={
            "detail": "the store is unreachable; retry later (a retry of feedback that "
            "was recorded after all answers 409)"
        },
        headers={"Retry-After": RETRY_AFTER_S},
    )


@router.post(
    "/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackResponse,
    responses={404: {}, 409: {}, 503: {}},
)
async def feedback(
    req: FeedbackRequest, rt: RuntimeDep, _auth: ClientAuth
) -> FeedbackResponse | JSONResponse:
    """A quality with or without the cost (an attached cost wins; none: estimated, or
    parked for a decision that awaits its cost), or the cost alone."""
    # another tenant's decision is, to this key, no decision at all
    check_visible(_auth, tenant_of_event(req.event_id), "event_id")
    now = time.time()
    quality = req.quality_value()
    try:
        cost = req.cost_usd if req.cost_usd is not None else await _priced(rt, req, now)
        if quality is None:
            assert cost is not None  # the request validator asks for one or the other
            done = await apply_cost(rt, req.event_id, cost, now=now)
        else:
            done = await apply_quality(
                rt, req.event_id, quality, source=req.source, cost_usd=cost, now=now
            )
    except StoreUnavailable:
        return _unavailable()
    if done.status in ("duplicate", "unknown"):
        raise _refusal(req.event_id, done.status, cost_only=quality is None)
    return _response(req.event_id, done)


async def _priced(rt: RuntimeDep, req: FeedbackRequest, now: float) -> float | None:
    """The token counts priced at the decision's model (None without them)."""
    if req.prompt_tokens is None or req.completion_tokens is None:
        return None
    found = await find_decision(rt, req.event_id, now)
    if isinstance(found, str):
        count(rt, req.event_id, found)
        raise _refusal(req.event_id, found, cost_only=req.quality_value() is None)
    price = rt.catalogue.get(found.model)
    if price is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"cost_usd: model {found.model!r} has no price in the catalogue; give cost_usd",
        )
    cost = price.cost(req.prompt_tokens, req.completion_tokens)
    if not cost <= MAX_CALL_USD:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"prompt_tokens, completion_tokens: priced at {cost:.4g} USD, above the "
            f"per-call limit of {MAX_CALL_USD:g} USD",
        )
    return cost


def _refusal(event_id: str, why: str, *, cost_only: bool) -> HTTPException:
    if why == "unknown":
        return HTTPException(
            status.HTTP_404_NOT_FOUND, f"event_id: unknown or expired event {event_id!r}"
        )
    if cost_only:
        return HTTPException(
            status.HTTP_409_CONFLICT,
            f"event_id: the cost of {event_id!r} was already attached (or its feedback "
            "recorded); it counts once",
        )
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"event_id: feedback for {event_id!r} was already recorded; it counts once",
    )


def _response(event_id: str, done: Recorded) -> FeedbackResponse:
    assert done.status in ("accepted", "awaiting_cost", "cost_attached")
    return FeedbackResponse(
        event_id=event_id,
        status=done.status,
        quality=done.quality,
        cost_usd=done.cost_usd,
        cost_estimated=done.cost_estimated,
    )
