"""Low-rank compression (tools/compress.py): truncated SVD of full-rank cross
layers. A model whose cross matrices are built with a known rank must be
recovered exactly at that rank (and found by --energy), the retained energy
must be reported per layer, the written file must load in the engine's
format and the C tools (dcn-inspect; dcn-bench for samples/s) when built,
and the CLI must print logloss/AUC before and after on labeled rows."""
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import compress  # noqa: E402
import dcn_torch as dt  # noqa: E402
import train  # noqa: E402

torch.set_num_threads(1)
DATA = os.path.join(ROOT, "data", "criteo_train_1999.csv")
DCN_INSPECT = os.environ.get("DCN_INSPECT", os.path.join(ROOT, "build", "release", "dcn-inspect"))


def low_rank_model(true_rank=5, noise=0.0, seed=0):
    """A Criteo-shaped full-rank model whose cross matrices have rank true_rank
    (plus optional noise), other weights random."""
    labels, rows = train.read_criteo(DATA, limit=300)
    args = train.parser().parse_args(["--data", DATA, "--cross", "full", "--layers", "2",
                                      "--emb-dim", "3", "--deep", "8", "--min-count", "3"])
    spec = train.build_spec(args, rows)
    torch.manual_seed(seed)
    m = dt.DCNv2(spec)
    d = spec.d()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for l in range(2):
            A = torch.randn(d, true_rank, generator=g) / d ** 0.5
            B = torch.randn(true_rank, d, generator=g) / d ** 0.5
            m.cross.layer(l).weight.copy_(A @ B + noise * torch.randn(d, d, generator=g) / d)
            m.cross.layer(l).bias.copy_(torch.randn(d, generator=g) * 0.1)
    return m.eval(), labels, rows


class CompressTest(unittest.TestCase):
    def test_exact_at_the_true_rank(self):
        m, _, rows = low_rank_model(true_rank=5)
        small, report = compress.compress(m, rank=5)
        self.assertEqual(small.spec.arch.cross_kind, "lowrank")
        for x in report:
            self.assertGreater(x["retained_energy"], 1 - 1e-9)
            self.assertLess(x["rel_frobenius_error"], 1e-5)
        a, _ = dt.score_rows(m, rows)
        b, _ = dt.score_rows(small, rows)
        self.assertLess(np.abs(a - b).max(), 1e-5)

    def test_energy_picks_the_rank(self):
        m, _, _ = low_rank_model(true_rank=4, noise=0.01)
        small, report = compress.compress(m, energy=0.99)
        self.assertEqual(small.spec.arch.rank, 4)
        self.assertTrue(all(x["retained_energy"] >= 0.99 for x in report))
        _, rep2 = compress.compress(m, rank=2)
        self.assertTrue(all(x["retained_energy"] < 0.99 for x in rep2))

    def test_refuses_other_kinds(self):
        m = dt.load_dcn(os.path.join(ROOT, "tests", "golden", "lowrank_stacked.dcn"))
        with self.assertRaisesRegex(ValueError, "full"):
            compress.compress(m, rank=2)

    def test_cli_reports_quality_and_engine_speed(self):
        m, _, _ = low_rank_model(true_rank=6, noise=0.05)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst, js = (os.path.join(tmp, n) for n in ("full.dcn", "low.dcn", "r.json"))
            dt.to_dcn(m, src)
            buf = io.StringIO()
            with redirect_stdout(buf):
                rc = compress.main([src, "--out", dst, "--energy", "0.95", "--data", DATA,
                                    "--limit", "400", "--bench-time", "0.2", "--bench-repeat", "1", "--json", js])
            self.assertEqual(rc, 0)
            out = buf.getvalue()
            self.assertIn("retained energy", out)
            self.assertIn("logloss", out)
            with open(js) as fh:
                res = json.load(fh)
            self.assertEqual(len(res["layers"]), 2)
            self.assertLess(res["bytes_after"], res["bytes_before"])
            self.assertLess(abs(res["auc_after"] - res["auc_before"]), 0.02)
            if compress.find_bench():
                self.assertGreater(res["samples_per_s_before"], 0)
                self.assertGreater(res["samples_per_s_after"], 0)
            if os.access(DCN_INSPECT, os.X_OK):
                r = subprocess.run([DCN_INSPECT, "--verify", "--quiet", dst], capture_output=True)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
