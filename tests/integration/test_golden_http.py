"""Every golden parity case (tests/golden/*.json) replayed through HTTP
against the real dcnserve binary (env DCNSERVE): one server per case's
model, one POST /rank per segment (its context as "context", its rows as the
candidates), scores and logits compared with the case's expected values
within the case's tolerance, |got - want| <= abs + rel * |want|.

The golden files hold the requests exactly as the API takes them (see
tests/golden/README.md), so this checks decoding, id mapping, context
resolution, batching and encoding end to end against the independent NumPy
reference. A feature both in the context and in a row: the row wins, as the
API says; the expected values were computed with that rule.
"""
import glob
import json
import os
import threading
import unittest

import test_server as ts

GOLDEN = os.path.join(ts.ROOT, "tests", "golden")
CASES = sorted(glob.glob(os.path.join(GOLDEN, "*.json")))


def close_enough(got, want, tol):
    return abs(got - want) <= tol["abs"] + tol["rel"] * abs(want)


@unittest.skipUnless(os.path.exists(ts.DCNSERVE), "dcnserve missing")
@unittest.skipUnless(CASES, "no golden cases")
class GoldenHttpTest(unittest.TestCase):
    def replay(self, srv, case, concurrent=False):
        """Sends every segment of case; returns a list of mismatch messages."""
        tol = case["tolerance"]
        want_logit, want_score = case["expected"]["logit"], case["expected"]["score"]
        bad, first, reqs = [], 0, []
        for si, seg in enumerate(case["segments"]):
            rows = seg["rows"]
            req = {"request_id": si, "return": {"logits": True},
                   "candidates": [{"id": first + k, "features": r} for k, r in enumerate(rows)]}
            if seg.get("context"):
                req["context"] = seg["context"]
            reqs.append(req)
            first += len(rows)
        self.assertEqual(first, len(want_score), "expected arrays do not cover every row")

        def send(req):
            st, _, out = srv.rank(req)
            if st != 200:
                bad.append(f"segment {req['request_id']}: status {st}: {out}")
                return
            if out["request_id"] != req["request_id"] or len(out["ranked"]) != len(req["candidates"]):
                bad.append(f"segment {req['request_id']}: wrong answer shape: {out}")
                return
            for item in out["ranked"]:
                k = item["id"]
                if not close_enough(item["score"], want_score[k], tol):
                    bad.append(f"row {k}: score {item['score']!r}, expected {want_score[k]!r}")
                if not close_enough(item["logit"], want_logit[k], tol):
                    bad.append(f"row {k}: logit {item['logit']!r}, expected {want_logit[k]!r}")

        if concurrent:
            threads = [threading.Thread(target=send, args=(r,)) for r in reqs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        else:
            for r in reqs:
                send(r)
        return bad

    def test_every_golden_case_over_http(self):
        checked = 0
        for path in CASES:
            with open(path) as f:
                case = json.load(f)
            name = os.path.basename(path)[:-5]
            with self.subTest(case=name):
                model = os.path.join(GOLDEN, case["model"])
                # a small batch size and a queue delay mix segments of one
                # case into shared batches, and split the larger ones
                srv = ts.Server(model, "--workers", "2", "--max-batch-rows", "16",
                                "--max-queue-delay-us", "2000", "--drain-delay-ms", "0").start()
                try:
                    bad = self.replay(srv, case)
                    bad += self.replay(srv, case, concurrent=True)
                finally:
                    srv.stop()
                self.assertEqual(bad, [], f"{name}: {case.get('purpose', '')}")
                checked += 1
        self.assertEqual(checked, len(CASES))


if __name__ == "__main__":
    unittest.main()
