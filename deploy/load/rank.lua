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
-- The helpers are wrkcommon.lua's, loaded from this script's directory.

local wrkc = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "wrkcommon.lua")

local bodies = wrkc.lines(wrkc.env("BODY"))

wrk.method = "POST"
wrk.body = bodies[1]
wrk.headers["Content-Type"] = "application/json"

-- Several bodies (one per line): each request takes the next, cycling.
if #bodies > 1 then
  local reqs, i = {}, 0
  for k, b in ipairs(bodies) do
    reqs[k] = wrkc.rank_request(b)
  end
  function request()
    i = i % #reqs + 1
    return reqs[i]
  end
end

wrkc.pace()

function done(summary, latency, requests)
  wrkc.write_result(summary, latency)
end
