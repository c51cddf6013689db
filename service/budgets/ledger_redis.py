"""The ledger on Redis: one Lua script per call, shared by every worker.

Keys of one tenant, all under the hash tag `{t:<tenant>}` (one Redis Cluster slot, and
every script names all the keys it touches):

    <prefix>:budget:{t:<tenant>}:bal   hash: s:<window>, r:<window>, n:<window>: USD
                                       spent, USD reserved and open reservations of
                                       each window (Window.tag: "<length>:<index>");
                                       a window over for a whole window is dropped;
                                       expires a window after the current one ends
    <prefix>:budget:{t:<tenant>}:res   hash: event id -> "<USD> <expires_at> <window>"
    <prefix>:budget:{t:<tenant>}:exp   sorted set: event ids by expires_at (unix s)
    <prefix>:budget:{t:<tenant>}:done:<event_id>   string: settled; kept settled_keep_s

res and exp outlive their newest reservation's timeout; when they expire nothing is
held, so a script that finds no reservation at all clears the window's reserved sum
(which also drops float residue). Sums are written with 17 significant digits from Lua's
doubles, so they add up exactly as MemoryLedger's. The scripts take `now` from the
caller (like the store's); key TTLs are relative, so they hold whatever the clock says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from service.budgets.config import CapConfig
from service.budgets.ledger import (
    EPS_USD,
    RETRY_SCAN,
    BudgetState,
    Ledger,
    Reservation,
    Window,
    settled_keep_s,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.store.redis import RedisStore

# hold/unhold: a reservation's amount into and out of its window's sums (a window
# already dropped is left dropped); purge: expired reservations out, at most 1000 a
# call (the rest go on the next); tidy: windows over for a whole window out, looked
# for only once the hash holds more than four windows; keep: a TTL never shortened.
_LIB = """
local function fmt(x) return string.format('%.17g', x) end
local function num(key, f) return tonumber(redis.call('HGET', key, f)) or 0 end
local function unhold(bal, rec)
  local amount, _, win = string.match(rec, '^(%S+) (%S+) (%S+)$')
  local n = tonumber(redis.call('HGET', bal, 'n:' .. win))
  if not n then return win end
  n = math.max(0, n - 1)
  local r = 0
  if n > 0 then r = math.max(0, num(bal, 'r:' .. win) - tonumber(amount)) end
  redis.call('HSET', bal, 'n:' .. win, n, 'r:' .. win, fmt(r))
  return win
end
local function purge(bal, res, exp, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(gone) do
    local rec = redis.call('HGET', res, id)
    if rec then unhold(bal, rec) end
  end
  if #gone > 0 then
    redis.call('HDEL', res, unpack(gone))
    redis.call('ZREM', exp, unpack(gone))
  end
end
local function tidy(bal, now)
  if redis.call('HLEN', bal) <= 12 then return end
  for _, f in ipairs(redis.call('HKEYS', bal)) do
    local len, idx = string.match(f, '^%a:([^:]+):([^:]+)$')
    if len and (tonumber(idx) + 2) * tonumber(len) < now then redis.call('HDEL', bal, f) end
  end
end
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS: bal, res, exp, done. ARGV: now, window tag, event id ("" only reads the
# state), amount, cap, expires_at, res/exp TTL (ms), bal TTL (ms), eps, retry scan.
# Returns {ok (1/0), spent, reserved, open reservations, soonest expiry making room
# ("" none)} as strings.
_RESERVE = (
    _LIB
    + """
local now, win, id = tonumber(ARGV[1]), ARGV[2], ARGV[3]
purge(KEYS[1], KEYS[2], KEYS[3], now)
local sf, rf, nf = 's:' .. win, 'r:' .. win, 'n:' .. win
local spent, reserved, n = num(KEYS[1], sf), num(KEYS[1], rf), num(KEYS[1], nf)
if n ~= 0 and redis.call('ZCARD', KEYS[3]) == 0 then
  reserved, n = 0, 0
  redis.call('HSET', KEYS[1], rf, 0, nf, 0)
end
if id == '' or redis.call('HEXISTS', KEYS[2], id) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return {1, fmt(spent), fmt(reserved), n, ''}
end
local amount, cap, eps = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[9])
if spent + reserved + amount <= cap + eps then
  reserved, n = reserved + amount, n + 1
  redis.call('HSET', KEYS[1], rf, fmt(reserved), nf, n)
  redis.call('HSET', KEYS[2], id, ARGV[4] .. ' ' .. ARGV[6] .. ' ' .. win)
  redis.call('ZADD', KEYS[3], ARGV[6], id)
  keep(KEYS[2], tonumber(ARGV[7]))
  keep(KEYS[3], tonumber(ARGV[7]))
  keep(KEYS[1], tonumber(ARGV[8]))
  tidy(KEYS[1], now)
  return {1, fmt(spent), fmt(reserved), n, ''}
end
local room = ''
if spent + amount <= cap + eps then
  local freed = 0
  local soon = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[10]) - 1, 'WITHSCORES')
  for i = 1, #soon, 2 do
    local rec = redis.call('HGET', KEYS[2], soon[i])
    local held, _, w = string.match(rec or '', '^(%S+) (%S+) (%S+)$')
    if w == win then
      freed = freed + tonumber(held)
      if spent + reserved - freed + amount <= cap + eps then
        room = soon[i + 1]
        break
      end
    end
  end
end
return {0, fmt(spent), fmt(reserved), n, room}
"""
)

# KEYS: bal, res, exp, done. ARGV: now, current window tag, event id, cost, done TTL
# (ms), bal TTL (ms). Returns 1 settled, 0 already settled.
_SETTLE = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local win = ARGV[2]
local rec = redis.call('HGET', KEYS[2], ARGV[3])
if rec then
  win = unhold(KEYS[1], rec)
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], 's:' .. win, fmt(num(KEYS[1], 's:' .. win) + tonumber(ARGV[4])))
redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
keep(KEYS[1], tonumber(ARGV[6]))
tidy(KEYS[1], tonumber(ARGV[1]))
return 1
"""
)

# KEYS: bal, res, exp. ARGV: event id. Returns 1 released, 0 none held.
_RELEASE = (
    _LIB
    + """
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if not rec then return 0 end
unhold(KEYS[1], rec)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)


