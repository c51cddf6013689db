"""An experiment's report: per-variant results and each variant against control, from
the counters the store keeps; the guardrail's verdict; and the running difference over
time, from the decision log (for plots). Every interval is over units (cluster-robust,
see service.abstats), and the feedback rate is checked for a mismatch between variants."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.abstats import (
    MIN_N_VERDICT,
    RESPONSE_ALPHA,
    Sums,
    UnitSums,
    UnitTotals,
    difference,
    finite,
    mean_interval,
    unit_feedback,
)
from service.experiments import ExperimentConfig, StopRecord
from service.store.base import FeedbackEvent, ModelPrice, Store

METRICS = ("reward", "quality", "cost_usd")
# a "typical priciest call" when the experiment sets no cost scale
TYPICAL_PROMPT_TOKENS, TYPICAL_OUTPUT_TOKENS = 1000, 256


def cost_scale(exp: ExperimentConfig, catalogue: Mapping[str, ModelPrice]) -> float:
    """USD of one cost unit in the reward: the experiment's, else the priciest model's
    cost for a 1,000-token prompt and a 256-token answer (1.0 if nothing is priced)."""
    if exp.cost_scale is not None:
        return exp.cost_scale
    costs = [p.cost(TYPICAL_PROMPT_TOKENS, TYPICAL_OUTPUT_TOKENS) for p in catalogue.values()]
    top = max(costs, default=0.0)
    return top if top > 0 else 1.0


@dataclass(frozen=True)
class VariantData:
    name: str
    policy: str
    counters: dict[str, float]
    units: int

    @property
    def sums(self) -> Sums:
        return Sums.of(self.counters)

    @property
    def unit_sums(self) -> UnitSums:
        return UnitSums.of(self.counters)


async def collect(store: Store, exp: ExperimentConfig) -> list[VariantData]:
    out = []
    for v in exp.variants:
        counters, units = await store.experiment_counts(v.policy, exp.name, v.name)
        out.append(VariantData(v.name, v.policy, counters, units))
    return out


def _metric(name: str) -> str:
    return "cost" if name == "cost_usd" else name


def build_report(exp: ExperimentConfig, data: list[VariantData], scale: float) -> dict[str, Any]:
    a = exp.cost_weight / scale
    weights = exp.effective_weights()
    total_w = sum(weights.values()) or 1.0
    by_name = {d.name: d for d in data}
    variants = []
    for d in data:
        s, u = d.sums, d.unit_sums
        decisions = int(d.counters.get("decisions", 0))
        variants.append(
            {
                "name": d.name,
                "policy": d.policy,
                "weight": weights[d.name],
                "share": weights[d.name] / total_w,
                "units": d.units,
                "decisions": decisions,
                "anonymous_decisions": int(d.counters.get("anon", 0)),
                "feedback": s.n,
                # units with a decision (an anonymous decision is one) and with feedback:
                # the intervals rest on these, not on the feedback count
                "units_assigned": u.units,
                "units_with_feedback": u.responders,
                "feedback_rate": s.n / decisions if decisions else None,
                "feedback_rate_interval": mean_interval(
                    u, "feedback_rate", 0.0, exp.alpha
                ).as_dict(),
                **{m: mean_interval(u, _metric(m), a, exp.alpha).as_dict() for m in METRICS},
            }
        )
    control = by_name[exp.control or data[0].name]
    cu = control.unit_sums
    diffs = []
    warnings = []
    for d in data:
        if d.name == control.name:
            continue
        u = d.unit_sums
        row: dict[str, Any] = {"variant": d.name, "control": control.name}
        for m in METRICS:
            fixed, seq = difference(u, cu, _metric(m), a, exp.alpha)
            row[m] = {
                "difference": finite(fixed.mean),
                "interval": [finite(fixed.low), finite(fixed.high)],
                "sequence": [finite(seq.low), finite(seq.high)],
                # anytime-valid: safe to act on whenever the report is read
                "significant": bool(
                    min(u.responders, cu.responders) >= MIN_N_VERDICT
                    and (seq.low > 0 or seq.high < 0)
                ),
            }
        row["feedback_rate"] = rate = feedback_rate_check(u, cu)
        if rate["mismatch"]:
            warnings.append(
                f"feedback rate of {d.name!r} differs from control {control.name!r} by "
                f"{rate['difference']:+.1%} (anytime-valid {1 - RESPONSE_ALPHA:.0%} interval "
                f"[{rate['sequence'][0]:+.1%}, {rate['sequence'][1]:+.1%}]): the variants' "
                "responders are not comparable, so their means may be biased"
            )
        diffs.append(row)
    return {
        "name": exp.name,
        "control": control.name,
        "cost_weight": exp.cost_weight,
        "cost_scale_usd": scale,
        "level": 1 - exp.alpha,
        "variants": variants,
        "differences": diffs,
        "warnings": warnings,
        "stopped": {k: v.model_dump() for k, v in exp.stopped.items()},
        "guardrail": exp.guardrail.model_dump() if exp.guardrail else None,
    }


def feedback_rate_check(b: UnitSums, a: UnitSums, alpha: float = RESPONSE_ALPHA) -> dict[str, Any]:
    """Feedbacks per decision of `b` minus `a`, over units, and whether it differs
    (like a sample-ratio mismatch): the anytime-valid interval at level 1 − alpha
    excludes 0, with at least MIN_N_VERDICT units each. A difference means the
    variants' responders differ, so means over them are biased."""
    fixed, seq = difference(b, a, "feedback_rate", 0.0, alpha)
    return {
        "difference": finite(fixed.mean),
        "alpha": alpha,
        "interval": [finite(fixed.low), finite(fixed.high)],
        "sequence": [finite(seq.low), finite(seq.high)],
        "mismatch": bool(min(b.units, a.units) >= MIN_N_VERDICT and (seq.low > 0 or seq.high < 0)),
    }


