"""export_onnx — the benchmark models as ONNX graphs for ONNX Runtime.

For each <key>.dcn: builds the PyTorch module with tools/dcn_torch.py from the
file (spec_from_file + DCNv2, the same weights), wraps it in the single-hot
serving graph below and exports it with torch.onnx.export (opset 13, dynamic
batch). Inputs `dense` float32 (B, n_dense) and `sparse` int64 (B, n_sparse)
table rows; outputs `prob` and `logit`, float32 (B,).

DESIGN
- The embedding tables are not copied. Tracing runs on a module whose
  tables have 2 rows; the exported table initializers are then rewritten as
  ONNX external data pointing into the .dcn file itself (same directory,
  the F32 table's absolute offset and length): ONNX Runtime reads the very
  bytes the engine maps. Dense weights stay inline. The rewrite edits the
  protobuf directly (a few wire-format helpers below), so no `onnx` package
  is needed; torch.onnx.export does not need one either.
- The serving graph gathers one row per feature (ONNX Gather) instead of
  dcn_torch's general multi-hot form (gather x per-slot weight, summed), so
  ORT is not charged for pooling that single-hot rows do not need.
- Parity: for the check rows (from `dcn-bench dump` when given, else random)
  the same module with the full tables (read from the mapping) computes
  reference logits; <key>.check.json holds the rows, the torch logits and,
  when dumped, the engine's. ort_bench.js compares ORT against both.
- Cached: <key>.onnx is rebuilt only when the .dcn file or this script is
  newer; the check file is rewritten every time (it is cheap).

usage: export_onnx.py --models DIR --keys k1,k2 [--dumps DIR] [--force]
Prints one JSON line per model.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import dcnfile  # noqa: E402
import dcn_torch  # noqa: E402

TRACE_ROWS = 2
OPSET = 13


# ---------------------------------------------------------------- serving graph

class SingleHot(nn.Module):
    """Serving graph of a dcn_torch.DCNv2 for single-hot rows:
    forward(dense (B, n_dense), sparse (B, n_sparse) table rows) -> (prob, logit).
    Everything after x0 is DCNv2.forward's own layers in its order."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    # x0 from dense values and one (B, dim) embedding block per feature.
    def x0(self, dense, embs):
        m = self.m
        parts = []
        if len(m.spec.dense):
            h = m.dense_transform(dense)
            for lin in m.bottom:
                h = torch.relu(lin(h))
            parts.append(h)
        return torch.cat(parts + list(embs), dim=1)

    # logits from x0: cross network, deep network, combination, logit layer.
    def tail(self, x0):
        m = self.m
        xl = m.cross(x0)
        comb = m.spec.arch.combine
        h = x0 if comb == "parallel" else xl
        for lin in m.deep:
            h = torch.relu(lin(h))
        z = torch.cat([xl, h], dim=1) if comb == "parallel" else h
        return m.logit(z).squeeze(1)

    def forward(self, dense, sparse):
        embs = [F.embedding(sparse[:, f], e.weight) for f, e in enumerate(self.m.emb)]
        logit = self.tail(self.x0(dense, embs))
        return torch.sigmoid(logit), logit


def small_module(f):
    """The model of DcnFile f with 2-row tables (their first rows), every
    other weight as in the file. Returns (SingleHot, spec)."""
    tensors = f.tensors
    spec = dcn_torch.spec_from_file(f.metadata, tensors)
    full_vocab = [s.vocab_size for s in spec.sparse]
    for s in spec.sparse:
        s.vocab_size = TRACE_ROWS
    m = dcn_torch.DCNv2(spec)
    state = {}
    for name in m.state_dict():
        a = f.f32(name)
        if name.startswith("emb."):
            a = a[:TRACE_ROWS]
        state[name] = torch.from_numpy(np.array(a, dtype=np.float32))
    m.load_state_dict(state)
    for s, v in zip(spec.sparse, full_vocab):
        s.vocab_size = v
    return SingleHot(m.eval()).eval()


# ---------------------------------------------------------------- protobuf wire format

def _read_varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7


def _varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        if v:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _fields(b):
    """Yields (field number, wire type, payload, raw bytes of the field) of
    one protobuf message; payload is an int (varint/fixed) or bytes."""
    i = 0
    while i < len(b):
        start = i
        key, i = _read_varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _read_varint(b, i)
        elif wt == 1:
            val, i = struct.unpack_from("<Q", b, i)[0], i + 8
        elif wt == 2:
            n, i = _read_varint(b, i)
            val, i = bytes(b[i:i + n]), i + n
        elif wt == 5:
            val, i = struct.unpack_from("<I", b, i)[0], i + 4
        else:
            raise ValueError(f"protobuf wire type {wt} not supported")
        yield num, wt, val, bytes(b[start:i])


def _len_field(num, payload):
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _external_tensor(name, dims, location, offset, length):
    """A TensorProto of FLOAT data stored externally (onnx.proto field
    numbers: dims 1, data_type 2, name 8, external_data 13, data_location 14)."""
    out = b"".join(_varint(1 << 3) + _varint(d) for d in dims)
    out += _varint(2 << 3) + _varint(1)                              # FLOAT
    out += _len_field(8, name.encode())
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        out += _len_field(13, _len_field(1, k.encode()) + _len_field(2, v.encode()))
    out += _varint(14 << 3) + _varint(1)                             # EXTERNAL
    return out


