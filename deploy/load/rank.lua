-- rank.lua — wrk script for dcnserve's POST /rank (driven by deploy/load/run.py).
--
-- Environment:
--   BODY           file holding the JSON request body, or several, one per line
--                  (requests cycle through them)
--   RATE_PER_CONN  optional: paced mode, requests per second per connection;
--                  wrk's delay() hook waits 1000/RATE_PER_CONN ms before
--                  each request, so the offered rate stays fixed and a slow
--                  answer shows in the latency instead of lowering the load.
-- done() prints one machine-readable RESULT line (latencies in µs).

local f = assert(io.open(assert(os.getenv("BODY"), "BODY is not set"), "rb"))
local bodies = {}
for line in f:lines() do
  if #line > 0 then bodies[#bodies + 1] = line end
end
f:close()

wrk.method = "POST"
wrk.body = bodies[1]
wrk.headers["Content-Type"] = "application/json"

-- Several bodies (one per line): each request takes the next, cycling.
if #bodies > 1 then
  local reqs, i = {}, 0
  for k, b in ipairs(bodies) do
    reqs[k] = wrk.format("POST", nil, nil, b)
  end
  function request()
    i = i % #reqs + 1
    return reqs[i]
  end
end

local rate = tonumber(os.getenv("RATE_PER_CONN") or "0") or 0
if rate > 0 then
  local gap_ms = 1000 / rate
  function delay()
    return gap_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d socket_errors=%d non2xx=%d p50=%d p90=%d p99=%d p999=%d max=%d mean=%.1f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
