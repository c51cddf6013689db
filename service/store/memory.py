"""The in-process store: the embedded default when no Redis is configured.

One process only. Decisions, the feedback stream, the counters and the lease live in
memory and are lost on restart (unanswered decisions then get a 404, like expired
ones). Snapshots and the model catalogue are what must survive: each snapshot is
written to `state_dir/<policy>.snapshot` and the catalogue to `state_dir/models.json`
(atomically: temp file, fsync, os.replace), so a restarted process serves and keeps
learning from what it had learned, with the models it had.

Snapshot file: b"BRSNAP1\\n", one line of JSON metadata, then the state bytes.

Every method runs without awaiting between its check and its change, so on one
event loop each is atomic like the Redis scripts it mirrors. A store belongs to the
event loop that first uses it (its conditions bind to that loop).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import heapq
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from service.abstats import UnitTotals, unit_decision, unit_feedback
from service.budgets.ledger import MemoryLedger
from service.store.base import (
    NOT_HELD,
    RENEWED,
    SWEEP_MARGIN_S,
    TAKEN,
    UNIT_TTL_S,
    DecisionRecord,
    FeedbackEvent,
    FeedbackOutcome,
    LastModel,
    ModelPrice,
    Snapshot,
    Store,
    StoreUnavailable,
    check_cost,
    check_pin,
    check_policy_name,
    default_cost,
    feedback_increments,
    parse_stream_id,
)

log = logging.getLogger("banditroute.store")

_MAGIC = b"BRSNAP1\n"
_MODELS_FILE = "models.json"
_EXPERIMENTS_FILE = "experiments.json"
_TENANTS_FILE = "tenants.json"
_HEADER_KEYS = {"version", "last_id", "applied", "published_at", "size"}

# the states a decision goes through, as in the Redis store's `answered` field;
# parked: its quality taken, waiting for the cost that will follow
_OPEN, _ANSWERED, _CLOSED, _PARKED = 0, 1, 2, 3

StreamId = tuple[int, int]


@dataclass(slots=True)
class _Decision:
    # DecisionRecord.encode(), so reads decode like Redis; None once answered or
    # closed (a tombstone: the context is what weighs)
    fields: dict[str, bytes] | None
    deadline: float
    expire_at: float  # wall-clock unix seconds; the record is gone after it
    state: int = _OPEN
    awaits: bool = False  # DecisionRecord.awaits_cost
    cost: float | None = None  # the measured cost, once attached
    parked: FeedbackEvent | None = None  # the quality waiting for the cost (_PARKED)


@dataclass(slots=True)
class _Pin:
    """A session pinned to a decision (pin_session)."""

    event_id: str
    model: str
    turn: int  # turns taken so far
    turns: int
    ttl_s: float
    expire_at: float  # time.monotonic()


@dataclass
class _Policy:
    """Everything the store keeps for one policy."""

    decisions: dict[str, _Decision] = field(default_factory=dict)
    due: list[tuple[float, str]] = field(default_factory=list)  # heap by deadline
    expiry: list[tuple[float, str]] = field(default_factory=list)  # heap by expire_at
    stream: list[tuple[StreamId, dict[str, bytes]]] = field(default_factory=list)
    last_id: StreamId = (0, 0)  # the newest id ever issued, so ids only grow
    total: int = 0
    snap: Snapshot | None = None  # with its state bytes, once loaded or published
    meta: dict[str, float | int | str] | None = None  # the published snapshot's header
    lease: tuple[str, float] | None = None  # (owner, monotonic expiry)
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    log: collections.deque[tuple[StreamId, dict[str, bytes]]] = field(
        default_factory=collections.deque
    )
    counters: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    units: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # per arm: unit -> (its totals, when last written), least recently written first
    unit_totals: dict[tuple[str, str], collections.OrderedDict[str, tuple[UnitTotals, float]]] = (
        field(default_factory=dict)
    )
    shadow: dict[str, float] = field(default_factory=dict)
    # source policy -> the newest of its stream ids copied here (forward_copies)
    marks: dict[str, StreamId] = field(default_factory=dict)
    sessions: dict[str, _Pin] = field(default_factory=dict)
    sessions_mark: int = 1024  # sweep expired pins when there are more than this


class MemoryStore(Store):
    """The store in this process; snapshots persisted under `state_dir` if given.

    grace_s: how long past its deadline a decision's tombstone is kept, so a late
    second feedback is still recognised as a duplicate (409) rather than unknown (404).
    max_decisions: at most this many decision records (open ones and tombstones) per
    policy; beyond it the oldest are shed (`decisions_shed`, logged): their feedback
    then gets a 404 and an open one no default reward.
    log_max: how many events each policy's decision log keeps. Experiment configs
    persist under `state_dir` like the catalogue; their counters, like the log, live
    in memory only. Each experiment variant keeps its units' own totals (for the
    per-unit sums) for `unit_ttl_s` after their last write, at most `unit_max` of them
    (the least recently written go first; a unit back after that counts anew).
    """

    unit_ttl_s: float = UNIT_TTL_S
    unit_max: int = 200_000

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        grace_s: float = 3600.0,
        log_max: int = 100_000,
        max_decisions: int = 500_000,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        if max_decisions < 1:
            raise ValueError(f"max_decisions must be >= 1, got {max_decisions}")
        self.max_decisions = max_decisions
        self._shed = 0
        if log_max < 1:
            raise ValueError(f"log_max must be >= 1, got {log_max}")
        self.state_dir = state_dir
        self.grace_s = grace_s
        self.log_max = log_max
        self._policies: dict[str, _Policy] = {}
        # session -> (sensitive entity types it carried, monotonic expiry)
        self._flags: dict[str, tuple[frozenset[str], float]] = {}
        self._flags_mark = 1024
        self._models: dict[str, str] = {}  # name -> JSON, as Redis keeps it
        # learner group -> member -> monotonic expiry (heartbeat)
        self._groups: dict[str, dict[str, float]] = {}
        if state_dir is not None and (state_dir / _MODELS_FILE).is_file():
            # models registered through the API survive a restart, like Redis keeps them
            self._models = json.loads((state_dir / _MODELS_FILE).read_text())
        self._experiments: dict[str, str] = {}
        if state_dir is not None and (state_dir / _EXPERIMENTS_FILE).is_file():
            self._experiments = json.loads((state_dir / _EXPERIMENTS_FILE).read_text())
        self._tenants: dict[str, str] = {}
        if state_dir is not None and (state_dir / _TENANTS_FILE).is_file():
            self._tenants = json.loads((state_dir / _TENANTS_FILE).read_text())
        self._disk_lock = asyncio.Lock()
        self._persisted: dict[str, int] = {}  # policy -> version on disk

    # ---- decisions and feedback ------------------------------------------
    async def put_decision(self, rec: DecisionRecord) -> int:
        st = self._policy(rec.policy)
        wall = time.time()
        self._purge(st, wall)
        expire_at = rec.deadline + self.grace_s + SWEEP_MARGIN_S
        st.decisions[rec.event_id] = _Decision(
            rec.encode(), rec.deadline, expire_at, awaits=rec.awaits_cost
        )
        heapq.heappush(st.due, (rec.deadline, rec.event_id))
        heapq.heappush(st.expiry, (expire_at, rec.event_id))
        self._bound(st)
        if rec.experiment is not None:
            arm = (rec.experiment, rec.variant or "")
            counters = st.counters.setdefault(arm, {})
            counters["decisions"] = counters.get("decisions", 0) + 1
            if rec.unit is None:
                counters["anon"] = counters.get("anon", 0) + 1
                unit_decision(counters, None)
            else:
                st.units.setdefault(arm, set()).add(rec.unit)
                totals = self._unit_totals(st, arm, wall)
                before = totals.pop(rec.unit, None)
                prior = None if before is None else before[0]
                totals[rec.unit] = (unit_decision(counters, prior), wall)
        return self._version(st)

    async def get_decision(self, policy: str, event_id: str, now: float) -> DecisionRecord | None:
        d = self._live(self._policy(policy), event_id)
        if d is None or d.state not in (_OPEN, _PARKED) or d.fields is None or now > d.deadline:
            return None
        return replace(DecisionRecord.decode(d.fields), cost_usd=d.cost)

    async def was_answered(self, policy: str, event_id: str) -> bool:
        d = self._live(self._policy(policy), event_id)
        return d is not None and d.state in (_ANSWERED, _PARKED)

    async def submit_feedback(
        self, policy: str, event_id: str, event: FeedbackEvent, now: float
    ) -> FeedbackOutcome:
        _check_event(policy, event_id, event)
        st = self._policy(policy)
        d = self._live(st, event_id)
        if d is None:
            return FeedbackOutcome.UNKNOWN
        if d.state in (_ANSWERED, _PARKED):
            return FeedbackOutcome.DUPLICATE
        if d.state == _CLOSED or now > d.deadline:
            return FeedbackOutcome.UNKNOWN
        if d.cost is not None:
            event = event.with_cost(d.cost)
        elif d.awaits:
            d.state, d.parked = _PARKED, event
            return FeedbackOutcome.PARKED
        await self._answer(st, event_id, d, event)
        return FeedbackOutcome.ACCEPTED

    async def attach_cost(
        self, policy: str, event_id: str, cost_usd: float, now: float
    ) -> FeedbackOutcome:
        cost = check_cost(cost_usd)
        st = self._policy(policy)
        d = self._live(st, event_id)
        if d is None or d.state == _CLOSED:
            return FeedbackOutcome.UNKNOWN
        if d.state == _ANSWERED or d.cost is not None:
            return FeedbackOutcome.DUPLICATE
        if now > d.deadline:
            return FeedbackOutcome.UNKNOWN
        if d.parked is not None:
            parked, d.parked = d.parked, None
            await self._answer(st, event_id, d, parked.with_cost(cost))
        else:
            d.cost = cost
        return FeedbackOutcome.ACCEPTED

    async def _answer(self, st: _Policy, event_id: str, d: _Decision, event: FeedbackEvent) -> None:
        """Mark the decision answered and append its event, with its copies and its
        experiment counters, in one step (nothing awaited before the last change)."""
        d.state = _ANSWERED
        self._tombstone(st, event_id, d)
        self._append(st, event.encode())
        # the copies for shadows and sharing variants, in the same step (one process:
        # nothing can fail between); forward_copies then finds them taken
        copies = (event.copies or {}).items()
        copied = [self._copy(t, event.policy, st.last_id, event, incr) for t, incr in copies]
        self._count(st, event)
        for target in copied:
            if target is not None:
                await self._notify(target)
        await self._notify(st)

    def _count(self, st: _Policy, event: FeedbackEvent) -> None:
        """Add an accepted event to its experiment variant's counters and unit sums."""
        if event.experiment is None:
            return
        arm = (event.experiment, event.variant or "")
        counters = st.counters.setdefault(arm, {})
        for name, value in feedback_increments(event).items():
            counters[name] = counters.get(name, 0.0) + value
        if event.unit is None:  # its decision made it a unit of its own
            unit_feedback(counters, (1.0, 0.0, 0.0, 0.0), event.quality, event.cost_usd)
        else:
            wall = time.time()
            totals = self._unit_totals(st, arm, wall)
            before = totals.pop(event.unit, None)
            prior = None if before is None else before[0]
            after = unit_feedback(counters, prior, event.quality, event.cost_usd)
            totals[event.unit] = (after, wall)

    async def expire_due(
        self, policy: str, now: float, default_quality: float | None, limit: int = 1000
    ) -> int:
        st = self._policy(policy)
        self._purge(st, time.time())
        prices = await self.get_models() if default_quality is not None else {}
        closed = appended = 0
        while st.due and st.due[0][0] < now and closed < limit:
            deadline, event_id = heapq.heappop(st.due)
            d = self._live(st, event_id)
            # stale heap entries: answered, gone, or re-put with another deadline
            if d is None or d.state not in (_OPEN, _PARKED) or d.deadline != deadline:
                continue
            closed += 1
            if d.parked is not None:
                # a quality that waited in vain for its cost: learned with its own
                parked, d.parked = d.parked, None
                await self._answer(st, event_id, d, parked)
                continue
            d.state = _CLOSED
            if default_quality is not None and d.fields is not None:
                rec = DecisionRecord.decode(d.fields)
                ev = FeedbackEvent.join(
                    rec,
                    quality=default_quality,
                    cost_usd=default_cost(rec, prices) if d.cost is None else d.cost,
                    source="default",
                    now=now,
                )
                self._append(st, replace(ev, cost_estimated=d.cost is None).encode())
                appended += 1
            self._tombstone(st, event_id, d)
        if appended:
            await self._notify(st)
        return closed

    async def due_backlog(self, policy: str, now: float) -> int:
        st = self._policy(policy)
        # walk only the part of the heap past its deadline: a child is never earlier
        # than its parent, so a subtree whose root is not due has nothing due
        count, todo = 0, [0] if st.due else []
        while todo:
            i = todo.pop()
            deadline, event_id = st.due[i]
            if deadline >= now:
                continue
            d = st.decisions.get(event_id)
            count += d is not None and d.state in (_OPEN, _PARKED) and d.deadline == deadline
            todo += [c for c in (2 * i + 1, 2 * i + 2) if c < len(st.due)]
        return count

    async def forward_copies(self, policy: str, batch: list[tuple[str, FeedbackEvent]]) -> int:
        done = 0
        for entry_id, ev in batch:
            for target, incr in (ev.copies or {}).items():
                tst = self._copy(target, policy, parse_stream_id(entry_id), ev, incr)
                if tst is not None:
                    done += 1
                    await self._notify(tst)
        return done

    @property
    def decisions_shed(self) -> int:
        return self._shed

    async def read_feedback(
        self, policy: str, after_id: str, count: int, block_ms: int = 0
    ) -> list[tuple[str, FeedbackEvent]]:
        st = self._policy(policy)
        after = parse_stream_id(after_id)
        if block_ms > 0 and not self._after(st, after, 1):
            try:
                async with asyncio.timeout(block_ms / 1000), st.cond:
                    await st.cond.wait_for(lambda: bool(self._after(st, after, 1)))
            except TimeoutError:
                return []
        return [
            (f"{i[0]}-{i[1]}", FeedbackEvent.decode(f)) for i, f in self._after(st, after, count)
        ]

    async def read_log(
        self, policy: str, after_id: str, count: int
    ) -> list[tuple[str, FeedbackEvent]]:
        after = parse_stream_id(after_id)
        out = []
        for i, f in self._policy(policy).log:
            if i > after:
                out.append((f"{i[0]}-{i[1]}", FeedbackEvent.decode(f)))
                if len(out) >= count:
                    break
        return out

    async def append_feedback(
        self, policy: str, event: FeedbackEvent, shadow: dict[str, float] | None = None
    ) -> None:
        st = self._policy(policy)
        self._append(st, event.encode(), log=False)
        for name, value in (shadow or {}).items():
            st.shadow[name] = st.shadow.get(name, 0.0) + value
        await self._notify(st)

    async def count_shadow_decision(self, policy: str, agree: bool, unsupported: float) -> None:
        st = self._policy(policy)
        st.shadow["decisions"] = st.shadow.get("decisions", 0) + 1
        st.shadow["agree"] = st.shadow.get("agree", 0) + int(agree)
        if unsupported > 0:
            st.shadow["unsupported"] = st.shadow.get("unsupported", 0.0) + unsupported

    async def shadow_counts(self, policy: str) -> dict[str, float]:
        return dict(self._policy(policy).shadow)

    # ---- session pins ------------------------------------------------------------
    async def pin_session(
        self, policy: str, session: str, event_id: str, model: str, turns: int, ttl_s: float
    ) -> None:
        check_pin(session, turns, ttl_s)
        st = self._policy(policy)
        if turns <= 1:
            st.sessions.pop(session, None)
            return
        mono = time.monotonic()
        st.sessions[session] = _Pin(event_id, model, 1, turns, ttl_s, mono + ttl_s)
        if len(st.sessions) > st.sessions_mark:
            # amortised: each sweep at least halves what is left to sweep next time
            st.sessions = {k: p for k, p in st.sessions.items() if p.expire_at > mono}
            st.sessions_mark = max(1024, 2 * len(st.sessions))

    async def session_turn(self, policy: str, session: str) -> tuple[str, str, int] | None:
        st = self._policy(policy)
        pin = st.sessions.get(session)
        mono = time.monotonic()
        if pin is None or pin.expire_at <= mono or pin.turn >= pin.turns:
            st.sessions.pop(session, None)
            return None
        pin.turn += 1
        pin.expire_at = mono + pin.ttl_s
        if pin.turn >= pin.turns:  # the last turn: nothing left to reuse
            del st.sessions[session]
        return pin.event_id, pin.model, pin.turn

    async def flag_session(self, session: str, entities: list[str], ttl_s: float) -> None:
        mono = time.monotonic()
        before, until = self._flags.get(session, (frozenset(), 0.0))
        kept = before if until > mono else frozenset()
        self._flags[session] = (kept | frozenset(entities), mono + ttl_s)
        if len(self._flags) > self._flags_mark:
            # amortised, as for the pins: each sweep at least halves the next one's work
            self._flags = {k: v for k, v in self._flags.items() if v[1] > mono}
            self._flags_mark = max(1024, 2 * len(self._flags))

    async def session_flags(self, session: str) -> set[str]:
        got = self._flags.get(session)
        if got is None or got[1] <= time.monotonic():
            return set()
        return set(got[0])

    # ---- experiments ---------------------------------------------------------
    async def experiment_counts(
        self, policy: str, experiment: str, variant: str
    ) -> tuple[dict[str, float], int]:
        st = self._policy(policy)
        arm = (experiment, variant)
        return dict(st.counters.get(arm, {})), len(st.units.get(arm, ()))

    async def get_experiments(self, include_deleted: bool = False) -> dict[str, str]:
        return {k: v for k, v in self._experiments.items() if include_deleted or v}

    async def put_experiment(self, name: str, doc: str) -> None:
        self._experiments[name] = doc
        await self._persist_json(_EXPERIMENTS_FILE, self._experiments)

    async def get_tenants(self, include_deleted: bool = False) -> dict[str, str]:
        return {k: v for k, v in self._tenants.items() if include_deleted or v}

    async def put_tenant(self, name: str, doc: str) -> None:
        self._tenants[name] = doc
        await self._persist_json(_TENANTS_FILE, self._tenants)

    async def delete_tenant(self, name: str) -> bool:
        found = bool(self._tenants.get(name))
        self._tenants[name] = ""
        await self._persist_json(_TENANTS_FILE, self._tenants)
        return found

    async def delete_experiment(self, name: str, arms: list[tuple[str, str]]) -> bool:
        found = bool(self._experiments.get(name))
        self._experiments[name] = ""  # a tombstone: never re-seeded
        for policy, variant in arms:
            st = self._policy(policy)
            st.counters.pop((name, variant), None)
            st.units.pop((name, variant), None)
            st.unit_totals.pop((name, variant), None)
        await self._persist_json(_EXPERIMENTS_FILE, self._experiments)
        return found

    async def feedback_pending(self, policy: str) -> int:
        return len(self._policy(policy).stream)

    async def feedback_total(self, policy: str) -> int:
        return self._policy(policy).total

    # ---- snapshots and lease ----------------------------------------------
    async def publish_snapshot(self, policy: str, snap: Snapshot, owner: str | None) -> bool:
        st = self._policy(policy)
        last = parse_stream_id(snap.last_id)
        if owner is not None and (
            self._holder(st) != owner or snap.version != self._version(st) + 1
        ):
            return False
        st.snap = snap
        st.meta = _header(snap)
        st.last_id = max(st.last_id, last)
        del st.stream[: bisect.bisect_right(st.stream, last, key=lambda e: e[0])]
        if self.state_dir is not None:
            await self._persist(policy)
        return True

    async def load_snapshot(self, policy: str) -> Snapshot | None:
        st = self._policy(policy)
        if st.snap is None and st.meta is not None and self.state_dir is not None:
            disk = await asyncio.to_thread(_read_snapshot, self._path(policy))
            if st.snap is None:  # a publish during the read wins
                st.snap = disk
        return st.snap

    async def snapshot_info(self, policy: str) -> Snapshot | None:
        meta = self._policy(policy).meta
        if meta is None:
            return None
        return Snapshot(
            state=b"",
            version=int(meta["version"]),
            last_id=str(meta["last_id"]),
            applied=int(meta["applied"]),
            published_at=float(meta["published_at"]),
            features=str(meta.get("features", "")),
            pacers=str(meta.get("pacers", "")),
        )

    async def snapshot_version(self, policy: str) -> int:
        return self._version(self._policy(policy))

    async def acquire_lease(self, policy: str, owner: str, ttl_ms: int) -> int:
        st = self._policy(policy)
        holder = self._holder(st)
        if holder is not None and holder != owner:
            return NOT_HELD
        st.lease = (owner, time.monotonic() + ttl_ms / 1000)
        return RENEWED if holder == owner else TAKEN

    async def release_lease(self, policy: str, owner: str) -> None:
        st = self._policy(policy)
        if self._holder(st) == owner:
            st.lease = None

    async def heartbeat(self, group: str, member: str, ttl_ms: int) -> list[str]:
        if not member or ttl_ms <= 0:
            raise ValueError(f"heartbeat needs a member and ttl_ms > 0, got {member!r}, {ttl_ms}")
        now = time.monotonic()
        members = self._groups.setdefault(group, {})
        for m in [m for m, until in members.items() if until <= now]:
            del members[m]
        members[member] = now + ttl_ms / 1000
        return sorted(members)

    async def leave(self, group: str, member: str) -> None:
        self._groups.get(group, {}).pop(member, None)

    # ---- model catalogue ---------------------------------------------------
    async def get_models(self) -> dict[str, ModelPrice]:
        return {name: ModelPrice(**json.loads(v)) for name, v in self._models.items()}

    async def put_model(self, model: ModelPrice) -> None:
        self._models[model.name] = json.dumps(asdict(model), separators=(",", ":"))
        await self._persist_models()

    async def delete_model(self, name: str) -> bool:
        if name in self._models and len(self._models) <= 1:
            raise LastModel(name)
        found = self._models.pop(name, None) is not None
        if found:
            await self._persist_models()
        return found

    async def _persist_models(self) -> None:
        await self._persist_json(_MODELS_FILE, self._models)

    async def _persist_json(self, name: str, doc: dict[str, str]) -> None:
        if self.state_dir is None:
            return
        # serialised, and dumped inside the lock, so the file ends at the newest state
        async with self._disk_lock:
            data = json.dumps(doc, indent=1).encode()
            try:
                await asyncio.to_thread(_write_atomic, self.state_dir / name, data)
            except OSError as exc:
                raise StoreUnavailable(f"cannot persist {name}: {exc}") from exc

    # ---- budgets -------------------------------------------------------------
    def ledger(self) -> MemoryLedger:
        # made on first use rather than in __init__; one per store, its sums live in it
        led: MemoryLedger | None = getattr(self, "_ledger", None)
        if led is None:
            led = self._ledger = MemoryLedger()
        return led

    # ---- housekeeping -------------------------------------------------------
    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release: snapshots are on disk as soon as publish returns."""

    # ---- internals -----------------------------------------------------------
    def _policy(self, policy: str) -> _Policy:
        st = self._policies.get(policy)
        if st is not None:
            return st
        check_policy_name(policy)
        st = _Policy()
        if self.state_dir is not None:
            # only the small header: the version must be right from the first decision,
            # and new stream ids must sort after the snapshot's last_id
            st.meta = _read_header(self._path(policy))
            if st.meta is not None:
                st.last_id = parse_stream_id(str(st.meta["last_id"]))
                self._persisted[policy] = int(st.meta["version"])
        self._policies[policy] = st
        return st

    def _path(self, policy: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{policy}.snapshot"

    @staticmethod
    def _version(st: _Policy) -> int:
        return 0 if st.meta is None else int(st.meta["version"])

    @staticmethod
    def _live(st: _Policy, event_id: str) -> _Decision | None:
        d = st.decisions.get(event_id)
        return d if d is not None and time.time() <= d.expire_at else None

    def _tombstone(self, st: _Policy, event_id: str, d: _Decision) -> None:
        """Answered or closed: drop the context, keep the state until deadline + grace."""
        d.fields = None
        d.expire_at = d.deadline + self.grace_s
        heapq.heappush(st.expiry, (d.expire_at, event_id))

    def _copy(
        self,
        target: str,
        source: str,
        source_id: StreamId,
        event: FeedbackEvent,
        shadow: dict[str, float] | None,
    ) -> _Policy | None:
        """Append a copy of `source`'s event `source_id` to `target`'s stream unless
        `target` has taken it already; the target's state if it appended."""
        tst = self._policy(target)
        if source_id <= tst.marks.get(source, (0, 0)):
            return None
        tst.marks[source] = source_id
        self._append(tst, replace(event, copies=None).encode(), log=False)
        for name, value in (shadow or {}).items():
            tst.shadow[name] = tst.shadow.get(name, 0.0) + value
        return tst

    def _bound(self, st: _Policy) -> None:
        """Keep the decision records under max_decisions and the heaps near their live
        entries (answered decisions and moved expiries leave stale heap entries)."""
        if len(st.decisions) > self.max_decisions:
            shed = 0
            while len(st.decisions) > self.max_decisions and st.expiry:
                expire_at, event_id = heapq.heappop(st.expiry)
                d = st.decisions.get(event_id)
                if d is not None and d.expire_at == expire_at:
                    del st.decisions[event_id]
                    shed += 1
            if self._shed == 0 or (self._shed + shed) // 10_000 > self._shed // 10_000:
                log.warning(
                    "in-process store: over max_decisions=%d, %d decision records shed so "
                    "far (oldest first; their feedback gets a 404)",
                    self.max_decisions,
                    self._shed + shed,
                )
            self._shed += shed
        live = len(st.decisions)
        if len(st.due) > 2 * live + 1024:
            st.due = [
                (d.deadline, i) for i, d in st.decisions.items() if d.state in (_OPEN, _PARKED)
            ]
            heapq.heapify(st.due)
        if len(st.expiry) > 2 * live + 1024:
            st.expiry = [(d.expire_at, i) for i, d in st.decisions.items()]
            heapq.heapify(st.expiry)

    @staticmethod
    def _purge(st: _Policy, wall: float) -> None:
        """Forget decisions past deadline + grace (what PEXPIREAT does in Redis)."""
        while st.expiry and st.expiry[0][0] < wall:
            expire_at, event_id = heapq.heappop(st.expiry)
            d = st.decisions.get(event_id)
            if d is not None and d.expire_at == expire_at:
                del st.decisions[event_id]

    def _unit_totals(
        self, st: _Policy, arm: tuple[str, str], wall: float
    ) -> collections.OrderedDict[str, tuple[UnitTotals, float]]:
        """The arm's unit totals, rid of those past unit_ttl_s and beyond unit_max."""
        totals = st.unit_totals.setdefault(arm, collections.OrderedDict())
        while totals:
            _, (_, at) = next(iter(totals.items()))
            if len(totals) < self.unit_max and at >= wall - self.unit_ttl_s:
                break
            totals.popitem(last=False)
        return totals

    @staticmethod
    def _holder(st: _Policy) -> str | None:
        if st.lease is None or st.lease[1] <= time.monotonic():
            return None
        return st.lease[0]

    def _append(self, st: _Policy, fields: dict[str, bytes], *, log: bool = True) -> None:
        # like XADD *: the current millisecond, or a later sequence number if the
        # clock has not moved (or went backwards)
        ms = int(time.time() * 1000)
        st.last_id = (ms, 0) if ms > st.last_id[0] else (st.last_id[0], st.last_id[1] + 1)
        st.stream.append((st.last_id, fields))
        if log:
            st.log.append((st.last_id, fields))
            while len(st.log) > self.log_max:
                st.log.popleft()
        st.total += 1

    @staticmethod
    def _after(st: _Policy, after: StreamId, count: int) -> list[tuple[StreamId, dict[str, bytes]]]:
        start = bisect.bisect_right(st.stream, after, key=lambda e: e[0])
        return st.stream[start : start + max(count, 0)]

    @staticmethod
    async def _notify(st: _Policy) -> None:
        async with st.cond:
            st.cond.notify_all()

    async def _persist(self, policy: str) -> None:
        """Write the policy's newest snapshot unless a concurrent call already did.
        Writes are serialised, so the file always ends at the newest version."""
        async with self._disk_lock:
            snap = self._policies[policy].snap
            if snap is None or self._persisted.get(policy, -1) == snap.version:
                return
            try:
                await asyncio.to_thread(_write_snapshot, self._path(policy), snap)
            except OSError as exc:
                raise StoreUnavailable(f"cannot persist snapshot of {policy!r}: {exc}") from exc
            self._persisted[policy] = snap.version


