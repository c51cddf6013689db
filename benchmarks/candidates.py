"""Compare candidate default policies online, side by side on one shared set.

    python -m benchmarks.candidates DATA SEEDS 'NAME|KIND|JSON_PARAMS|CONTEXT' ...

CONTEXT: `full` (all 384 dimensions), `rpK` (a K-dim seeded random projection) or
`pcaK` (K principal components of the set's own unlabelled prompts, re-normalised).
Prints each candidate's mean reward after warm-up (2,000 queries) at λ = 0.2 per seed,
next to the best static router on the same rows. Seeds run in parallel processes.
Example:
    python -m benchmarks.candidates data/routerbench_arc_mbpp_winogrande.parquet 2 \\
        'hybrid|hybrid|{}|full' 'linucb|linucb|{}|rp64'
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from policies import make_policy
from simulator.cli import _embedded
from simulator.replay import cost_scale_of, replay_online, seeded_order

LAM = 0.2
_state: dict[str, Any] = {}


def _contexts(kind: str) -> np.ndarray:
    cache = _state.setdefault("ctx", {})
    if kind not in cache:
        featurize = _state["featurize"]
        full = featurize(0)
        if kind == "full":
            cache[kind] = full
        elif kind.startswith("rp"):
            cache[kind] = featurize(int(kind[2:]))
        elif kind.startswith("pca"):
            emb, rest = full[:, :384], full[:, 384:]
            centred = emb - emb.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            block = centred @ vt[: int(kind[3:])].T
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            cache[kind] = np.hstack([block, rest])
        else:
            raise SystemExit(f"unknown context {kind!r}: full, rpK or pcaK")
    return cache[kind]  # type: ignore[no-any-return]


def _run(task: tuple[str, str, dict[str, Any], str, int]) -> tuple[str, int, float, float]:
    name, kind, params, ctx, seed = task
    rd = _state["data"]
    X = _contexts(ctx)
    scale = cost_scale_of(rd)
    with threadpool_limits(1):
        policy = make_policy(
            kind, rd.models, X.shape[1], seed=seed, cost_weight=LAM, cost_scale=scale, **params
        )
        res = replay_online(policy, X, rd, seeded_order(len(rd), seed), lam=LAM, cost_scale=scale)
    n = len(res.reward)
    warm = 2000 if n >= 3000 else n // 3
    assert res.rewards_all is not None
    best_static = float(np.nanmax(np.nanmean(res.rewards_all[warm:], axis=0)))
    return name, seed, float(res.reward[warm:].mean()), best_static


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    data, seeds, specs = Path(argv[0]), int(argv[1]), argv[2:]
    _state["data"], _state["featurize"] = _embedded(data, 0, Path(".cache/embeddings"))
    tasks = []
    for spec in specs:
        name, kind, params, ctx = spec.split("|")
        _contexts(ctx)  # computed once here, inherited by the workers
        tasks += [(name, kind, json.loads(params), ctx, s) for s in range(seeds)]
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_run, tasks))
    for name in dict.fromkeys(t[0] for t in tasks):
        rows = [r for r in results if r[0] == name]
        tails = " ".join(f"{r[2]:.3f}" for r in rows)
        mean = np.mean([r[2] for r in rows])
        print(f"{name:32s} after warm-up {mean:.4f} (seeds {tails}); best static {rows[0][3]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
