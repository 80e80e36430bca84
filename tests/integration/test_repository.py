"""Integration tests of a model repository (--model-repository DIR), against
the real dcnserve binary (env DCNSERVE) and real files in a temporary
directory: DIR/<name>/<version>/<file>.dcn.

Covers: two models with two versions each served at once, every version
scored correctly (parity with the independent NumPy reference) through
the body fields and the per-model paths; routing errors naming what
exists; /v1/models, /v2/models (KServe metadata and readiness) and the
per-version metrics; a new version dropped into the directory under load
picked up with zero failed requests; a removed version answering the
requests it holds; a half-copied file and a corrupt version refused while
the old one keeps serving, and the completed copy then served; an empty
repository not ready until a version appears; canary traffic sticky by
key and split as configured, changed without a restart; SIGTERM drain
with several models.
"""
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import unittest

import dcnproc
import test_server as ts
from dcnproc import DCNSERVE

POLL_S = "1"


class RepoServer(ts.Server):
    """ts.Server started on a repository instead of a file."""

    def argv(self):
        extra = ["--loops", str(dcnproc.LOOPS)] if dcnproc.LOOPS and "--loops" not in self.args else []
        return [self.binary, "--model-repository", self.model, "--host", dcnproc.HOST, "--port",
                str(self.port)] + extra + self.args


def publish(repo, name, version, src, seed=None):
    """Publishes src (or a new tiny model of that seed) as name/version the
    safe way: written elsewhere in the same file system, then renamed into
    place."""
    stage = tempfile.mkdtemp(dir=repo, prefix=".stage-")
    path = os.path.join(stage, "model.dcn")
    if src:
        shutil.copyfile(src, path)
    else:
        ts.make_model(path, name="tiny", version=f"{name}-{version}", seed=seed)
    os.makedirs(os.path.join(repo, name), exist_ok=True)
    os.rename(stage, os.path.join(repo, name, str(version)))
    return os.path.join(repo, name, str(version), "model.dcn")


def wait_for(pred, timeout=20.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def versions(srv, name):
    st, _, body = srv.request("GET", f"/v1/models/{name}")
    if st != 200:
        return {}
    return {v["version"]: v for v in json.loads(body)["versions"]}


def versions_model(srv, name):
    st, _, body = srv.request("GET", f"/v1/models/{name}")
    return json.loads(body)


def spearman(a, b):
    """Spearman's rho with mean ranks for ties (as the server computes it)."""
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: (x[i], i))
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    m = (len(a) - 1) / 2
    sab = sum((x - m) * (y - m) for x, y in zip(ra, rb))
    saa = sum((x - m) ** 2 for x in ra)
    sbb = sum((y - m) ** 2 for y in rb)
    return sab / (saa * sbb) ** 0.5 if saa > 0 and sbb > 0 else float("nan")


def serving(srv, name):
    return sorted((v for v, d in versions(srv, name).items() if d["state"] == "serving"), key=int)


def body(rows, **fields):
    return dict(fields, candidates=[{"id": i, "features": r} for i, r in enumerate(rows)], **{"return": {"logits": True}})


class Load(threading.Thread):
    """Closed-loop clients sending `fields` (model, ...) to /rank; keeps
    every status that is not 200 and counts the versions that answered."""

    def __init__(self, srv, fields, n_threads=3, n_rows=20):
        super().__init__()
        self.srv, self.fields, self.n_threads = srv, fields, n_threads
        self.rows = ts.random_rows(n_rows, random.Random(5))
        self.stop = threading.Event()
        self.bad, self.seen, self.count = [], {}, 0
        self.lock = threading.Lock()

    def one(self):
        while not self.stop.is_set():
            try:
                st, _, out = self.srv.rank(body(self.rows, **self.fields), timeout=30)
            except OSError as e:
                st, out = None, repr(e)
            with self.lock:
                self.count += 1
                if st == 200:
                    v = out["model"]["version"]
                    self.seen[v] = self.seen.get(v, 0) + 1
                else:
                    self.bad.append((st, out))

    def run(self):
        ts_ = [threading.Thread(target=self.one) for _ in range(self.n_threads)]
        for t in ts_:
            t.start()
        for t in ts_:
            t.join()


