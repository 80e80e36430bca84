#!/usr/bin/env python3
"""gen_golden — builds the golden parity cases of tests/golden.

Usage: gen_golden.py --out DIR [--only SUBSTRING]

Each case is a small model of one architecture variant with seeded random
weights (DIR/<case>.dcn) plus requests and the outputs of the independent
NumPy reference (DIR/<case>.json); tests/golden/README.md documents the JSON.
The C golden test scores the same requests with the engine and compares.

Design notes
- Deterministic: every case draws from its own np.random.default_rng(seed),
  the writer has no timestamps, and the JSON is dumped with a fixed layout,
  so regenerating yields identical bytes (test_dcnfile checks this).
- Weights are drawn with 1/sqrt(fan_in) scaling, then the logit layer is
  rescaled from a first reference pass so the logits have a spread of about
  1.5 (no saturated sigmoids); the file is then rewritten.
- The tolerance of a case is the default (rel 1e-5, abs 1e-6) unless a
  float32 run of the reference differs from the float64 one by more than a
  tenth of it; then both bounds grow by powers of ten until they hold with
  that 10x margin.
- Every case covers a few features of the format; CASES lists them with a
  one-line purpose. Together they cover every kind, activation, gate,
  combination, mapping, transform, pooling and dtype of FORMAT.md.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import dcnfile  # noqa: E402
import dcn_ref  # noqa: E402

INF = math.inf

# ---------------------------------------------------------------- features

# Dense feature presets: spec fields plus a value generator kind.
DENSE = {
    "plain": dict(),
    "std": dict(mean=5.0, std=2.5),
    "log1p": dict(transform="log", log_shift=1.0, log_floor=1.0, mean=2.0, std=1.5),
    "log4": dict(transform="log", log_shift=4.0, log_floor=0.001, mean=1.0, std=1.0),
    "clip": dict(clip_min=-2.0, clip_max=3.0),
    "cliplog": dict(clip_min=0.0, clip_max=1e6, transform="log", log_shift=1.0,
                    log_floor=1.0, mean=3.0, std=2.0),
    "clipneg": dict(clip_min=-INF, clip_max=10.0, mean=-1.0, std=4.0),
    "deflt": dict(default=2.5, mean=1.0, std=0.75),
    "deflog": dict(default=-7.0, transform="log", log_shift=2.0, log_floor=0.5),
}


def dense_feature(name, preset):
    f = dict(DENSE[preset])
    f["name"] = name
    f["_kind"] = preset
    return f


def dense_values(rng, f):
    """Candidate raw values of dense feature f: typical ones first, then the
    edge values its transform should handle."""
    k = f["_kind"]
    if k in ("plain",):
        typ = [float(x) for x in rng.normal(0, 1, 4)] + [0, 1]
        edge = [None, -0.0, 1e-30]
    elif k == "std":
        typ = [float(x) for x in rng.normal(5, 3, 4)] + [5]
        edge = [None, 5.0, -1.5e1]
    elif k in ("log1p", "cliplog"):
        typ = [int(x) for x in rng.integers(0, 500, 4)] + [float(rng.uniform(0, 50))]
        edge = [None, -1, -3, 0, 0.5, -1e30, -1e300, 3.4e38]
        if k == "cliplog":              # finite clip_max: overflow to inf is clipped
            edge += [1e300, 1e30, 2e6]
    elif k == "log4":
        typ = [int(x) for x in rng.integers(-3, 100, 4)]
        edge = [-4, -3.9999, -100, None, 1e6]
    elif k == "clip":
        typ = [float(x) for x in rng.normal(0, 2, 4)]
        edge = [1e30, -1e30, 3.4e38, -3.4e38, 1e300, -1e300, 3.0, -2.0, None]
    elif k == "clipneg":
        typ = [float(x) for x in rng.normal(0, 5, 4)]
        edge = [1e30, 1e300, -20.0, None]
    elif k in ("deflt", "deflog"):
        typ = [float(x) for x in rng.normal(1, 1, 3)]
        edge = [None, None, 0]
    else:
        raise ValueError(k)
    return typ, edge


def sparse_feature(name, V, dim, mapping="index", **kw):
    f = dict(name=name, vocab_size=V, dim=dim, mapping=mapping)
    f.update(kw)
    return f


HEX_EDGE = ["", "0x1f", "-1", "g1", "ffffffffffffffff", "FFFFFFFFFFFFFFFF",
            "0ffffffffffffffff", "0", "DeadBeef", " 1a", "1a ", -3, 0, 2**62, "\u0661"]
INDEX_EDGE = ["3", "-0", "007", "abc", "", " 3", "+3", "1e3", "3.0",
              "9223372036854775807", "9223372036854775808", "-9223372036854775808",
              "00000000000000000001", "0000000000000000001", "9999999999999999999",
              "-1", -1, 2**63 - 1, -2**63, "\u0663"]
HASH_EDGE = ["", "caf\u00e9", "a", "A", 0, -12, 2**63 - 1, -2**63, "12", "012",
             "a\u2603b", "x" * 40]


def sparse_values(rng, f):
    """Candidate ids of sparse feature f: typical ones and the mapping's edge
    cases."""
    V, m = f["vocab_size"], f["mapping"]
    if m == "index":
        typ = [int(x) for x in rng.integers(0, V, 4)] + [str(int(rng.integers(0, V)))]
        edge = INDEX_EDGE + [V, V - 1, str(V), V + 7]
    elif m == "hex_mod":
        typ = ["%08x" % int(x) for x in rng.integers(0, 2**32, 4)] + \
              ["%X" % int(rng.integers(0, 2**20)), int(rng.integers(0, 10**6))]
        edge = HEX_EDGE
    elif m == "hash_mod":
        typ = ["u%d" % int(x) for x in rng.integers(0, 10**6, 4)] + [int(rng.integers(0, 10**9))]
        edge = HASH_EDGE
    else:
        terms = f["vocab"]
        typ = [terms[int(x)] for x in rng.integers(0, len(terms), 5)]
        edge = ["not-a-term", "", "x" * 17, "caf\u00e9"] + [int(t) for t in terms if t.lstrip("-").isdigit()]
    return typ, edge


# ---------------------------------------------------------------- requests

class Case:
    """One golden case: spec, weight options and request shape."""

    def __init__(self, name, purpose, spec, seed, segments=(2, 3), context=(), p_edge=0.3,
                 p_missing=0.1, gate_bias=True, sweep=()):
        self.name, self.purpose, self.spec, self.seed = name, purpose, spec, seed
        self.segments = segments          # rows per segment
        self.context = context            # feature names sent in the context
        self.p_edge, self.p_missing = p_edge, p_missing
        self.gate_bias = gate_bias
        self.sweep = sweep                # features whose edge list is swept completely


def make_value(rng, f, dense, case):
    """One value of feature f for a row, or the marker _ABSENT."""
    typ, edge = dense_values(rng, f) if dense else sparse_values(rng, f)
    u = rng.uniform()
    if u < case.p_missing:
        return [_ABSENT, None, []][int(rng.integers(0, 2 if dense else 3))]
    pick = lambda: (edge[int(rng.integers(0, len(edge)))] if rng.uniform() < case.p_edge
                    else typ[int(rng.integers(0, len(typ)))])
    if dense:
        return pick()
    mx = f.get("max_ids", 1)
    if mx > 1 and rng.uniform() < 0.7:
        return [pick() for _ in range(int(rng.integers(1, mx + 1)))]
    return pick()


_ABSENT = object()


def make_segments(rng, case):
    """The request segments of a case: context values once per segment, row
    values per row (a row may override a context feature); sweep features
    cycle through their whole edge list (adding rows as needed)."""
    spec = case.spec
    feats = [(f, True) for f in spec.get("dense", [])] + [(f, False) for f in spec.get("sparse", [])]
    sizes = list(case.segments)
    sweeps = {}
    for name in case.sweep:
        f, dense = next((f, d) for f, d in feats if f["name"] == name)
        sweeps[name] = (dense_values if dense else sparse_values)(rng, f)[1]
    need = max([len(v) for v in sweeps.values()] + [0])
    while sum(sizes) < need:
        sizes.append(3)
    segments, k = [], 0
    for s, n in enumerate(sizes):
        ctx = {}
        for f, dense in feats:
            if f["name"] in case.context:
                v = make_value(rng, f, dense, case)
                if v is not _ABSENT:
                    ctx[f["name"]] = v
        rows = []
        for _ in range(n):
            row = {}
            for f, dense in feats:
                nm = f["name"]
                if nm in sweeps:
                    e = sweeps[nm]
                    v = e[k % len(e)] if k < len(e) else make_value(rng, f, dense, case)
                elif nm in case.context and rng.uniform() > 0.2:
                    continue                       # inherits the context value
                else:
                    v = make_value(rng, f, dense, case)
                if v is not _ABSENT:
                    row[nm] = v
            rows.append(row)
            k += 1
        segments.append({"context": ctx, "rows": rows})
    return segments


def flatten(segments):
    """Per-row feature dicts: the context, overridden by the row."""
    out = []
    for seg in segments:
        for r in seg["rows"]:
            m = dict(seg["context"])
            m.update(r)
            out.append(m)
    return out


# ---------------------------------------------------------------- weights

def random_weights(rng, spec, case):
    """Float weights for every tensor of the spec (1/sqrt(fan_in) scaled)."""
    meta = {k: v.value for k, v in dcnfile.spec_metadata(spec).items()}
    terms = {i: len(f["vocab"]) for i, f in enumerate(spec.get("sparse", [])) if f.get("vocab")}
    w = {}
    for name, (shape, allowed) in dcnfile.expected_tensors(meta, terms).items():
        if name.startswith("vocab.") or name.endswith(".scale"):
            continue
        if name.endswith("gate.bias") and not case.gate_bias:
            continue
        if name.startswith("emb."):
            w[name] = rng.normal(0, 0.5, shape)
        elif name.endswith("bias"):
            w[name] = rng.normal(0, 0.1, shape)
        else:
            fan_in = shape[-1]
            gain = 0.5 if name.startswith("cross.") else 1.0
            w[name] = rng.normal(0, gain / math.sqrt(fan_in), shape)
    return w


# Tolerance steps tried in order: (rel, abs), as exact decimal literals.
TOLERANCES = [(1e-5, 1e-6), (1e-5, 1e-5), (1e-4, 1e-5), (1e-4, 1e-4), (1e-3, 1e-4), (1e-3, 1e-3)]


def _tolerance(l64, l32, s64, s32):
    """The first TOLERANCES step that covers the float32 run's error on
    logits and scores with a 10x margin."""
    for rel, abs_ in TOLERANCES:
        if all(10 * abs(a - b) <= abs_ + rel * abs(b)
               for xs, ys in ((l32, l64), (s32, s64)) for a, b in zip(xs, ys)):
            break
    else:
        raise RuntimeError("float32 error beyond every tolerance step")
    return {"rel": rel, "abs": abs_}


def build_case(case, out_dir):
    """Writes <case>.dcn and <case>.json into out_dir."""
    rng = np.random.default_rng(case.seed)
    spec = dict(case.spec, name=case.name, version="golden-1",
                description=case.purpose)
    spec["dense"] = [{k: v for k, v in f.items() if not k.startswith("_")} for f in spec.get("dense", [])]
    w = random_weights(rng, spec, case)
    segments = make_segments(rng, case)
    rows = flatten(segments)
    path = os.path.join(out_dir, case.name + ".dcn")
    with np.errstate(over="ignore"):
        dcnfile.build_model_file(path, spec, w, checksum=spec.get("checksum", True))
        logit, _, _ = dcn_ref.RefModel(path).forward(rows)
        z = logit - float(w["logit.bias"][0])
        spread = float(np.std(z)) if len(z) > 1 else 1.0
        f = 1.5 / spread if spread > 1e-9 else 1.0
        w["logit.weight"] = w["logit.weight"] * f
        w["logit.bias"] = np.array([0.2 - f * float(np.mean(z))])
        dcnfile.build_model_file(path, spec, w, checksum=spec.get("checksum", True))
        ref = dcn_ref.RefModel(path)
        l64, s64, mapped = ref.forward(rows)
        l32, s32, _ = ref.forward(rows, dtype=np.float32)
    if not np.all(np.isfinite(l64)):
        raise RuntimeError(f"{case.name}: non-finite logit")
    tol = _tolerance(l64.tolist(), l32.tolist(), s64.tolist(), s32.tolist())
    doc = {
        "model": case.name + ".dcn",
        "purpose": case.purpose,
        "tolerance": tol,
        "segments": segments,
        "expected": {
            "logit": [float(x) for x in l64],
            "score": [float(x) for x in s64],
            "rows": mapped,
        },
    }
    with open(os.path.join(out_dir, case.name + ".json"), "w", encoding="utf-8") as fh:
        fh.write(dump_case(doc))
    return doc


def _j(v):
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def dump_case(doc):
    """The case JSON with one request row or one expected list per line
    (floats as Python repr: exact float64)."""
    out = ["{" + _j("model") + ": " + _j(doc["model"]) + ",",
           " " + _j("purpose") + ": " + _j(doc["purpose"]) + ",",
           " " + _j("tolerance") + ": " + _j(doc["tolerance"]) + ",",
           ' "segments": [']
    for si, seg in enumerate(doc["segments"]):
        out.append('  {"context": ' + _j(seg["context"]) + ', "rows": [')
        rows = seg["rows"]
        for ri, r in enumerate(rows):
            out.append("   " + _j(r) + ("," if ri + 1 < len(rows) else ""))
        out.append("  ]}" + ("," if si + 1 < len(doc["segments"]) else ""))
    e = doc["expected"]
    out.append(" ],")
    out.append(' "expected": {')
    out.append('  "logit": ' + _j(e["logit"]) + ",")
    out.append('  "score": ' + _j(e["score"]) + ",")
    out.append('  "rows": {')
    names = list(e["rows"])
    for k, nm in enumerate(names):
        out.append("   " + _j(nm) + ": " + _j(e["rows"][nm]) + ("," if k + 1 < len(names) else ""))
    out.append("  }}}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- cases

def D(*presets):
    return [dense_feature("d%d_%s" % (j, p), p) for j, p in enumerate(presets)]


def S3(dtype="F32"):
    """Three small single-hot index features of awkward dims."""
    return [sparse_feature("s0", 11, 7, dtype=dtype), sparse_feature("s1", 23, 5, dtype=dtype),
            sparse_feature("s2", 7, 3, dtype=dtype, unknown_row=0, missing_row=6)]


MIX = lambda act="relu", gate="softmax", shared=True, L=2, K=3, r=4: dict(
    kind="mix", layers=L, rank=r, experts=K, activation=act, gate=gate, gate_shared=shared)

TERMS = ["apple", "banana", "cherry", "42", "-7", "date", "elder", "fig", "grape", "0"]


def cases():
    """Every golden case, in file order."""
    C = []
    add = lambda *a, **k: C.append(Case(*a, **k))
    add("vector_stacked", "vector cross (DCN v1), stacked, two deep layers",
        dict(dense=D("plain", "std", "log1p"), sparse=S3(), cross=dict(kind="vector", layers=2),
             deep=[16, 8], combine="stacked"), 1, segments=(3, 2))
    add("full_stacked", "full cross, stacked, deep of awkward width 17",
        dict(dense=D("plain", "log1p"), sparse=S3(), cross=dict(kind="full", layers=2),
             deep=[17], combine="stacked"), 2)
    add("lowrank_stacked", "low-rank cross L=3 r=4, stacked, deep [33, 7]",
        dict(dense=D("std", "clip"), sparse=S3(), cross=dict(kind="lowrank", layers=3, rank=4),
             deep=[33, 7], combine="stacked"), 3)
    for k, act in enumerate(("identity", "relu", "tanh", "hard_tanh", "sigmoid")):
        add(f"mix_act_{act}", f"mix cross, activation {act}, softmax gate shared",
            dict(dense=D("plain", "log1p"), sparse=S3(), cross=MIX(act=act),
                 deep=[8], combine="stacked"), 10 + k)
    add("mix_softmax_layer", "mix, softmax gate per layer (with bias)",
        dict(dense=D("plain"), sparse=S3(), cross=MIX(gate="softmax", shared=False, K=4, r=3, L=3),
             deep=[9], combine="stacked"), 20)
    add("mix_softmax_shared_nobias", "mix, shared softmax gate without bias (TorchRec)",
        dict(dense=D("plain"), sparse=S3(), cross=MIX(gate="softmax", shared=True),
             deep=[], combine="stacked"), 21, gate_bias=False)
    add("mix_sigmoid_shared", "mix, shared sigmoid gate, tanh experts",
        dict(dense=D("std"), sparse=S3(), cross=MIX(act="tanh", gate="sigmoid", shared=True, K=2),
             deep=[12], combine="parallel"), 22)
    add("mix_sigmoid_layer_nobias", "mix, per-layer sigmoid gate without bias",
        dict(dense=D("plain", "clip"), sparse=S3(), cross=MIX(gate="sigmoid", shared=False, K=5, r=2),
             deep=[6], combine="stacked"), 23, gate_bias=False)
    add("mix_constant", "mix, constant gate (no gate tensors), hard_tanh, K=1",
        dict(dense=D("plain"), sparse=S3(), cross=MIX(act="hard_tanh", gate="constant", K=1, r=5),
             deep=[10], combine="stacked"), 24)
    add("mix_constant_k4", "mix, constant gate with 4 experts, per-layer flag set",
        dict(dense=D("log4"), sparse=S3(), cross=MIX(act="sigmoid", gate="constant", shared=False, K=4),
             deep=[], combine="cross_only"), 25)
    add("parallel_lowrank", "parallel combination, low-rank cross",
        dict(dense=D("plain", "std"), sparse=S3(), cross=dict(kind="lowrank", layers=2, rank=7),
             deep=[16, 4], combine="parallel"), 30)
    add("parallel_nodeep", "parallel with an empty deep network: logit on [x_L, x0]",
        dict(dense=D("plain"), sparse=S3(), cross=dict(kind="full", layers=1),
             deep=[], combine="parallel"), 31)
    add("cross_only_full", "cross_only combination, full cross L=3",
        dict(dense=D("plain", "log1p"), sparse=S3(), cross=dict(kind="full", layers=3),
             deep=[], combine="cross_only"), 32)
    add("stacked_nodeep", "stacked with zero deep layers: logit on x_L",
        dict(dense=D("plain"), sparse=S3(), cross=dict(kind="vector", layers=3),
             deep=[], combine="stacked"), 33)
    add("cross_l0_deep", "L=0 cross (x_L = x0) then deep",
        dict(dense=D("plain", "std"), sparse=S3(), cross=dict(kind="full", layers=0),
             deep=[8, 8], combine="stacked"), 34)
    add("cross_l0_only", "L=0 and cross_only: logistic regression on x0",
        dict(dense=D("std"), sparse=S3(), cross=dict(kind="lowrank", layers=0, rank=1),
             deep=[], combine="cross_only"), 35)
    add("bottom_stacked", "bottom MLP [16, 7] feeding x0, stacked",
        dict(dense=D("plain", "log1p", "std", "clip"), sparse=S3(), bottom=[16, 7],
             cross=dict(kind="lowrank", layers=2, rank=3), deep=[8], combine="stacked"), 40)
    add("bottom_parallel_mix", "bottom MLP [5], mix cross, parallel",
        dict(dense=D("plain", "deflt"), sparse=S3(), bottom=[5], cross=MIX(K=2, r=2),
             deep=[7], combine="parallel"), 41)
    add("no_dense", "n_dense = 0: x0 is embeddings only",
        dict(dense=[], sparse=S3(), cross=dict(kind="full", layers=2), deep=[8], combine="stacked"), 42)
    add("dense_only", "n_sparse = 0 with every dense transform",
        dict(dense=D(*DENSE), sparse=[], cross=dict(kind="full", layers=2), deep=[6],
             combine="stacked"), 43, p_edge=0.5, segments=(4, 4))
    add("dense_transforms", "each dense transform swept through its edge values "
        "(log shift/floor, standardize, finite and infinite clips, defaults)",
        dict(dense=D(*DENSE), sparse=[sparse_feature("s0", 5, 3)],
             cross=dict(kind="vector", layers=1), deep=[5], combine="stacked"), 44,
        sweep=tuple("d%d_%s" % (j, p) for j, p in enumerate(DENSE)), segments=(5, 4))
    add("map_index", "index mapping: ints, decimal strings, every invalid form",
        dict(dense=D("plain"), sparse=[sparse_feature("idx", 13, 7, unknown_row=12, missing_row=0),
                                       sparse_feature("idx_z", 9, 4)],
             cross=dict(kind="lowrank", layers=1, rank=2), deep=[4], combine="stacked"), 50,
        sweep=("idx", "idx_z"))
    add("map_hex_mod", "hex_mod mapping (Criteo style): hex strings, '' = missing, invalid forms",
        dict(dense=D("log1p"), sparse=[sparse_feature("c1", 37, 5, "hex_mod", missing_row=36, unknown_row=0),
                                       sparse_feature("c2", 17, 3, "hex_mod")],
             cross=dict(kind="full", layers=1), deep=[4], combine="stacked"), 51,
        sweep=("c1", "c2"))
    add("map_hash_mod", "hash_mod mapping with seeds 0, 7 and 2^64-1; ints hash their decimal text",
        dict(dense=[], sparse=[sparse_feature("h0", 29, 6, "hash_mod"),
                               sparse_feature("h1", 31, 4, "hash_mod", hash_seed=7, missing_row=3),
                               sparse_feature("h2", 19, 2, "hash_mod", hash_seed=2**64 - 1)],
             cross=dict(kind="vector", layers=2), deep=[5], combine="stacked"), 52,
        sweep=("h0", "h1", "h2"))
    add("map_vocab", "vocab mapping with OOV buckets, and without (unknown_row real / -1)",
        dict(dense=D("plain"), sparse=[
            sparse_feature("v_oov", 14, 5, "vocab", hash_seed=3, oov_buckets=4, vocab=TERMS),
            sparse_feature("v_unk", 11, 3, "vocab", hash_seed=0, unknown_row=10, missing_row=-1,
                           vocab=TERMS),
            sparse_feature("v_zero", 12, 4, "vocab", hash_seed=99, vocab=TERMS[:6],
                           vocab_rows=[5, 4, 3, 2, 1, 0], missing_row=7)],
             cross=dict(kind="full", layers=1), deep=[4], combine="stacked"), 53,
        sweep=("v_oov", "v_unk", "v_zero"))
    add("rows_missing_unknown", "missing_row/unknown_row as real rows and as -1 (zero vector)",
        dict(dense=D("plain"), sparse=[
            sparse_feature("a", 10, 4, missing_row=9, unknown_row=8),
            sparse_feature("b", 10, 4, missing_row=-1, unknown_row=-1),
            sparse_feature("c", 10, 4, missing_row=0, unknown_row=-1),
            sparse_feature("e", 10, 4, missing_row=-1, unknown_row=5)],
             cross=dict(kind="lowrank", layers=2, rank=3), deep=[4], combine="stacked"), 54,
        p_edge=0.4, p_missing=0.35, segments=(4, 4))
    add("multihot_sum_mean", "multi-hot sum and mean pooling, unknown ids count in the mean",
        dict(dense=D("plain"), sparse=[
            sparse_feature("ms", 20, 6, pooling="sum", max_ids=5),
            sparse_feature("mm", 20, 6, pooling="mean", max_ids=5, unknown_row=-1),
            sparse_feature("mh", 25, 3, "hash_mod", pooling="mean", max_ids=3, missing_row=2),
            sparse_feature("mv", 12, 2, "vocab", pooling="mean", max_ids=4, oov_buckets=2, vocab=TERMS)],
             cross=MIX(K=2, r=3), deep=[6], combine="stacked"), 55, segments=(4, 4, 4), p_missing=0.2)
    add("dtype_f16", "F16 tables and F16 dense weights",
        dict(dense=D("plain", "log1p"), sparse=S3("F16"), cross=dict(kind="full", layers=2),
             deep=[8], combine="stacked", dtype="F16"), 60)
    add("dtype_bf16", "BF16 tables and BF16 dense weights (mix, per-layer gate)",
        dict(dense=D("plain", "std"), sparse=S3("BF16"), bottom=[6], cross=MIX(shared=False),
             deep=[8], combine="parallel", dtype="BF16"), 61)
    add("dtype_i8", "I8 tables with per-row F32 scale, F32 dense weights",
        dict(dense=D("plain"), sparse=S3("I8"), cross=dict(kind="lowrank", layers=2, rank=5),
             deep=[8], combine="stacked"), 62)
    add("dtype_mixed", "one table per dtype (F32, F16, BF16, I8), multi-hot mean on I8",
        dict(dense=D("plain"), sparse=[
            sparse_feature("t32", 9, 7, dtype="F32"), sparse_feature("t16", 9, 5, dtype="F16"),
            sparse_feature("tb16", 9, 3, dtype="BF16"),
            sparse_feature("ti8", 9, 17, dtype="I8", pooling="mean", max_ids=3)],
             cross=dict(kind="vector", layers=2), deep=[8], combine="parallel", dtype="BF16"), 63)
    add("context_segments", "several segments with dense and sparse context features (rows may override)",
        dict(dense=D("plain", "log1p", "std"), sparse=[
            sparse_feature("user", 40, 8, "hash_mod", hash_seed=5),
            sparse_feature("item", 30, 8),
            sparse_feature("tags", 15, 4, "hex_mod", pooling="mean", max_ids=3)],
             cross=MIX(K=2, r=4), deep=[12], combine="stacked"), 70,
        segments=(3, 1, 5, 2), context=("d0_plain", "d1_log1p", "user", "tags"))
    add("wide_criteo_like", "Criteo-like: 13 log1p dense + 26 hex_mod features of dim 3 (d = 91)",
        dict(dense=[dense_feature("I%d" % (j + 1), "log1p") for j in range(13)],
             sparse=[sparse_feature("C%d" % (i + 1), 8 + i, 3, "hex_mod", missing_row=7 + i)
                     for i in range(26)],
             cross=dict(kind="lowrank", layers=2, rank=8), deep=[33, 17], combine="stacked",
             dtype="F16"), 80, segments=(4, 4))
    add("wide_full_d100", "full cross on d = 100 (13 + 33 + 33 + 17 + 4)",
        dict(dense=[dense_feature("x%d" % j, "std") for j in range(13)],
             sparse=[sparse_feature("a", 7, 33), sparse_feature("b", 5, 33, "hash_mod"),
                     sparse_feature("c", 6, 17), sparse_feature("e", 3, 4)],
             cross=dict(kind="full", layers=2), deep=[], combine="cross_only"), 81)
    add("int_key_types", "'int' keys written as i32, no checksum stored",
        dict(dense=D("plain"), sparse=S3(), cross=MIX(K=2, r=2), deep=[4], combine="stacked",
             int_type="i32", checksum=False), 90)
    # Batches of tens of rows: the kernels' blocked path (row tiles, K blocks,
    # several weight panels) and context sharing across segments of many rows.
    add("batch_full_many_rows", "full cross d = 62, 58 rows in 3 segments with context",
        dict(dense=D("plain", "log1p", "std"), sparse=[
            sparse_feature("user", 50, 17, "hash_mod", hash_seed=3),
            sparse_feature("item", 40, 21), sparse_feature("cat", 20, 21, "hex_mod")],
             cross=dict(kind="full", layers=2), deep=[40, 9], combine="stacked"), 100,
        segments=(37, 1, 20), context=("d0_plain", "user"))
    add("batch_mix_many_rows", "mix K=3 r=5 tanh, 63 rows in 2 segments with context",
        dict(dense=D("plain", "std"), sparse=[
            sparse_feature("user", 30, 19), sparse_feature("item", 40, 16),
            sparse_feature("ctx", 10, 9, "hash_mod", hash_seed=1)],
             cross=MIX(act="tanh", K=3, r=5), deep=[24], combine="parallel"), 101,
        segments=(50, 13), context=("user", "ctx", "d1_std"))
    add("batch_bottom_lowrank_many_rows", "bottom MLP [19, 11], lowrank r=6, 45 rows, dense context",
        dict(dense=D("plain", "log1p", "std"), sparse=[
            sparse_feature("a", 30, 24), sparse_feature("b", 25, 13, "hex_mod")],
             bottom=[19, 11], cross=dict(kind="lowrank", layers=3, rank=6), deep=[30, 10],
             combine="stacked"), 102,
        segments=(45,), context=("d0_plain", "d1_log1p", "d2_std"))
    return C


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    for c in cases():
        if a.only in c.name:
            doc = build_case(c, a.out)
            print(f"{c.name}: {len(doc['expected']['logit'])} rows, tolerance {doc['tolerance']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
