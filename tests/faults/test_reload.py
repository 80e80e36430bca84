"""Fault tests: model deploys while serving.

- 100 hot reloads under load, alternating two different models deployed by
  rename: no request fails, both models answer, the old mappings are
  released (once the load has stopped only the current model stays mapped:
  while requests are in flight each may legitimately hold an older one),
  and resident memory stays flat;
- a reload of a truncated, corrupt, empty or missing file is refused (422)
  and the old model keeps serving, under load;
- the model file replaced by rename (or deleted) while mapped: the server
  keeps serving the model it mapped, unchanged, until told to reload.
"""
import json
import os
import shutil
import tempfile
import threading
import time
import unittest

import faultlib as fl


class Load(threading.Thread):
    """Closed-loop clients on keep-alive connections; collects every status
    and the model versions seen."""

    def __init__(self, srv, n_threads=3, n_cands=30):
        super().__init__()
        self.srv, self.n_threads, self.n_cands = srv, n_threads, n_cands
        self.stop = threading.Event()
        self.bad = []
        self.models = set()
        self.count = 0
        self.lock = threading.Lock()

    def one(self, k):
        body = fl.rank_body(self.n_cands, request_id=k)
        sock = None
        while not self.stop.is_set():
            try:
                if sock is None:
                    sock = fl.connect(self.srv.port)
                sock.sendall(fl.http_request_bytes(body))
                got = fl.read_response(sock, timeout=30)
            except OSError as e:
                got = e
            with self.lock:
                self.count += 1
                if isinstance(got, tuple) and got[0] == 200:
                    self.models.add(json.loads(got[2])["model"]["name"])
                else:
                    self.bad.append(repr(got)[:300])
                    if sock:
                        sock.close()
                    sock = None
        if sock:
            sock.close()

    def run(self):
        ts = [threading.Thread(target=self.one, args=(k,)) for k in range(self.n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)

    def finish(self):
        self.stop.set()
        self.join(60)


@unittest.skipUnless(fl.HAVE_SERVER and os.path.exists(fl.ALT_MODEL), "dcnserve or models missing")
@fl.dcnproc.also_with_loops(3)
class ReloadFaultTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.tmp.name, "model.dcn")
        shutil.copyfile(fl.MODEL, self.path)
        self.srv = fl.Server(self.path, "--workers", "2", "--drain-delay-ms", "0").start()

    def tearDown(self):
        code = self.srv.stop()
        out = self.srv.output()
        self.srv.close()
        self.tmp.cleanup()
        self.assertEqual(code, 0, out)

    def reload(self):
        st, _, out = self.srv.request("POST", "/admin/reload")
        return st, out

    def test_100_reloads_under_load(self):
        load = Load(self.srv)
        load.start()
        rss = []
        try:
            time.sleep(0.2)
            for i in range(100):
                fl.copy_into_place(fl.ALT_MODEL if i % 2 == 0 else fl.MODEL, self.path)
                st, out = self.reload()
                self.assertEqual(st, 200, out)
                if i in (9, 99):
                    rss.append(self.srv.rss_kb())
        finally:
            load.finish()
        self.assertEqual(load.bad, [], f"{len(load.bad)} of {load.count} requests failed")
        self.assertEqual(load.models, {"criteo-dcn", "wide_criteo_like"})
        self.assertGreater(load.count, 100)
        # At rest only the current model is mapped: the last request holding
        # an older one releases it when MHD completes it, which may come just
        # after its client read the answer, so poll (a generous bound).
        deadline = time.monotonic() + 10
        mapped = self.srv.mapped_files()
        while len(mapped) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            mapped = self.srv.mapped_files()
        self.assertEqual(len(mapped), 1, mapped)
        self.assertEqual(self.srv.metric("dcnserve_inflight_requests"), 0)
        self.assertEqual(self.srv.metric("dcnserve_reloads_total"), 100)
        if not fl.SANITIZED:
            self.assertLess(rss[1] - rss[0], 16 * 1024, f"RSS after 10 and 100 reloads: {rss} KiB")

    def test_bad_files_keep_the_old_model(self):
        good = open(fl.MODEL, "rb").read()
        load = Load(self.srv)
        load.start()
        try:
            time.sleep(0.1)
            bad_files = [
                ("truncated", good[:len(good) // 2]),
                ("header only", good[:4096]),
                ("empty", b""),
                ("garbage", b"GGUF" + os.urandom(5000)),
                ("GGUF version 4", good[:4] + b"\x04" + good[5:]),
                ("n_kv 2^64-1", good[:16] + b"\xff" * 8 + good[24:]),
            ]
            for name, data in bad_files:
                fl.write_into_place(data, self.path)
                st, out = self.reload()
                self.assertEqual(st, 422, f"{name}: {out}")
                self.assertIn(b"reload_failed", out)
                self.assertEqual(self.srv.model_version(), ("criteo-dcn", "1"), name)
            os.unlink(self.path)
            st, out = self.reload()
            self.assertEqual(st, 422, out)
            os.mkdir(self.path)
            st, out = self.reload()
            self.assertEqual(st, 422, out)
            os.rmdir(self.path)
            fl.copy_into_place(fl.ALT_MODEL, self.path)
            st, out = self.reload()
            self.assertEqual(st, 200, out)
            st, _, got = self.srv.rank(fl.rank_body(3))
            self.assertEqual(json.loads(got)["model"]["name"], "wide_criteo_like")
        finally:
            load.finish()
        self.assertEqual(load.bad, [])
        self.assertIn("criteo-dcn", load.models)

    def test_file_replaced_or_deleted_while_mapped(self):
        body = fl.rank_body(40, request_id="r")
        st, _, want = self.srv.rank(body)
        self.assertEqual(st, 200)
        ranked = json.loads(want)["ranked"]
        fl.copy_into_place(fl.ALT_MODEL, self.path)       # renamed over, no reload
        for _ in range(20):
            st, _, got = self.srv.rank(body)
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(got)["ranked"], ranked)
        os.unlink(self.path)                               # and gone
        for _ in range(20):
            st, _, got = self.srv.rank(body)
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(got)["ranked"], ranked)
        self.assertTrue(any("(deleted)" in m[2] for m in self.srv.mapped_files()))
        st, out = self.reload()                            # nothing to load: keep serving
        self.assertEqual(st, 422, out)
        st, _, got = self.srv.rank(body)
        self.assertEqual(json.loads(got)["ranked"], ranked)


if __name__ == "__main__":
    unittest.main()
