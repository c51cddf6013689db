"""Privacy restrictions applied to logged data, and what compliance costs.

A seeded share of the queries is marked sensitive (each row independently, with
probability `share`, from its own seed stream); on those rows only models tagged local
may be chosen, whatever the router would prefer. The restriction is the table's own
masking: a non-local model's outcome on a sensitive row is hidden, so the replay never
offers it there (as the service narrows the candidates before the policy chooses) and a
learner never hears how it would have answered. A sensitive row where no local model
has an outcome cannot be served; it is left out of both sides of the comparison.

Which models are local is a parameter (`--local-models`). By default: the open-weight
models of the table, told by name (every model outside the closed API families of
`CLOSED_FAMILIES`: GPT, Claude, Gemini, ...), as one could host any of them on premises;
where every model is open-weight (llmrouter), the small ones, those whose mean cost is at
most the median model's, so that the restriction still means something.

The cost of compliance: every router replayed with and without the restriction, with the
same seed (arrival order, policy seed and sensitive rows), and the difference per seed,
mean ± 95% over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from simulator.data import RoutingData
from simulator.parallel import Progress, run_tasks
from simulator.replay import ReplayResult, replay_online, rewards, seeded_order
from simulator.simulate import RouterSpec, build
from simulator.stats import Interval, mean_ci

#: name prefixes (of the part after any "org/") of models served only through a vendor's API
CLOSED_FAMILIES = (
    "gpt-",
    "gpt4",
    "chatgpt",
    "o1-",
    "o3-",
    "o4-",
    "claude",
    "gemini",
    "palm",
    "bard",
    "grok",
    "j2-",
    "jurassic",
)
#: the stream of the sensitive marks, apart from every other use of a seed
_SENSITIVE_STREAM = 0x5E75171


def is_open_weight(model: str) -> bool:
    """Whether the model's weights are published, told by its name (see CLOSED_FAMILIES)."""
    return not model.rsplit("/", 1)[-1].lower().startswith(CLOSED_FAMILIES)


def default_local(data: RoutingData) -> list[str]:
    """The open-weight models; if every model is open-weight, those whose mean cost is
    at most the median model's. No open-weight model at all is an error."""
    open_weight = [m for m in data.models if is_open_weight(m)]
    if not open_weight:
        raise ValueError("no open-weight model in the table: name the local ones")
    if len(open_weight) < len(data.models):
        return open_weight
    avail = data.available
    count = avail.sum(axis=0)
    total = np.where(avail, data.cost, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(len(data.models), np.inf), where=count > 0)
    median = float(np.median(mean[np.isfinite(mean)]))
    return [m for m, c in zip(data.models, mean, strict=True) if c <= median]


def parse_local(text: str, data: RoutingData) -> list[str]:
    """Comma-separated local models of the table; empty: `default_local`."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        return default_local(data)
    unknown = [m for m in names if m not in data.models]
    if unknown:
        raise ValueError(f"unknown local model(s) {unknown}; known: {data.models}")
    return list(dict.fromkeys(names))


def sensitive_rows(n: int, share: float, seed: int) -> np.ndarray:
    """Which of n rows are sensitive, shape (n,) bool: each with probability `share`.
    The first rows of a longer table get the same marks."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    return np.random.default_rng([seed, _SENSITIVE_STREAM]).random(n) < share


def restrict(data: RoutingData, sensitive: np.ndarray, local: Sequence[str]) -> RoutingData:
    """The table with every non-local model's outcome hidden (NaN) on sensitive rows."""
    nonlocal_ = np.array([m not in set(local) for m in data.models])
    hide = np.asarray(sensitive, dtype=bool)[:, None] & nonlocal_[None, :]
    return replace(
        data,
        quality=np.where(hide, np.nan, data.quality),
        cost=np.where(hide, np.nan, data.cost),
    )


@dataclass(frozen=True)
class Plan:
    """One seed's sensitive marks (over the whole table) and the rows both sides of the
    comparison keep (those with an allowed outcome), indices into the table."""

    sensitive: np.ndarray
    kept: np.ndarray

    @staticmethod
    def of(data: RoutingData, share: float, local: Sequence[str], seed: int) -> Plan:
        sensitive = sensitive_rows(len(data), share, seed)
        allowed = restrict(data, sensitive, local).available.any(axis=1)
        return Plan(sensitive, np.flatnonzero(allowed & data.available.any(axis=1)))

    def keeps_all(self, data: RoutingData) -> bool:
        """Whether it keeps every row of the table: the plain online replay (same seed,
        order and λ) is then exactly its unrestricted side."""
        return len(self.kept) == len(data)

    def dropped(self, data: RoutingData) -> int:
        """Routable rows left out: sensitive, and no local model has an outcome there."""
        return int(data.available.any(axis=1).sum()) - len(self.kept)


