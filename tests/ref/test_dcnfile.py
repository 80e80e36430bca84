"""Unit tests of tools/dcnfile.py and of the golden cases (unittest style).

Covers: writer/reader round trips for every metadata type and tensor dtype,
the float rounding rules (F16, BF16, I8), hash64 against FORMAT.md's test
vectors and the reference's own implementation, every id mapping's edge
cases, the CRC-32, refusal of bad metadata and bad tensor sets by the writer,
refusal of malformed containers by the reader, and that tests/golden is
exactly what gen_golden.py produces today (generation is deterministic).

Run with tests/run_py.py (or `python3 -m unittest` from this folder).
"""
import glob
import json
import math
import os
import re
import struct
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import dcnfile as D  # noqa: E402
import dcn_ref  # noqa: E402
import gen_golden  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "golden")


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def spit(path, data):
    with open(path, "wb") as f:
        f.write(bytes(data))


def small_spec(**over):
    """A valid little model spec (2 dense, 2 sparse, lowrank, stacked)."""
    spec = {"name": "t", "version": "1",
            "dense": [{"name": "a"}, {"name": "b", "transform": "log", "log_shift": 1.0}],
            "sparse": [{"name": "c", "vocab_size": 10, "dim": 3},
                       {"name": "e", "vocab_size": 6, "dim": 2, "mapping": "hash_mod"}],
            "cross": {"kind": "lowrank", "layers": 1, "rank": 2},
            "deep": [4], "combine": "stacked"}
    spec.update(over)
    return spec


def weights_for(spec, seed=0, gate_bias=True):
    """Random float weights for every tensor the spec needs."""
    rng = np.random.default_rng(seed)
    meta = {k: v.value for k, v in D.spec_metadata(spec).items()}
    terms = {i: len(f["vocab"]) for i, f in enumerate(spec["sparse"]) if f.get("vocab")}
    return {n: rng.normal(0, 0.3, shape) for n, (shape, _) in D.expected_tensors(meta, terms).items()
            if not n.startswith("vocab.") and not n.endswith(".scale")
            and (gate_bias or not n.endswith("gate.bias"))}


class TmpDirCase(unittest.TestCase):
    def setUp(self):
        self._td = tempfile.TemporaryDirectory()
        self.dir = self._td.name

    def tearDown(self):
        self._td.cleanup()

    def path(self, name="m.dcn"):
        return os.path.join(self.dir, name)


