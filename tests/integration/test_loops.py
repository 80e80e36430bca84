"""Integration tests of dcnserve with several event loops (--loops) against
the real binary: connections spread over the loops and each loop serves
(per-loop metrics, sums equal to the totals), a SIGTERM drain with requests
in flight on every loop (none lost, exit 0), the connection limit over all
loops (accepting resumes when a connection closes), the loop count from the flag,
the environment and the default, and the decode placement chosen from the
workers per loop. The single-loop behaviour and the same lifecycle and
fault tests with three loops run elsewhere (dcnproc.also_with_loops).
Helpers come from test_server.py."""
import http.client
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import test_server as ts


def metrics(srv):
    """The /metrics text as {series: value} (series with its labels)."""
    _, _, data = srv.request("GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def per_loop(m, family):
    """{loop index: value} of a per-loop metric family."""
    got = {}
    for k, v in m.items():
        hit = re.fullmatch(family + r'\{loop="(\d+)"\}', k)
        if hit:
            got[int(hit.group(1))] = v
    return got


def rank_req(n, rid=None):
    req = {"candidates": [{"id": i, "features": {"I1": i, "C1": "0a"}} for i in range(n)]}
    if rid is not None:
        req["request_id"] = rid
    return req


@unittest.skipUnless(os.path.exists(ts.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class LoopsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = ts.make_model(os.path.join(cls.tmp.name, "m.dcn"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_connections_spread_and_every_loop_serves(self):
        srv = ts.Server(self.model, "--loops", "3", "--workers", "2", "--drain-delay-ms", "0").start()
        conns = []
        try:
            # six keep-alive connections open at once: two per loop
            conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30) for _ in range(6)]
            for c in conns:
                c.connect()
            for rnd in range(5):
                for i, c in enumerate(conns):
                    c.request("POST", "/rank", body=ts.json.dumps(rank_req(4, rid=i)),
                              headers={"Content-Type": "application/json"})
                    r = c.getresponse()
                    data = r.read()
                    self.assertEqual(r.status, 200, data)
                    self.assertEqual(ts.json.loads(data)["request_id"], i)
            m = metrics(srv)
            self.assertEqual(m["dcnserve_loops"], 3)
            conns_by_loop = per_loop(m, "dcnserve_loop_connections")
            self.assertEqual(sorted(conns_by_loop), [0, 1, 2])
            # the 6 and the /metrics connection: at least two on each loop
            self.assertTrue(all(v >= 2 for v in conns_by_loop.values()), conns_by_loop)
            reqs = per_loop(m, "dcnserve_loop_requests_total")
            self.assertTrue(all(v >= 10 for v in reqs.values()), reqs)
            total = sum(v for k, v in m.items() if k.startswith("dcnserve_requests_total{"))
            self.assertEqual(sum(reqs.values()), total)
            self.assertEqual(m['dcnserve_requests_total{handler="rank",code="200"}'], 30)
            self.assertEqual(m["dcnserve_candidates_scored_total"], 120)
            self.assertEqual(m["dcnserve_request_duration_seconds_count"], 30)
            busy = per_loop(m, "dcnserve_loop_busy_seconds_total")
            self.assertTrue(all(v > 0 for v in busy.values()), busy)
            cpu = per_loop(m, "dcnserve_loop_cpu_seconds_total")
            self.assertTrue(all(v > 0 for v in cpu.values()), cpu)
        finally:
            for c in conns:
                c.close()
            srv.stop()
        self.assertEqual(srv.proc.returncode, 0)

    def test_sigterm_drains_requests_in_flight_on_every_loop(self):
        # a 400 ms queue delay keeps the six requests queued when SIGTERM lands
        srv = ts.Server(self.model, "--loops", "3", "--workers", "1", "--max-queue-delay-us", "400000",
                        "--max-batch-rows", "4096", "--drain-delay-ms", "200").start()
        results = []
        lock = threading.Lock()

        def client(k):
            st, _, out = srv.rank(rank_req(5, rid=k))
            with lock:
                results.append((k, st, out.get("request_id") if out else None))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        m = {}
        while time.time() < deadline:
            m = metrics(srv)
            if m.get("dcnserve_inflight_requests") == 6:
                break
            time.sleep(0.01)
        self.assertEqual(m.get("dcnserve_inflight_requests"), 6, m)
        conns_by_loop = per_loop(m, "dcnserve_loop_connections")
        self.assertTrue(all(v >= 2 for v in conns_by_loop.values()), conns_by_loop)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        srv.proc.wait(20)
        out = srv.output()
        self.assertEqual(srv.proc.returncode, 0, out)
        self.assertEqual(sorted(results), [(k, 200, k) for k in range(6)])
        self.assertIn('"msg":"stopped"', out)
        ts.check_sanitizer_output(out)
        srv.log.close()

    def test_connection_limit_over_all_loops(self):
        # four connections held on two loops fill --max-connections 4: a
        # fifth waits in the backlog, unanswered, until one of them closes
        srv = ts.Server(self.model, "--loops", "2", "--max-connections", "4", "--drain-delay-ms", "0").start()
        held = []
        try:
            body = ts.json.dumps(rank_req(2))
            for _ in range(4):
                c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                c.request("POST", "/rank", body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
                held.append(c)
            fifth = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            fifth.sendall(("POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            fifth.settimeout(0.5)
            with self.assertRaises(socket.timeout):
                fifth.recv(100)          # not accepted while four are open
            held.pop().close()
            fifth.settimeout(10)
            self.assertTrue(fifth.recv(100).startswith(b"HTTP/1.1 200"))
            fifth.close()
        finally:
            for c in held:
                c.close()
            srv.stop()
        self.assertEqual(srv.proc.returncode, 0)

    def started_with(self, *args, env=None):
        """The 'listening' log line's fields of a server started with args."""
        srv = ts.Server(self.model, "--drain-delay-ms", "0", *args, env=env).start()
        try:
            n = metrics(srv)["dcnserve_loops"]
        finally:
            out = srv.output()
            srv.stop()
        line = next(l for l in out.splitlines() if '"msg":"listening"' in l)
        fields = ts.json.loads(line)
        self.assertEqual(fields["loops"], n)
        return fields

    def test_loop_count_and_decode_placement(self):
        cpus = len(os.sched_getaffinity(0))
        # default: one loop per four usable CPUs (no cgroup quota assumed
        # below the affinity mask here: the server caps by it too)
        default = self.started_with()
        self.assertLessEqual(default["loops"], (cpus + 3) // 4)
        self.assertGreaterEqual(default["loops"], 1)
        self.assertEqual(self.started_with(env={"DCNSERVE_LOOPS": "2"})["loops"], 2)
        self.assertEqual(self.started_with("--loops", "3", env={"DCNSERVE_LOOPS": "2"})["loops"], 3)
        # decode placement, auto: every body on a worker with more than two
        # workers per loop, else bodies of 1 MiB and more
        f = self.started_with("--loops", "1", "--workers", "3")
        self.assertEqual(f["decode_offload_bytes"], 0)
        f = self.started_with("--loops", "1", "--workers", "2")
        self.assertEqual(f["decode_offload_bytes"], 1048576)
        f = self.started_with("--loops", "2", "--workers", "4", "--decode-offload-bytes", "5000")
        self.assertEqual(f["decode_offload_bytes"], 5000)
        # out of range: refused at start
        p = subprocess.run([ts.DCNSERVE, "--model", self.model, "--loops", "257"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("loops", p.stderr)


if __name__ == "__main__":
    unittest.main()
