"""The tenants a worker knows: seeded from the config into the store once (after that
the admin API owns them, as with experiments), re-read every second, each stored
document validated before it replaces the one served."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.budgets.config import TenantConfig
from service.budgets.tenancy import key_index, own_policy_name
from service.store.base import Store, StoreUnavailable

if TYPE_CHECKING:
    from service.runtime_state import Runtime
    from service.settings import Settings

log = logging.getLogger("banditroute.tenants")


def configured(settings: Settings) -> dict[str, TenantConfig]:
    """The config file's tenants in their stored form (keys as digests)."""
    return {name: t.stored() for name, t in settings.tenants.items()}


async def load(settings: Settings, store: Store) -> dict[str, TenantConfig]:
    """The store's tenants, seeded with configured ones it has never had."""
    mine = configured(settings)
    try:
        known = await store.get_tenants(include_deleted=True)
        for name, cfg in mine.items():
            if name not in known:
                await store.put_tenant(name, cfg.model_dump_json())
        return parse(await store.get_tenants(), mine)
    except StoreUnavailable:
        log.warning("store unreachable at start-up: serving the configured tenants")
        return mine


def parse(raw: Mapping[str, str], current: Mapping[str, TenantConfig]) -> dict[str, TenantConfig]:
    """Stored documents as configs; an unreadable one keeps its previous version."""
    out = {}
    for name, doc in raw.items():
        try:
            out[name] = TenantConfig.model_validate_json(doc)
        except (ValidationError, ValueError) as exc:
            log.error("tenant %s: stored config rejected: %s", name, exc)
            if name in current:
                out[name] = current[name]
    return out


def install(rt: Runtime, tenants: dict[str, TenantConfig]) -> None:
    rt.tenants = tenants
    rt.tenant_keys = key_index(tenants)


def own_state_policies(settings: Settings) -> dict[str, tuple[str, str]]:
    """ "<policy>@<tenant>" -> (policy, tenant) for every configured tenant that learns
    its own state (fixed at start-up: each is a learner and a serving copy)."""
    out = {}
    for name, t in settings.tenants.items():
        if t.own_state:
            policy = t.policy or settings.default_policy
            out[own_policy_name(policy, name)] = (policy, name)
    return out


async def refresh(rt: Runtime) -> None:
    """Re-read the tenants and publish each capped tenant's window and each pacer's λ
    as metrics."""
    install(rt, parse(await rt.store.get_tenants(), rt.tenants))
    now = time.time()
    ledger = rt.store.ledger()
    for name, cfg in rt.tenants.items():
        if cfg.cap is None:
            continue
        st = await ledger.state(name, cfg.cap, now)
        for kind, value in (
            ("spent", st.spent),
            ("reserved", st.reserved),
            ("remaining", st.remaining),
            ("cap", st.cap),
        ):
            rt.metrics.budget.labels(name, kind).set(value)
    for policy, serving in rt.policies.items():
        for tenant, state in serving.pacer_states.items():
            rt.metrics.pacer_lambda.labels(policy, tenant).set(float(state["lam"]))
