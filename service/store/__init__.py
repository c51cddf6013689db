"""Where decisions, feedback, snapshots, the lease and the catalogue are kept:
Redis when a URL is configured, else this process (snapshots on disk)."""

from __future__ import annotations

from pathlib import Path

from service.store.base import (
    DecisionRecord,
    FeedbackEvent,
    FeedbackOutcome,
    ModelPrice,
    Snapshot,
    Store,
    StoreUnavailable,
)
from service.store.memory import MemoryStore
from service.store.redis import RedisStore

__all__ = [
    "DecisionRecord",
    "FeedbackEvent",
    "FeedbackOutcome",
    "MemoryStore",
    "ModelPrice",
    "RedisStore",
    "Snapshot",
    "Store",
    "StoreUnavailable",
    "open_store",
]


async def open_store(
    redis_url: str | None,
    state_dir: Path | None,
    *,
    prefix: str = "br",
    grace_s: float = 3600.0,
    log_max: int = 100_000,
    max_decisions: int = 500_000,
    max_connections: int = 64,
) -> Store:
    """The configured store: RedisStore for a URL (state_dir unused: Redis keeps the
    snapshots), else (None or "") a MemoryStore persisting snapshots under state_dir
    if given (at most max_decisions decision records per policy). max_connections:
    the Redis client's pool (a learner's blocking read holds one while it waits). A
    Redis that is down is not an error here; see RedisStore.connect."""
    if not redis_url:
        return MemoryStore(
            state_dir, grace_s=grace_s, log_max=log_max, max_decisions=max_decisions
        )
    return await RedisStore.connect(
        redis_url,
        prefix=prefix,
        grace_s=grace_s,
        log_max=log_max,
        max_connections=max_connections,
    )
