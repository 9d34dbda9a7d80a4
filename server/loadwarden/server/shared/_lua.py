"""The Lua scripts behind the shared leases and rate buckets: one round trip per operation.

Every script runs atomically in Redis, so a check and the update it guards (a
count below the limit, then the grant) can never interleave with another
replica's. Time is Redis's own clock (``TIME``) unless the caller passes
``now_ms`` (tests do, with their manual clock): one clock for every replica, so
clock skew between hosts cannot reclaim a lease early.

Keys (``P`` is the configured prefix, which in Cluster mode holds a hash tag so
that every key lands in one slot):

* ``P leases``    hash: lease id -> JSON record ``{p: pool, o: owner, r: request id,
  t: ttl ms, m: longest ttl ms, g: granted at ms, x: granting replica}``
* ``P expiry``    sorted set: lease id -> expires at ms, every pool's
* ``P held:<pool>`` sorted set: lease id -> expires at ms, one pool's (its size is
  the pool's slots in use, service-wide)
* ``P requests``  hash: ``owner US pool US request id`` -> lease id (idempotency
  across replicas; an entry lives exactly as long as its lease)
* ``P rate:<scope>`` hash ``{t: tokens, c: counted at ms}``, expiring once full again
  (a pool's buckets); ``P named:<name>:<key>`` the same for rate limits with names of
  their own (the rate-limit service's rules)
* ``P limit:<pool>`` an adaptive limit's shared value; ``P limit-owner:<pool>`` the replica
  that computes it (a key with a TTL, renewed by its holder)

Events go out on ``P events``: ``F <pool>`` when a slot frees (waiters elsewhere
retry), ``E <replica> <json>`` when a lease another replica granted ended here
(that replica settles the server it selected with it). A lease reclaimed at its TTL is
always announced, to its own replica too, whichever replica reclaimed it.
"""

from __future__ import annotations

# Shared by every script: time, and ending one lease (released, reclaimed or given back).
_PRELUDE = r"""
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ends lease `id` (record `rec`, already decoded): removes it everywhere, announces the
-- freed slot, and tells its granting replica when that is not `here`.
local function finish(prefix, id, rec, how, ok, latency, here)
  redis.call('HDEL', prefix .. 'leases', id)
  redis.call('ZREM', prefix .. 'expiry', id)
  redis.call('ZREM', prefix .. 'held:' .. rec.p, id)
  if rec.r ~= '' then
    local rkey = rec.o .. '\31' .. rec.p .. '\31' .. rec.r
    if redis.call('HGET', prefix .. 'requests', rkey) == id then
      redis.call('HDEL', prefix .. 'requests', rkey)
    end
  end
  redis.call('PUBLISH', prefix .. 'events', 'F ' .. rec.p)
  if rec.x ~= here then
    redis.call('PUBLISH', prefix .. 'events',
      'E ' .. rec.x .. ' ' .. cjson.encode({l = id, h = how, ok = ok, ms = latency, p = rec.p}))
  end
end

-- Reclaims up to `n` leases of sorted set `zkey` whose expiry is at or before `now`.
local function reclaim(prefix, zkey, now, n, here)
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, n)
  for _, id in ipairs(due) do
    local raw = redis.call('HGET', prefix .. 'leases', id)
    if raw then
      local rec = cjson.decode(raw)
      finish(prefix, id, rec, 'expired', 0, now - rec.g, here)
    else
      redis.call('ZREM', zkey, id)
    end
  end
  return #due
end
"""

