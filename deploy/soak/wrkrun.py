"""wrkrun — what the soak and stress scripts share: a dcnserve process on a
loopback port, request bodies of mixed sizes from the real Criteo rows, wrk
runs through mixed.lua, and /proc readings of the server.

DESIGN: standard library only; every wrk run is bounded by its duration
(wrk itself) plus a margin (subprocess timeout). Bodies are written once to
a temporary directory and listed in a file mixed.lua reads at start-up. The
server process is tests/lib/dcnproc.py's (found from this file's place in
the repository), with this script's longer bounds.
"""
import csv
import json
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import dcnproc  # noqa: E402

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


class Server(dcnproc.Server):
    """dcnproc.Server started by the constructor, with the names soak.py
    and stress.py use."""

    START_TIMEOUT_S = 30.0
    STOP_TIMEOUT_S = 60.0
    LOG_TAIL_CHARS = 5000

    def __init__(self, binary, model, args=()):
        super().__init__(model, *args, binary=binary)
        self.start()

    def post(self, body, timeout=30):
        """POST /rank: (status, body bytes)."""
        st, _, data = self.request("POST", "/rank", body, timeout=timeout)
        return st, data

    def rss_mib(self):
        return self.rss_kb() / 1024.0

    def fds(self):
        return self.n_fds()


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
        res[k] = float(v) if "." in v else int(v)
    m = re.search(r"^STATUS ?(.*)$", out, re.M)
    res["statuses"] = {}
    if m:
        for kv in m.group(1).split():
            k, v = kv.split("=")
            res["statuses"][int(k)] = int(v)
    return res
