#!/usr/bin/env python3
"""soak.py — a long mixed load against dcnserve, watching for leaks.

Starts the server on a loopback port, then runs wrk (mixed.lua: 1 to 5,000
candidates a request) in back-to-back windows of --interval seconds for
--duration seconds, and after each window prints one line: requests, rate,
p50 and p99 latency of the window, statuses, socket errors, and the
server's resident memory and open file descriptors (read between windows,
once wrk's connections are closed). At the end it stops the server with
SIGTERM and reports the exit code.

--check turns the run into a test (make soak-ci): exit 1 if any window had a
socket error or a status other than 200, if RSS grew more than
--max-rss-growth-mib between the end of the first window (warm: every buffer
sized) and the end of the last, if the descriptors grew more than
--max-fd-growth, or if the server did not exit 0.

Usage: soak.py --server BIN --model FILE [--duration 600] [--interval 30]
               [--connections 16] [--workers 0] [--check]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wrkrun  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=int, default=600, help="seconds of load")
    ap.add_argument("--interval", type=int, default=30, help="seconds per window")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="server worker threads (0: one per CPU)")
    ap.add_argument("--check", action="store_true", help="fail on growth, errors or unintended statuses")
    ap.add_argument("--max-rss-growth-mib", type=float, default=48.0)
    ap.add_argument("--max-fd-growth", type=int, default=8)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bodies, sizes = wrkrun.make_bodies(tmp)
        srv = wrkrun.Server(a.server, a.model, ["--workers", str(a.workers), "--drain-delay-ms", "0"])
        print(f"soak: {a.duration} s in {a.interval} s windows, {a.connections} connections, "
              f"{len(sizes)} bodies of {min(sizes)}..{max(sizes)} candidates (mean {sum(sizes) / len(sizes):.0f})")
        base_fds = srv.fds()
        print(f"start: RSS {srv.rss_mib():.1f} MiB, fds {base_fds}")
        print(f"{'t_s':>5} {'requests':>9} {'req/s':>8} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6} "
              f"{'RSS_MiB':>8} {'fds':>4}  statuses")
        rows = []
        t0 = time.monotonic()
        problems = []
        n_windows = max(1, a.duration // a.interval)
        for w in range(n_windows):
            r = wrkrun.run_wrk(srv.port, a.interval, bodies, connections=a.connections)
            # the server closes wrk's connections as it notices them go
            settle = time.monotonic() + 3
            while srv.fds() > base_fds and time.monotonic() < settle:
                time.sleep(0.05)
            rss, fds = srv.rss_mib(), srv.fds()
            t = time.monotonic() - t0
            rate = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            st = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
            print(f"{t:5.0f} {r['requests']:9d} {rate:8.1f} {r['p50'] / 1000:8.2f} {r['p99'] / 1000:8.2f} "
                  f"{r['socket_errors']:6d} {rss:8.1f} {fds:4d}  {st}", flush=True)
            rows.append((rss, fds))
            if r["socket_errors"]:
                problems.append(f"window {w}: {r['socket_errors']} socket errors")
            if set(r["statuses"]) - {200}:
                problems.append(f"window {w}: statuses {r['statuses']}")
            if srv.proc.poll() is not None:
                problems.append("the server died:\n" + srv.output())
                break
        rss_growth = rows[-1][0] - rows[0][0]
        fd_growth = rows[-1][1] - rows[0][1]
        code = srv.stop()
        print(f"end: RSS growth {rss_growth:+.1f} MiB (bound {a.max_rss_growth_mib}), "
              f"fd growth {fd_growth:+d} (bound {a.max_fd_growth}), exit code {code}")
        if rss_growth > a.max_rss_growth_mib:
            problems.append(f"RSS grew {rss_growth:.1f} MiB")
        if fd_growth > a.max_fd_growth:
            problems.append(f"fds grew by {fd_growth}")
        if code != 0:
            problems.append(f"exit code {code}:\n" + srv.output())
        for p in problems:
            print("PROBLEM:", p)
        if a.check and problems:
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
