"""Shared test set-up."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.embedder import Embedder
from service.runtime import single_threaded_blas
from service.store import MemoryStore, RedisStore, Store
from tests.service_helpers import REDIS_URL, drop_prefix, make_settings, redis_up, require_redis

# the same numeric settings as every entry point, so tests run the shipped configuration
single_threaded_blas()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real MiniLM model, loaded once for every test of the real app."""
    emb = Embedder()
    emb.load()
    return emb


@pytest.fixture(params=["memory", "redis"])
def client(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder
) -> Iterator[TestClient]:
    """The real app through TestClient, on the in-process store and on the shared
    Redis (under a key prefix of its own, dropped afterwards)."""
    overrides: dict[str, Any] = {}
    if request.param == "redis":
        if not redis_up():
            pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
        overrides["redis_url"] = REDIS_URL
    settings = make_settings(tmp_path, **overrides)
    try:
        with TestClient(create_app(settings, embedder=embedder)) as c:
            yield c
    finally:
        if request.param == "redis":
            drop_prefix(settings.key_prefix)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Makes stores that share one state: the in-process one (one state directory), the
    shared Redis or the shared Redis Cluster (one key prefix, dropped afterwards), so a
    test can stand up a second learner on what the first left behind."""
    prefix = f"brtest-store-{uuid.uuid4().hex[:8]}"
    url = REDIS_URL if request.param == "memory" else require_redis(request.param)

    def make() -> Store:
        if request.param == "memory":
            return MemoryStore(tmp_path / "state")
        return RedisStore(url, prefix=prefix)

    yield make
    if request.param != "memory":
        drop_prefix(prefix, url)
