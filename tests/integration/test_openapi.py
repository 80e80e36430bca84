"""proto/openapi.yaml against the real server: every route the server has is
documented with its methods (and nothing else is), every $ref resolves, and
the answers of a real dcnserve (200s and errors, health, model, reload,
draining) validate against the documented schema of their status. The
bodies the server accepts validate against the request schema too.

Three servers: one on a model file (--model, a repository of one model with
one version); one on a model repository (--model-repository: two models of
two versions each, and one whose only version fails to load), whose
per-model endpoints (/v1/models, /v2/models, the per-model rank paths, the
canary and the shadow) answer with real values checked here as well as
against the document; and one on an empty repository for readiness, the
503s and the reload's answers as versions appear. A request's path is
matched to its route's template (as server/http.c's match_route does), and
the values of its path parameters validate against the documented
parameters; a 405 names the method the route has."""
import functools
import json
import os
import re
import signal
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, HERE)

import dcnproc  # noqa: E402
import test_repository as tr  # noqa: E402  (publish, RepoServer)
import test_server as ts  # noqa: E402  (make_model, dcnfile)

import jsonschema  # noqa: E402
import yaml  # noqa: E402

SPEC_PATH = os.path.join(ROOT, "proto", "openapi.yaml")
REQUEST_SCHEMA_PATH = os.path.join(ROOT, "proto", "rank-request.schema.json")
MODEL = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")
METHODS = ("get", "post", "put", "delete", "patch", "head", "options")


