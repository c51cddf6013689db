"""`banditroute serve` start-up errors, through real processes: each is one line on
stderr naming what to fix, a non-zero exit, and no traceback. None of these cases
gets as far as loading the embedding model, so each takes a second or two."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.process_helpers import BANDITROUTE, free_port

pytestmark = pytest.mark.slow

MODEL = """
[[models]]
name = "small"
input_per_m = 0.1
output_per_m = 0.1
"""


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("BANDITROUTE_")}
    return subprocess.run(
        [str(BANDITROUTE), "serve", "--port", str(free_port()), *args],
        cwd=tmp_path,  # an empty state/ here: no catalogue left from an earlier run
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "banditroute.toml"
    path.write_text(text)
    return str(path)


def test_no_config_names_the_config_to_pass(tmp_path: Path) -> None:
    line = _one_line(_serve(tmp_path), "catalogue is empty", "--config deploy/banditroute.toml")
    assert line.startswith("banditroute serve: error:")


def test_missing_and_bad_configs(tmp_path: Path) -> None:
    _one_line(_serve(tmp_path, "--config", "nowhere.toml"), "--config", "does not exist")
    bad = _config(tmp_path, "models = 3\n")
    _one_line(_serve(tmp_path, "--config", bad), "--config", "models")
    broken = _config(tmp_path, "this is [not toml\n")
    _one_line(_serve(tmp_path, "--config", broken), "--config")
    typo = _config(tmp_path, "snapshot_every_n = -1\n" + MODEL)
    _one_line(_serve(tmp_path, "--config", typo), "snapshot_every_n")


def test_redis_unreachable_at_start(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    res = _serve(tmp_path, "--config", _config(tmp_path, MODEL), BANDITROUTE_REDIS_URL=url)
    _one_line(res, "redis_url", url)
    assert res.returncode == 1


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = _serve(tmp_path, "--config", _config(tmp_path, MODEL), "--port", str(port))
    _one_line(res, f"--port {port}", "in use")


def test_no_keys_on_a_public_interface_needs_insecure(tmp_path: Path) -> None:
    res = _serve(tmp_path, "--config", _config(tmp_path, MODEL), "--host", "0.0.0.0")
    _one_line(res, "--host 0.0.0.0", "--insecure", "API keys")


def test_several_workers_need_redis(tmp_path: Path) -> None:
    res = _serve(tmp_path, "--config", _config(tmp_path, MODEL), "--workers", "2")
    _one_line(res, "--workers", "redis_url")


def test_a_failed_lifespan_is_reported_in_one_line(tmp_path: Path) -> None:
    """Past the checks above, a start-up failure inside the app (here: an empty
    catalogue) reaches the server as the error's line, not Starlette's traceback."""
    import asyncio

    from service.app import create_app
    from service.asgi import OneLineStartupErrors
    from service.embedder import Embedder
    from service.settings import Settings

    class Loaded(Embedder):
        loaded = True  # type: ignore[assignment]  # the model is never needed here

    app = OneLineStartupErrors(
        create_app(Settings(state_dir=tmp_path / "state"), embedder=Loaded())
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        except Exception:
            pass  # the server (uvicorn) swallows it after the message

    asyncio.run(run())
    failed = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    assert len(failed) == 1
    message = str(failed[0]["message"])
    assert "Traceback" not in message and "\n" not in message
    assert "catalogue is empty" in message and "--config" in message


def test_no_keys_is_said_at_start_up(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service_helpers import make_settings

    with caplog.at_level("WARNING", logger="banditroute.app"):
        with TestClient(create_app(make_settings(tmp_path), embedder=embedder)):
            pass
    assert any("no API keys configured" in r.getMessage() for r in caplog.records)
    caplog.clear()
    keyed = make_settings(tmp_path, admin_key="admin-secret")
    with caplog.at_level("WARNING", logger="banditroute.app"):
        with TestClient(create_app(keyed, embedder=embedder)):
            pass
    assert not any("no API keys" in r.getMessage() for r in caplog.records)


def test_an_unset_upstream_key_variable_names_the_model(tmp_path: Path) -> None:
    config = (
        MODEL
        + 'upstream = { base_url = "http://127.0.0.1:9/v1", api_key_env = "BR_NO_SUCH_KEY" }\n'
    )
    res = _serve(tmp_path, "--config", _config(tmp_path, config))
    _one_line(res, "models.small.upstream.api_key_env", "BR_NO_SUCH_KEY", "'small'")
    assert res.returncode == 2
