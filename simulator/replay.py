"""Online replay: prompts arrive one by one, the policy chooses among the models that
have a logged outcome, and only the chosen model's quality and cost are revealed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from policies import Decision, Policy
from simulator.data import RoutingData
from simulator.feedback import FeedbackChannel, FeedbackSpec, Outcome
from simulator.scenarios import Scenario


@dataclass(frozen=True)
class ReplayResult:
    """Per-step outcomes of one replay, each array shape (n,) in arrival order.

    chosen: index into data.models; reward = quality - lam * cost / cost_scale;
    oracle_reward: the best reward any offered model had on that step.
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
    rewards_all: np.ndarray | None = None  # (n, K): every offered model's reward, else NaN
    switch: int | None = None  # the step the scenario's change took effect

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
    scenario: Scenario | None = None,
    feedback: FeedbackSpec | None = None,
    learn: bool = True,
    greedy: bool = False,
) -> ReplayResult:
    """Replay `data` rows in `order` through `policy` (contexts: shape (n, dim)).

    Rows with no logged outcome for any model are skipped; a model without an outcome
    on a row is not offered as a candidate there (missing outcomes are never scored 0).
    `scenario` changes the stream (drift, task-mix shift, a model joining or leaving);
    `feedback` delays, drops, perturbs or batches what the policy learns from. The
    reported quality, cost and reward are always the true ones. With learn=False the
    policy is frozen (the deploy protocol's evaluation). With greedy=True the policy's
    own sampled choice is replaced by `greedy_choice` (exploration off; propensity 1).
    """
    stream = (scenario or Scenario()).stream(data, order)
    channel = FeedbackChannel(feedback or FeedbackSpec(), seed=seed)
    models = data.models
    index = {m: k for k, m in enumerate(models)}
    if stream.joins is not None and stream.joins in policy.models:
        policy.remove_model(stream.joins)  # it joins at the switch, with a cold start
    n = len(stream)
    chosen = np.empty(n, dtype=np.int64)
    prop = np.empty(n)

    def apply(outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.model not in policy.models:
                continue  # withdrawn meanwhile: the service's learner skips it too
            policy.learn(
                contexts[o.row],
                o.model,
                o.quality,
                o.cost,
                propensity=o.propensity,
                cost_weight=lam,
            )

    for t in range(n):
        i = int(stream.rows[t])
        if learn:
            apply(channel.due(t))
        if t == stream.switch and stream.joins is not None:
            policy.add_model(stream.joins)
        cands = [models[k] for k in np.flatnonzero(stream.offered[t])]
        d = policy.choose(contexts[i], cands, lam, text=data.prompts[i])
        model = greedy_choice(d, lam, cost_scale) if greedy else d.model
        k = index[model]
        chosen[t] = k
        prop[t] = 1.0 if greedy else d.propensity
        if learn:
            channel.send(
                Outcome(
                    t,
                    i,
                    model,
                    float(stream.quality[t, k]),
                    float(stream.cost[t, k]),
                    float(prop[t]),
                )
            )
        if progress is not None:
            progress(1)
    if learn:
        apply(channel.flush())
    steps = np.arange(n)
    r_all = np.where(stream.offered, stream.quality - lam * stream.cost / cost_scale, np.nan)
    return ReplayResult(
        policy=name or policy.name,
        seed=seed,
        rows=stream.rows,
        chosen=chosen,
        propensity=prop,
        quality=stream.quality[steps, chosen],
        cost=stream.cost[steps, chosen],
        reward=r_all[steps, chosen],
        oracle_reward=np.nanmax(r_all, axis=1),
        rewards_all=r_all,
        switch=stream.switch,
    )


def greedy_choice(decision: Decision, lam: float, cost_scale: float) -> str:
    """The candidate a policy serves with exploration off: the argmax of its expected
    quality - lam * expected cost (USD) / cost_scale (ties: the first candidate).

    A policy that models neither (VW folds them into one reward and reports only its
    action distribution) gives the mode of that distribution instead: its greedy
    action under SquareCB and epsilon-greedy exploration.
    """
    q, c = decision.expected_quality, decision.expected_cost
    if q is None or c is None:
        p = decision.probabilities
        return max(p, key=p.__getitem__)
    return max(q, key=lambda m: q[m] - lam * c[m] / cost_scale)


def quality_gap(
    policy: Policy,
    contexts: np.ndarray,
    data: RoutingData,
    rows: np.ndarray,
    strong: str,
    weak: str,
    *,
    lam: float,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, bool]:
    """How much better a (frozen) policy expects `strong` to answer than `weak` on each
    of `rows`, shape (m,): the difference of its expected qualities, choosing between
    the two at `lam`. Also whether that is what the scores are: a policy without
    expected qualities (VW) gives P(strong) - P(weak) at `lam` instead, which orders
    prompts by its predicted reward gap, quality's gap less the cost's.
    """
    gap = np.empty(len(rows))
    from_quality = True
    for t, i in enumerate(rows):
        d = policy.choose(contexts[i], [strong, weak], lam, text=data.prompts[i])
        if d.expected_quality is not None:
            gap[t] = d.expected_quality[strong] - d.expected_quality[weak]
        else:
            from_quality = False
            gap[t] = d.probabilities[strong] - d.probabilities[weak]
        if progress is not None:
            progress(1)
    return gap, from_quality


def replay_deploy(
    policy: Policy,
    contexts: np.ndarray,
    data: RoutingData,
    *,
    lam: float,
    cost_scale: float,
    seed: int = 0,
    name: str | None = None,
    feedback: FeedbackSpec | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReplayResult, ReplayResult]:
    """The deploy protocol: learn online from bandit feedback on the `train` rows (in a
    seeded order), then freeze the policy and route the `test` rows. Returns the train
    replay and the frozen evaluation on test."""
    train, test = deploy_rows(data)
    rng = np.random.default_rng(seed)
    common: dict[str, Any] = {
        "lam": lam,
        "cost_scale": cost_scale,
        "name": name,
        "seed": seed,
        "progress": progress,
    }
    learned = replay_online(
        policy, contexts, data, rng.permutation(train), feedback=feedback, **common
    )
    frozen = replay_online(policy, contexts, data, test, learn=False, **common)
    return learned, frozen


def deploy_rows(data: RoutingData) -> tuple[np.ndarray, np.ndarray]:
    """The deploy protocol's (train, test) row indices."""
    train = np.flatnonzero(data.split == "train")
    test = np.flatnonzero(data.split == "test")
    if not len(train) or not len(test):
        raise ValueError(f"data {data.name!r} needs rows with split 'train' and 'test'")
    return train, test


def seeded_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def progress_bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="query", leave=False)
