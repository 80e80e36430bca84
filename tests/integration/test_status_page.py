"""The status page (GET /status) of a real dcnserve serving a model
repository with traffic and a shadow version, sampled every second:

- one HTML document, self-contained: no script, no external style sheet,
  font, image or link to another host, a Content-Security-Policy that
  forbids them, and nothing /metrics does not show (no file paths);
- a section per model with its versions' table (the request counts equal
  /v1/models'), and an SVG chart for each figure: candidates/s, latency,
  queue wait, shed requests, busy shares, per-version rates and p99, and
  the shadow version's divergence;
- Debian's headless Chromium renders it: the DOM it builds holds the same
  charts, and its screenshot is kept as a test artifact
  (build/test-artifacts/status.png). Skipped with a reason when Chromium
  is missing (`make test-deps` installs it).
"""
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
import unittest

import dcnproc
import test_repository as tr
import test_server as ts
from dcnproc import DCNSERVE

ARTIFACTS = os.path.join(ts.ROOT, "build", "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@unittest.skipUnless(os.path.exists(DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class StatusPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.repo = os.path.join(cls.tmp.name, "repo")
        os.makedirs(cls.repo)
        tr.publish(cls.repo, "ranker", 1, None, seed=1)
        tr.publish(cls.repo, "ranker", 2, None, seed=2)
        tr.publish(cls.repo, "re.rank-er_2", 5, None, seed=3)
        cls.srv = tr.RepoServer(cls.repo, "--workers", "2", "--keep-versions", "2", "--poll-s", "0",
                                "--status-sample-s", "1").start()
        st, _, out = cls.srv.request_json("POST", "/admin/models/ranker/shadow", {"version": 1})
        assert st == 200, out
        rng = random.Random(1)
        deadline = time.monotonic() + 3.5  # a few samples, traffic in each
        cls.sent = {"ranker": 0, "re.rank-er_2": 0}
        while time.monotonic() < deadline:
            for name in cls.sent:
                st, _, out = cls.srv.rank(tr.body(ts.random_rows(rng.randint(2, 20), rng), model=name))
                assert st == 200, out
                cls.sent[name] += 1
            time.sleep(0.01)
        time.sleep(1.2)  # one more sample after the traffic
        st, cls.headers, page = cls.srv.request("GET", "/status")
        assert st == 200, page
        cls.page = page.decode()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def test_self_contained_html(self):
        self.assertEqual(self.headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", self.headers["content-security-policy"])
        self.assertTrue(self.page.startswith("<!DOCTYPE html>"))
        self.assertTrue(self.page.rstrip().endswith("</html>"))
        self.assertNotIn("<script", self.page.lower())
        self.assertNotIn("<link", self.page.lower())
        self.assertNotIn("<img", self.page.lower())
        urls = set(re.findall(r"https?://[^\"' >]+", self.page))
        self.assertEqual(urls, {"http://www.w3.org/2000/svg"})  # the SVG namespace, never fetched
        self.assertNotIn(self.repo, self.page)  # no file path: /metrics shows none either

    def test_sections_tables_and_charts(self):
        self.assertIn("<h2>Model ranker</h2>", self.page)
        self.assertIn("<h2>Model re.rank-er_2</h2>", self.page)
        vs = tr.versions(self.srv, "ranker")
        for v in ("1", "2"):
            self.assertRegex(self.page, rf"<tr><td>{v}</td><td class=\"ok\">serving</td><td>{vs[v]['requests']}</td>")
        self.assertEqual(vs["2"]["requests"], self.sent["ranker"])
        titles = re.findall(r"<h3>([^<]*)</h3><svg", self.page)
        for want in ("Candidates and requests scored per second", "Latency, arrival to answer (/rank)",
                     "Queue wait", "Requests shed per second", "Busy share",
                     "Candidates scored per second, by version", "p99 latency, by version",
                     "Shadow version 1: mean score difference from the served answers",
                     "Shadow version 1: rank correlation with the served answers"):
            self.assertIn(want, titles)
        self.assertEqual(len(titles), self.page.count("</svg>"))
        # the lines are drawn: the candidates chart has points for several samples
        first = self.page.split("Candidates and requests scored per second", 1)[1].split("</svg>", 1)[0]
        pts = re.findall(r'points="([^"]+)"', first)
        self.assertTrue(pts and max(len(p.split()) for p in pts) >= 2, first[:500])
        # the legend's last rate is a figure, not a placeholder
        legend = self.page.split("Candidates and requests scored per second", 1)[1].split('<div class="legend">', 1)[1]
        self.assertRegex(legend.split("</div>", 1)[0], r"candidates <b>[1-9][0-9.]*k?/s</b>")

    @unittest.skipUnless(CHROMIUM, "chromium is not installed (make test-deps)")
    def test_headless_chromium_renders_it(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        url = f"http://{dcnproc.HOST}:{self.srv.port}/status"
        shot = os.path.join(ARTIFACTS, "status.png")
        if os.path.exists(shot):
            os.unlink(shot)
        with tempfile.TemporaryDirectory() as prof:
            common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                      "--no-first-run", f"--user-data-dir={prof}"]
            dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
            self.assertEqual(dom.returncode, 0, dom.stderr[-2000:])
            shot_run = subprocess.run(common + ["--window-size=1240,2600", f"--screenshot={shot}", url],
                                      capture_output=True, text=True, timeout=120)
            self.assertEqual(shot_run.returncode, 0, shot_run.stderr[-2000:])
        self.assertEqual(dom.stdout.count("</svg>"), self.page.count("</svg>"))
        self.assertIn("Model re.rank-er_2", dom.stdout)
        with open(shot, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        w, h = struct.unpack(">II", head[16:24])
        self.assertEqual((w, h), (1240, 2600))
        self.assertGreater(os.path.getsize(shot), 20000)  # charts, not a blank page


if __name__ == "__main__":
    unittest.main()