def load_spec():
    with open(SPEC_PATH, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    with open(REQUEST_SCHEMA_PATH, encoding="utf-8") as f:
        request_schema = json.load(f)
    return spec, request_schema


@functools.lru_cache(maxsize=None)
def server_routes():
    """(path, method) of every route in server/http.c's route table, path
    templates ({name}, {version}) as written there and in OpenAPI."""
    with open(os.path.join(ROOT, "server", "http.c"), encoding="utf-8") as f:
        src = f.read()
    rows = re.findall(r'\{"(/[^"]*)", R_[A-Z0-9_]+, (\d), MET_H_', src)
    if not rows:
        raise AssertionError("no route table found in server/http.c: update server_routes()")
    return frozenset((p, "post" if int(post) else "get") for p, post in rows)


def template_regex(template):
    """A regular expression of a route's path template, as server/http.c's
    match_route reads it: {name} is 1 to 64 bytes up to the next '/',
    {version} a positive decimal number of at most 16 digits without a
    leading zero."""
    out, pos = "", 0
    for m in re.finditer(r"\{(name|version)\}", template):
        out += re.escape(template[pos:m.start()])
        out += r"(?P<name>[^/]{1,64})" if m.group(1) == "name" else r"(?P<version>[1-9][0-9]{0,15})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


def route_of(path):
    """(template, {parameter: value}) of the route a request path takes, or
    (None, {}) when no route matches (the server answers 404 for any
    method). The query string is not part of the route."""
    path = path.split("?")[0]
    templates = sorted({t for t, _ in server_routes()})
    hits = [(t, m.groupdict()) for t in templates for m in [template_regex(t).match(path)] if m]
    if len(hits) > 1:
        raise AssertionError(f"{path} matches several routes: {hits}")
    return hits[0] if hits else (None, {})


class Validator:
    """Validates instances against schemas of the OpenAPI document, $refs
    resolved inside it and to the request schema file beside it."""

    def __init__(self, spec, request_schema):
        self.spec = spec
        base = "file://" + os.path.join(ROOT, "proto") + "/"
        store = {base + "rank-request.schema.json": request_schema,
                 urllib.parse.urljoin(base, request_schema["$id"]): request_schema}
        self.resolver = jsonschema.RefResolver(base + "openapi.yaml", spec, store=store)
        self.request_schema = request_schema

    def check(self, schema, instance):
        jsonschema.Draft202012Validator(schema, resolver=self.resolver).validate(instance)

    def response_schema(self, path, method, status):
        """The documented schema of an answer, or an AssertionError naming
        what is missing."""
        op = self.spec["paths"].get(path, {}).get(method)
        if op is None:
            raise AssertionError(f"{method.upper()} {path} is not in openapi.yaml")
        resp = op["responses"].get(str(status))
        if resp is None:
            raise AssertionError(f"{method.upper()} {path}: status {status} is not documented")
        if "$ref" in resp:
            resp = self.resolve(resp["$ref"])
        return resp.get("content", {})

    def response(self, path, method, status):
        """The documented response object (its $ref resolved)."""
        resp = self.spec["paths"][path][method]["responses"][str(status)]
        return self.resolve(resp["$ref"]) if "$ref" in resp else resp

    def parameters(self, path, method):
        """{name: parameter object} of an operation, its path item's
        included, $refs resolved."""
        item = self.spec["paths"][path]
        out = {}
        for prm in item.get("parameters", []) + item[method].get("parameters", []):
            prm = self.resolve(prm["$ref"]) if "$ref" in prm else prm
            out[prm["name"]] = prm
        return out

    def resolve(self, ref):
        _, target = self.resolver.resolve(ref)
        return target


class OpenApiDocumentTest(unittest.TestCase):
    def test_routes_match_the_server(self):
        spec, _ = load_spec()
        self.assertEqual(spec["openapi"], "3.1.0")
        documented = {(p, m) for p, item in spec["paths"].items() for m in item if m in METHODS}
        self.assertEqual(documented, set(server_routes()),
                         "openapi.yaml and server/http.c's route table disagree")

    def test_every_ref_resolves_and_schemas_are_valid(self):
        spec, request_schema = load_spec()
        v = Validator(spec, request_schema)
        refs = []

        def walk(node):
            if isinstance(node, dict):
                for k, x in node.items():
                    if k == "$ref":
                        refs.append(x)
                    else:
                        walk(x)
            elif isinstance(node, list):
                for x in node:
                    walk(x)
        walk(spec)
        self.assertGreater(len(refs), 10)
        for ref in refs:
            self.assertIsNotNone(v.resolve(ref), ref)
        for name, schema in spec["components"]["schemas"].items():
            jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator.check_schema(request_schema)

    def test_validation_can_fail(self):
        """The validator really checks: a wrong answer is refused."""
        spec, request_schema = load_spec()
        v = Validator(spec, request_schema)
        schema = v.response_schema("/rank", "post", 200)["application/json"]["schema"]
        good = {"model": {"name": "m", "version": "1"}, "ranked": [{"id": 1, "score": 0.5, "rank": 1}],
                "latency_us": {"total": 1, "parse": 0, "queue": 0, "inference": 1, "encode": 0}}
        v.check(schema, good)
        for bad in (dict(good, extra=1), dict(good, ranked=[{"id": 1, "score": 1.5, "rank": 1}]),
                    {k: x for k, x in good.items() if k != "latency_us"}):
            with self.assertRaises(jsonschema.ValidationError):
                v.check(schema, bad)


    def test_path_parameters_are_declared(self):
        """Each {parameter} of a path is declared, required, in the path,
        with a schema; the version parameter is a positive integer and the
        name parameter accepts every repository name and what the server
        routes, but no '/'."""
        spec, request_schema = load_spec()
        v = Validator(spec, request_schema)
        for path, item in spec["paths"].items():
            for method in (m for m in item if m in METHODS):
                params = v.parameters(path, method)
                in_path = {n for n, prm in params.items() if prm["in"] == "path"}
                self.assertEqual(in_path, set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}")
                for prm in params.values():
                    self.assertTrue(prm["required"], f"{method} {path} {prm['name']}")
                    jsonschema.Draft202012Validator.check_schema(prm["schema"])
        name = v.resolve("#/components/parameters/Name")["schema"]
        for ok in ("alpha", "m.v2_x-1", "A" * 64, "criteo dcn"):
            v.check(name, ok)
        for bad in ("", "a/b", "x" * 65):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(name, bad)
        version = v.resolve("#/components/parameters/Version")["schema"]
        v.check(version, 1)
        v.check(version, 2 ** 53)
        for bad in (0, -1, "1", 2 ** 53 + 1, 1.5):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(version, bad)

    def test_repository_schemas_refuse_wrong_answers(self):
        """The per-model schemas are strict: fields that belong to another
        state, unknown fields and missing ones are refused."""
        spec, request_schema = load_spec()
        v = Validator(spec, request_schema)
        model = {"$ref": "#/components/schemas/Model"}
        serving = {"version": "1", "state": "serving", "file": "/r/m/1/m.dcn", "model_version": "v1",
                   "file_bytes": 10, "dense_bytes": 8, "loaded_at": 1.5, "requests": 0, "candidates": 0,
                   "in_flight": 0}
        failed = {"version": "2", "state": "failed", "reason": "no model file"}
        shadow = {"version": "2", "scored": 3, "skipped_busy": 1, "dropped": 0, "failed": 0,
                  "mean_score_diff": 0.01, "mean_rank_correlation": 0.9}
        good = {"name": "m", "canary": {"version": "1", "percent": 12.5}, "shadow": shadow, "pinned": None,
                "versions": [serving, failed]}
        v.check(model, good)
        v.check(model, dict(good, pinned=["1", "3"]))
        v.check(model, dict(good, pinned_error="m/pinned: \"x\" is not a version number"))
        v.check(model, dict(good, traffic_error="m/canary: expected a version number and a percentage"))
        for bad in (dict(good, pinned=[]), dict(good, pinned=[1]), {k: x for k, x in good.items() if k != "pinned"}):
            with self.assertRaises(Exception, msg=str(bad)):
                v.check(model, bad)
        v.check(model, dict(good, canary=None, shadow=None))
        v.check(model, dict(good, shadow=dict(shadow, scored=0, mean_score_diff=None, mean_rank_correlation=None)))
        for bad in (dict(good, extra=1), dict(good, canary={"version": "1", "percent": 0}),
                    dict(good, canary={"version": "01", "percent": 5}),
                    dict(good, versions=[dict(serving, reason="x")]),
                    dict(good, versions=[{k: x for k, x in serving.items() if k != "in_flight"}]),
                    dict(good, versions=[dict(failed, file_bytes=3)]),
                    dict(good, versions=[{"version": "2", "state": "failed"}]),
                    dict(good, versions=[dict(serving, state="ready")]),
                    {k: x for k, x in good.items() if k != "shadow"},
                    dict(good, shadow=dict(shadow, mean_rank_correlation=1.5)),
                    dict(good, shadow={k: x for k, x in shadow.items() if k != "dropped"})):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(model, bad)
        reloaded = v.response_schema("/admin/reload", "post", 200)["application/json"]["schema"]
        good = {"status": "reloaded", "model": {"name": "m", "version": "1"}, "loaded": 1, "failed": 1,
                "unloading": 0, "first_error": "bad magic", "serving": [{"model": "m", "version": "1"}]}
        v.check(reloaded, good)
        v.check(reloaded, {"status": "reloaded", "loaded": 0, "failed": 0, "unloading": 0, "serving": []})
        for bad in ({k: x for k, x in good.items() if k != "first_error"},
                    {k: x for k, x in good.items() if k != "model"},
                    dict(good, failed=0), dict(good, serving=[]), dict(good, status="ok"),
                    dict(good, serving=[{"model": "m", "version": "1", "x": 1}])):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(reloaded, bad)
        canary = v.spec["paths"]["/admin/models/{name}/canary"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]
        for ok in ({"version": 3, "percent": 10}, {"version": "3", "percent": 0.5}, {"percent": 0},
                   {"version": 1, "percent": 100}):
            v.check(canary, ok)
        for bad in ({"version": 3}, {"percent": 5}, {"version": 0, "percent": 5}, {"version": "1x", "percent": 5},
                    {"version": 3, "percent": 101}, {"version": 3, "percent": -1}, {"version": 3, "percent": "5"},
                    {"version": 3, "percent": 5, "extra": 1}, "nope", [1]):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(canary, bad)
        shadow_req = v.spec["paths"]["/admin/models/{name}/shadow"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]
        for ok in ({"version": 3}, {"version": "10"}, {"version": 0}, {"version": None}):
            v.check(shadow_req, ok)
        for bad in ({}, {"version": -1}, {"version": "x"}, {"version": 1, "x": 1}, {"version": 1.5}, "nope"):
            with self.assertRaises(jsonschema.ValidationError, msg=bad):
                v.check(shadow_req, bad)


class AnswerChecks:
    """answer(): one request to a real server, its answer checked against
    the document. The test class sets v (a Validator) and srv."""

    def answer(self, method, path, body=None, headers=None, srv=None, expect=None):
        """Sends one request, checks its answer against the document (the
        route's template, its path parameters, the status, content type,
        headers and body) and returns (status, parsed body)."""
        st, hdrs, data = (srv or self.srv).request(method.upper(), path, body, headers=headers)
        if expect is not None:
            self.assertEqual(st, expect, data[:300])
        template, params = route_of(path)
        if (template, method) not in server_routes():
            # no route: 404 for any method; a route without this method: 405
            # naming the one it has
            self.assertEqual(st, 404 if template is None else 405, (method, path, data[:300]))
            if template is not None:
                methods = {m for t, m in server_routes() if t == template}
                self.assertEqual(hdrs.get("allow"), "POST" if methods == {"post"} else "GET, HEAD")
            schema = {"$ref": "#/components/schemas/Error"}  # the common error body
        else:
            documented = self.v.parameters(template, method)
            for name, value in params.items():
                self.assertIn(name, documented, f"{method} {template}: parameter {name} not documented")
                self.v.check(documented[name]["schema"], int(value) if name == "version" else value)
            content = self.v.response_schema(template, method, st)
            for name, h in self.v.response(template, method, st).get("headers", {}).items():
                if name == "Retry-After":
                    self.assertIn("retry-after", hdrs, f"{method} {path} {st}: no Retry-After")
                if name.lower() in hdrs:
                    value = hdrs[name.lower()]
                    self.v.check(h["schema"], int(value) if h["schema"].get("type") == "integer" else value)
            ctype = hdrs.get("content-type", "").split(";")[0].strip()
            self.assertIn(ctype, content, f"{method} {path} {st}: content type {ctype} not documented")
            schema = content[ctype].get("schema", {})
            if ctype != "application/json":
                self.v.check(schema, data.decode())
                return st, data
        doc = json.loads(data)
        self.v.check(schema, doc)
        return st, doc

    def code(self, method, path, body=None, expect=None, **kw):
        """answer() of an error: returns its code and message."""
        st, doc = self.answer(method, path, body, expect=expect, **kw)
        return doc["error"]["code"], doc["error"]["message"]


class OpenApiServerTest(AnswerChecks, unittest.TestCase):
    """Real answers of a real server on a model file against the document."""

    @classmethod
    def setUpClass(cls):
        spec, request_schema = load_spec()
        cls.v = Validator(spec, request_schema)
        cls.srv = dcnproc.Server(MODEL, "--workers", "1", "--max-candidates", "50",
                                 "--drain-delay-ms", "0").start()
        st, _, cls.info = cls.srv.request_json("GET", "/v1/model")
        assert st == 200, st
        cls.name = cls.info["name"]

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def rank_body(self, n=5, **extra):
        dense = [f["name"] for f in self.info["features"]["dense"]]
        sparse = [f["name"] for f in self.info["features"]["sparse"]]
        body = {"request_id": "r-1", "context": {dense[0]: 2.0, sparse[0]: "68fd1e64"},
                "candidates": [{"id": i if i % 2 else f"item-{i}",
                                "features": {dense[1]: float(i), sparse[1]: str(i * 7), sparse[2]: None}}
                               for i in range(n)]}
        body.update(extra)
        self.v.check(self.v.request_schema, body)
        return body

    def test_rank_ok(self):
        body = self.rank_body(top_k=3)
        body["return"] = {"logits": True}
        st, doc = self.answer("post", "/rank", body, expect=200)
        self.assertEqual(len(doc["ranked"]), 3)
        self.assertIn("logit", doc["ranked"][0])
        self.answer("post", "/rank", self.rank_body(n=1, request_id=7), expect=200)

    def test_rank_errors(self):
        self.answer("post", "/rank", b"garbage{", expect=400)
        self.answer("post", "/rank", {"candidates": 5}, expect=400)
        self.answer("post", "/rank", {"candidates": [{"id": 1, "features": {"no_such_feature": 1}}]}, expect=400)
        self.answer("post", "/rank", self.rank_body(n=51), expect=413)
        self.answer("post", "/rank", b"{}", headers={"Content-Type": "text/plain"}, expect=415)
        self.answer("get", "/rank", expect=405)
        self.answer("get", "/no/such/path", expect=404)

    def test_health_model_metrics_reload(self):
        for path in ("/v2/health/live", "/healthz", "/v2/health/ready", "/readyz", "/v1/model", "/metrics"):
            self.answer("get", path, expect=200)
        st, page = self.answer("get", "/status", expect=200)
        self.assertIn(b"<html", page)  # its markup is not an interface: no more is checked
        self.answer("post", "/status", expect=405)
        self.assertEqual(self.answer("get", "/readyz")[1], {"status": "ready"})
        # the file's own version string, and the version label answers carry
        self.assertEqual((self.info["version"], self.info["model_version"]), ("1", "1"))
        st, doc = self.answer("post", "/admin/reload", expect=200)
        # a reload of a file serves the file anew: one version loads, the old one unloads
        self.assertEqual(doc, {"status": "reloaded", "model": {"name": self.name, "version": "1"},
                               "loaded": 1, "failed": 0, "unloading": 1,
                               "serving": [{"model": self.name, "version": "1"}]})

    def test_per_model_paths_on_a_model_file(self):
        """A model file is a repository of one model with one version, 1."""
        st, doc = self.answer("get", "/v1/models", expect=200)
        self.assertEqual([m["name"] for m in doc["models"]], [self.name])
        self.assertEqual(doc["models"][0]["canary"], None)
        served = [x for x in doc["models"][0]["versions"] if x["state"] == "serving"]
        self.assertEqual(len(served), 1)
        self.assertEqual((served[0]["version"], served[0]["file"], served[0]["model_version"]),
                         ("1", MODEL, self.info["model_version"]))
        self.assertEqual(served[0]["file_bytes"], self.info["file_bytes"])
        self.answer("get", f"/v1/models/{self.name}", expect=200)
        st, doc = self.answer("get", f"/v1/models/{self.name}/versions/1", expect=200)
        self.assertEqual({k: doc[k] for k in ("name", "version", "crc32")},
                         {k: self.info[k] for k in ("name", "version", "crc32")})
        self.assertIn("serving: 1", self.code("get", f"/v1/models/{self.name}/versions/2", expect=404)[1])
        self.assertEqual(self.code("get", "/v1/models/nope", expect=404)[0], "not_found")
        st, doc = self.answer("post", f"/v1/models/{self.name}/rank", self.rank_body(n=4), expect=200)
        self.assertEqual((doc["model"], len(doc["ranked"])), ({"name": self.name, "version": "1"}, 4))
        st, doc = self.answer("post", f"/v1/models/{self.name}/versions/1/rank", self.rank_body(n=2), expect=200)
        self.assertEqual((doc["model"], len(doc["ranked"])), ({"name": self.name, "version": "1"}, 2))
        self.answer("post", "/v1/models/nope/rank", self.rank_body(n=2), expect=404)
        self.answer("post", f"/v1/models/{self.name}/versions/3/rank", self.rank_body(n=2), expect=404)
        st, doc = self.answer("get", f"/v2/models/{self.name}", expect=200)
        self.assertEqual((doc["name"], doc["versions"]), (self.name, ["1"]))
        self.assertEqual([x["name"] for x in doc["inputs"]],
                         [f["name"] for k in ("dense", "sparse") for f in self.info["features"][k]])
        self.answer("get", f"/v2/models/{self.name}/versions/1", expect=200)
        self.assertEqual(self.answer("get", f"/v2/models/{self.name}/ready", expect=200)[1],
                         {"name": self.name, "ready": True})
        self.answer("get", f"/v2/models/{self.name}/versions/1/ready", expect=200)

    def test_reload_errors_and_draining(self):
        srv = dcnproc.Server(MODEL, "--workers", "1", "--admin-token", "s3cret", "--drain-delay-ms", "3000").start()
        token = {"Authorization": "Bearer s3cret"}
        canary = f"/admin/models/{self.name}/canary"
        try:
            self.answer("post", "/admin/reload", srv=srv, expect=403)
            self.answer("post", "/admin/reload", srv=srv, headers=token, expect=200)
            self.assertEqual(self.code("post", canary, {"percent": 0}, srv=srv, expect=403)[0], "forbidden")
            st, doc = self.answer("post", canary, {"percent": 0}, srv=srv, headers=token, expect=200)
            self.assertEqual((doc["status"], doc["model"]["name"], doc["model"]["canary"]), ("ok", self.name, None))
            shadow = f"/admin/models/{self.name}/shadow"
            self.assertEqual(self.code("post", shadow, {"version": 0}, srv=srv, expect=403)[0], "forbidden")
            st, doc = self.answer("post", shadow, {"version": 0}, srv=srv, headers=token, expect=200)
            self.assertEqual(doc["model"]["shadow"], None)
            srv.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while True:
                st, doc = self.answer("get", "/readyz", srv=srv)
                if st == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual((st, doc), (503, {"status": "draining"}))
            self.answer("get", "/v2/health/ready", srv=srv, expect=503)
            # a model and a version that serve, not ready while draining
            for path in (f"/v2/models/{self.name}/ready", f"/v2/models/{self.name}/versions/1/ready"):
                self.assertEqual(self.answer("get", path, srv=srv, expect=503)[1], {"name": self.name, "ready": False})
        finally:
            srv.stop()


def publish_repository(repo):
    """alpha (versions 1, 2) and beta (3, 10), tiny models whose file
    version string is "<name>-<version>"; gamma, whose only version (1) is
    a directory without a model file: failed."""
    files = {}
    for name, vs in (("alpha", (1, 2)), ("beta", (3, 10))):
        for v in vs:
            files[name, v] = tr.publish(repo, name, v, None, seed=len(files) + 1)
    os.makedirs(os.path.join(repo, "gamma", "1"))
    return files


@unittest.skipUnless(os.path.exists(dcnproc.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class OpenApiRepositoryTest(AnswerChecks, unittest.TestCase):
    """Real answers of a real server on a model repository against the
    document, with their values: every per-model endpoint, its successes
    and its errors."""

    FEATURES = (["I1", "I2"], ["C1", "C2", "C3"])  # test_server.TINY_SPEC's dense and sparse

    @classmethod
    def setUpClass(cls):
        spec, request_schema = load_spec()
        cls.v = Validator(spec, request_schema)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.repo = os.path.join(cls.tmp.name, "repo")
        os.makedirs(cls.repo)
        cls.files = publish_repository(cls.repo)
        cls.srv = tr.RepoServer(cls.repo, "--workers", "1", "--keep-versions", "2", "--poll-s", "0",
                                "--max-candidates", "50").start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def rank_body(self, n=5, **routing):
        """A /rank body of n candidates (checked against the request schema
        when it has no routing fields: see test_routing_fields_...)."""
        body = {"request_id": "q", "context": {"I1": 3, "C1": "0a"},
                "candidates": [{"id": i, "features": {"I2": i / 2, "C2": ["a", str(i)], "C3": i % 10}}
                               for i in range(n)]}
        if not routing:
            self.v.check(self.v.request_schema, body)
        body.update(routing)
        return body

    def ranked_by(self, path, expect_model, n=5, **routing):
        st, doc = self.answer("post", path, self.rank_body(n, **routing), expect=200)
        self.assertEqual(doc["model"], expect_model)
        self.assertEqual(sorted(x["id"] for x in doc["ranked"]), list(range(n)))
        self.assertEqual([x["rank"] for x in doc["ranked"]], list(range(1, n + 1)))
        return doc

    def test_listing(self):
        st, doc = self.answer("get", "/v1/models", expect=200)
        self.assertEqual([m["name"] for m in doc["models"]], ["alpha", "beta", "gamma"])
        got = {m["name"]: [(x["version"], x["state"]) for x in m["versions"]] for m in doc["models"]}
        self.assertEqual(got, {"alpha": [("1", "serving"), ("2", "serving")],
                               "beta": [("3", "serving"), ("10", "serving")], "gamma": [("1", "failed")]})
        for m in doc["models"][:2]:
            for x in m["versions"]:
                self.assertEqual(x["model_version"], f"{m['name']}-{x['version']}")
                self.assertEqual(x["file"], self.files[m["name"], int(x["version"])])
                self.assertEqual(x["file_bytes"], os.path.getsize(x["file"]))
        self.assertIn("no model file", doc["models"][2]["versions"][0]["reason"])
        self.assertEqual([(m["canary"], m["shadow"]) for m in doc["models"]], [(None, None)] * 3)
        st, one = self.answer("get", "/v1/models/beta", expect=200)
        self.assertEqual((one["name"], [x["version"] for x in one["versions"]]), ("beta", ["3", "10"]))
        self.assertEqual(self.answer("get", "/v1/models/gamma", expect=200)[1], doc["models"][2])
        code, msg = self.code("get", "/v1/models/nope", expect=404)
        self.assertEqual(code, "not_found")
        self.assertIn('"alpha", "beta", "gamma"', msg)
        self.answer("post", "/v1/models", expect=405)
        self.answer("post", "/v1/models/alpha", expect=405)

    def test_model_versions(self):
        st, doc = self.answer("get", "/v1/models/beta/versions/10", expect=200)
        self.assertEqual((doc["name"], doc["version"], doc["model_version"], doc["file_bytes"]),
                         ("beta", "10", "beta-10", os.path.getsize(self.files["beta", 10])))
        names = tuple([f["name"] for f in doc["features"][k]] for k in ("dense", "sparse"))
        self.assertEqual(names, self.FEATURES)
        code, msg = self.code("get", "/v1/models/alpha/versions/9", expect=404)
        self.assertIn("serving: 1, 2", msg)
        self.code("get", "/v1/models/gamma/versions/1", expect=404)  # failed: not served
        self.code("get", "/v1/models/nope/versions/1", expect=404)
        # not routed: a leading zero
        self.assertEqual(self.code("get", "/v1/models/alpha/versions/01", expect=404),
                         ("not_found", "no such endpoint"))
        self.code("get", "/v1/models/alpha/versions/0", expect=404)
        self.code("post", "/v1/models/alpha/versions/1", expect=405)
        # several models: /v1/model cannot choose
        code, msg = self.code("get", "/v1/model", expect=400)
        self.assertEqual(code, "invalid_request")
        self.assertIn('"alpha", "beta"', msg)

    def test_rank_paths(self):
        self.ranked_by("/v1/models/alpha/rank", {"name": "alpha", "version": "2"})  # the latest
        self.ranked_by("/v1/models/alpha/versions/1/rank", {"name": "alpha", "version": "1"})
        self.ranked_by("/v1/models/beta/rank", {"name": "beta", "version": "10"}, n=3)
        self.ranked_by("/v1/models/beta/versions/3/rank", {"name": "beta", "version": "3"}, n=1)
        self.ranked_by("/rank", {"name": "beta", "version": "3"}, model="beta", version=3)
        self.ranked_by("/rank", {"name": "alpha", "version": "2"}, model="alpha")
        # the same version scores the same through the path and the body
        a = self.ranked_by("/v1/models/alpha/versions/1/rank", {"name": "alpha", "version": "1"})
        b = self.ranked_by("/rank", {"name": "alpha", "version": "1"}, model="alpha", version="1")
        self.assertEqual(a["ranked"], b["ranked"])

    def test_rank_errors(self):
        body = self.rank_body(3)
        code, msg = self.code("post", "/rank", body, expect=400)
        self.assertEqual(code, "invalid_request")
        self.assertIn('name one with "model"', msg)
        code, msg = self.code("post", "/rank", self.rank_body(3, model="zeta"), expect=404)
        self.assertIn('"alpha", "beta", "gamma"', msg)
        code, msg = self.code("post", "/rank", self.rank_body(3, model="beta", version=4), expect=404)
        self.assertIn("serving: 3, 10", msg)
        code, msg = self.code("post", "/v1/models/alpha/rank", self.rank_body(3, model="beta"), expect=400)
        self.assertIn("in the path", msg)
        self.code("post", "/v1/models/alpha/versions/2/rank", self.rank_body(3, version=1), expect=400)
        self.code("post", "/v1/models/nope/rank", body, expect=404)
        self.code("post", "/v1/models/alpha/versions/9/rank", body, expect=404)
        # a model listed with no version serving: 503 with Retry-After
        self.assertEqual(self.code("post", "/v1/models/gamma/rank", body, expect=503)[0], "unavailable")
        self.code("post", "/v1/models/alpha/rank", self.rank_body(51), expect=413)
        self.code("post", "/v1/models/alpha/versions/1/rank", b"{}", headers={"Content-Type": "text/plain"},
                  expect=415)
        self.code("post", "/v1/models/alpha/rank", b"garbage{", expect=400)
        self.assertEqual(self.code("post", "/v1/models/beta/rank", {"candidates": [{"id": 1, "features": {"C9": 1}}]},
                                   expect=400)[0], "unknown_feature")
        self.code("get", "/v1/models/alpha/rank", expect=405)
        self.code("get", "/v1/models/alpha/versions/1/rank", expect=405)
        self.code("post", "/v1/models/alpha/versions/1/rank/x", body, expect=404)

    def test_routing_fields_validate_against_the_request_schema(self):
        """The body's routing fields (model, version, routing_key) are in the
        request schema: what the server accepts validates, what it refuses
        does not."""
        for fields in ({"model": "beta"}, {"model": "beta", "version": 3}, {"model": "beta", "version": "10"},
                       {"model": "alpha", "routing_key": "user-1"}, {"model": "alpha", "routing_key": 12345}):
            body = self.rank_body(2, **fields)
            self.v.check(self.v.request_schema, body)
            self.answer("post", "/rank", body, expect=200)
        for fields in ({"model": 5}, {"model": ""}, {"version": 0}, {"version": "1x"}, {"routing_key": [1]}):
            body = self.rank_body(2, **dict({"model": "alpha"}, **fields))
            self.assertEqual(self.code("post", "/rank", body, expect=400)[0], "invalid_request", fields)
            with self.assertRaises(jsonschema.ValidationError, msg=fields):
                self.v.check(self.v.request_schema, body)

    def test_v2_metadata_and_readiness(self):
        st, doc = self.answer("get", "/v2/models/alpha", expect=200)
        want_inputs = ([{"name": n, "datatype": "FP32", "shape": [-1]} for n in self.FEATURES[0]]
                       + [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in self.FEATURES[1]])
        self.assertEqual(doc, {"name": "alpha", "versions": ["1", "2"], "platform": "dcnserve", "inputs": want_inputs,
                               "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]})
        st, doc = self.answer("get", "/v2/models/beta/versions/3", expect=200)
        self.assertEqual((doc["name"], doc["versions"]), ("beta", ["3", "10"]))
        self.code("get", "/v2/models/zeta", expect=404)
        self.code("get", "/v2/models/beta/versions/4", expect=404)
        self.assertEqual(self.code("get", "/v2/models/gamma", expect=503)[0], "unavailable")
        for path in ("/v2/models/alpha/ready", "/v2/models/alpha/versions/1/ready",
                     "/v2/models/beta/versions/10/ready"):
            self.assertEqual(self.answer("get", path, expect=200)[1]["ready"], True, path)
        self.assertEqual(self.answer("get", "/v2/models/gamma/ready", expect=503)[1], {"name": "gamma", "ready": False})
        self.code("get", "/v2/models/gamma/versions/1/ready", expect=404)
        self.code("get", "/v2/models/alpha/versions/7/ready", expect=404)
        self.code("get", "/v2/models/zeta/ready", expect=404)
        self.code("post", "/v2/models/alpha/ready", expect=405)
        self.code("post", "/v2/models/alpha/versions/1", expect=405)
        self.assertEqual(self.answer("get", "/readyz", expect=200)[1], {"status": "ready"})

    def test_canary(self):
        path = "/admin/models/beta/canary"
        canary = self.v.spec["paths"][path.replace("beta", "{name}")]["post"]["requestBody"]["content"][
            "application/json"]["schema"]

        def set_canary(body, expect):
            if expect == 200:
                self.v.check(canary, body)
            st, doc = self.answer("post", path, body, expect=expect)
            return doc

        try:
            doc = set_canary({"version": 3, "percent": 25}, 200)
            self.assertEqual((doc["status"], doc["model"]["name"]), ("ok", "beta"))
            self.assertEqual(doc["model"]["canary"], {"version": "3", "percent": 25.0})
            self.assertEqual(self.answer("get", "/v1/models/beta", expect=200)[1]["canary"], doc["model"]["canary"])
            seen = {}
            for i in range(200):
                st, out = self.answer("post", "/v1/models/beta/rank", self.rank_body(1, routing_key=f"user-{i}"),
                                      expect=200)
                seen[f"user-{i}"] = out["model"]["version"]
            share = sum(x == "3" for x in seen.values()) / len(seen)
            self.assertTrue(0.1 < share < 0.4, share)
            self.assertEqual(set(seen.values()), {"3", "10"})
            for k in list(seen)[:20]:  # sticky
                st, out = self.answer("post", "/rank", self.rank_body(1, model="beta", routing_key=k), expect=200)
                self.assertEqual(out["model"]["version"], seen[k], k)
            # a named version wins over the split
            st, out = self.answer("post", "/v1/models/beta/versions/10/rank",
                                  self.rank_body(1, routing_key="user-0"), expect=200)
            self.assertEqual(out["model"]["version"], "10")
            doc = set_canary({"version": "3", "percent": 12.5}, 200)
            self.assertEqual(doc["model"]["canary"], {"version": "3", "percent": 12.5})
            for body, status, code in (({"version": 7, "percent": 5}, 404, "not_found"),
                                       ({"version": 3, "percent": 101}, 400, "invalid_request"),
                                       ({"version": 3, "percent": -1}, 400, "invalid_request"),
                                       ({"version": 3}, 400, "invalid_request"),
                                       ({"percent": 5}, 400, "invalid_request"),
                                       ({"version": "1x", "percent": 5}, 400, "invalid_request"),
                                       ({"version": 3, "percent": 5, "x": 1}, 400, "invalid_request"),
                                       ("nope", 400, "invalid_request"), (b"garbage{", 400, "invalid_request")):
                doc = set_canary(body, status)
                self.assertEqual(doc["error"]["code"], code, body)
                if status == 400 and not isinstance(body, bytes):  # the schema refuses it too
                    with self.assertRaises(jsonschema.ValidationError, msg=body):
                        self.v.check(canary, body)
            code, msg = self.code("post", "/admin/models/zeta/canary", {"version": 1, "percent": 5}, expect=404)
            self.assertIn('"alpha", "beta", "gamma"', msg)
            self.code("get", path, expect=405)
            # the failed errors left the split as it was
            self.assertEqual(self.answer("get", "/v1/models/beta", expect=200)[1]["canary"],
                             {"version": "3", "percent": 12.5})
        finally:
            doc = set_canary({"percent": 0}, 200)
        self.assertEqual(doc["model"]["canary"], None)
        for i in range(20):
            st, out = self.answer("post", "/v1/models/beta/rank", self.rank_body(1, routing_key=f"user-{i}"),
                                  expect=200)
            self.assertEqual(out["model"]["version"], "10")

    def test_shadow(self):
        path = "/admin/models/alpha/shadow"
        try:
            st, doc = self.answer("post", path, {"version": 1}, expect=200)
            self.assertEqual((doc["status"], doc["model"]["name"]), ("ok", "alpha"))
            self.assertEqual(doc["model"]["shadow"], {"version": "1", "scored": 0, "skipped_busy": 0, "dropped": 0,
                                                      "failed": 0, "mean_score_diff": None,
                                                      "mean_rank_correlation": None})
            n = 6
            for _ in range(n):  # answered by version 2, shadowed by version 1
                self.ranked_by("/v1/models/alpha/rank", {"name": "alpha", "version": "2"}, n=4)
            outcomes = ("scored", "skipped_busy", "dropped", "failed")
            sh = tr.wait_for(lambda: (lambda x: x if sum(x[k] for k in outcomes) == n else None)(
                self.answer("get", "/v1/models/alpha", expect=200)[1]["shadow"]), timeout=10)
            self.assertIsNotNone(sh, "shadow outcomes never added up")
            self.assertEqual(sh["failed"], 0, sh)
            self.assertGreater(sh["scored"], 0, sh)
            self.assertGreater(sh["mean_score_diff"], 0, sh)  # two versions of different weights
            self.assertIsNotNone(sh["mean_rank_correlation"], sh)
            # a new shadow version starts afresh; "10" as a string
            st, doc = self.answer("post", "/admin/models/beta/shadow", {"version": "10"}, expect=200)
            self.assertEqual((doc["model"]["shadow"]["version"], doc["model"]["shadow"]["scored"]), ("10", 0))
            for body, status in (({"version": 9}, 404), ({"version": "x"}, 400), ({}, 400),
                                 ({"version": 1, "x": 1}, 400), ({"version": -1}, 400), (b"garbage{", 400)):
                code, msg = self.code("post", path, body, expect=status)
                self.assertEqual(code, "not_found" if status == 404 else "invalid_request", body)
            self.assertIn("serving: 1, 2", self.code("post", path, {"version": 9}, expect=404)[1])
            self.code("post", "/admin/models/zeta/shadow", {"version": 1}, expect=404)
            self.code("post", "/admin/models/gamma/shadow", {"version": 1}, expect=404)  # failed: not serving
            self.code("get", path, expect=405)
            # the errors left it as it was
            self.assertEqual(self.answer("get", "/v1/models/alpha", expect=200)[1]["shadow"]["version"], "1")
        finally:
            st, doc = self.answer("post", path, {"version": None}, expect=200)
            self.assertEqual(doc["model"]["shadow"], None)
            st, doc = self.answer("post", "/admin/models/beta/shadow", {"version": 0}, expect=200)
            self.assertEqual(doc["model"]["shadow"], None)

    def test_reload_changes_nothing(self):
        st, doc = self.answer("post", "/admin/reload", expect=200)
        self.assertEqual(doc, {"status": "reloaded", "model": {"name": "alpha", "version": "1"},
                               "loaded": 0, "failed": 0, "unloading": 0,
                               "serving": [{"model": m, "version": v} for m, v in
                                           (("alpha", "1"), ("alpha", "2"), ("beta", "3"), ("beta", "10"))]})
        self.code("get", "/admin/reload", expect=405)


@unittest.skipUnless(os.path.exists(dcnproc.DCNSERVE) and ts.dcnfile is not None, "dcnserve or dcnfile missing")
class OpenApiEmptyRepositoryTest(AnswerChecks, unittest.TestCase):
    """A server on an empty repository, not polled: not ready and
    unavailable until a reload finds a version; the reload's answers as a
    failed and then a good version appear; a repository gone is 422."""

    def setUp(self):
        spec, request_schema = load_spec()
        self.v = Validator(spec, request_schema)
        self.tmp = tempfile.TemporaryDirectory()
        self.repo = os.path.join(self.tmp.name, "repo")
        os.makedirs(self.repo)
        self.srv = tr.RepoServer(self.repo, "--workers", "1", "--poll-s", "0")
        self.srv.READY_PATH = "/healthz"
        self.srv.start()

    def tearDown(self):
        self.srv.stop()
        self.tmp.cleanup()

    def test_empty_then_failed_then_serving(self):
        for path in ("/readyz", "/v2/health/ready"):
            self.assertEqual(self.answer("get", path, expect=503)[1], {"status": "no_model"})
        self.assertEqual(self.answer("get", "/v1/models", expect=200)[1], {"models": []})
        self.assertEqual(self.code("get", "/v1/model", expect=503)[0], "unavailable")
        self.assertEqual(self.code("post", "/rank", {"candidates": [{"id": 1}]}, expect=503)[0], "unavailable")
        self.code("get", "/v2/models/m/ready", expect=404)
        self.code("post", "/admin/models/m/canary", {"percent": 0}, expect=404)
        # a version directory without its file yet: failed, nothing serves
        os.makedirs(os.path.join(self.repo, "m", "1"))
        st, doc = self.answer("post", "/admin/reload", expect=200)
        self.assertEqual({k: doc[k] for k in ("loaded", "failed", "unloading", "serving")},
                         {"loaded": 0, "failed": 1, "unloading": 0, "serving": []})
        self.assertNotIn("model", doc)
        self.assertIn("no model file", doc["first_error"])
        self.assertEqual(self.answer("get", "/v2/models/m/ready", expect=503)[1], {"name": "m", "ready": False})
        self.assertEqual(self.code("get", "/v2/models/m", expect=503)[0], "unavailable")
        self.assertEqual(self.code("post", "/v1/models/m/rank", {"candidates": [{"id": 1}]}, expect=503)[0],
                         "unavailable")
        self.code("post", "/admin/models/m/canary", {"version": 1, "percent": 5}, expect=404)
        self.answer("get", "/readyz", expect=503)
        # a version published: it serves
        tr.publish(self.repo, "m", 2, None, seed=4)
        st, doc = self.answer("post", "/admin/reload", expect=200)
        self.assertEqual(doc, {"status": "reloaded", "model": {"name": "m", "version": "2"},
                               "loaded": 1, "failed": 0, "unloading": 0, "serving": [{"model": "m", "version": "2"}]})
        self.assertEqual(self.answer("get", "/readyz", expect=200)[1], {"status": "ready"})
        st, doc = self.answer("get", "/v1/model", expect=200)  # one model: no name needed
        self.assertEqual((doc["name"], doc["version"], doc["model_version"]), ("m", "2", "m-2"))
        st, doc = self.answer("post", "/rank", {"candidates": [{"id": "a"}, {"id": "b"}]}, expect=200)
        self.assertEqual((doc["model"], len(doc["ranked"])), ({"name": "m", "version": "2"}, 2))
        st, doc = self.answer("get", "/v1/models/m", expect=200)
        self.assertEqual([(x["version"], x["state"]) for x in doc["versions"]], [("1", "failed"), ("2", "serving")])
        # the repository gone: 422, what served keeps serving
        moved = self.repo + ".moved"
        os.rename(self.repo, moved)
        try:
            code, msg = self.code("post", "/admin/reload", expect=422)
            self.assertEqual(code, "reload_failed")
            self.answer("post", "/v1/models/m/versions/2/rank", {"candidates": [{"id": 1}]}, expect=200)
        finally:
            os.rename(moved, self.repo)
        self.answer("post", "/admin/reload", expect=200)


if __name__ == "__main__":
    unittest.main()
