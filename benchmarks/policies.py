"""Median microseconds of choose and learn per policy, context dimension and model count.

Run: python -m benchmarks.policies [--calls N]
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


def measure(kind: str, dim: int, k: int, calls: int, warmup: int = 200) -> tuple[float, float]:
    """Median (choose_us, learn_us) over `calls` choose-then-learn rounds."""
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
    return float(np.median(choose_ns) / 1e3), float(np.median(learn_ns) / 1e3)


def main() -> None:
    single_threaded_blas()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    table = Table(title=f"policy latency, median of {args.calls} calls (microseconds)")
    for col in ("policy", "d", "models", "choose us", "learn us", "choose+learn us"):
        table.add_column(col, justify="right")
    for kind in KINDS:
        for dim in DIMS:
            for k in MODEL_COUNTS:
                c, lrn = measure(kind, dim, k, args.calls)
                table.add_row(kind, str(dim), str(k), f"{c:.0f}", f"{lrn:.0f}", f"{c + lrn:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
