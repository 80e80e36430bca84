"""Fault tests: stopping and restarting the server under load.

- SIGTERM under load loses no accepted request: clients keep sending (a new
  connection per request, and keep-alive connections) through the drain;
  every request the server took gets its full 200 answer; the others are
  refused: at connect, by a 503 "unavailable" with Retry-After (a request
  on a keep-alive connection after the listener closed), or by a reset of a
  connection that never got past the kernel's accept queue (a first
  request, no byte answered); the process exits 0;
- kill -9 under load, then a restart on the same port: ready again within a
  second for the default model (no waiting for TIME_WAIT sockets), and
  serving correct answers.
"""
import json
import signal
import socket
import threading
import time
import unittest

import faultlib as fl


class Client(threading.Thread):
    """Sends ranking requests until the server refuses connections or stop is
    set; records (request_id, outcome) for every request it sent."""

    def __init__(self, port, body_n, tag, keep_alive, stop):
        super().__init__()
        self.port, self.tag, self.keep_alive, self.stop = port, tag, keep_alive, stop
        self.body_n = body_n
        self.results = []       # (request_id, "ok" | "refused: ..." | "lost: ...")
        self.refused = 0

    def run(self):
        sock = None
        k = 0
        while not self.stop.is_set():
            rid = f"{self.tag}-{k}"
            k += 1
            body = fl.rank_body(self.body_n, request_id=rid)
            if sock is None:
                self.served_on_sock = 0
                try:
                    sock = fl.connect(self.port, timeout=5)
                except OSError:
                    self.refused += 1
                    return   # the listener is gone: the drain has started
            try:
                sock.sendall(fl.http_request_bytes(body, keep_alive=self.keep_alive))
            except OSError as e:
                # never reached the server's request handling
                self.results.append((rid, "unsent: " + type(e).__name__))
                sock.close()
                sock = None
                continue
            first = not self.keep_alive or self.served_on_sock == 0
            try:
                got = fl.read_response(sock, timeout=30)
            except OSError as e:
                got = e
            if isinstance(got, tuple) and got[0] == 200 and json.loads(got[2])["request_id"] == rid:
                self.results.append((rid, "ok"))
                self.served_on_sock += 1
            elif isinstance(got, tuple) and got[0] == 503 and b"unavailable" in got[2] and "retry-after" in got[1]:
                self.results.append((rid, "refused: 503"))
            elif isinstance(got, ConnectionResetError) and first:
                self.results.append((rid, "refused: reset in the accept queue"))
            else:
                self.results.append((rid, f"lost: {got!r:.200}"))
            if not self.keep_alive or not isinstance(got, tuple) or got[1].get("connection") == "close":
                sock.close()
                sock = None
        if sock:
            sock.close()


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class SigtermTest(unittest.TestCase):
    def run_drain(self, keep_alive):
        srv = fl.Server(fl.MODEL, "--workers", "2", "--drain-delay-ms", "300",
                        "--drain-timeout-ms", "20000").start()
        stop = threading.Event()
        clients = [Client(srv.port, 50, f"c{i}", keep_alive, stop) for i in range(8)]
        try:
            for c in clients:
                c.start()
            time.sleep(0.5)
            srv.signal(signal.SIGTERM)
            code = srv.proc.wait(30)
        finally:
            stop.set()
            for c in clients:
                c.join(30)
            srv.kill()
        results = [r for c in clients for r in c.results]
        lost = [r for r in results if r[1].startswith("lost")]
        ok = [r for r in results if r[1] == "ok"]
        out = srv.output()
        srv.close()
        self.assertEqual(code, 0, out)
        self.assertGreater(len(ok), 8)
        self.assertEqual(lost, [], f"{len(lost)} of {len(results)} requests lost")
        return len(ok)

    # Regression: the last request to complete during the drain used to stop
    # the daemon from inside MHD's completion callback (MHD then touched the
    # freed response: "Failed to lock mutex", SIGABRT at exit).
    def test_sigterm_under_load_new_connections(self):
        self.run_drain(keep_alive=False)

    def test_sigterm_under_load_keep_alive(self):
        self.run_drain(keep_alive=True)


@unittest.skipUnless(fl.HAVE_SERVER, "dcnserve not built")
@fl.dcnproc.also_with_loops(3)
class Kill9RestartTest(unittest.TestCase):
    def test_kill9_and_restart_ready_within_a_second(self):
        srv = fl.Server(fl.MODEL, "--workers", "2").start()
        port = srv.port
        body = fl.rank_body(20, request_id="x")
        st, _, want = srv.rank(body)
        self.assertEqual(st, 200)
        stop = threading.Event()
        clients = [Client(port, 20, f"k{i}", True, stop) for i in range(4)]
        for c in clients:
            c.start()
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        stop.set()
        for c in clients:
            c.join(30)
        srv.close()
        # same port at once: connections of the killed process are in TIME_WAIT
        again = fl.Server(fl.MODEL, "--workers", "2", port=port)
        t0 = time.monotonic()
        try:
            again.start(timeout=10)
            ready_s = time.monotonic() - t0
            # the requirement: ready again within 1 s (a generous bound for a
            # sanitizer build, whose start-up is several times slower)
            self.assertLess(ready_s, 5.0 if fl.SANITIZED else 1.0, f"ready after {ready_s:.3f} s")
            st, _, got = again.rank(body)
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(got)["ranked"], json.loads(want)["ranked"])
        finally:
            code = again.stop()
            out = again.output()
            again.close()
        self.assertEqual(code, 0, out)


if __name__ == "__main__":
    unittest.main()