@dataclass(frozen=True)
class PrivacyOutcome:
    """One replay's means over its rows: quality, cost (USD per query), reward; over its
    sensitive rows: quality, cost (NaN without any); how many rows, sensitive rows, and
    sensitive rows routed to a non-local model (`violations`: 0 under the restriction)."""

    quality: float
    cost: float
    reward: float
    sensitive_quality: float
    sensitive_cost: float
    rows: int
    sensitive: int
    violations: int


def outcome_of(
    quality: np.ndarray,
    cost: np.ndarray,
    reward: np.ndarray,
    chosen: np.ndarray,
    sensitive: np.ndarray,
    local: np.ndarray,
) -> PrivacyOutcome:
    """Summarise per-step outcomes, each shape (n,); chosen: model indices; sensitive:
    per step; local: per model, shape (K,) bool."""
    s = np.asarray(sensitive, dtype=bool)
    n_s = int(s.sum())
    return PrivacyOutcome(
        float(quality.mean()),
        float(cost.mean()),
        float(reward.mean()),
        float(quality[s].mean()) if n_s else float("nan"),
        float(cost[s].mean()) if n_s else float("nan"),
        len(quality),
        n_s,
        int((s & ~local[chosen]).sum()),
    )


def _replay_outcome(run: ReplayResult, plan: Plan, local: np.ndarray) -> PrivacyOutcome:
    return outcome_of(
        run.quality, run.cost, run.reward, run.chosen, plan.sensitive[run.rows], local
    )


@dataclass(frozen=True)
class PrivacyTask:
    """One online replay of a router on the plan's rows, with or without the restriction."""

    spec: RouterSpec
    seed: int
    lam: float
    cost_scale: float
    share: float
    local: tuple[str, ...]
    restricted: bool
    overrides: dict[str, Any] | None = None


