"""Who a request is for, and what that changes: the tenant named by its API key (or,
for a tenant without keys, by the request's `tenant` field), the policy that serves it
(its own state, or the global one), its candidates and its λ.

A tenant's own policy is named "<policy>@<tenant>"; its decisions' event ids carry the
tenant ("<policy>.<tenant>.<id>"), so a feedback can be checked against its caller
and its cost settled against the right budget without a store read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from fastapi import HTTPException, status

from service.budgets.config import PacerConfig, TenantConfig, key_digest

if TYPE_CHECKING:
    from service.runtime_state import Runtime
    from service.serving import ServingPolicy
    from service.settings import Settings

TENANT_ROLE = "tenant:"


def own_policy_name(policy: str, tenant: str) -> str:
    return f"{policy}@{tenant}"


def new_event_id(policy: str, tenant: str | None) -> str:
    return (
        f"{policy}.{uuid.uuid4().hex}"
        if tenant is None
        else f"{policy}.{tenant}.{uuid.uuid4().hex}"
    )


def tenant_of_event(event_id: str) -> str | None:
    parts = event_id.split(".")
    return parts[1] if len(parts) == 3 else None


def key_index(tenants: Mapping[str, TenantConfig]) -> dict[str, str]:
    """SHA-256 digest of an API key -> its tenant."""
    return {d: name for name, t in tenants.items() for d in t.stored().key_sha256}


def role_of_token(index: Mapping[str, str], token: str) -> str | None:
    """ "tenant:<name>" for a tenant's key, else None. A digest lookup, so how long it
    takes says nothing of how close a guess came."""
    name = index.get(key_digest(token))
    return None if name is None else TENANT_ROLE + name


def caller_tenant(role: str | None) -> str | None:
    return role[len(TENANT_ROLE) :] if role is not None and role.startswith(TENANT_ROLE) else None


def request_tenant(rt: Runtime, role: str | None, requested: str | None) -> str | None:
    """The tenant a request is for. A tenant's key names its tenant (naming another is
    a 403); the admin may name any tenant; other callers only tenants without keys (a
    keyed one is a 403: its key is its name). An unknown name is a 404."""
    own = caller_tenant(role)
    if own is not None:
        if requested is not None and requested != own:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"tenant: this API key belongs to tenant {own!r}"
            )
        if own not in rt.tenants:  # deleted since its key was indexed
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key")
        return own
    if requested is None:
        return None
    cfg = rt.tenants.get(requested)
    if cfg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"tenant: unknown tenant {requested!r}")
    if cfg.keyed and role != "admin":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"tenant: {requested!r} is named by its own API key, not by this one",
        )
    return requested


def check_visible(role: str | None, owner: str | None, what: str) -> None:
    """A tenant sees only what is its own (anything else is a 404, as if it did not
    exist); other callers see everything their role allows."""
    own = caller_tenant(role)
    if own is not None and owner != own:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what}: not found")


def served_policy(rt: Runtime, tenant: str | None, name: str) -> str:
    """The policy that serves `tenant` where the global one is `name`: the tenant's own
    copy when it learns one."""
    if tenant is None:
        return name
    cfg = rt.tenants[tenant]
    own = own_policy_name(name, tenant)
    return own if cfg.own_state and own in rt.policies else name


def tenant_candidates(
    rt: Runtime, tenant: str | None, candidates: list[str] | None
) -> list[str] | None:
    """The candidates within what the tenant may use: those of `candidates` (None: the
    catalogue) that its allowlist has, in their order; 422 when none is left."""
    if tenant is None:
        return candidates
    allowed = rt.tenants[tenant].candidates
    if allowed is None:
        return candidates
    pool = list(rt.catalogue) if candidates is None else candidates
    left = [m for m in pool if m in allowed]
    if not left:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"candidates: none of {sorted(pool)} is among tenant {tenant!r}'s models {allowed}",
        )
    return left


def check_named_candidates(rt: Runtime, tenant: str | None, candidates: list[str] | None) -> None:
    """Candidates a request names must all be the tenant's (422 naming the others)."""
    if tenant is None or candidates is None:
        return
    allowed = rt.tenants[tenant].candidates
    refused = sorted(set(candidates) - set(allowed)) if allowed is not None else []
    if refused:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"candidates: {refused} are not among tenant {tenant!r}'s models {allowed}",
        )


def scoped_session(tenant: str | None, session: str | None) -> str | None:
    """A session id within its tenant: two tenants' "user 1" are two sessions (pins,
    implicit signals and privacy flags are keyed by it)."""
    if tenant is None or session is None:
        return session
    return f"{tenant}\x1f{session}"


def tenant_lambda(
    rt: Runtime, tenant: str | None, serving: ServingPolicy, requested: float | None
) -> float | None:
    """The λ a request routes with (None: the policy's own, which a paced policy's
    learner sets). A paced policy ignores the request's λ; a paced tenant's λ is its
    pacer's, published with the snapshot of the policy it shares (or, with its own
    state, its policy's own λ)."""
    base = _base(serving.name)
    if tenant is None:
        policy_cfg = rt.settings.policies.get(base)
        return None if policy_cfg is not None and policy_cfg.pacer is not None else requested
    cfg = rt.tenants[tenant]
    if serving.name != base and cfg.pacer is not None:
        return None
    if cfg.pacer is not None:
        paced = serving.paced.get(tenant)
        if paced is not None:
            return paced
        return (
            cfg.pacer.lam_start
            if cfg.pacer.lam_start is not None
            else _start_lambda(rt, cfg, serving)
        )
    return cfg.cost_weight if cfg.cost_weight is not None else requested


def _start_lambda(rt: Runtime, cfg: TenantConfig, serving: ServingPolicy) -> float:
    if cfg.cost_weight is not None:
        return cfg.cost_weight
    policy_cfg = rt.settings.policies.get(_base(serving.name))
    return policy_cfg.cost_weight if policy_cfg is not None else serving.policy.cost_weight


def _base(name: str) -> str:
    return name.partition("@")[0]


def pacer_specs(
    settings: Settings, tenants: Mapping[str, TenantConfig], name: str
) -> dict[str, tuple[PacerConfig, float]]:
    """What the learner of policy `name` paces: the policy's own λ, and each tenant
    that shares its state and has a pacer ("P@T", a tenant's own copy, paces only
    that tenant, as its own λ)."""
    base, _, tenant = name.partition("@")
    policy_cfg = settings.policies[base]
    if tenant:
        t = tenants.get(tenant)
        if t is None or t.pacer is None:
            return {}
        lam = t.cost_weight if t.cost_weight is not None else policy_cfg.cost_weight
        return {"": (t.pacer, lam)}
    out: dict[str, tuple[PacerConfig, float]] = {}
    if policy_cfg.pacer is not None:
        out[""] = (policy_cfg.pacer, policy_cfg.cost_weight)
    for tname, t in tenants.items():
        if t.pacer is None or t.own_state or (t.policy or settings.default_policy) != base:
            continue
        out[tname] = (
            t.pacer,
            t.cost_weight if t.cost_weight is not None else policy_cfg.cost_weight,
        )
    return out


def pacers_for(
    settings: Settings, tenants: Callable[[], Mapping[str, TenantConfig]], name: str
) -> Callable[[], dict[str, tuple[PacerConfig, float]]]:
    """The learner's `pacers` callable for policy `name`, over the newest tenants."""
    return lambda: pacer_specs(settings, tenants(), name)
