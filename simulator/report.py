"""A simulation's results as a markdown report and PNG plots."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator import metrics  # noqa: E402
from simulator.cascades import CascadeRun, StaticCascade  # noqa: E402
from simulator.privacy import PrivacyRun  # noqa: E402
from simulator.replay import ReplayResult  # noqa: E402
from simulator.simulate import DeployRun, OnlineRun, OpeRow, PairRun  # noqa: E402
from simulator.stats import Interval, mean_ci  # noqa: E402


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


def plot_frontier(deploy: DeployRun, path: Path, greedy: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    curves = deploy.curves(greedy)
    for name, front in deploy.frontiers(greedy).items():
        pts = np.array(curves[name])
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
    how = "greedy (exploration off)" if greedy else "as deployed"
    ax.set_title(f"cost-quality frontier: λ sweep, deploy protocol, {how}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def _deploy_table(table: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| router | AIQ | cost for 95% of ref quality (% of ref cost) "
        "| cost for 100% | best quality at ref cost |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {_fmt(row['aiq'])} | {_fmt(row['cost_pct_95'], 1)} | "
            f"{_fmt(row['cost_pct_100'], 1)} | {_fmt(row['quality_at_ref_cost'])} |"
        )
    return lines


def _deploy_section(deploy: DeployRun, out: Path) -> list[str]:
    ref, ref_cost, ref_quality = deploy.reference()
    lines = [
        "",
        f"## Deploy protocol: learn on train, freeze, route test (λ ∈ {deploy.lams})",
        "",
        f"Reference: the best single model on test, {ref} (quality {ref_quality:.3f}, "
        f"{1000 * ref_cost:.4f} USD / 1k). Oracle: quality {deploy.oracle[1]:.3f}, "
        f"{1000 * deploy.oracle[0]:.4f} USD / 1k.",
        "",
        "### As deployed (each bandit's own sampled choice, exploration on)",
        "",
        *_deploy_table(deploy.table()),
    ]
    plot_frontier(deploy, out / "frontier.png")
    lines += ["", "![frontier](frontier.png)", ""]
    if deploy.greedy:
        lines += [
            "### Greedy (exploration off)",
            "",
            "The same frozen bandits choosing the argmax of expected quality − λ · "
            "expected cost / cost scale; a policy that reports no expected quality or cost "
            "(VW) takes the most probable model of its action distribution instead. The "
            "supervised references route greedily in both tables.",
            "",
            *_deploy_table(deploy.table(greedy=True)),
        ]
        plot_frontier(deploy, out / "frontier-greedy.png", greedy=True)
        lines += ["", "![frontier, greedy](frontier-greedy.png)", ""]
    return lines


def _pair_section(run: PairRun, out: Path) -> list[str]:
    """The strong/weak metrics as a markdown section, and as OUT/apgr.csv."""
    p = run.pair
    qs, qw = float(run.q_strong.mean()), float(run.q_weak.mean())
    lines = [
        f"## Strong/weak routing: {p.strong} (strong) vs {p.weak} (weak)",
        "",
        f"RouteLLM's metrics on the {len(p.rows):,} test prompts where both models have an "
        f"outcome (strong: mean quality {qs:.3f}, weak: {qw:.3f}). Each router scores every "
        "prompt by its predicted quality of strong minus weak; sending the top fraction f "
        "to the strong model traces quality against f. APGR: the area under the "
        "performance gap recovered (0.5 for a random router); CPT(x%): the fraction of "
        "calls to the strong model needed to recover x% of the gap. The bandits learned "
        f"on train from bandit feedback at λ = {run.lam:g} and were frozen (mean ± 95% "
        "over seeds). Prompts a router scores equally are split at random (in "
        "expectation).",
        "",
    ]
    table = run.table()
    if not table:
        return lines + ["Both models have the same mean quality: there is no gap to recover.", ""]
    lines += [
        "| router | APGR | CPT(50%), % of calls to strong | CPT(80%), % | ranked by |",
        "| --- | --- | --- | --- | --- |",
    ]
    ranked_by = {
        "random": "nothing (the expected random router)",
        "oracle": "the true quality difference",
        **run.ranked_by,
    }
    for name, m in table.items():
        lines.append(
            f"| {name} | {_iv(m['apgr'])} | {_iv(m['cpt50'], pct=True)} | "
            f"{_iv(m['cpt80'], pct=True)} | {ranked_by[name]} |"
        )
    _write_pair_csv(out / "apgr.csv", table, ranked_by, {n: len(s) for n, s in run.scores.items()})
    return lines + ["", "Machine-readable: [apgr.csv](apgr.csv).", ""]


def _iv(x: Interval, pct: bool = False) -> str:
    k, digits = (100.0, 1) if pct else (1.0, 3)
    text = f"{k * x.mean:.{digits}f}"
    if x.high > x.low:
        text += f" ± {k * (x.high - x.low) / 2:.{digits}f}"
    return text


def _write_pair_csv(
    path: Path,
    table: dict[str, dict[str, Interval]],
    ranked_by: dict[str, str],
    fits: dict[str, int],
) -> None:
    """One row per router; CPTs as fractions of calls to the strong model."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        header = ["router"]
        for k in ("apgr", "cpt50", "cpt80"):
            header += [k, f"{k}_low", f"{k}_high"]
        w.writerow([*header, "fits", "ranked_by"])
        for name, m in table.items():
            row: list[str | float | int] = [name]
            for k in ("apgr", "cpt50", "cpt80"):
                row += [repr(m[k].mean), repr(m[k].low), repr(m[k].high)]
            w.writerow([*row, fits.get(name, 1), ranked_by[name]])


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
    cascades: CascadeRun | None = None,
    privacy: PrivacyRun | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "apgr.csv").unlink(missing_ok=True)  # a previous run's, for other models
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
        lines += _deploy_section(deploy, out)
        if deploy.pair is not None:
            lines += _pair_section(deploy.pair, out)
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
    if cascades is not None:
        lines += _cascade_section(cascades, out)
    if privacy is not None:
        lines += _privacy_section(privacy)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


