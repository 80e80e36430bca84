"""Fault tests: every size a client controls is limited, and a refusal comes
before the bytes are read or the memory is spent.

- a body whose Content-Length is over --max-body-bytes is refused (413)
  while the client has sent only the headers;
- a chunked body that grows past the limit is refused (413) without the
  server reading it to the end;
- headers larger than the per-connection memory, a huge URL: refused or
  closed, the server keeps serving;
- candidates over --max-candidates, ids over a feature's max_ids, deeply
  nested JSON, very long strings: 4xx naming the problem;
- after all of it, resident memory is where it was (bounded growth).
"""
import json
import socket
import unittest

import faultlib as fl


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class LimitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = fl.Server(fl.MODEL, "--workers", "1", "--max-body-bytes", "100000",
                            "--max-candidates", "50", "--drain-delay-ms", "0").start()

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        out = cls.srv.output()
        cls.srv.close()
        assert code == 0, out

    def test_content_length_over_limit_refused_before_the_body(self):
        s = fl.connect(self.srv.port)
        try:
            s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000000\r\n\r\n")
            got = fl.read_response(s, timeout=10)   # nothing of the body was sent
            self.assertIsNotNone(got, "closed without an answer")
            self.assertEqual(got[0], 413, got)
            self.assertIn(b"body_too_large", got[2])
        finally:
            s.close()

    # Regression: a chunked body past --max-body-bytes used to be read to its
    # end before the 413, so a client could stream forever. Now the server
    # writes the 413 and closes as soon as the limit is passed.
    def test_chunked_body_over_limit_refused_early(self):
        # Offer 2,560x the limit. Kernel buffers on loopback can take tens of
        # MB before the server reads a byte (tcp_rmem autotuning), so "sent"
        # says little until it is far past them: a server that reads the body
        # to its end takes all 256 MB; one that stops at the limit makes the
        # sends fail (or answers) long before.
        offer = 256 << 20
        s = fl.connect(self.srv.port)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            s.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
            sent = 0
            got = None
            s.settimeout(30)
            try:
                while sent < offer:
                    s.sendall(chunk)
                    sent += 16384
                    if sent > 100_000:   # past the limit: has the server answered?
                        s.setblocking(False)
                        try:
                            data = s.recv(65536)
                        except BlockingIOError:
                            data = None
                        s.setblocking(True)
                        s.settimeout(30)
                        if data is not None:
                            rd = fl.ResponseReader()
                            rd.feed(data)
                            got = rd.take() or (0, {}, data)
                            break
            except (BrokenPipeError, ConnectionResetError):
                pass
            if got is None:
                try:
                    got = fl.read_response(s, timeout=10)
                except (ConnectionResetError, socket.timeout):
                    got = None
            self.assertLess(sent, offer, "the server read the whole body past its limit")
            if got is not None and got[0]:   # an answer, if one came through, is the 413
                self.assertEqual(got[0], 413, got)
                self.assertIn(b"body_too_large", got[2])
        finally:
            s.close()
        st, _, _ = self.srv.rank(fl.rank_body(2))
        self.assertEqual(st, 200)

    def test_huge_headers_and_url(self):
        for raw in (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
                    b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /v2/health/live HTTP/1.1\r\n" + b"X-H: 1\r\n" * 20_000 + b"\r\n"):
            s = fl.connect(self.srv.port)
            try:
                try:
                    s.sendall(raw)
                    got = fl.read_response(s, timeout=10)
                except (BrokenPipeError, ConnectionResetError):
                    got = None
                if got is not None:   # an answer must be a refusal
                    self.assertGreaterEqual(got[0], 400, got)
            finally:
                s.close()
        st, _, _ = self.srv.request("GET", "/v2/health/live")
        self.assertEqual(st, 200)

    def test_request_sizes(self):
        cases = [
            ({"candidates": [{"id": 1}] * 51}, 413, b"too_many_candidates"),
            ({"candidates": [{"id": 1, "features": {"C1": ["a", "b"]}}]}, 400, b"C1"),
            ({"candidates": [{"id": "x" * 90_000}]}, 200, None),
            ({"candidates": [{"id": 1, "features": {"C1": "y" * 90_000}}]}, 200, None),
            ({"candidates": [{"id": 1, "features": {"x" * 90_000: 1}}]}, 400, b"unknown_feature"),
        ]
        for req, status, needle in cases:
            st, _, out = self.srv.rank(json.dumps(req).encode())
            self.assertEqual(st, status, out[:300])
            if needle:
                self.assertIn(needle, out)
        deep = b"[" * 40_000 + b"]" * 40_000
        st, _, out = self.srv.rank(b'{"candidates":' + deep + b"}")
        self.assertEqual(st, 400, out[:300])
        deep = b'{"candidates":[{"id":1}],"request_id":' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001
        st, _, out = self.srv.rank(deep)
        self.assertIn(st, (400, 413), out[:300])

    def test_memory_after_refusals_is_bounded(self):
        before = self.srv.rss_kb()
        body = b'{"candidates":[' + b",".join([b'{"id":1,"features":{"I1":"x"}}'] * 2000) + b"]}"
        for _ in range(50):
            st, _, _ = self.srv.rank(body)
            self.assertIn(st, (400, 413))
        after = self.srv.rss_kb()
        if not fl.SANITIZED:
            self.assertLess(after - before, 32 * 1024, f"RSS {before} -> {after} KiB")


if __name__ == "__main__":
    unittest.main()
