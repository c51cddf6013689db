"""One simulation run: every router on the same data, seeds and cost weight.

Online protocol: each router learns (or not) over the whole stream in a seeded order.
Deploy protocol: the learning policies learn on `train` with bandit feedback at each
λ of a sweep, freeze, and route `test`; supervised references fit on `train` with every
label; single models and the oracle are points on the same plane. Off-policy: the
static routers' values estimated from a learning policy's own logged propensities,
next to their true replayed values. Uses the policy classes the service serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import Policy, make_policy
from simulator import metrics
from simulator.data import RoutingData
from simulator.replay import ReplayResult, replay_deploy, replay_online, rewards, seeded_order
from simulator.supervised import KNNRouter, MFRouter, RidgeRouter, SupervisedRouter

LEARNING = ("linucb", "thompson", "vw", "vw-epsilon")
SUPERVISED: dict[str, Callable[[], SupervisedRouter]] = {
    "knn": KNNRouter,
    "ridge": RidgeRouter,
    "mf": MFRouter,
}


@dataclass(frozen=True)
class RouterSpec:
    """A router of the comparison: a display name, a registered policy kind and its
    parameters (None for the oracle, which is computed, not run)."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    learns: bool = False


def learning_spec(name: str) -> RouterSpec:
    if name == "vw-epsilon":
        return RouterSpec(name, "vw", {"exploration": "epsilon", "epsilon": 0.05}, True)
    if name not in LEARNING:
        raise ValueError(f"unknown learning policy {name!r}; known: {list(LEARNING)}")
    return RouterSpec(name, name, {}, True)


def static_specs(data: RoutingData, lam: float, cost_scale: float) -> list[RouterSpec]:
    """Every single model, random, the cheapest, the best in hindsight, and a rule router
    (long or code/math-looking prompts to the strongest model, the rest to the cheapest)."""
    r = rewards(data, lam, cost_scale)
    mean_cost = np.nanmean(data.cost, axis=0)
    cheapest = data.models[int(np.nanargmin(mean_cost))]
    strongest = data.models[int(np.nanargmax(np.nanmean(data.quality, axis=0)))]
    best = data.models[int(np.nanargmax(np.nanmean(r, axis=0)))]
    rule = {
        "rules": [
            {"model": strongest, "min_chars": 1500},
            {"model": strongest, "keywords": ["def ", "python", "solve", "equation", "$"]},
        ],
        "default": cheapest,
    }
    specs = [RouterSpec(f"only {m}", "fixed", {"model": m}) for m in data.models]
    return specs + [
        RouterSpec("random", "random"),
        RouterSpec(f"cheapest ({cheapest})", "fixed", {"model": cheapest}),
        RouterSpec(f"best fixed ({best})", "fixed", {"model": best}),
        RouterSpec("rule", "rule", rule),
    ]


def build(
    spec: RouterSpec,
    data: RoutingData,
    dim: int,
    seed: int,
    lam: float,
    cost_scale: float,
    overrides: dict[str, Any] | None = None,
) -> Policy:
    params = {**spec.params, **(overrides or {})} if spec.learns else dict(spec.params)
    return make_policy(
        spec.kind,
        data.models,
        dim,
        seed=seed,
        cost_weight=lam,
        cost_scale=cost_scale,
        **params,
    )


@dataclass
class OnlineRun:
    """Replays per router, one per seed, all over the same seeded orders."""

    lam: float
    cost_scale: float
    runs: dict[str, list[ReplayResult]]

    def warmup(self) -> int:
        """Queries before "after warm-up": 2,000 (the benchmark goal's), or a third of
        a stream too short to leave a third after 2,000."""
        n = min(len(r.reward) for reps in self.runs.values() for r in reps)
        return 2000 if n >= 3000 else n // 3

    def summary(self) -> dict[str, dict[str, metrics.Interval]]:
        """Per router: quality, USD per 1k queries, reward, regret against the oracle
        and against the best fixed model (per query), and the reward after warm-up."""
        warmup = self.warmup()
        out = {}
        for name, reps in self.runs.items():
            per_seed: dict[str, list[float]] = {
                k: []
                for k in (
                    "quality",
                    "usd_per_1k",
                    "reward",
                    "regret_oracle",
                    "regret_best_fixed",
                    "reward_after_warmup",
                )
            }
            for r in reps:
                n = len(r.reward)
                per_seed["quality"].append(float(r.quality.mean()))
                per_seed["usd_per_1k"].append(1000 * float(r.cost.mean()))
                per_seed["reward"].append(float(r.reward.mean()))
                per_seed["regret_oracle"].append(
                    float(metrics.cumulative_regret(r.reward, r.oracle_reward)[-1]) / n
                )
                assert r.rewards_all is not None
                curve, _ = metrics.cumulative_regret_vs_best_fixed(r.reward, r.rewards_all)
                per_seed["regret_best_fixed"].append(float(curve[-1]) / n)
                tail = r.reward[min(warmup, n - 1) :]
                per_seed["reward_after_warmup"].append(float(tail.mean()))
            out[name] = metrics.over_seeds(per_seed)
        return out


