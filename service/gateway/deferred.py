"""Machine-made feedback (the judge's grade, implicit signals) applied later.

A user's own feedback takes precedence: machine feedback on an event is applied
only once `wait_s` have passed since its decision, through the same at-most-once
feedback step as a user's. Whichever arrives first is the event's one outcome, so a
user who answers within the wait is learned and the machine's grade is dropped
("superseded"); after the wait the machine's grade stands and the user's is a 409.

Pending items live in this process only: a worker that stops drops them, and those
decisions close at their deadline as if nobody had answered."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from service.store.base import StoreUnavailable

if TYPE_CHECKING:
    from service.runtime_state import Runtime

log = logging.getLogger("banditroute.gateway")

# a store outage at apply time is retried this often, then the grade is dropped
RETRIES = 5


class Deferred:
    def __init__(self, rt: Runtime, wait_s: float, max_pending: int = 100_000) -> None:
        self.rt = rt
        self.wait_s = wait_s
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def schedule(self, event_id: str, created_at: float, quality: float, source: str) -> bool:
        """Apply `quality` from `source` to the event at created_at + wait_s (or now, if
        that has passed). False when too many are pending (the grade is dropped)."""
        if len(self._tasks) >= self.max_pending:
            self.rt.metrics.machine_feedback.labels(source, "dropped").inc()
            return False
        task = asyncio.create_task(self._later(event_id, created_at, quality, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _later(self, event_id: str, created_at: float, quality: float, source: str) -> None:
        from service.outcomes import apply_quality

        delay = created_at + self.wait_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for attempt in range(RETRIES):
            try:
                done = await apply_quality(self.rt, event_id, quality, source=source)
            except StoreUnavailable:
                await asyncio.sleep(min(2.0**attempt, 10.0))
                continue
            except Exception:
                log.exception("%s feedback for %s failed", source, event_id)
                self.rt.metrics.machine_feedback.labels(source, "error").inc()
                return
            outcome = {"duplicate": "superseded"}.get(done.status, done.status)
            if outcome in ("accepted", "awaiting_cost"):
                outcome = "applied"
            self.rt.metrics.machine_feedback.labels(source, outcome).inc()
            return
        self.rt.metrics.machine_feedback.labels(source, "error").inc()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
