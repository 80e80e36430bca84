"""dcn_ref — an independent NumPy reference of the dcnserve forward pass.

Written from the formulas of model/FORMAT.md only (no C code exists or is
consulted): dense transforms, id mapping, pooling, bottom MLP, the four cross
kinds with every activation and gate, the deep MLP, the three combinations,
the logit and the sigmoid. The golden generator (gen_golden.py) uses it to
produce the expected outputs the C engine is checked against.

Design notes
- The file is read with tools/dcnfile.py (the container is not what is being
  checked here); every weight is dequantised once to float32 exactly as
  stored (F16/BF16 widened, I8 rows times their scale), then held in float64.
- Dense transforms follow the spec's float32 arithmetic step by step; the
  log is computed in float64 and rounded once to float32 (a correctly
  rounded logf). Everything after x0 runs in float64 by default.
- forward(..., dtype=np.float32) runs the network in float32 instead; the
  generator compares the two to pick a tolerance that a float32 engine can
  meet with a wide margin.
- The id mapping here is re-implemented on purpose (not imported from
  dcnfile): the unit tests cross-check the two implementations.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import dcnfile  # noqa: E402  (container reader only)

_M64 = (1 << 64) - 1


def ref_hash64(seed, data):
    """FNV-1a 64 from (offset basis XOR seed), then murmur3's fmix64 (FORMAT.md §3)."""
    h = 0xCBF29CE484222325 ^ seed
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _M64
    for mul in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * mul) & _M64
    return h ^ (h >> 33)


def _parse_decimal(s):
    """Optional '-', then 1..19 ASCII digits, nothing else: the int, or None."""
    body = s[1:] if s.startswith("-") else s
    if not 1 <= len(body) <= 19 or any(ch not in "0123456789" for ch in body):
        return None
    v = 0
    for ch in body:
        v = v * 10 + (ord(ch) - 48)
    return -v if s.startswith("-") else v


def _parse_hex(s):
    """1..16 ASCII hex digits, no prefix: the unsigned int, or None."""
    if not 1 <= len(s) <= 16:
        return None
    v = 0
    for ch in s:
        k = "0123456789abcdef".find(ch.lower())
        if k < 0 or not ch.isascii():
            return None
        v = v * 16 + k
    return v


