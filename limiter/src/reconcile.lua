-- Reaps every expired lease, then recounts the counters from the live leases, corrects them and
-- reports the drift found.
-- KEYS: 1 global counter, 2 leases hash, 3 lease expiry zset, 4 set of campaigns seen,
--       5 campaign demand hash
-- ARGV: 1 prefix
local prefix = ARGV[1]
local reaped = reap(prefix, KEYS[1], KEYS[2], KEYS[3], KEYS[5], now_ms(), -1)
local truth, total, demand = {}, 0, {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local count, _, d, w = parse_lease(all[i + 1])
  local campaign = string.match(all[i], '|(.+)$')
  truth[campaign] = (truth[campaign] or 0) + count
  total = total + count
  local sum = demand[campaign] or {0, 0}
  demand[campaign] = {sum[1] + d, sum[2] + w}
end
-- The demand totals are recounted from the leases too (cap and weight kept).
local fair = redis.call('HGETALL', KEYS[5])
for i = 1, #fair, 2 do
  local _, _, cap, weight = parse_demand(fair[i + 1])
  local sum = demand[fair[i]] or {0, 0}
  demand[fair[i]] = nil
  if sum[1] > 0 or sum[2] > 0 then
    redis.call('HSET', KEYS[5], fair[i], sum[1] .. ':' .. sum[2] .. ':' .. cap .. ':' .. weight)
  else
    redis.call('HDEL', KEYS[5], fair[i])
  end
end
for campaign, sum in pairs(demand) do
  if sum[1] > 0 or sum[2] > 0 then
    redis.call('HSET', KEYS[5], campaign, sum[1] .. ':' .. sum[2] .. ':0:1')
  end
end
-- The sum of the claims is counted again at the next sync.
redis.call('DEL', claims_key(KEYS[5]))
local gdrift = tonumber(redis.call('GET', KEYS[1]) or '0') - total
redis.call('SET', KEYS[1], total)
local cdrift = 0
for _, campaign in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local key = ckey(prefix, campaign, 'concurrency')
  local t = truth[campaign] or 0
  cdrift = cdrift + math.abs(tonumber(redis.call('GET', key) or '0') - t)
  if t == 0 then
    redis.call('DEL', key)
    redis.call('SREM', KEYS[4], campaign)
  else
    redis.call('SET', key, t)
  end
  truth[campaign] = nil
end
for campaign, t in pairs(truth) do
  local key = ckey(prefix, campaign, 'concurrency')
  cdrift = cdrift + math.abs(tonumber(redis.call('GET', key) or '0') - t)
  redis.call('SET', key, t)
  redis.call('SADD', KEYS[4], campaign)
end
return {gdrift, cdrift, reaped}
