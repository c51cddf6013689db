"""The hard cap's ledger: what a tenant spent and holds in its budget window.

A request reserves its estimated cost before the call (`reserve`, refused when the
window's spent + reserved + estimate would pass the cap) and settles the measured cost
after it (`settle`, exactly once per event id) or releases it when no call was made
(`release`). A reservation that is neither (its worker died mid-call) stops holding
budget `reservation_ttl_s` after it was made: the next `reserve` or `state` purges it.

Windows are aligned to the unix epoch: window k of length w covers [k·w, (k+1)·w).
Each reservation belongs to the window it was made in, and so does its settled cost,
even when the call ends after that window closed: each window's spend was checked
against the cap when its reservations were made, so a window never spends more than
the cap unless a call costs more than its estimate. A settle whose reservation is gone
(purged after its timeout) charges the current window: the money was spent.

Two implementations: `MemoryLedger` here (one process) and `RedisLedger`
(service.budgets.ledger_redis, one Lua script per call). Each store hands out its own
(`Store.ledger()`). This module imports nothing of service.store: the stores import it.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

from service.budgets.config import CapConfig

# sums are floats: a reservation fits when it passes the cap by at most a nano-dollar,
# so that ten reservations of 0.1 fit a cap of 1.0 whatever the rounding
EPS_USD = 1e-9
# a settled event id is remembered this long past its reservation's timeout (and at
# least a day), so a late or retried settle of the same call is not charged twice
SETTLED_MARGIN_S = 3600.0
SETTLED_MIN_S = 86400.0
# a refused reservation looks this far into the open ones for the expiry that makes room
RETRY_SCAN = 256


@dataclass(frozen=True)
class Reservation:
    """The answer to `reserve`: whether it holds, and the window's budget after it.

    spent: USD settled in the current window; reserved: USD held by its open
    reservations (expired ones purged; the new one included when ok); retry_after_s:
    when refused, seconds (>= 1) until the soonest of the window's end and the expiry
    of an open reservation that would make room; 0 when ok. Times are unix seconds.
    """

    ok: bool
    spent: float
    reserved: float
    cap: float
    window_start: float
    window_end: float
    retry_after_s: float = 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, self.cap - self.spent - self.reserved)


@dataclass(frozen=True)
class BudgetState:
    """A tenant's current window: USD spent, held by `open_reservations`, and left."""

    spent: float
    reserved: float
    cap: float
    remaining: float
    window_start: float
    window_end: float
    open_reservations: int


@dataclass(frozen=True)
class Window:
    """Window `index` of `length` seconds: [index·length, (index+1)·length)."""

    length: float
    index: int

    @classmethod
    def at(cls, cap: CapConfig, now: float) -> Window:
        length = cap.window_s()
        return cls(length, math.floor(now / length))

    @property
    def start(self) -> float:
        return self.index * self.length

    @property
    def end(self) -> float:
        return (self.index + 1) * self.length

    def stale(self, now: float) -> bool:
        """Over for a whole window: no reservation or state reads it any more."""
        return self.end + self.length < now

    @property
    def tag(self) -> str:
        """Its name in keys; the length is part of it, so a cap whose window changes
        from a day to an hour does not read the day's spend as the hour's."""
        return f"{self.length!r}:{self.index}"


def settled_keep_s(cap: CapConfig) -> float:
    """How long a settled event id is remembered (see SETTLED_MARGIN_S)."""
    return max(cap.reservation_ttl_s + SETTLED_MARGIN_S, SETTLED_MIN_S)


def fits(spent: float, reserved: float, amount: float, cap: float) -> bool:
    return spent + reserved + amount <= cap + EPS_USD


def retry_after(
    now: float,
    window: Window,
    spent: float,
    reserved: float,
    amount: float,
    cap: float,
    expiries: list[tuple[float, float]],
) -> float:
    """Seconds (>= 1) until a refused `amount` could fit: the first expiry in
    `expiries` ((unix s, USD) of the window's open reservations, soonest first, from
    the RETRY_SCAN soonest of all) after which it fits, else the window's end."""
    at = window.end
    if fits(spent, 0.0, amount, cap):
        freed = 0.0
        for expires_at, held in expiries:
            freed += held
            if fits(spent, reserved - freed, amount, cap):
                at = min(at, expires_at)
                break
    return max(1.0, at - now)


