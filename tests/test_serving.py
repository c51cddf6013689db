"""A worker's served copy of a policy (service.serving.ServingPolicy): reloads that
race, a catalogue sync that fails, and a snapshot this worker must refuse."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

import service.serving
from policies import PolicyError, load_policy, make_policy
from service.serving import ServingPolicy
from service.store.base import ModelPrice, Snapshot

MODELS = ["cheap", "strong"]
DIM = 5
CATALOGUE = {m: ModelPrice(m, 1.0, 1.0) for m in MODELS}


def snapshot(version: int, dim: int = DIM) -> Snapshot:
    return Snapshot(make_policy("linucb", MODELS, dim, seed=0).to_bytes(), version, "0-0", 0)


class FakeStore:
    """load_snapshot answers from a script: (delay s, snapshot) per call, then the last."""

    def __init__(self, script: list[tuple[float, Snapshot]]) -> None:
        self.script = script
        self.calls = 0

    async def load_snapshot(self, policy: str) -> Snapshot:
        delay, snap = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        await asyncio.sleep(delay)
        return snap


def served() -> ServingPolicy:
    return ServingPolicy("p", make_policy("linucb", MODELS, DIM, seed=0), version=1)


def test_a_slow_reload_never_replaces_a_newer_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status read and the background reload race: the one that decodes v2 slowly
    finishes after the one that installed v3 and must not put v2 back."""
    calls = []

    def slow_first(state: bytes) -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)
        return load_policy(state)

    monkeypatch.setattr(service.serving, "load_policy", slow_first)

    async def main() -> None:
        sp = served()
        store: Any = FakeStore([(0.0, snapshot(2)), (0.0, snapshot(3))])
        await asyncio.gather(sp.reload(store, CATALOGUE), sp.reload(store, CATALOGUE))
        assert sp.version == 3

    asyncio.run(main())


def test_a_failed_catalogue_sync_leaves_the_served_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        sp = served()
        before = sp.policy

        def broken(*args: object) -> None:
            raise PolicyError("cannot add")

        monkeypatch.setattr(service.serving, "add_model", broken)
        store: Any = FakeStore([(0.0, snapshot(2))])
        await sp.reload(store, {**CATALOGUE, "new": ModelPrice("new", 1.0, 1.0)})
        assert sp.version == 1 and sp.policy is before

    asyncio.run(main())


def test_a_refused_snapshot_is_not_fetched_on_every_request() -> None:
    async def main() -> None:
        sp = served()
        store: Any = FakeStore([(0.0, snapshot(2, dim=DIM + 1))])
        for _ in range(5):
            sp.notice_version(store, 2, CATALOGUE)
            await asyncio.sleep(0.01)
            if sp._reloading is not None:
                await sp._reloading
        assert store.calls == 1 and sp.version == 1 and sp.rejected == 2
        # a newer snapshot is tried again
        store.script = [(0.0, snapshot(3))]
        sp.notice_version(store, 3, CATALOGUE)
        assert sp._reloading is not None
        await sp._reloading
        assert sp.version == 3

    asyncio.run(main())


def test_a_snapshot_of_other_features_is_refused_even_with_the_same_dimension() -> None:
    from service.serving import check_features

    ours = '{"dim":5,"model":"all-MiniLM-L6-v2","seed":0}'
    theirs = '{"dim":5,"model":"all-MiniLM-L6-v2","seed":1}'

    async def main() -> None:
        sp = ServingPolicy("p", make_policy("linucb", MODELS, DIM, seed=0), 1, ours)
        other = dataclasses.replace(snapshot(2), features=theirs)
        store: Any = FakeStore([(0.0, other)])
        await sp.reload(store, CATALOGUE)
        assert sp.version == 1 and sp.rejected == 2
        same = dataclasses.replace(snapshot(3), features=ours)
        store.script = [(0.0, same)]
        await sp.reload(store, CATALOGUE)
        assert sp.version == 3

    asyncio.run(main())
    with pytest.raises(PolicyError, match="seed"):
        check_features("p", dataclasses.replace(snapshot(2), features=theirs), ours)
