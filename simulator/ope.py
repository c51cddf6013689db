"""Off-policy evaluation from the service's decision log: what another router would have
earned on the traffic we actually served, before it serves any of it.

The log holds one row per decision that got feedback: the context the serving policy
saw, the candidates, the model it chose and the probability it chose it with (the
propensity). A target router is valued by IPS, SNIPS and doubly robust estimates
(`simulator.metrics`); DR's reward model is a cross-fitted per-model ridge regression.

Units: quality in [0, 1]; cost in USD per call; reward = quality - λ · cost / cost_scale,
the same scale the policies and `simulator.replay` use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies import FixedRouter, Policy, RandomRouter, RuleRouter, make_policy
from service.routes.experiments import LOG_COLUMNS
from simulator import metrics
from simulator.metrics import OffPolicyEstimate

REQUIRED_COLUMNS = LOG_COLUMNS
MAX_UNSUPPORTED = 0.01
NULLABLE = frozenset({"experiment", "variant"})
SOURCES = frozenset({"user", "judge", "default"})
ESTIMATORS = ("IPS", "SNIPS", "DR")
# routers whose probabilities depend on the candidates alone (no context is read, no text
# is logged) and never on feedback: their probabilities are computed once per candidate set
STATIC = (FixedRouter, RandomRouter, RuleRouter)
SPEC_HELP = "fixed:MODEL, random, config:PATH or config:PATH#POLICY"


# --- the log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionLog:
    """Logged decisions with feedback, sorted by decision time (created_at).

    model, candidates: the chosen model and the models it chose among, per row.
    propensity: the logging policy's probability of the chosen model, shape (n,), (0, 1].
    quality: shape (n,), [0, 1]; cost: shape (n,), USD; cost_weight: the λ each decision
    routed with, shape (n,). created_at / time: unix seconds of the decision / feedback.
    contexts: the serving policy's input vectors, shape (n, d).
    models: every model seen among the candidates, in order of first appearance.
    """

    event_id: list[str]
    policy: list[str]
    source: list[str]
    model: list[str]
    candidates: list[list[str]]
    propensity: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    cost_weight: np.ndarray
    created_at: np.ndarray
    time: np.ndarray
    contexts: np.ndarray
    models: list[str]

    def __len__(self) -> int:
        return len(self.event_id)

    @property
    def dim(self) -> int:
        return int(self.contexts.shape[1])

    @cached_property
    def candidate_sets(self) -> tuple[list[list[str]], np.ndarray]:
        """The distinct candidate lists, and each row's index into them, shape (n,)."""
        index: dict[tuple[str, ...], int] = {}
        rows = [index.setdefault(tuple(c), len(index)) for c in self.candidates]
        return [list(c) for c in index], np.asarray(rows, dtype=np.int64)

    @cached_property
    def chosen(self) -> np.ndarray:
        """Index of each row's model in `models`, shape (n,) int64."""
        col = {m: k for k, m in enumerate(self.models)}
        return np.fromiter((col[m] for m in self.model), dtype=np.int64, count=len(self))


def load_log(path: str | Path) -> DecisionLog:
    """Read and validate a decision log exported to parquet by the service."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"decision log {p} does not exist")
    if p.suffix.lower() != ".parquet":
        raise ValueError(f"decision log {p.name!r} must be a .parquet file")
    return log_from_frame(pd.read_parquet(p), source=str(p))


def log_from_frame(df: pd.DataFrame, source: str = "decision log") -> DecisionLog:
    """Validate a decision-log table (columns as `REQUIRED_COLUMNS`) and sort it by
    decision time. Every error is a ValueError naming the column and the first bad row.
    Filter rows (one experiment, one variant, a date range) before calling this."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; a decision log has {list(REQUIRED_COLUMNS)}"
        )
    if len(df) == 0:
        raise ValueError(f"{source}: the log has no rows")
    df = df.reset_index(drop=True)
    for col in REQUIRED_COLUMNS:
        if col not in NULLABLE and df[col].isna().any():
            raise _bad(df, source, col, df[col].isna(), "must not be null")
    strings = {col: df[col].tolist() for col in ("event_id", "policy", "model", "source")}
    for col, values in strings.items():
        not_str = [not (isinstance(v, str) and v) for v in values]
        if any(not_str):
            raise _bad(df, source, col, not_str, "must hold non-empty strings")
    dup = df["event_id"].duplicated()
    if dup.any():
        raise _bad(df, source, "event_id", dup, "must be unique")
    unknown_source = [v not in SOURCES for v in strings["source"]]
    if any(unknown_source):
        raise _bad(df, source, "source", unknown_source, f"must be one of {sorted(SOURCES)}")
    nums = {col: _numbers(df, source, col) for col in _NUMERIC}
    for col, (ok, why) in _RANGES.items():
        out = ~ok(nums[col])
        if out.any():
            raise _bad(df, source, col, out, why)
    candidates = _candidates(df, source)
    not_offered = [m not in c for m, c in zip(strings["model"], candidates, strict=True)]
    if any(not_offered):
        raise _bad(df, source, "model", not_offered, "must be one of the row's candidates")
    contexts = _contexts(df, source)

    # decision time first: a replayed learner decides in the order the service did
    order = np.lexsort((nums["time"], nums["created_at"]))
    cands = [candidates[i] for i in order]
    return DecisionLog(
        event_id=[strings["event_id"][i] for i in order],
        policy=[strings["policy"][i] for i in order],
        source=[strings["source"][i] for i in order],
        model=[strings["model"][i] for i in order],
        candidates=cands,
        propensity=nums["propensity"][order],
        quality=nums["quality"][order],
        cost=nums["cost_usd"][order],
        cost_weight=nums["cost_weight"][order],
        created_at=nums["created_at"][order],
        time=nums["time"][order],
        contexts=contexts[order],
        models=list(dict.fromkeys(m for c in cands for m in c)),
    )


