"""The Grafana dashboard (deploy/grafana/dcnserve-dashboard.json) queries
only what the server exports: every metric name in every panel's PromQL
exists in the /metrics of a real dcnserve serving a model repository, and
every label a query selects or groups by is on that metric's samples
(Prometheus adds `instance` itself). Grafana is not in Debian's archive, so
the dashboard's own structure is checked here: ids, grid positions, a
datasource and at least one target per panel, and the template variables
the queries use.
"""
import json
import os
import re
import shutil
import tempfile
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import dcnproc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DASH = os.path.join(ROOT, "deploy", "grafana", "dcnserve-dashboard.json")
DCNSERVE = os.environ.get("DCNSERVE", os.path.join(ROOT, "build", "release", "dcnserve"))
MODEL = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")

METRIC = re.compile(r"\b(dcnserve_[a-z0-9_]+)")
SELECTOR = re.compile(r"\b(dcnserve_[a-z0-9_]+)\{([^}]*)\}")
BY = re.compile(r"\bby \(([^)]*)\)\s*\((?:[a-z_]+\()?\s*(dcnserve_[a-z0-9_]+)")


def queries():
    with open(DASH, encoding="utf-8") as f:
        dash = json.load(f)
    return dash, [t["expr"] for p in dash["panels"] for t in p["targets"]]


def samples(text):
    """{metric name: set of label names} over the exposition's sample lines."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


class RepoServer(dcnproc.Server):
    def argv(self):
        return [self.binary, "--model-repository", self.model, "--host", dcnproc.HOST, "--port", str(self.port)] + self.args


class GrafanaDashboardTest(unittest.TestCase):
    def test_structure(self):
        dash, exprs = queries()
        self.assertEqual(dash["uid"], "dcnserve")
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        variables = {v["name"] for v in dash["templating"]["list"]}
        for p in dash["panels"]:
            self.assertTrue(p["targets"], p["title"])
            self.assertIn("datasource", p)
            self.assertTrue({"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"])
            for t in p["targets"]:
                for var in re.findall(r"\$([a-z]+)", t["expr"]):
                    self.assertIn(var, variables, t["expr"])
        self.assertGreaterEqual(len(exprs), 10)

    @unittest.skipUnless(os.path.exists(DCNSERVE), "dcnserve missing")
    def test_every_queried_metric_and_label_exists(self):
        _, exprs = queries()
        tmp = tempfile.mkdtemp()
        try:
            os.makedirs(os.path.join(tmp, "ranker", "1"))
            shutil.copyfile(MODEL, os.path.join(tmp, "ranker", "1", "m.dcn"))
            srv = RepoServer(tmp, "--workers", "2").start()
            try:
                st, _, _ = srv.request("POST", "/rank", b'{"candidates":[{"id":1,"features":{}}]}',
                                       {"Content-Type": "application/json"})
                self.assertEqual(st, 200)
                text = srv.request("GET", "/metrics")[2].decode()
            finally:
                srv.stop()
                dcnproc.check_sanitizer_output(srv.output())
        finally:
            shutil.rmtree(tmp)
        have = samples(text)
        for e in exprs:
            for name in METRIC.findall(e):
                self.assertIn(name, have, f"{name} (in {e}) is not in /metrics")
            for name, sel in SELECTOR.findall(e):
                for label in re.findall(r"([a-z_]+)\s*=~?", sel):
                    if label != "instance":
                        self.assertIn(label, have[name], f"{name} has no label {label} (in {e})")
            for labels, name in BY.findall(e):
                for label in (x.strip() for x in labels.split(",")):
                    if label != "instance":
                        self.assertIn(label, have[name], f"{name} has no label {label} (in {e})")


if __name__ == "__main__":
    unittest.main()
