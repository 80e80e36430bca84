#!/usr/bin/env python3
"""make load — drives a dcnserve process with wrk and prints throughput,
latency percentiles and the server's own time split.

Starts the server (a free loopback port) on a model, builds /rank bodies of
1, 10, 100 and 1,000 candidates from real Criteo rows (data/) or, with
--ids random, from random ids as the engine benchmark makes them (several
bodies per size, cycled, so the working set matches dcn-bench --pool), and
for each
runs wrk with deploy/load/rank.lua for a fixed time (closed loop: as fast as
the connections go), then a paced run at a fixed offered rate (wrk's delay()
hook) so tail latency is measured at a known load rather than hidden by
coordinated omission. The parse/queue/inference/encode split is the
difference of the server's /metrics histograms (dcnserve_request_phase_seconds)
across each run; the event loops' busy share and their CPU time per request
and per candidate come from dcnserve_loop_busy_seconds_total the same way
(the loops' cost predicts where they would cap a bigger machine). With
--workers and --loops lists, one server per combination runs the same sizes
and a scaling table closes the report. Figures, not tests: nothing here
asserts a speed.

Standard library only; needs wrk on PATH. The server process is
tests/lib/dcnproc.py's, found from this file's place in the repository.
"""
import argparse
import csv
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import dcnproc  # noqa: E402

PHASES = ("parse", "queue", "inference", "encode")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def scrape(port):
    """Sums and counts of the phase histograms, request duration and batch
    rows; each loop's busy seconds as ("loop_busy", index)."""
    text = get(port, "/metrics")
    out = {}
    for m in re.finditer(r'^(dcnserve_[a-z_]+)_(sum|count)(\{phase="(\w+)"\})? (\S+)$', text, re.M):
        name, kind, _, phase, val = m.groups()
        key = (name + (":" + phase if phase else ""), kind)
        out[key] = float(val)
    for m in re.finditer(r'^dcnserve_loop_busy_seconds_total\{loop="(\d+)"\} (\S+)$', text, re.M):
        out[("loop_busy", int(m.group(1)))] = float(m.group(2))
    for m in re.finditer(r'^dcnserve_loop_cpu_seconds_total\{loop="(\d+)"\} (\S+)$', text, re.M):
        out[("loop_cpu", int(m.group(1)))] = float(m.group(2))
    return out


def loop_busy(a, b, wall_s):
    """(CPU seconds of all loop threads together, the busiest loop's busy
    share) between two scrapes wall_s apart. Busy is wall time outside
    epoll_wait (it counts time the thread waited for a core); CPU time is
    what the loops' own work cost."""
    busy = [b[k] - a.get(k, 0.0) for k in b if k[0] == "loop_busy"]
    cpu = [b[k] - a.get(k, 0.0) for k in b if k[0] == "loop_cpu"]
    return sum(cpu), (max(busy) / wall_s if busy and wall_s > 0 else float("nan"))


def delta_mean(a, b, name):
    n = b.get((name, "count"), 0) - a.get((name, "count"), 0)
    s = b.get((name, "sum"), 0) - a.get((name, "sum"), 0)
    return s / n if n > 0 else float("nan")


def load_rows(path, features):
    dense = set(f["name"] for f in features["dense"])
    sparse = set(f["name"] for f in features["sparse"])
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            r = {}
            for k, v in rec.items():
                if v == "" or v is None:
                    continue
                if k in dense:
                    r[k] = int(v)
                elif k in sparse:
                    r[k] = v
            rows.append(r)
    return rows


def body_for(rows, n, offset):
    cands = [{"id": f"item-{offset + i}", "features": rows[(offset + i) % len(rows)]} for i in range(n)]
    return json.dumps({"request_id": f"load-{n}", "candidates": cands}, separators=(",", ":"))


def random_rows(features, n, rng):
    """Rows like dcn-bench's pool: dense ~ N(0, 1), one integer id per sparse
    feature, uniform over its vocabulary (index mapping: the id is the row),
    so the embedding gathers touch memory as the engine benchmark's do."""
    rows = []
    for _ in range(n):
        r = {f["name"]: round(rng.gauss(0.0, 1.0), 5) for f in features["dense"]}
        r.update({f["name"]: rng.randrange(max(1, f["vocab_size"])) for f in features["sparse"]})
        rows.append(r)
    return rows