class TestContainer(TmpDirCase):
    def test_metadata_types_round_trip(self):
        meta = {
            "x.u8": D.u8(255), "x.i8": D.i8(-128), "x.u16": D.u16(65535), "x.i16": D.i16(-32768),
            "x.u32": D.u32(2**32 - 1), "x.i32": D.i32(-2**31), "x.u64": D.u64(2**64 - 1),
            "x.i64": D.i64(-2**63), "x.f32": D.f32(1.5), "x.f64": D.f64(0.1),
            "x.bool": True, "x.str": "h\u00e9llo", "x.empty": "",
            "x.arr_f32": D.arr("f32", [1.0, -math.inf]), "x.arr_str": D.arr("str", ["a", ""]),
            "x.arr_i64": D.arr("i64", [-1, 2**40]), "x.arr_empty": D.arr("u32", []),
            "x.arr_bool": D.arr("bool", [True, False]),
        }
        D.write_dcn(self.path(), meta, {"t": (np.zeros(3), "F32")})
        f = D.load_dcn(self.path())
        for k, v in meta.items():
            want = v.value if isinstance(v, D.Typed) else v
            self.assertEqual(f.metadata[k], want, k)
        self.assertEqual(f.types["x.u8"], "u8")
        self.assertEqual(f.types["x.arr_i64"], "array/i64")
        self.assertEqual(f.metadata["general.alignment"], 64)
        self.assertTrue(f.verify())

    def test_tensor_dtypes_round_trip(self):
        rng = np.random.default_rng(1)
        a = rng.normal(0, 3, (5, 7)).astype(np.float32)
        t = {
            "f32": (a, "F32"), "f16": (a, "F16"), "bf16": (a, "BF16"),
            "i8": (rng.integers(-127, 128, (3, 17)).astype(np.int8), "I8"),
            "i32": (rng.integers(-2**31, 2**31, 9), "I32"),
            "i64": (np.array([-2**63, 2**63 - 1, 0]), "I64"),
            "d4": (rng.normal(size=(2, 3, 1, 5)), "F32"),
            "one": (np.array([7.0]), "F32"),
        }
        D.write_dcn(self.path(), {}, t)
        f = D.load_dcn(self.path())
        for name, (arr, dt) in t.items():
            self.assertEqual(f.dtypes[name], dt)
            self.assertEqual(f.tensors[name].shape, np.asarray(arr).shape, name)
            self.assertEqual((f.offsets[name] - f.data_offset) % 64, 0)
        self.assertEqual(f.data_offset % 64, 0)
        np.testing.assert_array_equal(f.tensors["f32"], a)
        np.testing.assert_array_equal(f.tensors["f16"], a.astype(np.float16))
        np.testing.assert_array_equal(D.bf16_to_f32(f.tensors["bf16"]), D.bf16_to_f32(D.bf16_bits(a)))
        self.assertLess(np.max(np.abs(D.bf16_to_f32(f.tensors["bf16"]) - a) / np.abs(a)), 2**-8)
        for name in ("i8", "i32", "i64", "d4"):
            np.testing.assert_array_equal(f.tensors[name], np.asarray(t[name][0]).astype(f.tensors[name].dtype))
        # ne[] is innermost first on disk: read the raw tensor_info of "f32".
        raw = slurp(self.path())
        k = raw.index(struct.pack("<Q", 3) + b"f32")
        n_dims, ne0, ne1 = struct.unpack_from("<IQQ", raw, k + 11)
        self.assertEqual((n_dims, ne0, ne1), (2, 7, 5))

    def test_bf16_rounding_is_nearest_even(self):
        one = 0x3F800000
        cases = {one: 0x3F80, one + 0x8000: 0x3F80, one + 0x8001: 0x3F81,
                 one + 0x18000: 0x3F82, one + 0x7FFF: 0x3F80, 0x7F7FFFFF: 0x7F80,
                 0x80000000: 0x8000, 0x7F800000: 0x7F80}
        x = np.array(list(cases), dtype=np.uint32).view(np.float32)
        self.assertEqual(D.bf16_bits(x).tolist(), list(cases.values()))
        self.assertTrue(np.isnan(D.bf16_to_f32(D.bf16_bits(np.float32("nan")))))

    def test_f16_goes_through_f32(self):
        # 1 + 2^-11 + 2^-40 rounds up to 1 + 2^-10 directly from float64 but
        # is 1 + 2^-11 (a tie, even -> 1) once rounded to float32 first.
        v = 1 + 2**-11 + 2**-40
        D.write_dcn(self.path(), {}, {"h": (np.array([v]), "F16")})
        self.assertEqual(float(D.load_dcn(self.path()).tensors["h"][0]), 1.0)

    def test_i8_quantisation(self):
        w = np.array([[0.5, -1.0, 0.25], [0, 0, 0], [3.0, 2.9, -0.01]], dtype=np.float32)
        q, s = D.quantize_i8(w)
        self.assertEqual(q.dtype, np.int8)
        np.testing.assert_array_equal(s, np.array([1 / 127, 0, 3 / 127], dtype=np.float32))
        self.assertEqual(q[0].tolist(), [64, -127, 32])    # 63.5 -> 64 (even)
        self.assertEqual(q[1].tolist(), [0, 0, 0])
        self.assertEqual(q[2, 0], 127)
        back = D.dequantize_i8(q, s)
        self.assertLess(np.max(np.abs(back - w)), 3 / 127 / 2 + 1e-7)

    def test_checksum(self):
        D.write_dcn(self.path(), {}, {"a": (np.arange(10.0), "F32"), "b": (np.ones(3), "F16")})
        f = D.load_dcn(self.path())
        raw = slurp(self.path())
        import zlib
        self.assertEqual(f.metadata["dcnv2.checksum.crc32"], zlib.crc32(raw[f.data_offset:]))
        self.assertEqual(len(raw) % 64, 0)
        bad = bytearray(raw)
        bad[f.data_offset + 5] ^= 1
        spit(self.path("bad.dcn"), bad)
        self.assertFalse(D.load_dcn(self.path("bad.dcn")).verify())
        D.write_dcn(self.path("nock.dcn"), {}, {"a": (np.arange(10.0), "F32")}, checksum=False)
        g = D.load_dcn(self.path("nock.dcn"))
        self.assertNotIn("dcnv2.checksum.crc32", g.metadata)
        self.assertTrue(g.verify())

    def test_refuses_bad_values(self):
        t = {"a": (np.zeros(1), "F32")}
        bad = [
            ({"x": 5}, TypeError),                          # untyped int, unknown key
            ({"x": 1.5}, TypeError),
            ({"x": D.u32(-1)}, D.DcnFormatError),
            ({"x": D.u8(256)}, D.DcnFormatError),
            ({"x": D.i64(2**63)}, D.DcnFormatError),
            ({"x": D.u32(1.0)}, D.DcnFormatError),
            ({"x": D.f32(1e39)}, D.DcnFormatError),
            ({"x": D.boolean(2)}, D.DcnFormatError),
            ({"x": D.Typed("array", [[1]], "array")}, D.DcnFormatError),
            ({"k" * 257: "v"}, D.DcnFormatError),
            ({"general.alignment": D.u32(32)}, D.DcnFormatError),
            ({"dcnv2.dense.count": D.f32(1)}, D.DcnFormatError),       # spec says int
            ({"dcnv2.dense.default": D.arr("f64", [0.0])}, D.DcnFormatError),
        ]
        for meta, exc in bad:
            with self.assertRaises(exc, msg=repr(meta)[:80]):
                D.write_dcn(self.path(), meta, t)
        for tensors in ({"a": (np.zeros(1), "F64")}, {"a": (np.zeros(1), "I8")},
                        {"a": (np.array([300]), "I8")}, {"a": (np.zeros((1,) * 5), "F32")},
                        {"a": (np.zeros(0), "F32")}, {"n" * 65: (np.zeros(1), "F32")}):
            with self.assertRaises(D.DcnFormatError):
                D.write_dcn(self.path(), {}, tensors)
        self.assertEqual(os.listdir(self.dir), [])      # nothing left behind

    def test_write_is_atomic(self):
        D.write_dcn(self.path(), {}, {"a": (np.ones(4), "F32")})
        before = slurp(self.path())
        with self.assertRaises(D.DcnFormatError):
            D.write_dcn(self.path(), {"x": D.u8(999)}, {"a": (np.ones(4), "F32")})
        self.assertEqual(slurp(self.path()), before)
        self.assertEqual(os.listdir(self.dir), ["m.dcn"])


