-- mixed.lua — wrk script for dcnserve soak and stress runs: POST /rank with a
-- mix of request sizes (1 to 5,000 candidates), counting every status.
--
-- Environment:
--   BODIES  a file listing body files, one path a line (written by
--           deploy/soak/wrkrun.py); each request picks one at random.
--   RATE_PER_CONN  optional: paced mode, requests per second per
--           connection (wrk's delay() hook), so the offered load stays
--           fixed and does not itself fill the CPU.
-- DESIGN: every wrk thread loads the same bodies; each thread counts its
-- statuses in a table, and done() (run once, after the threads stop) reads
-- the tables of all threads and prints one machine-readable RESULT line
-- (latencies in µs) and one STATUS line (status=count ...).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  bodies = {}
  local list = assert(io.open(assert(os.getenv("BODIES"), "BODIES is not set"), "r"))
  for path in list:lines() do
    local f = assert(io.open(path, "rb"))
    table.insert(bodies, f:read("*a"))
    f:close()
  end
  list:close()
  statuses = {}
  math.randomseed(os.time() * 100 + tid)
end

function request()
  local body = bodies[math.random(#bodies)]
  return wrk.format("POST", "/rank", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
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
    "RESULT requests=%d duration_us=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d non2xx=%d p50=%d p99=%d max=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
  local total = {}
  for _, t in ipairs(threads) do
    local st = t:get("statuses")
    for k, v in pairs(st) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format("%d=%d", k, v)) end
  table.sort(parts)
  io.write("STATUS " .. table.concat(parts, " ") .. "\n")
end
