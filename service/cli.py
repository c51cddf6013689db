"""The `banditroute` command: service commands live here; the simulator adds its own
(see `simulator.cli`, the console entry point) so that service never imports simulator."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="banditroute",
    help="Online LLM routing with contextual bandits.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Online LLM routing with contextual bandits: route, learn from feedback, measure."""
