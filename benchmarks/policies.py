"""Median microseconds of choose and learn per policy, context dimension and model count.

Each configuration runs `--calls` choose-then-learn rounds (the learner's loop, and the
simulator's), then times `choose` alone on a serving copy: the same state after
`prepare_serving()`, which is what a worker serves between snapshots.

Run: python -m benchmarks.policies [--calls N] [--kinds hybrid,thompson] [--dims 384]
     [--models 9,11]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from policies import make_policy
from service.runtime import single_threaded_blas

KINDS = ("linucb", "thompson", "hybrid", "vw")
DIMS = (384, 64)
MODEL_COUNTS = (2, 11, 29)


def measure(
    kind: str, dim: int, k: int, calls: int, warmup: int = 200
) -> tuple[float, float, float]:
    """Median (choose_us, learn_us) over `calls` choose-then-learn rounds, and the median
    choose_us of the serving copy of the state they leave, over the same contexts."""
    rng = np.random.default_rng(0)
    models = [f"model-{i}" for i in range(k)]
    policy = make_policy(kind, models, dim, seed=0)
    xs = rng.standard_normal((calls + warmup, dim))
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    choose_ns = np.empty(calls)
    learn_ns = np.empty(calls)
    for t, x in enumerate(xs):
        t0 = time.perf_counter_ns()
        d = policy.choose(x)
        t1 = time.perf_counter_ns()
        policy.learn(x, d.model, float(rng.random()), 1e-4, propensity=d.propensity)
        t2 = time.perf_counter_ns()
        if t >= warmup:
            choose_ns[t - warmup] = t1 - t0
            learn_ns[t - warmup] = t2 - t1
    policy.prepare_serving()
    served_ns = np.empty(calls)
    for t, x in enumerate(xs[warmup:]):
        t0 = time.perf_counter_ns()
        policy.choose(x)
        served_ns[t] = time.perf_counter_ns() - t0
    return (
        float(np.median(choose_ns) / 1e3),
        float(np.median(learn_ns) / 1e3),
        float(np.median(served_ns) / 1e3),
    )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    single_threaded_blas()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--kinds", type=lambda v: tuple(v.split(",")), default=KINDS)
    parser.add_argument("--dims", type=_ints, default=DIMS)
    parser.add_argument("--models", type=_ints, default=MODEL_COUNTS, help="model counts")
    args = parser.parse_args()
    table = Table(title=f"policy latency, median of {args.calls} calls (microseconds)")
    cols = ("policy", "d", "models", "choose us", "learn us", "choose+learn us", "served choose us")
    for col in cols:
        table.add_column(col, justify="right")
    for kind in args.kinds:
        for dim in args.dims:
            for k in args.models:
                c, lrn, served = measure(kind, dim, k, args.calls)
                figures = (c, lrn, c + lrn, served)
                table.add_row(kind, str(dim), str(k), *(f"{v:.0f}" for v in figures))
    Console().print(table)


if __name__ == "__main__":
    main()
