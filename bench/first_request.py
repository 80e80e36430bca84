#!/usr/bin/env python3
"""first_request.py — what the first requests after a start and after each
model reload cost, against the same requests once the server is warm.

Starts a real dcnserve (tests/lib/dcnproc.py) on --model with --workers W,
then for the start and each of --reloads reloads (POST /admin/reload of the
same file: a new model instance, so every worker needs a new state):
  - one burst of W small /rank requests sent at once, each on its own
    kept-alive connection, so that each worker can take one: the "first"
    requests;
  - --steady more bursts of the same shape: the "steady" requests.
Prints p50, p90 and max of each group, measured by the client (send to
answer read, loopback) and by the server (Server-Timing: total, and
inference, which is the worker's time including any state it had to
build), and, when the server exports them, its worker-state counters.
Figures only: nothing here passes or fails on time.

The W requests of a burst may still land on one worker (the batcher may put
them in one batch): then a server that builds its worker states lazily
charges the other worker's build to a later, "steady" burst, which shows in
the steady max, not in its p50.

usage: bench/first_request.py [--server build/release/dcnserve]
                              [--model model/default/criteo-dcn.dcn]
                              [--workers 2] [--reloads 20] [--steady 30]
                              [--candidates 1]
"""
import argparse
import http.client
import json
import os
import re
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import dcnproc  # noqa: E402

TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
COUNTERS = ("dcnserve_worker_states_prepared_total", "dcnserve_worker_states_built_on_request_total")


def rank_body(model_info, n):
    """A /rank body of n candidates setting the first dense feature (the
    sparse ones missing): valid for any model."""
    dense = [f["name"] for f in model_info["features"]["dense"]]
    cands = []
    for i in range(n):
        cands.append({"id": i, "features": {dense[0]: i + 1} if dense else {}})
    return json.dumps({"candidates": cands}).encode()


def burst(port, body, n):
    """Sends n /rank requests at once, one per thread and connection
    (connected before the start signal). Returns one dict per request:
    client ms, and the Server-Timing durations (ms)."""
    conns = [http.client.HTTPConnection(dcnproc.HOST, port, timeout=30) for _ in range(n)]
    for c in conns:
        c.connect()
    go = threading.Barrier(n)
    out = [None] * n

    def one(i):
        c = conns[i]
        go.wait()
        t0 = time.perf_counter()
        c.request("POST", "/rank", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        t1 = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"/rank answered {r.status}: {data[:200]!r}")
        st = {k: float(v) for k, v in TIMING.findall(r.getheader("Server-Timing") or "")}
        out[i] = {"client": (t1 - t0) * 1e3, "server": st.get("total", 0.0), "inference": st.get("inference", 0.0)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    if any(o is None for o in out):
        raise RuntimeError("a request of the burst failed")
    return out


def counters(srv):
    """The worker-state counters from /metrics ({} if not exported)."""
    st, _, data = srv.request("GET", "/metrics")
    found = {}
    for line in data.decode().splitlines():
        name, _, val = line.partition(" ")
        if name in COUNTERS:
            found[name] = int(float(val))
    return found


def summary(rows, key):
    """p50, p90 and max of one column."""
    v = sorted(r[key] for r in rows)
    return statistics.median(v), v[min(len(v) - 1, int(0.9 * len(v)))], v[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "release", "dcnserve"))
    ap.add_argument("--model", default=os.path.join(ROOT, "model", "default", "criteo-dcn.dcn"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--steady", type=int, default=30, help="warm bursts after each start or reload")
    ap.add_argument("--candidates", type=int, default=1, help="candidates per request")
    a = ap.parse_args()

    srv = dcnproc.Server(a.model, "--workers", str(a.workers), "--drain-delay-ms", "0", binary=a.server)
    srv.start()
    first_start, first_reload, steady = [], [], []
    try:
        _, _, data = srv.request("GET", "/v1/model")
        body = rank_body(json.loads(data), a.candidates)
        c0 = counters(srv)
        for rnd in range(a.reloads + 1):
            if rnd:
                st, _, out = srv.request("POST", "/admin/reload", timeout=300)
                if st != 200:
                    raise RuntimeError(f"reload answered {st}: {out[:200]!r}")
            (first_reload if rnd else first_start).extend(burst(srv.port, body, a.workers))
            for _ in range(a.steady):
                steady.extend(burst(srv.port, body, a.workers))
        c1 = counters(srv)
    finally:
        status = srv.stop()
        srv.close()
    if status != 0:
        print(f"warning: dcnserve exited with status {status}", file=sys.stderr)

    print(f"server {a.server}\nmodel {a.model}: --workers {a.workers}, {a.candidates} candidate(s) a request, "
          f"bursts of {a.workers} requests, {a.reloads} reloads, {a.steady} warm bursts after each")
    print(f"{'requests':<22}{'n':>6}  {'client p50/p90/max ms':>24}  {'server p50/p90/max ms':>24}  "
          f"{'inference p50/p90/max ms':>26}")
    for name, rows in (("first after start", first_start), ("first after a reload", first_reload),
                       ("steady", steady)):
        if not rows:
            continue
        cells = ["%.3f / %.3f / %.3f" % summary(rows, k) for k in ("client", "server", "inference")]
        print(f"{name:<22}{len(rows):>6}  {cells[0]:>24}  {cells[1]:>24}  {cells[2]:>26}")
    if c1:
        print("worker states: " + ", ".join(f"{k} +{c1.get(k, 0) - c0.get(k, 0)} (now {c1.get(k, 0)})"
                                            for k in COUNTERS))
    else:
        print("worker states: counters not exported by this server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
