"""dcnproc — one real dcnserve process for the tests and the deploy scripts:
started on a free loopback port, waited for until ready, spoken to over
HTTP, stopped with SIGTERM, its output kept for failure messages and for
sanitizer and memcheck reports.

Users: tests/integration/test_server.py (and the integration tests built on
it), tests/faults/faultlib.py, tests/tools/test_tools_http_parity.py,
deploy/soak/wrkrun.py and deploy/load/run.py. Each adds what only it needs in
a subclass or a wrapper; the class attributes of Server are what they tune.

DESIGN
- Standard library only; loopback only. Every wait is bounded: start, stop
  and each request take a timeout, and a server that hangs is killed, never
  waited for without end.
- The binary is env DCNSERVE (default build/release/dcnserve under the
  repository root) unless the caller names one (the deploy scripts' --server).
- A free port is found by binding port 0 and closing it, so another process
  may take it before dcnserve binds it: a server that exits before it is
  ready is started again on another free port (START_ATTEMPTS in all). A
  port the caller chose is kept: a restart on the same port is what such a
  caller tests, and an exit there is an answer, not a race.
- The server's stdout and stderr go to one anonymous temporary file that
  lives until close(); output() reads it with pread, so reading never moves
  the offset the server writes at (parent and child share it).
- Event loops: a test class decorated with also_with_loops(n) runs as
  written and once more as a subclass <Class>Loops<n>, whose servers all get
  --loops n (the module's LOOPS while its tests and class set-up run), so a
  test written once covers one loop and several.
- Timeouts only bound how long a broken server can hold a run. Under a
  sanitizer or valgrind (the DCNSERVE path names asan, tsan or valgrind)
  they are longer: start-up and the drain are several times slower there.
"""
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DCNSERVE = os.environ.get("DCNSERVE", os.path.join(ROOT, "build", "release", "dcnserve"))
SANITIZED = any(s in DCNSERVE for s in ("asan", "tsan", "valgrind"))
HOST = "127.0.0.1"

# Reports of ASan, LSan, UBSan and TSan: under a sanitizer build the server
# must never print one (UBSan and TSan keep running after a report); under
# valgrind (deploy/soak/valgrind-dcnserve.sh) memcheck's summary must say 0.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")
VALGRIND_ERRORS = re.compile(r"ERROR SUMMARY: [1-9]")


def check_sanitizer_output(out):
    """Raises AssertionError quoting the server's log if it holds a
    sanitizer or memcheck report."""
    for mark in SANITIZER_MARKS:
        if mark in out:
            raise AssertionError(f"sanitizer report in the server's output:\n{out}")
    if VALGRIND_ERRORS.search(out):
        raise AssertionError(f"memcheck errors in the server's output:\n{out}")


LOOPS = None   # --loops of the servers started; None: the server's default


@contextlib.contextmanager
def loops(n):
    """Servers started inside get --loops n."""
    global LOOPS
    old, LOOPS = LOOPS, n
    try:
        yield
    finally:
        LOOPS = old


def also_with_loops(*counts):
    """Class decorator for a unittest.TestCase: adds to its module, for
    each n in counts, a subclass <Class>Loops<n> whose servers (started in
    setUpClass or in a test) get --loops n."""
    def deco(cls):
        mod = sys.modules[cls.__module__]
        for n in counts:
            sub = type(f"{cls.__name__}Loops{n}", (cls,), {"__module__": cls.__module__})

            def run(self, result=None, _n=n, _sub=sub):
                with loops(_n):
                    return super(_sub, self).run(result)

            def set_up_class(c, _n=n, _sub=sub):
                with loops(_n):
                    super(_sub, c).setUpClass()

            sub.run = run
            sub.setUpClass = classmethod(set_up_class)
            setattr(mod, sub.__name__, sub)
        return cls
    return deco


def free_port():
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A dcnserve process on a loopback port (self.port), with its output in
    a temporary file. Not started by the constructor: start() returns self,
    so Server(...).start() reads as one step. The caller owns the process
    and ends it with stop() (graceful) or kill(), then close()."""

    READY_PATH = "/v2/health/ready"                      # 200 once it serves
    START_TIMEOUT_S = 60.0 if SANITIZED else 20.0        # per attempt
    STOP_TIMEOUT_S = 60.0 if SANITIZED else 30.0         # SIGTERM to SIGKILL
    START_ATTEMPTS = 5                                   # lost port races
    POLL_S = 0.005                                       # readiness poll gap
    LOG_TAIL_CHARS = None                                # output(): all of it

    def __init__(self, model, *args, binary=None, port=None, env=None):
        self.binary = binary or DCNSERVE
        self.model = model
        self.args = list(args)
        self.port = port
        self.fixed_port = port is not None
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.log = tempfile.TemporaryFile()

    def start(self, timeout=None):
        """Starts the process and waits until READY_PATH answers 200 (at
        most timeout s, START_TIMEOUT_S by default, per attempt); returns
        self. Raises RuntimeError quoting the server's output if it exited
        on every attempt or did not become ready in time (it is killed)."""
        timeout = timeout or self.START_TIMEOUT_S
        attempts = 1 if self.fixed_port else self.START_ATTEMPTS
        for _ in range(attempts):
            if not self.fixed_port:
                self.port = free_port()
            self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=self.log, env=self.env)
            if self.wait_ready(timeout):
                return self
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"dcnserve did not become ready within {timeout} s:\n"
                                   + self.output())
        raise RuntimeError(f"dcnserve exited (status {self.proc.returncode}) before it was ready, "
                           f"{attempts} time(s):\n" + self.output())

    def argv(self):
        """The command line of one attempt, once self.port is chosen: the
        model, host and port as flags, then self.args. A subclass may pass
        them another way (tests/integration/test_config.py: variables).
        --loops LOOPS comes first when the module's LOOPS is set and the
        caller's args name no --loops."""
        extra = ["--loops", str(LOOPS)] if LOOPS and "--loops" not in self.args else []
        return [self.binary, "--model", self.model, "--host", HOST, "--port", str(self.port)] + extra + self.args

    def wait_ready(self, timeout):
        """Polls READY_PATH until timeout s pass; True once it answers 200,
        False at the deadline or as soon as the process has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.request("GET", self.READY_PATH, timeout=1)[0] == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(self.POLL_S)
        return False

    def output(self):
        """What the server printed so far (its last LOG_TAIL_CHARS
        characters when that is set), decoded leniently."""
        fd = self.log.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return text[-self.LOG_TAIL_CHARS:] if self.LOG_TAIL_CHARS else text

    def request(self, method, path, body=None, headers=None, timeout=30):
        """One request on a fresh connection. A dict or list body is sent as
        JSON; any body is sent as application/json unless headers name a
        Content-Type. Returns (status, headers by lower-case name, body
        bytes); connection failures raise OSError."""
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if body is not None and "Content-Type" not in hdrs:
                hdrs["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        finally:
            c.close()

    def request_json(self, method, path, body=None, **kw):
        """request(), with the answer's body parsed as JSON (None if empty)."""
        st, hdrs, data = self.request(method, path, body, **kw)
        return st, hdrs, json.loads(data) if data else None

    def rss_kb(self):
        """The process's resident memory in KiB (/proc), 0 if not found."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def n_fds(self):
        """How many file descriptors the process holds open (/proc)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL if still running, and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout=None):
        """SIGTERM, then wait (SIGKILL after timeout s, STOP_TIMEOUT_S by
        default); returns the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout or self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        """Kills the process if it still runs and drops its output."""
        self.kill()
        self.log.close()
