"""Budgets in the simulator: the service's pacer (service/budgets/pacer.py) steering the
λ a policy routes with toward a spend target, replayed on logged outcomes.

The loop is the service's: a decision routes with the policy's own `cost_weight`; each
outcome the learner applies is learned with the λ its decision used, then observed by
the pacer, and the policy's `cost_weight` becomes the pacer's λ. Feedback reaches the
learner through the same channel as every other replay (delay and batch included), so
a batch models the snapshot a worker serves until the learner publishes the next one.

Scenarios: a spend target at a fraction of the best single model's cost per query; the
same with a mid-stream price cut of one model (the data's cost is the cut price from
then on), a mid-stream quality change, or a model joining mid-stream. The comparison is
the hybrid at fixed λ over a grid: its (spend, quality) frontier after warm-up, read at
the paced run's realised spend, is the fixed λ one would have chosen in hindsight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from policies import Policy
from service.budgets.pacer import Pacer, PacerTarget, Scale
from simulator import metrics
from simulator.data import RoutingData
from simulator.feedback import FeedbackChannel, FeedbackSpec, Outcome
from simulator.parallel import Progress, run_tasks
from simulator.replay import seeded_order
from simulator.scenarios import Scenario, Stream
from simulator.simulate import RouterSpec, build
from simulator.stats import Interval, mean_ci

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
DEFAULT_LAMS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 3.0)
#: the service's default λ (service/settings.py): where a pacer starts unless told
START_LAM = 0.2
TOLERANCE = 0.02  # the "within 2% of target"
HYBRID = RouterSpec("hybrid", "hybrid", {}, True)


@dataclass(frozen=True)
class PriceCut:
    """From fraction `at` of the stream on, `model` costs `factor` times its logged cost."""

    model: str
    factor: float = 0.5
    at: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.factor:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if not 0 <= self.at <= 1:
            raise ValueError(f"at must be a fraction in [0, 1], got {self.at}")

    def apply(self, stream: Stream, models: Sequence[str]) -> Stream:
        if self.model not in models:
            raise ValueError(f"model {self.model!r} is not in the data: {list(models)}")
        t0 = int(round(self.at * len(stream)))
        cost = stream.cost.copy()
        cost[t0:, list(models).index(self.model)] *= self.factor
        return replace(stream, cost=cost, switch=t0)


@dataclass(frozen=True)
class Change:
    """What changes mid-stream: a scenario (drift, new model, ...) and/or a price cut."""

    name: str = "none"
    scenario: Scenario | None = None
    cut: PriceCut | None = None

    def stream(self, data: RoutingData, order: np.ndarray) -> Stream:
        s = (self.scenario or Scenario()).stream(data, order)
        return self.cut.apply(s, data.models) if self.cut is not None else s


@dataclass(frozen=True)
class PacedResult:
    """One replay, each array shape (n,) in arrival order: the chosen model (index into
    `models`), its true quality and cost (USD) and the λ the decision routed with.
    target: the per-call target in USD (None: fixed λ); switch: the change's step."""

    seed: int
    models: list[str]
    chosen: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    lam: np.ndarray
    target: float | None = None
    fixed_lam: float | None = None
    switch: int | None = None

    def share(self, model: str) -> np.ndarray:
        """1 where the step went to `model`, else 0, shape (n,)."""
        return (self.chosen == self.models.index(model)).astype(np.float64)


