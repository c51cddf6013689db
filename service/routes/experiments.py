"""A/B experiments: configure (admin), list, report, the running difference over
time; and the decision log, for export and off-policy evaluation."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from service.abreport import RunningDifference, build_report, collect, cost_scale
from service.budgets.tenancy import caller_tenant, check_visible
from service.deps import AdminAuth, ClientAuth, RuntimeDep
from service.experiments import ExperimentConfig
from service.schemas import PolicyName
from service.store.base import FeedbackEvent, parse_stream_id

router = APIRouter(prefix="/v1", tags=["experiments"])

LOG_PAGE_MAX = 5000
HISTORY_PAGE_MAX = 10_000
# (experiment, every) series each worker keeps between calls of the history
HISTORY_CACHE_MAX = 16
_NO_CONTEXT = np.zeros(0)
# a decision-log row, as the log endpoint answers and `log export` writes it
LOG_COLUMNS = (
    "event_id",
    "policy",
    "experiment",
    "variant",
    "time",
    "created_at",
    "model",
    "propensity",
    "candidates",
    "quality",
    "cost_usd",
    "cost_weight",
    "source",
    "context",
)


def _get(rt: RuntimeDep, name: str) -> ExperimentConfig:
    exp = rt.experiments.get(name)
    if exp is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"name: unknown experiment {name!r}; known: {sorted(rt.experiments)}",
        )
    return exp


@router.get("/experiments")
async def list_experiments(rt: RuntimeDep, _auth: ClientAuth) -> dict[str, Any]:
    own = caller_tenant(_auth)  # a tenant's key lists its own experiments only
    return {
        name: exp.model_dump()
        for name, exp in rt.experiments.items()
        if own is None or exp.tenant == own
    }


@router.put("/experiments/{name}")
async def put_experiment(
    name: PolicyName, body: ExperimentConfig, rt: RuntimeDep, _auth: AdminAuth
) -> dict[str, Any]:
    """Create or replace an experiment, whole: it is validated first and written in one
    step, so a bad change leaves the running experiment as it was."""
    if body.name != name:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"name: the body names {body.name!r} but the path {name!r}",
        )
    try:
        body.check_policies(rt.policies)
        if body.tenant is not None and body.tenant not in rt.tenants:
            raise ValueError(f"tenant: unknown tenant {body.tenant!r}")
        # what is stored must read back as it was validated, on every worker
        doc = body.model_dump_json()
        ExperimentConfig.model_validate_json(doc)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    await rt.store.put_experiment(name, doc)
    rt.experiments[name] = body
    return body.model_dump()


@router.delete("/experiments/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_experiment(name: str, rt: RuntimeDep, _auth: AdminAuth) -> Response:
    exp = _get(rt, name)
    if name == rt.settings.default_experiment:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"name: {name!r} is the default_experiment; requests naming no policy join it",
        )
    await rt.store.delete_experiment(name, [(v.policy, v.name) for v in exp.variants])
    rt.experiments.pop(name, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/experiments/{name}")
async def experiment_report(name: str, rt: RuntimeDep, _auth: ClientAuth) -> dict[str, Any]:
    """Per variant: units, decisions, feedback rate, mean reward, quality and cost per
    query with intervals over units (a unit's requests are not independent); each
    variant minus control with its fixed-horizon interval and its anytime-valid
    confidence sequence, and its feedback rate against control's (`warnings` when they
    differ: the means over responders are then biased)."""
    found = rt.experiments.get(name)
    check_visible(_auth, None if found is None else found.tenant, "experiment")
    exp = _get(rt, name)
    return build_report(exp, await collect(rt.store, exp), cost_scale(exp, rt.catalogue))


@router.get("/experiments/{name}/history")
async def experiment_history(
    name: str,
    request: Request,
    rt: RuntimeDep,
    _auth: AdminAuth,
    every: Annotated[int, Query(ge=1, le=100_000)] = 100,
    after: Annotated[int, Query(ge=0, description="points after this many feedbacks")] = 0,
    limit: Annotated[int, Query(ge=1, le=HISTORY_PAGE_MAX)] = 1000,
) -> dict[str, Any]:
    """The reward difference against control after every `every` feedbacks, with the
    same intervals over units as the report, from the decision log (which keeps the
    newest decision_log_max events per policy; `truncated` says when the series misses
    feedback the counters have). Admin only: the log is. One page of at most `limit`
    points per variant after `after` feedbacks; page on with `after` = `next` until
    `complete`. Each worker keeps the series it computed and reads only the log's new
    events on the next call; the arithmetic runs in a thread, off the event loop."""
    exp = _get(rt, name)
    scale = cost_scale(exp, rt.catalogue)
    h = _history(request, exp, scale, every)
    async with h.lock:
        # the counters first: whatever the log then lacks was trimmed from it
        counted = sum(int(d.counters.get("n", 0)) for d in await collect(rt.store, exp))
        fresh: list[FeedbackEvent] = []
        for policy in dict.fromkeys(v.policy for v in exp.variants):
            after_id = h.after.get(policy, "0-0")
            while True:
                page = await rt.store.read_log(policy, after_id, LOG_PAGE_MAX)
                if page:
                    after_id = page[-1][0]
                h.read[policy] = h.read.get(policy, 0) + len(page)
                # keep only what the series needs, not the contexts
                fresh += [_slim(e) for _, e in page if e.experiment == name]
                if len(page) < LOG_PAGE_MAX:
                    break
            h.after[policy] = after_id
        if fresh:
            await asyncio.to_thread(h.run.feed, fresh)
        # a log that ever held decision_log_max events may have dropped some
        full = any(n >= rt.settings.decision_log_max for n in h.read.values())
        seen = h.run.seen
        series = {}
        for variant, points in h.run.points.items():
            start = bisect.bisect_right(points, after, key=lambda p: int(p["feedback"] or 0))
            series[variant] = points[start : start + limit]
    last = [int(p[-1]["feedback"] or 0) for p in series.values() if p]
    return {
        "name": name,
        "control": exp.control,
        "every": every,
        "feedback": seen,
        "truncated": full or counted > seen,
        "series": series,
        "next": max(last, default=after),
        "complete": all(len(p) < limit for p in series.values()),
    }


@dataclass
class _History:
    """One experiment's running difference as far as this worker has read the logs."""

    key: str  # the experiment's config and cost scale: a change starts anew
    run: RunningDifference
    after: dict[str, str] = field(default_factory=dict)  # policy -> last log id read
    read: dict[str, int] = field(default_factory=dict)  # policy -> log entries read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _history(request: Request, exp: ExperimentConfig, scale: float, every: int) -> _History:
    cache: OrderedDict[tuple[str, int], _History] | None = getattr(
        request.app.state, "ab_history", None
    )
    if cache is None:
        cache = request.app.state.ab_history = OrderedDict()
    key = f"{exp.model_dump_json()}|{scale!r}"
    h = cache.get((exp.name, every))
    if h is None or h.key != key:
        h = cache[(exp.name, every)] = _History(key, RunningDifference(exp, scale, every))
    cache.move_to_end((exp.name, every))
    while len(cache) > HISTORY_CACHE_MAX:
        cache.popitem(last=False)
    return h