_NUMERIC = ("propensity", "quality", "cost_usd", "cost_weight", "time", "created_at")
_RANGES = {
    "propensity": (lambda v: (v > 0) & (v <= 1), "must lie in (0, 1]"),
    "quality": (lambda v: (v >= 0) & (v <= 1), "must lie in [0, 1]"),
    "cost_usd": (lambda v: v >= 0, "must be >= 0 (USD)"),
    "cost_weight": (lambda v: v >= 0, "must be >= 0"),
}


def _bad(df: pd.DataFrame, source: str, col: str, mask: Any, why: str) -> ValueError:
    """The error for the first row where `mask` holds, naming column, row and event."""
    i = int(np.flatnonzero(np.asarray(mask, dtype=bool))[0])
    where = f"row {i}, event_id {df['event_id'].iloc[i]!r}: {df[col].iloc[i]!r}"
    return ValueError(f"{source}: column {col!r} {why} ({where})")


def _numbers(df: pd.DataFrame, source: str, col: str) -> np.ndarray:
    try:
        v = df[col].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: column {col!r} must hold numbers") from None
    if not np.all(np.isfinite(v)):
        raise _bad(df, source, col, ~np.isfinite(v), "must be finite")
    return v


def _candidates(df: pd.DataFrame, source: str) -> list[list[str]]:
    """Each row's candidates as a list of distinct model names, in logged order."""
    out = []
    for i, c in enumerate(df["candidates"].tolist()):
        items = [] if isinstance(c, str) else list(c)
        if not items or not all(isinstance(m, str) and m for m in items):
            mask = np.arange(len(df)) == i
            raise _bad(df, source, "candidates", mask, "must be non-empty lists of models")
        out.append(list(dict.fromkeys(items)))
    return out


def _contexts(df: pd.DataFrame, source: str) -> np.ndarray:
    """The context column as a matrix, shape (n, d); every row must have the same d."""
    try:
        rows = [np.asarray(c, dtype=np.float64) for c in df["context"].tolist()]
    except (TypeError, ValueError):
        raise ValueError(f"{source}: column 'context' must hold lists of numbers") from None
    odd = [r.shape != rows[0].shape for r in rows]
    if rows[0].ndim != 1 or rows[0].size == 0 or any(odd):
        mask = odd if any(odd) else np.arange(len(rows)) == 0
        why = f"must hold vectors of one length (row 0 has shape {rows[0].shape})"
        raise _bad(df, source, "context", mask, why)
    x = np.stack(rows)
    not_finite = ~np.isfinite(x).all(axis=1)
    if not_finite.any():
        raise _bad(df, source, "context", not_finite, "must be finite")
    return x


# --- reward -------------------------------------------------------------------------------


def log_cost_scale(log: DecisionLog) -> float:
    """USD of one normalised cost unit: the largest per-model mean logged cost, as
    `simulator.replay.cost_scale_of` takes it on a full table (here each model's mean is
    over the rows where it was chosen, the only costs a log reveals). 0 if all are 0."""
    chosen = log.chosen
    return float(max(log.cost[chosen == k].mean() for k in np.unique(chosen)))


