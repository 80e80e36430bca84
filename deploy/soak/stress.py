#!/usr/bin/env python3
"""stress.py — load and overload figures for RELIABILITY.md (not a test:
it prints what it measured; nothing here is asserted about speed).

Phases, each against a fresh dcnserve on a loopback port:
  saturation   wrk closed loop at --saturation-s seconds with mixed sizes
               (1 to 5,000 candidates): requests, rate, p99, socket errors,
               statuses.
  connections  wrk with 2,200 keep-alive connections (server limit 2,300)
               on small requests: socket errors and statuses.
  slowloris    p99 of normal clients (wrk, small requests) alone, then with
               slow connections trickling headers and bodies byte by byte up
               to the connection limit minus wrk's connections; the ratio.
               Closed loop by default: then wrk and the server already fill
               both cores and the trickler's own CPU shows as latency; with
               --slowloris-rate R each normal connection sends R requests/s
               (a fixed offered load). --slow-gap-s sets the trickle gap.
  overload     one worker, a small queue, wrk with many connections on large
               requests: how many 503s, how fast a probe's 503 comes back, peak
               RSS, and how soon after the load stops a request gets 200.

After each phase: the machine's CPU time during it, split into this run's
(stress.py, wrk and the server, all children) and foreign (everything else
on the machine: other builds and tests), from /proc/stat.

Usage: stress.py --server BIN --model FILE [--phases a,b,...] [--saturation-s 60]
"""
import argparse
import os
import resource
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wrkrun  # noqa: E402


def line(name, r):
    st = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
    rate = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0
    print(f"  {name}: {r['requests']} requests, {rate:.0f}/s, p50 {r['p50'] / 1000:.2f} ms, "
          f"p99 {r['p99'] / 1000:.2f} ms, socket errors {r['socket_errors']} "
          f"(connect {r['connect_errors']}, read {r['read_errors']}, write {r['write_errors']}, "
          f"timeout {r['timeouts']}), statuses {st}", flush=True)


def saturation(a, tmp):
    bodies, sizes = wrkrun.make_bodies(tmp, n=64, seed=2)
    srv = wrkrun.Server(a.server, a.model, ["--drain-delay-ms", "0"])
    print(f"saturation: {a.saturation_s} s, 32 connections, {min(sizes)}..{max(sizes)} candidates")
    r = wrkrun.run_wrk(srv.port, a.saturation_s, bodies, connections=32, timeout_s=30)
    line("mixed", r)
    print(f"  server RSS {srv.rss_mib():.1f} MiB, exit code {srv.stop()}")


def connections(a, tmp):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    bodies, _ = wrkrun.make_bodies(tmp, n=16, mix=[(1, 1, 20)], seed=3)
    srv = wrkrun.Server(a.server, a.model, ["--max-connections", "2300", "--drain-delay-ms", "0"])
    print("connections: 2,200 keep-alive connections for 15 s, 1..20 candidates")
    r = wrkrun.run_wrk(srv.port, 15, bodies, connections=2200, threads=2, timeout_s=30)
    line("2200 conns", r)
    print(f"  server RSS {srv.rss_mib():.1f} MiB, exit code {srv.stop()}")


def trickler(port, n, stop, body_len=2000, gap_s=0.1):
    """Opens n slow connections (half trickle headers, half a body) and
    sends one byte per connection every gap_s seconds until stop is set."""
    socks = []
    head = (f"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_len}\r\n\r\n").encode()
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if i % 2:
            s.sendall(head)
        socks.append([s, 0 if i % 2 == 0 else None])
    while not stop.is_set():
        for entry in socks:
            s, pos = entry
            try:
                if pos is not None and pos < len(head) - 1:
                    s.send(head[pos:pos + 1])
                    entry[1] = pos + 1
                elif pos is None:
                    s.send(b" ")
            except OSError:
                pass
        stop.wait(gap_s)
    for s, _ in socks:
        s.close()
    return len(socks)


