"""The last model cannot be deleted, even by two workers at once: the store checks and
deletes in one atomic step (Redis: one script; in-process: one synchronous step)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.store import open_store
from service.store.base import LastModel, ModelPrice
from tests.service_helpers import REDIS_URL, drop_prefix, redis_up


async def _race(url: str | None, state: Path, prefix: str) -> tuple[list[object], list[str]]:
    a = await open_store(url, state, prefix=prefix)
    b = a if url is None else await open_store(url, state, prefix=prefix)
    try:
        for name in ("one", "two"):
            await a.put_model(ModelPrice(name, 1.0, 1.0))
        results = await asyncio.gather(
            a.delete_model("one"), b.delete_model("two"), return_exceptions=True
        )
        return list(results), sorted(await a.get_models())
    finally:
        await a.close()
        if b is not a:
            await b.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_two_workers_deleting_the_last_two_models_leave_one(
    backend: str, tmp_path: Path
) -> None:
    url = None
    if backend == "redis":
        if not redis_up():
            pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
        url = REDIS_URL
    prefix = f"brtest-cat-{tmp_path.name[-8:]}"
    for trial in range(20):
        try:
            results, left = asyncio.run(_race(url, tmp_path / f"s{trial}", f"{prefix}-{trial}"))
        finally:
            if url is not None:
                drop_prefix(f"{prefix}-{trial}")
        assert len(left) == 1, (trial, results, left)
        assert sum(r is True for r in results) == 1
        assert sum(isinstance(r, LastModel) for r in results) == 1
