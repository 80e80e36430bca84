"""The Dockerfile, .dockerignore and the HEALTHCHECK probe (deploy/probe.c),
checked without a container engine (make docker-check builds and runs the
image for real): multi-stage on Debian bookworm / bookworm-slim with only the
runtime libraries, no -march=native, no heredoc RUN, exec-form ENTRYPOINT and
HEALTHCHECK without curl, numeric non-root USER, EXPOSE = DCNSERVE_PORT,
every ENV a real option, every COPY source in the build context; then the
probe compiled and run against the real binary."""
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

from deploy_support import DCNSERVE, ROOT, Server, need_binary, read, server_options


def instructions(text):
    """[(INSTRUCTION, argument text)] with continuation lines joined."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        cur += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def stages(ins):
    st = []
    for k, a in ins:
        if k == "FROM":
            st.append({"from": a.split()[0], "ins": []})
        else:
            st[-1]["ins"].append((k, a))
    return st


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = read("Dockerfile")
        self.ins = instructions(self.text)
        self.st = stages(self.ins)
        self.rt = self.st[-1]
        self.rt_ins = dict((k, a) for k, a in self.rt["ins"])

    def test_two_stages_on_debian_bookworm(self):
        self.assertGreaterEqual(len(self.st), 2)
        self.assertEqual(self.st[0]["from"], "debian:bookworm")
        self.assertEqual(self.rt["from"], "debian:bookworm-slim")

    def test_runtime_installs_only_the_runtime_libraries(self):
        runs = [a for k, a in self.rt["ins"] if k == "RUN"]
        pkgs = set()
        for r in runs:
            m = re.search(r"apt-get install ([^&]*)", r)
            if m:
                pkgs |= {w for w in shlex.split(m.group(1)) if not w.startswith("-")}
        self.assertEqual(pkgs, {"libmicrohttpd12", "libjansson4", "libuv1"})
        self.assertIn("--no-install-recommends", " ".join(runs))
        self.assertIn("rm -rf /var/lib/apt/lists/*", " ".join(runs))

    def test_portable_and_builder_compatible(self):
        code = " ".join(a for _, a in self.ins)
        make_code = "\n".join(l for l in read("Makefile").splitlines() if not l.lstrip().startswith("#"))
        for flag in ("-march=native", "-mtune=native", "-ffast-math"):
            self.assertNotIn(flag, code)
            self.assertNotIn(flag, make_code)
        for k, a in self.ins:
            if k == "RUN":
                self.assertNotRegex(a, r"<<-?\s*['\"]?[A-Z]", "heredoc RUN: not supported by the builder here")

    def test_exec_form_entrypoint_and_healthcheck_without_curl(self):
        ep = json.loads(self.rt_ins["ENTRYPOINT"])
        self.assertIsInstance(ep, list)
        self.assertTrue(ep[0].endswith("/dcnserve"), ep)
        hc = self.rt_ins["HEALTHCHECK"]
        cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
        self.assertIsInstance(cmd, list, "exec form: no shell needed in the image")
        self.assertNotIn("curl", hc)
        self.assertNotIn("wget", hc)
        self.assertTrue(cmd[0].endswith("dcnserve-probe"))
        self.assertEqual(cmd[1], "/v2/health/ready")

    def test_non_root_numeric_user_and_exposed_port(self):
        user = self.rt_ins["USER"]
        self.assertRegex(user, r"^\d+(:\d+)?$")
        self.assertNotEqual(int(user.split(":")[0]), 0)
        env = dict(re.findall(r"(\w+)=(\S+)", self.rt_ins["ENV"]))
        self.assertEqual(self.rt_ins["EXPOSE"].split("/")[0], env["DCNSERVE_PORT"])
        self.assertTrue(env["DCNSERVE_MODEL"].startswith("/models/"))

    def test_env_names_are_real_options(self):
        need_binary(self)
        env = dict(re.findall(r"(\w+)=(\S+)", self.rt_ins["ENV"]))
        for k in env:
            self.assertIn(k, server_options())

    def test_copied_sources_exist_and_pass_dockerignore(self):
        rules = [l.strip() for l in read(".dockerignore").splitlines()
                 if l.strip() and not l.startswith("#")]

        def included(path):
            ok = True
            for r in rules:
                neg = r.startswith("!")
                pat = r[1:] if neg else r
                if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("/") + "/*"):
                    ok = neg
            return ok

        for st in self.st:
            for k, a in st["ins"]:
                if k != "COPY" or "--from=" in a:
                    continue
                srcs = [w for w in shlex.split(a) if not w.startswith("--")][:-1]
                for src in srcs:
                    p = os.path.join(ROOT, src)
                    self.assertTrue(os.path.exists(p), src)
                    files = [src] if os.path.isfile(p) else [
                        os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(p) for f in fs]
                    kept = [f for f in files if included(f)]
                    self.assertTrue(kept, "%s is wholly excluded by .dockerignore" % src)
        for needed in ("Makefile", "model/dcn.c", "model/kern_simd.inc", "server/main.c", "proto/rk.h",
                       "deploy/probe.c", "model/default/criteo-dcn.dcn"):
            self.assertTrue(included(needed), needed)
        for excluded in ("build/release/dcnserve", ".git/HEAD", "data/x.csv", "tests/golden/x.dcn"):
            self.assertFalse(included(excluded), excluded)


class RuntimeLibraries(unittest.TestCase):
    """Every shared library the built server needs comes from a package the
    runtime stage installs, or from glibc in the base image: a new -l in
    the Makefile must show up in the Dockerfile too (make docker-check would
    catch it, but only when the container check runs)."""

    BASE = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libgcc_s.so.1"}
    FROM_PACKAGE = {"libmicrohttpd.so.12": "libmicrohttpd12", "libjansson.so.4": "libjansson4",
                    "libuv.so.1": "libuv1"}
    # Runtimes of a sanitizer build (make check runs this test against
    # build/asan): the image never ships one (its build stage makes the
    # release binary), so they are left out; every other library still
    # needs its package.
    SANITIZER_RUNTIME = re.compile(r"^lib(asan|ubsan|tsan|lsan|hwasan)\.so\.\d+$")

    def test_needed_libraries_are_installed_by_the_runtime_stage(self):
        need_binary(self)
        readelf = shutil.which("readelf")
        if not readelf:
            self.skipTest("no readelf")
        out = subprocess.run([readelf, "-d", DCNSERVE], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
        self.assertTrue(needed)
        runtime = instructions(read("Dockerfile"))
        runtime = runtime[max(i for i, (k, _) in enumerate(runtime) if k == "FROM"):]
        installs = " ".join(a for k, a in runtime if k == "RUN")
        for lib in sorted(l for l in needed - self.BASE if not self.SANITIZER_RUNTIME.match(l)):
            self.assertIn(lib, self.FROM_PACKAGE, "%s: which Debian package? add it here and to the Dockerfile" % lib)
            self.assertIn(self.FROM_PACKAGE[lib], installs, lib)


class Probe(unittest.TestCase):
    """deploy/probe.c built with the host compiler, run against the binary."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dcnprobe-")
        cls.exe = os.path.join(cls.tmp, "dcnserve-probe")
        cc = shutil.which(os.environ.get("CC", "cc"))
        cls.err = None
        if not cc:
            cls.err = "no C compiler"
            return
        r = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes", "-o", cls.exe,
                            os.path.join(ROOT, "deploy", "probe.c")], capture_output=True, text=True)
        if r.returncode:
            cls.err = "probe.c does not compile cleanly:\n" + r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_probe(self, *args, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith("DCNSERVE_")}
        e.update(env or {})
        return subprocess.run([self.exe, *args], capture_output=True, text=True, env=e, timeout=10).returncode

    def test_probe(self):
        if self.err == "no C compiler":
            self.skipTest(self.err)
        self.assertIsNone(self.err, self.err)
        need_binary(self)
        with Server() as s:
            port = str(s.port)
            self.assertEqual(self.run_probe("/v2/health/ready", port), 0)
            self.assertEqual(self.run_probe("/v2/health/live", port), 0)
            self.assertEqual(self.run_probe(env={"DCNSERVE_PORT": port}), 0, "default path, port from env")
            self.assertEqual(self.run_probe("/no/such/path", port), 1)
            self.assertEqual(self.run_probe(env={"DCNSERVE_PORT": port, "DCNSERVE_HOST": "127.0.0.1"}), 0)
        self.assertEqual(self.run_probe("/v2/health/ready", port), 1, "server gone: connection refused")
        self.assertEqual(self.run_probe("no-slash"), 2)
        self.assertEqual(self.run_probe("/a b"), 2)
        self.assertEqual(self.run_probe("/", "99999"), 2)
        self.assertEqual(self.run_probe(env={"DCNSERVE_PORT": "80x"}), 2)
        self.assertEqual(self.run_probe(env={"DCNSERVE_HOST": "not-an-ip"}), 2)


if __name__ == "__main__":
    unittest.main()
