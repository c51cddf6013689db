"""Evaluation metrics for routers: per-query averages, regret, the oracle, the cost-quality
frontier (RouterBench), strong/weak-pair metrics (RouteLLM) and off-policy estimates
from logged bandit data.

Conventions: quality in [0, 1]; cost in USD per query; fractions in [0, 1] (a percentage
is 100 times the fraction); arrays are numpy, NaN marks a missing outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from simulator.stats import Interval, mean_ci

# --- input checks -------------------------------------------------------------------------


def _vector(name: str, values: np.ndarray | Sequence[float], *, min_len: int = 1) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if v.size < min_len:
        raise ValueError(f"{name} must have at least {min_len} element(s), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return v


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")


def _matrix(name: str, values: np.ndarray) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional (n, K), got shape {m.shape}")
    if np.isinf(m).any():
        raise ValueError(f"{name} must not contain inf (use NaN for a missing outcome)")
    return m


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapz is deprecated in numpy 2 and np.trapezoid absent from 1.26; pyproject allows both
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


# --- 1. per-query averages and regret ----------------------------------------------------


@dataclass(frozen=True)
class QualityCost:
    """Mean quality ([0, 1]) and mean cost (USD) per query of a sequence of outcomes."""

    quality: float
    cost: float

    @property
    def cost_per_1k(self) -> float:
        """USD per 1,000 queries, the unit of the data README's reference table."""
        return 1000.0 * self.cost


def per_query_means(quality: np.ndarray, cost: np.ndarray) -> QualityCost:
    """Mean quality and mean cost of routed outcomes, each shape (n,).

    A routed outcome is always observed, so NaN is an error here (a router that picked a
    model with no result is a bug upstream, not a zero).
    """
    q = _vector("quality", quality)
    c = _vector("cost", cost)
    _same_length(quality=q, cost=c)
    return QualityCost(quality=float(q.mean()), cost=float(c.mean()))


def cumulative_regret(reward: np.ndarray, oracle_reward: np.ndarray) -> np.ndarray:
    """Cumulative regret against the per-step oracle, shape (n,).

    curve[t] = sum_{s <= t} (oracle_reward[s] - reward[s]); non-decreasing whenever the
    oracle really is the best reward on every step.
    """
    r = _vector("reward", reward)
    o = _vector("oracle_reward", oracle_reward)
    _same_length(reward=r, oracle_reward=o)
    return np.cumsum(o - r)


def cumulative_regret_vs_best_fixed(
    reward: np.ndarray, model_rewards: np.ndarray
) -> tuple[np.ndarray, int]:
    """Cumulative regret against the best fixed model in hindsight.

    reward: the router's reward per step, shape (n,).
    model_rewards: every model's reward on the same steps, shape (n, K), NaN where a
    model has no result.

    The best fixed model is the one with the highest mean reward over the steps where it
    has a result (ties: lowest index). On a step where it has no result it could not have
    been played, so that step adds 0 regret. The curve may go negative: a contextual
    router can beat every fixed model. Returns (curve shape (n,), best model index).
    """
    r = _vector("reward", reward)
    m = _matrix("model_rewards", model_rewards)
    if m.shape[0] != r.size:
        raise ValueError(f"model_rewards must have {r.size} rows (one per step), got {m.shape}")
    observed = ~np.isnan(m)
    if not observed.any():
        raise ValueError("model_rewards has no observed cell")
    counts = observed.sum(axis=0)
    means = np.where(
        counts > 0, np.where(observed, m, 0.0).sum(axis=0) / np.maximum(counts, 1), -np.inf
    )
    best = int(np.argmax(means))
    step = np.where(observed[:, best], m[:, best] - r, 0.0)
    return np.cumsum(step), best


# --- 2. oracle ------------------------------------------------------------------------------


