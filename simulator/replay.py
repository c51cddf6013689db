"""Online replay: prompts arrive one by one, the policy chooses among the models that
have a logged outcome, and only the chosen model's quality and cost are revealed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from policies import Policy
from simulator.data import RoutingData


@dataclass(frozen=True)
class ReplayResult:
    """Per-step outcomes of one replay, each array shape (n,) in arrival order.

    chosen: index into data.models; reward = quality - lam * cost / cost_scale;
    oracle_reward: the best reward any available model had on that prompt.
    """

    policy: str
    seed: int
    rows: np.ndarray
    chosen: np.ndarray
    propensity: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    reward: np.ndarray
    oracle_reward: np.ndarray

    @property
    def regret(self) -> np.ndarray:
        return self.oracle_reward - self.reward


def cost_scale_of(data: RoutingData) -> float:
    """USD of one normalised cost unit: the mean cost of the priciest model."""
    return float(np.nanmax(np.nanmean(data.cost, axis=0)))


def rewards(data: RoutingData, lam: float, cost_scale: float) -> np.ndarray:
    """quality - lam * cost / cost_scale for every prompt and model, shape (n, K); NaN
    where the outcome is missing."""
    return data.quality - lam * data.cost / cost_scale


def replay_online(
    policy: Policy,
    contexts: np.ndarray,
    data: RoutingData,
    order: np.ndarray,
    *,
    lam: float,
    cost_scale: float,
    name: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replay `data` rows in `order` through `policy` (contexts: shape (n, dim)).

    Rows with no logged outcome for any model are skipped; a model without an outcome
    on a row is not offered as a candidate there (missing outcomes are never scored 0).
    """
    avail = data.available
    r_all = rewards(data, lam, cost_scale)
    rows = np.asarray([i for i in order if avail[i].any()], dtype=np.int64)
    n = len(rows)
    chosen = np.empty(n, dtype=np.int64)
    prop = np.empty(n)
    models = data.models
    index = {m: k for k, m in enumerate(models)}
    for t, i in enumerate(rows):
        cands = [models[k] for k in np.flatnonzero(avail[i])]
        d = policy.choose(contexts[i], cands, lam, text=data.prompts[i])
        k = index[d.model]
        policy.learn(
            contexts[i],
            d.model,
            float(data.quality[i, k]),
            float(data.cost[i, k]),
            propensity=d.propensity,
            cost_weight=lam,
        )
        chosen[t] = k
        prop[t] = d.propensity
        if progress is not None:
            progress(1)
    quality = data.quality[rows, chosen]
    cost = data.cost[rows, chosen]
    return ReplayResult(
        policy=name or policy.name,
        seed=seed,
        rows=rows,
        chosen=chosen,
        propensity=prop,
        quality=quality,
        cost=cost,
        reward=r_all[rows, chosen],
        oracle_reward=np.nanmax(np.where(avail, r_all, np.nan)[rows], axis=1),
    )


def seeded_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def progress_bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="query", leave=False)
