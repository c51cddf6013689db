"""The Redis store: shared by every worker and learner, survives their restarts.

Key layout (every key of one policy carries the hash tag `{policy}`, so a Redis
Cluster keeps a policy on one shard and every script touches one slot):

    <prefix>:{<policy>}:d:<event_id>  hash: meta, x (DecisionRecord.encode()), deadline
                                      (unix s), tomb (ms), answered ("0" open, "1"
                                      answered, "2" closed by the sweep, "3" quality
                                      parked waiting for the cost), ac ("1": awaits its
                                      cost), cost (the attached cost, USD), pq, pqq,
                                      pqc, pu (the parked event's meta, quality, cost
                                      and unit argument); once answered or closed a
                                      tombstone without meta and x that expires at
                                      tomb = deadline + grace; while open at tomb +
                                      SWEEP_MARGIN_S
    <prefix>:{<policy>}:due           sorted set: open (and parked) event ids scored by
                                      deadline
    <prefix>:{<policy>}:stream        stream: feedback events (fields meta, x, and cost
                                      when a measured cost overrides meta's)
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
    <prefix>:{<policy>}:s:<session>  hash: e (event_id), m (model), n (turns taken),
                                      t (turns in all), ttl (ms): a session pin, expiring
                                      ttl after its last turn
    <prefix>:{<group>}:members        sorted set: a learner pool's live members
                                      scored by expiry (Redis ms; heartbeat)
    <prefix>:models                   hash: model name -> ModelPrice as JSON
    <prefix>:experiments              hash: experiment name -> its config as JSON

Every error meaning "Redis cannot be reached" becomes `StoreUnavailable` (see
`_reachable`). The client retries a dropped connection once at once and never
retries a timeout, so an outage is reported within about `socket_timeout` and the
pool reconnects by itself when Redis is back. The scripts are EVALSHA'd through
redis-py's Script objects, which re-load them after a restart flushed the cache.

On a Redis Cluster (a `redis+cluster://` or `rediss+cluster://` URL naming any one
node) the same keys go through redis-py's cluster client. That client refuses scripts
inside a pipeline and runs a MULTI through a thread per queued command, so there each
MULTI here is one script instead (`_LuaMulti`: as atomic, and refused by the client
unless its keys share one slot), and the few batches that reach several policies'
slots (the sweep's closes, the copies to other policies, deleting an experiment) are
separate calls, each atomic within its own slot.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, replace
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from service.budgets.ledger_redis import RedisLedger
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
    check_cost,
    check_pin,
    check_policy_name,
    default_cost,
    parse_stream_id,
)

log = logging.getLogger("banditroute.store")
# The Lua shared by the scripts. unit_get/unit_put/incf: the Lua half of
# abstats.unit_decision / unit_feedback: a unit's totals "D N Q C" and its pairwise
# products' increments written with 17 digits, so nothing is rounded. count: what an
# accepted event adds to its experiment variant (abstats.Sums.increments and
# abstats.unit_feedback), computed here because the cost may be the one attached to
# the decision rather than the caller's. settle: the decision answered, shrunk to its
# tombstone. append: an event onto the stream and the decision log, with the measured
# cost in a field of its own when it overrides the event's (FeedbackEvent.decode).
_LIB_LUA = """
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
-- unit: '' no experiment, 'a' anonymous, 'u:<id>'
local function count(ckey, tkey, unit, q, c, ttl_ms)
  if unit == '' then return end
  incf(ckey, 'n', 1)
  incf(ckey, 'sq', q)
  incf(ckey, 'sq2', q * q)
  incf(ckey, 'sc', c)
  incf(ckey, 'sc2', c * c)
  incf(ckey, 'sqc', q * c)
  -- abstats.unit_feedback: an anonymous decision was a unit of its own, D = 1
  local d, n, sq, sc = 1, 0, 0, 0
  local id = nil
  if unit ~= 'a' then
    id = string.sub(unit, 3)
    d, n, sq, sc = unit_get(tkey, id)
    if not d then
      d, n, sq, sc = 0, 0, 0, 0
      redis.call('HINCRBY', ckey, 'u_units', 1)
    end
  end
  if n == 0 then redis.call('HINCRBY', ckey, 'u_resp', 1) end
  local q1, c1 = sq + q, sc + c
  incf(ckey, 'u_n', 1)
  incf(ckey, 'u_q', q)
  incf(ckey, 'u_c', c)
  incf(ckey, 'u_nn', 2 * n + 1)
  incf(ckey, 'u_dn', d)
  incf(ckey, 'u_nq', n * q + q1)
  incf(ckey, 'u_nc', n * c + c1)
  incf(ckey, 'u_qq', q * (2 * sq + q))
  incf(ckey, 'u_qc', sq * c + q * c1)
  incf(ckey, 'u_cc', c * (2 * sc + c))
  if id then unit_put(tkey, id, ttl_ms, d, n + 1, q1, c1) end
