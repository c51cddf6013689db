"""ASGI factory for uvicorn workers: `uvicorn --factory service.asgi:app`.

Each worker process builds its own app from the environment and the config file
named by BANDITROUTE_CONFIG_PATH (set by `banditroute serve --config`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.settings import load_settings

CONFIG_ENV = "BANDITROUTE_CONFIG_PATH"


class OneLineStartupErrors:
    """Starlette reports a failed start-up to the server with the whole traceback,
    which uvicorn prints; replace it with the error's own line, which names what to
    fix (the traceback stays available at debug level through the app's log)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                exc = sys.exc_info()[1]  # sent from inside the handler of the failure
                if exc is not None:
                    message = {**message, "message": f"start-up failed: {exc}"}
            await send(message)

        await self.app(scope, receive, send_short)


def app() -> ASGIApp:
    path = os.environ.get(CONFIG_ENV)
    return OneLineStartupErrors(create_app(load_settings(Path(path) if path else None)))
