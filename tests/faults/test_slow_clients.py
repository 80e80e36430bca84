"""Fault tests: slow and idle clients against the real dcnserve binary.

- slowloris: connections that trickle their headers, or their body, one byte
  at a time, up to a few short of the connection limit, must not stop normal
  clients from being answered (and correctly);
- connections that stay idle (nothing sent, half a request sent, or a
  keep-alive connection after its answer) are closed by the server once
  --idle-timeout-s passes.
"""
import os
import selectors
import socket
import threading
import time
import unittest

import faultlib as fl


def trickle(socks_payloads, stop, step_s):
    """Sends each socket's payload one byte per step_s seconds, all sockets
    in turn, until stop is set or every payload is sent."""
    pos = [0] * len(socks_payloads)
    while not stop.is_set():
        busy = False
        for i, (s, payload) in enumerate(socks_payloads):
            if pos[i] < len(payload):
                busy = True
                try:
                    s.send(payload[pos[i]:pos[i] + 1])
                except OSError:
                    pos[i] = len(payload)
                    continue
                pos[i] += 1
        if not busy:
            return
        stop.wait(step_s)


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class SlowClientTest(unittest.TestCase):
    LIMIT = 128

    def setUp(self):
        self.srv = fl.Server(fl.MODEL, "--workers", "1", "--max-connections", str(self.LIMIT),
                             "--drain-delay-ms", "0").start()

    def tearDown(self):
        code = self.srv.stop()
        out = self.srv.output()
        self.srv.close()
        self.assertEqual(code, 0, out)

    def test_slowloris_up_to_the_limit_leaves_normal_clients_served(self):
        body = fl.rank_body(10)
        full = fl.http_request_bytes(body)
        n_slow = self.LIMIT - 8
        slow = []
        for i in range(n_slow):
            s = fl.connect(self.srv.port)
            if i % 2:   # headers trickled byte by byte
                slow.append((s, full[:len(full) - len(body) - 2]))
            else:       # headers at once, then the body byte by byte
                s.sendall(full[:len(full) - len(body)])
                slow.append((s, body))
        stop = threading.Event()
        t = threading.Thread(target=trickle, args=(slow, stop, 0.05))
        t.start()
        try:
            want = None
            for i in range(40):
                st, _, out = self.srv.rank(body, timeout=10)
                self.assertEqual(st, 200, out)
                if want is None:
                    want = out
                # the ranking itself (latencies aside) is what it was
                self.assertEqual(out.split(b'"latency_us"')[0], want.split(b'"latency_us"')[0])
            st, _, _ = self.srv.request("GET", "/v2/health/ready", timeout=10)
            self.assertEqual(st, 200)
        finally:
            stop.set()
            t.join(10)
            for s, _ in slow:
                s.close()

    def test_slow_body_is_answered_once_complete(self):
        body = fl.rank_body(3)
        s = fl.connect(self.srv.port)
        try:
            s.sendall(fl.http_request_bytes(body)[:-len(body)])
            for i in range(len(body)):
                s.send(body[i:i + 1])
                if i % 64 == 0:
                    time.sleep(0.001)
            got = fl.read_response(s, timeout=10)
            self.assertIsNotNone(got)
            self.assertEqual(got[0], 200, got)
        finally:
            s.close()


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class IdleReapTest(unittest.TestCase):
    def test_idle_connections_are_closed(self):
        srv = fl.Server(fl.MODEL, "--idle-timeout-s", "1", "--drain-delay-ms", "0").start()
        try:
            silent = fl.connect(srv.port)
            half = fl.connect(srv.port)
            half.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Le")
            body = fl.rank_body(2)
            kept = fl.connect(srv.port)
            kept.sendall(fl.http_request_bytes(body))
            got = fl.read_response(kept, timeout=10)
            self.assertEqual(got[0], 200)
            base = srv.n_fds()
            # bounded wait: the timeout is 1 s; allow 10
            for name, s in (("silent", silent), ("half a request", half), ("keep-alive", kept)):
                self.assertTrue(fl.closed_by_peer(s, 10), name + " connection not reaped")
                s.close()
            deadline = time.monotonic() + 10
            while srv.n_fds() > base - 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertLessEqual(srv.n_fds(), base - 3, "the server kept the reaped sockets open")
            st, _, _ = srv.rank(body)
            self.assertEqual(st, 200)
        finally:
            self.assertEqual(srv.stop(), 0, srv.output())
            srv.close()


if __name__ == "__main__":
    unittest.main()
