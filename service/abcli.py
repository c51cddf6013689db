"""`banditroute ab report` and `banditroute log export`: read a running service over
HTTP, so they work the same for the embedded store and for Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from service.cli import app
from service.routes.experiments import LOG_COLUMNS

ab = typer.Typer(help="A/B experiments: reports and plots.", no_args_is_help=True)
logs = typer.Typer(help="The decision log: export for off-policy evaluation.", no_args_is_help=True)
app.add_typer(ab, name="ab")
app.add_typer(logs, name="log")

Url = Annotated[str, typer.Option(help="the service's base URL")]
Key = Annotated[
    str | None, typer.Option(envvar="BANDITROUTE_API_KEY", help="API key (Bearer), if enabled")
]


def _get(url: str, path: str, key: str | None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(f"{url.rstrip('/')}{path}", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"cannot reach {url}: {exc}", param_hint="--url") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        typer.echo(f"error: {r.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    return r.json()


def _ci(d: dict[str, Any]) -> str:
    if d.get("mean") is None:
        return "–"
    if d.get("low") is None:
        return f"{d['mean']:.4f}"
    return f"{d['mean']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"


def _pair(v: list[float | None]) -> str:
    return "–" if v[0] is None else f"[{v[0]:+.4f}, {v[1]:+.4f}]"


def print_report(rep: dict[str, Any], console: Console) -> None:
    level = f"{rep['level']:.0%}"
    t = Table(
        title=f"experiment {rep['name']}: reward = quality − {rep['cost_weight']} × cost / "
        f"{rep['cost_scale_usd']:.3g} USD ({level} intervals)"
    )
    for col in (
        "variant",
        "policy",
        "share",
        "units",
        "decisions",
        "feedback rate",
        "reward",
        "quality",
        "USD / query",
    ):
        t.add_column(col, justify="right")
    for v in rep["variants"]:
        rate = "–" if v["feedback_rate"] is None else f"{v['feedback_rate']:.1%}"
        name = v["name"] + (" (control)" if v["name"] == rep["control"] else "")
        if v["name"] in rep["stopped"]:
            name += " (stopped)"
        t.add_row(
            name,
            v["policy"],
            f"{v['share']:.0%}",
            str(v["units"]),
            str(v["decisions"]),
            rate,
            _ci(v["reward"]),
            _ci(v["quality"]),
            _ci(v["cost_usd"]),
        )
    console.print(t)
    d = Table(title=f"against control: fixed-horizon and anytime-valid {level} intervals")
    for col in ("variant", "metric", "difference", "interval", "anytime-valid", "significant"):
        d.add_column(col, justify="right")
    for row in rep["differences"]:
        for m in ("reward", "quality", "cost_usd"):
            x = row[m]
            diff = "–" if x["difference"] is None else f"{x['difference']:+.4f}"
            d.add_row(
                row["variant"],
                m,
                diff,
                _pair(x["interval"]),
                _pair(x["sequence"]),
                "yes" if x["significant"] else "no",
            )
    console.print(d)
    for row in rep["differences"]:
        rate = row.get("feedback_rate")
        if rate is not None and rate["difference"] is not None:
            flag = " [red]mismatch[/red]" if rate["mismatch"] else ""
            console.print(
                f"feedback rate {row['variant']} − {row['control']}: "
                f"{rate['difference']:+.1%}, anytime-valid {1 - rate['alpha']:.0%} interval "
                f"{_pair(rate['sequence'])}{flag}"
            )
    for warning in rep.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {warning}")
    for name, stop in rep["stopped"].items():
        console.print(f"[red]{name} stopped by the guardrail[/red]: {stop['reason']}")


def history(url: str, name: str, key: str | None, every: int) -> dict[str, Any]:
    """The whole running difference (admin), page by page."""
    path = f"/v1/experiments/{name}/history"
    hist = _get(url, path, key, every=every, limit=10_000)
    while not hist["complete"]:
        page = _get(url, path, key, every=every, after=hist["next"], limit=10_000)
        for variant, points in page["series"].items():
            hist["series"][variant] += points
        hist.update(next=page["next"], complete=page["complete"], truncated=page["truncated"])
    return hist


def plot_history(hist: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant, pts in hist["series"].items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        pts = [p for p in pts if p["difference"] is not None]
        n = [p["feedback"] for p in pts]
        if pts:
            ax.plot(n, [p["difference"] for p in pts], label=f"{variant} − {hist['control']}")
            seq = [(x, p) for x, p in zip(n, pts, strict=True) if p["sequence_low"] is not None]
            ax.fill_between(
                [x for x, _ in seq],
                [p["sequence_low"] for _, p in seq],
                [p["sequence_high"] for _, p in seq],
                alpha=0.2,
                label="anytime-valid band",
            )
            fix = [(x, p) for x, p in zip(n, pts, strict=True) if p["low"] is not None]
            ax.plot(
                [x for x, _ in fix],
                [p["low"] for _, p in fix],
                "k:",
                lw=0.8,
                label="fixed-horizon interval",
            )
            ax.plot([x for x, _ in fix], [p["high"] for _, p in fix], "k:", lw=0.8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("feedback received (both variants)")
        ax.set_ylabel("reward difference")
        ax.set_title(f"experiment {hist['name']}: {variant} against {hist['control']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{hist['name']}-{variant}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


@ab.command("report")
def ab_report(
    name: Annotated[str, typer.Argument(help="the experiment")],
    url: Url = "http://127.0.0.1:8000",
    api_key: Key = None,
    plot: Annotated[
        Path | None, typer.Option(help="directory for PNGs of the running difference")
    ] = None,
    every: Annotated[int, typer.Option(min=1, help="plot a point every N feedbacks")] = 100,
) -> None:
    """Per variant: units, decisions, feedback rate, reward, quality and cost with
    intervals over units; each variant against control with its anytime-valid interval,
    and whether the feedback rates differ. --plot reads the history: the admin key."""
    console = Console()
    print_report(_get(url, f"/v1/experiments/{name}", api_key), console)
    if plot is not None:
        for p in plot_history(history(url, name, api_key, every), plot):
            console.print(f"plot: {p}")


@logs.command("export")
def log_export(
    out: Annotated[Path, typer.Option(help="the parquet file to write")],
    policy: Annotated[str, typer.Option(help="the serving policy whose log to export")] = "default",
    url: Url = "http://127.0.0.1:8000",
    api_key: Key = None,
    include_defaults: Annotated[
        bool,
        typer.Option(
            help="also write decisions that expired unanswered and got the configured "
            "default reward (source 'default'): an assumed outcome, not an observed one, "
            "so off-policy estimates leave them out unless asked"
        ),
    ] = False,
) -> None:
    """Write a policy's decision log (context, candidates, chosen model, propensity,
    quality, cost, experiment and variant, time) to parquet; needs the admin key."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    after, skipped = "0-0", 0
    while True:
        page = _get(url, f"/v1/log/{policy}", api_key, after=after, limit=5000)
        for row in page["events"]:
            if include_defaults or row.get("source") != "default":
                rows.append(row)
            else:
                skipped += 1
        if len(page["events"]) < 5000:
            break
        after = page["next"]
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_parquet(out, index=False)
    note = f" ({skipped} default-reward rows left out; --include-defaults)" if skipped else ""
    Console().print(f"{len(rows)} decisions of {policy!r} written to {out}{note}")
