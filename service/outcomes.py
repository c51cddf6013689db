"""Recording a decision's outcome: its quality and its cost, which may arrive apart.

One place for every producer of outcomes: the `/v1/feedback` route, and the gateway's
judge, error recording and implicit signals. No HTTP here: each function answers a
`Recorded` whose `status` the caller maps to its own protocol (the route: 202, 404,
409). A store that cannot be reached raises `StoreUnavailable`, unchanged.

A quality with no cost learns with an estimate (`default_cost`), flagged as such,
unless a measured cost is attached to the decision (it wins over any other cost) or
will be (a decision that awaits its cost parks the quality until it comes).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from service.budgets import gate
from service.budgets.tenancy import tenant_of_event
from service.shadow import increments as shadow_increments
from service.store.base import DecisionRecord, FeedbackEvent, FeedbackOutcome, default_cost

if TYPE_CHECKING:
    from service.runtime_state import Runtime

Status = Literal["accepted", "awaiting_cost", "cost_attached", "duplicate", "unknown"]


@dataclass(frozen=True)
class Recorded:
    """What became of an outcome.

    status: "accepted" (the quality's event was appended), "awaiting_cost" (the quality
    is parked until the decision's cost comes), "cost_attached" (the cost was taken;
    it also appended a parked quality, if one waited), "duplicate" (already recorded:
    it counts once), "unknown" (no such decision, or past its deadline).
    quality, cost_usd: what was recorded (None where nothing was, or not yet: the
    cost of a parked quality). cost_estimated: cost_usd is an estimate, not measured.
    """

    status: Status
    quality: float | None
    cost_usd: float | None
    cost_estimated: bool


def policy_of(rt: Runtime, event_id: str) -> str | None:
    """The served policy an event id names ("<policy>.<id>"), None if none does."""
    policy, sep, _ = event_id.partition(".")
    return policy if sep and policy in rt.policies else None


async def find_decision(
    rt: Runtime, event_id: str, now: float
) -> DecisionRecord | Literal["duplicate", "unknown"]:
    """The open decision, or why there is none: "duplicate" while its tombstone says
    it was answered, else "unknown"."""
    policy = policy_of(rt, event_id)
    if policy is None:
        return "unknown"
    rec = await rt.store.get_decision(policy, event_id, now)
    if rec is not None:
        return rec
    # an answered decision keeps only a tombstone: it tells a duplicate apart
    return "duplicate" if await rt.store.was_answered(policy, event_id) else "unknown"


async def apply_quality(
    rt: Runtime,
    event_id: str,
    quality: float,
    *,
    source: str,
    cost_usd: float | None = None,
    now: float | None = None,
) -> Recorded:
    """Record a quality in [0, 1] for the decision `event_id`, at most once.

    The cost it learns with: the decision's attached cost if it has one, else
    `cost_usd`, else the estimate `default_cost` (the policy's own estimate at decision
    time, else the catalogue price), flagged cost_estimated. On a decision that awaits
    its cost the quality is parked ("awaiting_cost") and the same cost is its fallback
    should the cost never come. A cost attached between the read here and the store's
    step still wins in the store, though the answer then reports the estimate."""
    now = time.time() if now is None else now
    found = await find_decision(rt, event_id, now)
    if isinstance(found, str):
        count(rt, event_id, found)
        return Recorded(found, None, None, False)
    rec = found
    estimated = rec.cost_usd is None and cost_usd is None
    if rec.cost_usd is not None:
        cost = rec.cost_usd
    elif cost_usd is not None:
        cost = cost_usd
    else:
        cost = default_cost(rec, rt.catalogue)
    event = FeedbackEvent.join(rec, quality=quality, cost_usd=cost, source=source, now=now)
    event = dataclasses.replace(
        event, cost_estimated=estimated, copies=_copies(rt, rec, event) or None
    )
    outcome = await rt.store.submit_feedback(rec.policy, event_id, event, now)
    count(rt, event_id, outcome.value)
    if outcome is FeedbackOutcome.ACCEPTED:
        # an attached cost settled already: this settle then changes nothing
        await gate.settle(rt, rec.tenant, event_id, cost)
        rt.metrics.quality_sum.labels(rec.policy).inc(quality)
        rt.metrics.cost_sum.labels(rec.policy).inc(cost)
        return Recorded("accepted", quality, cost, estimated)
    if outcome is FeedbackOutcome.PARKED:
        return Recorded("awaiting_cost", quality, None, False)
    return Recorded(_refused(outcome), None, None, False)


async def apply_cost(
    rt: Runtime, event_id: str, cost_usd: float, *, now: float | None = None
) -> Recorded:
    """Attach the call's measured cost (USD) to the decision `event_id`, at most once:
    a quality parked for it is then learned with it, and a quality that comes later
    takes it ("cost_attached"). "duplicate": a cost was attached already, or the
    decision's event was already recorded."""
    now = time.time() if now is None else now
    policy = policy_of(rt, event_id)
    if policy is None:
        return Recorded("unknown", None, None, False)
    outcome = await rt.store.attach_cost(policy, event_id, cost_usd, now)
    count(rt, event_id, f"cost_{outcome.value}")
    if outcome is FeedbackOutcome.ACCEPTED:
        await gate.settle(rt, tenant_of_event(event_id), event_id, cost_usd)
        return Recorded("cost_attached", None, cost_usd, False)
    return Recorded(_refused(outcome), None, None, False)


def count(rt: Runtime, event_id: str, outcome: str) -> None:
    """One more outcome in the feedback metric (nothing for an unknown policy)."""
    policy = policy_of(rt, event_id)
    if policy is not None:
        rt.metrics.feedback.labels(policy, outcome).inc()


def _refused(outcome: FeedbackOutcome) -> Literal["duplicate", "unknown"]:
    return "duplicate" if outcome is FeedbackOutcome.DUPLICATE else "unknown"


def _copies(
    rt: Runtime, rec: DecisionRecord, event: FeedbackEvent
) -> dict[str, dict[str, float] | None]:
    """Who else learns from this feedback: the served policy's shadows (with what it
    adds to their shadow counters) and, with share_feedback, the experiment's other
    variants. They travel with the event, recorded in the same atomic step, and the
    served policy's learner forwards them (Store.forward_copies): none is lost to a
    crash or an outage after the feedback was accepted. (A cost the store puts in
    place of the event's remakes the shadow increments: FeedbackEvent.with_cost.)"""
    targets: dict[str, dict[str, float] | None] = {}
    for shadow, (_, p_shadow) in (rec.shadows or {}).items():
        w = p_shadow / rec.propensity
        targets[shadow] = shadow_increments(w, event.quality, event.cost_usd)
    base = rec.policy.partition("@")[0]
    if base != rec.policy and base in rt.policies:
        # a tenant's own copy learns its feedback; the global policy learns everyone's
        targets[base] = None
    exp = rt.experiments.get(rec.experiment or "")
    if exp is not None and exp.share_feedback:
        for v in exp.variants:
            if v.policy != rec.policy and v.policy not in targets:
                targets[v.policy] = None
    return targets
