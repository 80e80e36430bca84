-- wrkcommon.lua — what the wrk scripts for dcnserve share (deploy/load/rank.lua,
-- deploy/soak/mixed.lua): reading the bodies named by the environment, the
-- POST /rank request, the paced mode and the RESULT line.
--
-- Loading: a script finds this file next to itself, from the path wrk
-- loaded it by (debug.getinfo's "@path" source, relative to wrk's working
-- directory as the -s argument is), so it works with an absolute or a
-- relative -s path and from any directory:
--   local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or ""
--   local wrkc = dofile(dir .. "wrkcommon.lua")
-- DESIGN: wrk runs every script in one Lua state per thread plus one for
-- setup() and done(); each state loads this file again, so nothing here is
-- shared between threads. pace() defines the global delay() hook wrk looks
-- for; the rest are plain functions.

local M = {}

-- The value of environment variable name; fails the script if unset.
function M.env(name)
  return assert(os.getenv(name), name .. " is not set")
end

-- The non-empty lines of the file at path, in order.
function M.lines(path)
  local f = assert(io.open(path, "rb"))
  local out = {}
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- The whole content of the file at path.
function M.read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

-- The bytes of one POST /rank with a JSON body.
function M.rank_request(body)
  return wrk.format("POST", "/rank", {["Content-Type"] = "application/json"}, body)
end

-- Paced mode when RATE_PER_CONN (requests per second per connection) is
-- set: wrk's delay() hook waits 1000/RATE_PER_CONN ms before each request,
-- so the offered rate stays fixed and a slow answer shows in the latency
-- instead of lowering the load. Closed loop otherwise.
function M.pace()
  local rate = tonumber(os.getenv("RATE_PER_CONN") or "0") or 0
  if rate > 0 then
    local gap_ms = 1000 / rate
    function delay()
      return gap_ms
    end
  end
end

-- Writes the machine-readable RESULT line of a run (for done()): counts,
-- socket errors in total and by kind, and latencies in µs.
function M.write_result(summary, latency)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d socket_errors=%d connect_errors=%d read_errors=%d " ..
    "write_errors=%d timeouts=%d non2xx=%d p50=%d p90=%d p99=%d p999=%d max=%d mean=%.1f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end

return M