class TestReader(TmpDirCase):
    def _file(self):
        D.write_dcn(self.path(), {"x.s": "v"}, {"a": (np.ones(4), "F32"), "b": (np.ones(2), "F32")})
        return bytearray(slurp(self.path()))

    def _expect_error(self, raw, pattern):
        p = self.path("bad.dcn")
        spit(p, bytes(raw))
        with self.assertRaisesRegex(D.DcnFormatError, pattern):
            D.load_dcn(p)

    def test_bad_magic_version_truncation(self):
        raw = self._file()
        self._expect_error(b"XXXX" + raw[4:], "magic")
        self._expect_error(raw[:4] + struct.pack("<I", 2) + raw[8:], "version")
        self._expect_error(raw[:40], "truncated")
        f = D.load_dcn(self.path())
        self._expect_error(raw[:f.offsets["b"] + 4], "outside")

    def _info_pos(self, raw, name):
        """Byte position of tensor name's info (after its name)."""
        k = raw.index(struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", 1))
        return k + 8 + len(name)

    def test_misaligned_and_overlapping(self):
        raw = self._file()
        k = self._info_pos(raw, "b") + 4 + 8 + 4      # n_dims, ne[0], dtype -> offset
        self.assertEqual(struct.unpack_from("<Q", raw, k)[0], 64)
        bad = bytearray(raw)
        struct.pack_into("<Q", bad, k, 8)
        self._expect_error(bad, "multiple of 64")
        struct.pack_into("<Q", bad, k, 0)
        self._expect_error(bad, "overlap")

    def test_duplicate_key(self):
        kv = D._pack_kv("x.a", D.u32(1))
        hdr = struct.pack("<IIQQ", D.GGUF_MAGIC, 3, 0, 2) + kv + kv
        self._expect_error(hdr + b"\0" * (64 - len(hdr) % 64), "duplicate key")


class TestHash(unittest.TestCase):
    def test_format_md_vectors(self):
        """The test-vector table of FORMAT.md §3 holds for both implementations."""
        text = slurp(os.path.join(ROOT, "model", "FORMAT.md")).decode("utf-8")
        rows = re.findall(r"^\| (`0x[0-9a-f]+`|\d+) \| (.*?) \| `(0x[0-9a-f]{16})` \|$", text, re.M)
        self.assertGreaterEqual(len(rows), 4)
        for seed, data, want in rows:
            seed = int(seed.strip("`"), 0)
            m = re.match(r"`([^`]*)`", data)
            b = b"" if data.startswith("(empty)") else m.group(1).encode("utf-8")
            self.assertEqual(D.hash64(seed, b), int(want, 16), (seed, b))
            self.assertEqual(dcn_ref.ref_hash64(seed, b), int(want, 16))

    def test_known_values(self):
        self.assertEqual(D.hash64(0, b""), 0xEFD01F60BA992926)
        self.assertEqual(D.hash64(0, "a"), 0x82A2A958A9BECE5B)
        self.assertEqual(D.hash64(7, b"hello"), 0x5EA6B88446790FF0)
        self.assertEqual(D.hash64(2**64 - 1, "caf\u00e9"), 0xEDE193573587B609)

    def test_matches_reference_on_random_bytes(self):
        rng = np.random.default_rng(5)
        for n in range(40):
            b = bytes(rng.integers(0, 256, n).tolist())
            seed = int(rng.integers(0, 2**63)) * 2 + n % 2
            self.assertEqual(D.hash64(seed, b), dcn_ref.ref_hash64(seed, b))


class TestMapping(unittest.TestCase):
    def spec(self, mapping, V=10, **kw):
        s = dict(vocab_size=V, mapping=mapping, hash_seed=0, oov_buckets=0,
                 missing_row=-1, unknown_row=-1, max_ids=4)
        s.update(kw)
        return s

    def test_index(self):
        s = self.spec("index", unknown_row=9, missing_row=8)
        cases = {0: 0, 9: 9, 10: 9, -1: 9, "3": 3, "-0": 0, "007": 7, "": 9, " 3": 9, "+3": 9,
                 "3 ": 9, "1e1": 9, "0x1": 9, "abc": 9, "00000000000000000001": 9,
                 "0000000000000000001": 1, "9999999999999999999": 9, "-1": 9,
                 "\u0663": 9, 2**63 - 1: 9, -2**63: 9}
        for v, want in cases.items():
            self.assertEqual(D.map_id(s, v), want, repr(v))

    def test_hex_mod(self):
        s = self.spec("hex_mod", V=7, unknown_row=5, missing_row=6)
        cases = {"": 6, "0": 0, "a": 3, "A": 3, "ff": 255 % 7, "ffffffffffffffff": (2**64 - 1) % 7,
                 "0ffffffffffffffff": 5, "0x1": 5, "-1": 5, "g": 5, " a": 5, 0: 0, 100: 2, -1: 5,
                 2**63 - 1: (2**63 - 1) % 7, "\u0661": 5}
        for v, want in cases.items():
            self.assertEqual(D.map_id(s, v), want, repr(v))

    def test_hash_mod_and_vocab(self):
        s = self.spec("hash_mod", V=1000, hash_seed=7)
        self.assertEqual(D.map_id(s, "hello"), 0x5EA6B88446790FF0 % 1000)
        self.assertEqual(D.map_id(self.spec("hash_mod", V=1000), -12), 528)
        self.assertEqual(D.map_id(s, 12), D.map_id(s, "12"))
        self.assertNotEqual(D.map_id(s, 12), D.map_id(s, "012"))
        keys, rows = D.vocab_tensors(["x", "12", "y"], 3, rows=[4, 5, 6])
        self.assertTrue(np.all(np.diff(keys.view(np.uint64).astype(np.float64)) > 0))
        v = self.spec("vocab", V=10, hash_seed=3, oov_buckets=3, unknown_row=1,
                      vocab={int(k): int(r) for k, r in zip(keys.view(np.uint64), rows)})
        self.assertEqual(D.map_id(v, "x"), 4)
        self.assertEqual(D.map_id(v, 12), 5)
        self.assertEqual(D.map_id(v, "z"), 7 + D.hash64(3, "z") % 3)
        v["oov_buckets"] = 0
        self.assertEqual(D.map_id(v, "z"), 1)
        with self.assertRaises(D.DcnFormatError):
            D.vocab_tensors(["a", "a"], 0)

    def test_request_errors(self):
        s = self.spec("index")
        for bad in (1.0, True, None, b"1"):
            with self.assertRaises(TypeError):
                D.map_id(s, bad)
        with self.assertRaises(ValueError):
            D.map_id(s, 2**63)
        with self.assertRaises(ValueError):
            D.map_feature(s, [1] * 5)
        self.assertEqual(D.map_feature(s, None), [])
        self.assertEqual(D.map_feature(s, []), [])
        self.assertEqual(D.map_feature(s, [1, "x"]), [1, -1])


class TestModel(TmpDirCase):
    def test_build_and_read(self):
        spec = small_spec(dtype="BF16")
        spec["sparse"][0]["dtype"] = "I8"
        w = weights_for(spec)
        D.build_model_file(self.path(), spec, w)
        meta, t = D.read_dcn(self.path())
        D.validate_metadata(meta)
        self.assertEqual(meta["dcnv2.cross.rank"], 2)
        self.assertIn("emb.0.scale", t)
        self.assertLess(np.max(np.abs(t["emb.0.weight"] - w["emb.0.weight"])), 0.01)
        self.assertLess(np.max(np.abs(t["deep.0.weight"] - w["deep.0.weight"])), 0.01)
        np.testing.assert_array_equal(t["deep.0.bias"], w["deep.0.bias"].astype(np.float32))

    def _refused(self, spec, pattern, w=None):
        with self.assertRaisesRegex(D.DcnFormatError, pattern):
            D.build_model_file(self.path(), spec, weights_for(spec) if w is None else w)

    def test_refuses_bad_metadata(self):
        s = small_spec
        self._refused(s(dense=[{"name": "a b"}]), "feature name")
        self._refused(s(dense=[{"name": "c"}]), "unique")
        self._refused(s(dense=[{"name": "a", "mean": math.nan}]), "finite")
        self._refused(s(dense=[{"name": "a", "std": 0.0}]), "std")
        self._refused(s(dense=[{"name": "a", "log_floor": 0.0}]), "log_floor")
        self._refused(s(dense=[{"name": "a", "clip_min": 2.0, "clip_max": 1.0}]), "clip_min")
        self._refused(s(dense=[{"name": "a", "transform": "sqrt"}]), "transform")
        self._refused(s(sparse=[{"name": "c", "vocab_size": 10, "dim": 3, "missing_row": 10}]), "missing_row")
        self._refused(s(sparse=[{"name": "c", "vocab_size": 10, "dim": 3, "mapping": "md5"}]), "mapping")
        self._refused(s(sparse=[{"name": "c", "vocab_size": 10, "dim": 3, "oov_buckets": 2}]), "oov_buckets")
        self._refused(s(sparse=[{"name": "c", "vocab_size": 4, "dim": 3, "mapping": "vocab",
                                 "oov_buckets": 4, "vocab": ["a"]}]), "oov_buckets")
        self._refused(s(deep=[4], combine="cross_only"), "cross_only")
        self._refused(s(dense=[], bottom=[3]), "bottom")
        self._refused(s(cross={"kind": "lowrank", "layers": 1, "rank": 99}), "rank")
        self._refused(s(cross={"kind": "mix", "layers": 1, "rank": 2, "experts": 2,
                               "activation": "gelu"}), "activation")
        self._refused(s(cross={"kind": "ring", "layers": 1}), "kind", w={})
        self._refused(s(dense=[], sparse=[]), "count")

    def test_refuses_bad_tensor_sets(self):
        spec = small_spec()
        w = weights_for(spec)
        w2 = dict(w)
        del w2["cross.0.u"]
        self._refused(spec, "missing cross.0.u", w2)
        w2 = dict(w, **{"cross.1.u": w["cross.0.u"]})
        self._refused(spec, "not part", w2)
        w2 = dict(w, **{"deep.0.weight": np.zeros((4, 3))})
        self._refused(spec, "shape", w2)
        meta = D.spec_metadata(spec)
        t = {n: (a, "F32") for n, a in w.items()}
        bad = dict(t, **{"emb.0.scale": (np.ones(10), "F32")})
        with self.assertRaisesRegex(D.DcnFormatError, "only an I8"):
            D.write_dcn(self.path(), meta, bad)
        bad = dict(t, **{"emb.0.weight": (np.zeros((10, 3), np.int8), "I8")})
        with self.assertRaisesRegex(D.DcnFormatError, "required by the I8"):
            D.write_dcn(self.path(), meta, bad)
        bad = dict(t, **{"deep.0.bias": (np.zeros(4), "F16")})
        with self.assertRaisesRegex(D.DcnFormatError, "dtype"):
            D.write_dcn(self.path(), meta, bad)
        keys, rows = D.vocab_tensors(["a", "b"], 0)
        vs = small_spec(sparse=[{"name": "c", "vocab_size": 4, "dim": 3, "mapping": "vocab", "vocab": ["a", "b"]}])
        vmeta = D.spec_metadata(vs)
        vt = {n: (a, "F32") for n, a in weights_for(vs).items()}
        with self.assertRaisesRegex(D.DcnFormatError, "increasing"):
            D.write_dcn(self.path(), vmeta, dict(vt, **{"vocab.0.keys": (keys[::-1].copy(), "I64"),
                                                        "vocab.0.rows": (rows, "I32")}))
        with self.assertRaisesRegex(D.DcnFormatError, "rows must be"):
            D.write_dcn(self.path(), vmeta, dict(vt, **{"vocab.0.keys": (keys, "I64"),
                                                        "vocab.0.rows": (np.array([0, 4], np.int32), "I32")}))

    def test_gate_bias_optional(self):
        spec = small_spec(cross={"kind": "mix", "layers": 2, "rank": 2, "experts": 3,
                                 "gate": "softmax", "gate_shared": False})
        D.build_model_file(self.path(), spec, weights_for(spec, gate_bias=False))
        f = D.load_dcn(self.path())
        self.assertIn("cross.1.gate.weight", f.tensors)
        self.assertNotIn("cross.1.gate.bias", f.tensors)


# What float64 noise may move in a golden case, and nothing more: the
# reference's transcendental functions and sums differ in their last bits
# between CPUs (NumPy picks AVX-512 or AVX2 loops at run time), so a case
# written on one machine is compared with the same case written on another
# as numbers. Expected logits and scores: 1e-9 relative (float64 noise is
# near 1e-15; any change to a model, a row or the reference moves them by
# far more). Weights rescaled from such a value (the logit layer) may round
# to a neighbour of their own type: one unit in the last place, counted in
# the stored bits; integer tensors (ids, vocabularies) stay exact.
GOLDEN_REL = 1e-9
GOLDEN_ABS = 1e-12


def _same_floats(a, b):
    return len(a) == len(b) and all(abs(x - y) <= GOLDEN_ABS + GOLDEN_REL * abs(y) for x, y in zip(a, b))


def golden_case_diff(fresh, kept):
    """Why two case documents differ beyond float64 noise, or None."""
    if set(fresh) != set(kept):
        return "keys %s vs %s" % (sorted(fresh), sorted(kept))
    for k in fresh:
        if k != "expected" and fresh[k] != kept[k]:
            return "%r differs" % k
    fe, ke = fresh["expected"], kept["expected"]
    if set(fe) != set(ke) or fe["rows"] != ke["rows"]:
        return "expected rows differ"
    for k in ("logit", "score"):
        if not _same_floats(fe[k], ke[k]):
            worst = max((abs(x - y) for x, y in zip(fe[k], ke[k])), default=float("inf"))
            return "expected %s differ (largest difference %.3g)" % (k, worst)
    return None


def golden_model_diff(fresh, kept):
    """Why two golden model files differ beyond one last-place unit of a
    float tensor, or None. Their checksums are checked, not compared."""
    fm, km = dict(fresh.metadata), dict(kept.metadata)
    for m in (fm, km):
        m.pop("dcnv2.checksum.crc32", None)
    if fm != km:
        return "metadata differ: %s" % sorted(k for k in set(fm) | set(km) if fm.get(k) != km.get(k))
    if not (fresh.verify() and kept.verify()):
        return "a checksum does not match"
    if list(fresh.tensors) != list(kept.tensors) or fresh.dtypes != kept.dtypes:
        return "tensor directories differ"
    for name, a in fresh.tensors.items():
        b = kept.tensors[name]
        if a.shape != b.shape:
            return "%s: shape %s vs %s" % (name, a.shape, b.shape)
        dt = fresh.dtypes[name]
        if dt in ("I32", "I64"):
            if not np.array_equal(a, b):
                return "%s: integers differ" % name
            continue
        if dt == "I8":
            bits_a, bits_b = a.astype(np.int64), b.astype(np.int64)
        else:
            # Float bits as sign-magnitude integers, so that neighbours of
            # one type are one apart across zero too.
            w = {"F32": (np.uint32, 32), "F16": (np.uint16, 16), "BF16": (np.uint16, 16)}[dt]
            u = np.ascontiguousarray(a).view(w[0]).astype(np.int64), np.ascontiguousarray(b).view(w[0]).astype(np.int64)
            sign = np.int64(1) << (w[1] - 1)
            bits_a, bits_b = [np.where(x & sign, -(x & (sign - 1)), x) for x in u]
        if a.size and np.max(np.abs(bits_a - bits_b)) > 1:
            return "%s: values differ by more than one unit in the last place" % name
    return None


class TestGolden(unittest.TestCase):
    def test_golden_up_to_date(self):
        """tests/golden holds what gen_golden.py writes today, up to float64
        noise (golden_case_diff, golden_model_diff)."""
        with tempfile.TemporaryDirectory() as td:
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()):
                gen_golden.main(["--out", td])
            fresh = sorted(os.listdir(td))
            have = sorted(f for f in os.listdir(GOLDEN) if f.endswith((".dcn", ".json")))
            self.assertEqual(have, fresh, "tests/golden is stale: run `make golden`")
            for fn in fresh:
                a, b = os.path.join(td, fn), os.path.join(GOLDEN, fn)
                if fn.endswith(".json"):
                    why = golden_case_diff(json.loads(slurp(a)), json.loads(slurp(b)))
                else:
                    why = golden_model_diff(D.load_dcn(a), D.load_dcn(b))
                self.assertIsNone(why, f"{fn}: {why}: run `make golden`")

    def test_golden_comparison_tolerates_noise_only(self):
        """The comparison above lets float64 noise through and catches a
        change: the last bit of an expected score, one ulp of a weight pass;
        a change of 1e-7 in a score, two ulps of a weight, a changed row id
        or tolerance fail."""
        case = json.loads(slurp(os.path.join(GOLDEN, "full_stacked.json")))
        noisy = json.loads(json.dumps(case))
        noisy["expected"]["score"][0] = float(np.nextafter(noisy["expected"]["score"][0], 1.0))
        noisy["expected"]["logit"][-1] = float(np.nextafter(noisy["expected"]["logit"][-1], -10.0))
        self.assertIsNone(golden_case_diff(noisy, case))
        for change in (lambda d: d["expected"]["score"].__setitem__(0, d["expected"]["score"][0] + 1e-7),
                       lambda d: d["expected"]["logit"].pop(),
                       lambda d: d["tolerance"].__setitem__("rel", 1e-4),
                       lambda d: d["segments"][0]["rows"].pop(),
                       lambda d: next(iter(d["expected"]["rows"].values())).__setitem__(0, -7)):
            changed = json.loads(json.dumps(case))
            change(changed)
            self.assertIsNotNone(golden_case_diff(changed, case))
        src = os.path.join(GOLDEN, "full_stacked.dcn")
        f = D.load_dcn(src)
        meta = dict(f.metadata)
        meta.pop("dcnv2.checksum.crc32", None)
        tensors = {n: (np.array(t), f.dtypes[n]) for n, t in f.tensors.items()}
        w = tensors["logit.weight"][0]
        self.assertEqual(w.dtype, np.float32)
        for ulps, same in ((1, True), (2, False)):
            t = dict(tensors)
            bumped = w.copy()
            for _ in range(ulps):
                bumped[0, 0] = np.nextafter(bumped[0, 0], np.float32(np.inf))
            t["logit.weight"] = (bumped, "F32")
            D.write_dcn(self.path(), meta, t)
            why = golden_model_diff(D.load_dcn(self.path()), f)
            self.assertEqual(why is None, same, why)

    def path(self):
        if not hasattr(self, "_td"):
            self._td = tempfile.TemporaryDirectory()
            self.addCleanup(self._td.cleanup)
        return os.path.join(self._td.name, "case.dcn")

    def test_golden_small_and_consistent(self):
        """Every case parses, fits the size budget, and its expected rows agree
        with dcnfile.map_feature (the reference maps ids on its own)."""
        total = 0
        for jp in sorted(glob.glob(os.path.join(GOLDEN, "*.json"))):
            doc = json.loads(slurp(jp).decode("utf-8"))
            mp = os.path.join(GOLDEN, doc["model"])
            total += os.path.getsize(jp) + os.path.getsize(mp)
            f = D.load_dcn(mp)
            self.assertTrue(f.verify())
            meta = f.metadata
            rows = []
            for seg in doc["segments"]:
                for r in seg["rows"]:
                    rows.append(dict(seg["context"], **r))
            n = len(rows)
            self.assertEqual(len(doc["expected"]["logit"]), n)
            self.assertEqual(len(doc["expected"]["score"]), n)
            for i, name in enumerate(meta["dcnv2.sparse.names"]):
                keys = f.tensors.get(f"vocab.{i}.keys")
                spec = D.make_sparse_spec(meta, i, keys, f.tensors.get(f"vocab.{i}.rows"))
                got = [D.map_feature(spec, r.get(name)) for r in rows]
                self.assertEqual(got, doc["expected"]["rows"][name], f"{jp}: {name}")
            for s in doc["expected"]["score"]:
                self.assertTrue(1e-4 < s < 1 - 1e-4, jp)
        self.assertLess(total, 2 * 1024 * 1024)


if __name__ == "__main__":
    unittest.main()
