"""A tuning run's outputs: the held-out result (markdown and JSON), every grid point as
CSV, the sensitivity table as markdown, a plot of each axis, and the best setting as a
config file the service loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from simulator.tune import HeldOut, TuneResult, service_config  # noqa: E402


def write_rows(result: TuneResult, heldout: HeldOut, path: Path) -> None:
    """Every grid point by its train score (the selection criterion); the chosen setting
    of each kind also carries its held-out figures on the test split."""
    tested = {r.setting: r for r in heldout.rows if r.learns}
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
                "heldout_reward",
                "heldout_low",
                "heldout_high",
                "heldout_after_warmup",
            ]
        )
        for r in sorted(result.rows, key=lambda r: -float(np.mean(r.scores))):
            s = r.score
            h = tested.get(r.point.label())
            held = (
                [
                    f"{h.reward.mean:.6f}",
                    f"{h.reward.low:.6f}",
                    f"{h.reward.high:.6f}",
                    f"{h.reward_after_warmup.mean:.6f}",
                ]
                if h
                else ["", "", "", ""]
            )
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
                    *held,
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


def heldout_lines(heldout: HeldOut) -> list[str]:
    """The result section: the chosen settings and the static routers on the test rows."""
    winner = heldout.row(heldout.winner)
    lines = [
        "## Result: held-out reward on the test split",
        "",
        f"The settings were chosen on the {heldout.train_rows} train prompts only; here each "
        f"policy's chosen setting learns again from scratch, online, on the "
        f"{heldout.test_rows} test prompts it never saw ({heldout.split}): a fresh policy "
        f"per seed, {heldout.seeds} seeded orders, mean reward per query at the target "
        f"λ = {heldout.target_lam:g} (95% interval over seeds). After warm-up: from query "
        f"{heldout.warmup + 1} on. The static routers run on the same rows and orders; "
        "cheapest and best fixed are chosen on the train split. The train-split score, "
        "which chose the settings, is shown for comparison only: it is biased upwards.",
        "",
        f"**Winner: {winner.name}, {winner.setting}: held-out reward {winner.reward}** "
        f"(after warm-up {winner.reward_after_warmup}; train-split score "
        f"{winner.train_score}); written to `config.yaml`. Every figure of this section "
        "is in `heldout.json`.",
        "",
        "| router | setting | held-out reward | held-out, after warm-up | train-split score |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in heldout.rows:
        name = f"**{r.name}** (winner)" if r.name == heldout.winner else r.name
        lines.append(
            f"| {name} | {r.setting or '–'} | {r.reward} | {r.reward_after_warmup} "
            f"| {r.train_score if r.train_score else '–'} |"
        )
    return lines + [""]


def write_tune_report(
    result: TuneResult,
    heldout: HeldOut,
    out: Path,
    title: str,
    models: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Writes OUT/tune.md, heldout.json, tune.csv, sensitivity.png and config.yaml (the
    best setting on train); returns (report, config)."""
    out.mkdir(parents=True, exist_ok=True)
    best = result.best()
    held = heldout.row(heldout.winner)
    config = out / "config.yaml"
    config.write_text(
        "# written by `banditroute tune`: the best setting on the train split\n"
        f"# held-out reward on the test split: {held.reward} (heldout.json)\n"
        + yaml.safe_dump(service_config(best, result.target_lam, models), sort_keys=False)
    )
    (out / "heldout.json").write_text(json.dumps(heldout.as_dict(), indent=2) + "\n")
    write_rows(result, heldout, out / "tune.csv")
    plot_sensitivity(result, out / "sensitivity.png")

    lines = [f"# {title}", "", *heldout_lines(heldout)]
    lines += [
        "## Tuning on the train split (selection only)",
        "",
        f"Score: mean reward per query at the target λ = {result.target_lam:g} while "
        f"learning online on the train split, over {result.seeds} seeds (95% interval). "
        f"{len(result.rows)} settings; every one in `tune.csv`. These scores chose the "
        "settings; they are not held-out figures.",
        "",
        f"Best on train: {best.point.label()}, train-split score {best.score}.",
        "",
        "| policy | setting | train-split score | train-split score, last third |",
        "| --- | --- | --- | --- |",
    ]
    for kind in dict.fromkeys(r.point.kind for r in result.rows):
        b = result.best(kind)
        lines.append(
            f"| {kind} | {b.point.label()} | {b.score} | {float(np.mean(b.last_third)):.4f} |"
        )
    lines += [
        "",
        "## Sensitivity (train split)",
        "",
        "Down each axis: the best and the mean train-split score over every setting with "
        "that value. A flat column is a parameter that hardly matters here.",
        "",
    ]
    for axis, entries in result.sensitivity().items():
        lines += [
            f"### {axis}",
            "",
            "| policy | value | best score | mean score | best setting |",
            "| --- | --- | --- | --- | --- |",
        ]
        for kind, value, top, mean, label in entries:
            lines.append(f"| {kind} | {value:g} | {top:.4f} | {mean:.4f} | {label} |")
        lines.append("")
    lines += ["![sensitivity](sensitivity.png)", ""]
    report = out / "tune.md"
    report.write_text("\n".join(lines))
    return report, config
