-- Leases a slice of one global limit to a rate-limit process (crosslogic/ratelimit/lease.py):
-- gcra.lua's rule on the global key alone, so the global layer is one slot of its own and
-- is asked once per slice, not once per request.
--
--   strict (requests): grants ``ask`` units if they all fit, else ``least`` if those fit.
--   debit  (tokens):   grants ``ask`` units while at least one is left, possibly into debt.
--
-- KEYS[1]  the global counter (GCRA TAT in microseconds, as gcra.lua keeps it)
-- ARGV[1]  period in microseconds
-- ARGV[2]  limit: units per period, > 0
-- ARGV[3]  ask: units wanted, > 0
-- ARGV[4]  least: fewer units a strict limit accepts (0: none)
-- ARGV[5]  1 for a debit limit, 0 for a strict one
-- Reply: {granted units (0: refused), retry_after_us (refused), remaining, reset_after_us}
local MAX_AHEAD = 400 * 86400 * 1000000  -- contracts/counters.py, as in gcra.lua
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local interval = period / tonumber(ARGV[2])
local ask = tonumber(ARGV[3])
local least = tonumber(ARGV[4])
local debit = ARGV[5] == "1"
local tat = math.max(tonumber(redis.call("GET", KEYS[1])) or now, now)

local function fits(units)
  return units > 0 and tat + units * interval - period <= now
end

local granted = 0
if debit then
  if fits(1) then
    granted = ask
  end
elseif fits(ask) then
  granted = ask
elseif fits(least) then
  granted = least
end

local state, retry_after = tat, 0
if granted > 0 then
  state = math.min(tat + granted * interval, now + MAX_AHEAD)
  local ttl_ms = math.ceil((state - now) / 1000)
  if ttl_ms > 0 then
    redis.call("SET", KEYS[1], string.format("%d", state), "PX", ttl_ms)
  end
else
  local needed = 1
  if not debit and least > 0 then
    needed = least
  end
  retry_after = math.max(math.ceil(tat + needed * interval - period - now), 1)
end
return {granted, retry_after, math.max(math.floor((period - (state - now)) / interval), 0),
  math.ceil(state - now)}
