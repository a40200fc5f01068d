-- wrk script: POST one chat completion per request and print a machine-readable summary.
--
-- Env: BENCH_AUTHORIZATION (optional) is sent as the Authorization header.
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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %.1f, "p99_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