def slowloris(a, tmp):
    bodies, _ = wrkrun.make_bodies(tmp, n=16, mix=[(1, 1, 20)], seed=4)
    limit, conns = 1020, 16
    srv = wrkrun.Server(a.server, a.model, ["--max-connections", str(limit), "--drain-delay-ms", "0"])
    rate = a.slowloris_rate
    print(f"slowloris: p99 of {conns} normal connections "
          f"({f'{rate} requests/s each' if rate else 'closed loop'}), alone then beside "
          f"{limit - conns - 4} slow ones sending a byte every {a.slow_gap_s} s (limit {limit})")
    base = wrkrun.run_wrk(srv.port, 10, bodies, connections=conns, rate_per_conn=rate)
    line("alone", base)
    stop = threading.Event()
    t = threading.Thread(target=trickler, args=(srv.port, limit - conns - 4, stop),
                         kwargs={"gap_s": a.slow_gap_s})
    t.start()
    time.sleep(3)
    slow = wrkrun.run_wrk(srv.port, 10, bodies, connections=conns, rate_per_conn=rate)
    line("beside slow clients", slow)
    stop.set()
    t.join(30)
    print(f"  p99 ratio {slow['p99'] / max(base['p99'], 1):.2f}, server fds during: see above; "
          f"exit code {srv.stop()}")


def overload(a, tmp):
    bodies, sizes = wrkrun.make_bodies(tmp, n=16, mix=[(1, 1000, 3000)], seed=5)
    small = b'{"candidates":[{"id":1,"features":{"I1":3,"C1":"68fd1e64"}}]}'
    srv = wrkrun.Server(a.server, a.model, ["--workers", "1", "--max-queue-rows", "4000",
                                            "--max-queue-delay-us", "20000", "--max-batch-rows", "4096",
                                            "--drain-delay-ms", "0"])
    print("overload: 1 worker, queue of 4,000 rows, 64 connections of 1,000..3,000 candidates for 15 s")
    probes, rss = [], [srv.rss_mib()]
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                st, _ = srv.post(small, timeout=30)
            except OSError as e:
                st = type(e).__name__
            probes.append((st, time.monotonic() - t0))
            rss.append(srv.rss_mib())
            stop.wait(0.05)

    th = threading.Thread(target=probe)
    th.start()
    r = wrkrun.run_wrk(srv.port, 15, bodies, connections=64, timeout_s=30)
    stop.set()
    th.join(60)
    line("overload", r)
    t0 = time.monotonic()
    st, _ = srv.post(small)
    after = time.monotonic() - t0
    busy = sorted(d for s, d in probes if s == 503)
    ok = sorted(d for s, d in probes if s == 200)

    def pct(v, p):
        return v[min(len(v) - 1, int(len(v) * p))] * 1000 if v else float("nan")

    print(f"  probes: {len(ok)} x 200 (p50 {pct(ok, .5):.1f} ms, p99 {pct(ok, .99):.1f} ms), "
          f"{len(busy)} x 503 (p50 {pct(busy, .5):.1f} ms, p99 {pct(busy, .99):.1f} ms)")
    print(f"  peak RSS {max(rss):.1f} MiB; first request after the load: {st} in {after * 1000:.1f} ms; "
          f"exit code {srv.stop()}")


def cpu_busy_s():
    """Busy CPU seconds of the whole machine so far (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    """CPU seconds of this process and its waited-for children (wrk, servers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--phases", default="saturation,connections,slowloris,overload")
    ap.add_argument("--saturation-s", type=int, default=60)
    ap.add_argument("--slowloris-rate", type=float, default=0,
                    help="requests/s per normal connection in the slowloris phase (0: closed loop)")
    ap.add_argument("--slow-gap-s", type=float, default=0.1, help="seconds between a slow client's bytes")
    a = ap.parse_args()
    phases = {"saturation": saturation, "connections": connections, "slowloris": slowloris,
              "overload": overload}
    for name in a.phases.split(","):
        t0, busy0, own0 = time.monotonic(), cpu_busy_s(), own_cpu_s()
        with tempfile.TemporaryDirectory() as tmp:
            phases[name](a, tmp)
        wall, busy, own = time.monotonic() - t0, cpu_busy_s() - busy0, own_cpu_s() - own0
        print(f"  cpu over {wall:.0f} s on {os.cpu_count()} cores: {busy:.0f} core-s busy, "
              f"this run {own:.0f}, foreign {max(busy - own, 0):.0f} "
              f"({max(busy - own, 0) / wall:.2f} cores on average)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