class RefModel:
    """A model file loaded for reference scoring. forward() takes rows as
    dicts feature name -> value (as the HTTP API takes them)."""

    def __init__(self, path):
        meta, t = dcnfile.read_dcn(path, dequant=True)
        self.meta = meta
        g = lambda k, dflt=None: meta.get(k, dflt)
        self.n_dense = g("dcnv2.dense.count")
        self.n_sparse = g("dcnv2.sparse.count")
        dense = {k: g("dcnv2.dense." + k) for k in (
            "names", "default", "clip_min", "clip_max", "transform", "log_shift",
            "log_floor", "mean", "std")}
        self.dense = [{k: v[j] for k, v in dense.items()} for j in range(self.n_dense)]
        sparse = {k: g("dcnv2.sparse." + k) for k in (
            "names", "vocab_size", "dim", "pooling", "mapping", "hash_seed",
            "oov_buckets", "missing_row", "unknown_row", "max_ids")}
        self.sparse = [{k: v[i] for k, v in sparse.items()} for i in range(self.n_sparse)]
        self.tables = []
        for i, f in enumerate(self.sparse):
            self.tables.append(t[f"emb.{i}.weight"].astype(np.float64))
            if f["mapping"] == "vocab":
                keys = t[f"vocab.{i}.keys"].astype(np.int64).view(np.uint64)
                f["terms"] = {int(k): int(r) for k, r in zip(keys, t[f"vocab.{i}.rows"])}
        self.W = {n: a.astype(np.float64) for n, a in t.items()
                  if not n.startswith(("emb.", "vocab."))}
        self.bottom = list(g("dcnv2.bottom.sizes", []) or [])
        self.deep = list(g("dcnv2.deep.sizes", []) or [])
        self.kind = g("dcnv2.cross.kind")
        self.L = g("dcnv2.cross.layers")
        self.K = g("dcnv2.cross.experts")
        self.act = g("dcnv2.cross.activation")
        self.gate = g("dcnv2.cross.gate")
        self.gate_shared = g("dcnv2.cross.gate_shared")
        self.combine = g("dcnv2.combine")

    # ------------------------------------------------------------ inputs

    def map_one(self, i, v):
        """Table row of one id of sparse feature i, or -1 (zero vector)."""
        f = self.sparse[i]
        V, unk, how = f["vocab_size"], f["unknown_row"], f["mapping"]
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise TypeError(f"bad id {v!r}")
        if how == "index":
            n = _parse_decimal(v) if isinstance(v, str) else v
            return n if n is not None and 0 <= n < V else unk
        if how == "hex_mod":
            if v == "":
                return f["missing_row"]
            n = _parse_hex(v) if isinstance(v, str) else v
            return n % V if n is not None and n >= 0 else unk
        h = ref_hash64(f["hash_seed"], ("%d" % v if isinstance(v, int) else v).encode("utf-8"))
        if how == "hash_mod":
            return h % V
        if h in f["terms"]:
            return f["terms"][h]
        oov = f["oov_buckets"]
        return (V - oov) + h % oov if oov else unk

    def map_value(self, i, value):
        """Rows of a feature value: [] when missing (None, [] or absent)."""
        if value is None:
            return []
        ids = value if isinstance(value, list) else [value]
        if len(ids) > self.sparse[i]["max_ids"]:
            raise ValueError("too many ids")
        return [self.map_one(i, v) for v in ids]

    def dense_value(self, j, value):
        """The x0 coordinate of dense feature j, in float32 arithmetic."""
        f = self.dense[j]
        F = np.float32
        v = F(f["default"]) if value is None else F(value)
        if np.isnan(v):
            v = F(f["default"])
        v = min(max(v, F(f["clip_min"])), F(f["clip_max"]))
        if f["transform"] == "log":
            arg = max(F(v + F(f["log_shift"])), F(f["log_floor"]))
            v = F(math.log(float(arg))) if np.isfinite(arg) else F(np.inf)
        return F(F(v - F(f["mean"])) / F(f["std"]))

    def pooled(self, i, rows):
        """Embedding of feature i for the mapped rows ([] = missing)."""
        f = self.sparse[i]
        E = self.tables[i]
        if not rows:
            r = f["missing_row"]
            return E[r].copy() if r >= 0 else np.zeros(f["dim"])
        acc = np.zeros(f["dim"])
        for r in rows:
            if r >= 0:
                acc += E[r]
        return acc / len(rows) if f["pooling"] == "mean" else acc

    # ------------------------------------------------------------ network

    def _act(self, z):
        a = self.act
        if a == "identity":
            return z
        if a == "relu":
            return np.maximum(z, 0)
        if a == "tanh":
            return np.tanh(z)
        if a == "hard_tanh":
            return np.clip(z, -1, 1)
        if a == "sigmoid":
            return _sigmoid(z)
        raise ValueError(a)

    def _gates(self, x, prefix, dt):
        """G [n, K] for the mix gate of prefix ('cross.' or 'cross.<l>.')."""
        n = x.shape[0]
        if self.gate == "constant":
            return np.full((n, self.K), 1.0 / self.K, dtype=dt)
        s = x @ self.W[prefix + "gate.weight"].astype(dt).T
        if prefix + "gate.bias" in self.W:
            s = s + self.W[prefix + "gate.bias"].astype(dt)
        if self.gate == "softmax":
            e = np.exp(s - s.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return _sigmoid(s)

    def _mlp(self, h, prefix, sizes, dt):
        for j in range(len(sizes)):
            h = np.maximum(h @ self.W[f"{prefix}.{j}.weight"].astype(dt).T
                           + self.W[f"{prefix}.{j}.bias"].astype(dt), 0)
        return h

    def forward(self, rows, dtype=np.float64):
        """Scores rows (list of dicts name -> value): returns (logits [n],
        scores [n], mapped {sparse name: [[rows of row 0], ...]})."""
        dt = dtype
        n = len(rows)
        dense = np.array([[self.dense_value(j, r.get(f["names"])) for j, f in enumerate(self.dense)]
                          for r in rows], dtype=np.float32).reshape(n, self.n_dense)
        mapped = {f["names"]: [self.map_value(i, r.get(f["names"])) for r in rows]
                  for i, f in enumerate(self.sparse)}
        h = dense.astype(dt)
        if self.bottom:
            h = self._mlp(h, "bottom", self.bottom, dt)
        parts = [h]
        for i, f in enumerate(self.sparse):
            parts.append(np.array([self.pooled(i, m) for m in mapped[f["names"]]],
                                  dtype=dt).reshape(n, f["dim"]))
        x0 = np.concatenate(parts, axis=1)
        x = x0
        for l in range(self.L):
            W = lambda name: self.W[f"cross.{l}.{name}"].astype(dt)
            b = W("bias")
            if self.kind == "vector":
                f_x = x0 * (x @ W("weight")[0])[:, None] + b
            elif self.kind == "full":
                f_x = x0 * (x @ W("weight").T + b)
            elif self.kind == "lowrank":
                f_x = x0 * ((x @ W("v").T) @ W("u").T + b)
            else:
                G = self._gates(x, "cross." if self.gate_shared else f"cross.{l}.", dt)
                f_x = np.zeros_like(x)
                V, C, U = W("v"), W("c"), W("u")
                for k in range(self.K):
                    z = self._act(x @ V[k].T)
                    z = self._act(z @ C[k].T)
                    f_x = f_x + G[:, k:k + 1] * (x0 * (z @ U[k].T + b))
            x = f_x + x
        if self.combine == "stacked":
            z = self._mlp(x, "deep", self.deep, dt)
        elif self.combine == "parallel":
            z = np.concatenate([x, self._mlp(x0, "deep", self.deep, dt)], axis=1)
        else:
            z = x
        logit = z @ self.W["logit.weight"].astype(dt)[0] + self.W["logit.bias"].astype(dt)[0]
        return logit, _sigmoid(logit), mapped


def _sigmoid(z):
    """Overflow-free logistic function."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))