def run_online(
    data: RoutingData,
    contexts: np.ndarray,
    specs: Sequence[RouterSpec],
    *,
    seeds: int,
    lam: float,
    cost_scale: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> OnlineRun:
    runs: dict[str, list[ReplayResult]] = {}
    for spec in specs:
        runs[spec.name] = [
            replay_online(
                build(
                    spec,
                    data,
                    contexts.shape[1],
                    seed,
                    lam,
                    cost_scale,
                    (overrides or {}).get(spec.name),
                ),
                contexts,
                data,
                seeded_order(len(data), seed),
                lam=lam,
                cost_scale=cost_scale,
                name=spec.name,
                seed=seed,
                progress=progress,
            )
            for seed in range(seeds)
        ]
    return OnlineRun(lam, cost_scale, runs)


@dataclass
class DeployRun:
    """(cost per query, quality) on `test`: per router, one point per λ (mean over seeds
    for the bandits), and one point per single model and for the oracle."""

    lams: list[float]
    points: dict[str, list[tuple[float, float]]]
    models: dict[str, tuple[float, float]]
    oracle: tuple[float, float]

    def frontiers(self) -> dict[str, metrics.Frontier]:
        return {
            name: metrics.frontier([c for c, _ in pts], [q for _, q in pts])
            for name, pts in self.points.items()
        }

    def reference(self) -> tuple[str, float, float]:
        """The best single model by test quality: (name, cost, quality)."""
        name = max(self.models, key=lambda m: self.models[m][1])
        return name, *self.models[name]

    def table(self) -> dict[str, dict[str, float]]:
        """Per router: AIQ over the single models' cost range, the cost to reach 95% and
        100% of the best single model's quality (% of its cost), and the best quality at
        its cost."""
        ref, ref_cost, ref_quality = self.reference()
        costs = [c for c, _ in self.models.values()]
        lo, hi = min(costs), max(costs)
        out = {}
        for name, front in self.frontiers().items():
            h = metrics.headline(front, ref_cost, ref_quality)
            out[name] = {
                "aiq": metrics.aiq(front, lo, hi),
                "cost_pct_95": h.cost_pct[0.95],
                "cost_pct_100": h.cost_pct[1.0],
                "quality_at_ref_cost": h.quality_at_ref_cost,
            }
        return out


def run_deploy(
    data: RoutingData,
    contexts: np.ndarray,
    learning: Sequence[RouterSpec],
    supervised: Sequence[str],
    *,
    lams: Sequence[float],
    seeds: int,
    cost_scale: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> DeployRun:
    test = np.flatnonzero(data.split == "test")
    train = np.flatnonzero(data.split == "train")
    avail = data.available
    points: dict[str, list[tuple[float, float]]] = {}
    for spec in learning:
        pts = []
        for lam in lams:
            cq = []
            for seed in range(seeds):
                policy = build(
                    spec,
                    data,
                    contexts.shape[1],
                    seed,
                    lam,
                    cost_scale,
                    (overrides or {}).get(spec.name),
                )
                _, frozen = replay_deploy(
                    policy,
                    contexts,
                    data,
                    lam=lam,
                    cost_scale=cost_scale,
                    seed=seed,
                    name=spec.name,
                    progress=progress,
                )
                cq.append((float(frozen.cost.mean()), float(frozen.quality.mean())))
            pts.append((float(np.mean([c for c, _ in cq])), float(np.mean([q for _, q in cq]))))
        points[spec.name] = pts
    for name in supervised:
        router = SUPERVISED[name]().fit(contexts[train], data.quality[train], data.cost[train])
        pts = []
        for lam in lams:
            k = router.route(contexts[test], lam, cost_scale, avail[test])
            pts.append((float(data.cost[test, k].mean()), float(data.quality[test, k].mean())))
        points[name] = pts
    models = {}
    for j, m in enumerate(data.models):
        rows = test[avail[test, j]]
        models[m] = (float(data.cost[rows, j].mean()), float(data.quality[rows, j].mean()))
    o = metrics.oracle_choice(data.quality[test], data.cost[test])
    ok = o >= 0
    oracle = (
        float(data.cost[test[ok], o[ok]].mean()),
        float(data.quality[test[ok], o[ok]].mean()),
    )
    return DeployRun(list(lams), points, models, oracle)


@dataclass(frozen=True)
class OpeRow:
    router: str
    true_value: float
    ips: metrics.OffPolicyEstimate
    snips: metrics.OffPolicyEstimate
    dr: metrics.OffPolicyEstimate


def off_policy(
    log: ReplayResult,
    data: RoutingData,
    contexts: np.ndarray,
    specs: Sequence[RouterSpec],
    truth: dict[str, float],
) -> list[OpeRow]:
    """Estimate each static router's value from `log` (a learning policy's replay, with
    its propensities) by IPS, SNIPS and DR; DR's reward model is each model's mean
    logged reward (a deliberately simple model: DR stays unbiased through the IPS term).
    `truth`: each router's replayed mean reward, for comparison."""
    k_all = len(data.models)
    means = np.array(
        [
            log.reward[log.chosen == k].mean() if (log.chosen == k).any() else 0.0
            for k in range(k_all)
        ]
    )
    assert log.rewards_all is not None
    offered = ~np.isnan(log.rewards_all)
    rows = []
    for spec in specs:
        policy = make_policy(spec.kind, data.models, contexts.shape[1], seed=0, **spec.params)
        pi = np.empty(len(log.rows))
        h_target = np.empty(len(log.rows))
        for t, i in enumerate(log.rows):
            cands = [data.models[k] for k in np.flatnonzero(offered[t])]
            d = policy.choose(contexts[i], cands, 0.0, text=data.prompts[i])
            pi[t] = d.probabilities.get(data.models[log.chosen[t]], 0.0)
            h_target[t] = sum(p * means[data.models.index(m)] for m, p in d.probabilities.items())
        h_logged = means[log.chosen]
        rows.append(
            OpeRow(
                spec.name,
                truth[spec.name],
                metrics.ips(log.reward, log.propensity, pi),
                metrics.snips(log.reward, log.propensity, pi),
                metrics.doubly_robust(log.reward, log.propensity, pi, h_logged, h_target),
            )
        )
    return rows
