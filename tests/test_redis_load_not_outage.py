"""Load is not an outage: a call that waited too long for a pooled connection fails
alone, and the store does not start failing every other call fast."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.store.base import StoreUnavailable
from service.store.redis import RedisStore
from tests.service_helpers import REDIS_URL, drop_prefix, redis_up


def test_a_pool_wait_timeout_does_not_mark_the_store_down() -> None:
    if not redis_up():
        pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
    prefix = f"brtest-load-{uuid.uuid4().hex[:8]}"

    async def body() -> None:
        store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=0.3, max_connections=1)
        try:
            assert await store.get_models() == {}
            # another caller holds the only pooled connection past our wait for it
            pool = store._redis().connection_pool
            conn = await pool.get_connection()
            with pytest.raises(StoreUnavailable):
                await store.get_models()
            assert store._down_since is None  # busy, not down
            await pool.release(conn)
            assert await store.get_models() == {}  # the next call goes through at once
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        drop_prefix(prefix)
