"""`banditroute budgets`: the service's pacer holding spend targets in a replay
(simulator/budgets.py), with mid-stream changes and the fixed-λ hindsight frontier.

Registered on the service's app when `simulator.cli` (the console entry point) imports
this module; the heavy imports wait until the command runs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from service.cli import app


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of numbers", param_hint=option) from None


def _sampled_contexts(
    data: Path, limit: int, sample: int, projection_dim: int, cache_dir: Path
) -> tuple[Any, Any]:
    """The table (its first `limit` rows, then a seeded sample of `sample` of them) and
    its contexts, as `simulate` makes them; only the rows kept are embedded (a sample
    of a large set costs its share of the embedding time, not all of it)."""
    import os

    import numpy as np

    from service.embedder import Embedder
    from service.features import Featurizer
    from simulator.data import load_routing_data
    from simulator.embeddings import embed_texts

    rd = load_routing_data(data)
    if limit:
        rd = rd.subset(np.arange(min(limit, len(rd))))
    if sample and sample < len(rd):
        rows = np.sort(np.random.default_rng(0).choice(len(rd), size=sample, replace=False))
        rd = rd.subset(rows)
    # the embedding backend as in simulate (BANDITROUTE_EMBED_BACKEND, torch by default)
    backend: Any = os.environ.get("BANDITROUTE_EMBED_BACKEND", "torch")
    embedder = Embedder(backend=backend)
    emb = embed_texts(rd.prompts, embedder, cache_dir=cache_dir)
    lengths = np.fromiter((len(p) for p in rd.prompts), dtype=np.float64)
    featurizer = Featurizer(embedder, projection_dim=projection_dim or None)
    return rd, featurizer.transform_embeddings(emb, lengths)


@app.command()
def budgets(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="RouterBench table (.parquet/.pkl/.csv)"),
    ],
    out: Annotated[Path, typer.Option(help="directory for budgets.md and budgets.json")] = Path(
        "out/budgets"
    ),
    img_dir: Annotated[
        Path | None, typer.Option(help="directory for the PNG plots (default: OUT)")
    ] = None,
    prefix: Annotated[str, typer.Option(help="plot file names: PREFIX-budget-*.png")] = "",
    fractions: Annotated[
        str, typer.Option(help="targets, as fractions of the best single model's cost per query")
    ] = "0.25,0.5,0.75",
    lams: Annotated[
        str, typer.Option(help="fixed λ grid of the hindsight frontier")
    ] = "0,0.02,0.05,0.1,0.15,0.2,0.3,0.5,1,3",
    step: Annotated[
        str,
        typer.Option(
            help="the pacer's step (PacerConfig.step), 'log:<step>' for a step on log λ "
            "(scale log); several: one report each, the mid-stream changes with the first only"
        ),
    ] = "log:0.02",
    start_lam: Annotated[float, typer.Option(min=0.0, help="λ the pacer starts from")] = 0.2,
    change_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="target of the mid-stream changes (price cut, quality drop, new model), "
            "a fraction as in --fractions; 0: no changes",
        ),
    ] = 0.25,
    seeds: Annotated[int, typer.Option(min=1, help="replays per setting, each a new order")] = 3,
    delay: Annotated[int, typer.Option(min=0, help="decisions before feedback arrives")] = 0,
    batch: Annotated[
        int, typer.Option(min=1, help="outcomes the learner applies at once (a snapshot)")
    ] = 1,
    projection_dim: Annotated[
        int, typer.Option(min=0, help="random projection of the embedding; 0 keeps 384")
    ] = 64,
    limit: Annotated[int, typer.Option(min=0, help="use only the first N prompts (0: all)")] = 0,
    sample: Annotated[
        int, typer.Option(min=0, help="use a seeded random N of the prompts (0: all)")
    ] = 0,
    cache_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path(".cache/embeddings"),
    jobs: Annotated[
        int, typer.Option(min=0, help="worker processes (0: one per CPU; 1: serial)")
    ] = 0,
) -> None:
    """Pace the hybrid policy's λ to spend targets (fractions of the best single model's
    cost per query) with the service's pacer, and compare each with the fixed λ chosen in
    hindsight for the same realised spend; then a 50% price cut, a quality drop and a
    new model mid-stream. Writes OUT/budgets.md, OUT/budgets.json and the plots."""
    from simulator.budget_report import write_budget_report
    from simulator.budgets import budget_steps, run_budgets
    from simulator.feedback import FeedbackSpec
    from simulator.parallel import default_jobs
    from simulator.replay import cost_scale_of, progress_bar

    fr = _floats(fractions, "--fractions")
    grid = _floats(lams, "--lams")
    steps = _steps(step)
    if not fr or any(not 0 < f for f in fr):
        raise typer.BadParameter("give positive fractions", param_hint="--fractions")
    if not grid or any(v < 0 for v in grid):
        raise typer.BadParameter("give λ values >= 0", param_hint="--lams")
    if not steps or any(v <= 0 for _, v in steps):
        raise typer.BadParameter("give steps > 0", param_hint="--step")
    console = Console()
    rd, X = _sampled_contexts(data, limit, sample, projection_dim, cache_dir)
    scale = cost_scale_of(rd)
    changes = 3 if change_fraction > 0 else 0
    bar = progress_bar(
        budget_steps(len(rd), len(fr) * len(steps), len(grid), changes, seeds),
        "budgets: replaying",
    )
    common: dict[str, Any] = {
        "cost_scale": scale,
        "seeds": seeds,
        "start_lam": start_lam,
        "feedback": FeedbackSpec(delay=delay, batch=batch),
        "progress": bar.update,
        "jobs": jobs or default_jobs(),
    }
    # the fixed-λ grid does not depend on the step: replayed once, shared by every step
    fixed = run_budgets(rd, X, fractions=(), lams=grid, change_fraction=None, **common).fixed
    runs = []
    for k, (sc, v) in enumerate(steps):
        # the mid-stream changes with the first step only: later steps are compared on
        # the targets alone (their changes would double the run)
        run = run_budgets(
            rd,
            X,
            fractions=fr,
            lams=(),
            step=v,
            scale=sc,
            change_fraction=(change_fraction or None) if k == 0 else None,
            **common,
        )
        runs.append(replace(run, fixed=fixed))
    bar.close()
    for k, run in enumerate(runs):
        # the first step's report in OUT, the others' beside it in OUT/step-<step>
        tag = run.label.replace(":", "-")
        where = out if k == 0 else out / f"step-{tag}"
        name = (prefix or rd.name) + ("" if k == 0 else f"-step-{tag}")
        report = write_budget_report(
            run,
            where,
            f"Budgets on {rd.name}: {len(rd)} prompts"
            + (f" (a seeded sample of {sample})" if sample else "")
            + f", {len(rd.models)} models, projection {projection_dim or 384}, pacer step "
            f"{run.label}, feedback delay {delay}, batch {batch}",
            name,
            img_dir,
        )
        _print(console, run, seeds)
        console.print(f"report: {report}")


def _print(console: Console, run: Any, seeds: int) -> None:
    from simulator.budgets import summarise_change

    table = Table(
        title=f"{run.name}: paced spend after warm-up (queries {run.warmup} on) vs target, "
        f"{seeds} seeds, step {run.label} (mean ± 95% CI); targets: % of {run.best}'s "
        f"{1000 * run.best_cost:.4f} USD / 1k"
    )
    for col in (
        "target",
        "USD / 1k",
        "realised",
        "error",
        "quality",
        "fixed-λ frontier",
        "paced − frontier",
        "spend",
        "quality",
    ):
        table.add_column(col, justify="right")
    for c in run.compliance():
        table.add_row(
            f"{100 * c.fraction:g}%",
            f"{c.target:.4f}",
            str(c.spend),
            f"{100 * c.error.mean:+.2f}% ± {50 * (c.error.high - c.error.low):.2f}",
            str(c.quality),
            str(c.frontier_quality),
            str(c.gap),
            ("met" if c.spend_met else "missed") + (" (slack)" if c.slack else ""),
            "met" if c.quality_met else "missed",
        )
    console.print(table)
    if not run.changes:
        return
    ch = Table(title=f"mid-stream changes, paced to {100 * run.change_fraction:g}%")
    for col in (
        "change",
        "model",
        "spend before",
        "first 1k after",
        "after",
        "quality before",
        "after",
        "share before",
        "after",
        "recovery",
    ):
        ch.add_column(col, justify="right")
    for name in run.changes:
        s = summarise_change(run, name)
        ch.add_row(
            s.name,
            s.model,
            str(s.spend_before),
            str(s.spend_first_1k),
            str(s.spend_after),
            str(s.quality_before),
            str(s.quality_after),
            str(s.share_before),
            str(s.share_after),
            str(s.recovery) if s.recovery is not None else "never",
        )
    console.print(ch)


def _steps(raw: str) -> list[tuple[Literal["linear", "log"], float]]:
    """--step values: "0.02" (on λ) or "log:0.05" (on log λ)."""
    out: list[tuple[Literal["linear", "log"], float]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        scale, _, value = part.rpartition(":")
        if scale not in ("", "log"):
            raise typer.BadParameter(f"{part!r}: a step is N or log:N", param_hint="--step")
        try:
            out.append(("log" if scale else "linear", float(value)))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not a number", param_hint="--step") from None
    return out
