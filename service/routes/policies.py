"""GET /v1/policies/{name}: what a policy has learned and how far its learner lags."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from service import shadow
from service.budgets.tenancy import caller_tenant
from service.deps import ClientAuth, RuntimeDep
from service.runtime_state import Runtime
from service.schemas import ModelStatsOut, PolicyStatus
from service.store.base import Snapshot, StoreUnavailable

router = APIRouter(prefix="/v1/policies", tags=["policies"])


async def progress(rt: Runtime, name: str) -> tuple[Snapshot | None, int, int, float | None]:
    """The published snapshot's metadata, feedback ever appended, feedback not yet in
    a snapshot, and the snapshot's age while feedback waits; also sets the gauges."""
    # this order makes "nothing waiting" safe to read: every event appended before
    # the pending count was taken is in the snapshot read after it
    total = await rt.store.feedback_total(name)
    waiting = await rt.store.feedback_pending(name)
    snap = await rt.store.snapshot_info(name)
    lag = None
    if snap is not None:
        lag = max(0.0, time.time() - snap.published_at) if waiting else 0.0
        rt.metrics.learner_lag.labels(name).set(lag)
    rt.metrics.feedback_waiting.labels(name).set(waiting)
    rt.metrics.expiry_backlog.labels(name).set(await rt.store.due_backlog(name, time.time()))
    rt.metrics.decisions_shed.set(rt.store.decisions_shed)
    return snap, total, waiting, lag


@router.get("/{name}", response_model=PolicyStatus)
async def policy_status(name: str, rt: RuntimeDep, _auth: ClientAuth) -> PolicyStatus:
    serving = rt.policies.get(name)
    own = caller_tenant(_auth)
    if own is not None and "@" in name and name.partition("@")[2] != own:
        serving = None  # another tenant's own state: to this key, no such policy
    if serving is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"name: unknown policy {name!r}")
    try:
        snap, total, waiting, lag = await progress(rt, name)
    except StoreUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the store is unreachable; retry later",
            headers={"Retry-After": "1"},
        ) from exc
    applied = snap.applied if snap else 0
    if snap is not None and snap.version > serving.version:
        # a status read is rare: wait for the reload so the stats match `version`
        await serving.reload(rt.store, rt.catalogue)
    models = {}
    for m, st in serving.policy.stats().items():
        n = st.pulls
        models[m] = ModelStatsOut(
            pulls=n,
            mean_quality=st.quality_sum / n if n else None,
            mean_cost_usd=st.cost_sum / n if n else None,
            mean_reward=st.reward_sum / n if n else None,
        )
    return PolicyStatus(
        name=name,
        kind=serving.policy.name,
        version=snap.version if snap else 0,
        updates_applied=applied,
        feedback_total=total,
        feedback_waiting=waiting,
        learner_lag_s=lag,
        models=models,
    )


@router.get("/{name}/shadow")
async def shadow_report(
    name: str,
    rt: RuntimeDep,
    _auth: ClientAuth,
    cost_weight: Annotated[float | None, Query(ge=0, le=1e6, allow_inf_nan=False)] = None,
) -> dict[str, Any]:
    """A shadow policy's agreement with the served choices and its off-policy value
    (IPS, SNIPS) next to the served policy's on the same feedback. The reward's cost
    unit is the shadow's own cost scale (its priciest model's mean cost)."""
    cfg = rt.settings.policies.get(name)
    if cfg is None or cfg.shadow_of is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"name: {name!r} is not a policy running in shadow"
        )
    policy = rt.policies[name].policy
    lam = policy.cost_weight if cost_weight is None else cost_weight
    scale = policy.normalised_cost(1.0)
    a = lam * scale  # normalised_cost(c) = c / scale_usd, so a = lam / scale_usd
    return {
        "name": name,
        "served_by": cfg.shadow_of,
        "cost_weight": lam,
        "cost_scale_usd": 1 / scale if scale else None,
        **shadow.report(await rt.store.shadow_counts(name), a),
    }
