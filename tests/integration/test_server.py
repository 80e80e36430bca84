"""Integration tests of the dcnserve binary: each test class starts the real
server (env DCNSERVE) on a free loopback port with a small model written by
tools/dcnfile.py, and talks HTTP to it with the standard library; the
process and the HTTP helpers are tests/lib/dcnproc.py's.

Covers: POST /rank against an independent reference (tests/ref/dcn_ref.py)
and the golden cases when present, top_k and stable ties, context vs
per-candidate features, every error status, health/model/metrics endpoints,
concurrent clients, the huge-page report and warning. Reload and drain live
in test_lifecycle.py.
"""
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import dcnproc  # noqa: E402
# test_lifecycle.py and test_golden_http.py use these through this module too
from dcnproc import DCNSERVE, check_sanitizer_output  # noqa: E402

try:
    import dcnfile  # noqa: E402
except Exception:  # pragma: no cover - numpy missing
    dcnfile = None

# ---------------------------------------------------------------- helpers

TINY_SPEC = {
    "dense": [
        {"name": "I1", "transform": "log", "log_shift": 1.0, "log_floor": 1.0, "clip_min": 0.0},
        {"name": "I2", "mean": 0.5, "std": 2.0, "default": 1.0},
    ],
    "sparse": [
        {"name": "C1", "vocab_size": 50, "dim": 4, "mapping": "hex_mod", "missing_row": 0},
        {"name": "C2", "vocab_size": 20, "dim": 4, "mapping": "hash_mod", "hash_seed": 7,
         "max_ids": 3, "pooling": "mean"},
        {"name": "C3", "vocab_size": 10, "dim": 4, "mapping": "index", "unknown_row": 9},
    ],
    "cross": {"kind": "lowrank", "layers": 2, "rank": 3},
    "deep": [8],
    "combine": "stacked",
}


def make_model(path, name="tiny", version="1", seed=0):
    """Writes a small model with random weights (deterministic by seed)."""
    spec = dict(TINY_SPEC, name=name, version=version)
    meta = dcnfile.spec_metadata(spec)
    plain = {k: v.value for k, v in meta.items()}
    rng = random.Random(seed)

    def rand(shape):
        if len(shape) == 1:
            return [rng.gauss(0, 0.4) for _ in range(shape[0])]
        return [rand(shape[1:]) for _ in range(shape[0])]

    weights = {}
    for tname, (shape, allowed) in dcnfile.expected_tensors(plain).items():
        if tname.startswith("vocab.") or tname.endswith(".scale"):
            continue
        weights[tname] = rand(list(shape))
    dcnfile.build_model_file(path, spec, weights)
    return path


class Server(dcnproc.Server):
    """dcnproc.Server whose rank() takes and returns JSON objects, and whose
    stop() also drops the output and fails the test on a sanitizer or
    memcheck report in it."""

    def rank(self, req, **kw):
        return self.request_json("POST", "/rank", req, **kw)

    def stop(self):
        super().stop()
        out = self.output() if not self.log.closed else ""
        self.log.close()
        check_sanitizer_output(out)


def random_rows(n, rng):
    rows = []
    for _ in range(n):
        r = {}
        if rng.random() < 0.9:
            r["I1"] = rng.choice([0, 1, 3, 17, 250, -2, 1.5])
        if rng.random() < 0.7:
            r["I2"] = rng.uniform(-3, 3)
        if rng.random() < 0.9:
            r["C1"] = rng.choice(["", "0a", "ff", "68fd1e64", "zz", 12])
        if rng.random() < 0.8:
            k = rng.randint(0, 3)
            r["C2"] = [rng.choice(["a", "b", "café", "x y", 5, -12]) for _ in range(k)]
        if rng.random() < 0.8:
            r["C3"] = rng.choice([0, 3, 9, 10, -1, "4", "007", "x"])
        rows.append(r)
    return rows


def reference_scores(model_path, rows):
    """Scores rows with the independent NumPy reference (tests/ref)."""
    import dcn_ref
    ref = dcn_ref.RefModel(model_path)
    _, scores, _ = ref.forward(rows)
    return [float(s) for s in scores]


