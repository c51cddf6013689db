"""/v1/tenants: a tenant's configuration, spend, reservations and pacer (its own key
or the admin's reads it), and the admin's changes to it (validated whole first: a bad
field is a 422 that names it and changes nothing)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status

from service.budgets import registry
from service.budgets.config import TENANT_NAME, TenantConfig
from service.budgets.tenancy import caller_tenant, own_policy_name, served_policy
from service.deps import AdminAuth, ClientAuth, RuntimeDep
from service.runtime_state import Runtime

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
TenantName = Annotated[str, Path(pattern=TENANT_NAME)]


def _visible(rt: Runtime, name: str, role: str | None) -> TenantConfig:
    own = caller_tenant(role)
    cfg = rt.tenants.get(name)
    if cfg is None or (own is not None and own != name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"name: unknown tenant {name!r}")
    if own is None and role != "admin":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "a tenant is read with its own key or the admin key"
        )
    return cfg


@router.get("")
async def list_tenants(rt: RuntimeDep, _auth: AdminAuth) -> dict[str, Any]:
    return {"tenants": sorted(rt.tenants)}


@router.get("/{name}")
async def tenant_status(name: TenantName, rt: RuntimeDep, _auth: ClientAuth) -> dict[str, Any]:
    """Its configuration (keys never shown), its cap's window (spent, reserved,
    remaining) and its pacer's λ and realised spend, as last published."""
    cfg = _visible(rt, name, _auth)
    policy = cfg.policy or rt.settings.default_policy
    served = served_policy(rt, name, policy)
    out: dict[str, Any] = {
        "name": name,
        "policy": policy,
        "served_policy": served,
        "own_state": served != policy,
        "candidates": cfg.candidates,
        "cost_weight": cfg.cost_weight,
        "keys": len(cfg.key_sha256),
        "cap": None,
        "pacer": None,
    }
    if cfg.cap is not None:
        st = await rt.store.ledger().state(name, cfg.cap, time.time())
        out["cap"] = {
            **cfg.cap.model_dump(),
            "spent_usd": st.spent,
            "reserved_usd": st.reserved,
            "remaining_usd": st.remaining,
            "open_reservations": st.open_reservations,
            "window_start": st.window_start,
            "window_end": st.window_end,
        }
    if cfg.pacer is not None:
        serving = rt.policies.get(served)
        key = "" if served != policy else name
        state = None if serving is None else serving.pacer_states.get(key)
        pacer = cfg.pacer.make(cfg.cost_weight or 0.0)
        if state is not None:
            pacer.restore(state)
        out["pacer"] = {
            **cfg.pacer.model_dump(),
            "lam": pacer.lam if state is not None else None,
            "observed": pacer.n,
            "realised": pacer.realised(),
            "published_version": None if serving is None else serving.version,
        }
    return out


@router.put("/{name}")
async def put_tenant(
    name: TenantName, body: TenantConfig, rt: RuntimeDep, _auth: AdminAuth
) -> dict[str, Any]:
    """Create or replace a tenant whole. Without `keys` or `key_sha256` it keeps the
    keys it had. `own_state` is fixed at start-up (a learner per tenant): a change is a
    422 that says so."""
    _check(rt, name, body)
    old = rt.tenants.get(name)
    if old is not None and not body.keys and not body.key_sha256:
        body = body.model_copy(update={"key_sha256": old.key_sha256})
    stored = body.stored()
    doc = stored.model_dump_json()
    TenantConfig.model_validate_json(doc)  # reads back as validated, on every worker
    await rt.store.put_tenant(name, doc)
    registry.install(rt, {**rt.tenants, name: stored})
    return {
        "name": name,
        "keys": len(stored.key_sha256),
        **stored.model_dump(exclude={"keys", "key_sha256"}),
    }


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_tenant(name: TenantName, rt: RuntimeDep, _auth: AdminAuth) -> Response:
    if name not in rt.tenants:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"name: unknown tenant {name!r}")
    await rt.store.delete_tenant(name)
    registry.install(rt, {k: v for k, v in rt.tenants.items() if k != name})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _check(rt: Runtime, name: str, body: TenantConfig) -> None:
    s = rt.settings
    served = {n for n, p in s.policies.items() if p.shadow_of is None}
    policy = body.policy or s.default_policy
    if policy not in served:
        _bad(f"policy: {policy!r} is not a served policy {sorted(served)}")
    unknown = sorted(set(body.candidates or []) - set(rt.catalogue))
    if unknown:
        _bad(f"candidates: unknown model(s) {unknown}; registered: {sorted(rt.catalogue)}")
    if body.pacer is not None and body.pacer.share_models:
        unknown = sorted(set(body.pacer.share_models) - set(rt.catalogue))
        if unknown:
            _bad(f"pacer.share_models: unknown model(s) {unknown}")
    learns = own_policy_name(policy, name) in rt.policies
    if body.own_state != learns:
        _bad(
            f"own_state: {body.own_state} differs from this deployment's start-up config "
            f"({learns}); a tenant's own learner is configured in the config file"
        )
    if (body.keys or body.key_sha256) and rt.settings.admin_key is None:
        _bad("keys: a tenant with keys needs admin_key set (else every other caller is admin)")
    digests = {d for t, c in rt.tenants.items() if t != name for d in c.stored().key_sha256}
    if digests & set(body.stored().key_sha256):
        _bad("keys: a key already belongs to another tenant")


def _bad(message: str) -> None:
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)
