#!/usr/bin/python3
"""calibrate.py — INT8 calibration from data: writes a copy of a model file
with per-layer smoothing factors (FORMAT.md §3, `dcnv2.int8.smooth.*`) that
`dcnserve --int8` uses, measured on rows of real traffic.

The engine's INT8 path quantizes each activation row with one scale (its
largest |x|) and each weight output with one scale. A few input coordinates
that run much larger than the rest (a raw dense feature, a hot embedding
coordinate) take the whole range of a row and flatten every other one to a
handful of levels. SmoothQuant's remedy (Xiao et al., 2023): per input
coordinate k of a layer, divide the activations by s_k and multiply the
weights' column k by s_k — exact in real arithmetic, but it moves range from
the activations to the weights, where it is quantized per output instead:

    s_k = max|x_k|^alpha / max_n |W[n, k]|^(1 - alpha)

max|x_k| over the calibration rows (an input they never fire takes the
layer's median, as does a column of zero weights), scored by the PyTorch reference of the
file (tools/dcn_torch.py, which the engine matches to float rounding), for
every layer the engine quantizes: bottom and deep MLP layers, cross W, low-
rank V and U, mix V (with its gate: they read the same x), C and U (inputs
expert-major). The logit layer and vector cross layers stay float. Factors
are normalised to a geometric mean of 1 (a common factor is absorbed by the
per-row and per-output scales anyway) and clamped to [1e-6, 1e6] of it.

Nothing else in the file changes: the float path ignores the keys, and a
reader without them ignores unknown metadata keys (FORMAT.md §2). alpha: the
activations' share of the range; 0.5 is SmoothQuant's default. The engine's
weights have 7 bits and its activations 8, which favours lower values; on
the bundled model 0.4 did best (model/PRECISION.md), the default here.

    calibrate.py model/default/criteo-dcn.dcn --rows data/criteo_test_1999_unlabeled.csv \\
                 --out calibrated.dcn
then measure what it buys through the real server:
    bench/precision_eval.py --dcnserve build/release/dcnserve --model calibrated.dcn --flags=--int8
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402
import train  # noqa: E402


class Stats:
    """Running max |x| per input coordinate of each target tensor."""

    def __init__(self):
        self.amax = {}

    def add(self, name, x):
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).double().numpy()
        self.amax[name] = np.maximum(self.amax[name], m) if name in self.amax else m


def collect(module, rows, batch=512):
    """Scores rows with the module; returns Stats of every quantized layer's
    inputs (names as in dcnfile.smooth_targets)."""
    st = Stats()
    spec = module.spec
    hooks = []
    for j, lin in enumerate(module.bottom):
        hooks.append(lin.register_forward_pre_hook(lambda m, a, n=f"bottom.{j}.weight": st.add(n, a[0])))
    for j, lin in enumerate(module.deep):
        hooks.append(lin.register_forward_pre_hook(lambda m, a, n=f"deep.{j}.weight": st.add(n, a[0])))

    def cross_hook(layer, args, l):
        x = args[1]
        kind = layer.kind
        if kind == "full":
            st.add(f"cross.{l}.weight", x)
        elif kind == "lowrank":
            st.add(f"cross.{l}.v", x)
            st.add(f"cross.{l}.u", F.linear(x, layer.v))
        elif kind == "mix":
            st.add(f"cross.{l}.v", x)
            h1 = layer.g(torch.einsum("krd,bd->bkr", layer.v, x))
            h2 = layer.g(torch.einsum("kij,bkj->bki", layer.c, h1))
            st.add(f"cross.{l}.c", h1.reshape(h1.shape[0], -1))
            st.add(f"cross.{l}.u", h2.reshape(h2.shape[0], -1))

    for l in range(spec.arch.cross_layers):
        hooks.append(module.cross.layer(l).register_forward_pre_hook(lambda m, a, l=l: cross_hook(m, a, l)))
    try:
        with torch.no_grad():
            dt.score_rows(module, rows, batch=batch)
    finally:
        for h in hooks:
            h.remove()
    return st


def weight_max(module, name):
    """max_n |W[n, k]| per input k of the layer the engine quantizes from
    tensor `name` (mix V with its gate's rows; C and U expert-major)."""
    sd = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    if not name.startswith("cross.") or name.endswith(".weight"):
        return np.abs(sd[name]).max(0)
    l, part = name.split(".")[1], name.split(".")[2]
    w = sd[f"cross.{l}.{part}"]
    if w.ndim == 2:                                   # lowrank v [r, d], u [d, r]
        return np.abs(w).max(0)
    K = w.shape[0]
    if part == "v":                                   # [K, r, d] and the gate [K, d]
        m = np.abs(w).reshape(-1, w.shape[2]).max(0)
        for g in (f"cross.{l}.gate.weight", "cross.gate.weight"):
            if g in sd:
                m = np.maximum(m, np.abs(sd[g]).max(0))
        return m
    # c [K, r, r], u [K, d, r]: input i*r + j is expert i's coordinate j
    return np.concatenate([np.abs(w[i]).max(0) for i in range(K)])


def _typical(v):
    """v with zeros (an input the calibration rows never fired, a column of
    zero weights) replaced by the median of the others, so such an input is
    left about as it is rather than blown up, and tiny values floored at
    1e-6 of the largest."""
    nz = v[v > 0]
    if not len(nz):
        return np.ones_like(v)
    return np.maximum(np.where(v > 0, v, np.median(nz)), 1e-6 * nz.max())


def factors(amax, wmax, alpha):
    """SmoothQuant's s_k on _typical maxima, normalised to a geometric mean
    of 1 and clamped to [1e-6, 1e6]."""
    a, w = _typical(amax), _typical(wmax)
    s = a ** alpha / w ** (1.0 - alpha)
    s = s / np.exp(np.log(s).mean())
    return np.clip(s, 1e-6, 1e6).astype(np.float32)


def spread(v):
    """max / median of the non-zero: how far the largest sticks out."""
    nz = v[v > 0]
    return float(nz.max() / np.median(nz)) if len(nz) else 0.0


def calibrate(path, rows, alpha, out, note=None, log=sys.stdout):
    f = dcnfile.DcnFile(path)
    meta = dict(f.metadata)
    module = dt.load_dcn(path)
    targets = dcnfile.smooth_targets(meta)
    st = collect(module, rows)
    new_meta = {}
    for k, v in f.metadata.items():
        if k.startswith(dcnfile.SMOOTH_PREFIX):
            continue                                  # recalibrating replaces them
        t = f.types[k]
        new_meta[k] = dcnfile.arr(t[len("array/"):], v) if t.startswith("array/") else dcnfile.Typed(t, v)
    print(f"{len(rows)} calibration rows, alpha {alpha}; per layer, max/median of the range per input "
          f"(activations, weights; after smoothing: activations / s, weights * s)", file=log)
    for name, n in targets.items():
        amax, wmax = st.amax[name], weight_max(module, name)
        assert len(amax) == n and len(wmax) == n, name
        s = factors(amax, wmax, alpha)
        new_meta[dcnfile.SMOOTH_PREFIX + name] = dcnfile.arr("f32", [float(x) for x in s])
        print(f"  {name:22s} {n:6d} inputs: activations {spread(amax):8.1f} -> {spread(amax / s):6.1f}, "
              f"weights {spread(wmax):6.1f} -> {spread(wmax * s):6.1f}", file=log)
    new_meta["dcnv2.int8.calibration"] = dcnfile.string(
        note or f"SmoothQuant alpha {alpha} over {len(rows)} rows (tools/calibrate.py)")
    tensors = {}
    for name in sorted(f.tensors, key=lambda n: f.offsets[n]):
        dtype = f.dtypes[name]
        a = np.array(f.f32(name)) if dtype in ("F32", "F16", "BF16") else np.array(f.tensors[name])
        tensors[name] = (a, dtype)
    n = dcnfile.write_dcn(out, new_meta, tensors, checksum="dcnv2.checksum.crc32" in meta)
    print(f"wrote {out} ({n} bytes, {len(targets)} layers smoothed)", file=log)
    return len(targets)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the .dcn file to calibrate")
    ap.add_argument("--rows", required=True, help="Criteo CSV/TSV rows (labels not needed)")
    ap.add_argument("--limit", type=int, default=2000, help="rows to read (default 2000)")
    ap.add_argument("--alpha", type=float, default=0.4, help="activations' share, 0..1 (default 0.4)")
    ap.add_argument("--out", required=True, help="the calibrated copy (written atomically)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        ap.error("--alpha must lie in [0, 1]")
    torch.set_num_threads(1)
    _, rows = train.read_criteo(args.rows, limit=args.limit)
    if not rows:
        ap.error(f"{args.rows}: no rows")
    try:
        calibrate(args.model, rows, args.alpha, args.out)
    except dcnfile.DcnFormatError as e:
        print(f"calibrate.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
