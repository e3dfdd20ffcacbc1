-- Sets the leases of one holder, for several campaigns, atomically. See model.rs for the
-- semantics this mirrors (and is tested against).
-- KEYS: 1 global counter, 2 global limit override, 3 leases hash, 4 lease expiry zset,
--       5 set of campaigns seen, 6 pool epoch, 7 recovery window (exists while it lasts),
--       8 campaign demand hash
-- ARGV: 1 prefix, 2 holder, 3 ttl ms, 4 global cap, 5 reap limit, 6 epoch the holder last saw
--       (0 = none), then per campaign: id, want, gen, campaign cap, tokens in use, demand, weight,
--       the lease's rounding offset (fair.rs: dither)
local prefix, holder = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local now = now_ms()
local reaped = reap(prefix, KEYS[1], KEYS[3], KEYS[4], KEYS[8], now, tonumber(ARGV[5]))
-- A holder that knows an older epoch than the pool's proves the pool lost its state under
-- calls in progress: for one TTL, grant nothing beyond tokens in use.
local seen = ARGV[6]
local epoch = redis.call('GET', KEYS[6])
local lost
if not epoch then
  epoch = tostring(now)
  redis.call('SET', KEYS[6], epoch)
  lost = seen ~= '0'
else
  lost = seen ~= '0' and seen ~= epoch
end
if lost then redis.call('SET', KEYS[7], '1', 'PX', ttl, 'NX') end
local recovering = redis.call('EXISTS', KEYS[7]) == 1
local gcap = tonumber(redis.call('GET', KEYS[2]) or ARGV[4])

-- 1. Record each fresh request's demand (a duplicate or late generation changes nothing).
local reqs, known = {}, {}
for i = 7, #ARGV, 8 do
  local r = {campaign = ARGV[i], want = tonumber(ARGV[i + 1]), gen = tonumber(ARGV[i + 2]), gen_s = ARGV[i + 2],
             in_use = tonumber(ARGV[i + 4]), demand = tonumber(ARGV[i + 5]), weight = math.max(tonumber(ARGV[i + 6]), 1),
             dither = tonumber(ARGV[i + 7])}
  r.member = holder .. '|' .. r.campaign
  r.cap = tonumber(redis.call('GET', ckey(prefix, r.campaign, 'limit')) or ARGV[i + 3])
  local v = redis.call('HGET', KEYS[3], r.member)
  local cur, lgen, ldemand, lwant = 0, nil, 0, 0
  if v then cur, lgen, ldemand, lwant = parse_lease(v) end
  r.cur, r.fresh = cur, not (lgen and r.gen <= lgen)
  if r.fresh then
    local want = math.max(r.want, r.demand)
    known[r.campaign] = add_demand(KEYS[8], r.campaign, r.demand - ldemand, want - lwant, r.cap, r.weight)
    r.ldemand, r.lwant = r.demand, want
  else
    r.ldemand, r.lwant = ldemand, lwant
  end
  reqs[#reqs + 1] = r
end

-- 2. Fair shares over every campaign with demand, then each request's give-back or grant.
local ids = {}
for n, r in ipairs(reqs) do ids[n] = r.campaign end
local shares = shares_of(gcap, KEYS[8], ids, known)
local global = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {}
for _, r in ipairs(reqs) do
  local s = shares[r.campaign]
  local target = 0
  if s then target = holder_target(s[1], s[2], r.ldemand, r.lwant, r.dither) end
  local count_key = ckey(prefix, r.campaign, 'concurrency')
  local count = r.cur
  if r.fresh then
    if r.want <= r.cur then
      local d = r.cur - r.want
      if d > 0 then
        redis.call('DECRBY', KEYS[1], d)
        redis.call('DECRBY', count_key, d)
        global = global - d
      end
      count = r.want
    else
      -- Calls in progress are counted first, whatever the room.
      local base = math.max(r.cur, math.min(r.in_use, r.want))
      local registered = base - r.cur
      if registered > 0 then
        redis.call('INCRBY', KEYS[1], registered)
        redis.call('INCRBY', count_key, registered)
        global = global + registered
      end
      local grant = 0
      if not recovering then
        local ccount = tonumber(redis.call('GET', count_key) or '0')
        grant = math.min(r.want - base, math.max(gcap - global, 0), math.max(r.cap - ccount, 0),
                         math.max(target - base, 0))
      end
      if grant > 0 then
        redis.call('INCRBY', KEYS[1], grant)
        redis.call('INCRBY', count_key, grant)
        global = global + grant
      end
      count = base + grant
    end
    -- Strings: Lua would print a large number as 1.7e+15.
    redis.call('HSET', KEYS[3], r.member, count .. ':' .. r.gen_s .. ':' .. r.ldemand .. ':' .. r.lwant)
    redis.call('ZADD', KEYS[4], now + ttl, r.member)
    redis.call('SADD', KEYS[5], r.campaign)
  end
  out[#out + 1] = count
  out[#out + 1] = r.cap
  out[#out + 1] = target
end
out[#out + 1] = reaped
out[#out + 1] = tonumber(epoch)
out[#out + 1] = recovering and 1 or 0
return out