class _Scripts:
    def __init__(self, client: aioredis.Redis) -> None:
        self.reserve = client.register_script(_RESERVE)
        self.settle = client.register_script(_SETTLE)
        self.release = client.register_script(_RELEASE)


class RedisLedger(Ledger):
    """The ledger on a RedisStore's client and key prefix; the store maps "Redis
    cannot be reached" to StoreUnavailable and fails fast through an outage, for the
    ledger's calls as for its own (`RedisStore.ledger_call`)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._client: aioredis.Redis | None = None
        self._scripts: _Scripts | None = None

    def _lua(self, client: aioredis.Redis) -> _Scripts:
        # the store builds a new client after close(): its scripts are registered anew
        if self._scripts is None or self._client is not client:
            self._scripts, self._client = _Scripts(client), client
        return self._scripts

    def _keys(self, tenant: str, event_id: str = "") -> list[str]:
        base = f"{self._store.prefix}:budget:{{t:{tenant}}}"
        return [f"{base}:bal", f"{base}:res", f"{base}:exp", f"{base}:done:{event_id}"]

    async def _eval(self, pick: Callable[[_Scripts], Any], keys: list[str], args: list[Any]) -> Any:
        def call(client: aioredis.Redis) -> Awaitable[Any]:
            return pick(self._lua(client))(keys=keys, args=args)

        return await self._store.ledger_call(call)

    async def _run(
        self, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
    ) -> tuple[Reservation, int]:
        win = Window.at(cap, now)
        args = [
            repr(now),
            win.tag,
            event_id,
            repr(amount),
            repr(cap.usd),
            repr(now + cap.reservation_ttl_s),
            _ms(cap.reservation_ttl_s + 60.0),
            _ms(win.end + win.length - now),
            repr(EPS_USD),
            RETRY_SCAN,
        ]
        ok, spent, reserved, held, room = await self._eval(
            lambda s: s.reserve, self._keys(tenant, event_id), args
        )
        wait = 0.0
        if not int(ok):
            at = min(win.end, float(room)) if room else win.end
            wait = max(1.0, at - now)
        res = Reservation(
            bool(int(ok)), float(spent), float(reserved), cap.usd, win.start, win.end, wait
        )
        return res, int(held)

    async def _reserve(
        self, tenant: str, event_id: str, amount: float, cap: CapConfig, now: float
    ) -> Reservation:
        return (await self._run(tenant, event_id, amount, cap, now))[0]

    async def _settle(
        self, tenant: str, event_id: str, cost_usd: float, cap: CapConfig, now: float
    ) -> bool:
        win = Window.at(cap, now)
        args = [
            repr(now),
            win.tag,
            event_id,
            repr(cost_usd),
            _ms(settled_keep_s(cap)),
            _ms(win.end + win.length - now),
        ]
        return bool(int(await self._eval(lambda s: s.settle, self._keys(tenant, event_id), args)))

    async def _release(self, tenant: str, event_id: str) -> bool:
        keys = self._keys(tenant)[:3]
        return bool(int(await self._eval(lambda s: s.release, keys, [event_id])))

    async def _state(self, tenant: str, cap: CapConfig, now: float) -> BudgetState:
        r, held = await self._run(tenant, "", 0.0, cap, now)
        return BudgetState(
            r.spent, r.reserved, r.cap, r.remaining, r.window_start, r.window_end, held
        )


def _ms(seconds: float) -> int:
    return max(1000, int(seconds * 1000))
