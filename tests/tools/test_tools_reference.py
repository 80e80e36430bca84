"""The PyTorch reference (tools/dcn_torch.py) and training (tools/train.py).

- Golden parity: every case of tests/golden, loaded with load_dcn and scored
  through encode, matches the independent NumPy reference's logits within
  the case's tolerance (every cross kind, gate, activation, combination,
  mapping, pooling, dtype).
- Round trips: load_dcn -> to_dcn -> load_dcn keeps every tensor bit for bit
  (F32) or rounds exactly as FORMAT.md says (F16, BF16, I8), and the
  metadata; a train.py checkpoint and a spec dict survive JSON.
- Encoding rules: mean pooling counts zero-vector ids, missing features use
  missing_row, more ids than max_ids is an error.
- The forward pass exports to ONNX with dynamic batch and slot width.
- Training reads the CSV and the raw TSV layout alike and is deterministic."""
import io
import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402
import train  # noqa: E402

torch.set_num_threads(1)
GOLDEN = os.path.join(ROOT, "tests", "golden")
DATA = os.path.join(ROOT, "data", "criteo_train_1999.csv")


def golden_cases():
    if not os.path.isdir(GOLDEN):
        return []
    return sorted(f[:-5] for f in os.listdir(GOLDEN) if f.endswith(".json"))


def case_rows(case):
    rows = []
    for seg in case["segments"]:
        for r in seg["rows"]:
            x = dict(seg.get("context", {}))
            x.update(r)
            rows.append(x)
    return rows


class GoldenTest(unittest.TestCase):
    def test_every_golden_case(self):
        cases = golden_cases()
        if not cases:
            self.skipTest("tests/golden not generated")
        for name in cases:
            with self.subTest(case=name):
                with open(os.path.join(GOLDEN, name + ".json")) as fh:
                    case = json.load(fh)
                m = dt.load_dcn(os.path.join(GOLDEN, case["model"]))
                _, got = dt.score_rows(m, case_rows(case))
                exp = np.array(case["expected"]["logit"])
                tol = case["tolerance"]["abs"] + case["tolerance"]["rel"] * np.abs(exp)
                bad = np.abs(got - exp) > tol
                self.assertFalse(bad.any(), f"{name}: rows {np.flatnonzero(bad)[:5]}, "
                                            f"max diff {np.abs(got - exp).max():.3g}")


class RoundTripTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_f32_round_trip_is_exact_for_every_golden_model(self):
        for name in golden_cases():
            src = os.path.join(GOLDEN, name + ".dcn")
            if dcnfile.load_dcn(src).dtypes.get("emb.0.weight", "F32") != "F32":
                continue
            m = dt.load_dcn(src)
            dt.to_dcn(m, self.path("rt.dcn"))
            m2 = dt.load_dcn(self.path("rt.dcn"))
            with self.subTest(model=name):
                a, b = m.state_dict(), m2.state_dict()
                self.assertEqual(list(a), list(b))
                for k in a:
                    self.assertTrue(torch.equal(a[k], b[k]), k)
                meta1, t1 = dcnfile.read_dcn(src)
                meta2, t2 = dcnfile.read_dcn(self.path("rt.dcn"))
                for k in meta1:
                    if k == "dcnv2.checksum.crc32":
                        continue
                    self.assertEqual(meta1[k], meta2[k], k)
                for k in t1:
                    if k.startswith("vocab."):
                        np.testing.assert_array_equal(t1[k], t2[k])

    def test_reduced_precision_rounds_as_specified(self):
        m = dt.load_dcn(os.path.join(GOLDEN, "wide_criteo_like.dcn"))
        sd = m.state_dict()
        for dtype, emb in (("f16", None), ("bf16", None), ("f32", "i8"), ("bf16", "i8")):
            dt.to_dcn(m, self.path("q.dcn"), dtype=dtype, emb_dtype=emb)
            f = dcnfile.load_dcn(self.path("q.dcn"))
            q = dt.load_dcn(self.path("q.dcn")).state_dict()
            for k, v in sd.items():
                a = v.numpy()
                if k.endswith(".bias"):
                    want, st = a, "F32"
                elif k.startswith("emb.") and emb == "i8":
                    qq, sc = dcnfile.quantize_i8(a)
                    want, st = dcnfile.dequantize_i8(qq, sc), "I8"
                elif dtype == "f16" or (k.startswith("emb.") and emb == "f16"):
                    want, st = a.astype(np.float16).astype(np.float32), "F16"
                elif dtype == "bf16":
                    want, st = dcnfile.bf16_to_f32(dcnfile.bf16_bits(a)), "BF16"
                else:
                    want, st = a, "F32"
                with self.subTest(dtype=dtype, emb=emb, tensor=k):
                    self.assertEqual(f.dtypes[k], st)
                    np.testing.assert_array_equal(q[k].numpy(), want)

    def test_checkpoint_and_spec_dict_round_trip(self):
        m = dt.load_dcn(os.path.join(GOLDEN, "map_vocab.dcn"))
        spec2 = dt.ModelSpec.from_dict(json.loads(json.dumps(m.spec.to_dict())))
        self.assertEqual(spec2, m.spec)
        torch.save({"spec": m.spec.to_dict(), "state_dict": m.state_dict()}, self.path("c.pt"))
        m2 = dt.load_checkpoint(self.path("c.pt"))
        for k, v in m.state_dict().items():
            self.assertTrue(torch.equal(v, m2.state_dict()[k]))

    def test_state_dict_names_are_the_file_tensor_names(self):
        for name in ("mix_softmax_shared_nobias", "mix_softmax_layer", "bottom_parallel_mix",
                     "vector_stacked", "lowrank_stacked"):
            f = dcnfile.load_dcn(os.path.join(GOLDEN, name + ".dcn"))
            want = {k for k in f.tensors if not k.startswith("vocab.") and not k.endswith(".scale")}
            self.assertEqual(set(dt.load_dcn(os.path.join(GOLDEN, name + ".dcn")).state_dict()),
                             want, name)


