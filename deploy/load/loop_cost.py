#!/usr/bin/env python3
"""loop_cost.py — the event loop's instructions per /rank request, counted
by callgrind (valgrind), so that a change to the front end can be measured
on a shared machine where timings are noise.

Runs dcnserve (one loop, one worker: its threads are then the loop, thread
1, and the worker, thread 2) under callgrind with per-thread counts, sends
warm-up requests, zeroes the counters (callgrind_control -z), sends
--conns keep-alive connections x --requests requests of one body of N
candidates from real Criteo rows, dumps (callgrind_control -d) and prints
the loop's and the worker's instructions per request. Extra dcnserve flags
go after --, e.g. `-- --decode-offload-bytes 0` to count the loop without
decoding. Figures, not tests. Needs valgrind; slow (about a minute).
"""
import argparse
import glob
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, HERE)
import dcnproc  # noqa: E402
import run  # noqa: E402  (make load's body builder)


def send(port, body, n):
    c = http.client.HTTPConnection(dcnproc.HOST, port, timeout=600)
    for _ in range(n):
        c.request("POST", "/rank", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"status {r.status}")
    c.close()


def traffic(port, body, conns, n):
    ts = [threading.Thread(target=send, args=(port, body, n)) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "release", "dcnserve"))
    ap.add_argument("--model", default=os.path.join(ROOT, "model", "default", "criteo-dcn.dcn"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "criteo_test_1999_unlabeled.csv"))
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--requests", type=int, default=100, help="per connection")
    ap.add_argument("server_args", nargs="*", help="extra dcnserve flags (after --)")
    a = ap.parse_args()
    # a server from before --loops has one loop anyway
    helptext = subprocess.run([a.server, "--help"], capture_output=True, text=True).stdout
    one_loop = ["--loops", "1"] if "--loops" in helptext else []
    with tempfile.TemporaryDirectory() as tmp:
        port = dcnproc.free_port()
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
               f"--callgrind-out-file={tmp}/cg.%p", a.server, "--model", a.model, "--host", dcnproc.HOST,
               "--port", str(port), "--workers", "1", *one_loop, "--warmup=0", "--log-level", "warn",
               "--drain-delay-ms", "0", *a.server_args]
        log = open(os.path.join(tmp, "log"), "w+")
        p = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            srv = dcnproc.Server(a.model, port=port)
            srv.proc = p
            if not srv.wait_ready(300):
                log.seek(0)
                raise SystemExit("dcnserve did not start under valgrind:\n" + log.read())
            info = json.loads(srv.request("GET", "/v1/model")[2])
            rows = run.load_rows(a.data, info["features"])
            body = run.body_for(rows, a.candidates, 0)
            traffic(port, body, a.conns, 10)
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
            traffic(port, body, a.conns, a.requests)
            subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
            time.sleep(1)
        finally:
            p.terminate()
            p.wait(120)
        n = a.conns * a.requests
        loop = total(glob.glob(f"{tmp}/cg.{p.pid}.1-01")[0])
        worker = total(glob.glob(f"{tmp}/cg.{p.pid}.1-02")[0])
        print(f"{a.candidates} candidates, {len(body)} bytes, {n} requests on {a.conns} connections, "
              f"flags: {' '.join(a.server_args) or 'defaults'}")
        print(f"  loop:   {loop / n:>10.0f} instructions/request  {loop / n / a.candidates:>8.0f} /candidate")
        print(f"  worker: {worker / n:>10.0f} instructions/request  {worker / n / a.candidates:>8.0f} /candidate")


if __name__ == "__main__":
    main()