def log_rewards(log: DecisionLog, cost_weight: float, cost_scale: float) -> np.ndarray:
    """quality - cost_weight * cost / cost_scale for each logged decision, shape (n,)."""
    if not (np.isfinite(cost_weight) and cost_weight >= 0):
        raise ValueError(f"cost_weight must be a number >= 0, got {cost_weight}")
    if not (np.isfinite(cost_scale) and cost_scale > 0):
        raise ValueError(f"cost_scale must be a positive number of USD, got {cost_scale}")
    return log.quality - cost_weight * log.cost / cost_scale


# --- target policies ----------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """A router to evaluate. text: the spec as given (its label); kind, params: as for
    `policies.make_policy`; cost_weight: the λ it routes and learns with (a configured
    policy's own), None for the evaluation λ."""

    text: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    cost_weight: float | None = None


def parse_target(text: str) -> TargetSpec:
    """Parse `fixed:MODEL`, `random`, `config:PATH` (the config's default policy) or
    `config:PATH#POLICY` (a service config file, TOML or YAML)."""
    t = text.strip()
    if t == "random":
        return TargetSpec(t, "random")
    head, _, rest = t.partition(":")
    if head == "fixed":
        if not rest:
            raise ValueError(f"target {text!r}: fixed:MODEL needs a model name")
        return TargetSpec(t, "fixed", {"model": rest})
    if head == "config":
        return _config_target(t, rest)
    raise ValueError(f"unknown target policy {text!r}; use {SPEC_HELP}")


def _config_target(text: str, rest: str) -> TargetSpec:
    import yaml

    from service.settings import load_settings

    # a path may itself contain '#': split a policy name off only if the whole is no file
    if "#" in rest and not Path(rest).is_file():
        path, _, name = rest.rpartition("#")
    else:
        path, name = rest, ""
    if not path:
        raise ValueError(f"target {text!r}: config:PATH needs a config file path")
    try:
        settings = load_settings(Path(path))
    except FileNotFoundError:
        raise ValueError(f"target {text!r}: config file {path} does not exist") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"target {text!r}: cannot load config {path}: {exc}") from None
    name = name or settings.default_policy
    if name not in settings.policies:
        raise ValueError(
            f"target {text!r}: policy {name!r} is not in {path}; it has {sorted(settings.policies)}"
        )
    cfg = settings.policies[name]
    return TargetSpec(text, cfg.kind, dict(cfg.params), cost_weight=cfg.cost_weight)


def build_target(spec: TargetSpec, models: list[str], dim: int, cost_weight: float) -> Policy:
    """A fresh target policy over `models` for contexts of shape (dim,), built the way the
    service builds a configured one (seed 0 unless configured). A rule router sees no
    query text (the log keeps none), so it routes every row to its default model."""
    if spec.kind == "fixed" and spec.params.get("model") not in models:
        raise ValueError(
            f"target {spec.text!r}: model {spec.params.get('model')!r} never appears among "
            f"the log's candidates {models}"
        )
    lam = cost_weight if spec.cost_weight is None else spec.cost_weight
    params = {"seed": 0, **spec.params, "cost_weight": lam}
    return make_policy(spec.kind, list(models), dim, **params)


def target_probabilities(policy: Policy, log: DecisionLog) -> np.ndarray:
    """π(a | x_i): the target's probability of every model on every logged row, shape
    (n, K) over `log.models`, 0 off the row's candidates.

    A learning target is replayed in time: it decides each row at its created_at with
    what it learned from feedback that arrived before, and learns the logged outcome at
    its feedback time (ties: decisions first, so no row sees its own outcome). It learns
    only what the logging policy chose, so the estimate values the target as trained on
    this log, which can differ from the target trained on its own choices.
    """
    col = {m: k for k, m in enumerate(log.models)}
    out = np.zeros((len(log), len(log.models)))

    def decide(i: int) -> None:
        d = policy.choose(log.contexts[i], log.candidates[i])
        for m, p in d.probabilities.items():
            out[i, col[m]] = p

    if isinstance(policy, STATIC):
        sets, index = log.candidate_sets
        first = [int(np.argmax(index == j)) for j in range(len(sets))]
        for i in first:
            decide(i)
        return out[np.asarray(first)[index]]
    events = sorted(
        [(float(log.created_at[i]), 0, i) for i in range(len(log))]
        + [(float(max(log.time[i], log.created_at[i])), 1, i) for i in range(len(log))]
    )
    for _, is_feedback, i in events:
        if not is_feedback:
            decide(i)
        else:
            policy.learn(
                log.contexts[i],
                log.model[i],
                float(log.quality[i]),
                float(log.cost[i]),
                propensity=float(log.propensity[i]),
            )
    return out


