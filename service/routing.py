"""One routing decision, shared by the two front doors (`POST /v1/route` and the
gateway's `POST /v1/chat/completions`): experiment assignment, the policy's choice
among the candidates, the shadows' choices, and the decision record in the store."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, status

from policies import Decision, PolicyError
from service.budgets import gate
from service.budgets.tenancy import (
    new_event_id,
    served_policy,
    tenant_candidates,
    tenant_lambda,
)
from service.experiments import VariantConfig, assign
from service.runtime_state import Runtime
from service.serving import ServingPolicy
from service.store.base import DecisionRecord, StoreUnavailable

log = logging.getLogger("banditroute.routing")


@dataclass(frozen=True)
class Routed:
    """A decision made and logged (`record`), or, with the store down, `degraded`:
    the fallback model, propensity 1, nothing logged (`record` is None)."""

    policy: str
    version: int
    model: str
    propensity: float
    record: DecisionRecord | None
    decision: Decision | None
    experiment: str | None = None
    variant: str | None = None
    tenant: str | None = None

    @property
    def degraded(self) -> bool:
        return self.record is None


def resolve_policy(
    rt: Runtime,
    policy: str | None,
    experiment: str | None,
    unit_id: str | None,
    tenant: str | None = None,
) -> tuple[str, ServingPolicy, str | None, VariantConfig | None, str | None]:
    """(policy name, its serving copy, experiment, variant, unit) for a request naming
    a policy, an experiment, or neither (the default experiment, else the default
    policy); 404 naming the known ones for an unknown name. For a tenant: its own
    experiments only, its policy by default, and its own copy of a policy it learns."""
    if tenant is not None and policy is None and experiment is None:
        policy = rt.tenants[tenant].policy or rt.settings.default_policy
    exp_name, variant, unit = assignment(rt, policy, experiment, unit_id, tenant)
    name = variant.policy if variant is not None else policy or rt.settings.default_policy
    if "@" in name:  # a tenant's own copy is reached through its tenant, never by name
        name = ""
    serving = rt.policies.get(name)
    if serving is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"policy: unknown policy {name!r}; known: "
            f"{sorted(p for p in rt.policies if '@' not in p)}",
        )
    own = served_policy(rt, tenant, name)
    return own, rt.policies[own], exp_name, variant, unit


def check_candidates(rt: Runtime, candidates: list[str] | None, field: str = "candidates") -> None:
    if candidates is None:
        return
    if len(candidates) > rt.settings.max_candidates:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}: {len(candidates)} given, at most {rt.settings.max_candidates} allowed",
        )
    unknown = sorted(set(candidates) - set(rt.catalogue))
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}: unknown model(s) {unknown}; registered: {sorted(rt.catalogue)}",
        )


async def decide(
    rt: Runtime,
    text: str,
    x: np.ndarray,
    name: str,
    serving: ServingPolicy,
    candidates: list[str] | None,
    cost_weight: float | None,
    *,
    experiment: str | None = None,
    variant: VariantConfig | None = None,
    unit: str | None = None,
    awaits_cost: bool = False,
    prompt_tokens: int | None = None,
    restricted: list[str] | None = None,
    tenant: str | None = None,
    max_output_tokens: int | None = None,
) -> Routed:
    """Choose among `candidates` for context `x` (shape (dim,)) and log the decision
    with its propensity. A PolicyError (e.g. no usable candidate) is a 422; a store
    outage gives the degraded answer rather than an error. A tenant's candidates, λ
    and hard cap apply (a capped tenant over its cap: 429; its ledger unreachable: 503)."""
    policy, version = serving.policy, serving.version  # the copy that chooses, as it was
    candidates = tenant_candidates(rt, tenant, candidates)
    cost_weight = tenant_lambda(rt, tenant, serving, cost_weight)
    event_id = new_event_id(name, tenant)
    tokens = prompt_tokens if prompt_tokens is not None else max(1, len(text) // 4)
    cap = None if tenant is None else rt.tenants[tenant].cap

    def choose(among: list[str] | None) -> Decision:
        try:
            return policy.choose(x, among, cost_weight, text=text)
        except PolicyError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

    if cap is None or tenant is None:
        d = choose(candidates)
    else:
        try:
            gated = await gate.choose_within(
                rt,
                tenant,
                cap,
                event_id,
                candidates if candidates is not None else list(policy.models),
                tokens,
                max_output_tokens,
                choose,
            )
        except StoreUnavailable:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"budget: tenant {tenant!r}'s ledger is unreachable; a capped tenant is "
                "not served without it",
                headers={"Retry-After": "1"},
            ) from None
        d = gated.decision
        rt.metrics.budget_reserved.labels(tenant).inc(gated.amount)
    shadows = _shadow_choices(rt, name, x, d.model, d.probabilities, cost_weight, text)
    now = time.time()
    rec = DecisionRecord(
        event_id=event_id,
        policy=name,
        model=d.model,
        propensity=d.propensity,
        policy_version=version,
        context=x,
        candidates=list(d.probabilities),
        cost_weight=policy.cost_weight if cost_weight is None else cost_weight,
        created_at=now,
        deadline=now + rt.settings.decision_ttl_s,
        prompt_tokens=tokens,
        expected_cost=(d.expected_cost or {}).get(d.model),
        experiment=experiment,
        variant=None if variant is None else variant.name,
        unit=unit,
        shadows={s: (m, p) for s, (m, p, _) in shadows.items()} or None,
        awaits_cost=awaits_cost,
        restricted=restricted,
        tenant=tenant,
    )
    try:
        seen = await rt.store.put_decision(rec)
    except StoreUnavailable:
        if cap is not None:
            try:
                await gate.release(rt, tenant, event_id)
            except StoreUnavailable:
                pass  # it expires with its ttl
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "store: the decision could not be logged; retry later",
                headers={"Retry-After": "1"},
            ) from None
        return degraded(rt, name, serving.version, candidates, rec.experiment, rec.variant)
    serving.notice_version(rt.store, seen, rt.catalogue)
    rt.metrics.decisions.labels(name, d.model, "false").inc()
    for shadow, (model, _, unsupported) in shadows.items():
        try:
            await rt.store.count_shadow_decision(shadow, model == d.model, unsupported)
        except StoreUnavailable:
            log.warning("shadow %s: decision not counted, the store is unreachable", shadow)
    return Routed(
        policy=name,
        version=version,
        model=d.model,
        propensity=d.propensity,
        record=rec,
        decision=d,
        experiment=rec.experiment,
        variant=rec.variant,
        tenant=tenant,
    )


def _shadow_choices(
    rt: Runtime,
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


def assignment(
    rt: Runtime,
    policy: str | None,
    experiment: str | None,
    unit_id: str | None,
    tenant: str | None = None,
) -> tuple[str | None, VariantConfig | None, str | None]:
    """(experiment, variant, unit): the request's experiment, or the default one when
    it names no policy; a request without a unit id is assigned at random (and
    counted as anonymous). A tenant joins only its own experiments."""
    name = experiment
    if name is None and policy is None:
        name = rt.settings.default_experiment
    if name is None:
        return None, None, None
    exp = rt.experiments.get(name)
    if exp is not None and exp.tenant != tenant and (tenant is not None or exp.tenant):
        exp = None  # another tenant's: as if it did not exist
    if exp is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"experiment: unknown experiment {name!r}; known: "
            f"{sorted(n for n, e in rt.experiments.items() if e.tenant == tenant)}",
        )
    variant = exp.variant(assign(exp, unit_id if unit_id is not None else uuid.uuid4().hex))
    return name, variant, unit_id


def degraded(
    rt: Runtime,
    name: str,
    version: int,
    candidates: list[str] | None,
    experiment: str | None = None,
    variant: str | None = None,
) -> Routed:
    """Without its store the service cannot log a decision, so it does not explore:
    the configured fallback model (or the first candidate), propensity 1."""
    fallback = rt.settings.fallback_model
    if candidates and (fallback is None or fallback not in candidates):
        fallback = candidates[0]
    if fallback is None:
        fallback = next(iter(rt.catalogue))
    rt.metrics.decisions.labels(name, fallback, "true").inc()
    return Routed(
        policy=name,
        version=version,
        model=fallback,
        propensity=1.0,
        record=None,
        decision=None,
        experiment=experiment,
        variant=variant,
    )
