"""POST /v1/feedback: the outcome of a routed call, taken at most once per decision."""

from __future__ import annotations

import dataclasses
import logging
import time

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from service.deps import ClientAuth, RuntimeDep
from service.schemas import MAX_CALL_USD, FeedbackRequest, FeedbackResponse
from service.shadow import increments as shadow_increments
from service.store.base import DecisionRecord, FeedbackEvent, FeedbackOutcome, StoreUnavailable

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
    policy, sep, _ = req.event_id.partition(".")
    if not sep or policy not in rt.policies:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"event_id: unknown event {req.event_id!r}")
    now = time.time()
    try:
        rec = await rt.store.get_decision(policy, req.event_id, now)
        # an answered decision keeps only a tombstone: it tells a duplicate apart
        answered = rec is None and await rt.store.was_answered(policy, req.event_id)
    except StoreUnavailable:
        return _unavailable()
    if answered:
        rt.metrics.feedback.labels(policy, FeedbackOutcome.DUPLICATE.value).inc()
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"event_id: feedback for {req.event_id!r} was already recorded; it counts once",
        )
    if rec is None:
        rt.metrics.feedback.labels(policy, "unknown").inc()
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"event_id: unknown or expired event {req.event_id!r}"
        )
    if req.cost_usd is not None:
        cost = req.cost_usd
    else:
        price = rt.catalogue.get(rec.model)
        if price is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"cost_usd: model {rec.model!r} has no price in the catalogue; give cost_usd",
            )
        assert req.prompt_tokens is not None and req.completion_tokens is not None
        cost = price.cost(req.prompt_tokens, req.completion_tokens)
        if not cost <= MAX_CALL_USD:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"prompt_tokens, completion_tokens: priced at {cost:.4g} USD, above the "
                f"per-call limit of {MAX_CALL_USD:g} USD",
            )
    quality = req.quality_value()
    event = FeedbackEvent.join(rec, quality=quality, cost_usd=cost, source=req.source, now=now)
    event = dataclasses.replace(event, copies=_copies(rt, rec, event) or None)
    try:
        outcome = await rt.store.submit_feedback(policy, req.event_id, event, now)
    except StoreUnavailable:
        return _unavailable()
    rt.metrics.feedback.labels(policy, outcome.value).inc()
    if outcome is FeedbackOutcome.DUPLICATE:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"event_id: feedback for {req.event_id!r} was already recorded; it counts once",
        )
    if outcome is FeedbackOutcome.UNKNOWN:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"event_id: unknown or expired event {req.event_id!r}"
        )
    return FeedbackResponse(
        event_id=req.event_id, status="accepted", quality=quality, cost_usd=cost
    )


def _copies(
    rt: RuntimeDep, rec: DecisionRecord, event: FeedbackEvent
) -> dict[str, dict[str, float] | None]:
    """Who else learns from this feedback: the served policy's shadows (with what it
    adds to their shadow counters) and, with share_feedback, the experiment's other
    variants. They travel with the event, recorded in the same atomic step, and the
    served policy's learner forwards them (Store.forward_copies): none is lost to a
    crash or an outage after the feedback was accepted."""
    targets: dict[str, dict[str, float] | None] = {}
    for shadow, (_, p_shadow) in (rec.shadows or {}).items():
        w = p_shadow / rec.propensity
        targets[shadow] = shadow_increments(w, event.quality, event.cost_usd)
    exp = rt.experiments.get(rec.experiment or "")
    if exp is not None and exp.share_feedback:
        for v in exp.variants:
            if v.policy != rec.policy and v.policy not in targets:
                targets[v.policy] = None
    return targets
