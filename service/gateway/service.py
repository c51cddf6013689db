"""The gateway's long-lived parts, built in the app's lifespan: the upstream clients,
the judge, deferred machine feedback, the implicit signals' session memory, and the
background tasks the request path starts (a stream cut short settles its cost after
the request is gone)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from service.gateway.config import GatewayConfig, UpstreamConfig
from service.gateway.deferred import Deferred
from service.gateway.implicit import Implicit
from service.gateway.judge import Judge
from service.gateway.upstreams import UpstreamPool
from service.privacy.guard import PrivacyGuard, tags_of
from service.privacy.rules import PrivacyConfig, restriction

if TYPE_CHECKING:
    from service.runtime_state import Runtime

log = logging.getLogger("banditroute.gateway")


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        upstreams: Mapping[str, UpstreamConfig],
        rt: Runtime,
        environ: Mapping[str, str] | None = None,
        privacy: PrivacyConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.rt = rt
        self.privacy = PrivacyGuard(privacy or PrivacyConfig())
        self.pool = UpstreamPool(upstreams, environ)
        self.deferred = Deferred(rt, cfg.feedback_wait_s)
        self.judge = None
        if cfg.judge is not None:
            rng = random.Random(cfg.judge.seed)
            self.judge = Judge(cfg.judge, rt, self.pool, self.deferred, rng)
        self.implicit = Implicit(cfg.implicit)
        self.cascades = {c.name: c for c in cfg.cascades}
        # whether answers' text is read (by the judge or the implicit signals)
        self.needs_text = self.judge is not None or self.implicit.enabled
        self._background: set[asyncio.Task[Any]] = set()

    def may_judge(self, restricted: tuple[str, ...]) -> bool:
        """Whether the judge may read an answer whose request carried these sensitive
        entity types: only if the rules allow the judge's model to see them."""
        if not restricted or self.judge is None:
            return True
        rule = restriction(self.privacy.cfg, set(restricted))
        return bool(rule.allowed([self.judge.cfg.model], tags_of(self.rt.catalogue)))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` past the request that started it (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway background task failed", exc_info=task.exception())

    async def close(self) -> None:
        if self._background:
            _, late = await asyncio.wait(list(self._background), timeout=5)
            for task in late:
                task.cancel()
        await self.deferred.close()
        await self.pool.close()