# --- reward model for DR -------------------------------------------------------------------


def reward_model(
    contexts: np.ndarray,
    chosen: np.ndarray,
    reward: np.ndarray,
    n_models: int,
    *,
    alpha: float = 1.0,
    folds: int = 2,
) -> np.ndarray:
    """Cross-fitted ridge predictions ĥ(x_i, a) of every model's reward, shape (n, K).

    contexts: shape (n, d); chosen: logged model index, shape (n,); reward: shape (n,).
    One ridge regression per model (unpenalised intercept) on the rows where that model
    was chosen; row i's prediction comes from the fit on the other folds, so the DR
    correction r - ĥ is not absorbed by a fit that saw r. Folds alternate rows in time,
    so each spans the whole log. A model with no row in the training folds gets the
    folds' mean reward. Predictions are clipped to the logged reward range.
    """
    x = np.asarray(contexts, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    n = r.size
    if x.shape[0] != n or chosen.shape != (n,):
        raise ValueError(f"contexts {x.shape}, chosen {chosen.shape}, reward {r.shape} disagree")
    if folds < 2 or n < folds:
        raise ValueError(f"need 2 <= folds <= n rows, got folds={folds}, n={n}")
    fold = np.arange(n) % folds
    out = np.empty((n, n_models))
    for f in range(folds):
        train, test = fold != f, fold == f
        for k in range(n_models):
            rows = train & (chosen == k)
            if not rows.any():
                out[test, k] = r[train].mean()
                continue
            out[test, k] = _ridge_predict(x[rows], r[rows], x[test], alpha)
    return np.clip(out, r.min(), r.max())


def _ridge_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, alpha: float) -> np.ndarray:
    # centring leaves the intercept unpenalised: β = (XcᵀXc + αI)⁻¹ Xcᵀ(y - ȳ)
    mx, my = x.mean(axis=0), y.mean()
    xc = x - mx
    beta = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return my + (x_new - mx) @ beta


# --- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetEstimate:
    """One target's estimated mean reward per query: estimates[name] for each of
    `ESTIMATORS`, each with value, interval, ESS, n and warnings."""

    target: str
    estimates: dict[str, OffPolicyEstimate]


def evaluate(
    log: DecisionLog,
    targets: Sequence[TargetSpec],
    *,
    cost_weight: float = 0.2,
    cost_scale: float | None = None,
    level: float = 0.95,
    ridge_alpha: float = 1.0,
) -> list[TargetEstimate]:
    """IPS, SNIPS and DR estimates of each target's mean reward on the logged traffic.

    cost_weight: λ of the reward the targets are valued by; cost_scale: USD per
    normalised cost unit (default `log_cost_scale`); level: interval coverage.
    """
    if len(log) < 2:
        raise ValueError(f"off-policy estimates need at least 2 logged decisions, got {len(log)}")
    scale = log_cost_scale(log) if cost_scale is None else cost_scale
    if cost_scale is None and scale == 0:
        scale = 1.0  # every logged cost is 0: the cost term vanishes whatever the scale
    r = log_rewards(log, cost_weight, scale)
    chosen = log.chosen
    rows = np.arange(len(log))
    h = reward_model(log.contexts, chosen, r, len(log.models), alpha=ridge_alpha)
    h_logged = h[rows, chosen]
    out = []
    for spec in targets:
        probs = target_probabilities(build_target(spec, log.models, log.dim, cost_weight), log)
        pi = probs[rows, chosen]
        h_target = (probs * h).sum(axis=1)
        p = log.propensity
        estimates = {
            "IPS": metrics.ips(r, p, pi, level=level),
            "SNIPS": metrics.snips(r, p, pi, level=level),
            "DR": metrics.doubly_robust(r, p, pi, h_logged, h_target, level=level),
        }
        # where the logger chose with certainty, whatever the target would do instead
        # was never tried: no weighting can value it
        unsupported = float(np.mean(np.where(p >= 1.0 - 1e-9, 1.0 - pi, 0.0)))
        if unsupported > MAX_UNSUPPORTED:
            why = (
                f"{unsupported:.1%} of the target's probability is on models a deterministic "
                "logger never tried on those rows: IPS is biased towards 0, SNIPS values "
                "only the supported part, DR leans on its reward model"
            )
            estimates = {k: replace(e, warnings=(*e.warnings, why)) for k, e in estimates.items()}
        out.append(TargetEstimate(spec.text, estimates))
    return out
