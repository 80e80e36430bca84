"""Integration tests of dcnserve's lifecycle against the real binary: model
reload (HTTP and SIGHUP) under traffic, a failed reload keeping the old
model, worker states prepared at start and on reload (never built on the
request path), the SIGTERM drain with requests in flight (none lost, exit
0), the drain timeout (exit 1), and listening on IPv6.
Helpers come from test_server.py."""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import test_server as ts


def write_garbage(path):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"GGUF" + b"\0" * 60)
    os.replace(tmp, path)  # never truncate a mapped file


@unittest.skipUnless(os.path.exists(ts.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
@ts.dcnproc.also_with_loops(3)
class ReloadTest(unittest.TestCase):
    def test_reload_under_traffic(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"), name="m", version="1", seed=1)
            srv = ts.Server(path, "--workers", "2", "--drain-delay-ms", "0").start()
            stop = threading.Event()
            seen, bad = set(), []
            req = {"candidates": [{"id": i, "features": {"I1": i, "C1": "0a"}} for i in range(20)]}

            def client():
                while not stop.is_set():
                    st, _, out = srv.rank(req)
                    if st != 200:
                        bad.append((st, out))
                    else:
                        seen.add(out["model"]["version"])

            threads = [threading.Thread(target=client) for _ in range(4)]
            try:
                for t in threads:
                    t.start()
                time.sleep(0.3)
                ts.make_model(path, name="m", version="2", seed=2)
                st, _, out = srv.request("POST", "/admin/reload")
                self.assertEqual(st, 200, out)
                time.sleep(0.3)
                # a broken file: refused, the old model keeps serving
                write_garbage(path)
                st, _, out = srv.request("POST", "/admin/reload")
                self.assertEqual(st, 422, out)
                self.assertIn(b"reload_failed", out)
                time.sleep(0.2)
                # SIGHUP reload
                ts.make_model(path, name="m", version="3", seed=3)
                srv.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while time.time() < deadline and "3" not in seen:
                    time.sleep(0.05)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
                srv.stop()
            self.assertEqual(bad, [])
            self.assertEqual(seen, {"1", "2", "3"})
            self.assertEqual(srv.proc.returncode, 0)

    def test_reload_scores_follow_the_new_model(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"), version="1", seed=1)
            srv = ts.Server(path, "--drain-delay-ms", "0").start()
            try:
                rows = ts.random_rows(10, __import__("random").Random(9))
                req = {"candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]}
                ts.make_model(path, version="2", seed=5)
                want = ts.reference_scores(path, rows)
                st, _, _ = srv.request("POST", "/admin/reload")
                self.assertEqual(st, 200)
                st, _, out = srv.rank(req)
                got = {c["id"]: c["score"] for c in out["ranked"]}
                for i in range(10):
                    self.assertAlmostEqual(got[i], want[i], delta=1e-5)
                _, _, m = srv.request("GET", "/metrics")
                self.assertIn('dcnserve_reloads_total{result="ok"} 1', m.decode())
            finally:
                srv.stop()


@unittest.skipUnless(os.path.exists(ts.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class WorkerStatesTest(unittest.TestCase):
    """Each worker's state (scratch, staging buffers, helper threads) is
    built before requests need it: at start, and on every reload before the
    swap; the counters in /metrics say how many were prepared and how many a
    worker had to build for a batch. Behaviour only, never timing. Each
    state has a team of helper threads (DCN_TEAM_MIN_BYTES=0), so under
    TSan the hand-over of threads made on the reload thread is checked too;
    under ASan, a failed reload that left states behind would leak."""

    WORKERS = 2
    PREPARED = "dcnserve_worker_states_prepared_total"
    BUILT = "dcnserve_worker_states_built_on_request_total"

    def counters(self, srv):
        """(prepared, built on request, reloads ok) from /metrics."""
        st, _, data = srv.request("GET", "/metrics")
        self.assertEqual(st, 200)
        vals = {}
        for line in data.decode().splitlines():
            name, _, v = line.partition(" ")
            vals[name] = v
        for name in (self.PREPARED, self.BUILT):
            if name not in vals:
                self.fail(f"{name} missing from /metrics")
        return (int(vals[self.PREPARED]), int(vals[self.BUILT]),
                int(vals['dcnserve_reloads_total{result="ok"}']))

    def traffic(self, srv, version):
        """Requests every worker takes part in: one large enough to be
        split across the workers, small ones (the team's case) one at a
        time and from concurrent clients. All must come from `version`."""
        rng = __import__("random").Random(int(version))
        big = {"candidates": [{"id": i, "features": r} for i, r in enumerate(ts.random_rows(200, rng))]}
        small = {"candidates": [{"id": i, "features": r} for i, r in enumerate(ts.random_rows(3, rng))]}
        answers = [srv.rank(big)] + [srv.rank(small) for _ in range(5)]

        def client():
            for _ in range(5):
                answers.append(srv.rank(small))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(answers), 21)
        for st, _, out in answers:
            self.assertEqual((st, out["model"]["version"]), (200, version), out)

    def test_states_prepared_at_start_and_on_reload(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"), version="1", seed=1)
            srv = ts.Server(path, "--workers", str(self.WORKERS), "--small-batch-threads", "2",
                            "--drain-delay-ms", "0", env={"DCN_TEAM_MIN_BYTES": "0"}).start()
            try:
                w = self.WORKERS
                self.assertEqual(self.counters(srv), (w, 0, 0))  # before any request
                self.traffic(srv, "1")
                self.assertEqual(self.counters(srv), (w, 0, 0))
                for k in (2, 3, 4):
                    ts.make_model(path, version=str(k), seed=k)
                    if k == 3:
                        srv.signal(signal.SIGHUP)
                        deadline = time.time() + 60
                        while time.time() < deadline and self.counters(srv)[2] < k - 1:
                            time.sleep(0.02)
                    else:
                        st, _, out = srv.request("POST", "/admin/reload")
                        self.assertEqual(st, 200, out)
                    self.assertEqual(self.counters(srv), (k * w, 0, k - 1))
                    self.traffic(srv, str(k))
                    self.assertEqual(self.counters(srv), (k * w, 0, k - 1))
                # a corrupt file: refused before anything is prepared; the
                # workers keep their states (ASan at exit: nothing leaked)
                write_garbage(path)
                st, _, out = srv.request("POST", "/admin/reload")
                self.assertEqual(st, 422, out)
                self.assertEqual(self.counters(srv), (4 * w, 0, 3))
                self.traffic(srv, "4")
                self.assertEqual(self.counters(srv), (4 * w, 0, 3))
            finally:
                srv.stop()
            self.assertEqual(srv.proc.returncode, 0)


@unittest.skipUnless(os.path.exists(ts.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
@ts.dcnproc.also_with_loops(3)
class DrainTest(unittest.TestCase):
    def test_sigterm_drains_requests_in_flight(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"))
            # a 400 ms queue delay keeps requests in flight when SIGTERM lands
            srv = ts.Server(path, "--workers", "1", "--max-queue-delay-us", "400000",
                            "--max-batch-rows", "4096", "--drain-delay-ms", "600").start()
            results = []
            lock = threading.Lock()

            def client(k):
                st, _, out = srv.rank({"request_id": k, "candidates": [{"id": i, "features": {"I1": i}} for i in range(5)]})
                with lock:
                    results.append((k, st, out.get("request_id") if out else None))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            time.sleep(0.15)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            st, _, _ = srv.request("GET", "/v2/health/ready")
            self.assertEqual(st, 503)          # not ready at once
            st, _, _ = srv.request("GET", "/v2/health/live")
            self.assertEqual(st, 200)          # still serving during the drain delay
            st, _, out = srv.rank({"candidates": [{"id": 1}]})
            self.assertEqual(st, 200)
            for t in threads:
                t.join(30)
            srv.proc.wait(20)
            self.assertEqual(srv.proc.returncode, 0, srv.output())
            self.assertEqual(sorted(results), [(k, 200, k) for k in range(8)])
            self.assertIn('"msg":"stopped"', srv.output())
            srv.log.close()

    def test_drain_timeout_exits_1(self):
        # A 20 s queue delay holds the request in the queue past a 300 ms
        # drain timeout: the server gives up waiting, says so, and exits 1.
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"))
            srv = ts.Server(path, "--workers", "1", "--max-queue-delay-us", "20000000",
                            "--max-batch-rows", "4096", "--drain-delay-ms", "0",
                            "--drain-timeout-ms", "300").start()
            result = {}

            def client():
                try:
                    result["r"] = srv.rank({"candidates": [{"id": 1, "features": {"I1": 2}}]}, timeout=30)
                except OSError as e:  # the answer may be cut: the drain gave up
                    result["r"] = e

            t = threading.Thread(target=client)
            t.start()
            deadline = time.time() + 10
            while time.time() < deadline:
                _, _, m = srv.request("GET", "/metrics")
                if "dcnserve_queue_rows 1" in m.decode():
                    break
                time.sleep(0.02)
            t0 = time.time()
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(20)
            waited = time.time() - t0
            t.join(30)
            out = srv.output()
            self.assertEqual(srv.proc.returncode, 1, out)
            self.assertIn("drain deadline passed with requests in flight", out)
            self.assertLess(waited, 15, "the drain timeout did not cut the wait short")
            ts.check_sanitizer_output(out)
            srv.log.close()


def ipv6_loopback():
    """True if this host can listen on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@unittest.skipUnless(os.path.exists(ts.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
@unittest.skipUnless(ipv6_loopback(), "no IPv6 loopback here")
@ts.dcnproc.also_with_loops(3)
class Ipv6Test(unittest.TestCase):
    def start(self, path, host):
        """Starts dcnserve on host; returns (process, port, log file)."""
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen([ts.DCNSERVE, "--model", path, "--host", host, "--port", str(port),
                                 "--drain-delay-ms", "0"], stdout=log, stderr=log)
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None:
            try:
                if self.get("::1", port, "/v2/health/ready")[0] == 200:
                    return proc, port, log
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        log.seek(0)
        self.fail("dcnserve did not start on %s:\n%s" % (host, log.read().decode(errors="replace")))

    @staticmethod
    def get(host, port, path, method="GET", body=None):
        c = http.client.HTTPConnection(host, port, timeout=10)
        try:
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stop(self, proc, log):
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.seek(0)
        out = log.read().decode(errors="replace")
        log.close()
        self.assertEqual(proc.returncode, 0, out)
        ts.check_sanitizer_output(out)

    def test_listen_on_ipv6_loopback(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"))
            proc, port, log = self.start(path, "::1")
            try:
                st, data = self.get("::1", port, "/rank", "POST", json.dumps({"candidates": [{"id": 1}]}))
                self.assertEqual(st, 200, data)
                st, data = self.get("::1", port, "/admin/reload", "POST", "")
                self.assertEqual(st, 200, data)  # ::1 is a loopback client
            finally:
                self.stop(proc, log)

    def test_unspecified_address_takes_ipv4_too(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"))
            proc, port, log = self.start(path, "::")
            try:
                self.assertEqual(self.get("127.0.0.1", port, "/healthz")[0], 200)
                self.assertEqual(self.get("::1", port, "/healthz")[0], 200)
                st, data = self.get("127.0.0.1", port, "/admin/reload", "POST", "")
                self.assertEqual(st, 200, data)  # a v4-mapped loopback client
            finally:
                self.stop(proc, log)

    def test_bad_host_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            path = ts.make_model(os.path.join(d, "m.dcn"))
            for host in ("not-an-address", "::1::2", "127.0.0.256"):
                p = subprocess.run([ts.DCNSERVE, "--model", path, "--host", host],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn("bad --host", p.stderr)
                ts.check_sanitizer_output(p.stderr)


if __name__ == "__main__":
    unittest.main()