end
local function settle(dkey, due, event_id, state)
  redis.call('HSET', dkey, 'answered', state)
  redis.call('HDEL', dkey, 'meta', 'x', 'pq', 'pqq', 'pqc', 'pu')
  local tomb = redis.call('HGET', dkey, 'tomb')
  if tomb then redis.call('PEXPIREAT', dkey, tomb) end
  redis.call('ZREM', due, event_id)
end
local function append(stream, fbtotal, log, log_max, meta, x, cost)
  if cost then
    redis.call('XADD', stream, '*', 'meta', meta, 'x', x, 'cost', cost)
    redis.call('XADD', log, 'MAXLEN', '~', log_max, '*', 'meta', meta, 'x', x, 'cost', cost)
  else
    redis.call('XADD', stream, '*', 'meta', meta, 'x', x)
    redis.call('XADD', log, 'MAXLEN', '~', log_max, '*', 'meta', meta, 'x', x)
  end
  redis.call('INCR', fbtotal)
end
"""

P = ParamSpec("P")
T = TypeVar("T")

# BusyLoadingError: Redis is up but still loading its data set; ReadOnlyError: we
# reached a replica (failover in progress). Both mean "not usable now", like a
# refused connection; every other Redis error is a bug and propagates as is.
# ClusterDownError, SlotNotCoveredError: a cluster that has lost a shard or is
# re-forming, not usable now either.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.BusyLoadingError,
    rex.TimeoutError,
    rex.ReadOnlyError,
    rex.ClusterDownError,
    rex.SlotNotCoveredError,
    OSError,
)

_MAYBE_UNREACHABLE: tuple[type[BaseException], ...] = (*_UNREACHABLE, rex.RedisClusterException)


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` means "Redis cannot be reached". The cluster client reports
    finding no node that answers as a RedisClusterException caused by the connection
    error, and its own misuse (keys of two slots) as one without a cause."""
    if isinstance(exc, _UNREACHABLE):
        return True
    return isinstance(exc, rex.RedisClusterException) and isinstance(exc.__cause__, _UNREACHABLE)


# The decision hash's `answered`: "0" open, "1" answered (its event appended), "2"
# closed by the sweep, "3" parked: its quality taken (pq: the event's meta, pqq its
# quality, pqc its cost, pu its unit argument), waiting for the cost that will follow
# (the record has `ac` = "1": DecisionRecord.awaits_cost). `cost`: the attached cost.

# KEYS: decision, due, stream, fbtotal, log, counters, unit totals.
# ARGV: now, event_id, meta, x, log_max, unit ("" no experiment, "a" anonymous, "u:<id>"),
# quality, cost, unit_ttl_ms.
# Returns 1 accepted, 2 duplicate, 0 unknown (missing, closed or past the deadline),
# 3 parked. An attached cost overrides the event's.
_SUBMIT = (
    _LIB_LUA
    + """
local answered = redis.call('HGET', KEYS[1], 'answered')
if not answered then return 0 end
if answered == '1' or answered == '3' then return 2 end
if answered ~= '0' then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then return 0 end
local cost = redis.call('HGET', KEYS[1], 'cost')
if not cost and redis.call('HGET', KEYS[1], 'ac') == '1' then
  redis.call('HSET', KEYS[1], 'answered', '3', 'pq', ARGV[3], 'pqq', ARGV[7],
             'pqc', ARGV[8], 'pu', ARGV[6])
  return 3
end
settle(KEYS[1], KEYS[2], ARGV[2], '1')
append(KEYS[3], KEYS[4], KEYS[5], ARGV[5], ARGV[3], ARGV[4], cost)
count(KEYS[6], KEYS[7], ARGV[6], tonumber(ARGV[7]), tonumber(cost or ARGV[8]), ARGV[9])
return 1
"""
)

