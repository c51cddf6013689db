"""`banditroute ope`: value other routers on the service's decision log (off-policy).

Registered on the service's app when `simulator.cli` (the console entry point) imports
this module; the heavy imports wait until the command runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.cli import app


@app.command()
def ope(
    log: Annotated[
        Path, typer.Option(dir_okay=False, help="decision log exported by the service (.parquet)")
    ],
    policy: Annotated[
        list[str],
        typer.Option(
            "--policy",
            help="target router, repeatable: fixed:MODEL, random, config:PATH, config:PATH#NAME",
        ),
    ],
    cost_weight: Annotated[
        float, typer.Option(min=0.0, help="lambda of the reward the targets are valued by")
    ] = 0.2,
    cost_scale: Annotated[
        float | None,
        typer.Option(help="USD per normalised cost unit (default: priciest model's mean cost)"),
    ] = None,
    level: Annotated[float, typer.Option(help="interval coverage, in (0, 1)")] = 0.95,
) -> None:
    """Estimate each target router's mean reward per query on the logged traffic (IPS,
    SNIPS, doubly robust) with intervals, effective sample sizes and warnings."""
    from simulator.ope import ESTIMATORS, build_target, evaluate, load_log, log_cost_scale
    from simulator.ope import parse_target as parse

    if not 0 < level < 1:
        raise typer.BadParameter(f"must lie in (0, 1), got {level}", param_hint="--level")
    if cost_scale is not None and not cost_scale > 0:
        raise typer.BadParameter(f"must be > 0 USD, got {cost_scale}", param_hint="--cost-scale")
    try:
        specs = [parse(p) for p in policy]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policy") from None
    if not log.is_file():
        raise typer.BadParameter(f"{log} does not exist", param_hint="--log")
    try:
        decisions = load_log(log)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--log") from None
    try:  # a target that does not fit the log (unknown model, bad parameters)
        for spec in specs:
            build_target(spec, decisions.models, decisions.dim, cost_weight)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policy") from None

    scale = log_cost_scale(decisions) if cost_scale is None else cost_scale
    results = evaluate(
        decisions, specs, cost_weight=cost_weight, cost_scale=cost_scale, level=level
    )
    console = Console()
    table = Table(
        title=f"off-policy estimates from {log.name}: {len(decisions)} decisions, "
        f"{len(decisions.models)} models, lambda={cost_weight}, cost scale ${scale:.3g}"
    )
    for col in ("target", "estimator", "value", f"{level:.0%} interval", "ESS", "n", "warnings"):
        if col == "target":  # a config path can be long: fold it, keep the numbers whole
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="left" if col == "estimator" else "right", no_wrap=True)
    for res in results:
        for name in ESTIMATORS:
            e = res.estimates[name]
            table.add_row(
                res.target,
                name,
                _num(e.value),
                f"[{_num(e.low)}, {_num(e.high)}]",
                f"{e.ess:.1f}",
                str(e.n),
                str(len(e.warnings)) if e.warnings else "-",
            )
        table.add_section()
    console.print(table)
    # the same warning usually applies to every estimator of a target: print it once
    for res in results:
        notes: dict[str, list[str]] = {}
        for name in ESTIMATORS:
            for w in res.estimates[name].warnings:
                notes.setdefault(w, []).append(name)
        for w, names in notes.items():
            line = f"warning: {res.target} ({', '.join(names)}): {w}"
            console.print(line, highlight=False, soft_wrap=True)


def _num(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}"
