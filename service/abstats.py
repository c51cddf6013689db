"""Statistics of an A/B experiment from its per-variant counters.

Each variant keeps sums over its feedback: n, Σq, Σq², Σc, Σc², Σq·c (quality q,
cost c in USD). Reward is r = q − a·c with a = λ / cost_scale, so its mean and
variance follow from those sums for any λ, and nothing per event has to be kept.

Units (users) are assigned, not requests, and a unit's outcomes are correlated (some
users are harder to please): treating each feedback as independent makes the
intervals far too narrow when units come back. So each variant also keeps sums over
its units (`UnitSums`): with D_u decisions, N_u feedbacks, Q_u = Σq and C_u = Σc of
unit u, the counts of units and the sums of D, N, Q, C and of their pairwise products
over units. The mean per feedback is the ratio estimator ΣY_u / ΣN_u, and its
variance the delta-method (cluster-robust) one, k/(k−1) · Σ_u (Y_u − R·N_u)² / (ΣN_u)²
over the k units. The store updates these sums as one unit's totals change (subtract
the unit's old products, add the new), so only each unit's own four totals are kept.
A request without a unit id is a unit of its own.

Two intervals for a difference of means. The fixed-horizon one (Welch, normal) is
right when the report is read once, at a horizon set in advance. The confidence
sequence is the normal-mixture (mSPRT) boundary of Johari, Pekelis and Walsh, "Always
valid inference" (2017): it holds at every read simultaneously, so a team may check
the report every hour and stop when it excludes 0 without inflating false positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

# The mixture's variance τ = MIXING_SD², in reward units: the effect size the
# sequence is sharpest for. Any τ > 0 keeps the coverage; it only trades power
# between small and large effects. 0.05 reward points is a typical routing effect.
MIXING_SD = 0.05
# below this many outcomes per side the plug-in variance (0 for two equal thumbs)
# is no basis for a verdict: intervals are reported, "significant" is not
MIN_N_VERDICT = 30
# the feedback rate must not differ between variants: when it does, means over the
# responders are biased. Flagged when its anytime-valid interval at this level
# excludes 0 (so the flag may be read at every report)
RESPONSE_ALPHA = 0.01
# a variant's counters of its per-unit sums (see UnitSums and unit_feedback)
UNIT_FIELDS = (
    "u_units",
    "u_resp",
    "u_d",
    "u_n",
    "u_q",
    "u_c",
    "u_dd",
    "u_dn",
    "u_nn",
    "u_nq",
    "u_nc",
    "u_qq",
    "u_qc",
    "u_cc",
)
# a unit's totals: decisions, feedbacks, Σ quality, Σ cost (USD)
UnitTotals = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sums:
    n: int = 0
    sq: float = 0.0
    sq2: float = 0.0
    sc: float = 0.0
    sc2: float = 0.0
    sqc: float = 0.0

    @classmethod
    def of(cls, fields: dict[str, float]) -> Sums:
        return cls(
            n=int(fields.get("n", 0)),
            sq=float(fields.get("sq", 0.0)),
            sq2=float(fields.get("sq2", 0.0)),
            sc=float(fields.get("sc", 0.0)),
            sc2=float(fields.get("sc2", 0.0)),
            sqc=float(fields.get("sqc", 0.0)),
        )

    @staticmethod
    def increments(quality: float, cost: float) -> dict[str, float]:
        """What one feedback adds to each sum."""
        return {
            "n": 1,
            "sq": quality,
            "sq2": quality * quality,
            "sc": cost,
            "sc2": cost * cost,
            "sqc": quality * cost,
        }

    def add(self, quality: float, cost: float) -> Sums:
        inc = self.increments(quality, cost)
        return Sums(
            self.n + 1,
            self.sq + inc["sq"],
            self.sq2 + inc["sq2"],
            self.sc + inc["sc"],
            self.sc2 + inc["sc2"],
            self.sqc + inc["sqc"],
        )

    def mean_var(self, metric: str, a: float = 0.0) -> tuple[float, float]:
        """Mean and sample variance (ddof 1) of "quality", "cost" or "reward"
        (q − a·c); the variance is NaN below two samples."""
        n = self.n
        if n == 0:
            return math.nan, math.nan
        if metric == "quality":
            s, s2 = self.sq, self.sq2
        elif metric == "cost":
            s, s2 = self.sc, self.sc2
        elif metric == "reward":
            s = self.sq - a * self.sc
            s2 = self.sq2 - 2 * a * self.sqc + a * a * self.sc2
        else:
            raise ValueError(f"metric must be quality, cost or reward, not {metric!r}")
        mean = s / n
        if n < 2:
            return mean, math.nan
        # sums of squares lose precision when the mean is large; clamp round-off
        var = max(0.0, (s2 - n * mean * mean) / (n - 1))
        return mean, var

    def estimate(self, metric: str, a: float = 0.0) -> tuple[float, float, int]:
        """Mean, the variance of the mean, and the number of independent samples, as if
        every feedback came from a unit of its own."""
        m, v = self.mean_var(metric, a)
        return m, v / self.n if self.n else math.nan, self.n


class Estimable(Protocol):
    def estimate(self, metric: str, a: float = 0.0) -> tuple[float, float, int]: ...


def ratio(k: int, sy: float, sx: float, syy: float, sxy: float, sxx: float) -> tuple[float, float]:
    """The ratio estimator R = Σy/Σx over k clusters and its delta-method variance
    k/(k−1) · Σ(y − R·x)² / (Σx)², from the sums over clusters (NaN when undefined)."""
    if k <= 0 or sx <= 0:
        return math.nan, math.nan
    r = sy / sx
    if k < 2:
        return r, math.nan
    # Σ(y − R x)² expanded; clamp the round-off of the expansion
    ss = max(0.0, syy - 2 * r * sxy + r * r * sxx)
    return r, ss * k / ((k - 1) * sx * sx)


@dataclass(frozen=True)
class UnitSums:
    """Sums over the units of one variant (see the module docstring).

    units: units with a decision (each anonymous decision one); responders: units with
    at least one feedback; d, n, q, c: Σ_u D_u, N_u, Q_u, C_u; dd … cc: Σ_u of the
    products (dd = Σ D_u², dn = Σ D_u·N_u, …)."""

    units: int = 0
    responders: int = 0
    d: float = 0.0
    n: float = 0.0
    q: float = 0.0
    c: float = 0.0
    dd: float = 0.0
    dn: float = 0.0
    nn: float = 0.0
    nq: float = 0.0
    nc: float = 0.0
    qq: float = 0.0
    qc: float = 0.0
    cc: float = 0.0

    @classmethod
    def of(cls, fields: dict[str, float]) -> UnitSums:
        """From a variant's counters. Counters written before the store kept per-unit
        sums have none: then every decision counts as a unit of its own."""
        if not any(f in fields for f in UNIT_FIELDS):
            s = Sums.of(fields)
            dec = max(int(fields.get("decisions", 0)), s.n)
            # D_u = 1 and N_u ∈ {0, 1}: the products are the plain sums
            return cls(
                dec, s.n, dec, s.n, s.sq, s.sc, dec, s.n, s.n, s.sq, s.sc, s.sq2, s.sqc, s.sc2
            )
        g = fields.get
        return cls(
            int(g("u_units", 0)),
            int(g("u_resp", 0)),
            *(float(g(f, 0.0)) for f in UNIT_FIELDS[2:]),
        )

    def estimate(self, metric: str, a: float = 0.0) -> tuple[float, float, int]:
        """Mean per feedback of "quality", "cost" or "reward" (q − a·c), or the
        "feedback_rate" (feedbacks per decision); the variance of that mean over units;
        and the number of units it rests on."""
        if metric == "feedback_rate":
            m, v = ratio(self.units, self.n, self.d, self.nn, self.dn, self.dd)
            return m, v, self.units
        if metric == "quality":
            sy, syy, sxy = self.q, self.qq, self.nq
        elif metric == "cost":
            sy, syy, sxy = self.c, self.cc, self.nc
        elif metric == "reward":
            sy = self.q - a * self.c
            syy = self.qq - 2 * a * self.qc + a * a * self.cc
            sxy = self.nq - a * self.nc
        else:
            raise ValueError(
                f"metric must be quality, cost, reward or feedback_rate, not {metric!r}"
            )
        m, v = ratio(self.responders, sy, self.n, syy, sxy, self.nn)
        return m, v, self.responders


def unit_decision(agg: dict[str, float], before: UnitTotals | None) -> UnitTotals:
    """Add a decision of a unit whose totals were `before` (None: a unit not seen
    before, or anonymous) to the sums `agg` (UNIT_FIELDS, changed in place); return
    the unit's new totals. The Redis store's scripts do the same in Lua."""
    d, n, q, c = before if before is not None else (0.0, 0.0, 0.0, 0.0)
    if before is None:
        _inc(agg, "u_units", 1)
    _inc(agg, "u_d", 1)
    _inc(agg, "u_dd", 2 * d + 1)
    _inc(agg, "u_dn", n)
    return d + 1, n, q, c


def unit_feedback(
    agg: dict[str, float], before: UnitTotals | None, quality: float, cost: float
) -> UnitTotals:
    """Add a feedback (quality, cost) of a unit whose totals were `before` (None: not
    seen before; an anonymous feedback passes (1, 0, 0, 0), its decision) to `agg`;
    return the unit's new totals. Each product's increment is new − old, written so
    that no large terms cancel."""
    if before is None:
        _inc(agg, "u_units", 1)
    d, n, sq, sc = before if before is not None else (0.0, 0.0, 0.0, 0.0)
    if n == 0:
        _inc(agg, "u_resp", 1)
    q1, c1 = sq + quality, sc + cost
    for name, value in (
        ("u_n", 1),
        ("u_q", quality),
        ("u_c", cost),
        ("u_nn", 2 * n + 1),
        ("u_dn", d),
        ("u_nq", n * quality + q1),
        ("u_nc", n * cost + c1),
        ("u_qq", quality * (2 * sq + quality)),
        ("u_qc", sq * cost + quality * c1),
        ("u_cc", cost * (2 * sc + cost)),
    ):
        _inc(agg, name, value)
    return d, n + 1, q1, c1


def _inc(agg: dict[str, float], name: str, value: float) -> None:
    agg[name] = agg.get(name, 0.0) + value


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        return {"mean": finite(self.mean), "low": finite(self.low), "high": finite(self.high)}


def finite(x: float) -> float | None:
    """x, or None for NaN/inf (JSON has no NaN)."""
    return x if math.isfinite(x) else None


def z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def mean_interval(s: Estimable, metric: str, a: float = 0.0, alpha: float = 0.05) -> Estimate:
    m, v, k = s.estimate(metric, a)
    half = z(alpha) * math.sqrt(v) if k >= 2 and math.isfinite(v) else math.nan
    return Estimate(m, m - half, m + half)


def difference(
    b: Estimable, a_: Estimable, metric: str, a: float = 0.0, alpha: float = 0.05
) -> tuple[Estimate, Estimate]:
    """mean(b) − mean(a_): the fixed-horizon interval and the confidence sequence, both
    at level 1 − alpha (NaN bounds below two units, or two samples, per side)."""
    mb, vb, kb = b.estimate(metric, a)
    ma, va, ka = a_.estimate(metric, a)
    d = mb - ma
    var = vb + va
    if kb < 2 or ka < 2 or not math.isfinite(var):
        nan = math.nan
        return Estimate(d, nan, nan), Estimate(d, nan, nan)
    fixed = z(alpha) * math.sqrt(var)
    seq = sequence_half_width(var, alpha)
    return Estimate(d, d - fixed, d + fixed), Estimate(d, d - seq, d + seq)


def sequence_half_width(var: float, alpha: float, mixing_sd: float = MIXING_SD) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate whose
    variance is `var`: sqrt(V (V + τ) / τ · (−2 ln α − ln(V / (V + τ))))."""
    if var <= 0:
        return 0.0
    tau = mixing_sd * mixing_sd
    return math.sqrt(var * (var + tau) / tau * (-2 * math.log(alpha) - math.log(var / (var + tau))))
