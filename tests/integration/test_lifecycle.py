"""Integration tests of dcnserve's lifecycle against the real binary: model
reload (HTTP and SIGHUP) under traffic, a failed reload keeping the old
model, and the SIGTERM drain with requests in flight (none lost, exit 0).
Helpers come from test_server.py."""
import os
import signal
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


if __name__ == "__main__":
    unittest.main()
