"""POST /v1/route: choose a model for a query."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, status

from policies import PolicyError
from service.deps import ClientAuth, RuntimeDep
from service.embedder import text_from_messages
from service.experiments import VariantConfig, assign
from service.schemas import CandidateExplanation, ErrorOut, RouteRequest, RouteResponse
from service.store.base import DecisionRecord, StoreUnavailable

router = APIRouter(prefix="/v1", tags=["routing"])
log = logging.getLogger("banditroute.route")


def _query_text(req: RouteRequest) -> str:
    if req.query is not None:
        return req.query
    assert req.messages is not None
    try:
        return text_from_messages([m.model_dump() for m in req.messages])
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.post(
    "/route",
    response_model=RouteResponse,
    response_model_exclude_none=True,
    responses={
        404: {"model": ErrorOut, "description": "an unknown policy or experiment"},
        413: {"model": ErrorOut, "description": "the query exceeds max_query_chars"},
        503: {"model": ErrorOut, "description": "the embedding queue is full; see Retry-After"},
    },
)
async def route(req: RouteRequest, rt: RuntimeDep, _auth: ClientAuth) -> RouteResponse:
    """Choose a model. A request names exactly one of `query` and `messages` (routed
    on the last user message, which needs text that is not only whitespace), and at
    most one of `policy` and `experiment`; `candidates` must be registered models."""
    s = rt.settings
    text = _query_text(req)
    if len(text) > s.max_query_chars:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"query: {len(text)} characters exceeds the limit of {s.max_query_chars}",
        )
    experiment, variant, unit = _assignment(req, rt)
    name = variant.policy if variant is not None else req.policy or s.default_policy
    serving = rt.policies.get(name)
    if serving is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"policy: unknown policy {name!r}; known: {sorted(rt.policies)}",
        )
    candidates = req.candidates
    if candidates is not None:
        if len(candidates) > s.max_candidates:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"candidates: {len(candidates)} given, at most {s.max_candidates} allowed",
            )
        unknown = sorted(set(candidates) - set(rt.catalogue))
        if unknown:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"candidates: unknown model(s) {unknown}; registered: {sorted(rt.catalogue)}",
            )

    x = await rt.batcher.features(text)
    policy = serving.policy
    try:
        d = policy.choose(x, candidates, req.cost_weight, text=text)
    except PolicyError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

    shadows = _shadow_choices(rt, name, x, d.model, d.probabilities, req.cost_weight, text)
    now = time.time()
    rec = DecisionRecord(
        event_id=f"{name}.{uuid.uuid4().hex}",
        policy=name,
        model=d.model,
        propensity=d.propensity,
        policy_version=serving.version,
        context=x,
        candidates=list(d.probabilities),
        cost_weight=policy.cost_weight if req.cost_weight is None else req.cost_weight,
        created_at=now,
        deadline=now + s.decision_ttl_s,
        prompt_tokens=max(1, len(text) // 4),
        expected_cost=(d.expected_cost or {}).get(d.model),
        experiment=experiment,
        variant=None if variant is None else variant.name,
        unit=unit,
        shadows={s: (m, p) for s, (m, p, _) in shadows.items()} or None,
    )
    try:
        seen = await rt.store.put_decision(rec)
    except StoreUnavailable:
        return degraded(rt, name, serving.version, candidates, rec.experiment, rec.variant)
    serving.notice_version(rt.store, seen, rt.catalogue)
    rt.metrics.decisions.labels(name, d.model, "false").inc()
    for shadow, (model, _, unsupported) in shadows.items():
        try:
            await rt.store.count_shadow_decision(shadow, model == d.model, unsupported)
        except StoreUnavailable:
            log.warning("shadow %s: decision not counted, the store is unreachable", shadow)
    explanation = None
    if req.explain:
        explanation = {
            m: CandidateExplanation(
                probability=p,
                expected_quality=(d.expected_quality or {}).get(m),
                expected_cost_usd=(d.expected_cost or {}).get(m),
                score=(d.scores or {}).get(m),
            )
            for m, p in d.probabilities.items()
        }
    return RouteResponse(
        event_id=rec.event_id,
        model=d.model,
        propensity=d.propensity,
        policy=name,
        policy_version=serving.version,
        experiment=rec.experiment,
        variant=rec.variant,
        explanation=explanation,
    )


def _shadow_choices(
    rt: RuntimeDep,
    policy: str,
    x: Any,
    model: str,
    served: dict[str, float],
    cost_weight: float | None,
    text: str,
) -> dict[str, tuple[str, float, float]]:
    """What each shadow of the served policy would have chosen among the same
    candidates, its probability of the served model, and its probability on models
    the served policy could not choose."""
    candidates = list(served)
    out = {}
    for shadow in rt.shadows_of.get(policy, ()):
        try:
            ds = rt.policies[shadow].policy.choose(x, candidates, cost_weight, text=text)
        except Exception as exc:  # a shadow never fails the served request
            log.warning("shadow %s skipped a decision: %s", shadow, exc)
            continue
        unsupported = sum(p for m, p in ds.probabilities.items() if served.get(m, 0.0) <= 0)
        out[shadow] = (ds.model, float(ds.probabilities.get(model, 0.0)), float(unsupported))
    return out


def _assignment(
    req: RouteRequest, rt: RuntimeDep
) -> tuple[str | None, VariantConfig | None, str | None]:
    """(experiment, variant, unit): the request's experiment, or the default one when
    it names no policy; a request without a unit id is assigned at random (and
    counted as anonymous)."""
    name = req.experiment
    if name is None and req.policy is None:
        name = rt.settings.default_experiment
    if name is None:
        return None, None, None
    exp = rt.experiments.get(name)
    if exp is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"experiment: unknown experiment {name!r}; known: {sorted(rt.experiments)}",
        )
    unit = req.unit_id
    variant = exp.variant(assign(exp, unit if unit is not None else uuid.uuid4().hex))
    return name, variant, unit


def degraded(
    rt: RuntimeDep,
    name: str,
    version: int,
    candidates: list[str] | None,
    experiment: str | None = None,
    variant: str | None = None,
) -> RouteResponse:
    """Without its store the service cannot log a decision, so it does not explore:
    the configured fallback model (or the first candidate), propensity 1."""
    fallback = rt.settings.fallback_model
    if candidates and (fallback is None or fallback not in candidates):
        fallback = candidates[0]
    if fallback is None:
        fallback = next(iter(rt.catalogue))
    rt.metrics.decisions.labels(name, fallback, "true").inc()
    return RouteResponse(
        event_id=None,
        model=fallback,
        propensity=1.0,
        policy=name,
        policy_version=version,
        degraded=True,
        experiment=experiment,
        variant=variant,
    )
