"""The scripted OpenAI-compatible upstream (`simulator.upstream`) as a real separate
process for tests: started on a free loopback port, ready once /_health answers, driven
through its control endpoints, and stopped (SIGTERM, then SIGKILL) on exit."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.process_helpers import Procs, free_port

# the step keys that are also command-line options of the server
FLAGS = {
    "latency_ms": "--latency-ms",
    "delay_ms": "--latency-ms",
    "chunk_ms": "--chunk-ms",
    "words": "--words",
}


class Upstream:
    """A running upstream: `.url` is the OpenAI base URL (ending in /v1), `.base` the
    server's root; the methods wrap the control endpoints."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        api_key: str | None,
        log: Path,
        config: Mapping[str, Any],
    ) -> None:
        self.proc = proc
        self.port = port
        self.api_key = api_key
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/v1"
        # the start defaults that are not command-line options, applied by /_config
        self._config = dict(config)
        self.http = httpx.Client(base_url=self.base, timeout=10.0)

    def script(self, steps: Sequence[Mapping[str, Any]]) -> None:
        """Queue steps, one per following chat request (e.g. [{"status": 429}])."""
        self._ok(self.http.post("/_script", json=list(steps)))

    def configure(self, **kw: Any) -> dict[str, Any]:
        """Change the defaults of every request (step keys; None restores a key's start
        value); returns the server's defaults now."""
        return dict(self._ok(self.http.post("/_config", json=kw)).json())

    def calls(self) -> list[dict[str, Any]]:
        """Every chat request the server received, in order (see simulator.upstream)."""
        return list(self._ok(self.http.get("/_calls")).json())

    def clear(self) -> None:
        """Forget the calls received so far."""
        self._ok(self.http.delete("/_calls"))

    def reset(self) -> None:
        """Back to how it started: no calls, no scripted steps, the start defaults."""
        self.clear()
        self._ok(self.http.delete("/_script"))
        self._ok(self.http.delete("/_config"))
        if self._config:
            self.configure(**self._config)

    def wait_for_calls(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The calls once `check(calls)` holds (e.g. a disconnect got noticed); an
        AssertionError showing the calls if it does not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls()
            if check(calls):
                return calls
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout} s; the calls: {calls}")
            time.sleep(0.02)

    def output(self) -> str:
        """What the server wrote on stdout and stderr."""
        return self.log.read_text(errors="replace")

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            raise AssertionError(f"{response.request.url}: {response.status_code} {response.text}")
        return response


def upstream_argv(
    port: int, api_key: str | None, models: Sequence[str], flags: Mapping[str, Any]
) -> list[str]:
    """The server's command line: this interpreter, so the test's venv serves."""
    argv = [sys.executable, "-m", "simulator.upstream", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    for model in models:
        argv += ["--model", model]
    if api_key is not None:
        argv += ["--api-key", api_key]
    for key, value in flags.items():
        argv += [FLAGS[key], str(value)]
    return argv


@contextmanager
def start_upstream(
    *,
    port: int | None = None,
    api_key: str | None = None,
    models: Sequence[str] = (),
    timeout: float = 20.0,
    **defaults: Any,
) -> Iterator[Upstream]:
    """A real upstream process for the `with` block. `defaults` are step keys applying
    to every request (latency_ms / delay_ms, chunk_ms and words go on the command line,
    the others through /_config once it is up). Without `port` a free one is picked
    (tried afresh up to 3 times, should another process take it first). Readiness waits
    at most `timeout` seconds, then fails with the process's output."""
    flags = {k: v for k, v in defaults.items() if k in FLAGS}
    config = {k: v for k, v in defaults.items() if k not in FLAGS}
    fd, name = tempfile.mkstemp(prefix="upstream-", suffix=".log")
    os.close(fd)
    log = Path(name)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(1 if port is not None else 3):
            chosen = port if port is not None else free_port()
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    upstream_argv(chosen, api_key, models, flags),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if _ready(proc, chosen, timeout):
                break
            text = log.read_text(errors="replace")
            Procs.stop(proc, timeout=5)
            if port is None and attempt < 2 and "address already in use" in text.lower():
                continue
            raise RuntimeError(
                f"the upstream on port {chosen} was not ready within {timeout} s "
                f"(exit code {proc.returncode}); its output:\n{text}"
            )
        assert proc is not None
        up = Upstream(proc, chosen, api_key, log, config)
        try:
            if config:
                up.configure(**config)
            yield up
        finally:
            up.http.close()
    finally:
        if proc is not None:
            Procs.stop(proc, timeout=5)
        log.unlink(missing_ok=True)


def _ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Whether /_health answers 200 within `timeout`; False at once if the process died."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/_health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False
