"""The store contract: decisions with a deadline, an at-most-once feedback stream,
policy snapshots with a version, the learner lease, the model catalogue, and the
gateway's session pins.

A decision's outcome is a quality and a cost, and they may arrive apart: the gateway
knows a call's cost when the call ends (`attach_cost`), a rating comes later
(`submit_feedback`). Either order yields one learning event with the measured cost;
a quality that comes first to a decision that awaits its cost is parked until the
cost (or the deadline) arrives.

Two implementations meet it: `RedisStore` (shared by many workers, survives restarts)
and `MemoryStore` (one process; snapshots persisted to a state directory). Every
method is a coroutine; a store that cannot reach its backend raises `StoreUnavailable`.
"""

from __future__ import annotations

import enum
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from service.abstats import Sums
from service.budgets.ledger import Ledger
from service.shadow import increments as shadow_increments


class StoreUnavailable(RuntimeError):
    """The backend (Redis) cannot be reached; the caller degrades, it does not crash."""


class LastModel(ValueError):
    """Deleting this model would leave the catalogue empty (every route would fail)."""


def check_policy_name(policy: str) -> str:
    """Return `policy` if it can name keys and files: non-empty, at most 128 characters,
    no braces (they would break the `{policy}` hash tag), no path separators, no NUL,
    and not starting with "." (a hidden or parent-directory file name)."""
    if not policy or len(policy) > 128 or policy.startswith("."):
        raise ValueError(f"policy name {policy!r} must be 1-128 characters, not starting with '.'")
    bad = set(policy) & set("{}/\\\0")
    if bad:
        raise ValueError(f"policy name {policy!r} must not contain {sorted(bad)!r}")
    return policy


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """A feedback stream id "<ms>-<seq>" as a tuple that orders like the stream does
    (strings do not: "9-0" > "10-0")."""
    ms, sep, seq = entry_id.partition("-")
    try:
        parsed = (int(ms), int(seq) if sep else 0)
    except ValueError:
        raise ValueError(f"stream id {entry_id!r} is not of the form '<ms>-<seq>'") from None
    if parsed[0] < 0 or parsed[1] < 0:
        raise ValueError(f"stream id {entry_id!r} is not of the form '<ms>-<seq>'")
    return parsed


MAX_SESSION_CHARS = 512


def check_pin(session: str, turns: int, ttl_s: float) -> None:
    """ValueError unless `pin_session` can keep this pin."""
    if not session or len(session) > MAX_SESSION_CHARS:
        raise ValueError(f"session must be 1-{MAX_SESSION_CHARS} characters")
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")


def check_cost(cost_usd: float) -> float:
    """`cost_usd` as a float if it is a cost at all: finite and >= 0."""
    cost = float(cost_usd)
    if not math.isfinite(cost) or cost < 0:
        raise ValueError(f"cost_usd must be finite and >= 0, got {cost_usd!r}")
    return cost


# what acquire_lease answers
NOT_HELD, RENEWED, TAKEN = 0, 1, 2


