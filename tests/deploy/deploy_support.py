"""deploy_support.py — helpers shared by the tests of deploy/ and the
Dockerfile: paths, YAML loading, the options the real dcnserve binary knows
(parsed from its --help) and a running binary to probe endpoints against.

Environment: DCNSERVE (server binary, default build/release/dcnserve)."""
import http.client
import json
import os
import re
import subprocess
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(ROOT, "deploy")
DCNSERVE = os.environ.get("DCNSERVE", os.path.join(ROOT, "build", "release", "dcnserve"))
GOLDEN_MODEL = os.path.join(ROOT, "tests", "golden", "context_segments.dcn")

try:
    import yaml
except ImportError:  # pragma: no cover - python3-yaml is in DEPS_PKGS
    yaml = None


def need_yaml(case):
    if yaml is None:
        case.skipTest("python3-yaml is not installed (make deps)")


def need_binary(case):
    if not os.access(DCNSERVE, os.X_OK):
        case.skipTest("no dcnserve binary at %s (make all)" % DCNSERVE)


def load_yaml_docs(rel):
    """All documents of a YAML file under the repository, None entries dropped."""
    with open(os.path.join(ROOT, rel)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


_options = None


def server_options():
    """{DCNSERVE_* variable: default text} as the binary's --help lists them."""
    global _options
    if _options is None:
        out = subprocess.run([DCNSERVE, "--help"], capture_output=True, text=True, timeout=10).stdout
        _options = dict(re.findall(r"\[(DCNSERVE_[A-Z0-9_]+), default ([^\]]+)\]", out))
    return _options


class Server:
    """The real dcnserve on a free loopback port with a golden model; use
    as a context manager. get(path) returns (status, body text)."""

    def __init__(self, model=GOLDEN_MODEL, extra=()):
        self.args = [DCNSERVE, "--model", model, "--host", "127.0.0.1", "--port", "0",
                     "--workers", "1", "--drain-delay-ms", "0", *extra]
        self.proc = None
        self.port = None

    def __enter__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCNSERVE_")}
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        deadline = time.time() + 15
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "listening":
                self.port = int(rec["port"])
                return self
        self.__exit__(None, None, None)
        raise RuntimeError("dcnserve did not start: %s" % " ".join(self.args))

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        return False

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()


class DeployTestCase(unittest.TestCase):
    """Base class: skips without python3-yaml."""

    def setUp(self):
        need_yaml(self)
