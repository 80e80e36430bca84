"""Integration tests of configuration through the environment, against the
real dcnserve binary (issue 15: --int8's variable came out as DCNSERVE_INT
plus a control character, so DCNSERVE_INT8=1, as the container and
Kubernetes examples set options, was ignored without a word).

For every option --help lists (so a new option is covered as soon as it is
in the table), a server is started with only that option's DCNSERVE_*
variable set to a value other than its default, and the start-up
"configuration" log line must show that value, for that option alone, as
coming from the environment; where the option has an effect a client can
see (/v1/model, /metrics, the "listening" line, an answer), that effect is
checked too. The model, host and port always come from their variables.
Also: flags win over variables, and a DCNSERVE_* variable that names no
option is a warning at start-up (the first lines logged), with the closest
option's name.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_server import DCNSERVE, Server, dcnfile, make_model  # noqa: E402
import dcnproc  # noqa: E402


def help_options():
    """[(flag, variable, default text)] in the order --help prints them."""
    out = subprocess.run([DCNSERVE, "--help"], capture_output=True, timeout=30).stdout.decode("utf-8")
    found = re.findall(r"^  --(\S+) .*\n +\[(\S+), default ([^\]]*)\]$", out, re.M)
    assert found, out
    return found


def documented_variable(flag):
    """An option's variable by the documented rule: DCNSERVE_ and the flag
    upper-cased, '-' as '_' (digits stay digits)."""
    return "DCNSERVE_" + flag.upper().replace("-", "_")


def log_lines(srv):
    """The server's log so far, as parsed JSON objects (every line must be
    one)."""
    return [json.loads(line) for line in srv.output().splitlines() if line.strip()]


class EnvServer(Server):
    """A server whose model, host and port come from DCNSERVE_MODEL,
    DCNSERVE_HOST and DCNSERVE_PORT instead of flags, and whose environment
    holds no other DCNSERVE_* variable than those the test names."""

    def __init__(self, model, *args, env=None):
        super().__init__(model, *args)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DCNSERVE_")}
        self.env.update(env or {})

    def argv(self):
        # model None: a repository from DCNSERVE_MODEL_REPOSITORY, the file's variable set empty
        self.env.update(DCNSERVE_MODEL=self.model or "", DCNSERVE_HOST=dcnproc.HOST, DCNSERVE_PORT=str(self.port))
        return [self.binary] + self.args

    def config(self):
        """The "configuration" line's object (exactly one is logged)."""
        lines = [o for o in log_lines(self) if o["msg"] == "configuration"]
        assert len(lines) == 1, self.output()
        return lines[0]

    def listening(self):
        return next(o for o in log_lines(self) if o["msg"] == "listening")


ONE = {"candidates": [{"id": 1, "features": {"I1": 1}}]}

# Values for options whose default plus one (or a flipped boolean) would not
# do: values from a fixed set, strings, and times a test should not wait for.
VALUES = {
    "model-repository": "(set to the test's repository)",
    "busy-status": "429",
    "log-level": "debug",
    "admin-token": "s3cret",
    "drain-delay-ms": "1",
    "idle-timeout-s": "1",
    "workers": "3",
    "max-batch-rows": "7",
    "max-candidates": "2",
    "max-body-bytes": "300",
    "decode-offload-bytes": "4096",
    "loops": "3",
}


def check_workers(t, srv, v):
    t.assertEqual(srv.listening()["workers"], int(v))
    t.assertIn(f"dcnserve_workers {v}\n", srv.request("GET", "/metrics")[2].decode())


def check_max_batch_rows(t, srv, v):
    t.assertEqual(srv.listening()["max_batch_rows"], int(v))


def check_max_candidates(t, srv, v):
    n = int(v)
    st, _, out = srv.rank({"candidates": [{"id": i} for i in range(n + 1)]})
    t.assertEqual((st, out["error"]["code"]), (413, "too_many_candidates"))
    t.assertEqual(srv.rank({"candidates": [{"id": i} for i in range(n)]})[0], 200)


def check_max_body_bytes(t, srv, v):
    body = json.dumps({"candidates": [{"id": "x" * 50} for _ in range(8)]})
    t.assertGreater(len(body), int(v))
    st, _, data = srv.request("POST", "/rank", body)
    t.assertEqual((st, json.loads(data)["error"]["code"]), (413, "body_too_large"))
    t.assertEqual(srv.rank(ONE)[0], 200)


