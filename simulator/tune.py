"""Grid search of exploration settings on the train split, before anything goes live.

Each point of the grid is a learning policy kind with its parameters, a projection
dimension of the embedding and the λ the policy routes with while it learns. Every
point replays the train rows online over the same seeded orders, and is scored by its
mean reward at the *target* λ (the service's objective: what it earns while learning,
exploration included). The routing λ is tuned separately from the target because a
policy that still learns may do better routing with a slightly different cost weight.

The train score selects; it is not the result. The best of a grid on the rows it was
chosen on is biased upwards (the maximum of noisy scores), so each kind's chosen setting
is replayed again, from scratch, on the held-out `test` rows next to the static routers
(`run_heldout`), and that is the figure to report.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import make_policy
from simulator.data import RoutingData
from simulator.replay import ReplayResult, replay_online, seeded_order
from simulator.simulate import OnlineRun, build, static_specs
from simulator.stats import Interval, mean_ci

# the hyper-parameters each kind has on the grid; "gamma" is the forgetting factor of the
# linear policies (VW has none)
KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "hybrid": ("alpha",),
    "linucb": ("alpha", "gamma"),
    "thompson": ("v", "gamma"),
    "vw": ("gamma_scale",),
    "vw-epsilon": ("epsilon",),
}
DEFAULT_GRID: dict[str, list[float]] = {
    "alpha": [0.1, 0.3, 1.0],
    "v": [0.1, 0.3, 1.0],
    "gamma_scale": [10.0, 100.0],
    "epsilon": [0.02, 0.05, 0.1],
    "gamma": [1.0, 0.999],
}


@dataclass(frozen=True)
class GridPoint:
    """One setting: the policy kind, its parameters, projection dim and routing λ."""

    kind: str
    params: tuple[tuple[str, float], ...]
    projection_dim: int
    learn_lam: float

    def policy_params(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.params)
        if self.kind == "vw-epsilon":
            out["exploration"] = "epsilon"
        return out

    @property
    def policy_kind(self) -> str:
        return "vw" if self.kind.startswith("vw") else self.kind

    def label(self) -> str:
        ps = ", ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.kind}({ps}) d={self.projection_dim} λ={self.learn_lam:g}"

    def values(self) -> dict[str, Any]:
        """Every axis of the grid by name (for the sensitivity table)."""
        return {
            "kind": self.kind,
            **dict(self.params),
            "projection_dim": self.projection_dim,
            "learn_lam": self.learn_lam,
        }


def grid(
    kinds: Sequence[str],
    values: Mapping[str, Sequence[float]],
    projection_dims: Sequence[int],
    learn_lams: Sequence[float],
) -> list[GridPoint]:
    """The full cross product per kind; an unknown kind or an empty axis is an error."""
    if not kinds:
        raise ValueError("kinds: at least one learning policy is needed")
    if not projection_dims or not learn_lams:
        raise ValueError("projection_dims and learn_lams need at least one value each")
    points = []
    for kind in kinds:
        if kind not in KIND_PARAMS:
            raise ValueError(f"unknown policy {kind!r}; known: {sorted(KIND_PARAMS)}")
        names = KIND_PARAMS[kind]
        axes = []
        for name in names:
            vals = list(values.get(name, DEFAULT_GRID[name]))
            if not vals:
                raise ValueError(f"{name}: the grid needs at least one value")
            axes.append(vals)
        for combo in itertools.product(*axes):
            for dim in projection_dims:
                for lam in learn_lams:
                    params = tuple(zip(names, (float(v) for v in combo), strict=True))
                    points.append(GridPoint(kind, params, int(dim), float(lam)))
    return points


@dataclass
class TuneRow:
    point: GridPoint
    scores: list[float]  # mean reward at the target λ, one per seed
    last_third: list[float]  # the same over the last third of the stream

    @property
    def score(self) -> Interval:
        return mean_ci(self.scores)


@dataclass
class TuneResult:
    target_lam: float
    seeds: int
    rows: list[TuneRow] = field(default_factory=list)

    def best(self, kind: str | None = None) -> TuneRow:
        rows = [r for r in self.rows if kind is None or r.point.kind == kind]
        if not rows:
            raise ValueError(f"no grid point of kind {kind!r}")
        return max(rows, key=lambda r: float(np.mean(r.scores)))

    def sensitivity(self) -> dict[str, list[tuple[str, Any, float, float, str]]]:
        """Per axis of the grid: for each (kind, value), the best and the mean score over
        every other setting with that value, and the best setting's label. How much a
        choice matters shows as the spread of the best scores down one axis."""
        out: dict[str, list[tuple[str, Any, float, float, str]]] = {}
        axes = sorted({a for r in self.rows for a in r.point.values() if a != "kind"})
        for axis in axes:
            entries = []
            groups: dict[tuple[str, Any], list[TuneRow]] = {}
            for r in self.rows:
                v = r.point.values()
                if axis in v:
                    groups.setdefault((r.point.kind, v[axis]), []).append(r)
            for (kind, value), rows in sorted(groups.items(), key=lambda kv: kv[0]):
                means = [float(np.mean(r.scores)) for r in rows]
                top = rows[int(np.argmax(means))]
                entries.append((kind, value, max(means), float(np.mean(means)), top.point.label()))
            out[axis] = entries
        return out


def service_config(
    row: TuneRow, target_lam: float, models: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The tuned setting as a service config (see service.settings.Settings): the policy
    routes with the tuned λ as its default cost weight."""
    point = row.point
    config: dict[str, Any] = {
        "projection_dim": point.projection_dim,
        "default_policy": "default",
        "policies": {
            "default": {
                "kind": point.policy_kind,
                "params": point.policy_params(),
                "cost_weight": point.learn_lam,
            }
        },
    }
    if models:
        config["models"] = models
    return config


