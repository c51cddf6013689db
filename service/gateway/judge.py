"""The judge: a catalogue model that grades a sampled fraction of answered requests.

Sampling is a coin flip per answered request (`fraction`); a per-minute budget caps
the judge's calls; grading runs on background workers, so it never delays the
served response, and a judge failure never touches it. The grade (a 1-10 score
mapped to [0, 1]) is posted through `Deferred`, so a user's own feedback within the
wait takes precedence. The judge's own calls are metered apart from served ones."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from service.gateway.config import JudgeConfig
from service.gateway.deferred import Deferred
from service.gateway.pricing import Usage, call_cost
from service.gateway.upstreams import UpstreamPool

if TYPE_CHECKING:
    from service.runtime_state import Runtime

log = logging.getLogger("banditroute.judge")

RUBRIC = (
    "You are grading an AI assistant's answer to a user's question.\n"
    "Rate how correct, complete and helpful the answer is, from 1 (wrong, useless or a "
    "refusal) to 10 (fully correct and helpful). Reply with one line, 'Score: N'.\n\n"
    "Question:\n{question}\n\nAnswer:\n{answer}\n"
)
# the grade's text is small: longer inputs are cut so one request cannot make the
# judge's calls expensive
MAX_CHARS = 8000
_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?)\b")


def parse_score(text: str) -> float | None:
    """The quality in [0, 1] of a judge reply 'Score: N' with N in 1..10 (the first
    number when the word is missing), or None when there is no usable score."""
    m = _SCORE.search(text) or _NUMBER.search(text)
    if m is None:
        return None
    score = float(m.group(1))
    if not 1 <= score <= 10:
        return None
    return (score - 1) / 9


@dataclass(frozen=True)
class Job:
    event_id: str
    created_at: float
    question: str
    answer: str


class Judge:
    def __init__(
        self,
        cfg: JudgeConfig,
        rt: Runtime,
        pool: UpstreamPool,
        deferred: Deferred,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.rt = rt
        self.pool = pool
        self.deferred = deferred
        self.rng = rng or random.Random()
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=cfg.max_queue)
        self._calls: collections.deque[float] = collections.deque()  # the last minute's

    def offer(self, event_id: str, created_at: float, question: str, answer: str) -> bool:
        """Sample an answered request for grading; True if it was queued."""
        if self.rng.random() >= self.cfg.fraction:
            return False
        metrics = self.rt.metrics.judge
        metrics.labels("sampled").inc()
        now = time.monotonic()
        while self._calls and now - self._calls[0] >= 60.0:
            self._calls.popleft()
        if len(self._calls) >= self.cfg.max_per_minute:
            metrics.labels("skipped_budget").inc()
            return False
        try:
            self.queue.put_nowait(
                Job(event_id, created_at, question[:MAX_CHARS], answer[:MAX_CHARS])
            )
        except asyncio.QueueFull:
            metrics.labels("skipped_queue").inc()
            return False
        self._calls.append(now)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        workers = [asyncio.create_task(self._work()) for _ in range(self.cfg.concurrency)]
        try:
            await stop.wait()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                quality = await self.grade(job)
            except Exception as exc:  # the judge never breaks anything but its grade
                log.warning("judge: grading %s failed: %s", job.event_id, exc)
                quality = None
            if quality is None:
                self.rt.metrics.judge.labels("failed").inc()
                continue
            self.rt.metrics.judge.labels("graded").inc()
            self.deferred.schedule(job.event_id, job.created_at, quality, "judge")

    async def grade(self, job: Job) -> float | None:
        """One judge call; its cost is metered on the judge's own counter."""
        up = self.pool.get(self.cfg.model)
        if up is None:
            return None
        body = {
            "model": up.upstream_model,
            "messages": [
                {"role": "user", "content": RUBRIC.format(question=job.question, answer=job.answer)}
            ],
            "temperature": 0,
            "max_tokens": 16,
        }
        try:
            resp = await up.client.send(up.request(body, stream=False))
        except httpx.HTTPError as exc:
            log.warning("judge: call failed: %s", exc)
            return None
        if resp.status_code != 200:
            log.warning("judge: upstream answered %d", resp.status_code)
            return None
        data = resp.json()
        usage = Usage.parse(data.get("usage"))
        price = self.rt.catalogue.get(self.cfg.model)
        if usage is not None and price is not None:
            self.rt.metrics.judge_cost.inc(call_cost(price, usage))
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return None
        return parse_score(str(text))
