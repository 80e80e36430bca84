#!/usr/bin/python3
"""quantize_onnx — ONNX Runtime's own INT8 path on the benchmark models, so
that dcnserve's `--int8` is measured against ONNX Runtime in INT8 too, not
only in FP32.

What ONNX Runtime's `quantize_dynamic` does to a graph, written out here
with the onnx package (Debian's python3-onnx; onnxruntime's Python tools are
not installable here): every MatMul and Gemm whose weight is a constant
becomes the contrib op com.microsoft.DynamicQuantizeMatMul, which quantizes
its input to uint8 per tensor at run time (asymmetric, one scale and zero
point per batch) and multiplies it with int8 weights in MLAS's u8s8 GEMM
(AVX2: vpmaddubsw, as ours). Weights are quantized per output column,
symmetric, to 7 bits (|q| <= 63: quantize_dynamic's reduce_range, which
ONNX Runtime recommends on CPUs without VNNI, where 8-bit weights can
saturate vpmaddubsw; the same range as dcnserve's). What quantize_dynamic
leaves in float stays float: Einsum (the mix experts' V, C and U), the
embedding Gathers, and here also the logit layer (one output; dcnserve
keeps it float too).

Writes <key>-int8.onnx next to <key>.onnx (its tables stay external data in
the same .dcn file) and <key>-int8.check.json: the check rows of <key> with
a parity tolerance for INT8 (ort_bench.js refuses a session whose logits on
the check rows differ from PyTorch's float ones by more than it).

usage: quantize_onnx.py --models DIR --keys k1,k2 [--force]
"""
import argparse
import json
import os
import sys

import numpy as np

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # the caller (run.py) reports it and skips ONNX Runtime INT8
    sys.exit("quantize_onnx: the onnx package is missing (apt-get install python3-onnx)")

WMAX = 63              # 7-bit weights (reduce_range)
PARITY_TOL = 0.5       # |logit - float logit| on the check rows: catches a broken graph, not INT8 error


def quantize(src, dst):
    """Rewrites src into dst; returns how many matrices were quantized."""
    m = onnx.load(src, load_external_data=False)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes, new_inits, dead, n = [], [], set(), 0
    for node in g.node:
        w_name = node.input[1] if len(node.input) > 1 else None
        w_init = inits.get(w_name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = node.op_type in ("MatMul", "Gemm") and w_init is not None and w_init.data_location != 1
        if ok and node.op_type == "Gemm":
            ok = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if not ok:
            new_nodes.append(node)
            continue
        W = numpy_helper.to_array(w_init).astype(np.float32)
        B = W.T if (node.op_type == "Gemm" and attrs.get("transB", 0)) else W   # [K, N]
        if B.shape[1] == 1:                          # the logit layer stays float, as in dcnserve
            new_nodes.append(node)
            continue
        amax = np.abs(B).max(0)
        scale = np.where(amax > 0, amax / WMAX, 1.0).astype(np.float32)
        q = np.clip(np.rint(B / scale), -WMAX, WMAX).astype(np.int8)
        base = f"{w_name}_q"
        new_inits += [numpy_helper.from_array(q, base),
                      numpy_helper.from_array(scale, base + "_scale"),
                      numpy_helper.from_array(np.zeros_like(q[0]), base + "_zp")]
        inputs = [node.input[0], base, base + "_scale", base + "_zp"]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            inputs.append(node.input[2])
        new_nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, list(node.output),
                                          name=(node.name or base) + "_int8", domain="com.microsoft"))
        dead.add(w_name)
        n += 1
    del g.node[:]
    g.node.extend(new_nodes)
    keep = [i for i in g.initializer if i.name not in dead]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tmp = dst + ".tmp"
    onnx.save(m, tmp)
    os.replace(tmp, dst)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    for key in a.keys.split(","):
        src = os.path.join(a.models, f"{key}.onnx")
        dst = os.path.join(a.models, f"{key}-int8.onnx")
        chk_src = os.path.join(a.models, f"{key}.check.json")
        chk_dst = os.path.join(a.models, f"{key}-int8.check.json")
        if not a.force and os.path.exists(dst) and os.path.exists(chk_dst) and \
                os.path.getmtime(dst) >= os.path.getmtime(src):
            print(json.dumps({"key": key, "int8_onnx": os.path.basename(dst), "cached": True}))
            continue
        n = quantize(src, dst)
        with open(chk_src) as f:
            c = json.load(f)
        c.update({"key": f"{key}-int8", "onnx": os.path.basename(dst), "max_logit_diff": PARITY_TOL,
                  "engine_logit": None, "int8_matrices": n})
        tmp = chk_dst + ".tmp"
        with open(tmp, "w") as f:
            json.dump(c, f)
        os.replace(tmp, chk_dst)
        print(json.dumps({"key": key, "int8_onnx": os.path.basename(dst), "int8_matrices": n}))


if __name__ == "__main__":
    main()
