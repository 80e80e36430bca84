"""proto/openapi.yaml against the real server: every route the server has is
documented with its methods (and nothing else is), every $ref resolves, and
the answers of a real dcnserve (200s and errors, health, model, reload,
draining) validate against the documented schema of their status. The
bodies the server accepts validate against the request schema too."""
import json
import os
import re
import signal
import sys
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import dcnproc  # noqa: E402

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


def server_routes():
    """(path, method) of every route in server/http.c's route table."""
    with open(os.path.join(ROOT, "server", "http.c"), encoding="utf-8") as f:
        src = f.read()
    rows = re.findall(r'\{"(/[^"]*)", R_[A-Z]+, (\d), MET_H_', src)
    if not rows:
        raise AssertionError("no route table found in server/http.c: update server_routes()")
    return {(p, "post" if int(post) else "get") for p, post in rows}


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

    def resolve(self, ref):
        _, target = self.resolver.resolve(ref)
        return target


class OpenApiDocumentTest(unittest.TestCase):
    def test_routes_match_the_server(self):
        spec, _ = load_spec()
        self.assertEqual(spec["openapi"], "3.1.0")
        documented = {(p, m) for p, item in spec["paths"].items() for m in item if m in METHODS}
        self.assertEqual(documented, server_routes(),
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


class OpenApiServerTest(unittest.TestCase):
    """Real answers of a real server against the document."""

    @classmethod
    def setUpClass(cls):
        spec, request_schema = load_spec()
        cls.v = Validator(spec, request_schema)
        cls.srv = dcnproc.Server(MODEL, "--workers", "1", "--max-candidates", "50",
                                 "--drain-delay-ms", "0").start()
        st, _, cls.info = cls.srv.request_json("GET", "/v1/model")
        assert st == 200, st

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def answer(self, method, path, body=None, headers=None, srv=None, expect=None):
        """Sends one request, checks its answer against the document and
        returns (status, parsed body)."""
        st, hdrs, data = (srv or self.srv).request(method.upper(), path, body, headers=headers)
        if expect is not None:
            self.assertEqual(st, expect, data[:300])
        if st in (404, 405) and (path, method) not in server_routes():
            schema = {"$ref": "#/components/schemas/Error"}  # any path: the common error body
        else:
            content = self.v.response_schema(path, method, st)
            ctype = hdrs.get("content-type", "").split(";")[0].strip()
            self.assertIn(ctype, content, f"{method} {path} {st}: content type {ctype} not documented")
            schema = content[ctype].get("schema", {})
            if ctype != "application/json":
                self.v.check(schema, data.decode())
                return st, data
        doc = json.loads(data)
        self.v.check(schema, doc)
        return st, doc

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
        self.answer("post", "/admin/reload", expect=200)

    def test_reload_errors_and_draining(self):
        srv = dcnproc.Server(MODEL, "--workers", "1", "--admin-token", "s3cret", "--drain-delay-ms", "3000").start()
        try:
            self.answer("post", "/admin/reload", srv=srv, expect=403)
            self.answer("post", "/admin/reload", srv=srv, headers={"Authorization": "Bearer s3cret"}, expect=200)
            srv.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while True:
                st, doc = self.answer("get", "/readyz", srv=srv)
                if st == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual((st, doc), (503, {"status": "draining"}))
            self.answer("get", "/v2/health/ready", srv=srv, expect=503)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main()
