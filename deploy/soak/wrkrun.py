"""wrkrun — what the soak and stress scripts share: a dcnserve process on a
loopback port, request bodies of mixed sizes from the real Criteo rows, wrk
runs through mixed.lua, and /proc readings of the server.

DESIGN: standard library only; every wrk run is bounded by its duration
(wrk itself) plus a margin (subprocess timeout). Bodies are written once to
a temporary directory and listed in a file mixed.lua reads at start-up.
"""
import csv
import json
import os
import random
import re
import socket
import subprocess
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LUA = os.path.join(HERE, "mixed.lua")
ROWS_CSV = os.path.join(ROOT, "data", "criteo_test_1999_unlabeled.csv")

# (weight, lowest, highest) candidates per request: mostly small requests,
# a long tail up to 5,000
MIX = [(50, 1, 50), (30, 51, 500), (15, 501, 2000), (5, 2001, 5000)]


def criteo_rows():
    rows = []
    with open(ROWS_CSV, newline="") as f:
        for rec in csv.DictReader(f):
            rows.append({k: (int(v) if k.startswith("I") else v) for k, v in rec.items()
                         if v and k not in ("Id", "Label")})
    return rows


def make_bodies(directory, n=48, mix=MIX, seed=1):
    """Writes n request bodies with sizes drawn from mix; returns the path of
    the list file for mixed.lua and the sizes."""
    rng = random.Random(seed)
    rows = criteo_rows()
    paths, sizes = [], []
    weights = [w for w, _, _ in mix]
    for i in range(n):
        _, lo, hi = rng.choices(mix, weights)[0]
        k = rng.randint(lo, hi)
        ctx = {key: v for key, v in rows[rng.randrange(len(rows))].items() if key in ("I1", "C1", "C2")}
        cands = []
        for j in range(k):
            feats = dict(rows[rng.randrange(len(rows))])
            for key in ctx:
                feats.pop(key, None)
            cands.append({"id": j, "features": feats})
        path = os.path.join(directory, f"body{i}.json")
        with open(path, "w") as f:
            json.dump({"request_id": i, "context": ctx, "candidates": cands}, f, separators=(",", ":"))
        paths.append(path)
        sizes.append(k)
    lst = os.path.join(directory, "bodies.txt")
    with open(lst, "w") as f:
        f.write("\n".join(paths) + "\n")
    return lst, sizes


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """dcnserve on a free loopback port, output to a temporary file."""

    def __init__(self, binary, model, args=()):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([binary, "--model", model, "--host", "127.0.0.1",
                                      "--port", str(self.port)] + list(args),
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dcnserve exited:\n" + self.output())
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("dcnserve did not become ready:\n" + self.output())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, body, timeout=30):
        req = urllib.request.Request(self.url("/rank"), data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_wrk(port, seconds, bodies, connections=32, threads=2, timeout_s=10, rate_per_conn=0):
    """One wrk run through mixed.lua (closed loop, or paced at rate_per_conn
    requests per second per connection); returns a dict: requests, errors by
    kind, non2xx, p50_us, p99_us, max_us, statuses {code: count}."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", f"{timeout_s}s", "--latency", "-s", LUA, f"http://127.0.0.1:{port}/rank"]
    env = dict(os.environ, BODIES=bodies)
    if rate_per_conn:
        env["RATE_PER_CONN"] = str(rate_per_conn)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    res = {"raw": out}
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no RESULT line:\n" + out)
    for kv in m.group(1).split():
        k, v = kv.split("=")
        res[k] = int(v)
    res["socket_errors"] = res["connect_errors"] + res["read_errors"] + res["write_errors"] + res["timeouts"]
    m = re.search(r"^STATUS ?(.*)$", out, re.M)
    res["statuses"] = {}
    if m:
        for kv in m.group(1).split():
            k, v = kv.split("=")
            res["statuses"][int(k)] = int(v)
    return res
