"""What changes while a replay runs: a model's quality drops, the task mix shifts, a
model joins or leaves. A scenario turns the logged table and an arrival order into
the stream a router sees: per step, each model's outcome and whether it is offered."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.data import RoutingData


@dataclass(frozen=True)
class Stream:
    """The replay's input in arrival order; each array has one row per step.

    rows: index into the table; quality, cost: shape (n, K) as the router would
    observe them (NaN: no outcome); offered: shape (n, K), the models a router may choose.
    switch: the step at which the scenario's change takes effect (None: no change);
    joins: the model that first becomes available at `switch` ("new"), else None.
    """

    rows: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    offered: np.ndarray
    switch: int | None = None
    joins: str | None = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Scenario:
    """kind: "none"; "drift" (from `at`, model `model`'s quality is multiplied by
    `factor`); "mix" (the stream is reordered so that tasks in `tasks` come only after
    `at`, the others before); "new" (model `model` is offered only from `at`);
    "remove" (model `model` is withdrawn at `at`). `at` is a fraction of the stream
    in [0, 1]."""

    kind: str = "none"
    at: float = 0.5
    model: str | None = None
    factor: float = 0.0
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in {"none", "drift", "mix", "new", "remove"}:
            raise ValueError(f"kind must be none, drift, mix, new or remove, got {self.kind!r}")
        if not 0.0 <= self.at <= 1.0:
            raise ValueError(f"at must be a fraction in [0, 1], got {self.at}")
        if self.kind in {"drift", "new", "remove"} and not self.model:
            raise ValueError(f"scenario {self.kind!r} needs a model")
        if self.kind == "mix" and not self.tasks:
            raise ValueError("scenario 'mix' needs the tasks that arrive after the shift")
        if self.factor < 0:
            raise ValueError(f"factor must be >= 0, got {self.factor}")

    def stream(self, data: RoutingData, order: np.ndarray) -> Stream:
        avail = data.available
        if self.model is not None and self.model not in data.models:
            raise ValueError(f"model {self.model!r} is not in the data: {data.models}")
        order = np.asarray(order, dtype=np.int64)
        order = order[avail[order].any(axis=1)]
        t0 = self.switch_step(len(order))
        if self.kind == "mix":
            late = np.isin(data.tasks[order], list(self.tasks))
            if not late.any():
                raise ValueError(f"tasks {list(self.tasks)} do not occur in the data")
            order = np.concatenate([order[~late], order[late]])
            t0 = int((~late).sum())  # the shift happens where the late tasks begin
        rows = order
        quality = data.quality[rows].copy()
        cost = data.cost[rows].copy()
        offered = avail[rows].copy()
        if self.kind == "drift":
            k = data.models.index(str(self.model))
            quality[t0:, k] *= self.factor
        elif self.kind == "new":
            offered[:t0, data.models.index(str(self.model))] = False
        elif self.kind == "remove":
            offered[t0:, data.models.index(str(self.model))] = False
        # a step with nothing left to offer cannot be routed; it is dropped
        keep = offered.any(axis=1)
        switch = None if self.kind == "none" else int(keep[:t0].sum())
        return Stream(
            rows[keep],
            quality[keep],
            cost[keep],
            offered[keep],
            switch=switch,
            joins=self.model if self.kind == "new" else None,
        )

    def switch_step(self, n: int) -> int:
        return int(round(self.at * n))
