-- Shared by the limiter scripts. Keys of one limiter all carry its prefix, whose {hash tag}
-- keeps them in one Redis Cluster slot: the global and campaign counters change together.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ckey(prefix, campaign, suffix)
  return prefix .. 'sem:campaign:' .. campaign .. ':' .. suffix
end

-- Lease values are "count:gen:demand:want" ("count:gen" from before fair shares reads as no
-- demand); lease members are "holder|campaign".
local function parse_lease(v)
  local count, gen, rest = string.match(v, '^(%d+):(%d+)(.*)$')
  local demand, want = string.match(rest, '^:(%d+):(%d+)$')
  return tonumber(count), tonumber(gen), tonumber(demand or '0'), tonumber(want or '0')
end

-- A campaign's demand over its live leases: "demand:want:cap:weight" in the fair hash.
local function parse_demand(v)
  if not v then return 0, 0, 0, 1 end
  local d, w, cap, weight = string.match(v, '^(%-?%d+):(%-?%d+):(%d+):(%d+)$')
  return tonumber(d), tonumber(w), tonumber(cap), tonumber(weight)
end

-- What a campaign claims of the global cap: min(cap, demand), then headroom up to min(cap, want)
-- (the bounds of campaign_shares' two rounds).
local function claim(d, w, cap)
  local first = math.max(math.min(cap, d), 0)
  return first + math.max(math.min(cap, w) - math.min(cap, d), 0)
end

-- The sum of every campaign's claim is kept beside the fair hash, so that a sync can tell
-- without reading the hash whether the global cap binds. Missing (a reconcile dropped it, or
-- from before) it is counted again at its next use.
local function claims_key(fair_key)
  return fair_key .. ':claims'
end

-- Adds (dd, dw) to a campaign's demand; the entry goes when nothing is left of it. Returns the
-- entry as it is now ({d, w, cap, weight}, or false when there is none); an update that changes
-- nothing writes nothing (most refreshes of a steady campaign).
local function add_demand(fair_key, campaign, dd, dw, cap, weight)
  local v = redis.call('HGET', fair_key, campaign)
  local d, w, ocap, oweight = parse_demand(v)
  cap, weight = cap or ocap, weight or oweight
  if dd == 0 and dw == 0 and cap == ocap and weight == oweight then
    if v then return {d, w, cap, weight} end
    return false
  end
  local before = claim(d, w, ocap)
  d, w = d + dd, w + dw
  local after, now = 0, false
  if d <= 0 and w <= 0 then
    redis.call('HDEL', fair_key, campaign)
  else
    redis.call('HSET', fair_key, campaign, d .. ':' .. w .. ':' .. cap .. ':' .. weight)
    after = claim(d, w, cap)
    now = {d, w, cap, weight}
  end
  if after ~= before and redis.call('EXISTS', claims_key(fair_key)) == 1 then
    redis.call('INCRBY', claims_key(fair_key), after - before)
  end
  return now
end

-- Returns the tokens (and the demand) of up to `limit` expired leases.
local function reap(prefix, global_key, leases_key, expiry_key, fair_key, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now, 'LIMIT', 0, limit)
  local back = 0
  for _, member in ipairs(expired) do
    local v = redis.call('HGET', leases_key, member)
    if v then
      local count, _, demand, want = parse_lease(v)
      local campaign = string.match(member, '|(.+)$')
      if count > 0 then
        redis.call('DECRBY', global_key, count)
        redis.call('DECRBY', ckey(prefix, campaign, 'concurrency'), count)
        back = back + count
      end
      if demand > 0 or want > 0 then add_demand(fair_key, campaign, -demand, -want) end
      redis.call('HDEL', leases_key, member)
    end
    redis.call('ZREM', expiry_key, member)
  end
  return back
end

-- Max-min fair division of `total` over claims {bound, weight} (fair.rs: waterfill).
local function waterfill(total, claims)
  local order, weights = {}, 0
  for i, c in ipairs(claims) do
    if c[1] > 0 then
      order[#order + 1] = i
      weights = weights + c[2]
    end
  end
  table.sort(order, function(a, b) return claims[a][1] / claims[a][2] < claims[b][1] / claims[b][2] end)
  local shares, left = {}, math.max(total, 0)
  for i = 1, #claims do shares[i] = 0 end
  for _, i in ipairs(order) do
    local bound, weight = claims[i][1], claims[i][2]
    local level = left / weights
    if bound / weight <= level then shares[i] = bound else shares[i] = weight * level end
    left = left - shares[i]
    weights = weights - weight
  end
  return shares
end

-- Every campaign's share of the global cap: demand first, then headroom (fair.rs: campaign_shares).
local function campaign_shares(global_cap, fair_key)
  local all = redis.call('HGETALL', fair_key)
  local ids, camps, first, room = {}, {}, {}, {}
  for i = 1, #all, 2 do
    local d, w, cap, weight = parse_demand(all[i + 1])
    weight = math.max(weight, 1)
    local n = #ids + 1
    ids[n] = all[i]
    camps[n] = {d, w, cap, weight}
    first[n] = {math.min(cap, d), weight}
  end
  local shares = waterfill(global_cap, first)
  local left = global_cap
  for i = 1, #shares do left = left - shares[i] end
  for i, c in ipairs(camps) do room[i] = {math.max(math.min(c[3], c[2]) - first[i][1], 0), c[4]} end
  local extra = waterfill(left, room)
  local out = {}
  for i, id in ipairs(ids) do out[id] = {shares[i] + extra[i], camps[i]} end
  return out
end

-- The sum of every campaign's claim, counted from the fair hash when it is not kept.
local function total_claims(fair_key)
  local v = redis.call('GET', claims_key(fair_key))
  if v then return tonumber(v) end
  local all = redis.call('HGETALL', fair_key)
  local total = 0
  for i = 2, #all, 2 do
    local d, w, cap = parse_demand(all[i])
    total = total + claim(d, w, cap)
  end
  redis.call('SET', claims_key(fair_key), total)
  return total
end

-- The shares of `campaigns` as campaign_shares computes them. Where every claim fits under the
-- global cap, each share is its campaign's claim (both rounds of water-filling give every claim
-- in full, exactly: whole numbers in doubles), read from its own entry: a sync then costs what
-- its requests cost, not the number of campaigns (fair.rs: shares_fit). `known` holds entries
-- this script has just read or written (campaign -> {d, w, cap, weight} or false): not read again.
local function shares_of(global_cap, fair_key, campaigns, known)
  if total_claims(fair_key) > global_cap then return campaign_shares(global_cap, fair_key) end
  local out = {}
  for _, c in ipairs(campaigns) do
    local e = known and known[c]
    if e == nil then
      local v = redis.call('HGET', fair_key, c)
      if v then e = {parse_demand(v)} else e = false end
    end
    if e then
      local d, w, cap, weight = e[1], e[2], e[3], e[4]
      out[c] = {claim(d, w, cap), {d, w, cap, math.max(weight, 1)}}
    end
  end
  return out
end

-- A holder's target (fair.rs: holder_target, round_dithered).
local function holder_target(share, camp, demand, want, dither)
  local t
  if share <= camp[1] then
    if camp[1] > 0 then t = share * demand / camp[1] else t = 0 end
  else
    local room = camp[2] - camp[1]
    local extra = 0
    if room > 0 then extra = (share - camp[1]) * (want - demand) / room end
    t = demand + extra
  end
  if t <= 1e-9 then return 0 end
  return math.max(math.floor(t + dither + 1e-9), 1)
end
