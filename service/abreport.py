"""An experiment's report: per-variant results and each variant against control, from
the counters the store keeps; the guardrail's verdict; and the running difference over
time, from the decision log (for plots)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.abstats import MIN_N_VERDICT, Sums, difference, finite, mean_interval
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
        s = d.sums
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
                "feedback_rate": s.n / decisions if decisions else None,
                **{m: mean_interval(s, _metric(m), a, exp.alpha).as_dict() for m in METRICS},
            }
        )
    control = by_name[exp.control or data[0].name]
    diffs = []
    for d in data:
        if d.name == control.name:
            continue
        row: dict[str, Any] = {"variant": d.name, "control": control.name}
        for m in METRICS:
            fixed, seq = difference(d.sums, control.sums, _metric(m), a, exp.alpha)
            row[m] = {
                "difference": finite(fixed.mean),
                "interval": [finite(fixed.low), finite(fixed.high)],
                "sequence": [finite(seq.low), finite(seq.high)],
                # anytime-valid: safe to act on whenever the report is read
                "significant": bool(
                    min(d.sums.n, control.sums.n) >= MIN_N_VERDICT and (seq.low > 0 or seq.high < 0)
                ),
            }
        diffs.append(row)
    return {
        "name": exp.name,
        "control": control.name,
        "cost_weight": exp.cost_weight,
        "cost_scale_usd": scale,
        "level": 1 - exp.alpha,
        "variants": variants,
        "differences": diffs,
        "stopped": {k: v.model_dump() for k, v in exp.stopped.items()},
        "guardrail": exp.guardrail.model_dump() if exp.guardrail else None,
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
        if min(d.sums.n, control.sums.n) < g.min_feedback:
            continue
        _, seq = difference(d.sums, control.sums, "reward", a, g.alpha)
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


def running_difference(
    exp: ExperimentConfig,
    events: Iterable[FeedbackEvent],
    scale: float,
    every: int = 100,
) -> dict[str, list[dict[str, float | None]]]:
    """For each variant against control, the reward difference with its fixed and
    anytime-valid intervals after every `every` feedbacks of the experiment, in the
    order the feedback arrived."""
    a = exp.cost_weight / scale
    sums = {v.name: Sums() for v in exp.variants}
    out: dict[str, list[dict[str, float | None]]] = {
        v.name: [] for v in exp.variants if v.name != exp.control
    }
    assert exp.control is not None
    seen = 0
    for ev in sorted(events, key=lambda e: e.received_at):
        if ev.experiment != exp.name or ev.variant not in sums or ev.source == "default":
            continue
        sums[ev.variant] = sums[ev.variant].add(ev.quality, ev.cost_usd)
        seen += 1
        if seen % every:
            continue
        for name, points in out.items():
            fixed, seq = difference(sums[name], sums[exp.control], "reward", a, exp.alpha)
            points.append(
                {
                    "feedback": seen,
                    "time": ev.received_at,
                    "difference": finite(fixed.mean),
                    "low": finite(fixed.low),
                    "high": finite(fixed.high),
                    "sequence_low": finite(seq.low),
                    "sequence_high": finite(seq.high),
                }
            )
    return out
