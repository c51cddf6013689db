"""Load RouterBench-format routing tables: one row per prompt, a quality column per
model and a `<model>|total_cost` column with that call's cost in USD."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

COST_SUFFIX = "|total_cost"


@dataclass(frozen=True)
class RoutingData:
    """Logged outcomes of every model on every prompt.

    quality: shape (n, K), in [0, 1], NaN where a model has no result.
    cost: shape (n, K), USD per call, NaN where a model has no result.
    """

    name: str
    prompts: list[str]
    tasks: np.ndarray
    split: np.ndarray
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray

    @property
    def available(self) -> np.ndarray:
        """Mask of observed outcomes, shape (n, K); missing ones are never counted as 0."""
        return ~(np.isnan(self.quality) | np.isnan(self.cost))

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: np.ndarray) -> RoutingData:
        return RoutingData(
            name=self.name,
            prompts=[self.prompts[i] for i in np.asarray(rows)],
            tasks=self.tasks[rows],
            split=self.split[rows],
            models=list(self.models),
            quality=self.quality[rows],
            cost=self.cost[rows],
        )

    def select_models(self, models: Sequence[str]) -> tuple[RoutingData, np.ndarray]:
        """The table restricted to `models` (in the order given), and the indices into
        this table of the rows it keeps, shape (m,): a row where none of them has an
        outcome is dropped (nothing could be routed there); a missing outcome of one of
        them stays NaN, masked as everywhere else."""
        names = list(models)
        unknown = [m for m in names if m not in self.models]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known models: {self.models}")
        if not names:
            raise ValueError(f"no model selected; known models: {self.models}")
        repeated = sorted({m for m in names if names.count(m) > 1})
        if repeated:
            raise ValueError(f"model(s) {repeated} selected more than once")
        cols = [self.models.index(m) for m in names]
        narrowed = replace(
            self, models=names, quality=self.quality[:, cols], cost=self.cost[:, cols]
        )
        rows = np.flatnonzero(narrowed.available.any(axis=1))
        return narrowed.subset(rows), rows


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(p)
    if suffix in (".pkl", ".pickle"):
        # RouterBench ships a pandas pickle; only load files you trust
        return pd.read_pickle(p)
    if suffix == ".csv":
        return pd.read_csv(p)
    raise ValueError(f"unsupported data file {p.name!r}: use .parquet, .pkl or .csv")


def model_columns(df: pd.DataFrame) -> list[str]:
    """A model is a column `<model>` that has a matching `<model>|total_cost`."""
    return [c for c in df.columns if not c.endswith(COST_SUFFIX) and f"{c}{COST_SUFFIX}" in df]


def load_routing_data(path: str | Path) -> RoutingData:
    df = read_table(path)
    models = model_columns(df)
    if not models:
        raise ValueError(f"{path}: no model columns (expected <model> and <model>{COST_SUFFIX})")
    if "prompt" not in df:
        raise ValueError(f"{path}: no 'prompt' column")
    n = len(df)
    quality = df[models].to_numpy(dtype=np.float64)
    cost = df[[f"{m}{COST_SUFFIX}" for m in models]].to_numpy(dtype=np.float64)
    if np.nanmin(quality) < 0 or np.nanmax(quality) > 1:
        raise ValueError(f"{path}: quality outside [0, 1]")
    return RoutingData(
        name=Path(path).stem,
        prompts=[str(p) for p in df["prompt"]],
        tasks=df["eval_name"].astype(str).to_numpy() if "eval_name" in df else np.full(n, ""),
        split=df["split"].astype(str).to_numpy() if "split" in df else np.full(n, "train"),
        models=models,
        quality=quality,
        cost=cost,
    )