def oracle_choice(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per prompt, the model with the best quality, ties broken by the lowest cost.

    quality, cost: shape (n, K), NaN where a model has no result (a cell counts only if
    both are present, as in RoutingData.available). Qualities tie only when exactly equal
    (the data is mostly 0/1); remaining ties go to the lowest index.
    Returns shape (n,) int64 model indices, -1 on rows where no model has a result.
    """
    q = _matrix("quality", quality)
    c = _matrix("cost", cost)
    if q.shape != c.shape:
        raise ValueError(f"quality and cost must have the same shape, got {q.shape} and {c.shape}")
    avail = ~(np.isnan(q) | np.isnan(c))
    q_av = np.where(avail, q, -np.inf)
    best_q = q_av.max(axis=1, initial=-np.inf)
    tied = avail & (q_av == best_q[:, None])
    choice = np.argmin(np.where(tied, c, np.inf), axis=1).astype(np.int64)
    choice[~avail.any(axis=1)] = -1
    return choice


# --- 3. cost-quality frontier and AIQ (RouterBench) ----------------------------------------


@dataclass(frozen=True)
class Frontier:
    """Vertices of a non-decreasing convex hull, sorted by cost.

    cost: shape (m,), strictly increasing, USD; quality: shape (m,), strictly increasing.
    Between vertices the frontier is linear: a router can mix its two neighbouring
    configurations in any proportion, so every point on a segment is reachable.
    """

    cost: np.ndarray
    quality: np.ndarray


def frontier(cost: np.ndarray | Sequence[float], quality: np.ndarray | Sequence[float]) -> Frontier:
    """The non-decreasing convex hull of (cost, quality) points (routers, models, a λ sweep).

    RouterBench (Hu et al. 2024, arXiv 2403.12031, and its evaluation/AIQ.py):
    the upper convex hull of the points in the cost-quality plane, keeping only the part
    where quality does not decrease with cost. A point is dropped if a cheaper (or equally
    cheap) point has at least its quality, or if it lies on or under a chord between two
    other points. Duplicate costs keep the best quality; one point is its own frontier.
    """
    c = _vector("cost", cost)
    q = _vector("quality", quality)
    _same_length(cost=c, quality=q)
    # by cost, then best quality first, so a duplicate cost meets its best point first
    order = np.lexsort((-q, c))
    pareto: list[tuple[float, float]] = []
    for i in order:
        if not pareto or q[i] > pareto[-1][1]:
            pareto.append((float(c[i]), float(q[i])))
    hull: list[tuple[float, float]] = []
    for x, y in pareto:
        # monotone chain: drop the last vertex while it is not strictly above the chord
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0:
                hull.pop()
            else:
                break
        hull.append((x, y))
    arr = np.asarray(hull, dtype=np.float64)
    return Frontier(cost=arr[:, 0].copy(), quality=arr[:, 1].copy())


def quality_at_cost(front: Frontier, budget: float) -> float:
    """Best quality reachable with a mean cost of at most `budget` USD; NaN if the budget is
    below the frontier's cheapest point. Beyond the last vertex quality stays flat."""
    if not np.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    if budget < front.cost[0]:
        return float("nan")
    return float(np.interp(budget, front.cost, front.quality))


def cost_to_reach(front: Frontier, target_quality: float) -> float:
    """Lowest mean cost (USD) on the frontier whose quality is at least `target_quality`,
    interpolating linearly between vertices; NaN if no point reaches it."""
    if not np.isfinite(target_quality):
        raise ValueError(f"target_quality must be finite, got {target_quality}")
    if target_quality > front.quality[-1]:
        return float("nan")
    if target_quality <= front.quality[0]:
        return float(front.cost[0])
    return float(np.interp(target_quality, front.quality, front.cost))


def aiq(front: Frontier, c_min: float | None = None, c_max: float | None = None) -> float:
    """Average quality of the frontier over the cost range [c_min, c_max] (RouterBench AIQ).

    AIQ = 1 / (c_max - c_min) * integral_{c_min}^{c_max} R(c) dc, with R the non-decreasing
    convex hull (Hu et al. 2024, RouterBench, arXiv 2403.12031). The range defaults to the
    frontier's own costs; to compare routers pass one shared range (e.g. the min and max
    cost over all of them). Outside its vertices R follows RouterBench's evaluation/AIQ.py
    (withmartian/routerbench): flat after the last vertex (extra budget can always be left
    unspent) and 0 below the first (a router cannot run cheaper than its cheapest
    configuration). That script integrates up to the largest cost over all routers and
    divides by that cost, which is this AIQ with c_min = 0. A zero-width range gives R at
    that cost, the limit of the average.
    """
    lo = float(front.cost[0]) if c_min is None else float(c_min)
    hi = float(front.cost[-1]) if c_max is None else float(c_max)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"c_min and c_max must be finite, got {lo} and {hi}")
    if hi < lo:
        raise ValueError(f"c_max must be >= c_min, got c_min={lo}, c_max={hi}")
    if hi == lo:
        return 0.0 if lo < front.cost[0] else float(np.interp(lo, front.cost, front.quality))
    inner = front.cost[(front.cost > lo) & (front.cost < hi)]
    xs = np.concatenate(([lo], inner, [hi]))
    a, b = xs[:-1], xs[1:]
    # np.interp is flat beyond the last vertex, as wanted; the first vertex is a breakpoint,
    # so a piece left of it lies wholly below the frontier's cheapest cost and counts 0
    ra, rb = np.interp(a, front.cost, front.quality), np.interp(b, front.cost, front.quality)
    area = np.where(a < front.cost[0], 0.0, (b - a) * (ra + rb) / 2.0)
    return float(area.sum() / (hi - lo))