# KEYS: decision, due, stream, fbtotal, log, counters, unit totals (of the decision's
# experiment variant). ARGV: now, event_id, cost, log_max, unit_ttl_ms.
# Returns 1 attached (and a parked quality appended with it), 2 duplicate (a cost
# attached already, or the event appended), 0 unknown (missing, closed, past deadline).
_ATTACH = (
    _LIB_LUA
    + """
local answered = redis.call('HGET', KEYS[1], 'answered')
if answered ~= '0' and answered ~= '1' and answered ~= '3' then return 0 end
if answered == '1' or redis.call('HEXISTS', KEYS[1], 'cost') == 1 then return 2 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then return 0 end
if answered == '0' then
  redis.call('HSET', KEYS[1], 'cost', ARGV[3])
  return 1
end
local f = redis.call('HMGET', KEYS[1], 'pq', 'x', 'pqq', 'pu')
redis.call('HSET', KEYS[1], 'cost', ARGV[3])
settle(KEYS[1], KEYS[2], ARGV[2], '1')
append(KEYS[3], KEYS[4], KEYS[5], ARGV[4], f[1], f[2], ARGV[3])
count(KEYS[6], KEYS[7], f[4], tonumber(f[3]), tonumber(ARGV[3]), ARGV[5])
return 1
"""
)

# KEYS: decision, due, snapshot meta, counters, distinct units, unit totals.
# ARGV: the record's expiry (unix ms), its deadline, its event id, its unit ("" none),
# "1" anonymous else "0", unit_ttl_ms, then the hash's fields and values.
# put_decision of an experiment's decision in one script rather than a MULTI around
# a script: the cluster client refuses the latter. The decision's share of its
# variant's per-unit sums is abstats.unit_decision. Returns the snapshot version.
_PUT_EXPERIMENT_DECISION = (
    _LIB_LUA
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[4], 'decisions', 1)
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[4], 'anon', 1)
else
  redis.call('PFADD', KEYS[5], ARGV[4])
end
local unit = ARGV[4]
local d, n, q, c = nil, 0, 0, 0
if unit ~= '' then d, n, q, c = unit_get(KEYS[6], unit) end
if not d then
  d, n, q, c = 0, 0, 0, 0
  redis.call('HINCRBY', KEYS[4], 'u_units', 1)
end
incf(KEYS[4], 'u_d', 1)
incf(KEYS[4], 'u_dd', 2 * d + 1)
incf(KEYS[4], 'u_dn', n)
if unit ~= '' then unit_put(KEYS[6], unit, ARGV[6], d + 1, n, q, c) end
return redis.call('HGET', KEYS[3], 'version')
"""
)

# KEYS: decision, due, stream, fbtotal, log, counters, unit totals.
# ARGV: now, event_id, log_max, unit_ttl_ms[, meta, x of the default event].
# Closes one open decision whose deadline passed, appending the default event if
# given (with the attached cost, when one was attached); a parked one gets its parked
# event instead (its own cost) and counts as answered. Returns 1 if it closed it.
# Drops ids of answered or vanished decisions from `due`; leaves a decision re-put
# with a later deadline alone.
_CLOSE = (
    _LIB_LUA
    + """
local answered = redis.call('HGET', KEYS[1], 'answered')
if answered ~= '0' and answered ~= '3' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) >= tonumber(ARGV[1]) then return 0 end
if answered == '3' then
  local f = redis.call('HMGET', KEYS[1], 'pq', 'x', 'pqq', 'pqc', 'pu')
  settle(KEYS[1], KEYS[2], ARGV[2], '1')
  append(KEYS[3], KEYS[4], KEYS[5], ARGV[3], f[1], f[2], false)
  count(KEYS[6], KEYS[7], f[5], tonumber(f[3]), tonumber(f[4]), ARGV[4])
  return 1
end
local cost = redis.call('HGET', KEYS[1], 'cost')
settle(KEYS[1], KEYS[2], ARGV[2], '2')
if #ARGV >= 6 then append(KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[5], ARGV[6], cost) end
return 1
"""
)

# KEYS: the session pin. Counts a turn: {event_id, model, turn} while turns are
# left (refreshing the TTL; the last turn drops the pin), else nil.
_SESSION_TURN = """
local f = redis.call('HMGET', KEYS[1], 'e', 'm', 'n', 't', 'ttl')
if not f[1] then return false end
local n, t = tonumber(f[3]) + 1, tonumber(f[4])
if n > t then
  redis.call('DEL', KEYS[1])
  return false
end
if n == t then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'n', n)
  redis.call('PEXPIRE', KEYS[1], f[5])
