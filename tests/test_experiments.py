"""Experiments as pure logic: config validation, sticky assignment, the statistics of
the report (against numpy on the same data), the confidence sequence's validity under
repeated looks, the guardrail, and the running difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from service.abreport import VariantData, build_report, guardrail_stops, running_difference
from service.abstats import Sums, difference, mean_interval, sequence_half_width
from service.experiments import ExperimentConfig, assign
from service.store.base import FeedbackEvent


def exp(weights: dict[str, float], **kw: object) -> ExperimentConfig:
    return ExperimentConfig(
        name="e1",
        variants=[{"name": n, "policy": f"p{n}", "weight": w} for n, w in weights.items()],
        **kw,
    )


# ---- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"name": "A", "policy": "p", "weight": 0}], "sum to 0"),
        (
            [{"name": "A", "policy": "p", "weight": 1}, {"name": "A", "policy": "q", "weight": 1}],
            "duplicate variant names ['A']",
        ),
        ([{"name": "A", "policy": "p", "weight": -1}], "greater than or equal to 0"),
        ([{"name": "A b", "policy": "p", "weight": 1}], "should match pattern"),
        ([], "at least 1 item"),
    ],
)
def test_bad_configs_are_rejected_with_the_reason(variants: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ExperimentConfig(name="e", variants=variants)


def test_control_and_policies_are_checked() -> None:
    with pytest.raises(ValidationError, match="control: 'C' is not a variant"):
        exp({"A": 1, "B": 1}, control="C")
    e = exp({"A": 1, "B": 1})
    assert e.control == "A"
    with pytest.raises(ValueError, match="variant 'B' uses unknown policy 'pB'"):
        e.check_policies(["pA"])
    e.check_policies(["pA", "pB"])


# ---- assignment ----------------------------------------------------------------------


def test_assignment_is_deterministic_and_proportional() -> None:
    e = exp({"A": 1, "B": 2, "C": 1})
    units = [f"user-{i}" for i in range(20_000)]
    first = [assign(e, u) for u in units]
    assert first == [assign(e, u) for u in units]
    share = {v: first.count(v) / len(units) for v in "ABC"}
    # binomial sd at n=20k is ~0.0035: 4 sd
    assert share["A"] == pytest.approx(0.25, abs=0.015)
    assert share["B"] == pytest.approx(0.5, abs=0.015)
    # a new salt reshuffles: about as many agree as chance would make
    other = [assign(exp({"A": 1, "B": 2, "C": 1}, salt="s2"), u) for u in units]
    agree = np.mean([a == b for a, b in zip(first, other, strict=True)])
    assert agree == pytest.approx(0.25**2 * 2 + 0.5**2, abs=0.02)


def test_a_weight_change_moves_only_the_share_it_must() -> None:
    units = [f"u{i}" for i in range(20_000)]
    before = [assign(exp({"A": 0.5, "B": 0.5}), u) for u in units]
    after = [assign(exp({"A": 0.3, "B": 0.7}), u) for u in units]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert {m for m in moved} <= {("A", "B")}  # nobody leaves the variant that grew
    assert len(moved) / len(units) == pytest.approx(0.2, abs=0.015)
    # a third variant joining at 10% takes its 10% from both, moving nobody else
    three = [assign(exp({"A": 0.5, "B": 0.5, "C": 1 / 9}), u) for u in units]
    moved3 = [(a, b) for a, b in zip(before, three, strict=True) if a != b]
    assert {b for _, b in moved3} == {"C"}
    assert len(moved3) / len(units) == pytest.approx(0.1, abs=0.01)


def test_a_stopped_variant_gets_no_units() -> None:
    e = exp({"A": 1, "B": 1}, stopped={"B": {"at": 0.0, "reason": "guardrail"}})
    assert {assign(e, f"u{i}") for i in range(2000)} == {"A"}


# ---- statistics ----------------------------------------------------------------------


def sums_of(q: np.ndarray, c: np.ndarray) -> Sums:
    s = Sums()
    for qi, ci in zip(q, c, strict=True):
        s = s.add(float(qi), float(ci))
    return s


def test_sums_give_numpy_means_variances_and_welch_intervals() -> None:
    rng = np.random.default_rng(0)
    q1, c1 = rng.random(300), rng.random(300) * 0.01
    q2, c2 = rng.random(200) * 0.8, rng.random(200) * 0.02
    a = 0.2 / 0.01
    s1, s2 = sums_of(q1, c1), sums_of(q2, c2)
    r1, r2 = q1 - a * c1, q2 - a * c2
    for s, r in ((s1, r1), (s2, r2)):
        m, v = s.mean_var("reward", a)
        assert m == pytest.approx(r.mean()) and v == pytest.approx(r.var(ddof=1))
    m, v = s1.mean_var("cost")
    assert m == pytest.approx(c1.mean()) and v == pytest.approx(c1.var(ddof=1))
    est = mean_interval(s1, "quality")
    half = 1.959964 * q1.std(ddof=1) / math.sqrt(300)
    assert (est.low, est.high) == pytest.approx((q1.mean() - half, q1.mean() + half))
    fixed, seq = difference(s2, s1, "reward", a)
    se = math.sqrt(r2.var(ddof=1) / 200 + r1.var(ddof=1) / 300)
    assert fixed.mean == pytest.approx(r2.mean() - r1.mean())
    assert fixed.high - fixed.mean == pytest.approx(1.959964 * se, rel=1e-5)
    # the sequence pays for validity at every look with a wider band
    assert seq.high - seq.mean == pytest.approx(sequence_half_width(se * se, 0.05))
    assert seq.high - seq.mean > fixed.high - fixed.mean
    with pytest.raises(ValueError, match="metric"):
        s1.mean_var("latency")


def test_too_few_samples_give_no_interval() -> None:
    fixed, seq = difference(Sums().add(1, 0), Sums().add(0, 0).add(1, 0), "quality")
    assert math.isnan(fixed.low) and math.isnan(seq.high)


def test_confidence_sequence_keeps_its_level_under_repeated_looks() -> None:
    """A/A with a look after every 100 outcomes up to 3,000: the fixed interval excludes
    0 at some look far more often than 5%; the sequence does so at most about 5%."""
    rng = np.random.default_rng(1)
    runs, looks = 400, range(100, 3001, 100)
    fixed_hits = seq_hits = 0
    for _ in range(runs):
        a = (rng.random(3000) < 0.6).astype(float)
        b = (rng.random(3000) < 0.6).astype(float)
        f_any = s_any = False
        for n in looks:
            d = b[:n].mean() - a[:n].mean()
            var = b[:n].var(ddof=1) / n + a[:n].var(ddof=1) / n
            f_any |= abs(d) > 1.959964 * math.sqrt(var)
            s_any |= abs(d) > sequence_half_width(var, 0.05)
        fixed_hits += f_any
        seq_hits += s_any
    assert fixed_hits / runs > 0.15
    assert seq_hits / runs <= 0.06


# ---- report, guardrail, running difference ------------------------------------------------


def variant(name: str, q: list[float], c: list[float], decisions: int) -> VariantData:
    s = sums_of(np.array(q), np.array(c))
    counters = {
        "decisions": decisions,
        "anon": 1,
        "n": s.n,
        "sq": s.sq,
        "sq2": s.sq2,
        "sc": s.sc,
        "sc2": s.sc2,
        "sqc": s.sqc,
    }
    return VariantData(name, f"p{name}", counters, units=decisions - 1)


def test_report_by_hand() -> None:
    e = exp({"A": 1, "B": 3}, cost_weight=0.5, cost_scale=0.01)
    data = [
        variant("A", [1, 0, 1, 0], [0.01, 0.01, 0.01, 0.01], 5),
        variant("B", [1, 1, 1, 0], [0.02, 0.0, 0.02, 0.0], 4),
    ]
    rep = build_report(e, data, 0.01)
    a, b = rep["variants"]
    assert (a["decisions"], a["feedback"], a["feedback_rate"], a["units"]) == (5, 4, 0.8, 4)
    assert a["anonymous_decisions"] == 1 and b["share"] == 0.75
    # rewards: A = q - 0.5 -> mean 0.0; B = 0.0, 1.0, 0.0, 0.0 -> 0.25
    assert a["reward"]["mean"] == pytest.approx(0.0)
    assert b["reward"]["mean"] == pytest.approx(0.25)
    assert b["quality"]["mean"] == pytest.approx(0.75)
    assert b["cost_usd"]["mean"] == pytest.approx(0.01)
    (diff,) = rep["differences"]
    assert diff["variant"] == "B" and diff["control"] == "A"
    assert diff["reward"]["difference"] == pytest.approx(0.25)
    lo, hi = diff["reward"]["interval"]
    assert lo < 0.25 < hi and not diff["reward"]["significant"]


def test_guardrail_stops_a_clearly_worse_variant_only() -> None:
    rng = np.random.default_rng(2)
    e = exp({"A": 1, "B": 1, "C": 1}, guardrail={"margin": 0.02, "min_feedback": 200})
    good = (rng.random(2000) < 0.7).astype(float)
    same = (rng.random(2000) < 0.7).astype(float)
    bad = (rng.random(2000) < 0.4).astype(float)
    zeros = [0.0] * 2000
    data = [
        variant("A", list(good), zeros, 2000),
        variant("B", list(same), zeros, 2000),
        variant("C", list(bad), zeros, 2000),
    ]
    stops = guardrail_stops(e, data, 1.0, now=123.0)
    assert set(stops) == {"C"} and stops["C"].at == 123.0
    assert "below -0.02" in stops["C"].reason
    few = [variant(d.name, [1.0] * 10, [0.0] * 10, 10) for d in data]
    assert guardrail_stops(e, few, 1.0) == {}


def test_running_difference_by_hand() -> None:
    e = exp({"A": 1, "B": 1})

    def ev(t: float, v: str, q: float) -> FeedbackEvent:
        return FeedbackEvent(
            event_id=f"{t}",
            policy=f"p{v}",
            model="m",
            propensity=1.0,
            cost_weight=0.0,
            context=np.zeros(2),
            quality=q,
            cost_usd=0.0,
            source="user",
            received_at=t,
            variant=v,
            experiment="e1",
        )

    events = [ev(4, "B", 1), ev(1, "A", 0), ev(2, "B", 1), ev(3, "A", 1)]
    events.append(ev(5, "A", 1).__class__(**{**ev(5, "A", 1).__dict__, "experiment": "other"}))
    series = running_difference(e, events, 1.0, every=2)["B"]
    # after 2 (A:0, B:1): 1.0; after 4 (A: 0,1; B: 1,1): 0.5
    assert [p["feedback"] for p in series] == [2, 4]
    assert series[0]["difference"] == pytest.approx(1.0)
    assert series[1]["difference"] == pytest.approx(0.5)
    assert series[0]["low"] is None  # one sample per side: no interval yet


def test_no_verdict_on_a_handful_of_outcomes() -> None:
    """Two thumbs-up against two thumbs-down have zero plug-in variance: the report
    shows the difference but calls nothing significant below 30 per side."""
    e = exp({"A": 1, "B": 1})
    rep = build_report(e, [variant("A", [1, 1], [0, 0], 2), variant("B", [0, 0], [0, 0], 2)], 1.0)
    assert rep["differences"][0]["quality"]["difference"] == -1.0
    assert not rep["differences"][0]["quality"]["significant"]
    many = build_report(
        e, [variant("A", [1.0] * 40, [0] * 40, 40), variant("B", [0.0] * 40, [0] * 40, 40)], 1.0
    )
    assert many["differences"][0]["quality"]["significant"]
    with pytest.raises(ValidationError, match="min_feedback"):
        exp({"A": 1}, guardrail={"min_feedback": 5})
    with pytest.raises(ValidationError, match="stopped"):
        exp({"A": 1, "B": 1}, stopped={"B": {"at": math.inf, "reason": "x"}})


def test_shadow_report_by_hand_and_its_support_warning() -> None:
    from service.shadow import increments, report

    counters: dict[str, float] = {"decisions": 4, "agree": 2}
    # weights 2, 0, 2, 0 on qualities 1, 1, 0, 1 (cost 0): IPS = (2 + 0 + 0 + 0) / 4
    for w, q in ((2.0, 1.0), (0.0, 1.0), (2.0, 0.0), (0.0, 1.0)):
        for k, v in increments(w, q, 0.0).items():
            counters[k] = counters.get(k, 0.0) + v
    rep = report(counters, a=0.0)
    assert rep["ips"]["mean"] == pytest.approx(0.5)
    assert rep["snips"]["mean"] == pytest.approx(0.5)  # (2·1 + 2·0) / (2 + 2)
    assert rep["served_reward"]["mean"] == pytest.approx(0.75)
    assert rep["effective_sample_size"] == pytest.approx(2.0)
    assert rep["agreement"] == 0.5
    assert any("effective sample size" in w for w in rep["warnings"])
    counters["unsupported"] = 2.0  # half of its mass where the served policy never goes
    assert any("biased" in w for w in report(counters, a=0.0)["warnings"])


def test_records_of_a_newer_version_still_decode() -> None:
    import json

    from service.store.base import DecisionRecord

    rec = DecisionRecord("e", "p", "m", 0.5, 1, np.zeros(3), ["m"], 0.2, 1.0, 2.0)
    enc = rec.encode()
    meta = json.loads(enc["meta"])
    meta["field_from_the_future"] = 1
    back = DecisionRecord.decode({"meta": json.dumps(meta).encode(), "x": enc["x"]})
    assert back.model == "m" and back.propensity == 0.5