def guardrail_stops(
    exp: ExperimentConfig, data: list[VariantData], scale: float, now: float | None = None
) -> dict[str, StopRecord]:
    """Variants the guardrail stops now: worse than control in reward by more than the
    margin, by the anytime-valid sequence at the guardrail's alpha."""
    g = exp.guardrail
    if g is None:
        return {}
    a = exp.cost_weight / scale
    control = next(d for d in data if d.name == exp.control)
    out = {}
    for d in data:
        if d.name == control.name or d.name in exp.stopped:
            continue
        u, cu = d.unit_sums, control.unit_sums
        if min(d.sums.n, control.sums.n) < g.min_feedback:
            continue
        if min(u.responders, cu.responders) < MIN_N_VERDICT:
            continue  # the interval over units needs units, not only feedback
        _, seq = difference(u, cu, "reward", a, g.alpha)
        if seq.high < -g.margin:
            out[d.name] = StopRecord(
                at=time.time() if now is None else now,
                reason=(
                    f"reward {seq.mean:+.4f} vs control {control.name!r}, anytime-valid "
                    f"{1 - g.alpha:.0%} interval [{seq.low:+.4f}, {seq.high:+.4f}] entirely "
                    f"below -{g.margin:g} after {d.sums.n} and {control.sums.n} feedbacks"
                ),
            )
    return out


class RunningDifference:
    """For each variant against control, the reward difference with its fixed and
    anytime-valid intervals (over units, like the report) after every `every`
    feedbacks of the experiment, in the order the feedback arrived. Fed
    incrementally: `feed` takes the events that arrived since the last call."""

    def __init__(self, exp: ExperimentConfig, scale: float, every: int = 100) -> None:
        assert exp.control is not None
        self.exp, self.every = exp, every
        self.a = exp.cost_weight / scale
        self.control = exp.control
        self.sums: dict[str, dict[str, float]] = {v.name: {} for v in exp.variants}
        self.totals: dict[str, dict[str, UnitTotals]] = {v.name: {} for v in exp.variants}
        self.seen = 0
        self.points: dict[str, list[dict[str, float | None]]] = {
            v.name: [] for v in exp.variants if v.name != exp.control
        }

    def feed(self, events: Iterable[FeedbackEvent]) -> None:
        exp = self.exp
        for ev in sorted(events, key=lambda e: e.received_at):
            if ev.experiment != exp.name or ev.variant not in self.sums or ev.source == "default":
                continue
            sums = self.sums[ev.variant]
            if ev.unit is None:  # anonymous: a unit of its own
                unit_feedback(sums, (1.0, 0.0, 0.0, 0.0), ev.quality, ev.cost_usd)
            else:
                totals = self.totals[ev.variant]
                before = totals.get(ev.unit)
                totals[ev.unit] = unit_feedback(sums, before, ev.quality, ev.cost_usd)
            self.seen += 1
            if self.seen % self.every:
                continue
            control = UnitSums.of(self.sums[self.control])
            for name, points in self.points.items():
                fixed, seq = difference(
                    UnitSums.of(self.sums[name]), control, "reward", self.a, exp.alpha
                )
                points.append(
                    {
                        "feedback": self.seen,
                        "time": ev.received_at,
                        "difference": finite(fixed.mean),
                        "low": finite(fixed.low),
                        "high": finite(fixed.high),
                        "sequence_low": finite(seq.low),
                        "sequence_high": finite(seq.high),
                    }
                )


def running_difference(
    exp: ExperimentConfig,
    events: Iterable[FeedbackEvent],
    scale: float,
    every: int = 100,
) -> dict[str, list[dict[str, float | None]]]:
    """RunningDifference over `events` at once."""
    run = RunningDifference(exp, scale, every)
    run.feed(events)
    return run.points