def small_spec(pooling="mean", mapping="hash_mod"):
    return dt.ModelSpec(
        name="t", version="1",
        dense=[dt.DenseSpec(name="a", default=2.0, clip_min=-1.0, clip_max=5.0, transform="log",
                            log_shift=1.0, log_floor=0.5, mean=0.1, std=2.0)],
        sparse=[dt.SparseSpec(name="s", vocab_size=10, dim=3, pooling=pooling, mapping=mapping,
                              max_ids=4, missing_row=7, unknown_row=-1)],
        arch=dt.ArchSpec(cross_kind="lowrank", cross_layers=1, rank=2, deep=[4]))


class EncodeTest(unittest.TestCase):
    def test_dense_transform(self):
        m = dt.DCNv2(small_spec())
        vals = torch.tensor([[float("nan")], [-3.0], [0.0], [100.0]])
        got = m.dense_transform(vals).squeeze(1)
        f32 = np.float32
        ref = [(np.log(max(f32(v) + f32(1), f32(0.5))) - f32(0.1)) / f32(2.0)
               for v in (2.0, -1.0, 0.0, 5.0)]
        np.testing.assert_allclose(got.numpy(), np.array(ref, dtype=np.float32), rtol=0, atol=1e-7)

    def test_mean_pooling_counts_zero_vector_ids(self):
        spec = small_spec(mapping="index")
        m = dt.DCNv2(spec)
        d, ids, w = dt.encode(spec, [{"s": [1, 99, 3]}, {"s": []}, {}, {"s": 4}])
        E = m.emb[0].weight.detach()
        x0 = m.x0(d, ids, w).detach()
        torch.testing.assert_close(x0[0, 1:], (E[1] + E[3]) / 3)       # 99 is unknown -> zero
        torch.testing.assert_close(x0[1, 1:], E[7])                   # [] -> missing_row
        torch.testing.assert_close(x0[2, 1:], E[7])
        torch.testing.assert_close(x0[3, 1:], E[4])

    def test_too_many_ids_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "s"):
            dt.encode(small_spec(), [{"s": ["a", "b", "c", "d", "e"]}])

    def test_onnx_export(self):
        m = dt.load_dcn(os.path.join(GOLDEN, "bottom_parallel_mix.dcn"))
        x = dt.encode(m.spec, [{}, {}], width=2)
        buf = io.BytesIO()
        torch.onnx.export(m, x, buf, input_names=["dense", "ids", "weights"],
                          output_names=["logits"], opset_version=13,
                          dynamic_axes={"dense": {0: "B"}, "ids": {0: "B", 2: "W"},
                                        "weights": {0: "B", 2: "W"}, "logits": {0: "B"}})
        self.assertGreater(len(buf.getvalue()), 1000)


class TrainTest(unittest.TestCase):
    def test_tsv_and_csv_read_alike(self):
        y1, r1 = train.read_criteo(DATA, limit=50)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            with open(DATA) as src:
                next(src)
                for i, line in enumerate(src):
                    if i == 50:
                        break
                    parts = line.rstrip("\n").split(",")
                    fh.write("\t".join(parts[1:]) + "\n")
        try:
            y2, r2 = train.read_criteo(fh.name)
        finally:
            os.unlink(fh.name)
        np.testing.assert_array_equal(y1, y2)
        self.assertEqual(r1, r2)

    def test_auc_and_logloss(self):
        y = np.array([0, 0, 1, 1])
        self.assertEqual(train.auc(y, [0.1, 0.4, 0.35, 0.8]), 0.75)
        self.assertEqual(train.auc(y, [0.5, 0.5, 0.5, 0.5]), 0.5)
        self.assertAlmostEqual(train.logloss(y, [0.5] * 4), np.log(2))

    def test_training_is_deterministic(self):
        def run():
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "m.dcn")
                train.main(["--data", DATA, "--limit", "400", "--epochs", "2", "--quiet",
                            "--cross", "mix", "--experts", "2", "--rank", "4", "--deep", "8",
                            "--emb-dim", "2", "--out", out, "--metrics", os.path.join(tmp, "h.json")])
                with open(out, "rb") as fh, open(os.path.join(tmp, "h.json")) as hf:
                    return fh.read(), json.load(hf)
        import contextlib
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            a, ha = run()
            b, hb = run()
        self.assertEqual(a, b)
        self.assertEqual(len(ha["history"]), 2)
        self.assertIn("valid_auc", ha["history"][0])

    def test_default_model_loads_and_matches_its_card(self):
        path = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")
        self.assertLess(os.path.getsize(path), 10 * 1024 * 1024)
        m = dt.load_dcn(path)
        self.assertEqual((m.spec.name, m.spec.arch.cross_kind), ("criteo-dcn", "full"))
        labels, rows = train.read_criteo(DATA)
        _, va = train.split(len(rows), 0.2, 42)
        p, _ = dt.score_rows(m, [rows[i] for i in va])
        self.assertAlmostEqual(train.auc(labels[va], p), 0.6908, places=3)   # MODEL_CARD.md


if __name__ == "__main__":
    unittest.main()
