"""The Redis store: shared by every worker and learner, survives their restarts.

Key layout (every key of one policy carries the hash tag `{policy}`, so a Redis
Cluster keeps a policy on one shard and every script touches one slot):

    <prefix>:{<policy>}:d:<event_id>  hash: meta, x (DecisionRecord.encode()), deadline
                                      (unix s), tomb (ms), answered ("0" open, "1"
                                      answered, "2" closed by the sweep); once answered
                                      or closed a tombstone without meta and x that
                                      expires at tomb = deadline + grace; while open at
                                      tomb + SWEEP_MARGIN_S
    <prefix>:{<policy>}:due           sorted set: open event ids scored by deadline
    <prefix>:{<policy>}:stream        stream: feedback events (fields meta, x)
    <prefix>:{<policy>}:fbtotal       counter: events ever appended to the stream
    <prefix>:{<policy>}:snap          string: the published policy state
    <prefix>:{<policy>}:snapmeta      hash: version, last_id, applied, published_at,
                                      features
    <prefix>:{<policy>}:lease         string: the learner holding the lease, with a TTL
    <prefix>:{<policy>}:log           stream: every feedback event (the decision log),
                                      capped at about log_max entries, never trimmed
                                      by publishing
    <prefix>:{<policy>}:shadow        hash: the policy's counters as a shadow
    <prefix>:{<policy>}:marks         hash: source policy -> the newest id of its stream
                                      copied to this policy's stream (forward_copies)
    <prefix>:{<policy>}:x:<exp>:<variant>    hash: an experiment variant's counters
    <prefix>:{<policy>}:xu:<exp>:<variant>   HyperLogLog: its distinct units
    <prefix>:{<policy>}:xt:<exp>:<variant>   hash: unit -> its totals "D N Q C" (for the
                                      per-unit sums in the counters); expires
                                      unit_ttl_s after its last write
    <prefix>:models                   hash: model name -> ModelPrice as JSON
    <prefix>:experiments              hash: experiment name -> its config as JSON

Every error meaning "Redis cannot be reached" becomes `StoreUnavailable` (see
`_reachable`). The client retries a dropped connection once at once and never
retries a timeout, so an outage is reported within about `socket_timeout` and the
pool reconnects by itself when Redis is back. The scripts are EVALSHA'd through
redis-py's Script objects, which re-load them after a restart flushed the cache.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, replace
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.store.base import (
    SWEEP_MARGIN_S,
    UNIT_TTL_S,
    DecisionRecord,
    FeedbackEvent,
    FeedbackOutcome,
    LastModel,
    ModelPrice,
    Snapshot,
    Store,
    StoreUnavailable,
    check_policy_name,
    default_cost,
    feedback_increments,
    parse_stream_id,
)

log = logging.getLogger("banditroute.store")
# the Lua half of abstats.unit_decision / unit_feedback: a unit's totals "D N Q C"
# and its pairwise products' increments written with 17 digits, so nothing is rounded
_UNIT_LUA = """
local function unit_get(key, unit)
  local t = redis.call('HGET', key, unit)
  if not t then return nil end
  local a, b, e, f = string.match(t, '^(%S+) (%S+) (%S+) (%S+)$')
  return tonumber(a), tonumber(b), tonumber(e), tonumber(f)
end
local function unit_put(key, unit, ttl_ms, d, n, q, c)
  redis.call('HSET', key, unit, string.format('%.17g %.17g %.17g %.17g', d, n, q, c))
  redis.call('PEXPIRE', key, ttl_ms)
end
local function incf(key, name, v)
  redis.call('HINCRBYFLOAT', key, name, string.format('%.17g', v))
