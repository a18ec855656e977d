-- wrk script of bench/run.mjs. wrk connects to the host:port of its URL (the
-- proxy or the nginx relay, or nginx for "direct"); this script sets the request
-- line and headers:
--   BENCH_PATH  request target: "http://127.0.0.1:<nginx>/small" through a proxy
--               or the nginx relay (absolute form), "/small" direct
--   BENCH_HOST  Host header (nginx's host:port)
--   BENCH_AUTH  Proxy-Authorization value, or empty for direct
-- No request() function, so wrk builds the request once (static request).
-- done() prints one machine-readable line with the exact counts and percentiles.

wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.headers["Host"] = os.getenv("BENCH_HOST")
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Proxy-Authorization"] = auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"connect_errors\":%d,\"read_errors\":%d,\"write_errors\":%d,\"status_errors\":%d,\"timeouts\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
