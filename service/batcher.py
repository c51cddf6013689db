"""Turns query text into policy contexts, batching concurrent embedding requests.

Cache hits are answered at once. Misses join a bounded queue; one task takes up to
`max_batch` of them (waiting at most `max_wait_ms` for company once the first has
arrived) and embeds them in one forward pass in a worker thread, so the event loop
keeps serving while the model runs, and concurrent new queries share the cost.

A full queue refuses at once (`Overloaded`: the service answers 503 with Retry-After)
rather than queueing without bound; requests cancelled while queued (their client
went away) are skipped; and a batch the model fails on is retried text by text, so
one bad text fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np

from service.embedder import PREPARE_INLINE_CHARS, Embedder, prepare_text
from service.features import Featurizer

log = logging.getLogger("banditroute.batcher")


class Overloaded(Exception):
    """The embedding queue is full: the caller should retry after `retry_after_s`."""

    def __init__(self, queued: int, retry_after_s: int = 1) -> None:
        super().__init__(f"the embedding queue is full ({queued} waiting); retry later")
        self.retry_after_s = retry_after_s


class FeatureBatcher:
    def __init__(
        self,
        embedder: Embedder,
        featurizer: Featurizer,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.embedder = embedder
        self.featurizer = featurizer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] = asyncio.Queue(
            maxsize=max_queue
        )
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_texts = 0
        self.skipped_cancelled = 0
        self.refused_full = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="feature-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def features(self, text: str) -> np.ndarray:
        """The context vector of `text`, shape (featurizer.dim,). Raises `Overloaded`
        when the queue is full, and the model's error for a text it cannot embed."""
        if len(text) > PREPARE_INLINE_CHARS:
            # unpacking a literal or splitting a long prompt is not for the event loop
            prepared = await asyncio.to_thread(prepare_text, text)
        else:
            prepared = prepare_text(text)
        emb = self.embedder.lookup_prepared(prepared)
        if emb is None:
            fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            try:
                self._queue.put_nowait((prepared, fut))
            except asyncio.QueueFull:
                self.refused_full += 1
                raise Overloaded(self._queue.qsize()) from None
            emb = await fut
        return self.featurizer.transform_embedding(emb, float(len(text)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    batch.append(
                        self._queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            live = [(t, f) for t, f in batch if not f.done()]  # done: cancelled by its caller
            self.skipped_cancelled += len(batch) - len(live)
            if live:
                await self._embed(live)

    async def _embed(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        texts = [t for t, _ in batch]
        try:
            vectors = await asyncio.to_thread(self.embedder.embed_prepared, texts)
        except Exception as exc:  # the batcher lives on
            if len(batch) == 1:
                _, fut = batch[0]
                if not fut.done():
                    fut.set_exception(exc)
                return
            # one bad text must not fail its neighbours: retry each on its own
            log.warning("embedding a batch of %d failed (%s); one by one now", len(batch), exc)
            for item in batch:
                if not item[1].done():
                    await self._embed([item])
            return
        self.batches += 1
        self.batched_texts += len(batch)
        for (_, fut), vec in zip(batch, vectors, strict=True):
            if not fut.done():
                fut.set_result(vec)
