"""One simulation run: every router on the same data, seeds and cost weight.

Online protocol: each router learns (or not) over the whole stream in a seeded order.
Deploy protocol: the learning policies learn on `train` with bandit feedback at each
λ of a sweep, freeze, and route `test`; supervised references fit on `train` with every
label; single models and the oracle are points on the same plane. Off-policy: the
static routers' values estimated from a learning policy's own logged propensities,
next to their true replayed values. Uses the policy classes the service serves.

Every replay of a router × seed (online) or router × λ × seed (deploy) is an
independent task: `jobs` > 1 runs them in worker processes with identical results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import Policy, make_policy
from simulator import metrics
from simulator.data import RoutingData
from simulator.parallel import Progress, run_tasks
from simulator.replay import (
    ReplayResult,
    deploy_rows,
    quality_gap,
    replay_deploy,
    replay_online,
    rewards,
    seeded_order,
)
from simulator.stats import Interval
from simulator.supervised import KNNRouter, MFRouter, RidgeRouter, SupervisedRouter

LEARNING = ("hybrid", "linucb", "thompson", "vw", "vw-epsilon")
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


@dataclass(frozen=True)
class OnlineTask:
    """One online replay: a router, its seed (policy and arrival order) and its λ."""

    spec: RouterSpec
    seed: int
    lam: float
    cost_scale: float
    overrides: dict[str, Any] | None = None


def online_task(
    task: OnlineTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> ReplayResult:
    policy = build(
        task.spec, data, contexts.shape[1], task.seed, task.lam, task.cost_scale, task.overrides
    )
    return replay_online(
        policy,
        contexts,
        data,
        seeded_order(len(data), task.seed),
        lam=task.lam,
        cost_scale=task.cost_scale,
        name=task.spec.name,
        seed=task.seed,
        progress=progress,
    )


def run_online(
    data: RoutingData,
    contexts: np.ndarray,
    specs: Sequence[RouterSpec],
    *,
    seeds: int,
    lam: float,
    cost_scale: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> OnlineRun:
    tasks = [
        OnlineTask(spec, seed, lam, cost_scale, (overrides or {}).get(spec.name))
        for spec in specs
        for seed in range(seeds)
    ]
    results = run_tasks(online_task, tasks, data, contexts, jobs=jobs, progress=progress)
    runs: dict[str, list[ReplayResult]] = {spec.name: [] for spec in specs}
    for task, result in zip(tasks, results, strict=True):
        runs[task.spec.name].append(result)
    return OnlineRun(lam, cost_scale, runs)


@dataclass(frozen=True)
class Pair:
    """A strong/weak pair (RouteLLM's setting): the model with the higher mean test
    quality and the other one, on the test rows where both have an outcome (a router's
    quality at any share of strong calls needs both)."""

    strong: str
    weak: str
    rows: np.ndarray

    @staticmethod
    def of(data: RoutingData) -> Pair | None:
        """The pair of a two-model table with a test split; None otherwise."""
        if len(data.models) != 2:
            return None
        test = np.flatnonzero(data.split == "test")
        rows = test[data.available[test].all(axis=1)]
        if not len(rows):
            return None
        means = data.quality[rows].mean(axis=0)
        strong = int(np.argmax(means))
        return Pair(data.models[strong], data.models[1 - strong], rows)


def strong_share_curve(
    scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Send the prompts with the highest scores to the strong model, the rest to the weak
    one: (fraction sent to strong, mean quality) at every cut, each shape (g + 1,).

    scores, q_strong, q_weak: shape (m,). Prompts with equal scores cannot be told apart,
    so the curve has a vertex only between distinct scores and is linear in between:
    the expected quality when the tie is broken at random (all equal gives the random
    router's line).
    """
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    gain = np.concatenate(([0.0], np.cumsum((q_strong - q_weak)[order])))
    starts = np.flatnonzero(np.diff(scores[order]) != 0) + 1
    cuts = np.concatenate(([0], starts, [n]))
    return cuts / n, float(q_weak.mean()) + gain[cuts] / n


def pair_metrics(
    fraction: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float
) -> dict[str, float]:
    """APGR and CPT(50%), CPT(80%) (fractions of calls to the strong model) of a curve."""
    return {
        "apgr": metrics.apgr(fraction, quality, q_weak, q_strong),
        "cpt50": metrics.cpt(fraction, quality, q_weak, q_strong, 0.5),
        "cpt80": metrics.cpt(fraction, quality, q_weak, q_strong, 0.8),
    }


@dataclass
class PairRun:
    """Strong/weak routing on the pair's test rows: each router's ranking scores (its
    predicted quality of strong minus weak; one array per seed for the bandits, which
    learned at λ = `lam`), with how each was scored."""

    pair: Pair
    lam: float
    q_strong: np.ndarray
    q_weak: np.ndarray
    scores: dict[str, list[np.ndarray]]
    ranked_by: dict[str, str]

    def table(self) -> dict[str, dict[str, Interval]]:
        """Per router: APGR, CPT(50%) and CPT(80%), mean ± 95% over seeds (zero width for
        one fit), led by the random router and the oracle ordering; empty when the two
        models have the same mean quality (no gap to recover)."""
        qw, qs = float(self.q_weak.mean()), float(self.q_strong.mean())
        if qs == qw:
            return {}
        grid = np.linspace(0.0, 1.0, 101)
        rows = {
            "random": [pair_metrics(grid, metrics.random_router_curve(qw, qs, grid), qw, qs)],
            "oracle": [self._metrics(self.q_strong - self.q_weak)],
        }
        for name, per_seed in self.scores.items():
            rows[name] = [self._metrics(s) for s in per_seed]
        return {
            name: metrics.over_seeds({k: [m[k] for m in ms] for k in ms[0]})
            for name, ms in rows.items()
        }

    def _metrics(self, scores: np.ndarray) -> dict[str, float]:
        f, q = strong_share_curve(scores, self.q_strong, self.q_weak)
        return pair_metrics(f, q, float(self.q_weak.mean()), float(self.q_strong.mean()))


@dataclass
class DeployRun:
    """(cost per query, quality) on `test`: per router, one point per λ (mean over seeds
    for the bandits), and one point per single model and for the oracle.

    points: the bandits as deployed (their own sampled choices) and the supervised
    references; greedy: the same bandits with exploration off, named "NAME (greedy)";
    supervised: which routers of `points` are supervised (they always route greedily);
    pair: strong/weak metrics, for a two-model table.
    """

    lams: list[float]
    points: dict[str, list[tuple[float, float]]]
    models: dict[str, tuple[float, float]]
    oracle: tuple[float, float]
    greedy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    supervised: list[str] = field(default_factory=list)
    pair: PairRun | None = None

    def curves(self, greedy: bool = False) -> dict[str, list[tuple[float, float]]]:
        """The points of one evaluation: as deployed, or greedy (with the supervised
        references, which route greedily either way)."""
        if not greedy:
            return self.points
        return {**self.greedy, **{n: self.points[n] for n in self.supervised}}

    def frontiers(self, greedy: bool = False) -> dict[str, metrics.Frontier]:
        return {
            name: metrics.frontier([c for c, _ in pts], [q for _, q in pts])
            for name, pts in self.curves(greedy).items()
        }

    def reference(self) -> tuple[str, float, float]:
        """The best single model by test quality: (name, cost, quality)."""
        name = max(self.models, key=lambda m: self.models[m][1])
        return name, *self.models[name]

    def table(self, greedy: bool = False) -> dict[str, dict[str, float]]:
        """Per router: AIQ over the single models' cost range, the cost to reach 95% and
        100% of the best single model's quality (% of its cost), and the best quality at
        its cost."""
        ref, ref_cost, ref_quality = self.reference()
        costs = [c for c, _ in self.models.values()]
        lo, hi = min(costs), max(costs)
        out = {}
        for name, front in self.frontiers(greedy).items():
            h = metrics.headline(front, ref_cost, ref_quality)
            out[name] = {
                "aiq": metrics.aiq(front, lo, hi),
                "cost_pct_95": h.cost_pct[0.95],
                "cost_pct_100": h.cost_pct[1.0],
                "quality_at_ref_cost": h.quality_at_ref_cost,
            }
        return out


@dataclass(frozen=True)
class DeployTask:
    """One deploy replay: learn on train at λ, freeze, route test (as deployed and
    greedy); with a pair, also score the pair's rows for the strong/weak metrics."""

    spec: RouterSpec
    lam: float
    seed: int
    cost_scale: float
    overrides: dict[str, Any] | None = None
    pair: Pair | None = None


@dataclass(frozen=True)
class DeployOutcome:
    """(cost, quality) means on test as deployed and greedy; the pair scores if asked."""

    deployed: tuple[float, float]
    greedy: tuple[float, float]
    gap: np.ndarray | None = None
    gap_from_quality: bool = True


def deploy_task(
    task: DeployTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> DeployOutcome:
    spec = task.spec
    policy = build(
        spec, data, contexts.shape[1], task.seed, task.lam, task.cost_scale, task.overrides
    )
    common: dict[str, Any] = {
        "lam": task.lam,
        "cost_scale": task.cost_scale,
        "name": spec.name,
        "seed": task.seed,
        "progress": progress,
    }
    _, frozen = replay_deploy(policy, contexts, data, **common)
    # after the as-deployed pass, so that pass draws exactly what it always drew
    _, test = deploy_rows(data)
    greedy = replay_online(policy, contexts, data, test, learn=False, greedy=True, **common)
    gap, from_quality = None, True
    if task.pair is not None:
        p = task.pair
        gap, from_quality = quality_gap(
            policy, contexts, data, p.rows, p.strong, p.weak, lam=task.lam, progress=progress
        )
    return DeployOutcome(_mean_point(frozen), _mean_point(greedy), gap, from_quality)


def _mean_point(run: ReplayResult) -> tuple[float, float]:
    return float(run.cost.mean()), float(run.quality.mean())


def deploy_steps(
    data: RoutingData, learning: int, lams: Sequence[float], seeds: int, pair_lam: float | None
) -> int:
    """Progress steps of `run_deploy`'s replays (rows with no outcome are skipped)."""
    train, test = deploy_rows(data)
    avail = data.available
    n_train, n_test = int(avail[train].any(axis=1).sum()), int(avail[test].any(axis=1).sum())
    per_lam = n_train + 2 * n_test
    total = learning * seeds * per_lam * len(lams)
    pair = Pair.of(data) if pair_lam is not None else None
    if pair is not None:
        extra = 0 if pair_lam in lams else per_lam
        total += learning * seeds * (extra + len(pair.rows))
    return total


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
    progress: Progress | None = None,
    jobs: int = 1,
    pair_lam: float | None = None,
) -> DeployRun:
    """The deploy protocol over the λ sweep. With `pair_lam` and a two-model table, also
    the strong/weak metrics of every router: the bandits learn at `pair_lam` (the online
    λ; a sweep λ already run is reused)."""
    train, test = deploy_rows(data)
    avail = data.available
    pair = Pair.of(data) if pair_lam is not None else None
    run_lams = list(lams)
    if pair is not None and pair_lam is not None and pair_lam not in run_lams:
        run_lams.append(pair_lam)
    tasks = [
        DeployTask(
            spec,
            lam,
            seed,
            cost_scale,
            (overrides or {}).get(spec.name),
            pair if lam == pair_lam else None,
        )
        for spec in learning
        for lam in run_lams
        for seed in range(seeds)
    ]
    outcomes = run_tasks(deploy_task, tasks, data, contexts, jobs=jobs, progress=progress)
    points: dict[str, list[tuple[float, float]]] = {}
    greedy: dict[str, list[tuple[float, float]]] = {}
    for spec in learning:
        mine = [
            [o for t, o in zip(tasks, outcomes, strict=True) if t.spec == spec and t.lam == lam]
            for lam in lams
        ]
        points[spec.name] = [_seed_mean([o.deployed for o in per_lam]) for per_lam in mine]
        greedy[f"{spec.name} (greedy)"] = [
            _seed_mean([o.greedy for o in per_lam]) for per_lam in mine
        ]
    routers = {}
    for name in supervised:
        router = SUPERVISED[name]().fit(contexts[train], data.quality[train], data.cost[train])
        routers[name] = router
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
    pair_run = None
    if pair is not None and pair_lam is not None:
        pair_run = _pair_run(data, contexts, pair, pair_lam, tasks, outcomes, routers)
    return DeployRun(list(lams), points, models, oracle, greedy, list(supervised), pair_run)


def _seed_mean(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return float(np.mean([c for c, _ in points])), float(np.mean([q for _, q in points]))


def _pair_run(
    data: RoutingData,
    contexts: np.ndarray,
    pair: Pair,
    lam: float,
    tasks: Sequence[DeployTask],
    outcomes: Sequence[DeployOutcome],
    routers: dict[str, SupervisedRouter],
) -> PairRun:
    s, w = data.models.index(pair.strong), data.models.index(pair.weak)
    scores: dict[str, list[np.ndarray]] = {}
    ranked_by: dict[str, str] = {}
    for task, outcome in zip(tasks, outcomes, strict=True):
        if task.pair is None or outcome.gap is None:
            continue
        scores.setdefault(task.spec.name, []).append(outcome.gap)
        ranked_by[task.spec.name] = (
            "expected quality"
            if outcome.gap_from_quality
            else f"P(strong) − P(weak) at λ = {lam:g} (no expected quality)"
        )
    for name, router in routers.items():
        q = router.predict_quality(contexts[pair.rows])
        scores[name] = [q[:, s] - q[:, w]]
        ranked_by[name] = "predicted quality"
    return PairRun(
        pair, lam, data.quality[pair.rows, s], data.quality[pair.rows, w], scores, ranked_by
    )


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
