"""Cascades evaluated from logged outcomes: a cheap model answers first and a stronger
one is called only when the first answer's confidence falls below a threshold.

A cascade A > B at threshold t becomes one more "model" column of the routing table.
On every row a confidence of A's answer is simulated, c = clip(q_A + ε, 0, 1) with
ε ~ N(0, σ²) (σ: the noise of the signal); the cascade escalates iff c < t. Its quality
is the final answer's (q_B if it escalated, else q_A) and its cost the sum of the calls
made (cost_A, plus cost_B if it escalated). A longer chain A > B > C escalates from each
model in turn by the same rule. On tables whose quality is 0/1 (correct or not), c is a
noisy correctness signal: σ = 0.25 flags a wrong answer (c < 0.5) 98% of the time and a
right one 2% of the time; σ = 0.4 only 89% and 11%. On graded quality it is a noisy
estimate of the grade. The confidence of a model's answer on a row is the same in every
cascade that calls it (one draw per model, row and seed), as one answer has one score.

A family of cascades (chains × thresholds) sits next to the single models, so a bandit
chooses among both: "thresholds learned per context" is the bandit choosing among
cascades that differ only in their threshold. Missing outcomes stay masked: a cascade
has no outcome on a row where its first model has none, or where it escalates to a
model with none (a row it answers without escalating keeps its outcome).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from simulator import metrics
from simulator.data import RoutingData
from simulator.parallel import Progress, run_tasks
from simulator.replay import ReplayResult, deploy_rows, replay_deploy, replay_online
from simulator.simulate import DeployRun, RouterSpec, build
from simulator.stats import Interval, mean_ci

#: σ of the simulated confidence: the README's low, moderate and high noise
NOISE_LEVELS = {"low": 0.1, "moderate": 0.25, "high": 0.4}
DEFAULT_NOISE = NOISE_LEVELS["moderate"]
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
#: σ values of the report's noise-sensitivity table (each cascade alone; cheap)
SENSITIVITY = (0.1, 0.25, 0.4, 0.6, 1.0)
CHAIN_SEP = ">"


@dataclass(frozen=True)
class Cascade:
    """Call `models` in order; escalate from each but the last while its answer's
    confidence is below `threshold` (in [0, 1]: 0 never escalates)."""

    models: tuple[str, ...]
    threshold: float

    def __post_init__(self) -> None:
        if len(self.models) < 2:
            raise ValueError(f"a cascade needs at least two models, got {list(self.models)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a cascade calls each model once, got {list(self.models)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    @property
    def chain(self) -> str:
        return CHAIN_SEP.join(self.models)

    @property
    def name(self) -> str:
        """The cascade's arm name, e.g. "a>b@0.5"."""
        return f"{self.chain}@{self.threshold:g}"


# --- which cascades ------------------------------------------------------------------------


def _chosen_rows(data: RoutingData) -> np.ndarray:
    """The rows a chain is designed on: train where the table has a split, else all."""
    train = np.flatnonzero(data.split == "train")
    return train if len(train) and (data.split == "test").any() else np.arange(len(data))


