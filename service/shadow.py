"""Shadow mode: a policy that sees every request of a served one, records what it
would have chosen, learns from the served decisions' feedback, and is valued
off-policy from them without ever touching a response.

Its counters: decisions and agreements with the served choice; per feedback the
importance weight w = π_shadow(served model | x) / propensity, and the sums that
give IPS and self-normalised IPS of reward q − a·c for any a, with their intervals,
plus the served policy's own sums on the same events for comparison.
"""

from __future__ import annotations

import math
from typing import Any

from service.abstats import Estimate, Sums, mean_interval, z

# the serving side of the same events uses abstats.Sums' fields: n, sq, sq2, sc, sc2, sqc
WEIGHTED = ("sw", "sw2", "swq", "swc", "sw2q", "sw2c", "sw2q2", "sw2c2", "sw2qc")
MIN_ESS = 100.0
MAX_UNSUPPORTED = 0.01


def increments(w: float, quality: float, cost: float) -> dict[str, float]:
    """What one served feedback adds to a shadow's counters."""
    w2 = w * w
    return {
        **Sums.increments(quality, cost),
        "sw": w,
        "sw2": w2,
        "swq": w * quality,
        "swc": w * cost,
        "sw2q": w2 * quality,
        "sw2c": w2 * cost,
        "sw2q2": w2 * quality * quality,
        "sw2c2": w2 * cost * cost,
        "sw2qc": w2 * quality * cost,
    }


def _ci(mean: float, var_of_mean: float, alpha: float) -> dict[str, float | None]:
    half = z(alpha) * math.sqrt(max(var_of_mean, 0.0))  # NaN stays NaN: no interval
    return Estimate(mean, mean - half, mean + half).as_dict()


def report(counters: dict[str, float], a: float, alpha: float = 0.05) -> dict[str, Any]:
    """IPS and SNIPS of the shadow's reward q − a·c, the served policy's mean reward on
    the same feedback, agreement, and the effective sample size of the weights."""
    g = {k: float(counters.get(k, 0.0)) for k in WEIGHTED}
    n = int(counters.get("n", 0))
    decisions = int(counters.get("decisions", 0))
    out: dict[str, Any] = {
        "decisions": decisions,
        "agreement": counters.get("agree", 0) / decisions if decisions else None,
        "feedback": n,
        "served_reward": mean_interval(Sums.of(counters), "reward", a, alpha).as_dict(),
    }
    ess = g["sw"] ** 2 / g["sw2"] if g["sw2"] > 0 else 0.0
    out["effective_sample_size"] = ess
    if n < 2:
        out["ips"] = out["snips"] = {"mean": None, "low": None, "high": None}
        out["warnings"] = ["fewer than two feedbacks"]
        return out
    # per-event term t = w (q − a c): its mean and second moment from the sums
    s_t = g["swq"] - a * g["swc"]
    s_t2 = g["sw2q2"] - 2 * a * g["sw2qc"] + a * a * g["sw2c2"]
    ips = s_t / n
    var_t = (s_t2 - n * ips * ips) / (n - 1)
    out["ips"] = _ci(ips, var_t / n, alpha)
    if g["sw"] > 0:
        v = s_t / g["sw"]
        # delta method: Σ w² (r − V)² / (Σ w)², with Σ w² r = sw2q − a sw2c
        s_w2r = g["sw2q"] - a * g["sw2c"]
        num = s_t2 - 2 * v * s_w2r + v * v * g["sw2"]
        out["snips"] = _ci(v, num / g["sw"] ** 2, alpha)
    else:
        out["snips"] = {"mean": None, "low": None, "high": None}
    warnings = []
    unsupported = counters.get("unsupported", 0.0) / decisions if decisions else 0.0
    out["unsupported_share"] = unsupported
    if unsupported > MAX_UNSUPPORTED:
        warnings.append(
            f"{unsupported:.1%} of the shadow's choice probability falls on models the "
            "served policy never chooses there: no log can value that part, so IPS is "
            "biased towards 0 and SNIPS values only the supported part"
        )
    if ess < MIN_ESS:
        warnings.append(
            f"effective sample size {ess:.1f} < {MIN_ESS:g}: the shadow rarely chooses "
            "what was served; its estimate rests on few events"
        )
    out["warnings"] = warnings
    return out