# KEYS: none (all under ARGV[1], the prefix). ARGV: prefix, now_ms, pool, limit (0: none),
# max_leases, lease id, owner, request id, ttl ms, longest ttl ms, replica, adaptive ('1': read
# the shared value ``P limit:<pool>``, written by the replica that owns the pool's limit).
# Returns {code, lease id, granted ms, expires ms, now ms, held}: code 1 granted, 2 the same
# lease as an earlier call with this request id, 0 at the limit, -1 at max_leases.
ACQUIRE = (
    _PRELUDE
    + r"""
local prefix, pool = ARGV[1], ARGV[3]
local now = now_ms(ARGV[2])
local limit, max_leases = tonumber(ARGV[4]), tonumber(ARGV[5])
local id, owner, rid, ttl, longest, here = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local held = prefix .. 'held:' .. pool
if ARGV[12] == '1' then  -- an adaptive limit: the value its owner replica computed, when there is one
  local shared = redis.call('GET', prefix .. 'limit:' .. pool)
  if shared then limit = tonumber(shared) end
end
reclaim(prefix, held, now, 100, '')
local rkey = owner .. '\31' .. pool .. '\31' .. rid
if rid ~= '' then
  local earlier = redis.call('HGET', prefix .. 'requests', rkey)
  if earlier then
    local raw = redis.call('HGET', prefix .. 'leases', earlier)
    local expires = redis.call('ZSCORE', held, earlier)
    if raw and expires then
      local rec = cjson.decode(raw)
      return {2, earlier, rec.g, tonumber(expires), now, redis.call('ZCARD', held)}
    end
  end
end
local count = redis.call('ZCARD', held)
if limit > 0 and count >= limit then
  return {0, '', 0, 0, now, count}
end
if redis.call('HLEN', prefix .. 'leases') >= max_leases then
  local first = redis.call('ZRANGE', prefix .. 'expiry', 0, 0, 'WITHSCORES')
  return {-1, '', 0, tonumber(first[2] or now), now, count}
end
local expires = now + ttl
redis.call('HSET', prefix .. 'leases', id,
  cjson.encode({p = pool, o = owner, r = rid, t = ttl, m = longest, g = now, x = here}))
redis.call('ZADD', held, expires, id)
redis.call('ZADD', prefix .. 'expiry', expires, id)
if rid ~= '' then redis.call('HSET', prefix .. 'requests', rkey, id) end
return {1, id, now, expires, now, count + 1}
"""
)

# ARGV: prefix, now_ms, lease id, owner, how ('released' or 'given_back'), ok (1/0),
# latency ms, replica. Returns {code, pool, granted ms, now ms, held, granting replica}:
# code 1 ended now, 0 had already ended (or just expired: reclaimed now), -1 another
# owner's lease.
RELEASE = (
    _PRELUDE
    + r"""
local prefix, id, owner, how, here = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[8]
local now = now_ms(ARGV[2])
local raw = redis.call('HGET', prefix .. 'leases', id)
if not raw then return {0, '', 0, now, 0, ''} end
local rec = cjson.decode(raw)
if rec.o ~= owner then return {-1, '', 0, now, 0, ''} end
local held = prefix .. 'held:' .. rec.p
local expires = tonumber(redis.call('ZSCORE', held, id) or 0)
if expires <= now then
  finish(prefix, id, rec, 'expired', 0, now - rec.g, here)
  return {0, rec.p, rec.g, now, redis.call('ZCARD', held), rec.x}
end
finish(prefix, id, rec, how, tonumber(ARGV[6]), tonumber(ARGV[7]), here)
return {1, rec.p, rec.g, now, redis.call('ZCARD', held), rec.x}
"""
)

