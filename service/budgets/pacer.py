"""A primal-dual pacer: the λ a policy routes with, moved online so that what it
spends tracks a target.

Routing by quality - λ·cost is the Lagrangian of "best quality subject to spend <= b";
the pacer is its dual step: after each observed call with cost c (or, for a share
target, 1 if the call went to one of the named models, else 0),

    λ <- clip(λ + step · (c - b) / b, lam_min, lam_max).

λ is then the integral of the relative overspend, so while it is not clipped the
cumulative spend per request stays within (λ range) · b / step of b·n: the time
average converges to the target whatever the spend-vs-λ curve is, and a price cut or
a traffic change moves λ until spend is back on target. Dividing by b makes `step`
free of units: it is the λ moved by one request that costs twice the target.

With `scale="log"` the same step is taken on log λ (λ <- λ·exp(step·(c - b)/b), a
multiplicative dual update): moves proportional to λ, so one step size suits a λ* of
0.03 and one of 3 alike, and a small λ* is approached without the hard stop at 0 where
an additive step's clipped moves are underspend never paid back. λ then lives in
[max(lam_min, LOG_FLOOR), lam_max].

A rate target (USD per hour or per day) becomes a per-request one through the request
rate, estimated from the observed calls' timestamps (an exponentially weighted count
over `horizon_s`). Pure logic, no I/O: the learner owns one per paced policy or
tenant and publishes `state()` with its snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

TargetKind = Literal["usd_per_1k", "usd_per_hour", "usd_per_day", "share"]
Scale = Literal["linear", "log"]
# the smallest λ of a log-scale pacer: a thousandth of a quality point per priciest call
LOG_FLOOR = 1e-3
_SECONDS = {"usd_per_hour": 3600.0, "usd_per_day": 86400.0}


@dataclass(frozen=True)
class PacerTarget:
    """What the pacer holds: USD per 1,000 requests, USD per hour or per day, or the
    share in (0, 1) of calls that go to `models` (RouteLLM's "at most 20% of calls to
    the strong model": name the expensive models, since raising λ moves calls off them)."""

    kind: TargetKind
    value: float
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"target value must be a positive number, got {self.value}")
        if self.kind == "share" and (self.value >= 1 or not self.models):
            raise ValueError("a share target needs a value in (0, 1) and at least one model")


class Pacer:
    """λ for one policy or tenant, from the stream of its calls' costs.

    step: λ moved per request whose metric is twice the target (see the module doc);
    with scale "log", log λ moved.
    lam_min / lam_max: λ's range; lam_max bounds how hard the pacer may lean on cost.
    horizon_s: the request-rate estimate's memory, for rate targets.
    """

    def __init__(
        self,
        target: PacerTarget,
        *,
        lam: float = 0.0,
        step: float = 0.02,
        lam_min: float = 0.0,
        lam_max: float = 20.0,
        horizon_s: float = 3600.0,
        scale: Scale = "linear",
    ) -> None:
        if scale not in ("linear", "log"):
            raise ValueError(f"scale must be 'linear' or 'log', got {scale!r}")
        if scale == "log":
            lam_min = max(lam_min, LOG_FLOOR)
        if not 0 <= lam_min <= lam_max or not math.isfinite(lam_max):
            raise ValueError(f"need 0 <= lam_min <= lam_max, got {lam_min}, {lam_max}")
        if not step > 0 or not math.isfinite(step):
            raise ValueError(f"step must be a positive number, got {step}")
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
        self.target = target
        self.step = step
        self.lam_min = lam_min
        self.lam_max = lam_max
        self.horizon_s = horizon_s
        self.scale = scale
        self.lam = min(max(lam, lam_min), lam_max)
        self.n = 0  # calls observed
        self.spend = 0.0  # USD over those calls
        self.hits = 0  # calls to the share target's models
        self._rate_w = 0.0  # exponentially weighted call count (rate targets)
        self._first: float | None = None
        self._last: float | None = None

    # ---- the controller --------------------------------------------------------
    def observe(self, cost_usd: float, model: str, at: float) -> float:
        """One call's outcome (cost in USD, the model that answered, unix seconds of the
        decision); returns the new λ."""
        if not math.isfinite(cost_usd) or cost_usd < 0:
            return self.lam  # a cost the store would have refused: nothing to learn
        self._count(at)
        self.n += 1
        self.spend += cost_usd
        hit = model in self.target.models
        self.hits += hit
        metric = float(hit) if self.target.kind == "share" else cost_usd
        b = self.per_call_target()
        if b is None:
            return self.lam
        move = self.step * (metric - b) / b
        lam = self.lam * math.exp(min(move, 50.0)) if self.scale == "log" else self.lam + move
        self.lam = min(max(lam, self.lam_min), self.lam_max)
        return self.lam

    def per_call_target(self) -> float | None:
        """The target per call (USD, or a share); None while a rate target has no rate
        estimate yet (fewer than two calls)."""
        t = self.target
        if t.kind == "share":
            return t.value
        if t.kind == "usd_per_1k":
            return t.value / 1000.0
        rate = self.rate()
        if rate is None or rate <= 0:
            return None
        return t.value / _SECONDS[t.kind] / rate

    def rate(self) -> float | None:
        """Calls per second: the weighted count over the horizon, or, before one horizon
        has passed, the count over the time seen so far."""
        if self._first is None or self._last is None or self.n < 2:
            return None
        seen = self._last - self._first
        if seen <= 0:
            return None
        if seen < self.horizon_s:
            return self.n / seen
        return self._rate_w / self.horizon_s

    def _count(self, at: float) -> None:
        if self._first is None:
            self._first = at
        if self._last is not None and at > self._last:
            self._rate_w *= math.exp(-(at - self._last) / self.horizon_s)
        self._rate_w += 1.0
        self._last = at if self._last is None else max(self._last, at)

    # ---- what it reports -------------------------------------------------------
    def realised(self) -> dict[str, float | None]:
        """Spend so far: USD per 1,000 calls, the share of calls to the target's
        models, and USD per hour at the estimated rate."""
        rate = self.rate()
        per_call = self.spend / self.n if self.n else None
        return {
            "usd_per_1k": None if per_call is None else per_call * 1000.0,
            "share": self.hits / self.n if self.n else None,
            "usd_per_hour": None if per_call is None or rate is None else per_call * rate * 3600,
        }

    # ---- state -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` takes it back (the target is config)."""
        return {
            "lam": self.lam,
            "n": self.n,
            "spend": self.spend,
            "hits": self.hits,
            "rate_w": self._rate_w,
            "first": self._first,
            "last": self._last,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state()`; λ is clipped into this pacer's (maybe new) range."""
        self.lam = min(max(float(state.get("lam", self.lam)), self.lam_min), self.lam_max)
        self.n = int(state.get("n", 0))
        self.spend = float(state.get("spend", 0.0))
        self.hits = int(state.get("hits", 0))
        self._rate_w = float(state.get("rate_w", 0.0))
        first, last = state.get("first"), state.get("last")
        self._first = None if first is None else float(first)
        self._last = None if last is None else float(last)
