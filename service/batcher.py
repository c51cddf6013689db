"""Turns query text into policy contexts, batching concurrent embedding requests.

Cache hits are answered at once. Misses join a queue; one task takes up to
`max_batch` of them (waiting at most `max_wait_ms` for company once the first has
arrived) and embeds them in one forward pass in a worker thread, so the event loop
keeps serving while the model runs, and concurrent new queries share the cost.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from service.embedder import Embedder
from service.features import Featurizer


class FeatureBatcher:
    def __init__(
        self,
        embedder: Embedder,
        featurizer: Featurizer,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
    ) -> None:
        self.embedder = embedder
        self.featurizer = featurizer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_texts = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="feature-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def features(self, text: str) -> np.ndarray:
        """The context vector of `text`, shape (featurizer.dim,)."""
        emb = self.embedder.lookup(text)
        if emb is None:
            fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            await self._queue.put((text, fut))
            emb = await fut
        return self.featurizer.transform_embeddings(emb[None, :], np.array([float(len(text))]))[0]

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
            texts = [t for t, _ in batch]
            try:
                vectors = await asyncio.to_thread(self.embedder.embed, texts)
            except Exception as exc:  # the callers get the error, the batcher lives on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.batched_texts += len(batch)
            for (_, fut), vec in zip(batch, vectors, strict=True):
                if not fut.done():
                    fut.set_result(vec)