def replay_point(
    point: GridPoint,
    contexts: np.ndarray,
    data: RoutingData,
    *,
    cost_scale: float,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """One online replay of `data` by a fresh policy of `point`, in seed's order; the
    result's own reward is at the routing λ, not the target."""
    policy = make_policy(
        point.policy_kind,
        data.models,
        contexts.shape[1],
        seed=seed,
        cost_weight=point.learn_lam,
        cost_scale=cost_scale,
        **point.policy_params(),
    )
    return replay_online(
        policy,
        contexts,
        data,
        seeded_order(len(data), seed),
        lam=point.learn_lam,
        cost_scale=cost_scale,
        seed=seed,
        progress=progress,
    )


def target_reward(res: ReplayResult, target_lam: float, cost_scale: float) -> np.ndarray:
    """Per-step reward at the target λ, shape (n,)."""
    return res.quality - target_lam * res.cost / cost_scale


def score_point(
    point: GridPoint,
    contexts: np.ndarray,
    data: RoutingData,
    *,
    target_lam: float,
    cost_scale: float,
    seeds: int,
    progress: Callable[[int], None] | None = None,
) -> TuneRow:
    """Replay `data` (the train rows) online for each seed; contexts match the point's
    projection dimension."""
    scores, last = [], []
    for seed in range(seeds):
        res = replay_point(
            point, contexts, data, cost_scale=cost_scale, seed=seed, progress=progress
        )
        reward = target_reward(res, target_lam, cost_scale)
        scores.append(float(reward.mean()))
        last.append(float(reward[-(len(reward) // 3 or 1) :].mean()))
    return TuneRow(point, scores, last)


def run_tune(
    points: Sequence[GridPoint],
    contexts_for: Callable[[int], np.ndarray],
    data: RoutingData,
    *,
    target_lam: float,
    cost_scale: float,
    seeds: int,
    progress: Callable[[int], None] | None = None,
) -> TuneResult:
    """Score every point; `contexts_for(dim)` gives the contexts of a projection dim."""
    result = TuneResult(target_lam, seeds)
    for dim, group in _by_dim(points):
        X = contexts_for(dim)
        for point in group:
            result.rows.append(
                score_point(
                    point,
                    X,
                    data,
                    target_lam=target_lam,
                    cost_scale=cost_scale,
                    seeds=seeds,
                    progress=progress,
                )
            )
    return result


TABLE_SPLIT = "the table's train/test split"


def split_rows(data: RoutingData, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of the train and the test split (each in table order), and how they
    were made: the table's own `train` and `test` rows where it has both (rows of any
    other split are left out), else a seeded 50/50 split of every row, so that a table
    without a split is still tuned on one half and reported on the other."""
    train = np.flatnonzero(data.split == "train")
    test = np.flatnonzero(data.split == "test")
    how = TABLE_SPLIT
    if not len(train) or not len(test):
        order = seeded_order(len(data), seed)
        half = len(data) // 2
        train, test = np.sort(order[:half]), np.sort(order[half:])
        how = f"a seeded 50/50 split of all rows (seed {seed}): the table has no train/test split"
    if not len(train) or not len(test):
        raise ValueError(f"data {data.name!r}: too few rows to split ({len(data)})")
    return train, test, how


@dataclass(frozen=True)
class HeldOutRow:
    """One router replayed online on the test rows: per seed, its mean reward at the
    target λ over the whole stream and after warm-up."""

    name: str
    setting: str  # the grid point's label; "" for a static router
    train_score: Interval | None  # what selected it, on train; None for a static router
    rewards: list[float]
    after_warmup: list[float]

    @property
    def learns(self) -> bool:
        return self.train_score is not None

    @property
    def reward(self) -> Interval:
        return mean_ci(self.rewards)

    @property
    def reward_after_warmup(self) -> Interval:
        return mean_ci(self.after_warmup)


@dataclass(frozen=True)
class HeldOut:
    """The chosen settings and the static routers on the test split: the tuning result
    to report. `winner` names the row of the overall best setting on train."""

    target_lam: float
    cost_scale: float
    seeds: int
    split: str
    train_rows: int
    test_rows: int
    warmup: int
    winner: str
    rows: list[HeldOutRow]

    def row(self, name: str) -> HeldOutRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no held-out router {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able figures (intervals as mean, low, high)."""

        def iv(i: Interval | None) -> dict[str, float] | None:
            return None if i is None else {"mean": i.mean, "low": i.low, "high": i.high}

        return {
            "target_lam": self.target_lam,
            "cost_scale": self.cost_scale,
            "seeds": self.seeds,
            "split": self.split,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "warmup": self.warmup,
            "winner": {"policy": self.winner, "setting": self.row(self.winner).setting},
            "routers": [
                {
                    "router": r.name,
                    "learns": r.learns,
                    "winner": r.name == self.winner,
                    "setting": r.setting or None,
                    "heldout_reward": iv(r.reward),
                    "heldout_reward_after_warmup": iv(r.reward_after_warmup),
                    "heldout_reward_per_seed": r.rewards,
                    "heldout_reward_after_warmup_per_seed": r.after_warmup,
                    "train_score": iv(r.train_score),
                }
                for r in self.rows
            ],
        }


def run_heldout(
    result: TuneResult,
    contexts_for: Callable[[int], np.ndarray],
    train: RoutingData,
    test: RoutingData,
    *,
    cost_scale: float,
    split: str = TABLE_SPLIT,
    progress: Callable[[int], None] | None = None,
) -> HeldOut:
    """Replay each kind's best setting on train online again on `test`: a fresh policy
    per seed, the seeded orders and the number of seeds tuning used, scored at the
    target λ. Next to it, every static router of the simulator on the same rows and
    orders, the data-chosen ones (cheapest, best fixed) chosen on `train`.
    `contexts_for(dim)` gives the test rows' contexts, shape (len(test), dim').
    After warm-up follows `OnlineRun.warmup`, so the figure matches `simulate`'s."""
    lam, seeds = result.target_lam, result.seeds
    chosen = {k: result.best(k) for k in dict.fromkeys(r.point.kind for r in result.rows)}
    contexts: dict[int, np.ndarray] = {}
    runs: dict[str, list[ReplayResult]] = {}
    for kind, row in chosen.items():
        dim = row.point.projection_dim
        if dim not in contexts:
            contexts[dim] = contexts_for(dim)
        runs[kind] = [
            replay_point(
                row.point, contexts[dim], test, cost_scale=cost_scale, seed=s, progress=progress
            )
            for s in range(seeds)
        ]
    winner = result.best()
    X = contexts[winner.point.projection_dim]  # static routers ignore it
    for spec in static_specs(train, lam, cost_scale):
        runs[spec.name] = [
            replay_online(
                build(spec, test, X.shape[1], s, lam, cost_scale),
                X,
                test,
                seeded_order(len(test), s),
                lam=lam,
                cost_scale=cost_scale,
                name=spec.name,
                seed=s,
                progress=progress,
            )
            for s in range(seeds)
        ]
    warmup = OnlineRun(lam, cost_scale, runs).warmup()
    rows = []
    for name, reps in runs.items():
        whole, after = [], []
        for r in reps:
            reward = target_reward(r, lam, cost_scale)
            whole.append(float(reward.mean()))
            after.append(float(reward[min(warmup, len(reward) - 1) :].mean()))
        tuned = chosen.get(name)
        rows.append(
            HeldOutRow(
                name,
                tuned.point.label() if tuned else "",
                tuned.score if tuned else None,
                whole,
                after,
            )
        )
    return HeldOut(
        lam, cost_scale, seeds, split, len(train), len(test), warmup, winner.point.kind, rows
    )


def _by_dim(points: Sequence[GridPoint]) -> Iterator[tuple[int, list[GridPoint]]]:
    dims: dict[int, list[GridPoint]] = {}
    for p in points:
        dims.setdefault(p.projection_dim, []).append(p)
    yield from dims.items()