def _column_means(values: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """Mean of each column over its available cells, shape (K,); NaN for an empty one."""
    count = avail.sum(axis=0)
    total = np.where(avail, values, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(values.shape[1], np.nan), where=count > 0)


def default_chains(data: RoutingData) -> list[tuple[str, ...]]:
    """The cheapest model (lowest mean cost) then the strongest (highest mean quality),
    and cheap > mid > strong where some model costs strictly between the two and answers
    strictly better than the cheapest and worse than the strongest (the best such one).
    Means over the train rows: a chain is designed before it is deployed.
    """
    rows = _chosen_rows(data)
    avail = data.available[rows]
    q = _column_means(data.quality[rows], avail)
    c = _column_means(data.cost[rows], avail)
    seen = np.flatnonzero(~np.isnan(q))
    if len(seen) < 2:
        raise ValueError("a cascade needs two models with outcomes")
    cheap = int(seen[np.argmin(c[seen])])
    strong = int(seen[np.argmax(q[seen])])
    if cheap == strong:
        raise ValueError(
            f"{data.models[cheap]!r} is both the cheapest and the strongest model: "
            "no default cascade; name one with --cascades A>B"
        )
    chains: list[tuple[str, ...]] = [(data.models[cheap], data.models[strong])]
    mid = [int(k) for k in seen if c[cheap] < c[k] < c[strong] and q[cheap] < q[k] < q[strong]]
    if mid:
        best = max(mid, key=lambda k: (q[k], -c[k]))
        chains.append((data.models[cheap], data.models[best], data.models[strong]))
    return chains


def parse_chains(text: str, data: RoutingData) -> list[tuple[str, ...]]:
    """The chains of `text`: "auto" (`default_chains`) or "A>B,A>M>B" (known models)."""
    if text.strip() == "auto":
        return default_chains(data)
    chains = []
    for item in text.split(","):
        if not item.strip():
            continue
        chain = tuple(m.strip() for m in item.split(CHAIN_SEP))
        unknown = [m for m in chain if m not in data.models]
        if unknown:
            raise ValueError(f"cascade {item!r}: unknown model(s) {unknown}; known: {data.models}")
        Cascade(chain, 0.5)  # validates its length and repeats
        chains.append(chain)
    if not chains:
        raise ValueError(f"no cascade in {text!r}: use 'auto' or A>B[,A>M>B]")
    return chains


def family(chains: Sequence[tuple[str, ...]], thresholds: Sequence[float]) -> list[Cascade]:
    """Every chain at every threshold."""
    if not thresholds:
        raise ValueError("no cascade threshold given")
    return [Cascade(tuple(ch), float(t)) for ch in chains for t in thresholds]


# --- evaluation from the logged table -----------------------------------------------------


def confidence(data: RoutingData, noise: float, seed: int) -> np.ndarray:
    """Simulated confidence of every logged answer, clip(q + N(0, noise²), 0, 1), shape
    (n, K); NaN where the outcome is missing. Each model's noise comes from its own
    stream (the seed and the model's name), so it does not depend on which other models
    the table holds, and the first rows of a longer table draw the same values."""
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite σ >= 0, got {noise}")
    n = len(data)
    out = np.empty((n, len(data.models)))
    for k, m in enumerate(data.models):
        rng = np.random.default_rng([seed, zlib.crc32(m.encode("utf-8"))])
        out[:, k] = data.quality[:, k] + noise * rng.standard_normal(n)
    out = np.clip(out, 0.0, 1.0)
    out[~data.available] = np.nan
    return out


@dataclass(frozen=True)
class CascadeOutcome:
    """One cascade on every row, each shape (n,): quality of the final answer, the cost
    of the calls made (USD), and how many calls (0 where it has no outcome)."""

    quality: np.ndarray
    cost: np.ndarray
    calls: np.ndarray

    @property
    def escalated(self) -> np.ndarray:
        """Rows where it called more than its first model, shape (n,) bool."""
        return self.calls > 1


def evaluate(data: RoutingData, cascade: Cascade, conf: np.ndarray) -> CascadeOutcome:
    """The cascade's outcome on every row of `data`, given the confidences `conf` (shape
    (n, K), from `confidence`)."""
    ks = [data.models.index(m) for m in cascade.models]
    avail = data.available
    first = ks[0]
    ok = avail[:, first].copy()
    quality = np.where(ok, data.quality[:, first], 0.0)
    cost = np.where(ok, data.cost[:, first], 0.0)
    calls = ok.astype(np.int64)
    active = ok.copy()  # rows whose latest answer may still escalate
    for prev, nxt in zip(ks, ks[1:], strict=False):
        with np.errstate(invalid="ignore"):
            esc = active & (conf[:, prev] < cascade.threshold)
        ok &= ~(esc & ~avail[:, nxt])  # it escalates to a model with no outcome
        esc &= avail[:, nxt]
        quality[esc] = data.quality[esc, nxt]
        cost[esc] += data.cost[esc, nxt]
        calls[esc] += 1
        active = esc
    quality[~ok] = np.nan
    cost[~ok] = np.nan
    calls[~ok] = 0
    return CascadeOutcome(quality, cost, calls)


def with_cascades(
    data: RoutingData, cascades: Sequence[Cascade], noise: float, seed: int
) -> tuple[RoutingData, np.ndarray]:
    """The table with one more column per cascade (after the single models, named
    `Cascade.name`), and every cascade's calls per row, shape (n, C)."""
    names = [c.name for c in cascades]
    clash = sorted(set(names) & set(data.models) | {m for m in names if names.count(m) > 1})
    if clash:
        raise ValueError(f"cascade name(s) {clash} repeat or clash with a model")
    conf = confidence(data, noise, seed)
    outs = [evaluate(data, c, conf) for c in cascades]
    q = np.column_stack([data.quality, *(o.quality for o in outs)])
    c = np.column_stack([data.cost, *(o.cost for o in outs)])
    calls = np.column_stack([o.calls for o in outs]) if outs else np.zeros((len(data), 0))
    return replace(data, models=[*data.models, *names], quality=q, cost=c), calls


# --- the simulator's cascade run --------------------------------------------------------


@dataclass(frozen=True)
class CascadeTask:
    """One deploy replay of a bandit over the single models and the cascades: the
    cascades' confidences drawn with the task's seed (which also seeds the policy and
    the train order, as in the plain deploy protocol)."""

    spec: RouterSpec
    lam: float
    seed: int
    cost_scale: float
    cascades: tuple[Cascade, ...]
    noise: float
    overrides: dict[str, Any] | None = None


@dataclass(frozen=True)
class CascadeDeployOutcome:
    """(cost, quality) means on test as deployed and greedy, and each arm's share of the
    test queries, shape (K + C,), in either evaluation."""

    deployed: tuple[float, float]
    greedy: tuple[float, float]
    share_deployed: np.ndarray
    share_greedy: np.ndarray


def cascade_task(
    task: CascadeTask, data: RoutingData, contexts: np.ndarray, progress: Progress | None
) -> CascadeDeployOutcome:
    aug, _ = with_cascades(data, task.cascades, task.noise, task.seed)
    policy = build(
        task.spec, aug, contexts.shape[1], task.seed, task.lam, task.cost_scale, task.overrides
    )
    common: dict[str, Any] = {
        "lam": task.lam,
        "cost_scale": task.cost_scale,
        "name": f"{task.spec.name} + cascades",
        "seed": task.seed,
        "progress": progress,
    }
    _, frozen = replay_deploy(policy, contexts, aug, **common)
    _, test = deploy_rows(aug)
    greedy = replay_online(policy, contexts, aug, test, learn=False, greedy=True, **common)
    k = len(aug.models)
    return CascadeDeployOutcome(
        _point(frozen), _point(greedy), _shares(frozen, k), _shares(greedy, k)
    )


def _point(run: ReplayResult) -> tuple[float, float]:
    return float(run.cost.mean()), float(run.quality.mean())


def _shares(run: ReplayResult, k: int) -> np.ndarray:
    return np.bincount(run.chosen, minlength=k) / max(1, len(run.chosen))


@dataclass(frozen=True)
class StaticCascade:
    """A cascade on the test rows, mean ± 95% over the confidence's seeds: quality, cost
    (USD per query) and the share of its queries that escalated."""

    cascade: Cascade
    quality: Interval
    cost: Interval
    escalated: Interval


def static_cascades(
    data: RoutingData, cascades: Sequence[Cascade], noise: float, seeds: int
) -> list[StaticCascade]:
    """Each cascade alone (no routing) on the test rows where it has an outcome, with
    the confidences the bandits' cascade arms draw at the same seeds."""
    _, test = deploy_rows(data)
    sub = data.subset(test)
    per: dict[str, dict[str, list[float]]] = {c.name: {"q": [], "c": [], "e": []} for c in cascades}
    for seed in range(seeds):
        conf = confidence(data, noise, seed)[test]
        for c in cascades:
            o = evaluate(sub, c, conf)
            ok = o.calls > 0
            if not ok.any():
                continue
            per[c.name]["q"].append(float(o.quality[ok].mean()))
            per[c.name]["c"].append(float(o.cost[ok].mean()))
            per[c.name]["e"].append(float(o.escalated[ok].mean()))
    return [
        StaticCascade(c, mean_ci(v["q"]), mean_ci(v["c"]), mean_ci(v["e"]))
        for c in cascades
        if (v := per[c.name])["q"]
    ]


@dataclass(frozen=True)
class Reach:
    """Whether a router reaches the reference quality: the cost on its frontier (mixing
    neighbouring λ configurations, as the deploy tables do) and at its cheapest single
    configuration that reaches it, each as % of the reference model's cost (NaN: not
    reached), the λ of that configuration, and in how many seeds its own frontier
    reaches it below `beat_cost`."""

    frontier_pct: float
    point_pct: float
    point_lam: float | None
    seeds_below: int
    seeds: int


@dataclass
class CascadeRun:
    """The cascade evaluation on test, next to the plain deploy run.

    static: each cascade alone; points: per learning policy over models and cascades,
    one (cost, quality) per λ (mean over seeds), as deployed ("NAME + cascades") and
    greedy ("NAME + cascades (greedy)"); per_seed: the same routers' points per λ and
    seed, [λ][seed]; shares: the greedy test share of every arm of `arms` (single
    models, then the cascades) per λ, mean over seeds; sensitivity: σ -> each cascade
    alone at that noise; base: the plain deploy run (single models, bandits over them).
    """

    cascades: list[Cascade]
    noise: float
    lams: list[float]
    arms: list[str]
    static: list[StaticCascade]
    points: dict[str, list[tuple[float, float]]]
    per_seed: dict[str, list[list[tuple[float, float]]]]
    shares: dict[str, list[np.ndarray]]
    base: DeployRun
    sensitivity: dict[float, list[StaticCascade]] = field(default_factory=dict)

    def reference(self) -> tuple[str, float, float, float]:
        """The best single model on test (name, cost, quality), and the lowest cost of
        any single model that reaches its quality (its own cost unless one ties)."""
        name, cost, quality = self.base.reference()
        beat = min(c for c, q in self.base.models.values() if q >= quality)
        return name, cost, quality, beat

    def reach(self, name: str, greedy: bool = False) -> Reach:
        """`Reach` of a router of this run (a key of `points`) or of the plain deploy
        run (its bandits, as deployed or `greedy`, and supervised references)."""
        _, ref_cost, ref_q, beat = self.reference()
        if name in self.points:
            pts, seeds = self.points[name], self.per_seed[name]
        else:
            pts, seeds = self.base.curves(greedy)[name], []
        front = metrics.frontier([c for c, _ in pts], [q for _, q in pts])
        cost = metrics.cost_to_reach(front, ref_q)
        ok = [(c, lam) for (c, q), lam in zip(pts, self.lams, strict=True) if q >= ref_q]
        point: tuple[float, float | None] = min(ok) if ok else (float("nan"), None)
        n_seeds = len(seeds[0]) if seeds else 0
        below = 0
        for s in range(n_seeds):
            sp = [per_lam[s] for per_lam in seeds]
            f = metrics.frontier([c for c, _ in sp], [q for _, q in sp])
            below += int(metrics.cost_to_reach(f, ref_q) < beat)
        return Reach(100 * cost / ref_cost, 100 * point[0] / ref_cost, point[1], below, n_seeds)

    def cheapest_static(
        self, static: Sequence[StaticCascade] | None = None
    ) -> StaticCascade | None:
        """The cheapest cascade alone whose mean test quality reaches the reference."""
        _, _, ref_q, _ = self.reference()
        ok = [s for s in (self.static if static is None else static) if s.quality.mean >= ref_q]
        return min(ok, key=lambda s: s.cost.mean) if ok else None


def cascade_steps(data: RoutingData, learning: int, lams: Sequence[float], seeds: int) -> int:
    """Progress steps of `run_cascades`' replays."""
    train, test = deploy_rows(data)
    avail = data.available
    per = int(avail[train].any(axis=1).sum()) + 2 * int(avail[test].any(axis=1).sum())
    return learning * len(lams) * seeds * per


def run_cascades(
    data: RoutingData,
    contexts: np.ndarray,
    learning: Sequence[RouterSpec],
    base: DeployRun,
    cascades: Sequence[Cascade],
    *,
    noise: float,
    lams: Sequence[float],
    seeds: int,
    cost_scale: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    sensitivity: Sequence[float] = SENSITIVITY,
    progress: Progress | None = None,
    jobs: int = 1,
) -> CascadeRun:
    """Every learning policy over the single models and `cascades` by the deploy
    protocol at each λ (the confidence drawn per seed), each cascade alone on test at
    `noise` and at every `sensitivity` σ; `base` is the plain deploy run (single models,
    the bandits over them alone)."""
    tasks = [
        CascadeTask(
            spec, lam, seed, cost_scale, tuple(cascades), noise, (overrides or {}).get(spec.name)
        )
        for spec in learning
        for lam in lams
        for seed in range(seeds)
    ]
    outcomes = run_tasks(cascade_task, tasks, data, contexts, jobs=jobs, progress=progress)
    points: dict[str, list[tuple[float, float]]] = {}
    per_seed: dict[str, list[list[tuple[float, float]]]] = {}
    shares: dict[str, list[np.ndarray]] = {}
    for spec in learning:
        key = f"{spec.name} + cascades"
        mine = [
            [o for t, o in zip(tasks, outcomes, strict=True) if t.spec == spec and t.lam == lam]
            for lam in lams
        ]
        per_seed[key] = [[o.deployed for o in m] for m in mine]
        per_seed[f"{key} (greedy)"] = [[o.greedy for o in m] for m in mine]
        shares[key] = [np.mean([o.share_greedy for o in m], axis=0) for m in mine]
    for key, per_lam in per_seed.items():
        points[key] = [_mean(m) for m in per_lam]
    levels = sorted({float(s) for s in sensitivity} | {float(noise)})
    return CascadeRun(
        cascades=list(cascades),
        noise=noise,
        lams=list(lams),
        arms=[*data.models, *(c.name for c in cascades)],
        static=static_cascades(data, cascades, noise, seeds),
        points=points,
        per_seed=per_seed,
        shares=shares,
        base=base,
        sensitivity={s: static_cascades(data, cascades, s, seeds) for s in levels},
    )


def _mean(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return float(np.mean([c for c, _ in points])), float(np.mean([q for _, q in points]))
