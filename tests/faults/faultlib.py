"""faultlib — what the fault tests share: a dcnserve process under test, HTTP
on raw sockets, request bodies from real Criteo rows, and /proc readings.

DESIGN
- Standard library only; loopback only. Every wait is bounded: a helper that
  waits takes a timeout and fails the test rather than hang.
- The server is the real binary (env DCNSERVE, default build/release) on a
  free loopback port, serving the bundled default model or a golden model
  with the same feature names (tests/golden/wide_criteo_like.dcn), so the same
  requests are valid for both and a reload can alternate between them. The
  process, its output and plain HTTP requests are tests/lib/dcnproc.py's;
  Server here adds raw-body /rank and the /proc and /metrics readings.
- Every fault test class runs twice: with the server's default event loops
  (one on a 2-core machine) and as <Class>Loops3 with --loops 3
  (dcnproc.also_with_loops), so each fault is also met with connections on
  several loops.
- Under a sanitizer build (the path of DCNSERVE names asan or tsan, or
  valgrind) the tests keep their counts but relax resident-memory bounds,
  which the sanitizers' own allocators make meaningless.
- No assertion here or in the tests is about speed: timeouts only bound how
  long a test may take, except "ready within N s" checks stated as such.
"""
import csv
import json
import os
import random
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import dcnproc  # noqa: E402
from dcnproc import DCNSERVE, SANITIZED  # noqa: E402,F401 (the tests read fl.SANITIZED)

MODEL = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")
ALT_MODEL = os.path.join(ROOT, "tests", "golden", "wide_criteo_like.dcn")
ROWS_CSV = os.path.join(ROOT, "data", "criteo_test_1999_unlabeled.csv")
HAVE_SERVER = os.path.exists(DCNSERVE) and os.path.exists(MODEL)

_rows = None


def criteo_rows():
    """The real Criteo rows as feature dicts (missing values left out).
    Safe from several client threads: the list is published only when full
    (a half-read list seen by another thread made randrange fail)."""
    global _rows
    if _rows is None:
        rows = []
        with open(ROWS_CSV, newline="") as f:
            for rec in csv.DictReader(f):
                feats = {}
                for k, v in rec.items():
                    if not v or k in ("Id", "Label"):
                        continue
                    feats[k] = int(v) if k.startswith("I") else v
                rows.append(feats)
        _rows = rows
    return _rows


def rank_body(n, rng=None, request_id=None, context=True):
    """A POST /rank body of n candidates drawn from the real rows; the user
    side (I1..I4, C1..C4) goes in the context when context is true."""
    rng = rng or random.Random(n)
    rows = criteo_rows()
    cands = []
    ctx = {}
    for i in range(n):
        feats = dict(rows[rng.randrange(len(rows))])
        if context:
            for k in ("I1", "I2", "I3", "I4", "C1", "C2", "C3", "C4"):
                v = feats.pop(k, None)
                if i == 0 and v is not None:
                    ctx[k] = v
        cands.append({"id": i, "features": feats})
    req = {"candidates": cands}
    if ctx:
        req["context"] = ctx
    if request_id is not None:
        req["request_id"] = request_id
    return json.dumps(req, separators=(",", ":")).encode()


class Server(dcnproc.Server):
    """dcnproc.Server serving MODEL unless told otherwise; output() keeps the
    last 20,000 characters (shown when a test fails), rank() takes and
    returns raw bytes."""

    LOG_TAIL_CHARS = 20000

    def __init__(self, model=MODEL, *args, port=None, env=None):
        super().__init__(model, *args, port=port, env=env)

    def rank(self, body, timeout=30):
        return self.request("POST", "/rank", body, timeout=timeout)

    def model_version(self):
        st, _, data = self.request("GET", "/v1/model")
        m = json.loads(data)
        return m.get("name"), m.get("version")

    def mapped_files(self, suffix=".dcn"):
        """Distinct mappings of files ending in suffix (model files, their
        replaced or deleted versions included)."""
        seen = set()
        with open(f"/proc/{self.proc.pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    name = parts[5].strip()
                    if name.replace(" (deleted)", "").endswith(suffix):
                        seen.add((parts[3], parts[4], name))
        return seen

    def metric(self, name):
        """Sum of every sample of a Prometheus metric family (0 if absent)."""
        _, _, data = self.request("GET", "/metrics")
        total = 0.0
        for line in data.decode().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def http_request_bytes(body, path="/rank", keep_alive=True, extra=""):
    """The bytes of one POST with a JSON body."""
    conn = "keep-alive" if keep_alive else "close"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {conn}\r\n{extra}\r\n")
    return head.encode() + body


class ResponseReader:
    """Incremental parser of HTTP/1.1 responses with a Content-Length (all
    dcnserve answers have one): feed bytes, take complete responses."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data

    def take(self):
        """Returns (status, headers dict, body) or None if incomplete."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        hdrs = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        if len(self.buf) < end + 4 + n:
            return None
        body = self.buf[end + 4:end + 4 + n]
        self.buf = self.buf[end + 4 + n:]
        return status, hdrs, body


def read_response(sock, timeout=30):
    """Reads one response from a blocking socket: (status, headers, body), or
    None if the server closed the connection first."""
    sock.settimeout(timeout)
    rd = ResponseReader()
    while True:
        got = rd.take()
        if got:
            return got
        data = sock.recv(65536)
        if not data:
            return None
        rd.feed(data)


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_peer(sock, timeout):
    """True if the peer closes (or resets) the connection within timeout s."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def copy_into_place(src, dst):
    """Deploys src at dst the safe way: a temporary copy renamed over dst."""
    tmp = dst + ".tmp"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)


def write_into_place(data, dst):
    tmp = dst + ".tmp"
    with open(tmp, "wb") as g:
        g.write(data)
    os.replace(tmp, dst)