end
"""

P = ParamSpec("P")
T = TypeVar("T")

# BusyLoadingError: Redis is up but still loading its data set; ReadOnlyError: we
# reached a replica (failover in progress). Both mean "not usable now", like a
# refused connection; every other Redis error is a bug and propagates as is.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.BusyLoadingError,
    rex.TimeoutError,
    rex.ReadOnlyError,
    OSError,
)

# KEYS: decision, due, stream, fbtotal, log, counters, unit totals.
# ARGV: now, event_id, meta, x, log_max, unit ("" no experiment, "a" anonymous, "u:<id>"),
# quality, cost, unit_ttl_ms, then field, increment pairs for the counters.
# Returns 1 accepted, 2 duplicate, 0 unknown (missing, closed or past the deadline).
_SUBMIT = (
    _UNIT_LUA
    + """
local answered = redis.call('HGET', KEYS[1], 'answered')
if not answered then return 0 end
if answered == '1' then return 2 end
if answered ~= '0' then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then return 0 end
redis.call('HSET', KEYS[1], 'answered', '1')
redis.call('HDEL', KEYS[1], 'meta', 'x')
local tomb = redis.call('HGET', KEYS[1], 'tomb')
if tomb then redis.call('PEXPIREAT', KEYS[1], tomb) end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'meta', ARGV[3], 'x', ARGV[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'meta', ARGV[3], 'x', ARGV[4])
redis.call('INCR', KEYS[4])
for i = 10, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[6], ARGV[i], ARGV[i + 1])
end
if ARGV[6] ~= '' then
  -- abstats.unit_feedback: an anonymous decision was a unit of its own, D = 1
  local q, c = tonumber(ARGV[7]), tonumber(ARGV[8])
  local d, n, sq, sc = 1, 0, 0, 0
  local unit = nil
  if ARGV[6] ~= 'a' then
    unit = string.sub(ARGV[6], 3)
    d, n, sq, sc = unit_get(KEYS[7], unit)
    if not d then
      d, n, sq, sc = 0, 0, 0, 0
      redis.call('HINCRBY', KEYS[6], 'u_units', 1)
    end
  end
  if n == 0 then redis.call('HINCRBY', KEYS[6], 'u_resp', 1) end
  local q1, c1 = sq + q, sc + c
  incf(KEYS[6], 'u_n', 1)
  incf(KEYS[6], 'u_q', q)
  incf(KEYS[6], 'u_c', c)
  incf(KEYS[6], 'u_nn', 2 * n + 1)
  incf(KEYS[6], 'u_dn', d)
  incf(KEYS[6], 'u_nq', n * q + q1)
  incf(KEYS[6], 'u_nc', n * c + c1)
  incf(KEYS[6], 'u_qq', q * (2 * sq + q))
  incf(KEYS[6], 'u_qc', sq * c + q * c1)
  incf(KEYS[6], 'u_cc', c * (2 * sc + c))
  if unit then unit_put(KEYS[7], unit, ARGV[9], d, n + 1, q1, c1) end
end
return 1
"""
)

# KEYS: counters, unit totals. ARGV: unit ("" anonymous), unit_ttl_ms.
# abstats.unit_decision: a decision's share of the variant's per-unit sums.
_DECIDE = (
    _UNIT_LUA
    + """
local d, n, q, c = nil, 0, 0, 0
if ARGV[1] ~= '' then d, n, q, c = unit_get(KEYS[2], ARGV[1]) end
if not d then
  d, n, q, c = 0, 0, 0, 0
  redis.call('HINCRBY', KEYS[1], 'u_units', 1)
end
incf(KEYS[1], 'u_d', 1)
incf(KEYS[1], 'u_dd', 2 * d + 1)
incf(KEYS[1], 'u_dn', n)
if ARGV[1] ~= '' then unit_put(KEYS[2], ARGV[1], ARGV[2], d + 1, n, q, c) end
return 1
"""
)

# KEYS: decision, due, stream, fbtotal, log. ARGV: now, event_id, log_max[, meta, x].
# Closes one open decision whose deadline passed, appending the default event if
# given; returns 1 if it closed it. Drops ids of answered or vanished decisions
# from `due`; leaves a decision re-put with a later deadline alone.
_CLOSE = """
local answered = redis.call('HGET', KEYS[1], 'answered')
if answered ~= '0' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'answered', '2')
redis.call('HDEL', KEYS[1], 'meta', 'x')
local tomb = redis.call('HGET', KEYS[1], 'tomb')
if tomb then redis.call('PEXPIREAT', KEYS[1], tomb) end
redis.call('ZREM', KEYS[2], ARGV[2])
if #ARGV >= 5 then
  redis.call('XADD', KEYS[3], '*', 'meta', ARGV[4], 'x', ARGV[5])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'meta', ARGV[4], 'x', ARGV[5])
  redis.call('INCR', KEYS[4])