end
return {f[1], f[2], n}
"""

# KEYS: snap, snapmeta, stream, lease.
# ARGV: fenced ("1"/"0"), owner, state, version, last_id, applied, published_at, minid,
# features, pacers.
_PUBLISH = """
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
  local current = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
  if current + 1 ~= tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'version', ARGV[4], 'last_id', ARGV[5],
           'applied', ARGV[6], 'published_at', ARGV[7], 'features', ARGV[9] or '',
           'pacers', ARGV[10] or '')
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

# KEYS: every key the commands touch (for the cluster client to route by and to check
# that they share one slot). ARGV: each command as its argument count, then its name
# and arguments. Runs them in order, atomically like a MULTI; returns their replies.
_MULTI = """
local out, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  out[#out + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return out
"""

_OUTCOMES = {
    1: FeedbackOutcome.ACCEPTED,
    2: FeedbackOutcome.DUPLICATE,
    0: FeedbackOutcome.UNKNOWN,
    3: FeedbackOutcome.PARKED,
}

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
        except _MAYBE_UNREACHABLE as exc:
            if not _unreachable(exc):
                raise
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
        self.attach = client.register_script(_ATTACH)
        self.session_turn = client.register_script(_SESSION_TURN)
        self.put_experiment_decision = client.register_script(_PUT_EXPERIMENT_DECISION)
        self.multi = client.register_script(_MULTI)
        self.close = client.register_script(_CLOSE)
        self.publish = client.register_script(_PUBLISH)
        self.acquire = client.register_script(_ACQUIRE)
        self.release = client.register_script(_RELEASE)
        self.forward = client.register_script(_FORWARD)
        self.delete_model = client.register_script(_DELETE_MODEL)