def _check_event(policy: str, event_id: str, event: FeedbackEvent) -> None:
    if event.event_id != event_id or event.policy != policy:
        raise ValueError(
            f"feedback event is for {event.policy!r}/{event.event_id!r}, "
            f"not {policy!r}/{event_id!r}"
        )


def _header(snap: Snapshot) -> dict[str, float | int | str]:
    return {
        "version": snap.version,
        "last_id": snap.last_id,
        "applied": snap.applied,
        "published_at": snap.published_at,
        "size": len(snap.state),
        "features": snap.features,
        "pacers": snap.pacers,
    }


def _write_snapshot(path: Path, snap: Snapshot) -> None:
    head = json.dumps(_header(snap), separators=(",", ":")).encode()
    _write_atomic(path, _MAGIC + head + b"\n" + snap.state)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform can fsync a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read_header(path: Path) -> dict[str, float | int | str] | None:
    try:
        with path.open("rb") as f:
            return _parse_header(path, f.readline(), f.readline())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"cannot read snapshot {path}: {exc}") from exc


def _read_snapshot(path: Path) -> Snapshot | None:
    try:
        with path.open("rb") as f:
            head = _parse_header(path, f.readline(), f.readline())
            state = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"cannot read snapshot {path}: {exc}") from exc
    if len(state) != head["size"]:
        raise StoreUnavailable(
            f"snapshot {path} is corrupt: {len(state)} state bytes, header says {head['size']}"
        )
    return Snapshot(
        state=state,
        version=int(head["version"]),
        last_id=str(head["last_id"]),
        applied=int(head["applied"]),
        published_at=float(head["published_at"]),
        features=str(head.get("features", "")),
        pacers=str(head.get("pacers", "")),
    )


def _parse_header(path: Path, magic: bytes, line: bytes) -> dict[str, float | int | str]:
    # a corrupt file is not "no snapshot": starting cold would overwrite what was learned
    if magic != _MAGIC:
        raise StoreUnavailable(f"{path} is not a banditroute snapshot")
    try:
        head = json.loads(line)
    except ValueError as exc:
        raise StoreUnavailable(f"snapshot {path} has a corrupt header: {exc}") from exc
    if not isinstance(head, dict) or not _HEADER_KEYS <= head.keys():
        raise StoreUnavailable(f"snapshot {path} has a corrupt header: {line[:200]!r}")
    return head
