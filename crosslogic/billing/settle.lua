-- Settles token reservations once the real usage is known: moves each token counter's
-- theoretical arrival time by (real - reserved) * interval. A refund never moves it before
-- now (an idle limit is simply full); a charge on an expired counter starts from now.
--
-- KEYS[i]  a token counter (GCRA TAT in microseconds, as gcra.lua keeps it)
-- ARGV[i]  the adjustment in microseconds (negative: refund)
-- Reply: the number of counters changed
local MAX_AHEAD = 400 * 86400 * 1000000  -- contracts/counters.py, as in gcra.lua: exact integers
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local changed = 0
for i = 1, #KEYS do
  local delta = tonumber(ARGV[i])
  local tat = math.max(tonumber(redis.call("GET", KEYS[i])) or now, now)
  local new = math.min(math.max(tat + delta, now), now + MAX_AHEAD)
  if new > now then
    redis.call("SET", KEYS[i], string.format("%d", new), "PX", math.ceil((new - now) / 1000))
    changed = changed + 1
  elseif tat > now then
    redis.call("DEL", KEYS[i])
    changed = changed + 1
  end
end
return changed