class FeedbackOutcome(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the decision already has its feedback -> HTTP 409
    UNKNOWN = "unknown"  # never issued, or past its deadline -> HTTP 404
    # the quality was taken and waits for the cost that will follow (awaits_cost)
    PARKED = "awaiting_cost"


@dataclass(frozen=True)
class DecisionRecord:
    """What `route` decided, kept until feedback arrives or the deadline passes.

    context: the policy's input, shape (dim,), float64 (stored as raw bytes).
    deadline: unix seconds after which feedback is refused (and the optional default
    reward may be applied by the learner's sweep).
    """

    event_id: str
    policy: str
    model: str
    propensity: float
    policy_version: int
    context: np.ndarray
    candidates: list[str]
    cost_weight: float
    created_at: float
    deadline: float
    variant: str | None = None
    experiment: str | None = None
    prompt_tokens: int | None = None
    unit: str | None = None  # the experiment's unit; None: assigned at random
    # shadow policy -> [its choice, its probability of the served model]
    shadows: dict[str, tuple[str, float]] | None = None
    # the policy's own estimate of the chosen model's cost (USD) at choose time: the
    # cost a decision that expires unanswered learns with its default reward
    expected_cost: float | None = None
    # a measured cost will follow (a streamed call's is known only when it ends): a
    # quality that comes first is parked until the cost or the deadline comes
    awaits_cost: bool = False
    # the sensitive entity types that restricted its candidates (privacy rules); never
    # the matched text
    restricted: list[str] | None = None
    # the tenant that asked (None: none); its budget and pacer count this call
    tenant: str | None = None
    # the call's measured cost (USD) once `attach_cost` took it; filled when the record
    # is read, never stored with it (the store keeps it apart, so it can come later)
    cost_usd: float | None = None

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        del d["context"]
        return d

    def encode(self) -> dict[str, bytes]:
        """Flat mapping of byte strings (a Redis hash); without cost_usd, which the
        store keeps as a field of its own ("cost")."""
        # the fields as they are, not meta()'s asdict: its recursive deep copy took more
        # than the JSON encoding, on every route (the JSON is the same bytes)
        meta = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "context" and f.name != "cost_usd"
        }
        return {
            "meta": json.dumps(meta, separators=(",", ":")).encode(),
            "x": np.ascontiguousarray(self.context, dtype=np.float64).tobytes(),
        }

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, bytes]) -> DecisionRecord:
        """The record of `encode()`; an attached cost in field "cost" fills cost_usd."""
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        meta = _known(cls, json.loads(f["meta"]))
        meta.pop("cost_usd", None)
        cost = float(f["cost"]) if f.get("cost") is not None else None
        return cls(context=np.frombuffer(f["x"], dtype=np.float64).copy(), cost_usd=cost, **meta)


