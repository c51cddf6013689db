"""Request limits and per-request metrics as plain ASGI middleware: Starlette's
`@app.middleware("http")` runs each request through a task group and memory streams,
which cost more than our whole route handler on a cache hit."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class LimitsAndMetrics:
    """Refuse bodies over `body_limit` bytes (413: by their Content-Length, or as a
    chunked body grows past it) and record
    every request's latency and status under its route's path template."""

    def __init__(self, app: ASGIApp, body_limit: int, metrics: Any) -> None:
        self.app = app
        self.body_limit = body_limit
        self.metrics = metrics  # a callable returning the app's Metrics, or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.body_limit:
                    await _json(
                        send,
                        413,
                        f"body: {int(value)} bytes exceeds the limit of {self.body_limit}",
                    )
                    return
                break
        t0 = time.perf_counter()
        status = 500
        received = 0

        async def bounded_receive() -> Message:
            # a chunked body has no Content-Length to check up front: count as it comes
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_limit:
                    # FastAPI passes an HTTPException from reading the body through
                    raise HTTPException(
                        413, f"body: more than {self.body_limit} bytes exceeds the limit"
                    )
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_status)
        finally:
            metrics: Metrics | None = self.metrics()
            if metrics is not None:
                # the router leaves the matched route in the scope: label by its
                # template, so /v1/models/{name} is one series, not one per name
                route = scope.get("route")
                path = getattr(route, "path", "other")
                metrics.latency.labels(path).observe(time.perf_counter() - t0)
                metrics.requests.labels(path, str(status)).inc()


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
