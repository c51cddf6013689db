"""The feature batcher on a stand-in embedder: bounded queue, cancelled requests
skipped, and a failed batch retried text by text (no model needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from service.batcher import FeatureBatcher, Overloaded
from service.features import Featurizer


class FakeEmbedder:
    """Unit vectors, one per text; a text containing BAD fails its whole batch, as a
    tokenizer error does."""

    model_name = "fake"
    dim = 8
    truncation_side = "left"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_prepared(list(texts))

    def embed_prepared(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if any("BAD" in t for t in texts):
            raise UnicodeEncodeError("utf-8", "BAD", 0, 1, "surrogates not allowed")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    def lookup_prepared(self, prepared: str) -> np.ndarray | None:
        return None


def _batcher(**kw: float) -> tuple[FeatureBatcher, FakeEmbedder]:
    emb = FakeEmbedder()
    return FeatureBatcher(emb, Featurizer(emb), **kw), emb  # type: ignore[arg-type]


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        batcher, _ = _batcher(max_queue=2)  # not started: nothing drains the queue
        waiting = [asyncio.create_task(batcher.features(f"q{i}")) for i in range(2)]
        await asyncio.sleep(0)
        assert batcher.queued == 2
        with pytest.raises(Overloaded, match="full") as exc:
            await batcher.features("one too many")
        assert exc.value.retry_after_s >= 1 and batcher.refused_full == 1
        batcher.start()
        vectors = await asyncio.gather(*waiting)
        assert all(v.shape == (batcher.featurizer.dim,) for v in vectors)
        await batcher.stop()

    asyncio.run(scenario())


def test_cancelled_requests_are_not_embedded() -> None:
    async def scenario() -> None:
        batcher, emb = _batcher(max_batch=8)
        tasks = [asyncio.create_task(batcher.features(f"query {i}")) for i in range(4)]
        await asyncio.sleep(0)  # all four queued
        for t in tasks[:3]:
            t.cancel()  # their clients went away
        await asyncio.sleep(0)
        batcher.start()
        await tasks[3]
        await batcher.stop()
        assert emb.calls == [["query 3"]]
        assert batcher.skipped_cancelled == 3

    asyncio.run(scenario())


def test_one_bad_text_fails_only_its_own_request() -> None:
    async def scenario() -> None:
        batcher, emb = _batcher(max_batch=16, max_wait_ms=50)
        batcher.start()
        texts = [f"good {i}" for i in range(5)] + ["BAD"] + [f"good {i}" for i in range(5, 9)]
        results = await asyncio.gather(
            *(batcher.features(t) for t in texts), return_exceptions=True
        )
        await batcher.stop()
        failed = [t for t, r in zip(texts, results, strict=True) if isinstance(r, Exception)]
        assert failed == ["BAD"]
        assert len(emb.calls[0]) == len(texts)  # one batch first, then one by one
        assert sorted(map(tuple, emb.calls[1:])) == sorted((t,) for t in texts)

    asyncio.run(scenario())


def test_long_text_is_prepared_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import service.batcher as batcher_module

    threads: list[str] = []
    real = batcher_module.prepare_text

    def spy(text: str) -> str:
        threads.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(batcher_module, "prepare_text", spy)

    async def scenario() -> None:
        batcher, _ = _batcher()
        batcher.start()
        await batcher.features("short")
        await batcher.features("word " * 2_000)
        await batcher.stop()

    asyncio.run(scenario())
    main = threading.main_thread().name
    assert threads[0] == main and threads[1] != main
