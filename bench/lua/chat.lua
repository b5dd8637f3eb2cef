-- wrk script: POST an OpenAI chat request; at the end print one line "WRKJSON {...}".
-- env: BENCH_MODEL (default gpt-4o-mini), BENCH_STREAM (0|1: stream with include_usage),
--      BENCH_KEY (bearer token, optional)
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or ""

wrk.method = "POST"
wrk.body = '{"model":"' .. model .. '","messages":['
  .. '{"role":"system","content":"You are a helpful assistant. Answer briefly and precisely."},'
  .. '{"role":"user","content":"Write a short haiku about load balancers, latency and the sea. '
  .. 'Keep it under twenty words and do not use rhyme."}],'
  .. '"temperature":0.2,"max_tokens":64'
  .. (stream and ',"stream":true,"stream_options":{"include_usage":true}' or '')
  .. '}'
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

-- err_status counts responses with a status >= 400 (wrk's own accounting).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
