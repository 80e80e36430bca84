"""The systemd unit (deploy/systemd/dcnserve.service): the hardening the
issue asks for is there, the stop timeout covers the server's drain, the
environment names real options, SIGHUP is the reload, and — where
systemd-analyze exists — `systemd-analyze verify` accepts the unit."""
import os
import shutil
import subprocess
import tempfile
import unittest

from deploy_support import ROOT, need_binary, read, server_options

UNIT = "deploy/systemd/dcnserve.service"


def parse_unit(text):
    """{section: [(key, value)]}, keeping repeated keys in order."""
    out, sec = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            sec = s.strip("[]")
            out.setdefault(sec, [])
            continue
        k, _, v = s.partition("=")
        out[sec].append((k.strip(), v.strip()))
    return out


class SystemdUnit(unittest.TestCase):
    def setUp(self):
        self.u = parse_unit(read(UNIT))
        self.svc = dict(self.u["Service"])
        self.all = self.u["Service"]

    def test_hardening(self):
        want = {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "MemoryDenyWriteExecute": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                "PrivateDevices": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
                "SystemCallArchitectures": "native", "CapabilityBoundingSet": ""}
        for k, v in want.items():
            self.assertEqual(self.svc.get(k), v, k)
        self.assertIn("AF_INET", self.svc["RestrictAddressFamilies"])
        self.assertTrue(any(k == "SystemCallFilter" and v == "@system-service" for k, v in self.all))

    def test_start_stop_reload(self):
        self.assertEqual(self.svc["ExecStart"].split()[0], "/usr/local/bin/dcnserve")
        self.assertIn("-HUP $MAINPID", self.svc["ExecReload"])
        self.assertEqual(self.svc["KillSignal"], "SIGTERM")
        self.assertEqual(self.u["Install"][0], ("WantedBy", "multi-user.target"))

    def test_environment_and_stop_timeout(self):
        need_binary(self)
        opts = server_options()
        env = {}
        for k, v in self.all:
            if k == "Environment":
                name, _, val = v.partition("=")
                env[name] = val
        for name in env:
            self.assertIn(name, opts, name)
        self.assertIn("DCNSERVE_MODEL", env)
        delay = int(env.get("DCNSERVE_DRAIN_DELAY_MS", opts["DCNSERVE_DRAIN_DELAY_MS"]))
        timeout = int(env.get("DCNSERVE_DRAIN_TIMEOUT_MS", opts["DCNSERVE_DRAIN_TIMEOUT_MS"]))
        self.assertGreater(int(self.svc["TimeoutStopSec"]), (delay + timeout) / 1000)

    def test_systemd_analyze_verify(self):
        sa = shutil.which("systemd-analyze")
        if not sa:
            self.skipTest("no systemd-analyze")
        with tempfile.TemporaryDirectory() as d:
            # verify wants ExecStart to exist: any executable stands in
            text = read(UNIT).replace("/usr/local/bin/dcnserve", "/bin/true")
            p = os.path.join(d, "dcnserve.service")
            with open(p, "w") as f:
                f.write(text)
            r = subprocess.run([sa, "verify", p], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("Unknown", r.stderr)


if __name__ == "__main__":
    unittest.main()
