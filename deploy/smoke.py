#!/usr/bin/env python3
"""smoke.py — end-to-end smoke check of a running dcnserve (a container, a
Compose stack behind its load balancer, a local binary).

    deploy/smoke.py http://127.0.0.1:8080 [--expect-model NAME] [--candidates N] [--no-metrics]

Checks, printing one PASS/FAIL line each: /v2/health/live and
/v2/health/ready answer 200; /v1/model describes the model (and has the
expected name); a real POST /rank, built from the model's own feature names
(a context plus N candidates), answers 200 with every candidate ranked once
and scores in [0, 1]; /metrics counts that request (skip with --no-metrics
behind a load balancer, which keeps /metrics per replica). Exit status 0
when all pass, 1 otherwise. Standard library only, so it runs on any host.
"""
import argparse
import json
import math
import sys
import urllib.error
import urllib.request


def http(method, url, body=None, timeout=10):
    """Returns (status, body bytes); HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def feature_value(f, i):
    """A valid value for a sparse feature described by /v1/model."""
    if f.get("mapping") == "index":
        return i % max(1, int(f.get("vocab_size", 1)))
    return "%08x" % (0x68fd1e64 + 977 * i)


def build_request(model, n):
    """Context = the first half of the features, candidates = the rest, so
    both code paths of the decoder are exercised."""
    dense = [f["name"] for f in model["features"]["dense"]]
    sparse = model["features"]["sparse"]
    ctx = {name: float(k + 1) for k, name in enumerate(dense) if k % 2 == 0}
    for k, f in enumerate(sparse):
        if k % 2 == 0:
            ctx[f["name"]] = feature_value(f, k)
    cands = []
    for i in range(n):
        feats = {}
        for k, name in enumerate(dense):
            if k % 2 == 1:
                feats[name] = float(i % 7) + 0.5 * k
        for k, f in enumerate(sparse):
            if k % 2 == 1:
                feats[f["name"]] = feature_value(f, i * 31 + k)
        cands.append({"id": i + 1, "features": feats})
    return {"request_id": "smoke", "context": ctx, "candidates": cands}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url")
    ap.add_argument("--expect-model", default=None)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--no-metrics", action="store_true")
    a = ap.parse_args()
    base = a.base_url.rstrip("/")
    failures = 0

    def check(ok, what, detail=""):
        nonlocal failures
        print(("PASS: " if ok else "FAIL: ") + what + (" (" + detail + ")" if detail else ""))
        failures += 0 if ok else 1
        return ok

    for path in ("/v2/health/live", "/v2/health/ready"):
        st, _ = http("GET", base + path)
        check(st == 200, "GET " + path, "status %d" % st)

    st, body = http("GET", base + "/v1/model")
    model = json.loads(body) if st == 200 else None
    if not check(model is not None, "GET /v1/model", "status %d" % st):
        return 1
    name = model.get("name")
    if a.expect_model is not None:
        check(name == a.expect_model, "model name", "%r, expected %r" % (name, a.expect_model))

    req = build_request(model, a.candidates)
    st, body = http("POST", base + "/rank", req)
    ok = st == 200
    detail = "status %d" % st
    if ok:
        ans = json.loads(body)
        ranked = ans.get("ranked", [])
        ids = sorted(r["id"] for r in ranked)
        scores = [r["score"] for r in ranked]
        ok = (ids == list(range(1, a.candidates + 1))
              and all(isinstance(s, (int, float)) and 0.0 <= s <= 1.0 and not math.isnan(s) for s in scores)
              and scores == sorted(scores, reverse=True))
        detail = "%d candidates ranked, model %s, top score %.4f, total %s us" % (
            len(ranked), ans.get("model", {}).get("name"), scores[0] if scores else float("nan"),
            ans.get("latency_us", {}).get("total"))
    else:
        detail += ": " + body[:200].decode(errors="replace")
    check(ok, "POST /rank", detail)

    if a.no_metrics:
        return 1 if failures else 0
    st, body = http("GET", base + "/metrics")
    text = body.decode(errors="replace")
    check(st == 200 and 'dcnserve_requests_total{handler="rank",code="200"}' in text,
          "GET /metrics", "status %d, %d bytes" % (st, len(body)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