def engine_rate(bench, model, n, threads, pool_rows):
    """dcn-bench's samples/s for batches of n rows on `threads` threads over
    a pool of pool_rows rows, or None if it failed."""
    p = subprocess.run([bench, "run", "--model", model, "--batches", str(n), "--threads", str(threads),
                        "--pool", str(max(1024, pool_rows)), "--min-time", "2"],
                       capture_output=True, text=True)
    for line in p.stdout.splitlines():
        d = json.loads(line)
        if d.get("kind") == "point":
            return d["samples_per_s"], d.get("foreign_cpu", float("nan"))
    return None


def run_wrk(args, port, body_file, rate_per_conn=0.0, duration=None):
    env = dict(os.environ, BODY=body_file)
    if rate_per_conn:
        env["RATE_PER_CONN"] = str(rate_per_conn)
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{duration or args.duration}s",
           "--timeout", "10s", "-s", os.path.join(HERE, "rank.lua"), f"http://127.0.0.1:{port}/rank"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    m = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    if not m:
        sys.exit("wrk failed:\n" + p.stdout + p.stderr)
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def cpu_snapshot(server_pid):
    """CPU time so far, in seconds: every CPU's busy time (/proc/stat), the
    server's (/proc/PID/stat) and finished children's (wrk), with the wall
    clock; two snapshots give who used the CPUs during a run."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / tick   # minus idle and iowait
    with open(f"/proc/{server_pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    server = (int(st[11]) + int(st[12])) / tick                      # utime + stime
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": time.monotonic(), "busy": busy, "server": server, "children": ch.ru_utime + ch.ru_stime}


def cpu_split(a, b):
    """(server cores, wrk cores, foreign fraction of all CPUs) between two
    snapshots; foreign is what other processes of the machine used."""
    wall = b["wall"] - a["wall"]
    ncpu = os.cpu_count() or 1
    server = (b["server"] - a["server"]) / wall
    wrk = (b["children"] - a["children"]) / wall
    foreign = max(0.0, (b["busy"] - a["busy"]) / wall - server - wrk) / ncpu
    return server, wrk, foreign


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "release", "dcnserve"))
    ap.add_argument("--model", default=os.path.join(ROOT, "model", "default", "criteo-dcn.dcn"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "criteo_test_1999_unlabeled.csv"))
    ap.add_argument("--sizes", default="1,10,100,1000", help="candidates per request")
    ap.add_argument("--duration", type=int, default=5, help="seconds per run")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--workers", default="",
                    help="comma-separated worker counts, one server each (default: the server's)")
    ap.add_argument("--loops", default="",
                    help="comma-separated event-loop counts, one server each with every worker "
                         "count (default: the server's)")
    ap.add_argument("--paced-load", type=float, default=0.5,
                    help="paced runs offer this fraction of the closed-loop request rate")
    ap.add_argument("--no-paced", action="store_true", help="closed-loop runs only")
    ap.add_argument("--decode-bench", default="",
                    help="decode-bench binary: time the decoder and encoder on each body first")
    ap.add_argument("--ids", choices=("data", "random"), default="data",
                    help="data: real Criteo rows (data/); random: dcn-bench-like rows with random "
                         "integer ids over each vocabulary, --distinct-rows of them per size")
    ap.add_argument("--distinct-rows", type=int, default=6400,
                    help="with --ids random: distinct rows per size, cycled as several bodies")
    ap.add_argument("--engine-bench", default="",
                    help="dcn-bench binary: measure the engine alone on the same batch size, thread "
                         "count and number of distinct rows, and print the server/engine ratio")
    ap.add_argument("server_args", nargs="*", help="extra dcnserve flags (after --)")
    return ap.parse_args()


def write_bodies(args, info, rows, rng, tmp):
    """One body file per size (several bodies, one a line, with --ids
    random); returns [(n, file, bodies)]."""
    out = []
    for n in (int(x) for x in args.sizes.split(",")):
        bf = os.path.join(tmp, f"body{n}.json")
        n_bodies = 1 if args.ids == "data" else max(1, -(-args.distinct_rows // n))
        with open(bf, "w") as f:
            for k in range(n_bodies):   # one body per line; rank.lua cycles through them
                body_rows = rows if rows else random_rows(info["features"], n, rng)
                f.write(body_for(body_rows, n, k * n) + "\n")
        out.append((n, bf, n_bodies))
    return out


def bench_server(args, flags, bodies, first):
    """Starts one server with flags, runs every size on it (closed loop,
    then paced), prints a row per run; returns {(n, mode): figures}."""
    srv = dcnproc.Server(args.model, "--drain-delay-ms", "0", "--log-level", "warn", *flags, *args.server_args,
                         binary=args.server)
    try:
        srv.start()
    except RuntimeError as e:
        srv.close()
        sys.exit(str(e))
    port = srv.port
    results = {}
    try:
        info = json.loads(get(port, "/v1/model"))
        m = get(port, "/metrics")
        workers = re.search(r"^dcnserve_workers (\d+)", m, re.M).group(1)
        hit = re.search(r"^dcnserve_loops (\d+)", m, re.M)
        loops = hit.group(1) if hit else "1"   # a server from before --loops
        if first:
            print(f"model {info['name']} {info['version']} ({info['architecture']['cross']['kind']} cross, "
                  f"d={info['architecture']['d']}, kernels {info['kernels']}), "
                  f"wrk {args.threads} thread(s) x {args.connections} connections, {args.duration} s per run, "
                  f"{'real Criteo rows' if args.ids == 'data' else f'random ids, {args.distinct_rows} distinct rows per size'}")
        print()
        print(f"== {workers} workers, {loops} loop(s)" + (f" ({' '.join(flags)})" if flags else " (defaults)"))
        hdr = (f"{'mode':<7} {'cands':>5} {'req/s':>9} {'cands/s':>10} {'p50 ms':>8} {'p90 ms':>8} "
               f"{'p99 ms':>8} {'non2xx':>6} | server mean µs: {'parse':>7} {'queue':>7} {'infer':>7} "
               f"{'encode':>7} {'rows/batch':>10} | cores: {'server':>6} {'wrk':>5} {'foreign':>7} | "
               f"{'cands/server-core-s':>19} | loops: {'busy':>5} {'µs/req':>7} {'µs/cand':>7}")
        print(hdr)
        print("-" * len(hdr))
        engine_lines = []
        closed = {}
        for n, bf, n_bodies in bodies:
            run_wrk(args, port, bf, duration=1)  # warm-up
            for mode in ("closed",) if args.no_paced else ("closed", "paced"):
                rate = 0.0
                if mode == "paced":
                    total = closed[n] * args.paced_load
                    rate = max(total / args.connections, 0.5)
                a = scrape(port)
                ca = cpu_snapshot(srv.proc.pid)
                r = run_wrk(args, port, bf, rate_per_conn=rate)
                cb = cpu_snapshot(srv.proc.pid)
                b = scrape(port)
                cpu_server, cpu_wrk, foreign = cpu_split(ca, cb)
                rps = r["requests"] / (r["duration_us"] / 1e6)
                if mode == "closed":
                    closed[n] = rps
                split = [delta_mean(a, b, "dcnserve_request_phase_seconds:" + p) * 1e6 for p in PHASES]
                rows_per_batch = delta_mean(a, b, "dcnserve_batch_rows")
                answered = (b.get(("dcnserve_request_duration_seconds", "count"), 0)
                            - a.get(("dcnserve_request_duration_seconds", "count"), 0))
                busy_s, busy_max = loop_busy(a, b, cb["wall"] - ca["wall"])
                loop_us = busy_s / answered * 1e6 if answered else float("nan")
                if mode == "closed" and args.engine_bench:
                    e = engine_rate(args.engine_bench, args.model, n, int(workers), n_bodies * n)
                    if e:
                        engine_lines.append(
                            f"  {n:>5} cands: server {rps * n:>9.0f} cands/s, engine {e[0]:>9.0f} samples/s "
                            f"(batch {n}, {workers} threads, pool {max(1024, n_bodies * n)} rows, foreign "
                            f"{e[1]:.0%}): server/engine {rps * n / e[0]:.0%}")
                results[(n, mode)] = {"rps": rps, "p99_ms": r["p99"] / 1000, "busy_max": busy_max,
                                      "loop_us": loop_us, "cpu_server": cpu_server, "foreign": foreign}
                print(f"{mode:<7} {n:>5} {rps:>9.0f} {rps * n:>10.0f} {fmt_ms(r['p50']):>8} "
                      f"{fmt_ms(r['p90']):>8} {fmt_ms(r['p99']):>8} {int(r['non2xx'] + r['socket_errors']):>6} | "
                      f"{'':>15}{split[0]:>7.0f} {split[1]:>7.0f} {split[2]:>7.0f} {split[3]:>7.0f} "
                      f"{rows_per_batch:>10.1f} | {'':>7}{cpu_server:>6.2f} {cpu_wrk:>5.2f} {foreign:>7.0%} | "
                      f"{rps * n / max(cpu_server, 1e-9):>19.0f} | {'':>7}{busy_max:>5.0%} {loop_us:>7.1f} "
                      f"{loop_us / n:>7.2f}")
        if engine_lines:
            print()
            print("engine alone (dcn-bench run, same model, batch size, threads and distinct rows), right "
                  "after each closed-loop run:")
            for line in engine_lines:
                print(line)
    finally:
        srv.stop(20)
        srv.close()
    return results


def main():
    args = parse_args()
    workers = [w for w in args.workers.split(",") if w] or [None]
    loops = [lp for lp in args.loops.split(",") if lp] or [None]
    configs = [(w, lp) for w in workers for lp in loops]
    probe = dcnproc.Server(args.model, "--drain-delay-ms", "0", "--log-level", "warn", binary=args.server)
    try:
        probe.start()
        info = json.loads(get(probe.port, "/v1/model"))
    except RuntimeError as e:
        sys.exit(str(e))
    finally:
        probe.stop(20)
        probe.close()
    rows = load_rows(args.data, info["features"]) if args.ids == "data" else None
    rng = random.Random(1)
    decode_lines = []
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = write_bodies(args, info, rows, rng, tmp)
        if args.decode_bench:
            for n, bf, _ in bodies:
                first = os.path.join(tmp, f"first{n}.json")
                with open(bf) as f, open(first, "w") as g:
                    g.write(f.readline().rstrip("\n"))
                d = subprocess.run([args.decode_bench, args.model, first, "1"], capture_output=True, text=True)
                decode_lines.extend((d.stdout or d.stderr).strip().splitlines())
        for k, (w, lp) in enumerate(configs):
            flags = (["--workers", w] if w else []) + (["--loops", lp] if lp else [])
            table[(w, lp)] = bench_server(args, flags, bodies, k == 0)
    print()
    if not args.no_paced:
        print(f"paced: offered {args.paced_load:.0%} of the closed-loop rate, evenly over the connections "
              f"(wrk delay() hook); req/s shows the rate achieved.")
    print("cores: CPU used during the run by the server, by wrk, and by every other process "
          "(foreign, as a share of all CPUs): a high foreign share makes the figures unreliable.")
    print("cands/server-core-s: candidates answered per CPU-second the server used (loop and "
          "workers), comparable with the engine's single-thread samples/s even on a shared machine.")
    print("loops: the busiest loop's busy share (wall time outside epoll_wait over the run, waits for a "
          "core included; near 100%: that loop sets the pace), and the loop threads' CPU time per "
          "answered request and per candidate (their own work: HTTP, body, decode when on the loop, "
          "encode).")
    if len(configs) > 1:
        print()
        print("scaling (closed loop): req/s, p99 ms, busiest loop's share, loops' µs per request")
        names = ["w=%s l=%s" % (w or "dflt", lp or "dflt") for w, lp in configs]
        head = f"{'cands':>5} " + " ".join(f"{name:>30}" for name in names)
        print(head)
        print("-" * len(head))
        for n, _, _ in bodies:
            cells = []
            for c in configs:
                f = table[c].get((n, "closed"))
                cells.append(f"{f['rps']:>9.0f} {f['p99_ms']:>7.2f} {f['busy_max']:>5.0%} {f['loop_us']:>6.1f}"
                             if f else f"{'':>30}")
            print(f"{n:>5} " + " ".join(f"{c:>30}" for c in cells))
    if decode_lines:
        print()
        print("decode-bench (one core, no HTTP): the loop's decode and rank+encode per request, and the routing "
              "pre-scan (route) a server with several models or versions adds before the decode")
        for line in decode_lines:
            print("  " + line)

if __name__ == "__main__":
    main()