# --- 4. headline numbers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """Where a frontier stands against a reference model (usually the best single one).

    cost_pct: target fraction of the reference quality -> cost needed on the frontier as
    a percentage of the reference cost (NaN if unreachable).
    quality_at_ref_cost: best frontier quality for the reference model's cost (NaN if
    that cost is below the frontier's cheapest point).
    """

    cost_pct: dict[float, float]
    quality_at_ref_cost: float


def headline(
    front: Frontier,
    ref_cost: float,
    ref_quality: float,
    fractions: Sequence[float] = (0.95, 1.0),
) -> Headline:
    """Cost to reach e.g. 95% and 100% of the reference model's quality, as % of its cost
    (interpolated on the frontier), and the best quality at the reference cost."""
    if not (np.isfinite(ref_cost) and ref_cost > 0):
        raise ValueError(f"ref_cost must be a positive number, got {ref_cost}")
    if not np.isfinite(ref_quality):
        raise ValueError(f"ref_quality must be finite, got {ref_quality}")
    pct = {float(f): 100.0 * cost_to_reach(front, f * ref_quality) / ref_cost for f in fractions}
    return Headline(cost_pct=pct, quality_at_ref_cost=quality_at_cost(front, ref_cost))


# --- 5. strong/weak pair metrics (RouteLLM) ------------------------------------------------


def pgr(quality: np.ndarray | float, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance gap recovered: (q_router - q_weak) / (q_strong - q_weak).

    Ong et al. 2024, RouteLLM, arXiv 2406.18665, section 2. 0 is the weak model, 1 the
    strong one; a router can score above 1.
    """
    if not (np.isfinite(q_weak) and np.isfinite(q_strong)):
        raise ValueError(f"q_weak and q_strong must be finite, got {q_weak} and {q_strong}")
    if q_strong == q_weak:
        raise ValueError("q_strong must differ from q_weak (PGR is undefined without a gap)")
    return (np.asarray(quality, dtype=np.float64) - q_weak) / (q_strong - q_weak)


def _pgr_curve(
    strong_fraction: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float
) -> tuple[np.ndarray, np.ndarray]:
    """(fraction, PGR) sorted by fraction, with the endpoints (0, 0) and (1, 1) added
    unless the curve already has a point there: routing nothing (everything) to the strong
    model is the weak (strong) model, by construction."""
    f = _vector("strong_fraction", strong_fraction)
    q = _vector("quality", quality)
    _same_length(strong_fraction=f, quality=q)
    if f.min() < 0 or f.max() > 1:
        raise ValueError("strong_fraction must lie in [0, 1]")
    p = pgr(q, q_weak, q_strong)
    if not np.any(f == 0.0):
        f, p = np.append(f, 0.0), np.append(p, 0.0)
    if not np.any(f == 1.0):
        f, p = np.append(f, 1.0), np.append(p, 1.0)
    order = np.argsort(f, kind="stable")
    return f[order], p[order]


