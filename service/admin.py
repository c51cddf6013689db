"""What `banditroute admin` does: a policy's snapshot out to a file and back in (a
backup, a move between deployments), and a policy rebuilt from its decision log.

A snapshot file is the published snapshot, whole: a first line naming the format, a
JSON header line (the policy it came from, version, stream position, events applied,
featurizer, pacers, the state's length and SHA-256) and the state bytes as the policy
wrote them (policies/base.py: numpy arrays without pickle, its RNG included), so an
imported policy decides exactly as the exported one did.

Writing a policy's state goes through its lease like a learner's publish: the command
takes the lease (waiting for it up to a limit), publishes version + 1, fenced, and
releases it. A running learner of the policy keeps its lease, so the command waits
for it or fails; stop that policy's learners first (or scale them to zero). The
learner that takes the lease afterwards starts from the written state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policies import Policy, PolicyError
from service.priors import Catalogue, add_model
from service.store.base import NOT_HELD, Snapshot, Store

MAGIC = b"banditroute-snapshot 1\n"
READ_BATCH = 1000


class AdminError(RuntimeError):
    """The command cannot do what was asked; the message says why."""


def encode_snapshot(policy: str, snap: Snapshot, source: str = "export") -> bytes:
    """The snapshot file's bytes."""
    header = {
        "policy": policy,
        "source": source,
        "exported_at": time.time(),
        "version": snap.version,
        "last_id": snap.last_id,
        "applied": snap.applied,
        "published_at": snap.published_at,
        "features": snap.features,
        "pacers": snap.pacers,
        "state_bytes": len(snap.state),
        "state_sha256": hashlib.sha256(snap.state).hexdigest(),
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + snap.state


def decode_snapshot(data: bytes) -> tuple[dict[str, object], Snapshot]:
    """(header, snapshot) of a snapshot file; AdminError if it is not one or damaged."""
    if not data.startswith(MAGIC):
        raise AdminError("not a banditroute snapshot file (its first line is wrong)")
    head, sep, state = data[len(MAGIC) :].partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise AdminError("the snapshot file's header is not JSON")
    if len(state) != header.get("state_bytes") or (
        hashlib.sha256(state).hexdigest() != header.get("state_sha256")
    ):
        raise AdminError("the snapshot file is damaged: its state fails the length or SHA-256")
    snap = Snapshot(
        state=state,
        version=int(header["version"]),
        last_id=str(header["last_id"]),
        applied=int(header["applied"]),
        published_at=float(header["published_at"]),
        features=str(header.get("features", "")),
        pacers=str(header.get("pacers", "")),
    )
    return header, snap


async def export_snapshot(store: Store, policy: str, out: Path) -> Snapshot:
    """Write `policy`'s published snapshot to `out` (atomically: a temporary file
    renamed), returning it; AdminError if the policy has none."""
    snap = await store.load_snapshot(policy)
    if snap is None:
        raise AdminError(f"policy {policy!r} has no published snapshot in this store")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(encode_snapshot(policy, snap))
    tmp.replace(out)
    return snap


async def publish_as_admin(
    store: Store, policy: str, snap: Snapshot, *, lease_ttl_ms: int, wait_s: float
) -> Snapshot:
    """Publish `snap`'s state as `policy`'s next version under the policy's lease,
    fenced like a learner's publish; returns what was published. AdminError if the
    lease stays held by a learner for `wait_s`."""
    owner = f"admin:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while await store.acquire_lease(policy, owner, lease_ttl_ms) == NOT_HELD:
        if time.monotonic() >= deadline:
            raise AdminError(
                f"policy {policy!r}: a learner holds its lease; stop the policy's learners "
                "(or wait longer: --wait) and run this again"
            )
        await asyncio.sleep(min(0.1, lease_ttl_ms / 3000))
    try:
        current = await store.snapshot_info(policy)
        out = Snapshot(
            state=snap.state,
            version=(0 if current is None else current.version) + 1,
            last_id=snap.last_id,
            applied=snap.applied,
            published_at=time.time(),
            features=snap.features,
            pacers=snap.pacers,
        )
        if not await store.publish_snapshot(policy, out, owner):
            raise AdminError(f"policy {policy!r}: lost the lease before publishing; run again")
        return out
    finally:
        await store.release_lease(policy, owner)


async def import_snapshot(
    store: Store, policy: str, src: Path, *, lease_ttl_ms: int, wait_s: float
) -> Snapshot:
    """Publish the snapshot file `src` as `policy`'s next version (see
    `publish_as_admin`). Its stream position is kept: restored into the deployment it
    came from, the learner resumes after it (what the stream still holds beyond it is
    applied); in another deployment new feedback sorts after it, as stream ids are
    times (unless the clocks differ by more than the time since the export)."""
    _, snap = decode_snapshot(src.read_bytes())
    return await publish_as_admin(store, policy, snap, lease_ttl_ms=lease_ttl_ms, wait_s=wait_s)


@dataclass
class ReplayResult:
    policy: Policy
    snapshot: Snapshot  # the rebuilt state, ready to publish or write
    replayed: int  # events of the log learned
    skipped: int  # events the policy refused (a model deleted since, another dimension)
    first_id: str  # the log's oldest entry read ("" for an empty log)


async def replay(
    store: Store,
    policy: str,
    fresh: Callable[[], Policy],
    catalogue: Catalogue,
    *,
    features: str,
) -> ReplayResult:
    """`policy` rebuilt from its decision log: every event the log keeps, oldest
    first, learned by `fresh()` as the learner would (a model the log names that the
    policy lacks joins with its catalogue prior, as the learner admits it).

    The stream position of the result: the newest entry of the policy's feedback
    stream whose event the replay learned (the log and the stream are two streams
    with their own ids, written in one atomic step), else the published snapshot's;
    so a learner starting from the result applies exactly what the log did not have.
    """
    built = fresh()
    replayed = skipped = 0
    seen: set[str] = set()
    after, first = "0-0", ""
    while True:
        batch = await store.read_log(policy, after, READ_BATCH)
        if not batch:
            break
        first = first or batch[0][0]
        for entry_id, ev in batch:
            after = entry_id
            if ev.model not in built.models and ev.model in catalogue:
                add_model(built, ev.model, catalogue)
            try:
                built.learn(
                    ev.context,
                    ev.model,
                    ev.quality,
                    ev.cost_usd,
                    propensity=ev.propensity,
                    cost_weight=ev.cost_weight,
                )
            except PolicyError:
                skipped += 1
            else:
                replayed += 1
            seen.add(ev.event_id)
    current = await store.snapshot_info(policy)
    last_id = "0-0" if current is None else current.last_id
    position = last_id
    while True:
        pending = await store.read_feedback(policy, position, READ_BATCH)
        if not pending:
            break
        for entry_id, ev in pending:
            position = entry_id
            if ev.event_id in seen and ev.policy == policy:
                last_id = entry_id
    snap = Snapshot(
        state=built.to_bytes(),
        version=0,
        last_id=last_id,
        applied=replayed,
        published_at=time.time(),
        features=features,
        # the pacers are not in the log: carried over from the current snapshot, so a
        # replayed policy keeps its paced λ (and the policy's own λ follows it)
        pacers="" if current is None else current.pacers,
    )
    return ReplayResult(built, snap, replayed, skipped, first)
