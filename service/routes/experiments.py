"""A/B experiments: configure (admin), list, report, the running difference over
time; and the decision log, for export and off-policy evaluation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from service.abreport import build_report, collect, cost_scale, running_difference
from service.deps import AdminAuth, ClientAuth, RuntimeDep
from service.experiments import ExperimentConfig
from service.schemas import PolicyName
from service.store.base import FeedbackEvent, parse_stream_id

router = APIRouter(prefix="/v1", tags=["experiments"])

LOG_PAGE_MAX = 5000
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
    return {name: exp.model_dump() for name, exp in rt.experiments.items()}


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
    query with intervals; each variant minus control with its fixed-horizon interval
    and its anytime-valid confidence sequence."""
    exp = _get(rt, name)
    return build_report(exp, await collect(rt.store, exp), cost_scale(exp, rt.catalogue))


@router.get("/experiments/{name}/history")
async def experiment_history(
    name: str,
    rt: RuntimeDep,
    _auth: ClientAuth,
    every: Annotated[int, Query(ge=1, le=100_000)] = 100,
) -> dict[str, Any]:
    """The reward difference against control after every `every` feedbacks, from the
    decision log (which keeps the newest decision_log_max events per policy;
    `truncated` says when a variant's log is full and the series starts late)."""
    exp = _get(rt, name)
    events: list[FeedbackEvent] = []
    truncated = False
    for policy in dict.fromkeys(v.policy for v in exp.variants):
        after, kept = "0-0", 0
        while True:
            page = await rt.store.read_log(policy, after, LOG_PAGE_MAX)
            kept += len(page)
            events += [e for _, e in page if e.experiment == name]
            if len(page) < LOG_PAGE_MAX:
                break
            after = page[-1][0]
        # a full log has dropped its oldest events: the series starts late for it
        truncated |= kept >= rt.settings.decision_log_max
    scale = cost_scale(exp, rt.catalogue)
    return {
        "name": name,
        "control": exp.control,
        "every": every,
        "truncated": truncated,
        "series": running_difference(exp, events, scale, every),
    }


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
        "context": e.context.tolist(),
    }