def _check_name(what: str, value: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{what} must be a string of 1-{limit} characters, got {value!r}")
    # braces would move the tenant's keys out of its Redis Cluster hash tag
    if what == "tenant" and any(c in value for c in "{}"):
        raise ValueError(f"tenant {value!r} must not contain braces")
    return value


def _check_usd(what: str, value: float) -> float:
    usd = float(value)
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {value!r}")
    return usd


class Ledger(ABC):
    """A tenant's budget windows; every method is one atomic step.

    The public methods validate (ValueError naming the argument) and hand over to the
    private ones. A ledger on Redis raises StoreUnavailable (service.store.base) when
    Redis cannot be reached.
    """

    async def reserve(
        self, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
    ) -> Reservation:
        """Purge expired reservations, then hold `amount` USD for `event_id` until
        now + cap.reservation_ttl_s if it fits the current window's cap; a refusal
        changes nothing. An event id already held or settled holds nothing more and
        answers ok (a retried call is not reserved twice)."""
        return await self._reserve(
            _check_name("tenant", tenant, 128),
            _check_name("event_id", event_id, 256),
            _check_usd("amount", amount),
            cap,
            float(now),
        )

    async def settle(
        self, tenant: str, event_id: str, cost_usd: float, cap: CapConfig, now: float
    ) -> bool:
        """Drop the reservation if still held and add `cost_usd` to the spend of the
        window it was made in (the current window if it is gone). Once per event id:
        a second settle answers False and changes nothing."""
        return await self._settle(
            _check_name("tenant", tenant, 128),
            _check_name("event_id", event_id, 256),
            _check_usd("cost_usd", cost_usd),
            cap,
            float(now),
        )

    async def release(self, tenant: str, event_id: str) -> bool:
        """Drop a held reservation without charging it (no call was made); False when
        none is held (never made, settled, released, or purged after its timeout)."""
        return await self._release(
            _check_name("tenant", tenant, 128), _check_name("event_id", event_id, 256)
        )

    async def state(self, tenant: str, cap: CapConfig, now: float) -> BudgetState:
        """The current window, after purging expired reservations."""
        return await self._state(_check_name("tenant", tenant, 128), cap, float(now))

    @abstractmethod
    async def _reserve(
        self, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
    ) -> Reservation: ...

    @abstractmethod
    async def _settle(
        self, tenant: str, event_id: str, cost_usd: float, cap: CapConfig, now: float
    ) -> bool: ...

    @abstractmethod
    async def _release(self, tenant: str, event_id: str) -> bool: ...

    @abstractmethod
    async def _state(self, tenant: str, cap: CapConfig, now: float) -> BudgetState: ...


# ---- in this process -------------------------------------------------------------
@dataclass(slots=True)
class _Sums:
    spent: float = 0.0
    reserved: float = 0.0
    held: int = 0  # open reservations


@dataclass(slots=True)
class _Held:
    amount: float
    expires_at: float
    window: Window


@dataclass(slots=True)
class _Tenant:
    windows: dict[Window, _Sums] = field(default_factory=dict)
    held: dict[str, _Held] = field(default_factory=dict)
    # (expires_at, event_id), a lazy heap: an entry whose hold is gone is skipped
    expiries: list[tuple[float, str]] = field(default_factory=list)
    settled: dict[str, float] = field(default_factory=dict)  # event id -> kept until
    settled_order: deque[tuple[float, str]] = field(default_factory=deque)


class MemoryLedger(Ledger):
    """The ledger of one process (MemoryStore's): nothing awaits between a check and
    its change, so each call is atomic on its event loop, like the Redis scripts."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        return t

    async def _reserve(
        self, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
    ) -> Reservation:
        t = self._tenant(tenant)
        self._purge(t, now)
        win = Window.at(cap, now)
        sums = t.windows.get(win) or _Sums()
        ok = event_id in t.held or event_id in t.settled
        if not ok and fits(sums.spent, sums.reserved, amount, cap.usd):
            t.windows[win] = sums
            sums.reserved += amount
            sums.held += 1
            expires_at = now + cap.reservation_ttl_s
            t.held[event_id] = _Held(amount, expires_at, win)
            heapq.heappush(t.expiries, (expires_at, event_id))
            self._tidy(t, now)
            ok = True
        wait = 0.0
        if not ok:
            soonest = heapq.nsmallest(RETRY_SCAN, t.held.values(), key=lambda h: h.expires_at)
            open_ = [(h.expires_at, h.amount) for h in soonest if h.window == win]
            wait = retry_after(now, win, sums.spent, sums.reserved, amount, cap.usd, open_)
        return Reservation(ok, sums.spent, sums.reserved, cap.usd, win.start, win.end, wait)

    async def _settle(
        self, tenant: str, event_id: str, cost_usd: float, cap: CapConfig, now: float
    ) -> bool:
        t = self._tenant(tenant)
        if t.settled.get(event_id, -math.inf) > now:
            return False
        held = self._drop(t, event_id)
        win = held.window if held is not None else Window.at(cap, now)
        t.windows.setdefault(win, _Sums()).spent += cost_usd
        until = now + settled_keep_s(cap)
        t.settled[event_id] = until
        t.settled_order.append((until, event_id))
        self._tidy(t, now)
        return True

    async def _release(self, tenant: str, event_id: str) -> bool:
        t = self._tenants.get(tenant)
        return t is not None and self._drop(t, event_id) is not None

    async def _state(self, tenant: str, cap: CapConfig, now: float) -> BudgetState:
        t = self._tenant(tenant)
        self._purge(t, now)
        win = Window.at(cap, now)
        s = t.windows.get(win) or _Sums()
        left = max(0.0, cap.usd - s.spent - s.reserved)
        return BudgetState(s.spent, s.reserved, cap.usd, left, win.start, win.end, s.held)

    @staticmethod
    def _drop(t: _Tenant, event_id: str) -> _Held | None:
        held = t.held.pop(event_id, None)
        if held is not None:
            sums = t.windows.get(held.window)
            if sums is not None:
                sums.held = max(0, sums.held - 1)
                # the last hold gone, nothing is reserved: float residue is dropped
                sums.reserved = max(0.0, sums.reserved - held.amount) if sums.held else 0.0
        return held

    def _purge(self, t: _Tenant, now: float) -> None:
        while t.expiries and t.expiries[0][0] <= now:
            expires_at, event_id = heapq.heappop(t.expiries)
            held = t.held.get(event_id)
            if held is not None and held.expires_at == expires_at:
                self._drop(t, event_id)

    @staticmethod
    def _tidy(t: _Tenant, now: float) -> None:
        """Forget windows over for a whole window and settled ids past their keep."""
        if len(t.windows) > 4:
            for win in [w for w in t.windows if w.stale(now)]:
                del t.windows[win]
        # in the order settled, which is the order of expiry while the keep is the same
        while t.settled_order and t.settled_order[0][0] <= now:
            until, event_id = t.settled_order.popleft()
            if t.settled.get(event_id) == until:
                del t.settled[event_id]
