"""A budgets run (simulator/budgets.py) as a markdown report, a JSON of its figures and
PNG plots: spend over time against each target, and around each mid-stream change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.budgets import (  # noqa: E402
    TOLERANCE,
    BudgetRun,
    ChangeSummary,
    Compliance,
    PacedResult,
    rolling,
    summarise_change,
)
from simulator.stats import Interval  # noqa: E402

WINDOW = 500  # queries of the plots' trailing spend


def _mean_rolling(runs: list[PacedResult], x: str, window: int) -> np.ndarray:
    n = min(len(r.cost) for r in runs)
    return np.mean([rolling(getattr(r, x)[:n], window) for r in runs], axis=0)


def plot_spend(run: BudgetRun, path: Path, window: int = WINDOW) -> None:
    """Trailing spend (USD / 1k, mean over seeds) of each paced target, with its target
    and the ±2% band, and the fixed λ = 0 run's for scale."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (f, runs) in enumerate(sorted(run.paced.items())):
        tgt = run.target(f)
        y = 1000 * _mean_rolling(runs, "cost", window)
        x = np.arange(1, len(y) + 1)
        c = colours[i % len(colours)]
        ax.plot(x, y, color=c, label=f"paced to {100 * f:g}% ({tgt:.3g} USD / 1k)")
        ax.axhline(tgt, color=c, ls="--", lw=0.8)
        ax.axhspan(tgt * (1 - TOLERANCE), tgt * (1 + TOLERANCE), color=c, alpha=0.12)
    if 0.0 in run.fixed:
        y = 1000 * _mean_rolling(run.fixed[0.0], "cost", window)
        ax.plot(np.arange(1, len(y) + 1), y, color="grey", lw=0.8, label="fixed λ = 0")
    ax.axvline(run.warmup, color="black", ls=":", lw=0.8, label="end of warm-up")
    ax.set_xlabel("queries")
    ax.set_ylabel(f"spend, trailing {window} queries (USD / 1k)")
    ax.set_title(
        f"{run.name}: paced hybrid (step {run.label}), mean of {run.seeds} seeds; "
        f"targets: % of {run.best}'s cost",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_change(run: BudgetRun, name: str, path: Path, window: int = WINDOW) -> None:
    """Around one change: trailing spend against the target (top), the changed model's
    share and the λ routed with (bottom), mean over seeds."""
    runs = run.changes[name]
    model = run.change_model[name]
    tgt = run.target(run.change_fraction)
    switch = runs[0].switch
    n = min(len(r.cost) for r in runs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    x = np.arange(1, n + 1)
    top.plot(x, 1000 * _mean_rolling(runs, "cost", window), label=f"paced, {name}")
    if run.change_fraction in run.paced:
        base = run.paced[run.change_fraction]
        m = min(n, min(len(r.cost) for r in base))
        top.plot(
            x[:m],
            1000 * _mean_rolling(base, "cost", window)[:m],
            color="grey",
            lw=0.8,
            label="paced, no change",
        )
    top.axhline(tgt, color="black", ls="--", lw=0.8, label=f"target {tgt:.3g} USD / 1k")
    top.axhspan(tgt * (1 - TOLERANCE), tgt * (1 + TOLERANCE), color="black", alpha=0.1)
    top.set_ylabel(f"spend, trailing {window} (USD / 1k)")
    top.legend(fontsize=8, loc="upper right")
    share = np.mean([rolling(r.share(model)[:n], window) for r in runs], axis=0)
    bottom.plot(x, share, label=f"share of {model}")
    bottom.set_ylabel("share (trailing)")
    lam_ax = bottom.twinx()
    lam_ax.plot(
        x, np.mean([r.lam[:n] for r in runs], axis=0), color="tab:red", lw=0.8, label="λ (paced)"
    )
    lam_ax.set_ylabel("λ", color="tab:red")
    for ax in (top, bottom):
        if switch is not None:
            ax.axvline(switch, color="black", ls=":", lw=0.8)
    bottom.set_xlabel("queries")
    bottom.legend(fontsize=8, loc="upper left")
    top.set_title(
        f"{run.name}: {name} ({model}) at query {switch}, mean of {len(runs)} seeds", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _iv(i: Interval, scale: float = 1.0, digits: int = 3) -> str:
    half = (i.high - i.low) / 2 * scale
    return f"{i.mean * scale:.{digits}f} ± {half:.{digits}f}"


def compliance_rows(run: BudgetRun) -> list[dict[str, Any]]:
    rows = []
    for c in run.compliance():
        rows.append(_compliance_row(c))
    return rows


def _compliance_row(c: Compliance) -> dict[str, Any]:
    return {
        "fraction": c.fraction,
        "target_usd_per_1k": c.target,
        "spend_usd_per_1k": [c.spend.mean, c.spend.low, c.spend.high],
        "error": [c.error.mean, c.error.low, c.error.high],
        "quality": [c.quality.mean, c.quality.low, c.quality.high],
        "frontier_quality": [
            c.frontier_quality.mean,
            c.frontier_quality.low,
            c.frontier_quality.high,
        ],
        "gap": [c.gap.mean, c.gap.low, c.gap.high],
        "final_lam": [c.lam.mean, c.lam.low, c.lam.high],
        "unpaced_spend_usd_per_1k": c.unpaced_spend,
        "slack": c.slack,
        "spend_met": c.spend_met,
        "quality_met": c.quality_met,
    }


def _change_row(s: ChangeSummary) -> dict[str, Any]:
    def iv(i: Interval) -> list[float]:
        return [i.mean, i.low, i.high]

    return {
        "name": s.name,
        "model": s.model,
        "target_usd_per_1k": s.target,
        "switch": s.switch,
        "spend_before": iv(s.spend_before),
        "spend_first_1k": iv(s.spend_first_1k),
        "spend_after": iv(s.spend_after),
        "quality_before": iv(s.quality_before),
        "quality_after": iv(s.quality_after),
        "share_before": iv(s.share_before),
        "share_after": iv(s.share_after),
        "recovery_queries": s.recovery,
        "window": s.window,
    }


def write_budget_report(
    run: BudgetRun, out: Path, title: str, img_prefix: str, img_dir: Path | None = None
) -> Path:
    """OUT/budgets.md, OUT/budgets.json and IMG_DIR/<prefix>-budget-*.png (IMG_DIR: OUT
    unless given); returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    img_dir = img_dir or out
    img_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(img_dir, out))
    plot_spend(run, img_dir / f"{img_prefix}-budget-spend.png")
    changes = [summarise_change(run, name) for name in run.changes]
    for name in run.changes:
        plot_change(run, name, img_dir / f"{img_prefix}-budget-{name}.png")
    comp = run.compliance()
    lines = [
        f"# {title}",
        "",
        f"Best single model: {run.best}, {1000 * run.best_cost:.4f} USD / 1k queries. "
        f"Pacer step {run.label}; {run.seeds} seeds; after warm-up = queries "
        f"{run.warmup} on. Mean ± 95% interval over seeds.",
        "",
        "## Compliance",
        "",
        "| target | target USD / 1k | realised USD / 1k | error | quality | fixed-λ frontier at "
        "that spend | paced − frontier | final λ | spend | quality |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in comp:
        lines.append(
            f"| {100 * c.fraction:g}% | {c.target:.4f} | {_iv(c.spend, digits=4)} | "
            f"{_iv(c.error, 100, 2)}% | {_iv(c.quality)} | {_iv(c.frontier_quality)} | "
            f"{_iv(c.gap)} | {_iv(c.lam)} | "
            f"{'met' if c.spend_met else 'missed'}{' (slack)' if c.slack else ''} | "
            f"{'met' if c.quality_met else 'missed'} |"
        )
    lines += [
        "",
        "Fixed λ (after warm-up, mean over seeds): "
        + ", ".join(f"λ={lam:g}: {c:.4f} USD/1k, q {q:.3f}" for lam, c, q in run.fixed_points()),
        "",
        f"![spend]({rel / f'{img_prefix}-budget-spend.png'})",
        "",
        "## Mid-stream changes",
        "",
        f"Paced to {100 * run.change_fraction:g}% of {run.best}'s cost; the change at the "
        "middle of the stream. Recovery: queries k after the change from which the spend "
        "to the end of the stream (mean over seeds) is within 2% of target, for k and "
        "every later start that leaves at least 1,000 queries.",
        "",
        "| change | model | spend before | first 1k after | after | quality before | "
        "after | share before | after | recovery |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in changes:
        lines.append(
            f"| {s.name} | {s.model} | {_iv(s.spend_before, digits=4)} | "
            f"{_iv(s.spend_first_1k, digits=4)} | {_iv(s.spend_after, digits=4)} | "
            f"{_iv(s.quality_before)} | {_iv(s.quality_after)} | {_iv(s.share_before)} | "
            f"{_iv(s.share_after)} | "
            f"{s.recovery if s.recovery is not None else 'not within the stream'} |"
        )
    lines.append("")
    for name in run.changes:
        lines.append(f"![{name}]({rel / f'{img_prefix}-budget-{name}.png'})")
    (out / "budgets.md").write_text("\n".join(lines) + "\n")
    figures = {
        "data": run.name,
        "best": run.best,
        "best_usd_per_1k": 1000 * run.best_cost,
        "step": run.step,
        "scale": run.scale,
        "seeds": run.seeds,
        "warmup": run.warmup,
        "compliance": [_compliance_row(c) for c in comp],
        "fixed": [{"lam": lam, "usd_per_1k": c, "quality": q} for lam, c, q in run.fixed_points()],
        "changes": [_change_row(s) for s in changes],
    }
    (out / "budgets.json").write_text(json.dumps(figures, indent=2) + "\n")
    return out / "budgets.md"
