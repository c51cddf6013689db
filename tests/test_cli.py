"""Smoke tests of every CLI command, through the real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from tests.service_helpers import data_file

runner = CliRunner()


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "replay" in res.output


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)


@pytest.mark.slow
def test_replay_on_a_slice_of_shipped_data(tmp_path: Path) -> None:
    data = data_file("llmrouter_14tasks.parquet")
    res = runner.invoke(
        app,
        [
            "replay",
            "--data",
            str(data),
            "--limit",
            "60",
            "--seeds",
            "2",
            "--policies",
            "linucb,random,best-fixed",
            "--cache-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    for name in ("linucb", "random", "best-fixed"):
        assert name in res.output
    assert "60 prompts" in res.output


def test_replay_rejects_a_missing_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["replay", "--data", str(tmp_path / "nope.parquet")])
    assert res.exit_code == 2
    assert "does not exist" in res.output
