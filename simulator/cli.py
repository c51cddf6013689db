"""Simulator commands of the `banditroute` CLI, registered on the service's app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import service.abcli  # noqa: F401  (registers `ab` and `log`)
import simulator.budget_cli  # noqa: F401  (registers `budgets`)
import simulator.ope_cli  # noqa: E402,F401  (registers the command)
from service.cli import app
from service.runtime import single_threaded_blas
from simulator.stats import mean_ci

DEFAULT_POLICIES = "hybrid,linucb,thompson,vw,random,best-fixed"


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
    ] = 0,
    limit: Annotated[int, typer.Option(min=0, help="use only the first N prompts (0: all)")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path(".cache/embeddings"),
    models: Annotated[
        str, typer.Option(help="comma-separated models to replay (default: all of the table)")
    ] = "",
    jobs: Annotated[
        int, typer.Option(min=0, help="worker processes (0: one per CPU; 1: serial)")
    ] = 0,
) -> None:
    """Replay logged outcomes online through the bandits and static routers, and print
    mean quality, cost, reward and regret against the oracle (95% intervals over seeds)."""
    from simulator.parallel import default_jobs
    from simulator.replay import cost_scale_of, progress_bar, rewards
    from simulator.simulate import RouterSpec, run_online

    console = Console()
    rd, X = _selected_contexts(data, models, limit, projection_dim, cache_dir)
    scale = cost_scale_of(rd)
    r = rewards(rd, cost_weight, scale)
    best = rd.models[int(np.nanargmax(np.nanmean(r, axis=0)))]

    names = [p.strip() for p in policies.split(",") if p.strip()]
    specs = [
        RouterSpec(n, "fixed", {"model": best}) if n == "best-fixed" else RouterSpec(n, n)
        for n in names
    ]
    bar = progress_bar(len(names) * seeds * len(rd), "replaying")
    results = run_online(
        rd,
        X,
        specs,
        seeds=seeds,
        lam=cost_weight,
        cost_scale=scale,
        progress=bar.update,
        jobs=jobs or default_jobs(),
    ).runs
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


@app.command()
def simulate(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="RouterBench table (.parquet/.pkl/.csv)"),
    ],
    out: Annotated[Path, typer.Option(help="directory for report.md and the PNG plots")] = Path(
        "out/simulate"
    ),
    policies: Annotated[
        str, typer.Option(help="learning policies: hybrid, linucb, thompson, vw, vw-epsilon")
    ] = "hybrid,linucb,thompson,vw,vw-epsilon",
    supervised: Annotated[
        str, typer.Option(help="supervised references: knn, ridge, mf (empty: none)")
    ] = "knn,ridge,mf",
    seeds: Annotated[int, typer.Option(min=1, help="replays per router")] = 3,
    cost_weight: Annotated[float, typer.Option(min=0.0, help="lambda of the online run")] = 0.2,
    lams: Annotated[
        str, typer.Option(help="lambda sweep of the deploy protocol (the frontier)")
    ] = "0,0.1,0.2,0.5,1,2,5",
    projection_dim: Annotated[int, typer.Option(min=0, help="0 keeps 384")] = 0,
    limit: Annotated[int, typer.Option(min=0, help="use only the first N prompts (0: all)")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path(".cache/embeddings"),
    ope_log: Annotated[
        str, typer.Option(help="the router whose logged propensities OPE uses")
    ] = "random",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="a learning policy's parameter, e.g. --set linucb.alpha=0.1 (repeatable)",
        ),
    ] = None,
    models: Annotated[
        str,
        typer.Option(
            help="comma-separated models to replay (default: all of the table); with "
            "exactly two, the report adds APGR and CPT (RouteLLM)"
        ),
    ] = "",
    jobs: Annotated[
        int, typer.Option(min=0, help="worker processes (0: one per CPU; 1: serial)")
    ] = 0,
    cascades: Annotated[
        str,
        typer.Option(
            help="cascades as arms next to the models: 'auto' (cheapest>strongest, and "
            "cheap>mid>strong where a mid model exists) or chains A>B[,A>M>B]; empty: none"
        ),
    ] = "",
    cascade_noise: Annotated[
        float, typer.Option(min=0.0, help="σ of the simulated confidence (0.1 low, 0.4 high)")
    ] = 0.25,
    cascade_thresholds: Annotated[
        str, typer.Option(help="escalation thresholds of each chain, in [0, 1]")
    ] = "0.3,0.5,0.7,0.9",
    sensitive_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="share of queries marked sensitive (local models only); 0: off"
        ),
    ] = 0.0,
    local_models: Annotated[
        str,
        typer.Option(
            help="comma-separated models allowed on sensitive queries (default: the "
            "open-weight ones; if all are, those at most the median model's mean cost)"
        ),
    ] = "",
) -> None:
    """Every router side by side: the online protocol (regret, cost, traffic share), the
    deploy protocol over a lambda sweep (frontier, AIQ, cost at 95%/100% of the best
    model's quality, as deployed and greedy) with supervised references and the oracle,
    strong/weak metrics for two models, off-policy estimates of the static routers, and
    drift and new-model scenarios. Writes OUT/report.md and PNGs (and OUT/apgr.csv).
    With --cascades, a Cascades section (each cascade, the bandits over models and
    cascades, their frontier); with --sensitive-share, a Privacy section (the cost of
    keeping sensitive queries on local models)."""
    from simulator.parallel import default_jobs
    from simulator.replay import cost_scale_of, progress_bar, replay_online, seeded_order
    from simulator.report import write_report
    from simulator.scenarios import Scenario
    from simulator.simulate import (
        build,
        deploy_steps,
        learning_spec,
        off_policy,
        run_deploy,
        run_online,
        static_specs,
    )

    console = Console()
    rd, X = _selected_contexts(data, models, limit, projection_dim, cache_dir)
    scale = cost_scale_of(rd)
    try:
        learning = [learning_spec(p.strip()) for p in policies.split(",") if p.strip()]
        sup = [s.strip() for s in supervised.split(",") if s.strip()]
        sweep = [float(v) for v in lams.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        overrides = parse_overrides(set_ or [], {s.name for s in learning})
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    statics = static_specs(rd, cost_weight, scale)
    if ope_log not in {s.name for s in learning + statics}:
        raise typer.BadParameter(f"{ope_log!r} is not a router of this run", param_hint="--ope-log")
    has_split = {"train", "test"} <= set(rd.split.tolist())
    family, local = _cascades_and_local(
        rd, cascades, cascade_thresholds, sensitive_share, local_models, has_split
    )
    total = (len(learning) + len(statics)) * seeds * len(rd) + len(rd) * (2 + len(statics))
    if has_split:
        total += deploy_steps(rd, len(learning), sweep, seeds, cost_weight)
    if family:
        from simulator.cascades import cascade_steps

        total += cascade_steps(rd, len(learning), sweep, seeds)
    if local is not None:
        from simulator.privacy import privacy_steps

        # the plain online run is reused as the unrestricted side where nothing is dropped
        total += privacy_steps(rd, sensitive_share, local, learning, seeds, reuse=True)
    bar = progress_bar(total, "simulating")
    n_jobs = jobs or default_jobs()
    online = run_online(
        rd,
        X,
        learning + statics,
        seeds=seeds,
        lam=cost_weight,
        cost_scale=scale,
        overrides=overrides,
        progress=bar.update,
        jobs=n_jobs,
    )
    deploy = None
    if has_split:
        deploy = run_deploy(
            rd,
            X,
            learning,
            sup,
            lams=sweep,
            seeds=seeds,
            cost_scale=scale,
            overrides=overrides,
            progress=bar.update,
            jobs=n_jobs,
            pair_lam=cost_weight,
        )
    cascade_run = None
    if family and deploy is not None:
        from simulator.cascades import run_cascades

        cascade_run = run_cascades(
            rd,
            X,
            learning,
            deploy,
            family,
            noise=cascade_noise,
            lams=sweep,
            seeds=seeds,
            cost_scale=scale,
            overrides=overrides,
            progress=bar.update,
            jobs=n_jobs,
        )
    privacy_run = None
    if local is not None:
        from simulator.privacy import run_privacy

        privacy_run = run_privacy(
            rd,
            X,
            learning,
            share=sensitive_share,
            local=local,
            seeds=seeds,
            lam=cost_weight,
            cost_scale=scale,
            overrides=overrides,
            baseline={s.name: online.runs[s.name] for s in learning},
            progress=bar.update,
            jobs=n_jobs,
        )
    # drift and a new model, on the first learning policy: the best model in hindsight
    # halves its quality midway / is held back until midway
    scenarios = {}
    if learning:
        best = next(s.params["model"] for s in statics if s.name.startswith("best fixed"))
        for label, sc in (
            ("drift", Scenario("drift", at=0.5, model=best, factor=0.5)),
            ("new-model", Scenario("new", at=0.5, model=best)),
        ):
            policy = build(
                learning[0], rd, X.shape[1], 0, cost_weight, scale, overrides.get(learning[0].name)
            )
            scenarios[f"{label} ({learning[0].name}, {best})"] = replay_online(
                policy,
                X,
                rd,
                seeded_order(len(rd), 0),
                lam=cost_weight,
                cost_scale=scale,
                scenario=sc,
                name=learning[0].name,
                progress=bar.update,
            )
    # off-policy: the static routers valued from one replay's logged propensities; the
    # random router logs with full support, a deterministic bandit's ε floor gives tiny
    # propensities (and the report's ESS column shows what that costs)
    log = online.runs[ope_log][0]
    truth = {s.name: float(np.mean(online.runs[s.name][0].reward)) for s in statics}
    ope = off_policy(log, rd, X, [s for s in statics if s.name != ope_log], truth)
    bar.update(len(rd) * len(statics))
    bar.close()
    report = write_report(
        out,
        f"Simulation of {rd.name}: {len(rd)} prompts, {len(rd.models)} models, {seeds} seeds"
        + (f" (models: {', '.join(rd.models)})" if models.strip() else "")
        + "".join(f"; {n} {p}" for n, p in overrides.items()),
        online,
        deploy,
        ope,
        scenarios,
        rd.models,
        [s.name for s in learning],
        ope_log=ope_log,
        cascades=cascade_run,
        privacy=privacy_run,
    )
    table = Table(title=f"online replay of {rd.name}, lambda={cost_weight} (mean ± 95% CI)")
    for col in ("router", "quality", "USD / 1k", "reward", "regret vs oracle"):
        table.add_column(col, justify="right")
    for name, m in online.summary().items():
        table.add_row(
            name, str(m["quality"]), str(m["usd_per_1k"]), str(m["reward"]), str(m["regret_oracle"])
        )
    console.print(table)
    if cascade_run is not None:
        _print_cascades(console, cascade_run)
    if privacy_run is not None:
        _print_privacy(console, privacy_run)
    console.print(f"report: {report}")


def _cascades_and_local(
    rd: Any, cascades: str, thresholds: str, share: float, local_models: str, has_split: bool
) -> tuple[list[Any], list[str] | None]:
    """The cascade family of --cascades (empty: none) and the local models of
    --local-models (None when --sensitive-share is 0), checked against the table."""
    family: list[Any] = []
    if cascades.strip():
        from simulator.cascades import family as make_family
        from simulator.cascades import parse_chains

        if not has_split:
            raise typer.BadParameter(
                "cascades are evaluated by the deploy protocol: the table needs a "
                "train and a test split",
                param_hint="--cascades",
            )
        try:
            family = make_family(parse_chains(cascades, rd), _floats(thresholds))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--cascades") from None
    local = None
    if share > 0:
        from simulator.privacy import parse_local

        try:
            local = parse_local(local_models, rd)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--local-models") from None
    return family, local


def _print_cascades(console: Console, run: Any) -> None:
    ref, ref_cost, ref_q, _ = run.reference()
    table = Table(
        title=f"cascades (σ = {run.noise:g}): reaching {ref}'s test quality {ref_q:.3f} "
        f"(cost as % of its {1000 * ref_cost:.4f} USD / 1k)"
    )
    for col in ("router", "frontier cost to reach it", "cheapest λ point", "seeds below"):
        table.add_column(col, justify="right")
    best = run.cheapest_static()
    table.add_row(
        f"cheapest cascade alone ({best.cascade.name})" if best else "cascades alone",
        f"{100 * best.cost.mean / ref_cost:.1f}%" if best else "not reached",
        "-",
        "-",
    )
    for key in run.points:
        r = run.reach(key)
        table.add_row(
            key,
            f"{r.frontier_pct:.1f}%" if np.isfinite(r.frontier_pct) else "not reached",
            f"{r.point_pct:.1f}% (λ={r.point_lam:g})" if r.point_lam is not None else "-",
            f"{r.seeds_below}/{r.seeds}",
        )
    console.print(table)


def _print_privacy(console: Console, run: Any) -> None:
    table = Table(
        title=f"privacy: {100 * run.share:g}% sensitive, local only ({len(run.local)} of "
        f"{len(run.models)} models); with − without (mean ± 95% CI)"
    )
    for col in ("router", "Δ quality", "Δ USD / 1k", "Δ reward"):
        table.add_column(col, justify="right")
    for name, row in run.table().items():
        table.add_row(
            name,
            *(str(row[k][2]) if k in row else "-" for k in ("quality", "usd_per_1k", "reward")),
        )
    console.print(table)
    console.print(f"sensitive queries routed to a non-local model: {run.violations()}")


def _selected_contexts(
    data: Path, models: str, limit: int, projection_dim: int, cache_dir: Path
) -> tuple[Any, np.ndarray]:
    """`_contexts` narrowed to the --models (all when empty): the first `limit` rows of
    the table, less those where none of the models has an outcome."""
    from simulator.data import load_routing_data

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        return _contexts(data, limit, projection_dim, cache_dir)
    try:
        # checked before the embedder loads, so a typo fails at once
        load_routing_data(data).select_models(names)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--models") from None
    rd, X = _contexts(data, limit, projection_dim, cache_dir)
    narrowed, rows = rd.select_models(names)
    if not len(rows):
        raise typer.BadParameter(f"no prompt has an outcome of {names}", param_hint="--models")
    return narrowed, X[rows]


def _contexts(
    data: Path, limit: int, projection_dim: int, cache_dir: Path
) -> tuple[Any, np.ndarray]:
    """The routing table and its policy contexts, embedded once through the cache."""
    rd, featurize = _embedded(data, limit, cache_dir)
    return rd, featurize(projection_dim)


def _embedded(data: Path, limit: int, cache_dir: Path) -> tuple[Any, Any]:
    """The routing table and a function from projection dim (0: none) to its contexts."""
    import os

    from service.embedder import Embedder
    from service.features import Featurizer
    from simulator.data import load_routing_data
    from simulator.embeddings import embed_texts

    rd = load_routing_data(data)
    if limit:
        rd = rd.subset(np.arange(min(limit, len(rd))))
    # torch unless BANDITROUTE_EMBED_BACKEND (the service's setting) names another: the
    # embedding cache is kept per backend, and torch made every published result
    backend: Any = os.environ.get("BANDITROUTE_EMBED_BACKEND", "torch")
    embedder = Embedder(backend=backend)
    emb = embed_texts(rd.prompts, embedder, cache_dir=cache_dir)
    lengths = np.fromiter((len(p) for p in rd.prompts), dtype=np.float64)

    def featurize(dim: int) -> np.ndarray:
        featurizer = Featurizer(embedder, projection_dim=dim or None)
        return featurizer.transform_embeddings(emb, lengths)

    return rd, featurize


@app.command()
def tune(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="RouterBench table (.parquet/.pkl/.csv)"),
    ],
    out: Annotated[Path, typer.Option(help="directory for tune.md, tune.csv, config.yaml")] = Path(
        "out/tune"
    ),
    policies: Annotated[
        str, typer.Option(help="learning policies: hybrid, linucb, thompson, vw, vw-epsilon")
    ] = "hybrid,linucb,thompson,vw,vw-epsilon",
    alpha: Annotated[
        str, typer.Option(help="LinUCB and hybrid exploration widths")
    ] = "0.1,0.3,1",
    v: Annotated[str, typer.Option(help="Thompson posterior variance scales")] = "0.1,0.3,1",
    epsilon: Annotated[str, typer.Option(help="VW epsilon-greedy rates")] = "0.02,0.05,0.1",
    gamma_scale: Annotated[str, typer.Option(help="VW SquareCB gamma scales")] = "10,100",
    gamma: Annotated[
        str, typer.Option(help="forgetting factors of LinUCB/Thompson (1: none)")
    ] = "1,0.999",
    projection_dims: Annotated[str, typer.Option(help="embedding projections (0: 384)")] = "32,64",
    learn_lams: Annotated[
        str, typer.Option(help="lambda the policy routes with while learning")
    ] = "0.1,0.2,0.5",
    cost_weight: Annotated[
        float, typer.Option(min=0.0, help="target lambda: the reward every setting is scored by")
    ] = 0.2,
    seeds: Annotated[int, typer.Option(min=1, help="replays per setting")] = 2,
    prices: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="CSV name,input_price,output_price (USD/1M tokens): models in the config",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="use only the first N prompts (0: all)")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path(".cache/embeddings"),
) -> None:
    """Grid search of exploration settings (alpha, Thompson v, epsilon, gamma, projection
    dim, lambda while learning) by online replay of the train split over seeds. Each
    policy's best setting on train is then replayed afresh on the held-out test split,
    next to every static router: that held-out reward is the result (OUT/tune.md,
    OUT/heldout.json); the train score only selects. A table without both a train and a
    test split is split 50/50 by a seeded shuffle of its rows (seed 0). Writes the best
    as OUT/config.yaml (loadable by `serve --config`), and a sensitivity table."""
    from simulator.replay import cost_scale_of, progress_bar
    from simulator.simulate import static_specs
    from simulator.tune import grid, run_heldout, run_tune, split_rows
    from simulator.tune_report import write_tune_report

    console = Console()
    try:
        values = {
            "alpha": _floats(alpha),
            "v": _floats(v),
            "epsilon": _floats(epsilon),
            "gamma_scale": _floats(gamma_scale),
            "gamma": _floats(gamma),
        }
        points = grid(
            [p.strip() for p in policies.split(",") if p.strip()],
            values,
            [int(d) for d in _floats(projection_dims)],
            _floats(learn_lams),
        )
        models = _price_table(prices) if prices else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    rd, featurize = _embedded(data, limit, cache_dir)
    try:
        train_rows, test_rows, how = split_rows(rd)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    rd_train, rd_test = rd.subset(train_rows), rd.subset(test_rows)
    # the cost unit comes from train, like everything the settings are chosen by
    scale = cost_scale_of(rd_train)
    features: dict[int, np.ndarray] = {}

    def contexts(dim: int, rows: np.ndarray) -> np.ndarray:
        if dim not in features:  # both splits of a dim from one featurisation
            features[dim] = featurize(dim)
        return features[dim][rows]

    kinds = len({p.kind for p in points})
    statics = len(static_specs(rd_train, cost_weight, scale))
    bar = progress_bar(
        len(points) * seeds * len(rd_train) + (kinds + statics) * seeds * len(rd_test),
        f"tuning {len(points)} settings, then held-out",
    )
    result = run_tune(
        points,
        lambda dim: contexts(dim, train_rows),
        rd_train,
        target_lam=cost_weight,
        cost_scale=scale,
        seeds=seeds,
        progress=bar.update,
    )
    heldout = run_heldout(
        result,
        lambda dim: contexts(dim, test_rows),
        rd_train,
        rd_test,
        cost_scale=scale,
        split=how,
        progress=bar.update,
    )
    bar.close()
    report, config = write_tune_report(
        result,
        heldout,
        out,
        f"Tuning on {rd.name}: chosen on {len(rd_train)} train prompts, reported on "
        f"{len(rd_test)} held-out test prompts, {len(rd.models)} models",
        models,
    )
    table = Table(
        title=f"HELD-OUT reward on the test split ({len(rd_test)} prompts, {how}), "
        f"target lambda={cost_weight} (mean ± 95% CI); the train-split score only selected"
    )
    for col in (
        "router",
        "setting (chosen on train)",
        "held-out reward",
        "held-out, after warm-up",
        "train-split score",
    ):
        table.add_column(col)
    for r in heldout.rows:
        table.add_row(
            f"{r.name} (winner)" if r.name == heldout.winner else r.name,
            r.setting or "-",
            str(r.reward),
            str(r.reward_after_warmup),
            str(r.train_score) if r.train_score else "-",
        )
    console.print(table)
    win = heldout.row(heldout.winner)
    console.print(
        f"best on train: {win.setting} (train-split score {win.train_score}); "
        f"held-out reward on test: {win.reward}; config: {config}; report: {report}"
    )


@app.command()
def upstream(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 9101,
    model: Annotated[
        list[str] | None, typer.Option(help="a model for /v1/models (repeatable)")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="require `Authorization: Bearer KEY` on /v1")
    ] = None,
    latency_ms: Annotated[float, typer.Option(min=0.0, help="wait before answering")] = 0.0,
    chunk_ms: Annotated[float, typer.Option(min=0.0, help="wait between streamed chunks")] = 0.0,
    words: Annotated[int, typer.Option(min=0, help="words of an answer")] = 12,
) -> None:
    """A local OpenAI-compatible chat-completions server with deterministic, scriptable
    answers (errors, hangs, slow streams, exact usage; see simulator/upstream.py): a
    stand-in upstream for the gateway's tests, benchmarks and examples."""
    from simulator.upstream import serve

    serve(
        host,
        port,
        models=model or [],
        api_key=api_key,
        latency_ms=latency_ms,
        chunk_ms=chunk_ms,
        words=words,
    )


def parse_overrides(items: list[str], policies: set[str]) -> dict[str, dict[str, Any]]:
    """["linucb.alpha=0.1", ...] -> {"linucb": {"alpha": 0.1}}; numbers become floats."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, param = key.partition(".")
        if not eq or not dot or not param:
            raise ValueError(f"{item!r} is not of the form POLICY.PARAM=VALUE")
        if name not in policies:
            raise ValueError(f"{item!r}: {name!r} is not a learning policy of this run")
        try:
            parsed: Any = float(value)
        except ValueError:
            parsed = value
        out.setdefault(name, {})[param] = parsed
    return out


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None


def _price_table(path: Path) -> list[dict[str, Any]]:
    """The models of a price CSV as the service's catalogue entries."""
    import pandas as pd

    df = pd.read_csv(path)
    missing = {"name", "input_price", "output_price"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return [
        {
            "name": str(r.name),
            "input_per_m": float(r.input_price),
            "output_per_m": float(r.output_price),
        }
        for r in df.itertuples()
    ]


def main() -> None:
    single_threaded_blas()
    app()


if __name__ == "__main__":
    main()
