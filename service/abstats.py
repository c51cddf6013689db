"""Statistics of an A/B experiment from its per-variant counters.

Each variant keeps sums over its feedback: n, Σq, Σq², Σc, Σc², Σq·c (quality q,
cost c in USD). Reward is r = q − a·c with a = λ / cost_scale, so its mean and
variance follow from those sums for any λ, and nothing per event has to be kept.

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

# The mixture's variance τ = MIXING_SD², in reward units: the effect size the
# sequence is sharpest for. Any τ > 0 keeps the coverage; it only trades power
# between small and large effects. 0.05 reward points is a typical routing effect.
MIXING_SD = 0.05
# below this many outcomes per side the plug-in variance (0 for two equal thumbs)
# is no basis for a verdict: intervals are reported, "significant" is not
MIN_N_VERDICT = 30


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


def mean_interval(s: Sums, metric: str, a: float = 0.0, alpha: float = 0.05) -> Estimate:
    m, v = s.mean_var(metric, a)
    half = z(alpha) * math.sqrt(v / s.n) if s.n >= 2 else math.nan
    return Estimate(m, m - half, m + half)


def difference(
    b: Sums, a_: Sums, metric: str, a: float = 0.0, alpha: float = 0.05
) -> tuple[Estimate, Estimate]:
    """mean(b) − mean(a_): the fixed-horizon interval and the confidence sequence, both
    at level 1 − alpha (NaN bounds below two samples per side)."""
    mb, vb = b.mean_var(metric, a)
    ma, va = a_.mean_var(metric, a)
    d = mb - ma
    if b.n < 2 or a_.n < 2:
        nan = math.nan
        return Estimate(d, nan, nan), Estimate(d, nan, nan)
    var = vb / b.n + va / a_.n
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
