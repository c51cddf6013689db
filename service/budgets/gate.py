"""The hard cap in the request path: a deterministic gate outside the learner.

Before the policy chooses, the tenant's budget window is read and the candidates
narrowed to the models whose estimated cost fits what is left (down to the cheapest);
the chosen model's estimate is then reserved atomically (service.budgets.ledger), and
settled with the actual cost when it is known. Only when no candidate fits is the
answer a 429, with Retry-After. The policy chooses once, among the models that fit,
so the logged candidates and propensity are exactly what it chose from; a reservation
lost to a concurrent one (the window filled between the read and the reservation)
narrows again from the answer and chooses again.

The estimate is an upper bound where one is known: the prompt's tokens at the input
price plus `max_tokens` (else the catalogue's expected output) at the output price,
so the cap is overshot by at most what calls spend beyond their estimates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, status

from policies import Decision
from service.budgets.config import CapConfig
from service.budgets.ledger import Reservation
from service.store.base import DEFAULT_OUTPUT_TOKENS, ModelPrice, StoreUnavailable

if TYPE_CHECKING:
    from service.runtime_state import Runtime

log = logging.getLogger("banditroute.budgets")

# a reservation lost to concurrent ones is retried this often before the 429
_TRIES = 3


def estimate(price: ModelPrice, prompt_tokens: int, max_output_tokens: int | None) -> float:
    """USD one call may cost: the prompt, and the answer at its bound (or expectation)."""
    out = max_output_tokens
    if out is None:
        out = int(price.meta.get("expected_output_tokens") or DEFAULT_OUTPUT_TOKENS)
    return price.cost(prompt_tokens, out)


@dataclass(frozen=True)
class Gated:
    decision: Decision
    reservation: Reservation
    amount: float  # USD reserved


def _over(tenant: str, r: Reservation, cheapest: float | None) -> HTTPException:
    need = "" if cheapest is None else f"; the cheapest candidate needs ${cheapest:.6f}"
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"budget: tenant {tenant!r} has ${r.remaining:.6f} of its ${r.cap:.2f} cap left "
        f"in this window{need}",
        headers={"Retry-After": str(max(1, math.ceil(r.retry_after_s)))},
    )


async def choose_within(
    rt: Runtime,
    tenant: str,
    cap: CapConfig,
    event_id: str,
    candidates: list[str],
    prompt_tokens: int,
    max_output_tokens: int | None,
    choose: Callable[[list[str]], Decision],
) -> Gated:
    """Choose (`choose(candidates)`) among the candidates that fit the tenant's cap and
    reserve the choice's estimate; 429 when none fits. StoreUnavailable propagates:
    a capped tenant is never served without its ledger."""
    ledger = rt.store.ledger()
    costs = {
        m: estimate(rt.catalogue[m], prompt_tokens, max_output_tokens)
        for m in candidates
        if m in rt.catalogue
    }
    cheapest = min(costs.values()) if costs else None
    now = time.time()
    left = (await ledger.state(tenant, cap, now)).remaining
    for _ in range(_TRIES):
        fits = [m for m in candidates if m in costs and costs[m] <= left]
        if not fits:
            break
        d = choose(fits)
        r = await ledger.reserve(tenant, event_id, costs[d.model], cap, time.time())
        if r.ok:
            return Gated(d, r, costs[d.model])
        left = r.remaining
    else:
        rt.metrics.budget_refused.labels(tenant).inc()
        raise _over(tenant, r, cheapest)
    state = await ledger.state(tenant, cap, time.time())
    rt.metrics.budget_refused.labels(tenant).inc()
    raise _over(
        tenant,
        Reservation(
            ok=False,
            spent=state.spent,
            reserved=state.reserved,
            cap=state.cap,
            window_start=state.window_start,
            window_end=state.window_end,
            retry_after_s=_retry_after(state.window_end, cap),
        ),
        cheapest,
    )


def _retry_after(window_end: float, cap: CapConfig) -> float:
    """Room comes back when the window ends or, sooner, when reservations are settled
    for less or expire: at most one reservation lifetime."""
    return max(1.0, min(window_end - time.time(), cap.reservation_ttl_s))


async def settle(rt: Runtime, tenant: str | None, event_id: str, cost_usd: float) -> None:
    """The actual cost of a capped tenant's call (exactly once per event)."""
    if tenant is None:
        return
    cfg = rt.tenants.get(tenant)
    if cfg is None or cfg.cap is None:
        return
    try:
        await rt.store.ledger().settle(tenant, event_id, cost_usd, cfg.cap, time.time())
    except StoreUnavailable:
        # the outcome itself was recorded; the reservation lapses with its ttl
        log.warning("tenant %s: cost of %s not settled, the store is unreachable", tenant, event_id)


async def release(rt: Runtime, tenant: str | None, event_id: str) -> None:
    """A reservation whose decision was never logged (the store failed after it)."""
    if tenant is None:
        return
    cfg = rt.tenants.get(tenant)
    if cfg is not None and cfg.cap is not None:
        await rt.store.ledger().release(tenant, event_id)