@unittest.skipUnless(os.path.exists(DCNSERVE) and dcnfile is not None, "dcnserve or dcnfile missing")
@dcnproc.also_with_loops(3)
class RankTest(unittest.TestCase):
    EXTRA_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = make_model(os.path.join(cls.tmp.name, "tiny.dcn"), name="tiny", version="7")
        cls.srv = Server(cls.model, "--workers", "2", "--max-candidates", "3000",
                         "--max-body-bytes", "1000000", "--drain-delay-ms", "0", *cls.EXTRA_ARGS).start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def test_rank_matches_reference(self):
        rng = random.Random(1)
        rows = random_rows(40, rng)
        req = {"request_id": "r-1", "candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]}
        st, h, out = self.srv.rank(req)
        self.assertEqual(st, 200, out)
        self.assertEqual(out["request_id"], "r-1")
        self.assertEqual(out["model"], {"name": "tiny", "version": "7"})
        want = reference_scores(self.model, rows)
        got = {c["id"]: c["score"] for c in out["ranked"]}
        self.assertEqual(sorted(got), list(range(40)))
        for i in range(40):
            self.assertAlmostEqual(got[i], want[i], delta=1e-5, msg=f"candidate {i}: {rows[i]}")
        scores = [c["score"] for c in out["ranked"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertEqual([c["rank"] for c in out["ranked"]], list(range(1, 41)))
        for k in ("total", "parse", "queue", "inference", "encode"):
            self.assertIn(k, out["latency_us"])
        # Server-Timing: the body's latencies in milliseconds, three decimals
        lat = out["latency_us"]
        self.assertEqual(h["server-timing"], ", ".join(
            f"{k};dur={lat[k] // 1000}.{lat[k] % 1000:03d}" for k in ("parse", "queue", "inference", "encode", "total")))

    def test_top_k_and_stable_ties(self):
        same = {"I1": 3, "C1": "0a"}
        cands = [{"id": f"c{i}", "features": same} for i in range(10)]
        cands.append({"id": "other", "features": {"I1": 250, "C1": "ff"}})
        st, _, out = self.srv.rank({"candidates": cands, "top_k": 4})
        self.assertEqual(st, 200, out)
        self.assertEqual(len(out["ranked"]), 4)
        tied = [c["id"] for c in out["ranked"] if c["id"] != "other"]
        self.assertEqual(tied, [f"c{i}" for i in range(len(tied))])  # input order kept
        st, _, out = self.srv.rank({"candidates": cands, "top_k": 0})
        self.assertEqual((st, out["ranked"]), (200, []))
        st, _, out = self.srv.rank({"candidates": cands, "top_k": 100})
        self.assertEqual(len(out["ranked"]), 11)

    def test_context_equals_per_candidate(self):
        rng = random.Random(2)
        rows = random_rows(30, rng)
        ctx = {"I2": 0.25, "C2": ["a", "b"], "C3": 4}
        # per-candidate copy of the context, candidate values winning
        full = [dict(ctx, **r) for r in rows]
        st1, _, a = self.srv.rank({"context": ctx, "candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]})
        st2, _, b = self.srv.rank({"candidates": [{"id": i, "features": r} for i, r in enumerate(full)]})
        self.assertEqual((st1, st2), (200, 200))
        sa = {c["id"]: c["score"] for c in a["ranked"]}
        sb = {c["id"]: c["score"] for c in b["ranked"]}
        for i in range(30):
            self.assertAlmostEqual(sa[i], sb[i], delta=1e-6)
        want = reference_scores(self.model, full)
        for i in range(30):
            self.assertAlmostEqual(sa[i], want[i], delta=1e-5)
        # a context-only request (nothing per row): every feature shared
        st, _, c = self.srv.rank({"context": {"I1": 5, "C1": "ff", "C2": "a"},
                                  "candidates": [{"id": 1}, {"id": 2, "features": {}}]})
        self.assertEqual(st, 200)
        want = reference_scores(self.model, [{"I1": 5, "C1": "ff", "C2": "a"}] * 2)
        for item in c["ranked"]:
            self.assertAlmostEqual(item["score"], want[0], delta=1e-5)

    def test_large_request_split_and_logits(self):
        rng = random.Random(3)
        rows = random_rows(2500, rng)
        st, _, out = self.srv.rank({"candidates": [{"id": i, "features": r} for i, r in enumerate(rows)],
                                    "return": {"logits": True}})
        self.assertEqual(st, 200)
        want = reference_scores(self.model, rows)
        got = {c["id"]: c for c in out["ranked"]}
        for i in range(0, 2500, 7):
            self.assertAlmostEqual(got[i]["score"], want[i], delta=1e-5)
            self.assertAlmostEqual(1 / (1 + math.exp(-got[i]["logit"])), got[i]["score"], delta=1e-5)

    def test_concurrent_clients(self):
        rng = random.Random(4)
        reqs = []
        for k in range(24):
            rows = random_rows(rng.randint(1, 60), rng)
            ctx = {"I2": rng.uniform(-1, 1)} if k % 2 else {}
            reqs.append((ctx, rows))
        wants = [reference_scores(self.model, [dict(c, **r) for r in rows]) for c, rows in reqs]
        errors = []

        def client(idx):
            try:
                for k in range(idx, len(reqs), 6):
                    ctx, rows = reqs[k]
                    st, _, out = self.srv.rank({"request_id": k, "context": ctx,
                                                "candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]})
                    if st != 200 or out["request_id"] != k:
                        errors.append((k, st, out))
                        continue
                    for c in out["ranked"]:
                        if abs(c["score"] - wants[k][c["id"]]) > 1e-5:
                            errors.append((k, c))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertEqual(errors, [])

    def test_strict_and_lenient(self):
        st, _, out = self.srv.rank({"candidates": [{"id": 1, "features": {"I1": 1, "nope": 3}}]})
        self.assertEqual(st, 400)
        self.assertEqual(out["error"]["code"], "unknown_feature")
        self.assertIn("nope", out["error"]["message"])
        st, _, out = self.srv.rank({"strict": False, "candidates": [{"id": 1, "features": {"I1": 1, "nope": 3}}]})
        self.assertEqual(st, 200)

    def test_bad_requests_are_400(self):
        cases = [
            ('{"candidates": [', "invalid_json"),
            ('[1, 2]', "invalid_request"),
            ('{"candidates": 3}', "invalid_request"),
            ('{"candidates": [{"features": {}}]}', "invalid_request"),
            ('{"candidates": [{"id": 1.5}]}', "invalid_request"),
            ('{"candidates": [], "top_k": -1}', "invalid_request"),
            ('{"candidates": [], "bogus": 1}', "invalid_request"),
            ('{"candidates": [{"id": 1, "features": {"I1": "x"}}]}', "invalid_feature_value"),
            ('{"candidates": [{"id": 1, "features": {"C1": 1.5}}]}', "invalid_feature_value"),
            ('{"candidates": [{"id": 1, "features": {"C2": ["a", "b", "c", "d"]}}]}', "invalid_feature_value"),
            ('{"context": {"C3": {}}, "candidates": [{"id": 1}]}', "invalid_feature_value"),
            ('{"candidates": [{"id": 1, "features": {"I1": 1, "I1": 2}}]}', "invalid_json"),
        ]
        for body, code in cases:
            st, _, data = self.srv.request("POST", "/rank", body, {"Content-Type": "application/json"})
            out = json.loads(data)
            self.assertEqual((st, out["error"]["code"]), (400, code), body)

    def test_error_answers_are_utf8_json(self):
        # issue 15: an invalid_json message quotes the body near the fault
        # and cut U+1F300 in half: the 9-byte body below got an answer no
        # JSON parser took. Every error answer must be strict UTF-8 JSON,
        # for characters cut after each byte and for bytes that are not
        # UTF-8 at all (stray continuation, overlong, surrogate, past
        # U+10FFFF, 0xFE/0xFF).
        nine = b'["\\' + "\U0001F300".encode() + b'"]'
        self.assertEqual(len(nine), 9)
        bodies = [nine]
        for ch in ("\u00e9", "\u20ac", "\U0001F300", "\U0010FFFF"):
            raw = ch.encode()
            for cut in range(1, len(raw) + 1):
                for head in (b'["\\', b'["', b'{"', b'{"candidates": [], "', b'{"candidates": [{"id": "\\'):
                    bodies += [head + raw[:cut], head + raw[:cut] + b'"]']
        for bad in (b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                    b"\xf0\x80\x80\xaf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xfe", b"\xff",
                    b"\xc3\x28", b"\xe2\x28\xa1"):
            bodies += [b'["\\' + bad + b'"]', b'["' + bad + b'"]', b'{"' + bad + b'": 1}', bad]
        # names quoted in messages (64 bytes at most) are cut between characters
        long_key = "a" + "\u00e9" * 40
        bodies += [json.dumps({"candidates": [], long_key: 1}, ensure_ascii=False).encode(),
                   json.dumps({"context": {long_key: 1}, "candidates": []}, ensure_ascii=False).encode()]
        for body in bodies:
            st, _, data = self.srv.request("POST", "/rank", body, {"Content-Type": "application/json"})
            self.assertEqual(st, 400, body)
            text = data.decode("utf-8")  # strict: raises on any byte that is not UTF-8
            out = json.loads(text, parse_constant=lambda c: self.fail(f"non-JSON constant {c}"))
            self.assertIn(out["error"]["code"], ("invalid_json", "invalid_request", "unknown_feature"), body)
            self.assertIsInstance(out["error"]["message"], str)
            self.assertNotIn("\ud800", out["error"]["message"])
        st, _, data = self.srv.request("POST", "/rank", nine, {"Content-Type": "application/json"})
        msg = json.loads(data.decode("utf-8"))["error"]["message"]
        self.assertIn("invalid escape", msg)
        st, _, data = self.srv.request("POST", "/rank", bodies[-2], {"Content-Type": "application/json"})
        msg = json.loads(data.decode("utf-8"))["error"]["message"]
        self.assertIn('unknown field "a' + "\u00e9" * 31 + '"', msg)

    def test_http_errors(self):
        st, _, data = self.srv.request("GET", "/nope")
        self.assertEqual((st, json.loads(data)["error"]["code"]), (404, "not_found"))
        st, h, _ = self.srv.request("GET", "/rank")
        self.assertEqual(st, 405)
        self.assertIn("POST", h["allow"])
        st, _, _ = self.srv.request("POST", "/rank", "{}", {"Content-Type": "text/plain"})
        self.assertEqual(st, 415)
        # chunked (no Content-Length): 413 as soon as the body passes the
        # limit, then the connection is closed; the rest of what the client
        # sends may fail (the server no longer reads), the 413 is still there
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=30)
        try:
            s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(11):
                s.sendall(b"%x\r\n%s\r\n" % (100000, b"x" * 100000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except ConnectionResetError:
            pass
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:200])
        self.assertIn(b"body_too_large", data)
        cands = [{"id": i} for i in range(3001)]
        st, _, out = self.srv.rank({"candidates": cands})
        self.assertEqual((st, out["error"]["code"]), (413, "too_many_candidates"))

    def test_body_limit_checked_before_reading(self):
        # Content-Length over the limit: answered without sending the body
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        data = s.recv(4096).decode()
        s.close()
        self.assertTrue(data.startswith("HTTP/1.1 413"), data)

    def test_length_required(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
        data = s.recv(4096).decode()
        s.close()
        self.assertTrue(data.startswith("HTTP/1.1 411"), data)

    def test_chunked_body(self):
        body = json.dumps({"candidates": [{"id": "a", "features": {"I1": 2}}]}).encode()
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)

    def test_deadline_504(self):
        rows = random_rows(3000, random.Random(5))
        st, _, out = self.srv.rank({"deadline_ms": 1, "candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]})
        self.assertEqual((st, out["error"]["code"]), (504, "deadline_exceeded"))

    def test_health_model_metrics(self):
        for p in ("/v2/health/live", "/healthz", "/v2/health/ready", "/readyz"):
            st, _, _ = self.srv.request("GET", p)
            self.assertEqual(st, 200, p)
        st, _, data = self.srv.request("GET", "/v1/model")
        info = json.loads(data)
        self.assertEqual((st, info["name"], info["version"]), (200, "tiny", "7"))
        self.assertEqual([f["name"] for f in info["features"]["dense"]], ["I1", "I2"])
        self.assertEqual([f["name"] for f in info["features"]["sparse"]], ["C1", "C2", "C3"])
        self.assertEqual(info["architecture"]["cross"]["kind"], "lowrank")
        self.assertRegex(info["crc32"], "^[0-9a-f]{8}$")
        self.srv.rank({"candidates": [{"id": 1, "features": {"I1": 1}}]})
        st, h, data = self.srv.request("GET", "/metrics")
        text = data.decode()
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        self.assertRegex(text, r'dcnserve_requests_total\{handler="rank",code="200"\} [1-9]')
        self.assertRegex(text, r"dcnserve_candidates_scored_total [1-9]")
        self.assertIn('dcnserve_request_phase_seconds_count{phase="inference"}', text)
        self.assertIn('dcnserve_model_info{name="tiny",version="7"', text)
        self.assertIn("dcnserve_batch_rows_bucket", text)

    def test_int8_and_small_batch_threads(self):
        # --int8: the model's dense layers in INT8; scores close to float
        # (the tiny random model's raw dense inputs make it coarse: 0.1),
        # different somewhere, and said in /v1/model. A team of 3 threads
        # splits every layer of small batches (DCN_TEAM_MIN_BYTES=0).
        rows = random_rows(40, random.Random(11))
        req = {"candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]}
        st, _, base = self.srv.rank(req)
        self.assertEqual(st, 200, base)
        st, _, data = self.srv.request("GET", "/v1/model")
        self.assertEqual(json.loads(data)["dense_precision"], "as stored")
        env = dict(os.environ, DCN_TEAM_MIN_BYTES="0")
        srv = Server(self.model, "--int8", "--small-batch-threads", "3", "--drain-delay-ms", "0", env=env).start()
        try:
            st, _, data = srv.request("GET", "/v1/model")
            info = json.loads(data)
            self.assertEqual((st, info["dense_precision"]), (200, "int8"))
            self.assertGreater(info["dense_bytes"], 0)
            st, _, out = srv.rank(req)
            self.assertEqual(st, 200, out)
            want = {c["id"]: c["score"] for c in base["ranked"]}
            got = {c["id"]: c["score"] for c in out["ranked"]}
            self.assertEqual(set(got), set(want))
            self.assertLess(max(abs(got[i] - want[i]) for i in got), 0.1)
            self.assertTrue(any(got[i] != want[i] for i in got))
            for i in range(3):  # one candidate at a time: the team's case
                st, _, one = srv.rank({"candidates": [{"id": i, "features": rows[i]}]})
                self.assertEqual(st, 200, one)
                self.assertAlmostEqual(one["ranked"][0]["score"], got[i], delta=1e-6)
        finally:
            srv.stop()
        p = subprocess.run([DCNSERVE, "--model", self.model, "--small-batch-threads", "257"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("small-batch-threads", p.stderr)

    def test_admin_forbidden_with_token(self):
        # loopback is allowed by default; a token makes loopback insufficient
        srv = Server(self.model, "--admin-token", "s3cret", "--drain-delay-ms", "0").start()
        try:
            st, _, _ = srv.request("POST", "/admin/reload")
            self.assertEqual(st, 403)
            st, _, data = srv.request("POST", "/admin/reload", headers={"Authorization": "Bearer s3cret"})
            self.assertEqual(st, 200, data)
        finally:
            srv.stop()


class RankOffloadTest(RankTest):
    """Every RankTest again, with every body decoded on a worker thread
    (--decode-offload-bytes 0) instead of the event loop."""
    EXTRA_ARGS = ("--decode-offload-bytes", "0")

    def test_offload_and_inline_agree(self):
        rows = random_rows(50, random.Random(11))
        req = {"context": {"I2": 0.5}, "candidates": [{"id": i, "features": r} for i, r in enumerate(rows)]}
        other = Server(self.model, "--workers", "2", "--drain-delay-ms", "0",
                       "--decode-offload-bytes", "100000000").start()
        try:
            st1, _, a = self.srv.rank(req)
            st2, _, b = other.rank(req)
        finally:
            other.stop()
        self.assertEqual((st1, st2), (200, 200))
        self.assertEqual(a["ranked"], b["ranked"])


@unittest.skipUnless(os.path.exists(DCNSERVE) and dcnfile is not None, "dcnserve or dcnfile missing")
@dcnproc.also_with_loops(3)
class BusyTest(unittest.TestCase):
    def test_queue_full_is_503_with_retry_after(self):
        # A 2 s queue delay holds the first request's 30 rows in the queue
        # (the batch waits to fill), so the second cannot fit in 50 rows.
        with tempfile.TemporaryDirectory() as d:
            model = make_model(os.path.join(d, "m.dcn"))
            srv = Server(model, "--workers", "1", "--max-queue-rows", "50", "--max-batch-rows", "256",
                         "--max-queue-delay-us", "2000000", "--drain-delay-ms", "0").start()
            try:
                req = {"candidates": [{"id": i, "features": {"I1": i}} for i in range(30)]}
                first = {}
                t = threading.Thread(target=lambda: first.update(r=srv.rank(req)))
                t.start()
                deadline = time.time() + 5
                while time.time() < deadline:
                    _, _, m = srv.request("GET", "/metrics")
                    if "dcnserve_queue_rows 30" in m.decode():
                        break
                    time.sleep(0.02)
                st, h, out = srv.rank(req)
                self.assertEqual((st, out["error"]["code"]), (503, "queue_full"))
                self.assertEqual(h.get("retry-after"), "1")
                # now shedding (the queue is not below half): a large body is
                # refused at its headers, before a byte of it is sent
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n")
                data = b""
                while b"queue_full" not in data:
                    part = s.recv(4096)
                    if not part:
                        break
                    data += part
                s.close()
                self.assertTrue(data.startswith(b"HTTP/1.1 503"), data)
                self.assertIn(b"queue_full", data)
                self.assertIn(b"\r\nRetry-After: 1\r\n", data)
                t.join(30)
                self.assertEqual(first["r"][0], 200)  # flushed by the queue-delay timer
                _, _, data = srv.request("GET", "/metrics")
                self.assertIn('dcnserve_rejections_total{reason="queue_full"} 2', data.decode())
            finally:
                srv.stop()


@unittest.skipUnless(os.path.exists(DCNSERVE) and dcnfile is not None, "dcnserve or dcnfile missing")
class HugePagesTest(unittest.TestCase):
    """Dense layers of 2 MiB and more are asked into transparent huge pages;
    /v1/model says how many bytes and what the host's setting is, and the
    server warns at start-up and reload when the setting refuses them."""

    WIDE = 40000  # first deep layer's outputs: 14 x 40,000 floats packed, 2.24 MB

    def test_huge_page_bytes_and_setting(self):
        import numpy as np
        with tempfile.TemporaryDirectory() as tmp:
            spec = dict(TINY_SPEC, name="wide", version="1", deep=[self.WIDE, 16])
            plain = {k: v.value for k, v in dcnfile.spec_metadata(spec).items()}
            rng = np.random.default_rng(3)
            weights = {n: rng.normal(0, 0.01, shape).astype(np.float32)
                       for n, (shape, _) in dcnfile.expected_tensors(plain).items()
                       if not n.startswith("vocab.") and not n.endswith(".scale")}
            wide = os.path.join(tmp, "wide.dcn")
            dcnfile.build_model_file(wide, spec, weights)
            tiny = make_model(os.path.join(tmp, "tiny.dcn"))
            never = os.path.join(tmp, "thp-never")
            with open(never, "w") as f:
                f.write("always madvise [never]\n")
            warning = "transparent huge pages are off on this host"

            # The host's own setting, reported as the kernel gives it.
            host = "unknown"
            try:
                with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                    host = next((w[1:-1] for w in f.read().split() if w.startswith("[")), "unknown")
            except OSError:
                pass
            for model, env in ((wide, {}), (tiny, {}), (wide, {"DCN_THP_FILE": never}),
                               (tiny, {"DCN_THP_FILE": never})):
                srv = Server(model, "--drain-delay-ms", "0", env=env).start()
                try:
                    st, _, data = srv.request("GET", "/v1/model")
                    info = json.loads(data)
                    self.assertEqual(st, 200, data)
                    setting = "never" if env else host
                    self.assertEqual(info["huge_pages"], setting)
                    # Whole 2 MiB pages of each layer of 2 MiB or more, its
                    # tail in small pages: 14 -> 40,000 holds one (2.24
                    # MB); 40,000 -> 16, padded to a panel of nr outputs,
                    # one (2.56 MB) or two (5.12 MB). The tiny model has
                    # none, nor has the logit (a plain vector).
                    nr = 32 if info["kernels"] == "avx512" else 16
                    want = (1 + self.WIDE * nr * 4 // (2 << 20)) * (2 << 20) if model == wide else 0
                    self.assertEqual(info["huge_page_bytes"], want)
                    st, _, out = srv.rank({"candidates": [{"id": 1, "features": {"I1": 3}}]})
                    self.assertEqual(st, 200, out)
                    # The warning only where a refused setting meets large layers,
                    # at start-up and again at each reload.
                    if model == wide and setting == "never":
                        st, _, data = srv.request("POST", "/admin/reload")
                        self.assertEqual(st, 200, data)
                    text = srv.output()
                    self.assertIn('"huge_pages":"%s"' % setting, text)  # the listening line
                    expect = 2 if model == wide and setting == "never" else 0
                    self.assertEqual(text.count(warning), expect, text)
                finally:
                    srv.stop()


if __name__ == "__main__":
    unittest.main()
