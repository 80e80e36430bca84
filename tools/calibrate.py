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

max|x_k| over the calibration rows, scored by the PyTorch reference of the
file (tools/dcn_torch.py, which the engine matches to float rounding), for
every layer the engine quantizes: bottom and deep MLP layers, cross W, low-
rank V and U, mix V (with its gate: they read the same x), C and U (inputs
expert-major). The logit layer and vector cross layers stay float. An input
the rows never fire takes the layer's median range, as does a column of
zero weights; factors below the layer's median are raised to it (outliers
are shrunk, nothing is blown up: an input larger in production than in
the rows then hurts less), then normalised to a geometric mean of 1 (a
common factor is absorbed by the per-row and per-output scales anyway) and
clamped to [1e-6, 1e6].

alpha, the activations' share of the range, is searched: the engine's INT8
path is simulated end to end in PyTorch (`simulate`: every quantized layer
through the same quantizers; the tests hold it to the real server) on the
calibration rows for alpha 0.1 ... 0.8 and without smoothing, and the one
whose scores move least from float wins (mean |score change|; no labels
needed). If no smoothing wins, the copy has no factors. `--alpha A` skips
the search.

Nothing else in the file changes: the float path ignores the keys, and a
reader without them skips unknown metadata keys (FORMAT.md §2).

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


def _gates(layer, x, shared_gate):
    """The mix gates G (B, K) for input x, as the engine computes them."""
    K = layer.experts
    if layer.gate_kind == "constant":
        return torch.full((x.shape[0], K), 1.0 / K)
    gate = shared_gate if shared_gate is not None else layer.gate
    sc = gate(x)
    return torch.softmax(sc, dim=1) if layer.gate_kind == "softmax" else torch.sigmoid(sc)


def collect(module, rows, batch=512):
    """Scores rows with the module; returns {tensor name: max |x_k|} over the
    inputs of every layer the engine quantizes (names as in
    dcnfile.smooth_targets): what each klinear of the engine reads, so the
    mix U's inputs are the gated g(C g(V x)) (the engine folds the gates in
    before U)."""
    amax = {}

    def add(name, x):
        m = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).double().numpy()
        amax[name] = np.maximum(amax[name], m) if name in amax else m

    hooks = []
    for j, lin in enumerate(module.bottom):
        hooks.append(lin.register_forward_pre_hook(lambda m, a, n=f"bottom.{j}.weight": add(n, a[0])))
    for j, lin in enumerate(module.deep):
        hooks.append(lin.register_forward_pre_hook(lambda m, a, n=f"deep.{j}.weight": add(n, a[0])))

    def cross_hook(layer, args, l):
        x = args[1]
        if layer.kind == "full":
            add(f"cross.{l}.weight", x)
        elif layer.kind == "lowrank":
            add(f"cross.{l}.v", x)
            add(f"cross.{l}.u", F.linear(x, layer.v))
        elif layer.kind == "mix":
            add(f"cross.{l}.v", x)
            h1 = layer.g(torch.einsum("krd,bd->bkr", layer.v, x))
            h2 = layer.g(torch.einsum("kij,bkj->bki", layer.c, h1))
            G = _gates(layer, x, args[2])
            add(f"cross.{l}.c", h1.reshape(h1.shape[0], -1))
            add(f"cross.{l}.u", (h2 * G.unsqueeze(2)).reshape(h2.shape[0], -1))

    for l in range(module.spec.arch.cross_layers):
        hooks.append(module.cross.layer(l).register_forward_pre_hook(lambda m, a, l=l: cross_hook(m, a, l)))
    try:
        with torch.no_grad():
            dt.score_rows(module, rows, batch=batch)
    finally:
        for h in hooks:
            h.remove()
    return amax


def weight_max(module, name):
    """max_n |W[n, k]| per input k of the layers the engine quantizes from
    tensor `name`: mix V with its gate's rows (the same x), mix C per expert
    on its expert's r inputs, mix U as U_cat (inputs expert-major)."""
    sd = module.state_dict()                          # views; only the tensors used are copied
    arr = lambda k: np.abs(sd[k].detach().double().numpy())
    if not name.startswith("cross.") or name.endswith(".weight"):
        return arr(name).max(0)
    l, part = name.split(".")[1], name.split(".")[2]
    w = arr(f"cross.{l}.{part}")
    if w.ndim == 2:                                   # lowrank v [r, d], u [d, r]
        return w.max(0)
    if part == "v":                                   # [K, r, d], and the gate [K, d]
        m = w.reshape(-1, w.shape[2]).max(0)
        for g in (f"cross.{l}.gate.weight", "cross.gate.weight"):
            if g in sd:
                m = np.maximum(m, arr(g).max(0))
        return m
    return np.concatenate([w[i].max(0) for i in range(w.shape[0])])  # c [K, r, r], u [K, d, r]


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
    """SmoothQuant's s_k on _typical maxima, raised to at least their median
    (outliers shrunk, nothing blown up), normalised to a geometric mean of 1
    and clamped to [1e-6, 1e6]."""
    a, w = _typical(amax), _typical(wmax)
    s = a ** alpha / w ** (1.0 - alpha)
    s = np.maximum(s, np.median(s))
    s = s / np.exp(np.log(s).mean())
    return np.clip(s, 1e-6, 1e6).astype(np.float32)


