"""make_models — the benchmark's model files, random weights, seeded.

Writes bench/out/models/<key>.dcn with tools/dcnfile.py (build_model_file)
for each model of MODELS, plus <key>.spec.json recording what was written.
A file whose recorded spec matches is kept (the dlrmv2 tables are 1.3 GB):
the run only pays for generation once.

Models (the benchmark of issue 2, §4):
- criteo-full:     13 dense + 26 sparse (vocabulary 100,000, dim 16), x0 = 429,
                   3 full cross layers, deep [512, 256], stacked;
- criteo-lowrank:  the same with low-rank cross layers, rank 64;
- criteo-mix:      the same with 4 experts of rank 64, g = tanh, softmax gate,
                   one gate per layer (with bias), as DCN-Mix describes it;
- dlrmv2:          bottom MLP 13-512-256-128, 26 tables of dim 128 (vocabulary
                   capped at 100,000), x0 = 3456, 3 low-rank layers of rank
                   512, deep [1024, 1024, 512, 256], stacked;
- dlrmv2-bf16:     dlrmv2's weights with every dense matrix stored as BF16
                   (rounded to nearest even; tables and biases stay F32):
                   the engine keeps them 16-bit (half the bytes to stream);
- criteo-full-parallel: criteo-full combined `parallel` (the deep network
                   reads x0): only for the context-sharing measurement.
Features: index mapping, sum pooling, single-hot; dense features untransformed
(the benchmark feeds values that are already standardised).
Weights: every matrix U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Linear
initialises them, biases and embedding rows U(-0.05, 0.05), float32.

usage: make_models.py --outdir DIR [--models k1,k2] [--force]
Prints one JSON line per model: key, path, bytes, generated (or cached), seconds.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import dcnfile  # noqa: E402

GENERATOR_VERSION = 1          # bump when the weight recipe changes


def criteo_spec(name, cross, combine="stacked"):
    """A Criteo-shaped spec (build_model_file's plain form)."""
    return {
        "name": name, "version": "bench-1",
        "description": "dcnserve benchmark model, random weights",
        "dense": [{"name": f"I{j + 1}"} for j in range(13)],
        "sparse": [{"name": f"C{i + 1}", "vocab_size": 100_000, "dim": 16} for i in range(26)],
        "cross": cross, "deep": [512, 256], "combine": combine,
    }


def dlrmv2_spec():
    """The MLPerf DLRM-v2 shape with the vocabulary capped at 100,000."""
    s = criteo_spec("dlrmv2", {"kind": "lowrank", "layers": 3, "rank": 512})
    for f in s["sparse"]:
        f["dim"] = 128
    s["bottom"] = [512, 256, 128]
    s["deep"] = [1024, 1024, 512, 256]
    return s


MODELS = {
    "criteo-full": (criteo_spec("criteo-full", {"kind": "full", "layers": 3}), 101),
    "criteo-lowrank": (criteo_spec("criteo-lowrank", {"kind": "lowrank", "layers": 3, "rank": 64}), 102),
    "criteo-mix": (criteo_spec("criteo-mix", {"kind": "mix", "layers": 3, "rank": 64, "experts": 4,
                                              "activation": "tanh", "gate": "softmax",
                                              "gate_shared": False}), 103),
    "dlrmv2": (dlrmv2_spec(), 104),
    "dlrmv2-bf16": (dict(dlrmv2_spec(), name="dlrmv2-bf16", dtype="BF16"), 104),
    "criteo-full-parallel": (criteo_spec("criteo-full-parallel", {"kind": "full", "layers": 3},
                                         combine="parallel"), 105),
}


def make_weights(spec, seed):
    """Random float32 weights for every tensor the spec needs, drawn in the
    canonical tensor order from one seeded generator."""
    meta = dcnfile.spec_metadata(spec)
    plain = {k: v.value for k, v in meta.items()}
    rng = np.random.default_rng(seed)
    w = {}
    for name, (shape, _) in dcnfile.expected_tensors(plain).items():
        if name.endswith(".scale") or name.startswith("vocab."):
            continue
        if name.startswith("emb.") or name.endswith(".bias"):
            w[name] = rng.uniform(-0.05, 0.05, size=shape).astype(np.float32)
            continue
        lim = 1.0 / np.sqrt(shape[-1])        # fan_in: the innermost dimension
        w[name] = rng.uniform(-lim, lim, size=shape).astype(np.float32)
    return w


def generate(key, outdir, force=False):
    """Writes outdir/<key>.dcn unless an identical one exists; returns info."""
    spec, seed = MODELS[key]
    path = os.path.join(outdir, f"{key}.dcn")
    side = os.path.join(outdir, f"{key}.spec.json")
    record = {"spec": spec, "seed": seed, "generator": GENERATOR_VERSION}
    t0 = time.perf_counter()
    cached = False
    if not force and os.path.exists(path) and os.path.exists(side):
        with open(side) as f:
            cached = json.load(f) == json.loads(json.dumps(record))
    if not cached:
        dcnfile.build_model_file(path, spec, make_weights(spec, seed), checksum=True)
        with open(side, "w") as f:
            json.dump(record, f, indent=1)
    return {"key": key, "path": path, "bytes": os.path.getsize(path),
            "generated": not cached, "seconds": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    for key in a.models.split(","):
        print(json.dumps(generate(key, a.outdir, a.force)), flush=True)


if __name__ == "__main__":
    main()