@unittest.skipUnless(os.path.exists(DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
@dcnproc.also_with_loops(2)
class RepositoryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.repo = os.path.join(cls.tmp.name, "repo")
        os.makedirs(cls.repo)
        cls.files = {}
        for name, vs in (("alpha", (1, 2)), ("beta", (3, 10))):
            for v in vs:
                cls.files[name, v] = publish(cls.repo, name, v, None, seed=len(cls.files) + 1)
        cls.rows = ts.random_rows(40, random.Random(11))
        cls.want = {k: ts.reference_scores(p, cls.rows) for k, p in cls.files.items()}
        cls.srv = RepoServer(cls.repo, "--workers", "2", "--keep-versions", "2", "--poll-s", "0").start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def check_scores(self, out, key):
        got = {item["id"]: item["score"] for item in out["ranked"]}
        want = self.want[key]
        self.assertEqual(len(got), len(want))
        for i, w in enumerate(want):
            self.assertLessEqual(abs(got[i] - w), 1e-5 + 1e-4 * abs(w), f"{key} row {i}: {got[i]} vs {w}")

    def test_every_version_scores_as_the_reference(self):
        for (name, v) in self.files:
            st, _, out = self.srv.rank(body(self.rows, model=name, version=v))
            self.assertEqual(st, 200, out)
            self.assertEqual(out["model"], {"name": name, "version": str(v)})
            self.check_scores(out, (name, v))
            # the same through the per-version path, the version as a string
            st, _, out = self.srv.request_json("POST", f"/v1/models/{name}/versions/{v}/rank", body(self.rows))
            self.assertEqual(st, 200, out)
            self.check_scores(out, (name, v))
            st, _, out = self.srv.rank(body(self.rows, model=name, version=str(v)))
            self.assertEqual(st, 200, out)
            self.check_scores(out, (name, v))
            # routing fields after "candidates": the server's pre-scan stops
            # there, the decoder finds them and the request is routed again
            raw = json.dumps({"candidates": [{"id": i, "features": r} for i, r in enumerate(self.rows)],
                              "model": name, "version": v})
            st, _, out = self.srv.request("POST", "/rank", raw)
            out = json.loads(out)
            self.assertEqual((st, out["model"]), (200, {"name": name, "version": str(v)}), out)
            self.check_scores(out, (name, v))

    def test_latest_version_is_the_default(self):
        for name, latest in (("alpha", 2), ("beta", 10)):
            st, _, out = self.srv.rank(body(self.rows, model=name))
            self.assertEqual((st, out["model"]["version"]), (200, str(latest)), out)
            self.check_scores(out, (name, latest))
            st, _, out = self.srv.request_json("POST", f"/v1/models/{name}/rank", body(self.rows))
            self.assertEqual((st, out["model"]["version"]), (200, str(latest)), out)

    def test_routing_errors_name_what_exists(self):
        st, _, out = self.srv.rank(body(self.rows, model="gamma"))
        self.assertEqual(st, 404, out)
        self.assertIn('"alpha", "beta"', out["error"]["message"])
        st, _, out = self.srv.rank(body(self.rows, model="beta", version=4))
        self.assertEqual(st, 404, out)
        self.assertIn("3, 10", out["error"]["message"])
        st, _, out = self.srv.rank(body(self.rows))
        self.assertEqual(st, 400, out)
        self.assertIn('name one with "model"', out["error"]["message"])
        st, _, out = self.srv.request_json("POST", "/v1/models/alpha/rank", body(self.rows, model="beta"))
        self.assertEqual(st, 400, out)
        st, _, out = self.srv.request_json("POST", "/v1/models/nope/versions/1/rank", body(self.rows))
        self.assertEqual(st, 404, out)
        for bad in ({"model": 5}, {"model": ""}, {"version": 0}, {"version": "1x"}, {"routing_key": [1]}):
            st, _, out = self.srv.rank(body(self.rows, **bad))
            self.assertEqual(st, 400, (bad, out))
            self.assertEqual(out["error"]["code"], "invalid_request", (bad, out))
        st, _, out = self.srv.request_json("GET", "/v1/models/nope")
        self.assertEqual(st, 404, out)
        st, _, out = self.srv.request_json("GET", "/v1/models/alpha/versions/9")
        self.assertEqual(st, 404, out)
        st, _, _ = self.srv.request("GET", "/v1/models/alpha/rank")
        self.assertEqual(st, 405)

    def test_listing_metadata_and_metrics(self):
        st, _, out = self.srv.request_json("GET", "/v1/models")
        self.assertEqual(st, 200, out)
        got = {m["name"]: sorted(v["version"] for v in m["versions"] if v["state"] == "serving")
               for m in out["models"]}
        self.assertEqual(got, {"alpha": ["1", "2"], "beta": ["10", "3"]})
        for m in out["models"]:
            for v in m["versions"]:
                self.assertGreater(v["file_bytes"], 0)
                self.assertEqual(v["model_version"], f"{m['name']}-{v['version']}")
        st, _, out = self.srv.request_json("GET", "/v1/models/beta/versions/3")
        self.assertEqual((st, out["name"], out["version"], out["model_version"]), (200, "beta", "3", "beta-3"))
        st, _, out = self.srv.request_json("GET", "/v2/models/alpha")
        self.assertEqual(st, 200, out)
        self.assertEqual((out["name"], out["versions"], out["platform"]), ("alpha", ["1", "2"], "dcnserve"))
        self.assertIn({"name": "C1", "datatype": "BYTES", "shape": [-1]}, out["inputs"])
        self.assertEqual(self.srv.request("GET", "/v2/models/alpha/versions/1/ready")[0], 200)
        self.assertEqual(self.srv.request("GET", "/v2/models/alpha/ready")[0], 200)
        self.assertEqual(self.srv.request("GET", "/v2/models/alpha/versions/7/ready")[0], 404)
        self.assertEqual(self.srv.request("GET", "/v2/models/zeta/ready")[0], 404)
        self.srv.rank(body(self.rows[:3], model="beta", version=3))
        st, _, text = self.srv.request("GET", "/metrics")
        text = text.decode()
        self.assertIn('dcnserve_version_state{model="alpha",version="1",state="serving"} 1', text)
        line = [x for x in text.splitlines() if x.startswith('dcnserve_version_candidates_total{model="beta",version="3"}')]
        self.assertEqual(len(line), 1, text)
        self.assertGreaterEqual(int(line[0].split()[-1]), 3)


@unittest.skipUnless(os.path.exists(DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class RepositoryChangeTest(unittest.TestCase):
    """Each test starts its own server on its own repository, polled every
    second."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.repo = os.path.join(self.tmp.name, "repo")
        os.makedirs(self.repo)
        self.srv = None

    def tearDown(self):
        if self.srv:
            self.srv.stop()
        self.tmp.cleanup()

    def start(self, *args):
        self.srv = RepoServer(self.repo, "--workers", "2", "--poll-s", POLL_S, *args).start()
        return self.srv

    def test_new_version_under_load_and_removal(self):
        publish(self.repo, "m", 1, None, seed=1)
        srv = self.start()
        load = Load(srv, {"model": "m"})
        load.start()
        try:
            wait_for(lambda: load.count > 20)
            publish(self.repo, "m", 2, None, seed=2)
            self.assertTrue(wait_for(lambda: serving(srv, "m") == ["2"]), versions(srv, "m"))
            n = load.count
            wait_for(lambda: load.count > n + 20)
            # removing the version served falls back to nothing serving for
            # m: keep-versions 1 serves only 2; with 1 still on disk it comes back
            shutil.rmtree(os.path.join(self.repo, "m", "2"))
            self.assertTrue(wait_for(lambda: serving(srv, "m") == ["1"]), versions(srv, "m"))
            n = load.count
            wait_for(lambda: load.count > n + 20)
        finally:
            load.stop.set()
            load.join()
        self.assertEqual(load.bad, [])
        self.assertEqual(set(load.seen), {"1", "2"}, load.seen)
        # the versions unloaded are gone once nothing holds them
        self.assertTrue(wait_for(lambda: list(versions(srv, "m")) == ["1"]), versions(srv, "m"))
        log = srv.output()
        self.assertIn('"msg":"version unloaded","model":"m","version":2', log)

    def test_half_copied_and_corrupt_versions_are_refused(self):
        good = publish(self.repo, "m", 1, None, seed=1)
        srv = self.start()
        rows = ts.random_rows(10, random.Random(1))
        want = ts.reference_scores(good, rows)
        data = open(good, "rb").read()
        # a copy in progress, seen by a scan: refused, version 1 keeps serving
        os.makedirs(os.path.join(self.repo, "m", "2"))
        part = os.path.join(self.repo, "m", "2", "model.dcn")
        with open(part, "wb") as f:
            f.write(data[: len(data) // 2])
        self.assertTrue(wait_for(lambda: versions(srv, "m").get("2", {}).get("state") == "failed"),
                        versions(srv, "m"))
        self.assertTrue(versions(srv, "m")["2"]["reason"])
        # a corrupt version: refused as well
        bad = os.path.join(self.repo, "m", "3")
        os.makedirs(bad)
        with open(os.path.join(bad, "model.dcn"), "wb") as f:
            f.write(b"GGUF" + os.urandom(4000))
        self.assertTrue(wait_for(lambda: versions(srv, "m").get("3", {}).get("state") == "failed"),
                        versions(srv, "m"))
        self.assertEqual(serving(srv, "m"), ["1"])
        st, _, out = srv.rank(body(rows, model="m"))
        self.assertEqual((st, out["model"]["version"]), (200, "1"), out)
        for item in out["ranked"]:
            self.assertAlmostEqual(item["score"], want[item["id"]], delta=1e-5)
        self.assertEqual(srv.request("GET", "/readyz")[0], 200)
        # the copy completes: version 2 is tried again (its file changed) and serves
        shutil.rmtree(bad)
        with open(part, "ab") as f:
            f.write(data[len(data) // 2:])
        self.assertTrue(wait_for(lambda: serving(srv, "m") == ["2"]), versions(srv, "m"))
        self.assertNotIn("3", versions(srv, "m"))
        st, _, out = srv.rank(body(rows, model="m"))
        self.assertEqual((st, out["model"]["version"]), (200, "2"), out)

    def test_empty_repository_is_not_ready_until_a_version_appears(self):
        srv = RepoServer(self.repo, "--workers", "2", "--poll-s", POLL_S)
        srv.READY_PATH = "/healthz"
        self.srv = srv.start()
        self.assertEqual(srv.request("GET", "/readyz")[0], 503)
        st, _, out = srv.rank(body([{}]))
        self.assertEqual(st, 503, out)
        os.makedirs(os.path.join(self.repo, "m", "1"))  # a version directory being filled
        time.sleep(1.5)
        self.assertEqual(versions(srv, "m")["1"]["state"], "failed")
        self.assertIn("no model file", versions(srv, "m")["1"]["reason"])
        publish(self.repo, "m", 2, None, seed=3)
        self.assertTrue(wait_for(lambda: srv.request("GET", "/readyz")[0] == 200))
        st, _, out = srv.rank(body([{}]))
        self.assertEqual((st, out["model"]), (200, {"name": "m", "version": "2"}), out)

    def test_pinned_versions(self):
        for v in (1, 2, 3):
            publish(self.repo, "m", v, None, seed=v)
        srv = self.start()
        self.assertEqual(serving(srv, "m"), ["3"])
        pinned = os.path.join(self.repo, "m", "pinned")

        def pin(text):
            with open(pinned + ".tmp", "w") as f:
                f.write(text)
            os.rename(pinned + ".tmp", pinned)

        pin("# the two we compare\n1, 2\n")
        self.assertTrue(wait_for(lambda: serving(srv, "m") == ["1", "2"]), versions(srv, "m"))
        self.assertEqual(versions_model(srv, "m")["pinned"], ["1", "2"])
        st, _, out = srv.rank(body([{}], model="m"))
        self.assertEqual((st, out["model"]["version"]), (200, "2"), out)
        # an invalid list: reported, nothing changes
        pin("1 two\n")
        self.assertTrue(wait_for(lambda: "pinned_error" in versions_model(srv, "m")), versions_model(srv, "m"))
        self.assertIn('"two" is not a version number', versions_model(srv, "m")["pinned_error"])
        time.sleep(1.5)
        self.assertEqual(serving(srv, "m"), ["1", "2"])
        # a pinned version that does not load, alone: what serves keeps serving
        os.makedirs(os.path.join(self.repo, "m", "4"))
        with open(os.path.join(self.repo, "m", "4", "model.dcn"), "wb") as f:
            f.write(b"not a model")
        pin("4")
        self.assertTrue(wait_for(lambda: versions(srv, "m").get("4", {}).get("state") == "failed"), versions(srv, "m"))
        time.sleep(1.5)
        self.assertEqual(serving(srv, "m"), ["1", "2"])
        self.assertNotIn("pinned_error", versions_model(srv, "m"))
        # the file gone: the latest loadable version again
        os.unlink(pinned)
        self.assertTrue(wait_for(lambda: serving(srv, "m") == ["3"]), versions(srv, "m"))
        self.assertIsNone(versions_model(srv, "m")["pinned"])

    def test_traffic_files_set_the_canary_and_the_shadow(self):
        publish(self.repo, "m", 1, None, seed=1)
        publish(self.repo, "m", 2, None, seed=2)
        srv = self.start("--keep-versions", "2")

        def put(name, text):
            path = os.path.join(self.repo, "m", name)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.rename(path + ".tmp", path)

        put("canary", "1 25\n")
        put("shadow", "1\n")
        self.assertTrue(wait_for(lambda: versions_model(srv, "m")["canary"] == {"version": "1", "percent": 25.0}),
                        versions_model(srv, "m"))
        self.assertEqual(versions_model(srv, "m")["shadow"]["version"], "1")
        got = [srv.rank({"model": "m", "routing_key": f"k{i}", "candidates": []})[2]["model"]["version"]
               for i in range(800)]
        self.assertLess(abs(got.count("1") / 800 - 0.25), 0.06)
        # the admin endpoint may change it meanwhile: an unchanged file does not undo that
        st, _, out = srv.request_json("POST", "/admin/models/m/canary", {"percent": 0})
        self.assertEqual(st, 200, out)
        time.sleep(1.5)
        self.assertIsNone(versions_model(srv, "m")["canary"])
        # an invalid file: reported, nothing changes
        put("canary", "one 5")
        self.assertTrue(wait_for(lambda: "traffic_error" in versions_model(srv, "m")), versions_model(srv, "m"))
        self.assertIn("canary", versions_model(srv, "m")["traffic_error"])
        self.assertIsNone(versions_model(srv, "m")["canary"])
        # a version that is not serving: reported, tried again at each scan
        put("canary", "7 5")
        self.assertTrue(wait_for(lambda: "no version 7" in versions_model(srv, "m").get("traffic_error", "")),
                        versions_model(srv, "m"))
        put("canary", "2 40")
        self.assertTrue(wait_for(lambda: versions_model(srv, "m")["canary"] == {"version": "2", "percent": 40.0}),
                        versions_model(srv, "m"))
        self.assertTrue(wait_for(lambda: "traffic_error" not in versions_model(srv, "m")), versions_model(srv, "m"))
        # files removed: what they set ends
        os.unlink(os.path.join(self.repo, "m", "canary"))
        os.unlink(os.path.join(self.repo, "m", "shadow"))
        self.assertTrue(wait_for(lambda: versions_model(srv, "m")["canary"] is None
                                 and versions_model(srv, "m")["shadow"] is None), versions_model(srv, "m"))

    def test_canary_split_is_sticky_and_changeable(self):
        publish(self.repo, "m", 1, None, seed=1)
        publish(self.repo, "m", 2, None, seed=2)
        srv = self.start("--keep-versions", "2")

        def route(key):
            st, _, out = srv.rank({"model": "m", "routing_key": key, "candidates": []})
            self.assertEqual(st, 200, out)
            return out["model"]["version"]

        keys = [f"user-{i}" for i in range(2000)]
        self.assertEqual({route(k) for k in keys[:50]}, {"2"})  # no canary: the latest
        st, _, out = srv.request_json("POST", "/admin/models/m/canary", {"version": 1, "percent": 10})
        self.assertEqual(st, 200, out)
        self.assertEqual(out["model"]["canary"], {"version": "1", "percent": 10.0})
        first = {k: route(k) for k in keys}
        share = sum(v == "1" for v in first.values()) / len(keys)
        self.assertLess(abs(share - 0.10), 0.03, share)
        again = {k: route(k) for k in keys[:300]}
        self.assertEqual(again, {k: first[k] for k in keys[:300]})  # sticky
        # the key after "candidates" (routed again once decoded): the same version
        for k in keys[:200]:
            raw = json.dumps({"candidates": [], "model": "m", "routing_key": k})
            st, _, out = srv.request("POST", "/rank", raw)
            self.assertEqual((st, json.loads(out)["model"]["version"]), (200, first[k]), k)
        self.assertEqual(route(12345), route(12345))  # integer keys too
        # changed without a restart: 50%, keys already on the canary stay there
        st, _, out = srv.request_json("POST", "/admin/models/m/canary", {"version": "1", "percent": 50})
        self.assertEqual(st, 200, out)
        half = {k: route(k) for k in keys[:1000]}
        share = sum(v == "1" for v in half.values()) / 1000
        self.assertLess(abs(share - 0.5), 0.06, share)
        self.assertTrue(all(half[k] == "1" for k in keys[:1000] if first[k] == "1"))
        # an explicit version always wins
        st, _, out = srv.rank({"model": "m", "version": 2, "routing_key": "user-1", "candidates": []})
        self.assertEqual(out["model"]["version"], "2")
        for bad, code in (({"version": 7, "percent": 5}, 404), ({"version": 1, "percent": 101}, 400),
                          ({"version": 1}, 400), ("nope", 400)):
            st, _, out = srv.request_json("POST", "/admin/models/m/canary", bad)
            self.assertEqual(st, code, (bad, out))
        st, _, out = srv.request_json("POST", "/admin/models/zzz/canary", {"version": 1, "percent": 5})
        self.assertEqual(st, 404, out)
        st, _, out = srv.request_json("POST", "/admin/models/m/canary", {"percent": 0})
        self.assertEqual((st, out["model"]["canary"]), (200, None), out)
        self.assertEqual({route(k) for k in keys[:100]}, {"2"})

    def shadow_stats(self, srv):
        return versions_model(srv, "m")["shadow"]

    def test_shadow_scoring_never_changes_an_answer_and_measures_the_divergence(self):
        served = publish(self.repo, "m", 1, None, seed=1)
        shadow = publish(self.repo, "m", 2, None, seed=2)
        srv = self.start("--keep-versions", "2")
        rng = random.Random(3)
        reqs = [ts.random_rows(rng.randint(1, 30), rng) for _ in range(40)]
        st, _, out = srv.request_json("POST", "/admin/models/m/shadow", {"version": 2})
        self.assertEqual(st, 200, out)
        self.assertEqual(out["model"]["shadow"]["version"], "2")
        diffs, corrs = [], []
        for rows in reqs:
            st, _, out = srv.rank(body(rows, model="m", version=1))
            self.assertEqual(st, 200, out)
            self.assertEqual(out["model"]["version"], "1")
            want = ts.reference_scores(served, rows)
            for item in out["ranked"]:  # the answer is the served version's, untouched
                self.assertAlmostEqual(item["score"], want[item["id"]], delta=1e-5)
            other = ts.reference_scores(shadow, rows)
            diffs.append(sum(abs(a - b) for a, b in zip(want, other)) / len(rows))
            if len(rows) >= 2:
                corrs.append(spearman(want, other))
        sh = wait_for(lambda: (lambda x: x if x["scored"] + x["skipped_busy"] + x["dropped"] + x["failed"] == len(reqs) else None)(
            self.shadow_stats(srv)))
        self.assertIsNotNone(sh, self.shadow_stats(srv))
        # one request at a time on an idle server: every one is shadowed
        self.assertEqual((sh["scored"], sh["failed"]), (len(reqs), 0), sh)
        self.assertAlmostEqual(sh["mean_score_diff"], sum(diffs) / len(diffs), delta=1e-5)
        self.assertAlmostEqual(sh["mean_rank_correlation"], sum(corrs) / len(corrs), delta=1e-3)
        text = srv.request("GET", "/metrics")[2].decode()
        self.assertIn(f'dcnserve_shadow_requests_total{{model="m",version="2",outcome="scored"}} {len(reqs)}', text)
        self.assertIn(f'dcnserve_shadow_score_diff_count{{model="m",version="2"}} {len(reqs)}', text)
        # the shadow version itself answered nothing: its counters are the served version's only
        vs = versions(srv, "m")
        self.assertEqual((vs["1"]["requests"], vs["2"]["requests"]), (len(reqs), 0))
        # a request to the shadow version itself is not shadowed by itself
        srv.rank(body(reqs[0], model="m", version=2))
        time.sleep(0.2)
        self.assertEqual(self.shadow_stats(srv)["scored"], len(reqs))
        for bad, code in (({"version": 9}, 404), ({"version": "x"}, 400), ({}, 400), ({"version": 1, "x": 1}, 400)):
            st, _, out = srv.request_json("POST", "/admin/models/m/shadow", bad)
            self.assertEqual(st, code, (bad, out))
        st, _, out = srv.request_json("POST", "/admin/models/m/shadow", {"version": None})
        self.assertEqual((st, out["model"]["shadow"]), (200, None), out)

    def test_shadow_scoring_stops_under_overload(self):
        publish(self.repo, "m", 1, None, seed=1)
        publish(self.repo, "m", 2, None, seed=2)
        srv = self.start("--keep-versions", "2", "--max-queue-rows", "400")
        st, _, out = srv.request_json("POST", "/admin/models/m/shadow", {"version": 1})
        self.assertEqual(st, 200, out)
        load = Load(srv, {"model": "m"}, n_threads=12, n_rows=200)
        load.start()
        try:
            wait_for(lambda: load.count > 150, timeout=60)
        finally:
            load.stop.set()
            load.join()
        # every answer came from the served version, whatever the shadow did
        self.assertEqual(set(load.seen), {"2"}, load.seen)
        self.assertTrue(all(st_ in (429, 503) for st_, _ in load.bad), load.bad[:3])
        sh = wait_for(lambda: (lambda x: x if x["scored"] + x["skipped_busy"] + x["dropped"] + x["failed"] >= sum(load.seen.values()) else None)(
            self.shadow_stats(srv)), timeout=10)
        self.assertIsNotNone(sh, (self.shadow_stats(srv), load.seen))
        self.assertGreater(sh["skipped_busy"] + sh["dropped"], 0, sh)
        self.assertEqual(sh["failed"], 0, sh)
        self.assertEqual(srv.request("GET", "/readyz")[0], 200)

    def test_sigterm_drains_with_several_models(self):
        publish(self.repo, "a", 1, None, seed=1)
        publish(self.repo, "b", 1, None, seed=2)
        srv = self.start("--drain-delay-ms", "300")
        loads = [Load(srv, {"model": "a"}, n_threads=2), Load(srv, {"model": "b"}, n_threads=2)]
        for ld in loads:
            ld.start()
        wait_for(lambda: all(ld.count > 10 for ld in loads))
        srv.signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        for ld in loads:
            ld.stop.set()
            ld.join()
        self.assertEqual(srv.proc.returncode, 0, srv.output())
        for ld in loads:
            # requests after the listener closed fail to connect; none that
            # was accepted fails
            self.assertTrue(all(st is None or st == 503 for st, _ in ld.bad), ld.bad[:5])
            self.assertEqual(set(ld.seen), {"1"})

    def test_bad_repository_flags(self):
        import subprocess
        for args, msg in ((["--model-repository", os.path.join(self.repo, "missing")], "cannot read the model repository"),
                          (["--model-repository", self.repo, "--model", "x.dcn"], "give one of them"),
                          (["--model-repository", self.repo, "--keep-versions", "0"], "keep-versions")):
            p = subprocess.run([DCNSERVE, "--port", "0"] + args, capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p)
            self.assertIn(msg, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