end
return 1
"""

# KEYS: snap, snapmeta, stream, lease.
# ARGV: fenced ("1"/"0"), owner, state, version, last_id, applied, published_at, minid,
# features.
_PUBLISH = """
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
  local current = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
  if current + 1 ~= tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'version', ARGV[4], 'last_id', ARGV[5],
           'applied', ARGV[6], 'published_at', ARGV[7], 'features', ARGV[9] or '')
if ARGV[8] ~= '' then redis.call('XTRIM', KEYS[3], 'MINID', ARGV[8]) end
return 1
"""

# KEYS: lease. ARGV: owner, ttl_ms. Returns 2 taken, 1 renewed, 0 held by another.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: owner.
# KEYS: the catalogue hash. ARGV: the model. 1 deleted, 0 unknown, -1 the last model.
_DELETE_MODEL = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) <= 1 then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_OUTCOMES = {1: FeedbackOutcome.ACCEPTED, 2: FeedbackOutcome.DUPLICATE, 0: FeedbackOutcome.UNKNOWN}

_MAX_SEQ = 2**64 - 1


# KEYS: target stream, fbtotal, shadow counters, marks. ARGV: source policy, source
# stream id ms, seq, meta, x, then field, increment pairs for the shadow counters.
# Appends the copy unless the target already took this source id or a later one.
_FORWARD = """
local mark = redis.call('HGET', KEYS[4], ARGV[1])
local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
if mark then
  local mms, mseq = string.match(mark, '^(%d+)-(%d+)$')
  mms, mseq = tonumber(mms), tonumber(mseq)
  if ms < mms or (ms == mms and seq <= mseq) then return 0 end
end
redis.call('XADD', KEYS[1], '*', 'meta', ARGV[4], 'x', ARGV[5])
redis.call('INCR', KEYS[2])
for i = 6, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2] .. '-' .. ARGV[3])
return 1
"""

# how long the store, once it found Redis unreachable, fails every call at once
# before it lets one call through to probe (a call that succeeds ends the outage)
PROBE_EVERY_S = 0.5
# how long a ping may take to show that a timed-out command was not an outage
CONFIRM_PING_S = 0.25


def _reachable(
    fn: Callable[Concatenate[RedisStore, P], Awaitable[T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    """Translate "cannot reach Redis" into StoreUnavailable: the one place it happens."""

    @functools.wraps(fn)
    async def wrapper(self: RedisStore, *args: P.args, **kwargs: P.kwargs) -> T:
        # known down: fail at once instead of waiting for the socket timeout, except
        # one call every PROBE_EVERY_S that goes through as the probe
        if self._down_since is not None:
            now = time.monotonic()
            if now < self._next_probe:
                raise StoreUnavailable(
                    f"redis at {self.where} unavailable during {fn.__name__}: known down "
                    f"for {now - self._down_since:.1f} s"
                )
            self._next_probe = now + PROBE_EVERY_S
        try:
            result = await fn(self, *args, **kwargs)
        except _UNREACHABLE as exc:
            if await self._outage(exc):
                self._mark_down()
            raise StoreUnavailable(
                f"redis at {self.where} unavailable during {fn.__name__}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._mark_up()
        return result

    return wrapper


class _Scripts:
    """The Lua scripts, registered on one client (EVALSHA, re-loaded when missing)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.submit = client.register_script(_SUBMIT)
        self.decide = client.register_script(_DECIDE)
        self.close = client.register_script(_CLOSE)
        self.publish = client.register_script(_PUBLISH)
        self.acquire = client.register_script(_ACQUIRE)
        self.release = client.register_script(_RELEASE)
        self.forward = client.register_script(_FORWARD)
        self.delete_model = client.register_script(_DELETE_MODEL)