def check_lenient(t, srv, v):
    t.assertEqual(srv.rank({"candidates": [{"id": 1, "features": {"nope": 1}}]})[0], 200)


def check_int8(t, srv, v):
    t.assertEqual(srv.request_json("GET", "/v1/model")[2]["dense_precision"], "int8")


def check_bf16(t, srv, v):
    t.assertEqual(srv.request_json("GET", "/v1/model")[2]["dense_precision"], "bf16")
    t.assertEqual(srv.rank(ONE)[0], 200)


def check_admin_token(t, srv, v):
    t.assertEqual(srv.request("POST", "/admin/reload")[0], 403)
    st, _, data = srv.request("POST", "/admin/reload", headers={"Authorization": f"Bearer {v}"})
    t.assertEqual(st, 200, data)
    t.assertNotIn(v, srv.output(), "the admin token reached the log")


def check_access_log(t, srv, v):
    t.assertEqual(srv.rank(ONE)[0], 200)
    deadline = time.monotonic() + 10
    while not any(o["msg"] == "request" for o in log_lines(srv)):
        t.assertLess(time.monotonic(), deadline, srv.output())
        time.sleep(0.01)


def check_idle_timeout(t, srv, v):
    s = socket.create_connection((dcnproc.HOST, srv.port), timeout=int(v) + 20)
    try:
        start = time.monotonic()
        t.assertEqual(s.recv(1), b"", "an idle connection was not closed")
        t.assertLess(time.monotonic() - start, int(v) + 15)
    finally:
        s.close()


# Effects a client can see; the other options show only in the
# configuration line (they shape queues, drains and threads).
def check_loops(t, srv, v):
    t.assertIn(f"dcnserve_loops {v}\n", srv.request("GET", "/metrics")[2].decode())


EFFECTS = {
    "workers": check_workers,
    "loops": check_loops,
    "max-batch-rows": check_max_batch_rows,
    "max-candidates": check_max_candidates,
    "max-body-bytes": check_max_body_bytes,
    "lenient": check_lenient,
    "int8": check_int8,
    "bf16": check_bf16,
    "admin-token": check_admin_token,
    "access-log": check_access_log,
    "idle-timeout-s": check_idle_timeout,
}

# Given as variables by EnvServer in every run.
ALWAYS_FROM_ENV = ("model", "host", "port")


