"""INT8 calibration (tools/calibrate.py): smoothing factors measured on rows
and written into a copy of the model file (FORMAT.md §3).

Checked end to end on the bundled trained model with the real dcnserve:
calibrated on the unlabeled Criteo rows, then served with and without
--int8 and asked about other (labeled) rows over HTTP. The float path must
ignore the factors (scores equal to the original file's, bit for bit in the
JSON), the INT8 path must use them (/v1/model says how many) and land closer
to float than INT8 without them. The PyTorch simulation of the engine's INT8
that picks alpha must give the real server's INT8 scores, with and without
factors, on full, low-rank and mix models (every gate). Also: with a fixed
alpha the factors follow the SmoothQuant formula from the statistics, and
the statistics are what each quantized layer reads; the writer refuses keys
that name no layer or have the wrong length; recalibrating replaces keys."""
import io
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import calibrate  # noqa: E402
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402
import export  # noqa: E402
import train  # noqa: E402
from dcnproc import Server  # noqa: E402

torch.set_num_threads(1)
MODEL = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")
CALIB = os.path.join(ROOT, "data", "criteo_test_1999_unlabeled.csv")
EVAL = os.path.join(ROOT, "data", "criteo_train_1999.csv")
GOLDEN = os.path.join(ROOT, "tests", "golden")


def serve_scores(path, rows, *flags):
    """Scores rows through a real dcnserve on path: (scores, /v1/model)."""
    srv = Server(path, "--workers", "2", "--drain-delay-ms", "0", *flags).start()
    try:
        st, _, info = srv.request_json("GET", "/v1/model")
        assert st == 200, info
        out = np.full(len(rows), np.nan)
        for start in range(0, len(rows), 100):
            cands = [{"id": i, "features": rows[i]} for i in range(start, min(len(rows), start + 100))]
            st, _, body = srv.request_json("POST", "/rank", {"candidates": cands})
            assert st == 200, body
            for c in body["ranked"]:
                out[c["id"]] = c["score"]
        return out, info
    finally:
        srv.stop()
        srv.close()


def factors_of(path):
    f = dcnfile.DcnFile(path)
    return {k[len(dcnfile.SMOOTH_PREFIX):]: np.asarray(v, dtype=np.float32)
            for k, v in f.metadata.items() if k.startswith(dcnfile.SMOOTH_PREFIX)}


class CalibrateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        _, cls.calib_rows = train.read_criteo(CALIB, limit=1000)
        cls.labels, cls.rows = train.read_criteo(EVAL, limit=600)
        cls.log = io.StringIO()
        cls.out = os.path.join(cls.tmp.name, "calibrated.dcn")
        cls.alpha = calibrate.calibrate(MODEL, cls.calib_rows, None, cls.out, log=cls.log)
        cls.out04 = os.path.join(cls.tmp.name, "alpha04.dcn")
        calibrate.calibrate(MODEL, cls.calib_rows, 0.4, cls.out04, log=io.StringIO())

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_keys_follow_the_formula(self):
        f = dcnfile.DcnFile(self.out04)
        targets = dcnfile.smooth_targets(f.metadata)
        self.assertEqual(set(targets), {"cross.0.weight", "cross.1.weight", "cross.2.weight",
                                        "deep.0.weight", "deep.1.weight"})
        module = dt.load_dcn(MODEL)
        amax = calibrate.collect(module, self.calib_rows)
        for name, n in targets.items():
            s = np.asarray(f.metadata[dcnfile.SMOOTH_PREFIX + name], dtype=np.float64)
            self.assertEqual(len(s), n)
            self.assertEqual(f.types[dcnfile.SMOOTH_PREFIX + name], "array/f32")
            W = module.state_dict()[name].double().numpy()
            want = amax[name] ** 0.4 / np.abs(W).max(0) ** 0.6
            want = np.maximum(want, np.median(want))    # outliers shrunk, nothing blown up
            ratio = s / want                            # one common factor (normalisation)
            self.assertLess(ratio.max() / ratio.min() - 1, 1e-5, name)
            self.assertAlmostEqual(float(np.exp(np.log(s).mean())), 1.0, places=4)
        self.assertIn("alpha 0.4, over 1000 rows", f.metadata["dcnv2.int8.calibration"])
        # nothing else changed: every tensor and every other key as in the original
        g = dcnfile.DcnFile(MODEL)
        for k, v in g.metadata.items():
            if k != "dcnv2.checksum.crc32":
                self.assertEqual(f.metadata[k], v, k)
        for name in g.tensors:
            self.assertTrue(np.array_equal(np.asarray(g.tensors[name]), np.asarray(f.tensors[name])), name)

    def test_search_reports_and_picks_the_best_alpha(self):
        text = self.log.getvalue()
        self.assertIn("alpha none: simulated INT8 score change", text)
        means = {}
        for line in text.splitlines():
            if "simulated INT8 score change mean" in line:
                a = line.split(":")[0].split()[-1]
                means[None if a == "none" else float(a)] = float(line.split("mean ")[1].split(",")[0])
        self.assertEqual(len(means), 1 + len(calibrate.ALPHAS))
        self.assertEqual(self.alpha, min(means, key=means.get))
        self.assertIsNotNone(self.alpha, "smoothing should help the bundled model")
        self.assertLess(means[self.alpha], 0.75 * means[None])
        self.assertIn(f"alpha {self.alpha} (searched)", dcnfile.DcnFile(self.out).metadata["dcnv2.int8.calibration"])

    def test_simulation_is_the_engine(self):
        # The simulation that picks alpha scores rows as the real server does
        # under --int8: with and without factors, on full, low-rank and mix
        # layers (softmax, sigmoid and constant gates, shared and per layer).
        cases = [(MODEL, self.rows[:300]), (self.out, self.rows[:300])]
        for name in ("lowrank_stacked", "bottom_parallel_mix", "mix_sigmoid_shared", "mix_constant_k4"):
            src = os.path.join(GOLDEN, name + ".dcn")
            rows = export._random_rows(dt.load_dcn(src).spec, 150, seed=5)
            dst = os.path.join(self.tmp.name, name + ".dcn")
            calibrate.calibrate(src, export._random_rows(dt.load_dcn(src).spec, 150, seed=6), 0.3, dst,
                                log=io.StringIO())
            cases += [(src, rows), (dst, rows)]
        for path, rows in cases:
            sim = calibrate.simulate(dt.load_dcn(path), rows, factors_of(path))
            got, info = serve_scores(path, rows, "--int8")
            self.assertEqual(info["int8_smoothed"], len(factors_of(path)))
            d = np.abs(sim - got)
            # float summation order aside, a rounding tie may land one level apart
            self.assertLess(float(np.median(d)), 1e-6, path)
            self.assertLess(float(d.max()), 1e-3, path)

    def test_statistics_are_what_each_layer_reads(self):
        # low-rank U reads V x; a mix layer's C_i reads g(V_i x), its U the
        # gated g(C_i g(V_i x)) (the engine folds the gates in), expert-major
        for name in ("lowrank_stacked", "bottom_parallel_mix", "mix_sigmoid_shared", "mix_constant_k4"):
            path = os.path.join(GOLDEN, name + ".dcn")
            module = dt.load_dcn(path)
            rows = export._random_rows(module.spec, 40, seed=3)
            amax = calibrate.collect(module, rows)
            self.assertEqual(set(amax), set(dcnfile.smooth_targets(dcnfile.DcnFile(path).metadata)))
            xs = []
            module.cross.layer(0).register_forward_pre_hook(lambda m, a: xs.append(a[1].detach()))
            dt.score_rows(module, rows)
            x0 = torch.cat(xs)
            l0 = module.cross.layer(0)
            with torch.no_grad():
                if l0.kind == "lowrank":
                    want = {"cross.0.u": (x0 @ l0.v.T).abs().amax(0)}
                else:
                    K, r = l0.experts, l0.v.shape[1]
                    h1 = [l0.g(x0 @ l0.v[i].T) for i in range(K)]
                    h2 = [l0.g(h1[i] @ l0.c[i].T) for i in range(K)]
                    gate = module.cross.gate if module.cross.gate is not None else getattr(l0, "gate", None)
                    G = {"softmax": lambda: torch.softmax(gate(x0), 1), "sigmoid": lambda: torch.sigmoid(gate(x0)),
                         "constant": lambda: torch.full((len(x0), K), 1.0 / K)}[l0.gate_kind]()
                    want = {"cross.0.c": torch.cat(h1, 1).abs().amax(0),
                            "cross.0.u": torch.cat([h2[i] * G[:, i:i + 1] for i in range(K)], 1).abs().amax(0)}
            for k, v in want.items():
                self.assertLess(np.abs(amax[k] - v.double().numpy()).max(), 1e-5 * max(1.0, float(v.max())), k)

    def test_recalibrating_replaces_the_keys(self):
        again = os.path.join(self.tmp.name, "again.dcn")
        calibrate.calibrate(self.out04, self.calib_rows[:200], 0.5, again, log=io.StringIO())
        f = dcnfile.DcnFile(again)
        keys = [k for k in f.metadata if k.startswith(dcnfile.SMOOTH_PREFIX)]
        self.assertEqual(len(keys), 5)
        self.assertIn("alpha 0.5, over 200 rows", f.metadata["dcnv2.int8.calibration"])

    def test_writer_refuses_bad_keys(self):
        f = dcnfile.DcnFile(MODEL)
        meta = {k: (dcnfile.arr(t[6:], f.metadata[k]) if t.startswith("array/") else dcnfile.Typed(t, f.metadata[k]))
                for k, t in f.types.items()}
        tensors = {n: (np.array(f.f32(n)) if f.dtypes[n] in ("F32", "F16", "BF16") else np.array(f.tensors[n]),
                       f.dtypes[n]) for n in f.tensors}
        dst = os.path.join(self.tmp.name, "bad.dcn")
        for key, val, msg in (("logit.weight", [1.0] * 32, "no layer"),
                              ("deep.1.weight", [1.0] * 63, "64"),
                              ("deep.1.weight", [0.0] * 64, "smoothing factor"),
                              ("cross.0.weight", dcnfile.arr("u32", [1] * 221), "FLOAT32")):
            m = dict(meta)
            m[dcnfile.SMOOTH_PREFIX + key] = val if isinstance(val, dcnfile.Typed) else dcnfile.arr("f32", val)
            with self.assertRaisesRegex(dcnfile.DcnFormatError, msg):
                dcnfile.write_dcn(dst, m, tensors)
            self.assertFalse(os.path.exists(dst))

    def test_served_int8_is_closer_to_float(self):
        base, info0 = serve_scores(MODEL, self.rows)
        cal_f, info1 = serve_scores(self.out, self.rows)
        plain_q, _ = serve_scores(MODEL, self.rows, "--int8")
        cal_q, info3 = serve_scores(self.out, self.rows, "--int8")
        self.assertFalse(np.isnan(base).any() or np.isnan(cal_q).any())
        self.assertTrue(np.array_equal(base, cal_f), "float scores must ignore the smoothing factors")
        self.assertEqual((info0["int8_smoothed"], info1["int8_smoothed"], info3["int8_smoothed"]), (0, 5, 5))
        self.assertEqual(info3["dense_precision"], "int8")
        e_plain, e_cal = np.abs(plain_q - base), np.abs(cal_q - base)
        print(f"\nINT8 score change on {len(base)} rows: mean {e_plain.mean():.2e} -> {e_cal.mean():.2e}, "
              f"max {e_plain.max():.2e} -> {e_cal.max():.2e}", file=sys.stderr)
        self.assertLess(e_cal.mean(), 0.75 * e_plain.mean(), (e_cal.mean(), e_plain.mean()))
        y = np.asarray(self.labels)
        self.assertLess(abs(train.logloss(y, cal_q) - train.logloss(y, base)), 1e-3)


if __name__ == "__main__":
    unittest.main()