def privacy_replay(
    task: PrivacyTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> ReplayResult:
    """The task's replay; its `rows` index the plan's kept rows (see `privacy_task`)."""
    plan = Plan.of(data, task.share, task.local, task.seed)
    table = restrict(data, plan.sensitive, task.local) if task.restricted else data
    d = table.subset(plan.kept)
    policy = build(
        task.spec, d, contexts.shape[1], task.seed, task.lam, task.cost_scale, task.overrides
    )
    return replay_online(
        policy,
        contexts[plan.kept],
        d,
        seeded_order(len(d), task.seed),
        lam=task.lam,
        cost_scale=task.cost_scale,
        name=task.spec.name,
        seed=task.seed,
        progress=progress,
    )


def privacy_task(
    task: PrivacyTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> PrivacyOutcome:
    run = privacy_replay(task, data, contexts, progress)
    plan = Plan.of(data, task.share, task.local, task.seed)
    local = np.array([m in task.local for m in data.models])
    return outcome_of(
        run.quality, run.cost, run.reward, run.chosen, plan.sensitive[plan.kept][run.rows], local
    )


def static_outcomes(
    data: RoutingData,
    plan: Plan,
    local: Sequence[str],
    lam: float,
    cost_scale: float,
    restricted: bool,
) -> dict[str, PrivacyOutcome]:
    """The oracle (the best reward among the allowed models of each row) and the best
    fixed model, which on a row where it is not allowed (or has no outcome) falls back to
    the next model by mean reward over the whole table."""
    table = restrict(data, plan.sensitive, local) if restricted else data
    d = table.subset(plan.kept)
    sens = plan.sensitive[plan.kept]
    local_mask = np.array([m in set(local) for m in data.models])
    r = rewards(d, lam, cost_scale)
    rows = np.arange(len(d))
    oracle = np.argmax(np.where(np.isnan(r), -np.inf, r), axis=1)
    full = rewards(data, lam, cost_scale)
    avail_all = data.available
    mean_r = np.where(
        avail_all.any(axis=0),
        np.where(avail_all, full, 0.0).sum(axis=0) / np.maximum(avail_all.sum(axis=0), 1),
        -np.inf,
    )
    ranking = np.argsort(-mean_r, kind="stable")
    avail = d.available[:, ranking]
    fixed = ranking[np.argmax(avail, axis=1)]
    best = data.models[int(ranking[0])]
    out = {}
    for name, k in (("oracle", oracle), (f"best fixed ({best}), ranked fallback", fixed)):
        out[name] = outcome_of(d.quality[rows, k], d.cost[rows, k], r[rows, k], k, sens, local_mask)
    return out


@dataclass
class PrivacyRun:
    """Per router, per seed: (without, with the restriction)."""

    share: float
    local: list[str]
    models: list[str]
    lam: float
    outcomes: dict[str, list[tuple[PrivacyOutcome, PrivacyOutcome]]]
    dropped: list[int]

    METRICS = ("quality", "usd_per_1k", "reward", "sensitive_quality")

    def table(self) -> dict[str, dict[str, tuple[Interval, Interval, Interval]]]:
        """Per router and metric: without, with, and with − without (paired by seed),
        each mean ± 95% over seeds. usd_per_1k: USD per 1,000 queries."""

        def value(o: PrivacyOutcome, metric: str) -> float:
            if metric == "usd_per_1k":
                return 1000 * o.cost
            return float(getattr(o, metric))

        out = {}
        for name, pairs in self.outcomes.items():
            row = {}
            for metric in self.METRICS:
                off = [value(a, metric) for a, _ in pairs]
                on = [value(b, metric) for _, b in pairs]
                if not all(np.isfinite(off + on)):
                    continue
                diff = [b - a for a, b in zip(off, on, strict=True)]
                row[metric] = (mean_ci(off), mean_ci(on), mean_ci(diff))
            out[name] = row
        return out

    def violations(self) -> int:
        """Sensitive rows routed to a non-local model under the restriction (must be 0)."""
        return sum(b.violations for pairs in self.outcomes.values() for _, b in pairs)

    def sensitive_share(self) -> float:
        """Mean share of the replayed rows that were sensitive."""
        pairs = [p for ps in self.outcomes.values() for p in ps]
        return float(np.mean([b.sensitive / b.rows for _, b in pairs])) if pairs else 0.0


def privacy_steps(
    data: RoutingData,
    share: float,
    local: Sequence[str],
    learning: Sequence[RouterSpec],
    seeds: int,
    reuse: bool = False,
) -> int:
    """Progress steps of `run_privacy`'s replays (`reuse`: it is given a baseline)."""
    total = 0
    for seed in range(seeds):
        plan = Plan.of(data, share, local, seed)
        sides = 1 if reuse and plan.keeps_all(data) else 2
        total += len(learning) * len(plan.kept) * sides
    return total


def run_privacy(
    data: RoutingData,
    contexts: np.ndarray,
    learning: Sequence[RouterSpec],
    *,
    share: float,
    local: Sequence[str],
    seeds: int,
    lam: float,
    cost_scale: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    baseline: dict[str, list[ReplayResult]] | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> PrivacyRun:
    """Every learning policy by the online protocol at λ, and the static references,
    with and without the restriction, at each seed. `baseline`: the plain online run's
    replays of the same policies at the same λ and settings, per seed in seed order,
    reused as the unrestricted side where the restriction drops no row (it must hold
    every policy of `learning` for every seed)."""
    local = list(local)
    local_mask = np.array([m in set(local) for m in data.models])
    plans = [Plan.of(data, share, local, s) for s in range(seeds)]
    tasks: list[PrivacyTask] = []
    reused: dict[tuple[str, int], PrivacyOutcome] = {}
    for spec in learning:
        for seed, plan in enumerate(plans):
            over = (overrides or {}).get(spec.name)
            if baseline is not None and plan.keeps_all(data):
                reused[spec.name, seed] = _replay_outcome(
                    baseline[spec.name][seed], plan, local_mask
                )
            else:
                tasks.append(
                    PrivacyTask(spec, seed, lam, cost_scale, share, tuple(local), False, over)
                )
            tasks.append(PrivacyTask(spec, seed, lam, cost_scale, share, tuple(local), True, over))
    results = run_tasks(privacy_task, tasks, data, contexts, jobs=jobs, progress=progress)
    got = {(t.spec.name, t.seed, t.restricted): r for t, r in zip(tasks, results, strict=True)}
    outcomes: dict[str, list[tuple[PrivacyOutcome, PrivacyOutcome]]] = {}
    for spec in learning:
        outcomes[spec.name] = [
            (reused.get((spec.name, s)) or got[spec.name, s, False], got[spec.name, s, True])
            for s in range(seeds)
        ]
    for plan in plans:
        off = static_outcomes(data, plan, local, lam, cost_scale, restricted=False)
        on = static_outcomes(data, plan, local, lam, cost_scale, restricted=True)
        for name in off:
            outcomes.setdefault(name, []).append((off[name], on[name]))
    return PrivacyRun(
        share, local, list(data.models), lam, outcomes, [p.dropped(data) for p in plans]
    )
