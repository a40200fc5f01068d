-- GCRA (generic cell rate algorithm) over every limit of one request, all or nothing.
--
-- Why GCRA: one timestamp per limit (bounded memory, O(1)), no fixed-window boundary burst
-- (a client can never get 2x the limit across a window edge), and the exact time until the
-- next request is allowed falls out of it (Retry-After).
-- Why all or nothing: a request refused by one layer must consume nothing in the others.
-- Why Redis TIME: every rate-limit replica then shares one clock.
--
-- Two kinds of limit:
--   strict (requests): admitted only if the whole cost fits.
--   debit  (tokens):   admitted while at least one unit is left, then charged the whole
--                      reservation, possibly into debt; later requests wait the debt out. A
--                      request near the limit overshoots by at most its own reservation.
--
-- KEYS[i]      the counter of limit i: its theoretical arrival time (TAT) in microseconds
-- ARGV[4i-3]   period of limit i in microseconds (60e6 for "per minute")
-- ARGV[4i-2]   limit i: units allowed per period, > 0
-- ARGV[4i-1]   cost of this request against limit i (0 = check only)
-- ARGV[4i]     1 for a debit limit, 0 for a strict one
-- Reply: {allowed (1|0), index of the refusing limit (0 if allowed), retry_after_us,
--         then per limit i: remaining_i, reset_after_us_i}
-- A request far over a limit (a huge reservation) sets its counter at most this far ahead
-- (400 days; MAX_AHEAD_US in crosslogic/contracts/counters.py, also in settle.lua):
-- timestamps stay exact integers in Lua's doubles, and string.format("%d") never meets a
-- number it cannot print.
local MAX_AHEAD = 400 * 86400 * 1000000
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats, new_tats = {}, {}
local refused, retry_after = 0, 0

for i = 1, n do
  local period = tonumber(ARGV[4 * i - 3])
  local interval = period / tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i - 1])
  local debit = ARGV[4 * i] == "1"
  local tat = math.max(tonumber(redis.call("GET", KEYS[i])) or now, now)
  local needed = cost
  if debit then
    needed = math.min(cost, 1)
  end
  local allow_at = tat + needed * interval - period
  tats[i], new_tats[i] = tat, math.min(tat + cost * interval, now + MAX_AHEAD)
  if refused == 0 and allow_at > now then
    refused = i
    retry_after = math.ceil(allow_at - now)
  end
end

local reply = {refused == 0 and 1 or 0, refused, retry_after}
for i = 1, n do
  local period = tonumber(ARGV[4 * i - 3])
  local interval = period / tonumber(ARGV[4 * i - 2])
  local state = tats[i]  -- refused: nothing is consumed anywhere
  if refused == 0 then
    state = new_tats[i]
    local ttl_ms = math.ceil((state - now) / 1000)
    if ttl_ms > 0 then
      -- the key expires exactly when the limit is back to full: memory stays bounded
      redis.call("SET", KEYS[i], string.format("%d", state), "PX", ttl_ms)
    end
  end
  reply[#reply + 1] = math.max(math.floor((period - (state - now)) / interval), 0)
  reply[#reply + 1] = math.ceil(state - now)
end
return reply