def _known(cls: type, meta: dict[str, Any]) -> dict[str, Any]:
    """The fields this version knows: a record written by a newer version (during a
    rolling deploy) still decodes."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in meta.items() if k in names}


@dataclass(frozen=True)
class FeedbackEvent:
    """One learning event on the feedback stream: the decision joined with its outcome.

    quality in [0, 1]; cost_usd >= 0; source: "user", "judge" or "default" (the
    configured reward for a decision that expired unanswered). cost_estimated: the
    cost is an estimate (`default_cost`), not the call's measured cost.

    A stream entry may carry the measured cost in a field "cost" of its own, apart from
    meta (the Redis scripts add it when a cost attached to the decision overrides the
    event's): `decode` then takes it (`with_cost`).
    """

    event_id: str
    policy: str
    model: str
    propensity: float
    cost_weight: float
    context: np.ndarray
    quality: float
    cost_usd: float
    source: str
    received_at: float
    variant: str | None = None
    experiment: str | None = None
    candidates: list[str] | None = None
    created_at: float | None = None
    unit: str | None = None  # the experiment's unit; None: anonymous, a unit of its own
    # other policies that learn from this feedback too (shadows, variants sharing
    # feedback) -> what it adds to their shadow counters (None: nothing). Recorded in
    # the same atomic step as the feedback; the learner forwards the copies
    # (`Store.forward_copies`) before it publishes a snapshot containing the event.
    copies: dict[str, dict[str, float] | None] | None = None
    cost_estimated: bool = False
    restricted: list[str] | None = None  # as its decision's
    tenant: str | None = None  # as its decision's

    def encode(self) -> dict[str, bytes]:
        meta = asdict(self)
        del meta["context"]
        return {
            "meta": json.dumps(meta, separators=(",", ":")).encode(),
            "x": np.ascontiguousarray(self.context, dtype=np.float64).tobytes(),
        }

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, bytes]) -> FeedbackEvent:
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        meta = _known(cls, json.loads(f["meta"]))
        ev = cls(context=np.frombuffer(f["x"], dtype=np.float64).copy(), **meta)
        cost = f.get("cost")
        return ev if cost is None else ev.with_cost(float(cost))

    def with_cost(self, cost_usd: float) -> FeedbackEvent:
        """This event with the call's measured cost instead of its own. The shadow
        increments its copies carry depend on the cost, so they are made again from
        their weight ("sw" is the importance weight itself, see shadow.increments)."""
        copies = None
        if self.copies is not None:
            copies = {
                target: (
                    shadow_increments(incr["sw"], self.quality, cost_usd)
                    if incr is not None and "sw" in incr
                    else incr
                )
                for target, incr in self.copies.items()
            }
        return replace(self, cost_usd=cost_usd, cost_estimated=False, copies=copies)

    @classmethod
    def join(
        cls, rec: DecisionRecord, *, quality: float, cost_usd: float, source: str, now: float
    ) -> FeedbackEvent:
        return cls(
            event_id=rec.event_id,
            policy=rec.policy,
            model=rec.model,
            propensity=rec.propensity,
            cost_weight=rec.cost_weight,
            context=rec.context,
            quality=quality,
            cost_usd=cost_usd,
            source=source,
            received_at=now,
            variant=rec.variant,
            experiment=rec.experiment,
            candidates=rec.candidates,
            created_at=rec.created_at,
            unit=rec.unit,
            restricted=rec.restricted,
            tenant=rec.tenant,
        )


@dataclass(frozen=True)
class Snapshot:
    """A published policy state. last_id: the newest stream entry it contains
    ("0-0" for none); applied: feedback events applied in total; features: the
    featurizer that made its contexts (Featurizer.describe() as JSON, "" unknown), so
    a worker with another one refuses it; pacers: see below."""

    state: bytes
    version: int
    last_id: str
    applied: int
    published_at: float = 0.0
    features: str = ""
    # the pacers' states (service.budgets.pacer) as JSON, {"": the policy's, tenant:
    # its}: published with the state they paced, so a learner resumes them
    pacers: str = ""


# a typical routed prompt and answer, for a model whose catalogue entry says nothing
DEFAULT_INPUT_TOKENS = 200
DEFAULT_OUTPUT_TOKENS = 256

# an open decision is kept this long past deadline + grace, so that a sweep that
# lagged (no learner for a while) still finds it and gives it its default reward;
# answered and closed decisions shrink to a tombstone kept until deadline + grace
SWEEP_MARGIN_S = 3600.0


@dataclass(frozen=True)
class ModelPrice:
    """A model of the catalogue: USD per 1M input and per 1M output tokens."""

    name: str
    input_per_m: float
    output_per_m: float
    meta: dict[str, Any] = field(default_factory=dict)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6

    def prior(self) -> dict[str, float]:
        """What the catalogue says before any feedback: the expected cost of a call
        (price x expected tokens) and, where configured, an expected quality with its
        strength in pseudo-observations."""
        m = self.meta
        out = {
            "cost": self.cost(
                int(m.get("expected_input_tokens", DEFAULT_INPUT_TOKENS)),
                int(m.get("expected_output_tokens", DEFAULT_OUTPUT_TOKENS)),
            )
        }
        if m.get("prior_quality") is not None:
            out["quality"] = float(m["prior_quality"])
        if m.get("prior_strength") is not None:
            out["strength"] = float(m["prior_strength"])
        return out


# how long a unit's own totals (for the per-unit sums of its experiment variant) are
# kept after its last decision or feedback; a unit back after longer counts anew
UNIT_TTL_S = 30 * 24 * 3600.0


def default_cost(rec: DecisionRecord, models: dict[str, ModelPrice]) -> float:
    """The cost (USD) a decision learns with when no cost was measured (its default
    reward, or a quality that came alone): the policy's own estimate for the chosen
    model when it made one above 0, else the catalogue price of the prompt
    (rec.prompt_tokens, else the model's expected input) plus the model's expected
    output, else 0 (a model the catalogue no longer has). Cost 0 would make models
    whose decisions often go unanswered look cheap, so an estimate of 0 (a cold policy
    that keeps no cost prior, or one clipped at 0) gives way to the catalogue."""
    if rec.expected_cost is not None and rec.expected_cost > 0:
        return float(rec.expected_cost)
    price = models.get(rec.model)
    if price is None:
        return 0.0
    m = price.meta
    prompt = rec.prompt_tokens
    if prompt is None:
        prompt = int(m.get("expected_input_tokens", DEFAULT_INPUT_TOKENS))
    return price.cost(prompt, int(m.get("expected_output_tokens", DEFAULT_OUTPUT_TOKENS)))


def feedback_increments(event: FeedbackEvent) -> dict[str, float]:
    """What an accepted event adds to its experiment variant's counters."""
    return Sums.increments(event.quality, event.cost_usd)


class Store(ABC):
    """All keys of one policy share the Redis hash tag `{policy}`."""

    # ---- decisions and feedback ------------------------------------------
    @abstractmethod
    async def put_decision(self, rec: DecisionRecord) -> int:
        """Keep `rec` until rec.deadline (plus a grace period for duplicate detection).
        Returns the policy's current published snapshot version (0 if none) read in the
        same round trip, so a worker learns of a new policy at no extra cost."""

    @abstractmethod
    async def get_decision(self, policy: str, event_id: str, now: float) -> DecisionRecord | None:
        """The record if it exists, no event was appended for it yet (unanswered, or
        its quality parked waiting for its cost), its deadline has not passed
        (now <= deadline) and the sweep has not closed it, else None (an answered or
        closed decision keeps only a tombstone without its context: `was_answered`).
        Its cost_usd is the cost `attach_cost` attached, None before."""

    @abstractmethod
    async def was_answered(self, policy: str, event_id: str) -> bool:
        """True while the decision's tombstone says it got its feedback (until its
        deadline + grace), or while its quality is parked waiting for its cost: a
        second feedback is then a 409, not a 404."""

    @abstractmethod
    async def submit_feedback(
        self, policy: str, event_id: str, event: FeedbackEvent, now: float
    ) -> FeedbackOutcome:
        """Atomically: if the decision exists, is unanswered and not past its deadline,
        mark it answered (dropping its context: a tombstone stays until deadline +
        grace) and append `event`, with its `copies`, to the policy's feedback stream
        (ACCEPTED); if already answered, DUPLICATE; otherwise UNKNOWN.

        The cost: a cost attached to the decision (`attach_cost`) wins over
        event.cost_usd (the appended event carries it, cost_estimated False, and the
        counters use it). A decision that awaits its cost (awaits_cost) and has none
        attached yet parks the event instead, appending nothing (PARKED): the cost
        appends it (`attach_cost`), or the sweep does at the deadline with the event's
        own cost (`expire_due`). A parked decision counts as answered for a second
        quality (DUPLICATE).

        The checks run in this order: missing -> UNKNOWN; answered or parked ->
        DUPLICATE (also after the deadline, while the record is kept for the grace
        period); closed by `expire_due` or now > deadline -> UNKNOWN. `event` must
        carry the same event_id and policy (ValueError otherwise).

        In the same atomic step an accepted event is appended to the policy's decision
        log (capped), and, for a decision of an experiment, its quality and cost are
        added to the variant's counters (see `experiment_counts`)."""

    @abstractmethod
    async def attach_cost(
        self, policy: str, event_id: str, cost_usd: float, now: float
    ) -> FeedbackOutcome:
        """Atomically attach the call's measured cost (USD) to an open decision, at
        most once (ACCEPTED). If its quality was parked waiting for it, the same step
        appends the event: the parked quality joined with this cost (cost_estimated
        False), to the stream and the decision log, with the experiment counters and
        per-unit sums, exactly as `submit_feedback` does, and the decision becomes
        answered with its tombstone. Otherwise a quality that comes later takes this
        cost.

        DUPLICATE: a cost is already attached, or the decision's event was already
        appended (also after the deadline, within the grace period). UNKNOWN: missing,
        closed by the sweep, or now > deadline. cost_usd must be finite and >= 0
        (ValueError otherwise)."""

    @abstractmethod
    async def expire_due(
        self, policy: str, now: float, default_quality: float | None, limit: int = 1000
    ) -> int:
        """Close decisions whose deadline passed unanswered (deadline < now), oldest
        deadline first, at most `limit`. With a default quality, each gets a
        FeedbackEvent (source "default", cost imputed by `default_cost`, or the
        measured cost when one was attached) appended atomically with its closing. A
        closed decision refuses late feedback as UNKNOWN and keeps only a tombstone.

        A decision whose quality was parked waiting for a cost that never came gets
        its parked event instead, with the event's own (estimated) cost, whatever
        default_quality is, counted in its experiment like any feedback; it then
        counts as answered (a late quality or cost is a DUPLICATE). Returns how many
        were closed."""

    @abstractmethod
    async def due_backlog(self, policy: str, now: float) -> int:
        """Open decisions whose deadline passed (deadline < now) that the sweep has not
        closed yet."""

    @abstractmethod
    async def forward_copies(self, policy: str, batch: list[tuple[str, FeedbackEvent]]) -> int:
        """For each (stream id, event) of `policy`'s stream, in stream order: append a
        copy of the event (without its `copies`) to every policy named in
        event.copies, adding its shadow increments to that policy's shadow counters,
        in one atomic step per target. Idempotent: each target remembers the newest
        source stream id it took, so a learner that re-reads after a crash copies
        nothing twice. Returns the copies appended."""

    @property
    def decisions_shed(self) -> int:
        """Decision records dropped to respect a memory cap (in-process store only)."""
        return 0

    @abstractmethod
    async def read_feedback(
        self, policy: str, after_id: str, count: int, block_ms: int = 0
    ) -> list[tuple[str, FeedbackEvent]]:
        """Stream entries strictly after `after_id`, oldest first (at most `count`),
        waiting up to block_ms for the first one."""

    @abstractmethod
    async def feedback_total(self, policy: str) -> int:
        """Feedback events ever appended to the policy's stream."""

    @abstractmethod
    async def feedback_pending(self, policy: str) -> int:
        """Events on the stream that no published snapshot contains yet (publishing
        trims what a snapshot contains, so this is the stream's length)."""

    @abstractmethod
    async def read_log(
        self, policy: str, after_id: str, count: int
    ) -> list[tuple[str, FeedbackEvent]]:
        """The decision log: every event ever appended to the feedback stream (never
        trimmed by publishing; capped at the newest `log_max`), oldest first, strictly
        after `after_id`, at most `count`."""

    @abstractmethod
    async def append_feedback(
        self, policy: str, event: FeedbackEvent, shadow: dict[str, float] | None = None
    ) -> None:
        """Append a copy of another policy's accepted event to `policy`'s stream (a
        shadow learning from served feedback, or a variant learning from the others'),
        adding `shadow` to its shadow counters in the same atomic step."""

    @abstractmethod
    async def count_shadow_decision(self, policy: str, agree: bool, unsupported: float) -> None:
        """A served decision the shadow `policy` saw: decisions += 1, agree += agree,
        unsupported += the shadow's probability on models the served policy could not
        choose (what no importance weight can value)."""

    @abstractmethod
    async def shadow_counts(self, policy: str) -> dict[str, float]:
        """The shadow counters of `policy` (see service.shadow)."""

    # ---- session pins (the gateway's sessions keep their model) --------------
    @abstractmethod
    async def pin_session(
        self, policy: str, session: str, event_id: str, model: str, turns: int, ttl_s: float
    ) -> None:
        """Pin `session` to this decision for `turns` turns in all (the first, calling
        this, included); expires ttl_s after the last turn. A new pin replaces the
        session's old one; turns <= 1 leaves no pin (nothing to reuse). ValueError for
        an empty session, turns < 1 or ttl_s <= 0."""

    @abstractmethod
    async def session_turn(self, policy: str, session: str) -> tuple[str, str, int] | None:
        """Atomically count one more turn of a pinned session: (event_id, model, turn
        number, 2 for the first reuse) while turns are left, else None (a used-up pin
        is dropped). Each turn refreshes the pin's TTL."""

    @abstractmethod
    async def flag_session(self, session: str, entities: list[str], ttl_s: float) -> None:
        """Remember that `session` carried these sensitive entity types (added to what
        it carried before), for ttl_s after this call."""

    @abstractmethod
    async def session_flags(self, session: str) -> set[str]:
        """The sensitive entity types `session` carried within its TTL (empty if none)."""

    # ---- experiments ---------------------------------------------------------
    @abstractmethod
    async def experiment_counts(
        self, policy: str, experiment: str, variant: str
    ) -> tuple[dict[str, float], int]:
        """A variant's counters (decisions, anon: decisions without a unit id, the
        feedback sums n, sq, sq2, sc, sc2, sqc of abstats.Sums, and the per-unit sums
        abstats.UNIT_FIELDS, updated in the same atomic steps as the rest: a decision
        by `put_decision`, a feedback by `submit_feedback`) and its distinct units
        (approximate on Redis: a HyperLogLog, 0.8% standard error)."""

    @abstractmethod
    async def get_experiments(self, include_deleted: bool = False) -> dict[str, str]:
        """Experiment name -> its configuration as JSON; with include_deleted, deleted
        names too, mapped to "" (so a configured experiment is seeded only once)."""

    @abstractmethod
    async def put_experiment(self, name: str, doc: str) -> None:
        """Store a whole, validated configuration in one write: readers see the old
        one or the new one, never a mix."""

    @abstractmethod
    async def delete_experiment(self, name: str, arms: list[tuple[str, str]]) -> bool:
        """Delete it and the counters of its (policy, variant) arms, so a new experiment
        of the same name starts from zero; True if it existed."""

    @abstractmethod
    async def get_tenants(self, include_deleted: bool = False) -> dict[str, str]:
        """Tenant name -> its configuration as JSON (keys as SHA-256 digests, never
        the keys); deleted names map to "" with include_deleted, as for experiments."""

    @abstractmethod
    async def put_tenant(self, name: str, doc: str) -> None:
        """Store a whole, validated tenant configuration in one write."""

    @abstractmethod
    async def delete_tenant(self, name: str) -> bool:
        """Delete it (a tombstone, so a configured tenant is not seeded again); True if
        it existed."""

    # ---- snapshots and lease ----------------------------------------------
    @abstractmethod
    async def publish_snapshot(self, policy: str, snap: Snapshot, owner: str | None) -> bool:
        """Store `snap` as the policy's current state. With an `owner`, only while that
        owner holds the learner lease and snap.version is the published version + 1
        (fencing and compare-and-set in the same atomic step); returns False, storing
        nothing, otherwise. Entries up to snap.last_id may be trimmed."""

    @abstractmethod
    async def load_snapshot(self, policy: str) -> Snapshot | None: ...

    @abstractmethod
    async def snapshot_version(self, policy: str) -> int: ...

    @abstractmethod
    async def snapshot_info(self, policy: str) -> Snapshot | None:
        """The published snapshot's metadata without its state bytes (state=b"")."""

    @abstractmethod
    async def acquire_lease(self, policy: str, owner: str, ttl_ms: int) -> int:
        """Take the learner lease if free (TAKEN), renew it if `owner` holds it
        (RENEWED), else NOT_HELD. TAKEN means the owner's view may be stale: someone
        else may have held the lease and published since."""

    @abstractmethod
    async def release_lease(self, policy: str, owner: str) -> None: ...

    # ---- learner pool membership (service.learner_pool) ----------------------
    @abstractmethod
    async def heartbeat(self, group: str, member: str, ttl_ms: int) -> list[str]:
        """Mark `member` of the learner group `group` alive for ttl_ms from now (the
        store's clock, so the members' clocks need not agree), forget the members whose
        time ran out, and return the live members, sorted, in one atomic step."""

    @abstractmethod
    async def leave(self, group: str, member: str) -> None:
        """Forget `member` at once (a graceful stop), rather than after its ttl."""

    # ---- model catalogue ---------------------------------------------------
    @abstractmethod
    async def get_models(self) -> dict[str, ModelPrice]: ...

    @abstractmethod
    async def put_model(self, model: ModelPrice) -> None: ...

    @abstractmethod
    async def delete_model(self, name: str) -> bool:
        """True if it existed. Raises LastModel, deleting nothing, if it is the only
        model: the check and the delete are one atomic step in the store, so workers
        deleting the last two models at once cannot empty the catalogue."""

    # ---- budgets -------------------------------------------------------------
    @abstractmethod
    def ledger(self) -> Ledger:
        """The tenants' hard-cap ledger (service.budgets.ledger) on this store's
        backend; the same one on every call."""

    # ---- housekeeping -------------------------------------------------------
    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers; never raises."""

    @abstractmethod
    async def close(self) -> None: ...
