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
-- (latencies in µs) and one STATUS line (status=count ...). The helpers are
-- deploy/load/wrkcommon.lua's, found from this script's own directory.

local wrkc = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "../load/wrkcommon.lua")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  bodies = {}
  for _, path in ipairs(wrkc.lines(wrkc.env("BODIES"))) do
    table.insert(bodies, wrkc.read(path))
  end
  statuses = {}
  math.randomseed(os.time() * 100 + tid)
end

function request()
  return wrkc.rank_request(bodies[math.random(#bodies)])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

wrkc.pace()

function done(summary, latency, requests)
  wrkc.write_result(summary, latency)
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