# ARGV: prefix, now_ms, lease id, owner, new ttl ms (0: keep). Returns {code, pool, ttl ms,
# expires ms, now ms, granted ms}: code 1 renewed, 0 ended (reclaimed now if just expired),
# -1 another owner's, -2 a ttl over the lease's longest (the third value is that longest).
RENEW = (
    _PRELUDE
    + r"""
local prefix, id, owner = ARGV[1], ARGV[3], ARGV[4]
local now = now_ms(ARGV[2])
local ttl = tonumber(ARGV[5])
local raw = redis.call('HGET', prefix .. 'leases', id)
if not raw then return {0, '', 0, 0, now, 0} end
local rec = cjson.decode(raw)
if rec.o ~= owner then return {-1, '', 0, 0, now, 0} end
local held = prefix .. 'held:' .. rec.p
local expires = tonumber(redis.call('ZSCORE', held, id) or 0)
if expires <= now then
  finish(prefix, id, rec, 'expired', 0, now - rec.g, '')
  return {0, rec.p, 0, 0, now, 0}
end
if ttl > 0 then
  if ttl > rec.m then return {-2, rec.p, rec.m, 0, now, 0} end
  rec.t = ttl
  redis.call('HSET', prefix .. 'leases', id, cjson.encode(rec))
end
expires = now + rec.t
redis.call('ZADD', held, expires, id)
redis.call('ZADD', prefix .. 'expiry', expires, id)
return {1, rec.p, rec.t, expires, now, rec.g}
"""
)

# ARGV: prefix, now_ms, owner, pool, request id. Returns the lease id an AcquireSlot with that
# request id holds, or '' (nothing held: never granted, ended, or expired just now).
LOOKUP = (
    _PRELUDE
    + r"""
local prefix, owner, pool, rid = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms(ARGV[2])
reclaim(prefix, prefix .. 'held:' .. pool, now, 100, '')
return redis.call('HGET', prefix .. 'requests', owner .. '\31' .. pool .. '\31' .. rid) or ''
"""
)

# ARGV: prefix, now_ms, at most. Reclaims every pool's leases past their TTL.
# Returns how many.
SWEEP = (
    _PRELUDE
    + r"""
return reclaim(ARGV[1], ARGV[1] .. 'expiry', now_ms(ARGV[2]), tonumber(ARGV[3]), '')
"""
)

# KEYS: the caller's bucket, then a client key's bucket (optional). ARGV: now_ms, tokens, then
# per bucket: count, per ms, burst. Takes ``tokens`` from every bucket if each holds them (0
# takes none and asks for one: a check). Returns {wait, left, full}: wait 0 when taken, else
# the ms until they will all hold them (> 0; -1 never: more than a bucket's burst); left the
# whole tokens in the emptiest bucket after the take; full the ms until all are full again.
RATE = r"""
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local take = tonumber(ARGV[2])
local need = math.max(1, take)
local wait, never = 0, false
local state = {}
for i, key in ipairs(KEYS) do
  local count, per, burst = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local saved = redis.call('HMGET', key, 't', 'c')
  local tokens, counted = tonumber(saved[1]), tonumber(saved[2])
  if tokens == nil then tokens, counted = burst, now end
  if now > counted then
    tokens = math.min(burst, tokens + (now - counted) * count / per)
    counted = now
  end
  if tokens < need - 1e-9 then
    if need > burst + 1e-9 then never = true end
    wait = math.max(wait, math.ceil((need - tokens) * per / count))
  end
  state[i] = {tokens, counted, count, per, burst}
end
if never then wait = -1 end
if wait == 0 and take > 0 then
  for i, key in ipairs(KEYS) do
    local s = state[i]
    s[1] = math.max(0, s[1] - take)
    redis.call('HSET', key, 't', tostring(s[1]), 'c', tostring(s[2]))
    -- Once full again the bucket is the same as none: let it go.
    redis.call('PEXPIRE', key, math.max(1, math.ceil((s[5] - s[1]) * s[4] / s[3])))
  end
end
local left, full = nil, 0
for i = 1, #state do
  local s = state[i]
  local whole = math.floor(s[1] + 1e-9)
  if left == nil or whole < left then left = whole end
  full = math.max(full, math.ceil((s[5] - s[1]) * s[4] / s[3]))
end
return {wait, left, full}
"""

# KEYS: the owner key. ARGV: replica, ttl ms. Takes the key when free, renews it when held by
# ``replica``. Returns the owner.
OWN = r"""
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if current == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return current
"""