def point_tables_at(model_bytes, tables):
    """Rewrites the initializers named in tables (name -> (dims, location,
    offset, length)) as external data; returns the new ModelProto bytes and
    the set of names rewritten. ModelProto.graph is field 7,
    GraphProto.initializer field 5, TensorProto.name field 8."""
    done = set()
    out = []
    for num, wt, val, raw in _fields(model_bytes):
        if num != 7 or wt != 2:
            out.append(raw)
            continue
        g = []
        for gnum, gwt, gval, graw in _fields(val):
            if gnum == 5 and gwt == 2:
                name = next((v.decode() for n, w, v, _ in _fields(gval) if n == 8), None)
                if name in tables:
                    g.append(_len_field(5, _external_tensor(name, *tables[name])))
                    done.add(name)
                    continue
            g.append(graw)
        out.append(_len_field(7, b"".join(g)))
    return b"".join(out), done


# ---------------------------------------------------------------- export

def check_rows(f, dump_path, n=8, seed=7):
    """Rows for the parity check: those `dcn-bench dump` wrote (with the
    engine's outputs) or n random ones."""
    if dump_path and os.path.exists(dump_path):
        with open(dump_path) as fh:
            d = json.load(fh)
        return d["dense"], d["sparse"], d.get("logit"), d.get("prob"), d.get("kernels")
    rng = np.random.default_rng(seed)
    nd = f.metadata["dcnv2.dense.count"]
    vocab = f.metadata["dcnv2.sparse.vocab_size"]
    dense = rng.standard_normal((n, nd)).astype(np.float32).tolist()
    sparse = [[int(rng.integers(0, v)) for v in vocab] for _ in range(n)]
    return dense, sparse, None, None, None


def export_one(key, models_dir, dumps_dir, force):
    """Exports models_dir/<key>.onnx (unless fresh) and writes
    <key>.check.json; returns a summary dict (printed as JSON by main)."""
    t0 = time.perf_counter()
    dcn_path = os.path.join(models_dir, f"{key}.dcn")
    onnx_path = os.path.join(models_dir, f"{key}.onnx")
    f = dcnfile.load_dcn(dcn_path)
    net = small_module(f)
    n_sparse = len(net.m.emb)
    fresh = (not force and os.path.exists(onnx_path) and
             os.path.getmtime(onnx_path) >= max(os.path.getmtime(dcn_path), os.path.getmtime(__file__)))
    if not fresh:
        tables = {}
        for i in range(n_sparse):
            name = f"emb.{i}.weight"
            if f.dtypes[name] != "F32":
                raise SystemExit(f"{key}: {name} is {f.dtypes[name]}; the export handles F32 tables")
            t = f.tensors[name]
            # the wrapper holds the module as `m`: its initializers are m.<file name>
            tables["m." + name] = (list(t.shape), os.path.basename(dcn_path), f.offsets[name], t.nbytes)
        dense = torch.zeros(TRACE_ROWS, len(net.m.spec.dense))
        sparse = torch.zeros(TRACE_ROWS, n_sparse, dtype=torch.int64)
        tmp = onnx_path + ".trace"
        with torch.no_grad():
            torch.onnx.export(net, (dense, sparse), tmp, input_names=["dense", "sparse"],
                              output_names=["prob", "logit"], opset_version=OPSET,
                              dynamic_axes={"dense": {0: "batch"}, "sparse": {0: "batch"},
                                            "prob": {0: "batch"}, "logit": {0: "batch"}},
                              do_constant_folding=True)
        with open(tmp, "rb") as fh:
            model_bytes = fh.read()
        os.remove(tmp)
        model_bytes, done = point_tables_at(model_bytes, tables)
        if done != set(tables):
            raise SystemExit(f"{key}: table initializers not found: {sorted(set(tables) - done)}")
        with open(onnx_path + ".tmp", "wb") as fh:
            fh.write(model_bytes)
        os.replace(onnx_path + ".tmp", onnx_path)

    # reference logits of the check rows, tables read from the mapping
    dump = os.path.join(dumps_dir, f"{key}.dump.json") if dumps_dir else None
    dense, sparse, eng_logit, eng_prob, kernels = check_rows(f, dump)
    ids = np.asarray(sparse, dtype=np.int64)
    with torch.no_grad():
        embs = [torch.from_numpy(np.array(f.tensors[f"emb.{i}.weight"][ids[:, i]], dtype=np.float32))
                for i in range(n_sparse)]
        ref = net.tail(net.x0(torch.tensor(dense, dtype=torch.float32), embs)).numpy()
    info = {"key": key, "onnx": os.path.basename(onnx_path), "exported": not fresh,
            "n_dense": len(net.m.spec.dense), "n_sparse": n_sparse,
            "vocab_sizes": [int(v) for v in f.metadata["dcnv2.sparse.vocab_size"]],
            "onnx_bytes": os.path.getsize(onnx_path)}
    check = dict(info, dense=dense, sparse=sparse, torch_logit=ref.astype(float).tolist())
    if eng_logit is not None:
        err = float(np.max(np.abs(np.asarray(eng_logit) - ref)))
        info["max_abs_engine_vs_torch_logit"] = err
        info["engine_kernels"] = kernels
        check.update(engine_logit=eng_logit, engine_prob=eng_prob,
                     max_abs_engine_vs_torch_logit=err)
    with open(os.path.join(models_dir, f"{key}.check.json"), "w") as fh:
        json.dump(check, fh)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="directory of <key>.dcn files")
    ap.add_argument("--keys", required=True)
    ap.add_argument("--dumps", help="directory of <key>.dump.json from dcn-bench dump")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for key in a.keys.split(","):
        print(json.dumps(export_one(key, a.models, a.dumps, a.force)), flush=True)


if __name__ == "__main__":
    main()