class _QueueingCluster(RedisCluster):
    """The cluster client queueing like the single-node pool: at most `limit` commands
    at once, the others waiting up to `wait_s` for one to finish, where the plain
    client fails a command at once when its node's connections are all in use."""

    def __init__(self, *args: Any, limit: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(limit)
        self._wait_s = wait_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            # learn the slots before sending: commands that find the client not yet
            # initialized and go on concurrently can be sent on connections its
            # initialization is closing (redis-py 8.1)
            await self.initialize()
        if self._in_flight.locked():
            try:
                await asyncio.wait_for(self._in_flight.acquire(), self._wait_s)
            except TimeoutError:
                # the single-node pool's words, which _outage reads as load
                raise rex.MaxConnectionsError("No connection available.") from None
        else:
            await self._in_flight.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._in_flight.release()


class _LuaMulti:
    """A MULTI for the cluster client, which has none worth using: the same commands
    queued the same way (the subset this store sends), run as one `_MULTI` script on
    the node of their slot. Replies are Lua's: the callers here use only those of
    GET, HGET, PFCOUNT and HGETALL (made a dict, as redis-py's pipeline makes it)."""

    def __init__(self, script: AsyncScript) -> None:
        self._script = script
        self._keys: list[str] = []
        self._argv: list[Any] = []
        self._as_dict: list[bool] = []

    async def __aenter__(self) -> _LuaMulti:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _add(self, name: str, key: str, *args: Any, as_dict: bool = False) -> None:
        if key not in self._keys:
            self._keys.append(key)
        self._argv += [len(args) + 2, name, key, *args]
        self._as_dict.append(as_dict)

    def hset(
        self,
        key: str,
        field: str | None = None,
        value: Any = None,
        *,
        mapping: dict[Any, Any] | None = None,
    ) -> None:
        pairs = [] if field is None else [field, value]
        pairs += [v for kv in (mapping or {}).items() for v in kv]
        self._add("HSET", key, *pairs)

    def hget(self, key: str, field: str) -> None:
        self._add("HGET", key, field)

    def hgetall(self, key: str) -> None:
        self._add("HGETALL", key, as_dict=True)

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self._add("HINCRBY", key, field, amount)

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self._add("HINCRBYFLOAT", key, field, repr(float(amount)))

    def xadd(self, key: str, fields: dict[Any, Any]) -> None:
        self._add("XADD", key, "*", *(v for kv in fields.items() for v in kv))

    def incr(self, key: str) -> None:
        self._add("INCR", key)

    def get(self, key: str) -> None:
        self._add("GET", key)

    def delete(self, key: str) -> None:
        self._add("DEL", key)

    def pexpire(self, key: str, ms: int) -> None:
        self._add("PEXPIRE", key, ms)

    def sadd(self, key: str, *members: Any) -> None:
        self._add("SADD", key, *members)

    def pfcount(self, key: str) -> None:
        self._add("PFCOUNT", key)

    async def execute(self) -> list[Any]:
        if not self._argv:
            return []
        replies = await self._script(keys=self._keys, args=self._argv)
        return [
            dict(zip(r[::2], r[1::2], strict=True)) if as_dict else r
            for r, as_dict in zip(replies, self._as_dict, strict=True)
        ]


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

    def session(self, session: str) -> str:
        return f"{self.base}:s:{session}"

    def counters(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:x:{experiment}:{variant}"

    def units(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:xu:{experiment}:{variant}"

    def unit_totals(self, experiment: str | None, variant: str | None) -> str:
        return f"{self.base}:xt:{experiment}:{variant}"


class RedisStore(Store):
    """The store on Redis (redis.asyncio; hiredis parses replies when installed).

    url: redis:// or rediss:// or unix:// URL (password in the URL, never logged);
    redis+cluster:// or rediss+cluster:// for a Redis Cluster, naming any one of its
    nodes (the client finds the others).
    prefix: first part of every key, so several deployments can share one Redis.
    grace_s: how long past its deadline a decision is kept, so a late second
    feedback is still a duplicate (409) rather than unknown (404).
    socket_timeout: seconds to connect, to wait for a reply, or to wait for a free
    pooled connection before reporting the store unavailable.
    max_connections: the pool's size; more concurrent calls queue for a connection
    (redis-py's default pool would fail them instead). On a cluster: per node, and a
    call beyond it fails as unavailable (the cluster client has no blocking pool).
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
        scheme, sep, rest = url.partition("://")
        self.cluster = scheme.endswith("+cluster")
        # what redis-py parses: the plain scheme (the cluster client takes redis://)
        self._client_url = scheme.removesuffix("+cluster") + sep + rest
        # a blocking XREAD longer than the socket timeout would read as an outage,
        # so long waits are made of several shorter ones
        self._block_chunk_ms = max(1, int(socket_timeout * 500))
        self._client: aioredis.Redis | None = None
        self._scripts: _Scripts | None = None
        self._new_multi: Callable[[], Any] | None = None
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
        if self._client is None and self.cluster:
            self._connect_cluster()
        if self._client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._client_url,
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
            self._new_multi = functools.partial(client.pipeline, transaction=True)
            self._client = client
        return self._client

    def _connect_cluster(self) -> None:
        cluster = _QueueingCluster.from_url(
            self._client_url,
            limit=self.max_connections,
            wait_s=self.socket_timeout,
            # per node; above the queue's limit so a pipeline (which bypasses the
            # queue) still finds a connection
            max_connections=self.max_connections + 8,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            socket_keepalive=True,
            health_check_interval=10,
            # as for one node: one immediate retry, so an outage is reported fast
            # (MOVED and ASK redirections are followed apart from this)
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        # typed as the single-node client, whose commands it answers alike, so both
        # share this store's code; what differs (pipelines) is branched on self.cluster
        client = cast(aioredis.Redis, cluster)
        self._scripts = scripts = _Scripts(client)
        self._new_multi = lambda: _LuaMulti(scripts.multi)
        self._client = client

    def _multi(self) -> Any:
        """A MULTI on the keys of one slot: a transaction pipeline on one node, a
        `_LuaMulti` on a cluster: chosen when the client is built, so no call
        branches on the kind."""
        if self._new_multi is None:
            self._redis()
        assert self._new_multi is not None
        return self._new_multi()

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
    # put_decision without an experiment: KEYS decision, due, snapshot meta; ARGV the
    # record's expiry (unix ms), its deadline, its event id, then the hash's fields and
    # values. The MULTI below as one script: one command for redis-py to pack and one
    # reply to parse instead of six (~75 us of the route's CPU), atomic like the MULTI
    # and as safe to run twice (the one retry on a dropped connection)
    _PUT_DECISION = """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return redis.call('HGET', KEYS[3], 'version')
"""
    _PUT_DECISION_SHA = hashlib.sha1(_PUT_DECISION.encode()).hexdigest()

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
        if rec.awaits_cost:
            fields["ac"] = "1"
        expire_ms = int((rec.deadline + self.grace_s + SWEEP_MARGIN_S) * 1000)
        if rec.experiment is None:
            client = self._redis()
            argv: list[Any] = [expire_ms, repr(float(rec.deadline)), rec.event_id]
            argv += [v for kv in fields.items() for v in kv]
            try:
                version = await client.evalsha(
                    self._PUT_DECISION_SHA, 3, key, k.due, k.snapmeta, *argv
                )
            except rex.NoScriptError:  # a restarted Redis: EVAL loads it again
                version = await client.eval(self._PUT_DECISION, 3, key, k.due, k.snapmeta, *argv)
            return int(version or 0)
        # one script like the path above: atomic, never a record without its TTL, and
        # (measured) half the time of the MULTI around a script it replaced
        argv = [
            expire_ms,
            repr(float(rec.deadline)),
            rec.event_id,
            rec.unit or "",
            "1" if rec.unit is None else "0",
            self._unit_ttl_ms,
        ]
        argv += [v for kv in fields.items() for v in kv]
        version = await self._lua().put_experiment_decision(
            keys=[
                key,
                k.due,
                k.snapmeta,
                k.counters(rec.experiment, rec.variant),
                k.units(rec.experiment, rec.variant),
                k.unit_totals(rec.experiment, rec.variant),
            ],
            args=argv,
        )
        return int(version or 0)

    @_reachable
    async def get_decision(self, policy: str, event_id: str, now: float) -> DecisionRecord | None:
        fields = cast(
            dict[bytes, bytes], await self._redis().hgetall(self._k(policy).decision(event_id))
        )
        if not fields or fields.get(b"answered") not in (b"0", b"3") or b"meta" not in fields:
            return None
        rec = DecisionRecord.decode(fields)
        return None if now > rec.deadline else rec

    @_reachable
    async def was_answered(self, policy: str, event_id: str) -> bool:
        key = self._k(policy).decision(event_id)
        return await self._redis().hget(key, "answered") in (b"1", b"3")

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
                _unit_arg(event.experiment, event.unit),
                repr(float(event.quality)),
                repr(float(event.cost_usd)),
                self._unit_ttl_ms,
            ],
        )
        return _OUTCOMES[int(code)]

    @_reachable
    async def attach_cost(
        self, policy: str, event_id: str, cost_usd: float, now: float
    ) -> FeedbackOutcome:
        cost = check_cost(cost_usd)
        k = self._k(policy)
        key = k.decision(event_id)
        # the script may append a parked event, so it must be given the counters of the
        # decision's experiment variant: read them first (a record's meta never changes)
        raw = await self._redis().hget(key, "meta")
        meta = json.loads(raw) if raw else {}
        exp, variant = meta.get("experiment"), meta.get("variant")
        code = await self._lua().attach(
            keys=[
                key,
                k.due,
                k.stream,
                k.fbtotal,
                k.log,
                k.counters(exp, variant),
                k.unit_totals(exp, variant),
            ],
            args=[repr(float(now)), event_id, repr(cost), self.log_max, self._unit_ttl_ms],
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
        # the records first: each names its experiment's counters (a parked quality is
        # counted when the sweep appends it) and makes the default event; each script
        # then re-checks before it closes or appends
        async with r.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hmget(k.decision(event_id), ["meta", "x", "cost"])
            pipe.hgetall(self.models_key)
            *records, raw_models = await pipe.execute()
        prices = {_text(n): ModelPrice(**json.loads(v)) for n, v in raw_models.items()}
        closes: list[tuple[list[str], list[Any]]] = []
        for event_id, (meta, x, cost) in zip(ids, records, strict=True):
            counters, totals, more = k.counters(None, None), k.unit_totals(None, None), []
            if meta is not None and x is not None:  # else gone: dropped from `due`
                rec = DecisionRecord.decode({"meta": meta, "x": x, "cost": cost})
                counters = k.counters(rec.experiment, rec.variant)
                totals = k.unit_totals(rec.experiment, rec.variant)
                if default_quality is not None:
                    enc = _default_event(rec, default_quality, prices, now).encode()
                    more = [enc["meta"], enc["x"]]
            closes.append(
                (
                    [k.decision(event_id), k.due, k.stream, k.fbtotal, k.log, counters, totals],
                    [repr(float(now)), event_id, self.log_max, self._unit_ttl_ms, *more],
                )
            )
        return sum(int(c) for c in await self._scripts_in_turn(self._lua().close, closes))

    @_reachable
    async def due_backlog(self, policy: str, now: float) -> int:
        return int(await self._redis().zcount(self._k(policy).due, "-inf", f"({float(now)!r}"))

    @_reachable
    async def forward_copies(self, policy: str, batch: list[tuple[str, FeedbackEvent]]) -> int:
        work = [(i, ev) for i, ev in batch if ev.copies]
        if not work:
            return 0
        # each script in its target's slot, in stream order per target (the marks then
        # make a re-run after a failure part-way copy only what had not been copied)
        calls: list[tuple[list[str], list[Any]]] = []
        for entry_id, ev in work:
            ms, seq = parse_stream_id(entry_id)
            enc = replace(ev, copies=None).encode()
            for target, incr in (ev.copies or {}).items():
                k = self._k(target)
                pairs: list[Any] = []
                for name, value in (incr or {}).items():
                    pairs += [name, repr(float(value))]
                calls.append(
                    (
                        [k.stream, k.fbtotal, k.shadow, k.marks],
                        [policy, ms, seq, enc["meta"], enc["x"], *pairs],
                    )
                )
        return sum(int(d) for d in await self._scripts_in_turn(self._lua().forward, calls))

    async def _scripts_in_turn(
        self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """`script` once per (keys, args), in order: one pipeline (one round trip) on
        one node; on a cluster, whose client pipelines no script, one call after the
        other, so a failure leaves every later call unmade."""
        if self.cluster:
            return [await script(keys=keys, args=args) for keys, args in calls]
        async with self._redis().pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return cast(list[Any], await pipe.execute())

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
        async with self._multi() as pipe:
            pipe.xadd(k.stream, {"meta": enc["meta"], "x": enc["x"]})
            pipe.incr(k.fbtotal)
            for name, value in (shadow or {}).items():
                pipe.hincrbyfloat(k.shadow, name, float(value))
            await pipe.execute()

    @_reachable
    async def count_shadow_decision(self, policy: str, agree: bool, unsupported: float) -> None:
        k = self._k(policy)
        async with self._multi() as pipe:
            pipe.hincrby(k.shadow, "decisions", 1)
            pipe.hincrby(k.shadow, "agree", int(agree))
            if unsupported > 0:
                pipe.hincrbyfloat(k.shadow, "unsupported", unsupported)
            await pipe.execute()

    @_reachable
    async def shadow_counts(self, policy: str) -> dict[str, float]:
        raw = await self._redis().hgetall(self._k(policy).shadow)
        return {_text(f): float(v) for f, v in raw.items()}

    # ---- session pins ------------------------------------------------------------
    @_reachable
    async def pin_session(
        self, policy: str, session: str, event_id: str, model: str, turns: int, ttl_s: float
    ) -> None:
        check_pin(session, turns, ttl_s)
        key = self._k(policy).session(session)
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self._multi() as pipe:
            pipe.delete(key)
            if turns > 1:
                pipe.hset(
                    key, mapping={"e": event_id, "m": model, "n": 1, "t": turns, "ttl": ttl_ms}
                )
                pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    @_reachable
    async def session_turn(self, policy: str, session: str) -> tuple[str, str, int] | None:
        got = await self._lua().session_turn(keys=[self._k(policy).session(session)], args=[])
        if got is None:
            return None
        event_id, model, turn = got
        return _text(event_id), _text(model), int(turn)

    def _flags_key(self, session: str) -> str:
        return f"{self.prefix}:sf:{session}"

    @_reachable
    async def flag_session(self, session: str, entities: list[str], ttl_s: float) -> None:
        key = self._flags_key(session)
        async with self._multi() as pipe:
            pipe.sadd(key, *entities)
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()

    @_reachable
    async def session_flags(self, session: str) -> set[str]:
        members = await self._redis().smembers(self._flags_key(session))  # type: ignore[misc]
        return {_text(m) for m in members}

    # ---- experiments ---------------------------------------------------------
    @_reachable
    async def experiment_counts(
        self, policy: str, experiment: str, variant: str
    ) -> tuple[dict[str, float], int]:
        k = self._k(policy)
        async with self._multi() as pipe:
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

    @property
    def tenants_key(self) -> str:
        return f"{self.prefix}:tenants"

    @_reachable
    async def get_tenants(self, include_deleted: bool = False) -> dict[str, str]:
        raw = await self._redis().hgetall(self.tenants_key)
        docs = {_text(k): _text(v) for k, v in raw.items()}
        return docs if include_deleted else {k: v for k, v in docs.items() if v}

    @_reachable
    async def put_tenant(self, name: str, doc: str) -> None:
        await self._redis().hset(self.tenants_key, name, doc)

    @_reachable
    async def delete_tenant(self, name: str) -> bool:
        async with self._multi() as pipe:
            pipe.hget(self.tenants_key, name)
            pipe.hset(self.tenants_key, name, "")
            old, _ = await pipe.execute()
        return bool(old)

    @_reachable
    async def delete_experiment(self, name: str, arms: list[tuple[str, str]]) -> bool:
        if self.cluster:
            return await self._delete_experiment_by_slot(name, arms)
        async with self._multi() as pipe:
            pipe.hget(self.experiments_key, name)
            pipe.hset(self.experiments_key, name, "")  # a tombstone: never re-seeded
            for policy, variant in arms:
                pipe.delete(self._k(policy).counters(name, variant))
                pipe.delete(self._k(policy).units(name, variant))
                pipe.delete(self._k(policy).unit_totals(name, variant))
            old, *_ = await pipe.execute()
        return bool(old)

    async def _delete_experiment_by_slot(self, name: str, arms: list[tuple[str, str]]) -> bool:
        """delete_experiment on a cluster, where its arms' keys lie in their policies'
        slots: each arm's keys in a step of its own, then the tombstone, so a call
        that failed part-way and is made again still finds the experiment and ends
        the job."""
        for policy, variant in arms:
            async with self._multi() as pipe:
                pipe.delete(self._k(policy).counters(name, variant))
                pipe.delete(self._k(policy).units(name, variant))
                pipe.delete(self._k(policy).unit_totals(name, variant))
                await pipe.execute()
        async with self._multi() as pipe:
            pipe.hget(self.experiments_key, name)
            pipe.hset(self.experiments_key, name, "")
            old, _ = await pipe.execute()
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
                snap.pacers,
            ],
        )
        return bool(ok)

    @_reachable
    async def load_snapshot(self, policy: str) -> Snapshot | None:
        k = self._k(policy)
        # one MULTI so the bytes and their metadata come from the same publish
        async with self._multi() as pipe:
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
            pacers=meta.get(b"pacers", b"").decode(),
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
            pacers=meta.get(b"pacers", b"").decode(),
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

    # ---- learner pool membership ------------------------------------------
    # KEYS: the group's sorted set (member -> expiry, Redis ms). ARGV: member, ttl_ms.
    # The server's clock scores every member alike; the set itself expires once no
    # member has beaten for its longest ttl, so an abandoned group leaves nothing.
    _HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

    def _group_key(self, group: str) -> str:
        return f"{self.prefix}:{{{check_policy_name(group)}}}:members"

    @_reachable
    async def heartbeat(self, group: str, member: str, ttl_ms: int) -> list[str]:
        if not member or ttl_ms <= 0:
            raise ValueError(f"heartbeat needs a member and ttl_ms > 0, got {member!r}, {ttl_ms}")
        # EVAL, not EVALSHA: a few hundred bytes every third of a lease, and nothing
        # to re-load after a Redis restart
        found = await cast(
            Awaitable[list[bytes]],
            self._redis().eval(self._HEARTBEAT, 1, self._group_key(group), member, ttl_ms),
        )
        return sorted(_text(m) for m in found)

    @_reachable
    async def leave(self, group: str, member: str) -> None:
        await self._redis().zrem(self._group_key(group), member)

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

    # ---- budgets -------------------------------------------------------------
    def ledger(self) -> RedisLedger:
        # made on first use rather than in __init__; stateless but for its scripts
        led: RedisLedger | None = getattr(self, "_ledger", None)
        if led is None:
            led = self._ledger = RedisLedger(self)
        return led

    @_reachable
    async def ledger_call(self, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """`call` on this store's client, with its outage handling: the ledger's calls
        map "Redis cannot be reached" to StoreUnavailable like the store's own."""
        return await call(self._redis())

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
        self._new_multi = None
        if client is not None:
            try:
                await client.aclose()
            except _UNREACHABLE:
                pass


def _unit_arg(experiment: str | None, unit: str | None) -> str:
    """The scripts' unit argument: "" no experiment, "a" anonymous, "u:<id>"."""
    if experiment is None:
        return ""
    return "a" if unit is None else f"u:{unit}"


def _default_event(
    rec: DecisionRecord, quality: float, prices: dict[str, ModelPrice], now: float
) -> FeedbackEvent:
    """The default reward of a decision that expired unanswered: with its attached cost
    if it has one (the close script adds it too, in case it came after this read),
    else with the imputed one, flagged as estimated."""
    cost = default_cost(rec, prices) if rec.cost_usd is None else rec.cost_usd
    ev = FeedbackEvent.join(rec, quality=quality, cost_usd=cost, source="default", now=now)
    return replace(ev, cost_estimated=rec.cost_usd is None)


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