@unittest.skipUnless(os.path.exists(DCNSERVE) and dcnfile is not None, "dcnserve or dcnfile missing")
class EnvConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = make_model(os.path.join(cls.tmp.name, "tiny.dcn"), name="tiny", version="3")
        cls.repo = os.path.join(cls.tmp.name, "repo")
        os.makedirs(os.path.join(cls.repo, "ranker", "4"))
        shutil.copyfile(cls.model, os.path.join(cls.repo, "ranker", "4", "tiny.dcn"))
        cls.options = help_options()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start(self, *args, env=None):
        srv = EnvServer(self.model, *args, env=env).start()
        self.addCleanup(srv.stop)
        return srv

    def test_help_names_every_variable_from_its_flag(self):
        for flag, var, _ in self.options:
            self.assertEqual(var, documented_variable(flag), f"--{flag}")
            self.assertRegex(var, r"^DCNSERVE_[A-Z0-9_]+$")
        self.assertIn(("int8", "DCNSERVE_INT8", "0"), self.options)
        self.assertEqual(len({v for _, v, _ in self.options}), len(self.options))

    def test_model_host_and_port_from_variables(self):
        srv = self.start("--drain-delay-ms", "0")
        cfg = srv.config()
        self.assertEqual(cfg["options"]["model"], self.model)
        self.assertEqual(cfg["options"]["host"], dcnproc.HOST)
        self.assertEqual(cfg["options"]["port"], srv.port)
        self.assertEqual(sorted(cfg["from_env"]), sorted(ALWAYS_FROM_ENV))
        self.assertEqual(cfg["from_flags"], ["drain-delay-ms"])
        self.assertEqual((srv.listening()["host"], srv.listening()["port"]), (dcnproc.HOST, srv.port))
        self.assertEqual(srv.request_json("GET", "/v1/model")[2]["name"], "tiny")
        # the configuration line lists every option --help does, in its order
        self.assertEqual(list(cfg["options"]), [f for f, _, _ in self.options])

    def test_every_option_through_its_variable(self):
        base = self.start("--drain-delay-ms", "0").config()["options"]
        tried = set(ALWAYS_FROM_ENV)
        for flag, _, _ in self.options:
            if flag in ALWAYS_FROM_ENV:
                continue
            var = documented_variable(flag)  # as README and the deploy examples name it
            default = base[flag]
            if flag in VALUES:
                value = VALUES[flag]
            elif isinstance(default, bool):
                value = "0" if default else "1"
            elif isinstance(default, int):
                value = str(default + 1)
            else:
                self.fail(f"--{flag}: a new string option needs a test value in VALUES")
            with self.subTest(option=flag, variable=var, value=value):
                # every other run drains at once (a flag); this one cannot
                args = () if flag == "drain-delay-ms" else ("--drain-delay-ms", "0")
                repo = flag == "model-repository"
                if repo:
                    value = self.repo
                srv = EnvServer(None if repo else self.model, *args, env={var: value}).start()
                try:
                    cfg = srv.config()
                    got = cfg["options"]
                    want = {"true": True, "false": False}.get(value, value)
                    if isinstance(default, bool):
                        want = value == "1"
                    elif isinstance(default, int) or (default == "auto" and value.isdigit()):
                        want = int(value)
                    if flag == "admin-token":
                        want = "(set)"
                    self.assertEqual(got[flag], want, f"{var}={value} did not set --{flag}")
                    self.assertNotEqual(got[flag], default)
                    self.assertIn(flag, cfg["from_env"])
                    for other, v in got.items():
                        if other not in (flag, "port") and not (repo and other == "model"):
                            self.assertEqual(v, base[other], f"{var}={value} changed --{other}")
                    if repo:  # the repository's model serves, under its directory's name
                        out = srv.request_json("POST", "/rank", dict(ONE, model="ranker"))[2]
                        self.assertEqual(out["model"], {"name": "ranker", "version": "4"}, out)
                    if flag in EFFECTS:
                        EFFECTS[flag](self, srv, value)
                finally:
                    srv.stop()
                tried.add(flag)
        self.assertEqual(tried, {f for f, _, _ in self.options})

    def test_flags_win_over_variables(self):
        srv = self.start("--drain-delay-ms", "0", "--workers", "2", "--no-int8",
                         env={"DCNSERVE_WORKERS": "3", "DCNSERVE_INT8": "1", "DCNSERVE_MAX_BATCH_ROWS": "9"})
        cfg = srv.config()
        self.assertEqual(srv.listening()["workers"], 2)
        self.assertEqual(srv.listening()["max_batch_rows"], 9)
        self.assertEqual(srv.request_json("GET", "/v1/model")[2]["dense_precision"], "as stored")
        self.assertIn("workers", cfg["from_flags"])
        self.assertIn("int8", cfg["from_flags"])
        self.assertNotIn("workers", cfg["from_env"])
        self.assertIn("max-batch-rows", cfg["from_env"])

    def test_unknown_variables_are_warned_about_first(self):
        srv = self.start("--drain-delay-ms", "0", env={
            "DCNSERVE_INT": "1", "DCNSERVE_WORKER": "2", "DCNSERVE_NOT_AN_OPTION_AT_ALL": "x",
            "DCNSERVE_INT8": "1"})
        lines = log_lines(srv)
        warned = {o["variable"]: o.get("did_you_mean") for o in lines if "variable" in o}
        self.assertEqual(warned, {"DCNSERVE_INT": "DCNSERVE_INT8", "DCNSERVE_WORKER": "DCNSERVE_WORKERS",
                                  "DCNSERVE_NOT_AN_OPTION_AT_ALL": None})
        # the warnings are the first lines, before the configuration and the model load
        self.assertEqual([o["level"] for o in lines[:3]], ["warn"] * 3)
        self.assertEqual(lines[3]["msg"], "configuration")
        self.assertEqual(srv.rank(ONE)[0], 200)  # a warning, not a refusal
        self.assertEqual(srv.request_json("GET", "/v1/model")[2]["dense_precision"], "int8")
        quiet = self.start("--drain-delay-ms", "0")
        self.assertFalse([o for o in log_lines(quiet) if o["level"] == "warn" and "variable" in o])


if __name__ == "__main__":
    unittest.main()
