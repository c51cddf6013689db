"""Simulator commands of the `banditroute` CLI, registered on the service's app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from service.cli import app
from service.runtime import single_threaded_blas
from simulator.stats import mean_ci

DEFAULT_POLICIES = "linucb,thompson,vw,random,best-fixed"


@app.command()
def replay(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="RouterBench table (.parquet/.pkl/.csv)"),
    ],
    policies: Annotated[
        str, typer.Option(help="comma-separated: linucb, thompson, vw, random, best-fixed")
    ] = DEFAULT_POLICIES,
    seeds: Annotated[int, typer.Option(min=1, help="replays per policy, each a new order")] = 3,
    cost_weight: Annotated[
        float, typer.Option(min=0.0, help="lambda: quality points per priciest-model cost")
    ] = 0.2,
    projection_dim: Annotated[
        int, typer.Option(min=0, help="random projection of the embedding; 0 keeps 384")
    ] = 64,
    limit: Annotated[int, typer.Option(min=0, help="use only the first N prompts (0: all)")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path(".cache/embeddings"),
) -> None:
    """Replay logged outcomes online through the bandits and static routers, and print
    mean quality, cost, reward and regret against the oracle (95% intervals over seeds)."""
    from policies import make_policy
    from service.embedder import Embedder
    from service.features import Featurizer
    from simulator.data import load_routing_data
    from simulator.embeddings import embed_texts
    from simulator.replay import (
        cost_scale_of,
        progress_bar,
        replay_online,
        rewards,
        seeded_order,
    )

    console = Console()
    rd = load_routing_data(data)
    if limit:
        rd = rd.subset(np.arange(min(limit, len(rd))))
    embedder = Embedder()
    emb = embed_texts(rd.prompts, embedder, cache_dir=cache_dir)
    featurizer = Featurizer(embedder, projection_dim=projection_dim or None)
    lengths = np.fromiter((len(p) for p in rd.prompts), dtype=np.float64)
    X = featurizer.transform_embeddings(emb, lengths)
    scale = cost_scale_of(rd)
    r = rewards(rd, cost_weight, scale)
    best = rd.models[int(np.nanargmax(np.nanmean(r, axis=0)))]

    names = [p.strip() for p in policies.split(",") if p.strip()]
    results: dict[str, list] = {n: [] for n in names}
    bar = progress_bar(len(names) * seeds * len(rd), "replaying")
    for name in names:
        kind, params = ("fixed", {"model": best}) if name == "best-fixed" else (name, {})
        for seed in range(seeds):
            policy = make_policy(
                kind,
                rd.models,
                X.shape[1],
                seed=seed,
                cost_weight=cost_weight,
                cost_scale=scale,
                **params,
            )
            results[name].append(
                replay_online(
                    policy,
                    X,
                    rd,
                    seeded_order(len(rd), seed),
                    lam=cost_weight,
                    cost_scale=scale,
                    name=name,
                    seed=seed,
                    progress=bar.update,
                )
            )
    bar.close()

    table = Table(
        title=f"online replay of {rd.name}: {len(rd)} prompts, {len(rd.models)} models, "
        f"lambda={cost_weight}, {seeds} seeds (mean ± 95% CI half-width)"
    )
    for col in (
        "router",
        "quality",
        "USD / 1k queries",
        "reward",
        "regret vs oracle",
        "reward, last third",
    ):
        table.add_column(col, justify="right")
    for name, runs in results.items():
        third = len(runs[0].reward) // 3
        table.add_row(
            name if name != "best-fixed" else f"best-fixed ({best})",
            str(mean_ci([x.quality.mean() for x in runs])),
            str(mean_ci([1000 * x.cost.mean() for x in runs])),
            str(mean_ci([x.reward.mean() for x in runs])),
            str(mean_ci([x.regret.mean() for x in runs])),
            str(mean_ci([x.reward[-third:].mean() for x in runs])),
        )
    console.print(table)


def main() -> None:
    single_threaded_blas()
    app()


if __name__ == "__main__":
    main()