def apgr(strong_fraction: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float) -> float:
    """Average performance gap recovered: the area under PGR against the fraction of calls
    to the strong model over [0, 1], by the trapezoid rule (RouteLLM, arXiv 2406.18665;
    its evaluate.py also integrates with the trapezoid rule).

    strong_fraction, quality: a threshold sweep of one router, each shape (n,). A random
    router scores 0.5.
    """
    f, p = _pgr_curve(strong_fraction, quality, q_weak, q_strong)
    return _trapezoid(p, f)


def cpt(
    strong_fraction: np.ndarray,
    quality: np.ndarray,
    q_weak: float,
    q_strong: float,
    target_pgr: float,
) -> float:
    """Call-performance threshold: the minimum fraction of calls to the strong model at
    which the router's (linearly interpolated) PGR reaches `target_pgr` (RouteLLM,
    arXiv 2406.18665; CPT(50%) takes target_pgr=0.5). NaN if the curve never reaches it.

    RouteLLM's evaluate.py inverts the curve with np.interp, which assumes PGR increases
    with the fraction; taking the first crossing agrees with it then and stays the
    minimum when the curve is not monotone.
    """
    if not np.isfinite(target_pgr):
        raise ValueError(f"target_pgr must be finite, got {target_pgr}")
    f, p = _pgr_curve(strong_fraction, quality, q_weak, q_strong)
    if p[0] >= target_pgr:
        return float(f[0])
    for i in range(1, f.size):
        if p[i] >= target_pgr:
            # p[i - 1] < target <= p[i]: interpolate on this segment
            t = (target_pgr - p[i - 1]) / (p[i] - p[i - 1])
            return float(f[i - 1] + t * (f[i] - f[i - 1]))
    return float("nan")


