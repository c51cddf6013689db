"""A tuning run's outputs: every grid point as CSV, the sensitivity table as markdown,
a plot of each axis, and the best setting as a config file the service loads."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from simulator.tune import TuneResult, service_config  # noqa: E402


def write_rows(result: TuneResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "setting",
                "kind",
                "params",
                "projection_dim",
                "learn_lam",
                "score",
                "score_low",
                "score_high",
                "last_third",
            ]
        )
        for r in sorted(result.rows, key=lambda r: -float(np.mean(r.scores))):
            s = r.score
            w.writerow(
                [
                    r.point.label(),
                    r.point.kind,
                    ";".join(f"{k}={v:g}" for k, v in r.point.params),
                    r.point.projection_dim,
                    r.point.learn_lam,
                    f"{s.mean:.6f}",
                    f"{s.low:.6f}",
                    f"{s.high:.6f}",
                    f"{float(np.mean(r.last_third)):.6f}",
                ]
            )


def plot_sensitivity(result: TuneResult, path: Path) -> None:
    """One panel per axis: the best score at each value, a line per policy kind."""
    table = result.sensitivity()
    fig, axes = plt.subplots(1, len(table), figsize=(4 * len(table), 3.6), squeeze=False)
    for ax, (axis, entries) in zip(axes[0], table.items(), strict=True):
        for kind in sorted({e[0] for e in entries}):
            pts = sorted((e[1], e[2]) for e in entries if e[0] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
        if axis in ("alpha", "v", "epsilon", "gamma_scale"):
            ax.set_xscale("log")
        ax.set_title(axis)
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best reward at λ = {result.target_lam:g}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tune_report(
    result: TuneResult,
    out: Path,
    title: str,
    models: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Writes OUT/tune.md, tune.csv, sensitivity.png and config.yaml (the best setting);
    returns (report, config)."""
    out.mkdir(parents=True, exist_ok=True)
    best = result.best()
    config = out / "config.yaml"
    config.write_text(
        "# written by `banditroute tune`: the best setting on the train split\n"
        + yaml.safe_dump(service_config(best, result.target_lam, models), sort_keys=False)
    )
    write_rows(result, out / "tune.csv")
    plot_sensitivity(result, out / "sensitivity.png")

    lines = [
        f"# {title}",
        "",
        f"Score: mean reward per query at the target λ = {result.target_lam:g} while "
        f"learning online on the train split, over {result.seeds} seeds (95% interval). "
        f"{len(result.rows)} settings; every one in `tune.csv`.",
        "",
        f"**Best: {best.point.label()}**, reward {best.score}; written to `config.yaml`.",
        "",
        "## Best per policy",
        "",
        "| policy | setting | reward | reward, last third |",
        "| --- | --- | --- | --- |",
    ]
    for kind in dict.fromkeys(r.point.kind for r in result.rows):
        b = result.best(kind)
        lines.append(
            f"| {kind} | {b.point.label()} | {b.score} | {float(np.mean(b.last_third)):.4f} |"
        )
    lines += [
        "",
        "## Sensitivity",
        "",
        "Down each axis: the best and the mean reward over every setting with that value. "
        "A flat column is a parameter that hardly matters here.",
        "",
    ]
    for axis, entries in result.sensitivity().items():
        lines += [
            f"### {axis}",
            "",
            "| policy | value | best reward | mean reward | best setting |",
            "| --- | --- | --- | --- | --- |",
        ]
        for kind, value, top, mean, label in entries:
            lines.append(f"| {kind} | {value:g} | {top:.4f} | {mean:.4f} | {label} |")
        lines.append("")
    lines += ["![sensitivity](sensitivity.png)", ""]
    report = out / "tune.md"
    report.write_text("\n".join(lines))
    return report, config