# --- cascades and privacy (the --cascades and --sensitive-share options) -------------------


def plot_cascades(run: CascadeRun, path: Path) -> None:
    """Single models, each cascade alone, and every bandit over the models alone and over
    models and cascades (λ sweep, as deployed and greedy) on the test cost-quality plane."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for m, (c, q) in run.base.models.items():
        ax.scatter([1000 * c], [q], marker="s", color="grey", s=20)
        ax.annotate(m, (1000 * c, q), fontsize=6, xytext=(3, 2), textcoords="offset points")
    chains = list(dict.fromkeys(s.cascade.chain for s in run.static))
    markers = "^v<>PX"
    for i, chain in enumerate(chains):
        mine = [s for s in run.static if s.cascade.chain == chain]
        cs = [1000 * s.cost.mean for s in mine]
        qs = [s.quality.mean for s in mine]
        pts = ax.scatter(cs, qs, marker=markers[i % len(markers)], s=30, label=f"cascade {chain}")
        for s, c, q in zip(mine, cs, qs, strict=True):
            ax.annotate(
                f"t={s.cascade.threshold:g}",
                (c, q),
                fontsize=6,
                xytext=(3, -7),
                textcoords="offset points",
                color=pts.get_facecolor()[0],
            )
    curves: dict[str, list[tuple[float, float]]] = {}
    for key in run.points:
        if key.endswith(" (greedy)"):
            continue
        name = key.removesuffix(" + cascades")
        for label, pts_ in (
            (name, run.base.points.get(name)),
            (f"{name} (greedy)", run.base.greedy.get(f"{name} (greedy)")),
            (key, run.points[key]),
            (f"{key} (greedy)", run.points[f"{key} (greedy)"]),
        ):
            if pts_:
                curves[label] = pts_
    for label, pts_ in curves.items():
        front = metrics.frontier([c for c, _ in pts_], [q for _, q in pts_])
        style = "-" if "+ cascades" in label else "--"
        (line,) = ax.plot(1000 * front.cost, front.quality, style, label=label)
        arr = np.array(pts_)
        ax.scatter(1000 * arr[:, 0], arr[:, 1], s=10, color=line.get_color())
    ref, _, ref_q, _ = run.reference()
    ax.axhline(ref_q, color="k", linewidth=0.6, linestyle=":", label=f"{ref} quality")
    ax.set_xscale("log")
    ax.set_xlabel("USD per 1k queries (test)")
    ax.set_ylabel("quality (test)")
    ax.set_title(f"single models, cascades and bandits (confidence noise σ = {run.noise:g})")
    ax.legend(fontsize=6, loc="lower right")  # the curves climb to the upper left
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float) -> str:
    return "not reached" if not np.isfinite(x) else f"{x:.1f}%"


def _static_line(best: StaticCascade | None, static: list[StaticCascade], ref_cost: float) -> str:
    if best is not None:
        return (
            f"{best.cascade.name}: quality {best.quality.mean:.3f}, "
            f"{100 * best.cost.mean / ref_cost:.1f}% of the reference cost"
        )
    if not static:
        return "no cascade has an outcome on test"
    top = max(static, key=lambda s: s.quality.mean)
    return f"none (the best, {top.cascade.name}, reaches {top.quality.mean:.3f})"


def _cascade_section(run: CascadeRun, out: Path) -> list[str]:
    ref, ref_cost, ref_q, beat = run.reference()
    lines = [
        "## Cascades",
        "",
        "A cascade A>B@t calls A, and B when A's answer's simulated confidence "
        "c = clip(q_A + ε, 0, 1), ε ~ N(0, σ²), is below t; its quality is the final "
        "answer's and its cost the sum of the calls made. "
        f"σ = {run.noise:g}; on 0/1 quality c is a noisy correctness signal. The bandits "
        "below choose among the single models and every cascade (the thresholds learned "
        "per context), by the deploy protocol over the same λ sweep (the confidence drawn "
        "anew per seed); each cascade alone is mean ± 95% over those seeds.",
        "",
        f"Reference: the best single model on test, {ref} (quality {ref_q:.3f}, "
        f"{1000 * ref_cost:.4f} USD / 1k); the cheapest single model reaching its quality "
        f"costs {1000 * beat:.4f} USD / 1k.",
        "",
        "| cascade | quality (test) | USD / 1k | % of reference cost | escalated |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in run.static:
        lines.append(
            f"| {s.cascade.name} | {_iv(s.quality)} | {1000 * s.cost.mean:.4f} | "
            f"{100 * s.cost.mean / ref_cost:.1f}% | {_iv(s.escalated, pct=True)}% |"
        )
    best = run.cheapest_static()
    lines += [
        "",
        f"Cheapest cascade alone reaching {ref}'s quality: "
        f"{_static_line(best, run.static, ref_cost)}.",
        "",
        "### Does a learned cascade reach the best single model's quality for less?",
        "",
        "Cost on each router's frontier (mixing neighbouring λ configurations, as in the "
        "deploy tables) and at its cheapest single λ configuration reaching the "
        "reference quality, as % of the reference cost; seeds: in how many seeds the "
        "router's own frontier reaches it below the cheapest single model that does.",
        "",
        "| router | frontier cost to reach it | cheapest λ point reaching it | seeds "
        "| below every single model |",
        "| --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for key in run.points:
        greedy = key.endswith(" (greedy)")
        name = key.removesuffix(" (greedy)").removesuffix(" + cascades")
        plain = f"{name} (greedy)" if greedy else name
        for label in ([plain] if plain in run.base.curves(greedy) else []) + [key]:
            r = run.reach(label, greedy=greedy)
            holds = np.isfinite(r.frontier_pct) and r.frontier_pct < 100 * beat / ref_cost
            point = (
                f"{_pct(r.point_pct)} (λ = {r.point_lam:g})"
                if r.point_lam is not None
                else "not reached"
            )
            seeds = f"{r.seeds_below} of {r.seeds}" if r.seeds else "–"
            lines.append(
                f"| {label} | {_pct(r.frontier_pct)} | {point} | {seeds} | "
                f"{'yes' if holds else 'no'} |"
            )
            if label == key:
                verdicts.append(f"{label}: {'yes' if holds else 'no'}")
    lines += ["", "Learned cascade below every single model reaching it: " + "; ".join(verdicts)]
    plot_cascades(run, out / "cascades-frontier.png")
    lines += ["", "![cascades frontier](cascades-frontier.png)", ""]
    lines += [
        "### What the learned router uses (greedy, share of test queries per λ)",
        "",
        "| router | λ | to cascades | top arms |",
        "| --- | --- | --- | --- |",
    ]
    n_models = len(run.base.models)
    for key, per_lam in run.shares.items():
        for lam, share in zip(run.lams, per_lam, strict=True):
            top = np.argsort(-share, kind="stable")[:3]
            arms = ", ".join(f"{run.arms[k]} {100 * share[k]:.0f}%" for k in top if share[k] > 0)
            lines.append(
                f"| {key} (greedy) | {lam:g} | {100 * share[n_models:].sum():.0f}% | {arms} |"
            )
    lines += [
        "",
        "### Sensitivity to the confidence's noise (each cascade alone)",
        "",
        "| σ | cheapest cascade alone reaching the reference quality | best cascade |",
        "| --- | --- | --- |",
    ]
    for sigma, static in run.sensitivity.items():
        b = run.cheapest_static(static)
        strongest = max(static, key=lambda s: s.quality.mean) if static else None
        best_text = (
            f"{strongest.cascade.name}: {strongest.quality.mean:.3f} at "
            f"{100 * strongest.cost.mean / ref_cost:.1f}%"
            if strongest is not None
            else "–"
        )
        lines.append(f"| {sigma:g} | {_static_line(b, static, ref_cost)} | {best_text} |")
    return lines + [""]


def _privacy_section(run: PrivacyRun) -> list[str]:
    others = [m for m in run.models if m not in run.local]
    lines = [
        "## Privacy: sensitive queries stay on local models",
        "",
        f"A seeded {100 * run.share:g}% of the queries is marked sensitive (mean share "
        f"replayed: {100 * run.sensitive_share():.1f}%); on those only the local models "
        f"may answer: {', '.join(run.local)}. Not local: {', '.join(others) or 'none'}. "
        f"Online protocol, λ = {run.lam:g}; each router replayed with and without the "
        "restriction at the same seeds (order, policy seed and sensitive rows); Δ = with − "
        "without, mean ± 95% over seeds. Sensitive rows with no local outcome, left out "
        f"of both sides: {', '.join(str(d) for d in run.dropped)} (per seed). Sensitive "
        f"queries routed to a non-local model under the restriction: {run.violations()}.",
        "",
        "| router | quality without | with | Δ quality | USD / 1k without | with | Δ USD / 1k "
        "| Δ reward | Δ quality, sensitive rows |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def d(row: dict[str, tuple[Interval, Interval, Interval]], k: str, i: int) -> str:
        return _iv(row[k][i]) if k in row else "–"

    for name, row in run.table().items():
        lines.append(
            f"| {name} | {d(row, 'quality', 0)} | {d(row, 'quality', 1)} | "
            f"{d(row, 'quality', 2)} | {d(row, 'usd_per_1k', 0)} | {d(row, 'usd_per_1k', 1)} | "
            f"{d(row, 'usd_per_1k', 2)} | {d(row, 'reward', 2)} | "
            f"{d(row, 'sensitive_quality', 2)} |"
        )
    return lines + [""]
