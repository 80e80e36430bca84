"""Fault tests: clients that go away.

- clients that send a request and close the socket while it waits in the
  queue cost nothing lasting: the server stays ready, answers the next
  client, and its file descriptors and memory return to where they were;
- a client that resets the connection (RST) in the middle of sending a body
  leaves no trace either.
"""
import socket
import struct
import time
import unittest

import faultlib as fl


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class DisconnectTest(unittest.TestCase):
    def setUp(self):
        # one worker and a 200 ms batching delay keep requests queued long
        # enough for their clients to leave first; batches of at most 8,000
        # rows (one round of 40 x 200), so the warm-up can size the worker's
        # scratch for the largest batch the test makes
        self.srv = fl.Server(fl.MODEL, "--workers", "1", "--max-queue-delay-us", "200000",
                             "--max-batch-rows", "8000", "--drain-delay-ms", "0").start()

    def tearDown(self):
        code = self.srv.stop()
        out = self.srv.output()
        self.srv.close()
        self.assertEqual(code, 0, out)
        self.assertNotIn("completed while queued", out)

    def test_disconnect_while_queued(self):
        body = fl.rank_body(200)
        for n in (8000, 200):                   # warm up: buffers sized once, for the largest batch
            st, _, _ = self.srv.rank(fl.rank_body(n))
            self.assertEqual(st, 200)
        base_fds = self.srv.n_fds()
        base_rss = self.srv.rss_kb()
        for rnd in range(5):
            socks = []
            for i in range(40):
                s = fl.connect(self.srv.port)
                s.sendall(fl.http_request_bytes(body))
                socks.append(s)
            time.sleep(0.02)
            for i, s in enumerate(socks):
                if i % 2:   # abortive close: RST instead of FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        st, _, out = self.srv.rank(body)
        self.assertEqual(st, 200, out[:300])
        st, _, _ = self.srv.request("GET", "/v2/health/ready")
        self.assertEqual(st, 200)
        self.assertTrue(wait_until(lambda: self.srv.n_fds() <= base_fds, 10),
                        f"fds {base_fds} -> {self.srv.n_fds()}")
        if not fl.SANITIZED:
            self.assertLess(self.srv.rss_kb() - base_rss, 32 * 1024)

    def test_reset_in_the_middle_of_a_body(self):
        body = fl.rank_body(300)
        base_fds = self.srv.n_fds()
        for cut in (1, 100, len(body) // 2, len(body) - 1):
            s = fl.connect(self.srv.port)
            s.sendall(fl.http_request_bytes(body)[:-len(body) + cut])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        st, _, _ = self.srv.rank(body)
        self.assertEqual(st, 200)
        self.assertTrue(wait_until(lambda: self.srv.n_fds() <= base_fds, 10),
                        f"fds {base_fds} -> {self.srv.n_fds()}")


if __name__ == "__main__":
    unittest.main()