def random_router_curve(
    q_weak: float, q_strong: float, strong_fraction: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Expected quality of a router that sends each query to the strong model with
    probability f, independent of the query: q_weak + f (q_strong - q_weak), shape (n,).
    Its PGR equals f, so its APGR is 0.5 and its CPT(x) is x."""
    f = _vector("strong_fraction", strong_fraction)
    if f.min() < 0 or f.max() > 1:
        raise ValueError("strong_fraction must lie in [0, 1]")
    return q_weak + f * (q_strong - q_weak)


# --- 6. off-policy estimates from logged bandit data -----------------------------------------


@dataclass(frozen=True)
class OffPolicyEstimate:
    """An estimate of the target policy's mean reward from logged data.

    low, high: a two-sided normal-approximation interval at the requested level.
    ess: effective sample size (sum w)^2 / sum w^2 of the importance weights
    w = target_prob / propensity; n: logged samples.
    warnings: reasons not to trust the number (tiny propensities, small ESS); empty
    when none apply.
    """

    value: float
    low: float
    high: float
    ess: float
    n: int
    warnings: tuple[str, ...]

    @property
    def reliable(self) -> bool:
        return not self.warnings


def _ope_inputs(
    reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _vector("reward", reward, min_len=2)
    p = _vector("propensity", propensity, min_len=2)
    pi = _vector("target_prob", target_prob, min_len=2)
    _same_length(reward=r, propensity=p, target_prob=pi)
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("propensity must lie in (0, 1]: a logged action had to be possible")
    if np.any(pi < 0) or np.any(pi > 1):
        raise ValueError("target_prob must lie in [0, 1]")
    return r, p, pi


def _ess(w: np.ndarray) -> float:
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else 0.0


def _diagnose(p: np.ndarray, ess: float, min_propensity: float, min_ess: float) -> tuple[str, ...]:
    notes = []
    if p.min() < min_propensity:
        notes.append(
            f"minimum propensity {p.min():.3g} < {min_propensity:.3g}: weights up to "
            f"{1 / p.min():.3g}, the estimate may be dominated by a few samples"
        )
    if ess < min_ess:
        notes.append(f"effective sample size {ess:.1f} < {min_ess:.1f}")
    return tuple(notes)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _mean_estimate(
    terms: np.ndarray, w: np.ndarray, p: np.ndarray, level: float, min_prop: float, min_ess: float
) -> OffPolicyEstimate:
    """Mean of per-sample terms with a normal interval: mean ± z · sd(terms, ddof=1) / √n."""
    n = terms.size
    m = float(terms.mean())
    half = _z(level) * float(terms.std(ddof=1)) / np.sqrt(n)
    ess = _ess(w)
    return OffPolicyEstimate(m, m - half, m + half, ess, n, _diagnose(p, ess, min_prop, min_ess))


def ips(
    reward: np.ndarray,
    propensity: np.ndarray,
    target_prob: np.ndarray,
    *,
    level: float = 0.95,
    min_propensity: float = 0.01,
    min_ess: float = 100.0,
) -> OffPolicyEstimate:
    """Inverse propensity scoring: mean(w · r) with w = target_prob / propensity.

    reward: logged reward r_i, shape (n,); propensity: the logging policy's probability
    p_i of the action it took, in (0, 1]; target_prob: the target policy's probability
    π_i of that same action (1 or 0 for a deterministic target). Unbiased when every
    action the target can take had p > 0. Interval: normal approximation on the
    per-sample terms w_i r_i. See Open Bandit Pipeline's obp/ope/estimators.py.
    """
    r, p, pi = _ope_inputs(reward, propensity, target_prob)
    w = pi / p
    return _mean_estimate(w * r, w, p, level, min_propensity, min_ess)


def snips(
    reward: np.ndarray,
    propensity: np.ndarray,
    target_prob: np.ndarray,
    *,
    level: float = 0.95,
    min_propensity: float = 0.01,
    min_ess: float = 100.0,
) -> OffPolicyEstimate:
    """Self-normalised IPS: sum(w · r) / sum(w), w = target_prob / propensity.

    Slightly biased, but bounded by the reward range and usually far less variable than
    IPS. Interval: delta method for the ratio of means, Var ≈ sum w_i² (r_i - V)² /
    (sum w_i)², from the influence function w_i (r_i - V) / mean(w) (no bootstrap, so
    no seed). If the target never takes a logged action (sum w = 0) the value is NaN.
    """
    r, p, pi = _ope_inputs(reward, propensity, target_prob)
    w = pi / p
    ess = _ess(w)
    notes = _diagnose(p, ess, min_propensity, min_ess)
    total = float(w.sum())
    if total == 0:
        nan = float("nan")
        why = "the target policy never chooses a logged action (sum of weights is 0)"
        return OffPolicyEstimate(nan, nan, nan, ess, r.size, (*notes, why))
    v = float(np.sum(w * r)) / total
    half = _z(level) * float(np.sqrt(np.sum(w * w * (r - v) ** 2))) / total
    return OffPolicyEstimate(v, v - half, v + half, ess, r.size, notes)


def doubly_robust(
    reward: np.ndarray,
    propensity: np.ndarray,
    target_prob: np.ndarray,
    predicted_logged: np.ndarray,
    predicted_target: np.ndarray,
    *,
    level: float = 0.95,
    min_propensity: float = 0.01,
    min_ess: float = 100.0,
) -> OffPolicyEstimate:
    """Doubly robust: mean(ĥ_target + w · (r - ĥ_logged)), w = target_prob / propensity.

    predicted_logged: a reward model's prediction ĥ(x_i, a_i) for the logged action;
    predicted_target: its expectation under the target policy, sum_a π(a|x_i) ĥ(x_i, a)
    (for a deterministic target, the prediction for the action it picks); each shape (n,).
    Unbiased if either the propensities or the reward model are right (Dudík et al. 2011).
    Interval: normal approximation on the per-sample terms.
    """
    r, p, pi = _ope_inputs(reward, propensity, target_prob)
    h_log = _vector("predicted_logged", predicted_logged, min_len=2)
    h_tgt = _vector("predicted_target", predicted_target, min_len=2)
    _same_length(reward=r, predicted_logged=h_log, predicted_target=h_tgt)
    w = pi / p
    return _mean_estimate(h_tgt + w * (r - h_log), w, p, level, min_propensity, min_ess)


# --- 7. over seeds ---------------------------------------------------------------------------


def over_seeds(per_seed: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, Interval]:
    """Mean and Student-t 95% interval over seeds for each named metric, via
    simulator.stats.mean_ci (e.g. {"aiq": [one value per seed], ...})."""
    out = {}
    for name, values in per_seed.items():
        v = _vector(f"per_seed[{name!r}]", values)
        out[name] = mean_ci(v)
    return out
