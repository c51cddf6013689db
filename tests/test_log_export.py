"""`banditroute log export` leaves default-reward rows (decisions that expired
unanswered: an assumed outcome, not an observed one) out of the off-policy log unless
asked, and keeps paging past them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import service.abcli
from service.routes.experiments import LOG_COLUMNS
from simulator.cli import app


def _row(i: int, source: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in LOG_COLUMNS}
    row.update(
        event_id=f"default.{i}",
        policy="default",
        model="small",
        propensity=0.5,
        candidates=["small", "large"],
        quality=0.5 if source == "default" else 1.0,
        cost_usd=0.001,
        cost_weight=0.2,
        source=source,
        time=1.0 + i,
        created_at=float(i),
        context=[0.0, 1.0],
    )
    return row


@pytest.mark.parametrize("include", [False, True])
def test_log_export_leaves_default_rewards_out_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include: bool
) -> None:
    # two pages: a full one (5000 rows), then the rest
    rows = [_row(i, "default" if i % 3 == 0 else "user") for i in range(5200)]
    pages = {"0-0": rows[:5000], "p1": rows[5000:]}

    def fake_get(url: str, path: str, key: str | None, **params: Any) -> Any:
        events = pages[params["after"]]
        return {"events": events, "next": "p1"}

    monkeypatch.setattr(service.abcli, "_get", fake_get)
    out = tmp_path / "log.parquet"
    args = ["log", "export", "--out", str(out)] + (["--include-defaults"] if include else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    defaults = sum(1 for row in rows if row["source"] == "default")
    if include:
        assert len(df) == len(rows) and (df["source"] == "default").sum() == defaults
    else:
        assert len(df) == len(rows) - defaults and (df["source"] == "user").all()
        assert f"{defaults} default-reward rows left out" in " ".join(r.output.split())
