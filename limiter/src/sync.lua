-- Sets the leases of one holder, for several campaigns, atomically. See model.rs for the
-- semantics this mirrors (and is tested against).
-- KEYS: 1 global counter, 2 global limit override, 3 leases hash, 4 lease expiry zset,
--       5 set of campaigns seen, 6 pool epoch, 7 recovery window (exists while it lasts)
-- ARGV: 1 prefix, 2 holder, 3 ttl ms, 4 global cap, 5 reap limit, 6 epoch the holder last saw
--       (0 = none), then per campaign: id, want, gen, campaign cap, tokens in use
local prefix, holder = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local now = now_ms()
local reaped = reap(prefix, KEYS[1], KEYS[3], KEYS[4], now, tonumber(ARGV[5]))
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
local global = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {}
for i = 7, #ARGV, 5 do
  local campaign, want, gen = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local in_use = tonumber(ARGV[i + 4])
  local count_key = ckey(prefix, campaign, 'concurrency')
  local cap = tonumber(redis.call('GET', ckey(prefix, campaign, 'limit')) or ARGV[i + 3])
  local member = holder .. '|' .. campaign
  local v = redis.call('HGET', KEYS[3], member)
  local cur, lgen = 0, nil
  if v then cur, lgen = parse_lease(v) end
  if not (lgen and gen <= lgen) then
    local count
    if want <= cur then
      local d = cur - want
      if d > 0 then
        redis.call('DECRBY', KEYS[1], d)
        redis.call('DECRBY', count_key, d)
        global = global - d
      end
      count = want
    else
      -- Calls in progress are counted first, whatever the room.
      local base = math.max(cur, math.min(in_use, want))
      local registered = base - cur
      if registered > 0 then
        redis.call('INCRBY', KEYS[1], registered)
        redis.call('INCRBY', count_key, registered)
        global = global + registered
      end
      local grant = 0
      if not recovering then
        local ccount = tonumber(redis.call('GET', count_key) or '0')
        grant = math.min(want - base, math.max(gcap - global, 0), math.max(cap - ccount, 0))
      end
      if grant > 0 then
        redis.call('INCRBY', KEYS[1], grant)
        redis.call('INCRBY', count_key, grant)
        global = global + grant
      end
      count = base + grant
    end
    redis.call('HSET', KEYS[3], member, count .. ':' .. ARGV[i + 2])  -- the string: Lua would print a large number as 1.7e+15
    redis.call('ZADD', KEYS[4], now + ttl, member)
    redis.call('SADD', KEYS[5], campaign)
    cur = count
  end
  out[#out + 1] = cur
  out[#out + 1] = cap
end
out[#out + 1] = reaped
out[#out + 1] = tonumber(epoch)
out[#out + 1] = recovering and 1 or 0
return out
