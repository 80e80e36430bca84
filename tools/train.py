#!/usr/bin/python3
"""train.py — trains a DCN-V2 reference model on Criteo-format data and
writes a dcnserve model file.

Input: the Criteo CSV of this repository (header `Id,Label,I1..I13,C1..C26`)
or the raw Kaggle / Terabyte TSV layout (no header: label, 13 integer counts,
26 hex categoricals, tab-separated); `--format auto` tells them apart by the
header. Empty fields are missing features.

Features: I1..I13 dense with `log(max(x + 1, 1))` (Criteo's log(x+1) with
negatives clamped) standardised on the training split; C1..C26 sparse with
either an explicit vocabulary (terms seen at least --min-count times in the
training split, one row for a missing value, --oov-buckets hashed rows for
unknown terms) or the hashing trick (`--hash-buckets N`: hex_mod N).

Training: Adam on binary cross-entropy, a seeded shuffle and validation
split, logloss and AUC on the validation split after every epoch (with a
progress bar on stderr), the weights of the best validation logloss kept.
Deterministic for a given seed and thread count (single-threaded by default).

    train.py --data data/criteo_train_1999.csv --out model.dcn \
             --cross full --layers 3 --emb-dim 8 --deep 64,32 --epochs 8

DESIGN: reading, feature specs, encoding and metrics are functions that the
tests, export.py and compress.py import; main() only wires them to flags.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from collections import Counter

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcn_torch as dt  # noqa: E402

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]


# ---------------------------------------------------------------- data

# Reads Criteo rows: returns (labels float32 (N,), rows: list of feature dicts
# with empty fields left out). fmt: auto | csv | tsv. limit: most rows read.
def read_criteo(path, fmt="auto", limit=None):
    with open(path, newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if fmt == "auto":
            fmt = "csv" if first.startswith("Id,") or first.lower().startswith("label,") else "tsv"
        if fmt == "csv":
            reader = csv.DictReader(fh)
            names = reader.fieldnames
            if "Label" not in names or any(n not in names for n in DENSE + SPARSE):
                raise ValueError(f"{path}: CSV header lacks Label, I1..I13 or C1..C26")
            it = ((r["Label"], r) for r in reader)
        else:
            def tsv():
                for lineno, line in enumerate(fh, 1):
                    parts = line.rstrip("\r\n").split("\t")
                    if len(parts) != 40:
                        raise ValueError(f"{path}:{lineno}: {len(parts)} fields, expected 40")
                    yield parts[0], dict(zip(DENSE + SPARSE, parts[1:]))
            it = tsv()
        labels, rows = [], []
        for lab, r in it:
            if limit is not None and len(rows) >= limit:
                break
            labels.append(float(lab))
            row = {}
            for k in DENSE:
                if r[k] != "":
                    row[k] = float(r[k])
            for k in SPARSE:
                if r[k] != "":
                    row[k] = r[k]
            rows.append(row)
    return np.asarray(labels, dtype=np.float32), rows


# Splits indices 0..n-1 with a seeded shuffle: returns (train_idx, valid_idx).
def split(n, valid_frac, seed):
    perm = np.random.RandomState(seed).permutation(n)
    nv = int(round(n * valid_frac))
    return np.sort(perm[nv:]), np.sort(perm[:nv])


# ---------------------------------------------------------------- features

# Dense specs for Criteo's counts: log(max(x + 1, 1)), then standardised with
# the mean and std of the transformed training values (missing -> default 0).
def dense_specs(rows):
    out = []
    for name in DENSE:
        v = np.array([row.get(name, 0.0) for row in rows], dtype=np.float32)
        t = np.log(np.maximum(v + np.float32(1), np.float32(1)))
        mean, std = float(t.mean()), float(t.std())
        out.append(dt.DenseSpec(name=name, default=0.0, transform="log", log_shift=1.0,
                                log_floor=1.0, mean=mean, std=std if std > 1e-6 else 1.0))
    return out


# Sparse specs for C1..C26. With hash_buckets: hex_mod over that many rows, a
# missing value the zero vector. Otherwise an explicit vocabulary of the terms
# seen >= min_count times: row 0 for a missing value, rows 1..n the terms (most
# frequent first), then oov_buckets hashed rows for unknown terms.
def sparse_specs(rows, emb_dim, min_count=2, oov_buckets=1, hash_buckets=0, seed=0, dims=None):
    import dcnfile
    out = []
    for name in SPARSE:
        dim = (dims or {}).get(name, emb_dim)
        if hash_buckets:
            out.append(dt.SparseSpec(name=name, vocab_size=hash_buckets, dim=dim,
                                     mapping="hex_mod", missing_row=-1, unknown_row=-1))
            continue
        counts = Counter(row[name] for row in rows if name in row)
        terms = sorted((t for t, c in counts.items() if c >= min_count),
                       key=lambda t: (-counts[t], t))
        if not terms:
            # No term is frequent enough for a vocabulary (its tensors cannot
            # be empty): hash every value into the would-be OOV rows.
            out.append(dt.SparseSpec(name=name, vocab_size=max(1, oov_buckets), dim=dim,
                                     mapping="hash_mod", hash_seed=seed))
            continue
        keyed = {}
        for i, t in enumerate(terms):
            h = dcnfile.hash64(seed, t.encode())
            if h in keyed:
                raise ValueError(f"{name}: terms {t!r} and {keyed[h][0]!r} share a hash; change --seed")
            keyed[h] = (t, 1 + i)
        keys = sorted(keyed)
        out.append(dt.SparseSpec(
            name=name, vocab_size=1 + len(terms) + oov_buckets, dim=dim, mapping="vocab",
            hash_seed=seed, oov_buckets=oov_buckets, missing_row=0,
            unknown_row=-1, vocab_keys=keys, vocab_rows=[keyed[k][1] for k in keys]))
    return out


# ---------------------------------------------------------------- metrics

def logloss(y, p):
    """Mean binary cross-entropy of probabilities p against labels y."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc(y, p):
    """Area under the ROC curve (rank statistic, ties averaged); nan if one class."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    npos, nneg = y.sum(), len(y) - y.sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


# ---------------------------------------------------------------- training

def _bar(done, total, width=30):
    n = int(width * done / max(total, 1))
    return "[" + "#" * n + "." * (width - n) + "]"


# Trains module on encoded tensors; returns a list of per-epoch metric dicts
# and leaves the module holding the weights of the best validation logloss.
def fit(module, train, valid, epochs=8, batch=128, lr=2e-3, weight_decay=0.0, seed=0,
        progress=True, log=sys.stderr):
    (Xd, Xi, Xw, y) = train
    torch.manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    lossf = torch.nn.BCEWithLogitsLoss()
    rng = np.random.RandomState(seed)
    history, best, best_state = [], math.inf, None
    n = len(y)
    nb = (n + batch - 1) // batch
    tty = hasattr(log, "isatty") and log.isatty()
    for ep in range(1, epochs + 1):
        module.train()
        perm = torch.from_numpy(rng.permutation(n))
        tot, t0 = 0.0, time.time()
        for b in range(nb):
            idx = perm[b * batch:(b + 1) * batch]
            opt.zero_grad()
            loss = lossf(module(Xd[idx], Xi[idx], Xw[idx]), y[idx])
            loss.backward()
            opt.step()
            tot += float(loss) * len(idx)
            if progress and tty:
                print(f"\repoch {ep}/{epochs} {_bar(b + 1, nb)} {b + 1}/{nb} "
                      f"loss {tot / min(n, (b + 1) * batch):.4f}", end="", file=log, flush=True)
        m = {"epoch": ep, "train_logloss": tot / n}
        if valid is not None:
            p = predict(module, valid[:3])
            m["valid_logloss"] = logloss(valid[3].numpy(), p)
            m["valid_auc"] = auc(valid[3].numpy(), p)
            if m["valid_logloss"] < best:
                best = m["valid_logloss"]
                best_state = {k: v.clone() for k, v in module.state_dict().items()}
                m["best"] = True
        m["seconds"] = time.time() - t0
        history.append(m)
        if progress:
            extra = (f"  valid logloss {m['valid_logloss']:.4f}  AUC {m['valid_auc']:.4f}"
                     if valid is not None else "")
            print(f"{chr(13) if tty else ''}epoch {ep}/{epochs} {_bar(1, 1)} train logloss {m['train_logloss']:.4f}"
                  f"{extra}  ({m['seconds']:.1f}s)", file=log, flush=True)
    if best_state is not None:
        module.load_state_dict(best_state)
    return history


@torch.no_grad()
def predict(module, tensors, batch=1024):
    """Probabilities of encoded rows, float64 numpy."""
    module.eval()
    Xd, Xi, Xw = tensors
    out = [module(Xd[i:i + batch], Xi[i:i + batch], Xw[i:i + batch]) for i in range(0, len(Xd), batch)]
    return torch.sigmoid(torch.cat(out).double()).numpy()


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()] if s else []


# Builds the spec of a Criteo model from flags and the training rows.
def build_spec(args, train_rows):
    dims = {}
    for item in (args.emb_dims or "").split(","):
        if item.strip():
            k, v = item.split("=")
            dims[k.strip()] = int(v)
    arch = dt.ArchSpec(cross_kind=args.cross, cross_layers=args.layers, rank=args.rank,
                       experts=args.experts, activation=args.activation, gate=args.gate,
                       gate_shared=args.gate_shared, bottom=ints(args.bottom),
                       deep=ints(args.deep), combine=args.combine)
    spec = dt.ModelSpec(
        name=args.name, version=args.version, description=args.description,
        dense=dense_specs(train_rows),
        sparse=sparse_specs(train_rows, args.emb_dim, args.min_count, args.oov_buckets,
                            args.hash_buckets, args.seed, dims),
        arch=arch)
    if arch.cross_kind in ("lowrank", "mix") and arch.rank == 0:
        arch.rank = max(1, spec.d() // 4)
    return spec


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="Criteo CSV or raw TSV")
    ap.add_argument("--format", default="auto", choices=["auto", "csv", "tsv"])
    ap.add_argument("--limit", type=int, help="read at most this many rows")
    ap.add_argument("--out", help="model file to write")
    ap.add_argument("--checkpoint", help="also save spec + state dict (torch.save)")
    ap.add_argument("--metrics", help="write the per-epoch metrics as JSON here")
    ap.add_argument("--name", default="criteo-dcn")
    ap.add_argument("--version", default="1")
    ap.add_argument("--description", default="")
    ap.add_argument("--valid", type=float, default=0.2, help="validation fraction")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--emb-dim", type=int, default=8)
    ap.add_argument("--emb-dims", help="per-feature dims, e.g. C3=16,C12=4")
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--oov-buckets", type=int, default=1)
    ap.add_argument("--hash-buckets", type=int, default=0,
                    help="use hex_mod with this many rows instead of a vocabulary")
    ap.add_argument("--cross", default="full", choices=dt.CROSS_KINDS)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rank", type=int, default=0, help="lowrank/mix rank (0: d/4)")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--activation", default="identity", choices=dt.ACTIVATIONS)
    ap.add_argument("--gate", default="softmax", choices=dt.GATES)
    ap.add_argument("--gate-shared", action="store_true")
    ap.add_argument("--bottom", default="", help="bottom MLP widths, e.g. 32,16")
    ap.add_argument("--deep", default="64,32", help="deep MLP widths")
    ap.add_argument("--combine", default="stacked", choices=dt.COMBINES)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    labels, rows = read_criteo(args.data, args.format, args.limit)
    tr, va = split(len(rows), args.valid, args.seed)
    train_rows = [rows[i] for i in tr]
    spec = build_spec(args, train_rows)
    module = dt.DCNv2(spec)
    enc = dt.encode(spec, rows)
    y = torch.from_numpy(labels)
    tri, vai = torch.from_numpy(tr), torch.from_numpy(va)
    train = tuple(t[tri] for t in enc) + (y[tri],)
    valid = tuple(t[vai] for t in enc) + (y[vai],) if len(va) else None
    print(f"{len(rows)} rows ({len(tr)} train, {len(va)} valid, "
          f"{labels.mean() * 100:.1f}% positive); d = {spec.d()}, "
          f"{sum(p.numel() for p in module.parameters())} parameters", file=sys.stderr)
    hist = fit(module, train, valid, epochs=args.epochs, batch=args.batch, lr=args.lr,
               weight_decay=args.weight_decay, seed=args.seed, progress=not args.quiet)
    best = min((h for h in hist if "valid_logloss" in h), key=lambda h: h["valid_logloss"],
               default=hist[-1])
    summary = {"rows": len(rows), "train_rows": len(tr), "valid_rows": len(va),
               "best_epoch": best["epoch"], "valid_logloss": best.get("valid_logloss"),
               "valid_auc": best.get("valid_auc"), "parameters":
               sum(p.numel() for p in module.parameters()), "history": hist}
    if args.out:
        dt.to_dcn(module, args.out)
        summary["file_bytes"] = os.path.getsize(args.out)
        print(f"wrote {args.out} ({summary['file_bytes']} bytes)", file=sys.stderr)
    if args.checkpoint:
        torch.save({"spec": spec.to_dict(), "state_dict": module.state_dict()}, args.checkpoint)
    if args.metrics:
        with open(args.metrics, "w") as fh:
            json.dump(summary, fh, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
