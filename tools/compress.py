#!/usr/bin/python3
"""compress.py — turns a model file's full-rank cross layers into low-rank
ones by truncated SVD (the DCN-V2 paper's production lesson: learned cross
matrices have fast-decaying spectra, and rank about d/4 keeps full-rank
accuracy).

Each W_l = U S V^T becomes u_l = U_r S_r^1/2 [d, r] and v_l = S_r^1/2 V_r^T
[r, d]: the best rank-r approximation in Frobenius norm, split evenly so both
factors have the same scale. The file format has one rank for all layers, so
with --energy the rank is the largest of the per-layer ranks that keep that
fraction of sum(s_i^2). Everything else (features, embeddings, biases, deep
network) is copied unchanged. Printed per layer: the retained energy and the
relative Frobenius error; with --data (labeled Criteo rows) logloss and AUC
before and after (the PyTorch reference, which the engine matches to 1e-5);
with the engine's benchmark tool (dcn-bench, from `make`) samples/s before and
after, single-threaded, batches of 256, best of --bench-repeat alternating runs.

    compress.py model/default/criteo-dcn.dcn --out small.dcn --energy 0.95 \
                --data data/criteo_train_1999.csv
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402


# Returns the singular values and factors of every cross layer of a full-rank
# module: [(U [d,d], s [d], Vt [d,d])] in float64.
def spectra(module):
    out = []
    for l in range(module.spec.arch.cross_layers):
        W = module.cross.layer(l).weight.detach().double().numpy()
        out.append(np.linalg.svd(W))
    return out


def retained(s, r):
    """Fraction of sum(s^2) kept by the first r singular values."""
    e = s.astype(np.float64) ** 2
    return float(e[:r].sum() / e.sum()) if e.sum() > 0 else 1.0


def rank_for_energy(s, frac):
    """Smallest r keeping at least frac of the energy (1..len(s))."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    if e[-1] == 0:
        return 1
    return int(min(len(s), np.searchsorted(e / e[-1], frac - 1e-12) + 1))


# Builds the low-rank module of a full-rank one at rank r; returns (module,
# per-layer report dicts).
def compress(module, rank=None, energy=None):
    spec = module.spec
    if spec.arch.cross_kind != "full":
        raise ValueError(f"cross kind is {spec.arch.cross_kind}: only full-rank layers are compressed")
    if spec.arch.cross_layers == 0:
        raise ValueError("the model has no cross layer")
    d = spec.d()
    svds = spectra(module)
    if rank is None:
        rank = max(rank_for_energy(s, energy) for _, s, _ in svds)
    if not 1 <= rank <= d:
        raise ValueError(f"rank {rank} outside 1..{d}")
    new_spec = dt.ModelSpec.from_dict(spec.to_dict())
    new_spec.arch.cross_kind, new_spec.arch.rank = "lowrank", rank
    new = dt.DCNv2(new_spec)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("cross.")}
    report = []
    for l, (U, s, Vt) in enumerate(svds):
        root = np.sqrt(s[:rank])
        u = U[:, :rank] * root[None, :]
        v = root[:, None] * Vt[:rank]
        W = module.cross.layer(l).weight.detach().double().numpy()
        err = np.linalg.norm(W - u @ v) / max(np.linalg.norm(W), 1e-30)
        state[f"cross.{l}.u"] = torch.from_numpy(u.astype(np.float32))
        state[f"cross.{l}.v"] = torch.from_numpy(v.astype(np.float32))
        state[f"cross.{l}.bias"] = module.cross.layer(l).bias.detach().clone()
        report.append({"layer": l, "rank": rank, "retained_energy": retained(s, rank),
                       "rel_frobenius_error": float(err),
                       "rank_for_99pct": rank_for_energy(s, 0.99),
                       "rank_for_90pct": rank_for_energy(s, 0.90)})
    new.load_state_dict(state)
    return new.eval(), report


def find_bench(explicit=None):
    """Path of dcn-bench: the flag, $DCN_BENCH, or the release build; None if absent."""
    for p in (explicit, os.environ.get("DCN_BENCH"),
              os.path.join(os.path.dirname(HERE), "build", "release", "dcn-bench")):
        if p and os.access(p, os.X_OK):
            return p
    return None


