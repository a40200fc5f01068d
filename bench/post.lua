-- wrk script: POST one chat completion per request and print a machine-readable summary.
--
-- Env: BENCH_AUTHORIZATION (optional) is sent as the Authorization header.
-- BENCH_RATE_PER_THREAD (optional, requests/s): each thread sends on a fixed schedule,
-- one request every 1/rate s, whatever the responses take (an open loop, as long as one of
-- its connections is free at each slot: at half of saturation, by Little's law, a few are
-- busy of many). wrk2 is not packaged; wrk's delay() hook with a monotonic clock read through
-- LuaJIT's FFI does the same. A slot missed while every connection waits is sent at once.
-- Output: after wrk's own report, one line "BENCH_RESULT {json}" with the completed
-- requests, the duration, wrk's error counts (status: responses with status > 399, which
-- wrk's report calls "Non-2xx or 3xx responses") and latency percentiles in microseconds.
-- bench/wrk.py parses that line.

wrk.method = "POST"
wrk.body = '{"model": "demo-llama", "messages": [{"role": "user", "content": "hello"}]}'
wrk.headers["Content-Type"] = "application/json"

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local rate = tonumber(os.getenv("BENCH_RATE_PER_THREAD") or "")
if rate ~= nil and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *ts);
  ]]
  local CLOCK_MONOTONIC = 1
  local ts = ffi.new("bench_timespec")
  local interval_ms = 1000 / rate
  local slot = nil -- when this thread's next request is due, in ms

  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end

  -- called before every request (the first of each connection too): claim the next slot
  function delay()
    local now = now_ms()
    slot = (slot or now) + interval_ms
    return math.max(0, math.floor(slot - now))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %.1f, "p99_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