# ---------------------------------------------------------------- the engine's INT8, simulated

def _qrows(x, levels):
    """The engine's quantizers, dequantized: per row of x, q = round(x *
    (levels / max|x|)) to nearest even, clamped, times max|x| / levels; rows
    whose max is below 1e-30 become zeros (kern_quant_row; per output of a
    weight matrix with levels 63, kern_quantize)."""
    m = x.abs().amax(dim=1, keepdim=True)
    ok = m >= 1e-30
    inv = torch.where(ok, levels / torch.where(ok, m, torch.ones_like(m)), torch.zeros_like(m))
    q = torch.round(x * inv).clamp(-levels, levels)
    return q * torch.where(ok, m / levels, torch.zeros_like(m))


def _qlinear(x, w, b, s):
    """y = x W^T + b as the engine's INT8 GEMM computes it, smoothed by s."""
    if s is not None:
        x, w = x * (1.0 / s), w * s
    return F.linear(_qrows(x, 127.0), _qrows(w, 63.0), b)


def simulate(module, rows, smooth, batch=512):
    """Scores rows as `dcnserve --int8` would with the smoothing factors
    `smooth` ({tensor: float32 array}): every layer the engine quantizes is
    run through its quantizers (rows to 8 bits, weights to 7 per output);
    the logit layer and vector cross layers stay float. Returns the scores
    (tests hold it to the real server)."""
    names = {id(p): n for n, p in module.named_parameters()}
    quantized = set(dcnfile.smooth_targets(_meta_of(module)))
    sm = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in smooth.items()}
    linear = F.linear

    def qlin(x, w, b=None):
        n = names.get(id(w))
        if n not in quantized:
            return linear(x, w, b)
        sh = x.shape
        return _qlinear(x.reshape(-1, sh[-1]), w, b, sm.get(n)).reshape(*sh[:-1], w.shape[0])

    def mix_forward(layer, l):
        def fwd(x0, x, shared_gate=None):
            K, r, d = layer.experts, layer.v.shape[1], layer.v.shape[2]
            ws, bs = [layer.v.reshape(K * r, d)], [torch.zeros(K * r)]
            gate = None if layer.gate_kind == "constant" else (shared_gate if shared_gate is not None else layer.gate)
            if gate is not None:
                ws.append(gate.weight)
                bs.append(gate.bias if gate.bias is not None else torch.zeros(K))
            a = _qlinear(x, torch.cat(ws), torch.cat(bs), sm.get(f"cross.{l}.v"))
            if gate is None:
                G = torch.full((x.shape[0], K), 1.0 / K)
            else:
                G = torch.softmax(a[:, K * r:], 1) if layer.gate_kind == "softmax" else torch.sigmoid(a[:, K * r:])
            h1 = layer.g(a[:, :K * r])
            sc = sm.get(f"cross.{l}.c")
            h2 = torch.cat([layer.g(_qlinear(h1[:, i * r:(i + 1) * r], layer.c[i], None,
                                             None if sc is None else sc[i * r:(i + 1) * r])) for i in range(K)], 1)
            hg = (h2.reshape(-1, K, r) * G.unsqueeze(2)).reshape(-1, K * r)
            ucat = torch.cat([layer.u[i] for i in range(K)], 1)
            e = _qlinear(hg, ucat, None, sm.get(f"cross.{l}.u"))
            return x0 * (e + layer.bias * G.sum(1, keepdim=True))
        return fwd

    patched = []
    for l in range(module.spec.arch.cross_layers):
        layer = module.cross.layer(l)
        if layer.kind == "mix":
            layer.forward = mix_forward(layer, l)
            patched.append(layer)
    F.linear = qlin
    try:
        with torch.no_grad():
            p, _ = dt.score_rows(module, rows, batch=batch)
    finally:
        F.linear = linear
        for layer in patched:
            del layer.forward
    return p


