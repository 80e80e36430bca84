"""End-to-end parity: PyTorch reference -> model file -> the real dcnserve
binary over HTTP.

For every cross kind (vector, full, lowrank, mix) and both combinations
(stacked, parallel) — plus a cross_only mixture with a constant gate and a
bf16/int8 export — a small DCN-V2 is trained in PyTorch (tools/train.py's
functions, two short epochs) on the training split of the real Criteo rows,
exported with dcn_torch.to_dcn, checked by dcn-inspect --verify when built,
and served by dcnserve on a free loopback port. The held-out split is sent
over POST /rank (as 4 requests of 100 candidates, plus 20 requests that carry
a whole row in "context" to exercise shared features); every score must match
PyTorch's within 1e-5 absolute, and the AUC of the server's scores must equal
PyTorch's AUC.

Environment: DCNSERVE (server binary), DCN_INSPECT (dcn-inspect). Skipped,
with the reason, only while the server binary does not exist."""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import dcn_torch as dt  # noqa: E402
import train  # noqa: E402
from dcnproc import DCNSERVE, Server  # noqa: E402

DCN_INSPECT = os.environ.get("DCN_INSPECT", os.path.join(ROOT, "build", "release", "dcn-inspect"))
DATA = os.path.join(ROOT, "data", "criteo_train_1999.csv")
SCORE_TOL = 1e-5

# name -> (train.py flags). Covers every kind x {stacked, parallel}, the
# vocab and hashing mappings, bottom MLPs, per-feature dims, every gate kind,
# shared and per-layer gates, several activations, and reduced precision.
CONFIGS = {
    "vector_stacked": "--cross vector --layers 3 --deep 16 --emb-dim 4",
    "vector_parallel": "--cross vector --layers 2 --deep 16,8 --combine parallel --hash-buckets 500",
    "full_stacked": "--cross full --layers 2 --bottom 16,8 --deep 16 --emb-dim 4",
    "full_parallel": "--cross full --layers 2 --deep 16 --combine parallel --hash-buckets 300 --emb-dim 3",
    "lowrank_stacked": "--cross lowrank --rank 8 --layers 3 --deep 32,16 --emb-dim 4 --emb-dims C1=6,C9=2",
    "lowrank_parallel": "--cross lowrank --rank 5 --layers 2 --bottom 8 --deep 8 --combine parallel",
    "mix_stacked": "--cross mix --experts 3 --rank 4 --layers 2 --activation tanh --gate softmax "
                   "--deep 16 --emb-dim 4",
    "mix_parallel": "--cross mix --experts 2 --rank 6 --layers 2 --activation relu --gate sigmoid "
                    "--gate-shared --deep 16 --combine parallel --hash-buckets 400 --emb-dim 4",
    "mix_cross_only": "--cross mix --experts 4 --rank 3 --layers 2 --activation hard_tanh "
                      "--gate constant --deep= --combine cross_only --emb-dim 4",
    "full_stacked_bf16_i8": "--cross full --layers 2 --deep 16 --emb-dim 4",
}
QUANTIZED = {"full_stacked_bf16_i8": ("bf16", "i8")}


@unittest.skipUnless(os.access(DCNSERVE, os.X_OK),
                     f"the dcnserve binary ({DCNSERVE}) is not built yet: run make")
class HttpParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        cls.tmp = tempfile.TemporaryDirectory()
        labels, rows = train.read_criteo(DATA)
        tr, va = train.split(len(rows), 0.2, seed=42)
        cls.train_rows = [rows[i] for i in tr]
        cls.valid_rows = [rows[i] for i in va]
        cls.y_train = torch.from_numpy(labels[tr])
        cls.y_valid = labels[va]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    # Trains the model of one config for two epochs; returns (module, path).
    def build(self, name):
        args = train.parser().parse_args(["--data", DATA, "--seed", "7", "--min-count", "3"]
                                         + CONFIGS[name].split())
        spec = train.build_spec(args, self.train_rows)
        spec.name, spec.version = "parity-" + name.replace("_", "-"), "1"
        torch.manual_seed(7)
        module = dt.DCNv2(spec)
        enc = dt.encode(spec, self.train_rows)
        train.fit(module, enc + (self.y_train,), None, epochs=2, batch=128, lr=3e-3, seed=7,
                  progress=False)
        module.eval()
        path = os.path.join(self.tmp.name, name + ".dcn")
        dtype, emb = QUANTIZED.get(name, ("f32", None))
        dt.to_dcn(module, path, dtype=dtype, emb_dtype=emb)
        if name in QUANTIZED:
            module = dt.load_dcn(path)         # what the engine computes: widened weights
        if os.access(DCN_INSPECT, os.X_OK):
            r = subprocess.run([DCN_INSPECT, "--verify", "--quiet", path], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 0, f"dcn-inspect rejects {name}: {r.stdout}{r.stderr}")
        return module, path

    # Scores the validation rows over HTTP: returns (scores, logits) by row.
    def serve_scores(self, srv):
        n = len(self.valid_rows)
        scores, logits = np.full(n, np.nan), np.full(n, np.nan)
        for start in range(0, n, 100):
            cands = [{"id": i, "features": self.valid_rows[i]} for i in range(start, min(n, start + 100))]
            st, _, out = srv.request_json("POST", "/rank", {"candidates": cands, "return": {"logits": True}})
            self.assertEqual(st, 200, out)
            for c in out["ranked"]:
                scores[c["id"]], logits[c["id"]] = c["score"], c["logit"]
        # Whole rows in the context (shared features), one candidate each.
        for i in range(0, n, n // 20):
            st, _, out = srv.request_json("POST", "/rank", {"context": self.valid_rows[i],
                                                            "candidates": [{"id": "x", "features": {}}]})
            self.assertEqual(st, 200, out)
            self.assertLess(abs(out["ranked"][0]["score"] - scores[i]), SCORE_TOL)
        return scores, logits

    def check(self, name):
        module, path = self.build(name)
        want, want_logit = dt.score_rows(module, self.valid_rows)
        srv = Server(path, "--workers", "2", "--drain-delay-ms", "0").start()
        try:
            st, _, _ = srv.request("GET", "/v1/model")
            self.assertEqual(st, 200)
            got, got_logit = self.serve_scores(srv)
        finally:
            srv.stop()
            srv.close()
        self.assertFalse(np.isnan(got).any(), "a row was not answered")
        err = np.abs(got - want)
        self.assertLess(err.max(), SCORE_TOL, f"{name}: worst row {int(err.argmax())}")
        self.assertLess(np.abs(got_logit - want_logit).max(), 1e-4 * max(1.0, np.abs(want_logit).max()))
        auc_torch, auc_srv = train.auc(self.y_valid, want), train.auc(self.y_valid, got)
        self.assertEqual(auc_srv, auc_torch, f"{name}: AUC {auc_srv} (server) vs {auc_torch} (PyTorch)")
        self.assertTrue(0.0 < auc_torch < 1.0)

    def test_vector_stacked(self):
        self.check("vector_stacked")

    def test_vector_parallel(self):
        self.check("vector_parallel")

    def test_full_stacked(self):
        self.check("full_stacked")

    def test_full_parallel(self):
        self.check("full_parallel")

    def test_lowrank_stacked(self):
        self.check("lowrank_stacked")

    def test_lowrank_parallel(self):
        self.check("lowrank_parallel")

    def test_mix_stacked(self):
        self.check("mix_stacked")

    def test_mix_parallel(self):
        self.check("mix_parallel")

    def test_mix_cross_only(self):
        self.check("mix_cross_only")

    def test_full_stacked_bf16_i8(self):
        self.check("full_stacked_bf16_i8")


if __name__ == "__main__":
    unittest.main()