def _slim(e: FeedbackEvent) -> FeedbackEvent:
    return dataclasses.replace(e, context=_NO_CONTEXT, candidates=None)


@router.get("/log/{policy}")
async def decision_log(
    policy: str,
    rt: RuntimeDep,
    _auth: AdminAuth,
    after: str = "0-0",
    limit: Annotated[int, Query(ge=1, le=LOG_PAGE_MAX)] = 1000,
) -> dict[str, Any]:
    """One page of a policy's decision log, oldest first: every decision that got
    feedback, with its context, candidates, propensity and outcome. Page on with
    `after` = the answer's `next`."""
    if policy not in rt.policies:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"policy: unknown policy {policy!r}; known: {sorted(rt.policies)}",
        )
    try:
        parse_stream_id(after)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"after: {exc}") from exc
    page = await rt.store.read_log(policy, after, limit)
    return {
        "policy": policy,
        "events": [_row(e) for _, e in page],
        "next": page[-1][0] if page else after,
    }


def _row(e: FeedbackEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "policy": e.policy,
        "experiment": e.experiment,
        "variant": e.variant,
        "time": e.received_at,
        "created_at": e.created_at,
        "model": e.model,
        "propensity": e.propensity,
        "candidates": e.candidates,
        "quality": e.quality,
        "cost_usd": e.cost_usd,
        "cost_weight": e.cost_weight,
        "source": e.source,
        "restricted": e.restricted,
        "context": e.context.tolist(),
    }