def _meta_of(module):
    """The metadata dict of a module's spec (what smooth_targets reads)."""
    return {k: v.value for k, v in dcnfile.spec_metadata(dt._plain_spec(module.spec)).items()}


ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def search(module, rows, amax, wmax, log):
    """alpha chosen end to end: the engine's INT8 simulated on the
    calibration rows for every alpha of ALPHAS and without smoothing; the
    one whose scores change least from float (mean |score change|) wins.
    Returns (alpha or None, {alpha: (mean, max)})."""
    with torch.no_grad():
        ref, _ = dt.score_rows(module, rows)
    table = {}
    for a in (None,) + ALPHAS:
        sm = {} if a is None else {n: factors(amax[n], wmax[n], a) for n in amax}
        d = np.abs(simulate(module, rows, sm) - ref)
        table[a] = (float(d.mean()), float(d.max()))
        print(f"  alpha {'none' if a is None else a:>4}: simulated INT8 score change mean {d.mean():.2e}, "
              f"max {d.max():.2e}", file=log)
    best = min(table, key=lambda a: table[a][0])
    return best, table


def spread(v):
    """max / median of the non-zero: how far the largest sticks out."""
    nz = v[v > 0]
    return float(nz.max() / np.median(nz)) if len(nz) else 0.0


def calibrate(path, rows, alpha, out, note=None, log=sys.stdout):
    """Writes out: path with smoothing factors measured on rows (alpha None:
    searched, see search). Returns the alpha used (None: the search found
    that no smoothing is best, and out has no factors)."""
    f = dcnfile.DcnFile(path)
    module = dt.load_dcn(path)
    targets = dcnfile.smooth_targets(dict(f.metadata))
    amax = collect(module, rows)
    wmax = {n: weight_max(module, n) for n in targets}
    for n, k in targets.items():
        assert len(amax[n]) == k and len(wmax[n]) == k, n
    print(f"{len(rows)} calibration rows", file=log)
    if alpha is None:
        alpha, _ = search(module, rows, amax, wmax, log)
        how = "alpha searched" if alpha is None else f"alpha {alpha} (searched)"
    else:
        how = f"alpha {alpha}"
    new_meta = {}
    for k, v in f.metadata.items():
        if k.startswith(dcnfile.SMOOTH_PREFIX) or k == "dcnv2.int8.calibration":
            continue                                  # recalibrating replaces them
        t = f.types[k]
        new_meta[k] = dcnfile.arr(t[len("array/"):], v) if t.startswith("array/") else dcnfile.Typed(t, v)
    if alpha is None:
        print("no smoothing: INT8 without factors comes closest to float on these rows", file=log)
    else:
        print(f"{how}; per layer, max/median of the input ranges before -> after:", file=log)
        for name, n in targets.items():
            s = factors(amax[name], wmax[name], alpha)
            new_meta[dcnfile.SMOOTH_PREFIX + name] = dcnfile.arr("f32", [float(x) for x in s])
            print(f"  {name:22s} {n:6d} inputs: activations {spread(amax[name]):8.1f} -> "
                  f"{spread(amax[name] / s):6.1f}, weights {spread(wmax[name]):6.1f} -> "
                  f"{spread(wmax[name] * s):6.1f}", file=log)
    new_meta["dcnv2.int8.calibration"] = dcnfile.string(
        note or f"SmoothQuant, {how}, over {len(rows)} rows (tools/calibrate.py)")
    tensors = {}
    for name in sorted(f.tensors, key=lambda n: f.offsets[n]):
        dtype = f.dtypes[name]
        a = np.array(f.f32(name)) if dtype in ("F32", "F16", "BF16") else np.array(f.tensors[name])
        tensors[name] = (a, dtype)
    nb = dcnfile.write_dcn(out, new_meta, tensors, checksum="dcnv2.checksum.crc32" in f.metadata)
    print(f"wrote {out} ({nb} bytes)", file=log)
    return alpha


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the .dcn file to calibrate")
    ap.add_argument("--rows", required=True, help="Criteo CSV/TSV rows (labels not needed)")
    ap.add_argument("--limit", type=int, default=2000, help="rows to read (default 2000)")
    ap.add_argument("--alpha", type=float, default=None,
                    help="alpha in [0, 1]; default: searched (the engine simulated on the rows)")
    ap.add_argument("--out", required=True, help="the calibrated copy (written atomically)")
    args = ap.parse_args(argv)
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
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
