"""The real app served by uvicorn on a loopback socket, in a thread of the test
process (so it shares the loaded embedding model), for tests whose claim is about
the network: the official openai client as the caller, streams, disconnects."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from tests.process_helpers import free_port


class Served:
    def __init__(self, app: FastAPI, port: int) -> None:
        self.app = app
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/v1"

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@contextmanager
def serve_app(app: FastAPI, timeout: float = 60.0) -> Iterator[Served]:
    """Serve `app` (its lifespan included) until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"the app did not start: {errors or 'server exited'}")
        if time.monotonic() > deadline:
            raise RuntimeError("the app did not start in time")
        time.sleep(0.02)
    try:
        yield Served(app, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
