"""ASGI factory for uvicorn workers: `uvicorn --factory service.asgi:app`.

Each worker process builds its own app from the environment and the config file
named by BANDITROUTE_CONFIG_PATH (set by `banditroute serve --config`)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from service.app import create_app
from service.settings import load_settings

CONFIG_ENV = "BANDITROUTE_CONFIG_PATH"


def app() -> FastAPI:
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_settings(Path(path) if path else None))
