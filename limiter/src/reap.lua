-- Shared by the limiter scripts. Keys of one limiter all carry its prefix, whose {hash tag}
-- keeps them in one Redis Cluster slot: the global and campaign counters change together.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ckey(prefix, campaign, suffix)
  return prefix .. 'sem:campaign:' .. campaign .. ':' .. suffix
end

-- Lease values are "count:gen"; lease members are "holder|campaign".
local function parse_lease(v)
  local count, gen = string.match(v, '^(%d+):(%d+)$')
  return tonumber(count), tonumber(gen)
end

-- Returns the tokens of up to `limit` expired leases to both counters.
local function reap(prefix, global_key, leases_key, expiry_key, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now, 'LIMIT', 0, limit)
  local back = 0
  for _, member in ipairs(expired) do
    local v = redis.call('HGET', leases_key, member)
    if v then
      local count = parse_lease(v)
      local campaign = string.match(member, '|(.+)$')
      if count > 0 then
        redis.call('DECRBY', global_key, count)
        redis.call('DECRBY', ckey(prefix, campaign, 'concurrency'), count)
        back = back + count
      end
      redis.call('HDEL', leases_key, member)
    end
    redis.call('ZREM', expiry_key, member)
  end
  return back
end
