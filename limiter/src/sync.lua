-- Sets the leases of one holder, for several campaigns, atomically. See model.rs for the
-- semantics this mirrors (and is tested against).
-- KEYS: 1 global counter, 2 global limit override, 3 leases hash, 4 lease expiry zset,
--       5 set of campaigns seen
-- ARGV: 1 prefix, 2 holder, 3 ttl ms, 4 global cap, 5 reap limit,
--       then per campaign: id, want, gen, campaign cap
local prefix, holder = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local now = now_ms()
local reaped = reap(prefix, KEYS[1], KEYS[3], KEYS[4], now, tonumber(ARGV[5]))
local gcap = tonumber(redis.call('GET', KEYS[2]) or ARGV[4])
local global = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {}
for i = 6, #ARGV, 4 do
  local campaign, want, gen = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
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
      local ccount = tonumber(redis.call('GET', count_key) or '0')
      local grant = math.min(want - cur, math.max(gcap - global, 0), math.max(cap - ccount, 0))
      if grant > 0 then
        redis.call('INCRBY', KEYS[1], grant)
        redis.call('INCRBY', count_key, grant)
        global = global + grant
      end
      count = cur + grant
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
return out