def replay_paced(
    policy: Policy,
    contexts: np.ndarray,
    data: RoutingData,
    stream: Stream,
    *,
    pacer: Pacer | None,
    lam: float = START_LAM,
    feedback: FeedbackSpec | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> PacedResult:
    """Replay `stream` through `policy`, its λ moved by `pacer` (None: fixed at `lam`).

    Mirrors `replay_online` (candidates are the offered models, only the chosen outcome
    is learned, a joining model is added at the switch) and the service's learner: the
    pacer observes every outcome the learner applies, in the order it applies them.
    """
    channel = FeedbackChannel(feedback or FeedbackSpec(), seed=seed)
    models = data.models
    index = {m: k for k, m in enumerate(models)}
    if stream.joins is not None and stream.joins in policy.models:
        policy.remove_model(stream.joins)
    policy.cost_weight = pacer.lam if pacer is not None else lam
    n = len(stream)
    chosen = np.empty(n, dtype=np.int64)
    used = np.empty(n)

    def apply(outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.model not in policy.models:
                continue
            policy.learn(
                contexts[o.row],
                o.model,
                o.quality,
                o.cost,
                propensity=o.propensity,
                cost_weight=float(used[o.step]),
            )
            if pacer is not None:
                # one query a second: `at` only matters to rate targets
                policy.cost_weight = pacer.observe(o.cost, o.model, float(o.step))

    for t in range(n):
        i = int(stream.rows[t])
        apply(channel.due(t))
        if t == stream.switch and stream.joins is not None:
            policy.add_model(stream.joins)
        cands = [models[k] for k in np.flatnonzero(stream.offered[t])]
        used[t] = policy.cost_weight
        d = policy.choose(contexts[i], cands, text=data.prompts[i])
        k = index[d.model]
        chosen[t] = k
        channel.send(
            Outcome(
                t, i, d.model, float(stream.quality[t, k]), float(stream.cost[t, k]), d.propensity
            )
        )
        if progress is not None:
            progress(1)
    apply(channel.flush())
    steps = np.arange(n)
    target = pacer.per_call_target() if pacer is not None else None
    return PacedResult(
        seed=seed,
        models=list(models),
        chosen=chosen,
        quality=stream.quality[steps, chosen],
        cost=stream.cost[steps, chosen],
        lam=used,
        target=target,
        fixed_lam=None if pacer is not None else lam,
        switch=stream.switch,
    )


@dataclass(frozen=True)
class BudgetTask:
    """One replay: the hybrid at seed `seed` (policy and arrival order), paced to
    `target_usd_per_1k` with `step`, or fixed at `lam` when the target is None."""

    seed: int
    lam: float
    cost_scale: float
    target_usd_per_1k: float | None = None
    step: float = 0.02
    change: Change = field(default_factory=Change)
    feedback: FeedbackSpec | None = None
    overrides: dict[str, float] | None = None
    scale: Scale = "linear"


def budget_task(
    task: BudgetTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> PacedResult:
    policy = build(
        HYBRID, data, contexts.shape[1], task.seed, task.lam, task.cost_scale, task.overrides
    )
    pacer = None
    if task.target_usd_per_1k is not None:
        pacer = Pacer(
            PacerTarget("usd_per_1k", task.target_usd_per_1k),
            lam=task.lam,
            step=task.step,
            scale=task.scale,
        )
    stream = task.change.stream(data, seeded_order(len(data), task.seed))
    return replay_paced(
        policy,
        contexts,
        data,
        stream,
        pacer=pacer,
        lam=task.lam,
        feedback=task.feedback,
        seed=task.seed,
        progress=progress,
    )


def reference(data: RoutingData) -> tuple[str, float]:
    """The best single model (highest mean quality) and its mean cost per query (USD)."""
    k = int(np.nanargmax(np.nanmean(data.quality, axis=0)))
    return data.models[k], float(np.nanmean(data.cost[:, k]))


def warmup_of(n: int) -> int:
    """Queries before "after warm-up": the simulator's rule (OnlineRun.warmup): 2,000,
    or a third of a stream too short to leave a third after 2,000."""
    return 2000 if n >= 3000 else n // 3


def rolling(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps (shorter at the start), shape (n,)."""
    c = np.concatenate(([0.0], np.cumsum(x)))
    n = len(x)
    lo = np.maximum(np.arange(1, n + 1) - window, 0)
    return (c[1:] - c[lo]) / (np.arange(1, n + 1) - lo)


@dataclass(frozen=True)
class Compliance:
    """A paced run at one target, over seeds, after warm-up: realised spend (USD / 1k),
    its relative error to the target, quality; the fixed-λ frontier's quality at each
    seed's realised spend, and the paired difference paced − frontier (per seed)."""

    fraction: float
    target: float
    spend: Interval
    error: Interval
    quality: Interval
    frontier_quality: Interval
    gap: Interval
    # the fixed λ = 0 runs' spend (mean over seeds): a target above it is slack
    unpaced_spend: float
    lam: Interval  # the λ the paced runs ended with

    @property
    def slack(self) -> bool:
        """The target is above what routing for quality alone spends: λ sits at 0."""
        return self.target > self.unpaced_spend * (1 + TOLERANCE)

    @property
    def spend_met(self) -> bool:
        return abs(self.error.mean) <= TOLERANCE or (self.slack and self.error.mean < 0)

    @property
    def quality_met(self) -> bool:
        return self.gap.mean >= -0.01


def after(x: np.ndarray, start: int) -> float:
    return float(x[start:].mean())


@dataclass
class BudgetRun:
    """Every replay of a budgets run on one table; see `run_budgets`."""

    name: str
    best: str
    best_cost: float  # USD per query
    step: float
    seeds: int
    paced: dict[float, list[PacedResult]]  # target fraction -> one per seed
    fixed: dict[float, list[PacedResult]]  # λ -> one per seed
    changes: dict[str, list[PacedResult]]  # scenario -> one per seed, at `change_fraction`
    change_fraction: float
    change_model: dict[str, str]
    warmup: int
    scale: Scale = "linear"

    @property
    def label(self) -> str:
        """The pacer's step as the CLI takes it: "0.02", or "log:0.05" on log λ."""
        return f"{self.step:g}" if self.scale == "linear" else f"log:{self.step:g}"

    def target(self, fraction: float) -> float:
        """USD per 1,000 queries."""
        return 1000.0 * fraction * self.best_cost

    def frontier(self, seed: int | None) -> metrics.Frontier:
        """(USD / 1k, quality) after warm-up of the fixed-λ runs: one seed's, or the
        mean over seeds (None)."""
        pts = []
        for runs in self.fixed.values():
            sel = runs if seed is None else [r for r in runs if r.seed == seed]
            pts.append(
                (
                    float(np.mean([1000 * after(r.cost, self.warmup) for r in sel])),
                    float(np.mean([after(r.quality, self.warmup) for r in sel])),
                )
            )
        return metrics.frontier([c for c, _ in pts], [q for _, q in pts])

    def fixed_points(self) -> list[tuple[float, float, float]]:
        """(λ, USD / 1k, quality) after warm-up, means over seeds."""
        return [
            (
                lam,
                float(np.mean([1000 * after(r.cost, self.warmup) for r in runs])),
                float(np.mean([after(r.quality, self.warmup) for r in runs])),
            )
            for lam, runs in sorted(self.fixed.items())
        ]

    def compliance(self) -> list[Compliance]:
        out = []
        w = self.warmup
        unpaced = [c for lam, c, _ in self.fixed_points() if lam == 0.0]
        for f, runs in sorted(self.paced.items()):
            tgt = self.target(f)
            spend = [1000 * after(r.cost, w) for r in runs]
            quality = [after(r.quality, w) for r in runs]
            front = [self._at(self.frontier(r.seed), s) for r, s in zip(runs, spend, strict=True)]
            out.append(
                Compliance(
                    fraction=f,
                    target=tgt,
                    spend=mean_ci(spend),
                    error=mean_ci([s / tgt - 1 for s in spend]),
                    quality=mean_ci(quality),
                    frontier_quality=mean_ci(front),
                    gap=mean_ci([q - fq for q, fq in zip(quality, front, strict=True)]),
                    unpaced_spend=unpaced[0] if unpaced else float("inf"),
                    lam=mean_ci([float(r.lam[-1]) for r in runs]),
                )
            )
        return out

    @staticmethod
    def _at(front: metrics.Frontier, spend: float) -> float:
        # NaN below the frontier's cheapest point: no fixed λ of the grid spent so little
        return metrics.quality_at_cost(front, spend)


@dataclass(frozen=True)
class ChangeSummary:
    """Around one scenario's change, at the change target, means over seeds: spend (USD /
    1k) and quality before and after (after: from the change to the end, and the first
    1,000 queries), the changed model's share before and after, and the queries until
    spend is on target (`recovery_steps`, with windows of at least `window`; None: not
    within the stream)."""

    name: str
    model: str
    target: float
    switch: int
    spend_before: Interval
    spend_first_1k: Interval
    spend_after: Interval
    quality_before: Interval
    quality_after: Interval
    share_before: Interval
    share_after: Interval
    recovery: int | None
    window: int


def recovery_steps(
    runs: Sequence[PacedResult],
    target: float,
    min_window: int = 1000,
    tol: float = TOLERANCE,
    every: int = 50,
) -> int | None:
    """Queries k after the change (a multiple of `every`) from which the spend to the end
    of the stream (mean over seeds, USD per query) is within `tol` of `target` (per
    query), for k and for every later start that leaves at least `min_window` queries:
    "on target from k queries after the change on". None: no such k.

    A spend to the end, not over a short sliding window: one model can cost 60 times
    another, so a few hundred queries' spend strays by more than 2% from noise alone."""
    switch = runs[0].switch
    assert switch is not None
    n = min(len(r.cost) for r in runs)
    mean = np.mean([r.cost[:n] for r in runs], axis=0)
    tail = np.cumsum(mean[::-1])[::-1]  # tail[t]: spend of steps t.. n-1
    starts = np.arange(switch, n - min_window + 1, every)
    if not len(starts):
        return None
    ok = np.abs(tail[starts] / (n - starts) / target - 1) <= tol
    bad = np.flatnonzero(~ok)
    first = 0 if not len(bad) else int(bad[-1]) + 1
    if first >= len(starts):
        return None
    return int(starts[first] - switch)


def summarise_change(run: BudgetRun, name: str, window: int = 1000) -> ChangeSummary:
    runs = run.changes[name]
    model = run.change_model[name]
    tgt = run.target(run.change_fraction)
    s = runs[0].switch
    assert s is not None
    # "before": the 1,000 queries before the change, or its later half if shorter
    w = max(s - 1000, s // 2)

    def iv(vals: list[float]) -> Interval:
        return mean_ci(vals)

    return ChangeSummary(
        name=name,
        model=model,
        target=tgt,
        switch=s,
        spend_before=iv([1000 * float(r.cost[w:s].mean()) for r in runs]),
        spend_first_1k=iv([1000 * float(r.cost[s : s + 1000].mean()) for r in runs]),
        spend_after=iv([1000 * float(r.cost[s:].mean()) for r in runs]),
        quality_before=iv([float(r.quality[w:s].mean()) for r in runs]),
        quality_after=iv([float(r.quality[s:].mean()) for r in runs]),
        share_before=iv([float(r.share(model)[w:s].mean()) for r in runs]),
        share_after=iv([float(r.share(model)[s:].mean()) for r in runs]),
        recovery=recovery_steps(runs, tgt / 1000, window),
        window=window,
    )


def default_changes(data: RoutingData, best: str) -> dict[str, tuple[str, Change]]:
    """The mid-stream changes, each at the middle of the stream, on the best single model:
    the one the targets are fractions of and the budget holds back, so a change to it
    moves what the budget buys most. name -> (model, change)."""
    return {
        "price-cut": (best, Change("price-cut", cut=PriceCut(best, 0.5, 0.5))),
        "quality-drop": (
            best,
            Change("quality-drop", scenario=Scenario("drift", at=0.5, model=best, factor=0.5)),
        ),
        "new-model": (best, Change("new-model", scenario=Scenario("new", at=0.5, model=best))),
    }


def budget_steps(n: int, fractions: int, lams: int, changes: int, seeds: int) -> int:
    """Progress steps of `run_budgets`."""
    return n * seeds * (fractions + lams + changes)


def run_budgets(
    data: RoutingData,
    contexts: np.ndarray,
    *,
    cost_scale: float,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    lams: Sequence[float] = DEFAULT_LAMS,
    seeds: int = 3,
    step: float = 0.02,
    scale: Scale = "linear",
    start_lam: float = START_LAM,
    change_fraction: float | None = 0.25,
    changes: Sequence[str] | None = None,
    feedback: FeedbackSpec | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> BudgetRun:
    """Paced runs at each target fraction of the best single model's cost, fixed-λ runs
    over `lams` (the hindsight frontier), and the mid-stream `changes` (None: all of
    `default_changes`) paced at `change_fraction` (None: none); every replay over the
    same seeded orders."""
    best, best_cost = reference(data)
    every = default_changes(data, best) if change_fraction is not None else {}
    unknown = set(changes or ()) - set(every)
    if unknown:
        raise ValueError(f"unknown change(s) {sorted(unknown)}; known: {list(every)}")
    chosen = {k: v for k, v in every.items() if changes is None or k in changes}
    tasks: list[tuple[str, float | str, BudgetTask]] = []
    for f in fractions:
        tgt = 1000.0 * f * best_cost
        for s in range(seeds):
            tasks.append(
                (
                    "paced",
                    f,
                    BudgetTask(s, start_lam, cost_scale, tgt, step, feedback=feedback, scale=scale),
                )
            )
    for lam in lams:
        for s in range(seeds):
            tasks.append(("fixed", lam, BudgetTask(s, lam, cost_scale, feedback=feedback)))
    for name, (_, change) in chosen.items():
        assert change_fraction is not None
        tgt = 1000.0 * change_fraction * best_cost
        for s in range(seeds):
            tasks.append(
                (
                    "change",
                    name,
                    BudgetTask(s, start_lam, cost_scale, tgt, step, change, feedback, scale=scale),
                )
            )
    results = run_tasks(
        budget_task, [t for _, _, t in tasks], data, contexts, jobs=jobs, progress=progress
    )
    paced: dict[float, list[PacedResult]] = {}
    fixed: dict[float, list[PacedResult]] = {}
    changed: dict[str, list[PacedResult]] = {}
    for (kind, key, _), res in zip(tasks, results, strict=True):
        if kind == "paced":
            paced.setdefault(float(key), []).append(res)
        elif kind == "fixed":
            fixed.setdefault(float(key), []).append(res)
        else:
            changed.setdefault(str(key), []).append(res)
    n = min(len(r.cost) for r in results)
    return BudgetRun(
        name=data.name,
        best=best,
        best_cost=best_cost,
        step=step,
        seeds=seeds,
        paced=paced,
        fixed=fixed,
        changes=changed,
        change_fraction=change_fraction or 0.0,
        change_model={k: m for k, (m, _) in chosen.items()},
        warmup=warmup_of(n),
        scale=scale,
    )