# Engine throughput of a model file: samples/s of one thread at batch 256,
# from dcn-bench's JSON line; None if the tool fails.
def engine_samples_per_s(bench, path, min_time=1.0):
    try:
        out = subprocess.run([bench, "run", "--model", path, "--batches", "256", "--threads", "1",
                              "--min-time", str(min_time), "--max-time", str(3 * min_time)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    for line in out.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("kind") == "point":
            return float(j["samples_per_s"])
    return None


def _file_dtypes(path):
    """(weight dtype, embedding dtype) of a model file, as to_dcn names them."""
    f = dcnfile.load_dcn(path)
    w = [dt_ for n, dt_ in f.dtypes.items() if n.startswith("cross.") and n.endswith(".weight")]
    e = [dt_ for n, dt_ in f.dtypes.items() if n.startswith("emb.") and n.endswith(".weight")]
    return (w[0].lower() if w else "f32"), (e[0].lower() if e else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model file with cross kind full")
    ap.add_argument("--out", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int)
    g.add_argument("--energy", type=float, help="fraction of squared singular values to keep, e.g. 0.95")
    ap.add_argument("--data", help="labeled Criteo CSV/TSV for logloss/AUC before and after")
    ap.add_argument("--limit", type=int, help="rows of --data to use")
    ap.add_argument("--valid", type=float, default=0.0,
                    help="use only train.py's validation split of this fraction (0: every row)")
    ap.add_argument("--seed", type=int, default=42, help="seed of that split (train.py --seed)")
    ap.add_argument("--bench", help="dcn-bench binary (default: $DCN_BENCH or build/release)")
    ap.add_argument("--no-bench", action="store_true", help="skip the engine throughput")
    ap.add_argument("--bench-time", type=float, default=1.0, help="seconds per throughput run")
    ap.add_argument("--bench-repeat", type=int, default=3, help="runs per file (best kept)")
    ap.add_argument("--version", help="version string of the new file (default: old + '-r<rank>')")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.energy is not None and not 0 < args.energy <= 1:
        ap.error("--energy must be in (0, 1]")

    module = dt.load_dcn(args.model)
    try:
        small, report = compress(module, args.rank, args.energy)
    except ValueError as e:
        print(f"compress: {e}", file=sys.stderr)
        return 2
    d, r = module.spec.d(), small.spec.arch.rank
    small.spec.version = args.version or f"{module.spec.version}-r{r}"
    wdt, edt = _file_dtypes(args.model)
    dt.to_dcn(small, args.out, dtype=wdt, emb_dtype=edt)
    full_params = module.spec.arch.cross_layers * d * d
    low_params = module.spec.arch.cross_layers * 2 * d * r
    print(f"d = {d}, rank {r} (d/{d / r:.1f}); cross weights {full_params} -> {low_params} "
          f"({low_params / full_params:.1%}); {os.path.getsize(args.model)} -> "
          f"{os.path.getsize(args.out)} bytes")
    print("layer  retained energy  rel. error  rank@90%  rank@99%")
    for x in report:
        print(f"{x['layer']:5d}  {x['retained_energy']:15.6f}  {x['rel_frobenius_error']:10.4g}  "
              f"{x['rank_for_90pct']:8d}  {x['rank_for_99pct']:8d}")
    if r >= d / 2:
        print(f"note: rank {r} >= d/2 costs as much as the full-rank layer (2rd >= d^2 multiply-adds)")
    res = {"d": d, "rank": r, "layers": report, "bytes_before": os.path.getsize(args.model),
           "bytes_after": os.path.getsize(args.out)}
    if args.data:
        import train
        labels, rows = train.read_criteo(args.data, limit=args.limit)
        if args.valid:
            _, va = train.split(len(rows), args.valid, args.seed)
            labels, rows = labels[va], [rows[i] for i in va]
        # Score the written file, not the in-memory module: what is served.
        p0, _ = dt.score_rows(module, rows)
        p1, _ = dt.score_rows(dt.load_dcn(args.out), rows)
        res.update(rows=len(rows), logloss_before=train.logloss(labels, p0),
                   logloss_after=train.logloss(labels, p1), auc_before=train.auc(labels, p0),
                   auc_after=train.auc(labels, p1), max_abs_score_change=float(np.abs(p0 - p1).max()))
        print(f"{len(rows)} rows: logloss {res['logloss_before']:.6f} -> {res['logloss_after']:.6f}, "
              f"AUC {res['auc_before']:.6f} -> {res['auc_after']:.6f}, "
              f"max score change {res['max_abs_score_change']:.3g}")
    bench = None if args.no_bench else find_bench(args.bench)
    if bench:
        # Alternate the two files and keep each one's best run: the machine
        # is shared, and contention only ever lowers a figure.
        runs = {args.model: [], args.out: []}
        for _ in range(args.bench_repeat):
            for p in runs:
                v = engine_samples_per_s(bench, p, args.bench_time)
                if v:
                    runs[p].append(v)
        a = max(runs[args.model], default=None)
        b = max(runs[args.out], default=None)
        res.update(samples_per_s_before=a, samples_per_s_after=b)
        if a and b:
            print(f"engine (dcn-bench, 1 thread, batch 256): {a:,.0f} -> {b:,.0f} samples/s "
                  f"({b / a:.2f}x)")
        else:
            print("engine: dcn-bench did not report a figure")
    elif not args.no_bench:
        print("engine: dcn-bench not built (make); samples/s skipped")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