class _Keys:
    """The keys of one policy, all in the slot of its hash tag."""

    def __init__(self, prefix: str, policy: str) -> None:
        base = f"{prefix}:{{{check_policy_name(policy)}}}"
        self.base = base
        self.stream = f"{base}:stream"
        self.due = f"{base}:due"
        self.snap = f"{base}:snap"
        self.snapmeta = f"{base}:snapmeta"
        self.lease = f"{base}:lease"
        self.fbtotal = f"{base}:fbtotal"
        self.log = f"{base}:log"
        self.shadow = f"{base}:shadow"
        self.marks = f"{base}:marks"

    def decision(self, event_id: str) -> str:
        return f"{self.base}:d:{event_id}"

    def counters(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:x:{experiment}:{variant}"

    def units(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:xu:{experiment}:{variant}"

    def unit_totals(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:xt:{experiment}:{variant}"


class RedisStore(Store):
    """The store on Redis (redis.asyncio; hiredis parses replies when installed).

    url: redis:// or rediss:// or unix:// URL (password in the URL, never logged).
    prefix: first part of every key, so several deployments can share one Redis.
    grace_s: how long past its deadline a decision is kept, so a late second
    feedback is still a duplicate (409) rather than unknown (404).
    socket_timeout: seconds to connect, to wait for a reply, or to wait for a free
    pooled connection before reporting the store unavailable.
    max_connections: the pool's size; more concurrent calls queue for a connection
    (redis-py's default pool would fail them instead).
    log_max: about how many events each policy's decision log keeps.

    The client is built on first use, inside the running event loop. Each unit's own
    totals (for the per-unit sums of its experiment variant) expire `unit_ttl_s` after
    the last write to its variant's hash.
    """

    unit_ttl_s: float = UNIT_TTL_S

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "br",
        grace_s: float = 3600.0,
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        log_max: int = 100_000,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError(f"prefix {prefix!r} must be non-empty and without braces")
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        if socket_timeout <= 0:
            raise ValueError(f"socket_timeout must be > 0, got {socket_timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if log_max < 1:
            raise ValueError(f"log_max must be >= 1, got {log_max}")
        self.log_max = log_max
        self.url = url
        self.prefix = prefix
        self.grace_s = grace_s
        self.socket_timeout = socket_timeout
        self.max_connections = max_connections
        self.where = _redact(url)
        # a blocking XREAD longer than the socket timeout would read as an outage,
        # so long waits are made of several shorter ones
        self._block_chunk_ms = max(1, int(socket_timeout * 500))
        self._client: aioredis.Redis | None = None
        self._scripts: _Scripts | None = None
        self._keys: dict[str, _Keys] = {}
        self._down_since: float | None = None  # monotonic; None while Redis answers
        self._next_probe = 0.0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "br",
        grace_s: float = 3600.0,
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        log_max: int = 100_000,
    ) -> RedisStore:
        """Build the store and check that Redis answers. A Redis that is down is
        logged, not raised: the service starts degraded and the store connects
        by itself once Redis is up."""
        store = cls(
            url,
            prefix=prefix,
            grace_s=grace_s,
            socket_timeout=socket_timeout,
            max_connections=max_connections,
            log_max=log_max,
        )
        if not await store.ping():
            log.warning("redis at %s does not answer yet; serving degraded", store.where)
        return store

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.socket_timeout,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                socket_keepalive=True,
                # PING a connection idle this long before using it
                health_check_interval=10,
                # One immediate retry on a dropped connection (a stale pooled socket
                # after a Redis restart), none on a timeout, no backoff: an outage is
                # reported fast. The retry may re-run a command whose reply was lost;
                # every write here is idempotent or re-checked by its script (a
                # repeated feedback then answers DUPLICATE instead of ACCEPTED).
                retry=Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,)),
                decode_responses=False,
            )
            client = aioredis.Redis.from_pool(pool)
            self._scripts = _Scripts(client)
            self._client = client
        return self._client

    def _lua(self) -> _Scripts:
        if self._scripts is None:
            self._redis()
        assert self._scripts is not None
        return self._scripts

    def _k(self, policy: str) -> _Keys:
        keys = self._keys.get(policy)
        if keys is None:
            keys = self._keys[policy] = _Keys(self.prefix, policy)
        return keys

    @property
    def _unit_ttl_ms(self) -> int:
        return max(1, int(self.unit_ttl_s * 1000))

    @property
    def models_key(self) -> str:
        return f"{self.prefix}:models"

    # ---- decisions and feedback ------------------------------------------
    @_reachable
    async def put_decision(self, rec: DecisionRecord) -> int:
        k = self._k(rec.policy)
        key = k.decision(rec.event_id)
        fields: dict[Any, Any] = {
            **rec.encode(),
            "deadline": repr(float(rec.deadline)),
            "tomb": str(int((rec.deadline + self.grace_s) * 1000)),
            "answered": "0",
        }
        # MULTI costs no extra round trip and never leaves a record without its TTL
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.pexpireat(key, int((rec.deadline + self.grace_s + SWEEP_MARGIN_S) * 1000))
            pipe.zadd(k.due, {rec.event_id: rec.deadline})
            if rec.experiment is not None:
                counters = k.counters(rec.experiment, rec.variant)
                pipe.hincrby(counters, "decisions", 1)
                if rec.unit is None:
                    pipe.hincrby(counters, "anon", 1)
                else:
                    pipe.pfadd(k.units(rec.experiment, rec.variant), rec.unit)
                await self._lua().decide(
                    keys=[counters, k.unit_totals(rec.experiment, rec.variant)],
                    args=[rec.unit or "", self._unit_ttl_ms],
                    client=pipe,
                )
            pipe.hget(k.snapmeta, "version")
            *_, version = await pipe.execute()
        return int(version or 0)

    @_reachable
    async def get_decision(self, policy: str, event_id: str, now: float) -> DecisionRecord | None:
        fields = cast(
            dict[bytes, bytes], await self._redis().hgetall(self._k(policy).decision(event_id))
        )
        if not fields or fields.get(b"answered") != b"0" or b"meta" not in fields:
            return None
        rec = DecisionRecord.decode(fields)
        return None if now > rec.deadline else rec

    @_reachable
    async def was_answered(self, policy: str, event_id: str) -> bool:
        key = self._k(policy).decision(event_id)
        return await self._redis().hget(key, "answered") == b"1"

    @_reachable
    async def submit_feedback(
        self, policy: str, event_id: str, event: FeedbackEvent, now: float
    ) -> FeedbackOutcome:
        if event.event_id != event_id or event.policy != policy:
            raise ValueError(
                f"feedback event is for {event.policy!r}/{event.event_id!r}, "
                f"not {policy!r}/{event_id!r}"
            )
        k = self._k(policy)
        enc = event.encode()
        incr: list[Any] = []
        unit = ""
        if event.experiment is not None:
            for name, value in feedback_increments(event).items():
                incr += [name, repr(float(value))]
            unit = "a" if event.unit is None else f"u:{event.unit}"
        code = await self._lua().submit(
            keys=[
                k.decision(event_id),
                k.due,
                k.stream,
                k.fbtotal,
                k.log,
                k.counters(event.experiment, event.variant),
                k.unit_totals(event.experiment, event.variant),
            ],
            args=[
                repr(float(now)),
                event_id,
                enc["meta"],
                enc["x"],
                self.log_max,
                unit,
                repr(float(event.quality)),
                repr(float(event.cost_usd)),
                self._unit_ttl_ms,
                *incr,
            ],
        )
        return _OUTCOMES[int(code)]

    @_reachable
    async def expire_due(
        self, policy: str, now: float, default_quality: float | None, limit: int = 1000
    ) -> int:
        k = self._k(policy)
        r = self._redis()
        raw = await r.zrangebyscore(k.due, "-inf", f"({float(now)!r}", start=0, num=limit)
        if not raw:
            return 0
        ids = [_text(i) for i in raw]
        extra: list[list[bytes]] = [[] for _ in ids]
        if default_quality is not None:
            # the default event is the decision joined with the default quality:
            # read the records, then each script re-checks before it appends
            async with r.pipeline(transaction=False) as pipe:
                for event_id in ids:
                    pipe.hmget(k.decision(event_id), ["meta", "x"])
                pipe.hgetall(self.models_key)
                *records, raw_models = await pipe.execute()
            prices = {_text(n): ModelPrice(**json.loads(v)) for n, v in raw_models.items()}
            for i, (meta, x) in enumerate(records):
                if meta is None or x is None:
                    continue  # gone: the script just drops it from `due`
                rec = DecisionRecord.decode({"meta": meta, "x": x})
                cost = default_cost(rec, prices)
                ev = FeedbackEvent.join(
                    rec, quality=default_quality, cost_usd=cost, source="default", now=now
                )
                enc = ev.encode()
                extra[i] = [enc["meta"], enc["x"]]
        async with r.pipeline(transaction=False) as pipe:
            for event_id, more in zip(ids, extra, strict=True):
                await self._lua().close(
                    keys=[k.decision(event_id), k.due, k.stream, k.fbtotal, k.log],
                    args=[repr(float(now)), event_id, self.log_max, *more],
                    client=pipe,
                )
            closed = await pipe.execute()
        return sum(int(c) for c in closed)

    @_reachable
    async def due_backlog(self, policy: str, now: float) -> int:
        return int(await self._redis().zcount(self._k(policy).due, "-inf", f"({float(now)!r}"))

    @_reachable
    async def forward_copies(self, policy: str, batch: list[tuple[str, FeedbackEvent]]) -> int:
        work = [(i, ev) for i, ev in batch if ev.copies]
        if not work:
            return 0
        # one pipeline, each script in its target's slot; in stream order per target
        async with self._redis().pipeline(transaction=False) as pipe:
            for entry_id, ev in work:
                ms, seq = parse_stream_id(entry_id)
                enc = replace(ev, copies=None).encode()
                for target, incr in (ev.copies or {}).items():
                    k = self._k(target)
                    pairs: list[Any] = []
                    for name, value in (incr or {}).items():
                        pairs += [name, repr(float(value))]
                    await self._lua().forward(
                        keys=[k.stream, k.fbtotal, k.shadow, k.marks],
                        args=[policy, ms, seq, enc["meta"], enc["x"], *pairs],
                        client=pipe,
                    )
            done = await pipe.execute()
        return sum(int(d) for d in done)

    @_reachable
    async def read_feedback(
        self, policy: str, after_id: str, count: int, block_ms: int = 0
    ) -> list[tuple[str, FeedbackEvent]]:
        parse_stream_id(after_id)
        r = self._redis()
        streams: dict[Any, Any] = {self._k(policy).stream: after_id}
        loop = asyncio.get_running_loop()
        end = loop.time() + block_ms / 1000
        remaining = block_ms
        while True:
            block = min(remaining, self._block_chunk_ms) if remaining > 0 else None
            resp: Any = await r.xread(streams, count=count, block=block)
            if resp or block is None:
                break
            remaining = int((end - loop.time()) * 1000)
            if remaining <= 0:
                break
        # RESP2 answers [[stream, entries]], RESP3 (protocol=3 in the URL) {stream: entries}
        per_stream = resp.values() if isinstance(resp, dict) else (e for _, e in resp or [])
        return [
            (_text(entry_id), FeedbackEvent.decode(fields))
            for entries in per_stream
            for entry_id, fields in entries
        ]

    @_reachable
    async def read_log(
        self, policy: str, after_id: str, count: int
    ) -> list[tuple[str, FeedbackEvent]]:
        parse_stream_id(after_id)
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self._redis().xrange(
                self._k(policy).log, min=f"({after_id}", max="+", count=count
            ),
        )
        return [(_text(i), FeedbackEvent.decode(f)) for i, f in entries]

    @_reachable
    async def append_feedback(
        self, policy: str, event: FeedbackEvent, shadow: dict[str, float] | None = None
    ) -> None:
        k = self._k(policy)
        enc = event.encode()
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.xadd(k.stream, {"meta": enc["meta"], "x": enc["x"]})
            pipe.incr(k.fbtotal)
            for name, value in (shadow or {}).items():
                pipe.hincrbyfloat(k.shadow, name, float(value))
            await pipe.execute()

    @_reachable
    async def count_shadow_decision(self, policy: str, agree: bool, unsupported: float) -> None:
        k = self._k(policy)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hincrby(k.shadow, "decisions", 1)
            pipe.hincrby(k.shadow, "agree", int(agree))
            if unsupported > 0:
                pipe.hincrbyfloat(k.shadow, "unsupported", unsupported)
            await pipe.execute()

    @_reachable
    async def shadow_counts(self, policy: str) -> dict[str, float]:
        raw = await self._redis().hgetall(self._k(policy).shadow)
        return {_text(f): float(v) for f, v in raw.items()}

    # ---- experiments ---------------------------------------------------------
    @_reachable
    async def experiment_counts(
        self, policy: str, experiment: str, variant: str
    ) -> tuple[dict[str, float], int]:
        k = self._k(policy)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hgetall(k.counters(experiment, variant))
            pipe.pfcount(k.units(experiment, variant))
            raw, units = await pipe.execute()
        return {_text(f): float(v) for f, v in raw.items()}, int(units)

    @property
    def experiments_key(self) -> str:
        return f"{self.prefix}:experiments"

    @_reachable
    async def get_experiments(self, include_deleted: bool = False) -> dict[str, str]:
        raw = await self._redis().hgetall(self.experiments_key)
        docs = {_text(k): _text(v) for k, v in raw.items()}
        return docs if include_deleted else {k: v for k, v in docs.items() if v}

    @_reachable
    async def put_experiment(self, name: str, doc: str) -> None:
        await self._redis().hset(self.experiments_key, name, doc)

    @_reachable
    async def delete_experiment(self, name: str, arms: list[tuple[str, str]]) -> bool:
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hget(self.experiments_key, name)
            pipe.hset(self.experiments_key, name, "")  # a tombstone: never re-seeded
            for policy, variant in arms:
                pipe.delete(self._k(policy).counters(name, variant))
                pipe.delete(self._k(policy).units(name, variant))
                pipe.delete(self._k(policy).unit_totals(name, variant))
            old, *_ = await pipe.execute()
        return bool(old)

    @_reachable
    async def feedback_pending(self, policy: str) -> int:
        return int(await self._redis().xlen(self._k(policy).stream))

    @_reachable
    async def feedback_total(self, policy: str) -> int:
        return int(await self._redis().get(self._k(policy).fbtotal) or 0)

    # ---- snapshots and lease ----------------------------------------------
    @_reachable
    async def publish_snapshot(self, policy: str, snap: Snapshot, owner: str | None) -> bool:
        k = self._k(policy)
        ok = await self._lua().publish(
            keys=[k.snap, k.snapmeta, k.stream, k.lease],
            args=[
                "0" if owner is None else "1",
                owner or "",
                snap.state,
                snap.version,
                snap.last_id,
                snap.applied,
                repr(float(snap.published_at)),
                _min_id_after(snap.last_id),
                snap.features,
            ],
        )
        return bool(ok)

    @_reachable
    async def load_snapshot(self, policy: str) -> Snapshot | None:
        k = self._k(policy)
        # one MULTI so the bytes and their metadata come from the same publish
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.get(k.snap)
            pipe.hgetall(k.snapmeta)
            state, meta = await pipe.execute()
        if state is None or not meta:
            return None
        return Snapshot(
            state=state,
            version=int(meta[b"version"]),
            last_id=meta[b"last_id"].decode(),
            applied=int(meta[b"applied"]),
            published_at=float(meta[b"published_at"]),
            features=meta.get(b"features", b"").decode(),
        )

    @_reachable
    async def snapshot_info(self, policy: str) -> Snapshot | None:
        meta = cast(dict[bytes, bytes], await self._redis().hgetall(self._k(policy).snapmeta))
        if not meta:
            return None
        return Snapshot(
            state=b"",
            version=int(meta[b"version"]),
            last_id=meta[b"last_id"].decode(),
            applied=int(meta[b"applied"]),
            published_at=float(meta[b"published_at"]),
            features=meta.get(b"features", b"").decode(),
        )

    @_reachable
    async def snapshot_version(self, policy: str) -> int:
        return int(await self._redis().hget(self._k(policy).snapmeta, "version") or 0)

    @_reachable
    async def acquire_lease(self, policy: str, owner: str, ttl_ms: int) -> int:
        if not owner or ttl_ms <= 0:
            raise ValueError(f"lease needs an owner and ttl_ms > 0, got {owner!r}, {ttl_ms}")
        lease = self._k(policy).lease
        return int(await self._lua().acquire(keys=[lease], args=[owner, ttl_ms]))

    @_reachable
    async def release_lease(self, policy: str, owner: str) -> None:
        await self._lua().release(keys=[self._k(policy).lease], args=[owner])

    # ---- model catalogue ---------------------------------------------------
    @_reachable
    async def get_models(self) -> dict[str, ModelPrice]:
        raw = await self._redis().hgetall(self.models_key)
        return {_text(k): ModelPrice(**json.loads(v)) for k, v in raw.items()}

    @_reachable
    async def put_model(self, model: ModelPrice) -> None:
        doc = json.dumps(asdict(model), separators=(",", ":"))
        await self._redis().hset(self.models_key, model.name, doc)

    @_reachable
    async def delete_model(self, name: str) -> bool:
        done = int(await self._lua().delete_model(keys=[self.models_key], args=[name]))
        if done < 0:
            raise LastModel(name)
        return done == 1

    # ---- housekeeping -------------------------------------------------------
    async def ping(self) -> bool:
        """Always asks Redis (it is the probe): an answer ends a known outage."""
        try:
            ok = bool(await self._redis().ping())
        except Exception:  # a health probe answers, it never raises
            self._mark_down()
            return False
        if ok:
            self._mark_up()
        return ok

    @property
    def known_down(self) -> bool:
        """True from a call that could not reach Redis until one that did."""
        return self._down_since is not None

    async def _outage(self, exc: BaseException) -> bool:
        """Whether a failed call means Redis is down for everyone (fail fast from now on)
        or only that this call was unlucky. Waiting for a free pooled connection under a
        burst is load, not an outage; a timed-out command may be one slow command, so a
        short ping decides. A refused or reset connection is an outage."""
        if isinstance(exc, rex.MaxConnectionsError) or "No connection available" in str(exc):
            return False
        if not isinstance(exc, rex.TimeoutError):
            return True
        try:
            return not await asyncio.wait_for(self._redis().ping(), CONFIRM_PING_S)
        except Exception:  # the confirming ping failed too: down
            return True

    def _mark_down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("redis at %s unreachable; failing fast until a probe answers", self.where)
        self._next_probe = time.monotonic() + PROBE_EVERY_S

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.info(
                "redis at %s answers again after %.1f s",
                self.where,
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    async def close(self) -> None:
        client, self._client, self._scripts = self._client, None, None
        if client is not None:
            try:
                await client.aclose()
            except _UNREACHABLE:
                pass


def _text(value: bytes | str | Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _min_id_after(last_id: str) -> str:
    """The XTRIM MINID that drops entries up to and including `last_id` ("" for none):
    MINID keeps ids >= its argument, so it is the next possible id."""
    ms, seq = parse_stream_id(last_id)
    if (ms, seq) == (0, 0):
        return ""
    return f"{ms + 1}-0" if seq == _MAX_SEQ else f"{ms}-{seq + 1}"


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
