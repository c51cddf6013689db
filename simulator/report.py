"""A simulation's results as a markdown report and PNG plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator import metrics  # noqa: E402
from simulator.replay import ReplayResult  # noqa: E402
from simulator.simulate import DeployRun, OnlineRun, OpeRow  # noqa: E402
from simulator.stats import mean_ci  # noqa: E402


def _band(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval over seeds at every step."""
    n = min(len(c) for c in curves)
    stacked = np.stack([c[:n] for c in curves])
    mean = stacked.mean(axis=0)
    if len(curves) == 1:
        return mean, mean, mean
    ci = [mean_ci(stacked[:, t]) for t in range(0, n, max(1, n // 200))]
    steps = np.arange(0, n, max(1, n // 200))
    low = np.interp(np.arange(n), steps, [c.low for c in ci])
    high = np.interp(np.arange(n), steps, [c.high for c in ci])
    return mean, low, high


def plot_regret(online: OnlineRun, names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        curves = [metrics.cumulative_regret(r.reward, r.oracle_reward) for r in online.runs[name]]
        mean, low, high = _band(curves)
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, label=name)
        ax.fill_between(x, low, high, alpha=0.2)
    ax.set_xlabel("queries")
    ax.set_ylabel("cumulative regret against the oracle")
    ax.set_title(f"online replay, λ = {online.lam} (bands: 95% over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_share(run: ReplayResult, models: list[str], path: Path, window: int = 300) -> None:
    """Each model's share of the traffic over time (a moving window), for one replay."""
    fig, ax = plt.subplots(figsize=(8, 5))
    n = len(run.chosen)
    w = max(1, min(window, n // 5 or 1))
    kernel = np.ones(w) / w
    for k, m in enumerate(models):
        share = np.convolve((run.chosen == k).astype(float), kernel, mode="valid")
        if share.max() > 0.02:
            ax.plot(np.arange(w, n + 1), share, label=m)
    if run.switch is not None:
        ax.axvline(run.switch, color="k", linestyle="--", linewidth=1, label="change")
    ax.set_xlabel("queries")
    ax.set_ylabel(f"share of traffic (last {w})")
    ax.set_title(f"{run.policy}: traffic by model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(deploy: DeployRun, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, front in deploy.frontiers().items():
        pts = np.array(deploy.points[name])
        (line,) = ax.plot(1000 * front.cost, front.quality, label=name)
        ax.scatter(1000 * pts[:, 0], pts[:, 1], s=12, color=line.get_color())
    for m, (c, q) in deploy.models.items():
        ax.scatter([1000 * c], [q], marker="s", color="grey", s=20)
        ax.annotate(m, (1000 * c, q), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.scatter(
        [1000 * deploy.oracle[0]], [deploy.oracle[1]], marker="*", s=80, color="k", label="oracle"
    )
    ax.set_xscale("log")
    ax.set_xlabel("USD per 1k queries (test)")
    ax.set_ylabel("quality (test)")
    ax.set_title("cost-quality frontier: λ sweep, deploy protocol")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def write_report(
    out: Path,
    title: str,
    online: OnlineRun,
    deploy: DeployRun | None,
    ope: list[OpeRow],
    scenarios: dict[str, ReplayResult],
    models: list[str],
    learning: list[str],
    ope_log: str = "",
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += [
        f"## Online protocol (λ = {online.lam}; mean ± 95% interval over seeds)",
        "",
        "| router | quality | USD / 1k | reward | regret vs oracle | regret vs best fixed "
        f"| reward after {online.warmup():,} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in online.summary().items():
        lines.append(
            f"| {name} | {m['quality']} | {m['usd_per_1k']} | {m['reward']} | "
            f"{m['regret_oracle']} | {m['regret_best_fixed']} | {m['reward_after_warmup']} |"
        )
    plot_regret(
        online,
        [
            n
            for n in online.runs
            if n in learning or n.startswith(("random", "best fixed", "rule", "cheapest"))
        ],
        out / "regret.png",
    )
    lines += ["", "![regret](regret.png)", ""]
    for name in learning:
        if name in online.runs:
            plot_share(online.runs[name][0], models, out / f"share-{name}.png")
            lines.append(f"![traffic share, {name}](share-{name}.png)")
    if deploy is not None:
        ref, ref_cost, ref_quality = deploy.reference()
        lines += [
            "",
            f"## Deploy protocol: learn on train, freeze, route test (λ ∈ {deploy.lams})",
            "",
            f"Reference: the best single model on test, {ref} (quality {ref_quality:.3f}, "
            f"{1000 * ref_cost:.4f} USD / 1k). Oracle: quality {deploy.oracle[1]:.3f}, "
            f"{1000 * deploy.oracle[0]:.4f} USD / 1k.",
            "",
            "| router | AIQ | cost for 95% of ref quality (% of ref cost) "
            "| cost for 100% | best quality at ref cost |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, row in deploy.table().items():
            lines.append(
                f"| {name} | {_fmt(row['aiq'])} | {_fmt(row['cost_pct_95'], 1)} | "
                f"{_fmt(row['cost_pct_100'], 1)} | {_fmt(row['quality_at_ref_cost'])} |"
            )
        plot_frontier(deploy, out / "frontier.png")
        lines += ["", "![frontier](frontier.png)", ""]
    if ope:
        lines += [
            f"## Off-policy estimates of the static routers from the log of {ope_log}",
            "",
            "| router | true replayed value | IPS | SNIPS | DR | ESS |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in ope:

            def iv(e: metrics.OffPolicyEstimate) -> str:
                return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"

            lines.append(
                f"| {r.router} | {r.true_value:.3f} | {iv(r.ips)} | {iv(r.snips)} | "
                f"{iv(r.dr)} | {r.ips.ess:.0f} |"
            )
        lines.append("")
    for label, run in scenarios.items():
        path = out / f"scenario-{label.split(' ')[0]}.png"
        plot_share(run, models, path)
        lines += [f"## Scenario: {label}", "", f"![{label}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
