"""Real processes for the end-to-end tests: the service config, free ports, child
processes in their own process groups with their logs kept for a failing test."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BANDITROUTE = Path(sys.executable).parent / "banditroute"
# uvicorn's access log would drown the supervisor's and the app's lines
ACCESS_LINE = re.compile(r'"(GET|POST) /\S* HTTP/1.1" (200|202) ')


def service_config(
    redis_url: str,
    *,
    policy: str = "default",
    fallback: str = "small",
    snapshot_every_n: int = 100,
) -> str:
    """A TOML config: three priced models, one LinUCB policy, fast snapshots and lease."""
    return f"""
redis_url = "{redis_url}"
default_policy = "{policy}"
fallback_model = "{fallback}"
projection_dim = 32
snapshot_every_n = {snapshot_every_n}
snapshot_every_ms = 200
lease_ttl_ms = 1000
reload_poll_ms = 100

[[models]]
name = "small"
input_per_m = 0.1
output_per_m = 0.1

[[models]]
name = "medium"
input_per_m = 0.5
output_per_m = 0.5

[[models]]
name = "large"
input_per_m = 2.0
output_per_m = 2.0

[policies.{policy}]
kind = "linucb"
cost_weight = 0.2
params = {{ alpha = 0.5, epsilon = 0.05 }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.25)


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Procs:
    """Child processes, each in its own process group (uvicorn's workers join their
    parent's), with stdout and stderr in a log file under tmp_path."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        # a developer's BANDITROUTE_* settings must not leak into the processes
        base = env if env is not None else dict(os.environ)
        self.env = {k: v for k, v in base.items() if not k.startswith("BANDITROUTE_")}
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, label: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{label}-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **env},
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((proc, log))
        return proc

    def banditroute(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """`banditroute *args`, with `env` added to the environment."""
        return self.start(args[0], [str(BANDITROUTE), *args], **env)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """SIGTERM (uvicorn's parent then stops its workers); SIGKILL the group if slow."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # workers of a parent that died too must not outlive it
        Procs.kill(proc)

    def cleanup(self) -> None:
        for proc, _ in self.started:
            self.kill(proc)

    def dump_logs(self, tail: int = 80) -> None:
        for _, log in self.started:
            lines = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if not ACCESS_LINE.search(line)
            ]
            print(f"----- {log.name} (last {tail} of {len(lines)} lines) -----")
            print("\n".join(lines[-tail:]))
