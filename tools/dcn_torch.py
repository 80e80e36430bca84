"""dcn_torch — the PyTorch reference of a dcnserve DCN-V2 model.

One nn.Module, `DCNv2`, computes exactly what model/FORMAT.md specifies and
what the C engine computes: dense transforms (default, clip, log, standardise),
embedding pooling (sum or mean over multi-hot ids, zero-vector rows), every
cross kind (vector, full, lowrank, mix with its activations and gates, shared
or per-layer), the bottom MLP, the deep network and the three combinations.
`load_dcn(path)` builds it from a model file, `to_dcn(module, path, ...)`
writes one (through tools/dcnfile.py, the one writer of the format).

DESIGN
- The specification (features and architecture) is plain data: `DenseSpec`,
  `SparseSpec`, `ArchSpec`, gathered in `ModelSpec`. Its fields are the
  metadata keys of FORMAT.md §3-4 one for one, so writing a file is a
  renaming, and `ModelSpec.to_dict()` round-trips through JSON (train.py
  stores it in its checkpoints).
- Parameter names are the file's tensor names: `module.state_dict()` has the
  keys `emb.<i>.weight`, `bottom.<j>.weight`, `cross.<l>.v`, `cross.gate.weight`,
  `deep.<j>.bias`, `logit.weight` ... with the file's shapes, so export is a
  dtype conversion and import a copy. Dense-transform constants are
  non-persistent buffers, so they never appear among the tensors.
- Id mapping (raw id -> table row) happens outside the module, in `encode`,
  with the mapping functions of dcnfile.py: the module sees table rows only.
  That keeps the forward pass a graph of plain gathers, multiplies and sums
  which torch.onnx.export can trace.

INPUT TENSORS of `DCNv2.forward(dense, ids, weights)` (the ONNX layout):
  dense   float32 (B, n_dense)    raw values; NaN = missing (the module applies
                                  default, clip, log and standardisation)
  ids     int64   (B, n_sparse, W) table rows; W >= 1 is any width, padding
                                  slots hold 0
  weights float32 (B, n_sparse, W) per slot: 1 (sum pooling) or 1/n (mean
                                  pooling over n ids), 0 for padding and for
                                  ids that map to the zero vector (-1)
  -> logits float32 (B,)          score = sigmoid(logit)
`encode(spec, rows)` builds the three tensors from feature dicts.
"""
import math
import os
import sys
from dataclasses import dataclass, field, asdict
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcnfile  # noqa: E402  (the one writer/reader of the format)

CROSS_KINDS = ("vector", "full", "lowrank", "mix")
ACTIVATIONS = ("identity", "relu", "tanh", "hard_tanh", "sigmoid")
GATES = ("softmax", "sigmoid", "constant")
COMBINES = ("stacked", "parallel", "cross_only")
MAPPINGS = ("index", "hex_mod", "hash_mod", "vocab")


# ---------------------------------------------------------------- specs

@dataclass
class DenseSpec:
    """One dense feature: FORMAT.md §3 'Dense features', one array element each."""
    name: str
    default: float = 0.0
    clip_min: float = -math.inf
    clip_max: float = math.inf
    transform: str = "none"          # none | log
    log_shift: float = 0.0
    log_floor: float = 1.0
    mean: float = 0.0
    std: float = 1.0


@dataclass
class SparseSpec:
    """One sparse feature: FORMAT.md §3 'Sparse features'. For the `vocab`
    mapping, vocab_keys are the hash64(seed, term) of the terms (ascending as
    unsigned) and vocab_rows their table rows."""
    name: str
    vocab_size: int
    dim: int
    pooling: str = "sum"             # sum | mean
    mapping: str = "index"           # index | hex_mod | hash_mod | vocab
    hash_seed: int = 0
    oov_buckets: int = 0
    missing_row: int = -1
    unknown_row: int = -1
    max_ids: int = 1
    vocab_keys: List[int] = field(default_factory=list)
    vocab_rows: List[int] = field(default_factory=list)


@dataclass
class ArchSpec:
    """The architecture keys of FORMAT.md §4."""
    cross_kind: str = "full"
    cross_layers: int = 2
    rank: int = 0                    # lowrank, mix
    experts: int = 1                 # mix
    activation: str = "identity"     # mix
    gate: str = "softmax"            # mix
    gate_shared: bool = False        # mix
    gate_bias: bool = True           # mix: whether the gate has a bias tensor
    bottom: List[int] = field(default_factory=list)
    deep: List[int] = field(default_factory=list)
    combine: str = "stacked"


@dataclass
class ModelSpec:
    """Everything but the weights: name, features, architecture."""
    name: str
    version: str
    dense: List[DenseSpec]
    sparse: List[SparseSpec]
    arch: ArchSpec
    description: str = ""

    # Returns a JSON-able dict (infinities as strings) that from_dict reads back.
    def to_dict(self):
        def enc(v):
            if isinstance(v, float) and math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return v
        d = asdict(self)
        d["dense"] = [{k: enc(v) for k, v in f.items()} for f in d["dense"]]
        return d

    @staticmethod
    def from_dict(d):
        def dec(v):
            return float(v) if v in ("inf", "-inf") else v
        return ModelSpec(
            name=d["name"], version=d["version"], description=d.get("description", ""),
            dense=[DenseSpec(**{k: dec(v) for k, v in f.items()}) for f in d["dense"]],
            sparse=[SparseSpec(**f) for f in d["sparse"]],
            arch=ArchSpec(**d["arch"]))

    def dense_dim(self):
        """Coordinates of x0 before the embeddings."""
        return self.arch.bottom[-1] if self.arch.bottom else len(self.dense)

    def d(self):
        """dim(x0)."""
        return self.dense_dim() + sum(s.dim for s in self.sparse)

    # Raises ValueError naming the first inconsistency (the loader's rules that
    # a Python-built spec can break).
    def validate(self):
        a = self.arch
        if not self.dense and not self.sparse:
            raise ValueError("a model needs at least one feature")
        names = [f.name for f in self.dense] + [f.name for f in self.sparse]
        if len(set(names)) != len(names):
            raise ValueError("feature names are not unique")
        for f in self.dense:
            if f.transform not in ("none", "log"):
                raise ValueError(f"dense {f.name}: unknown transform {f.transform!r}")
            if not f.std > 0 or not f.clip_min <= f.clip_max:
                raise ValueError(f"dense {f.name}: std must be > 0 and clip_min <= clip_max")
            if f.transform == "log" and not f.log_floor > 0:
                raise ValueError(f"dense {f.name}: log_floor must be > 0")
        for f in self.sparse:
            if f.mapping not in MAPPINGS or f.pooling not in ("sum", "mean"):
                raise ValueError(f"sparse {f.name}: bad mapping or pooling")
            for r in (f.missing_row, f.unknown_row):
                if not -1 <= r < f.vocab_size:
                    raise ValueError(f"sparse {f.name}: row {r} out of range")
            if f.mapping == "vocab":
                if f.oov_buckets >= f.vocab_size or len(f.vocab_keys) != len(f.vocab_rows):
                    raise ValueError(f"sparse {f.name}: bad vocabulary")
                if any(b <= a_ for a_, b in zip(f.vocab_keys, f.vocab_keys[1:])):
                    raise ValueError(f"sparse {f.name}: vocabulary keys not strictly increasing")
        if a.cross_kind not in CROSS_KINDS or a.combine not in COMBINES:
            raise ValueError("unknown cross kind or combination")
        if a.cross_kind in ("lowrank", "mix") and not 1 <= a.rank <= self.d():
            raise ValueError(f"rank {a.rank} outside 1..{self.d()}")
        if a.cross_kind == "mix":
            if a.activation not in ACTIVATIONS or a.gate not in GATES or not 1 <= a.experts <= 64:
                raise ValueError("bad mix activation, gate or experts")
        if a.bottom and not self.dense:
            raise ValueError("a bottom MLP needs dense features")
        if a.combine == "cross_only" and a.deep:
            raise ValueError("cross_only takes no deep network")


# ---------------------------------------------------------------- module

def _activation(name):
    """The function g of a mix cross layer."""
    return {
        "identity": lambda z: z,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "hard_tanh": lambda z: torch.clamp(z, -1.0, 1.0),
        "sigmoid": torch.sigmoid,
    }[name]


class CrossLayer(nn.Module):
    """One cross layer l: returns f_l(x) of FORMAT.md §4 (the caller adds x).
    Parameters carry the file's names and shapes: weight, v, c, u, bias, gate."""

    def __init__(self, a: ArchSpec, d: int):
        super().__init__()
        self.kind = a.cross_kind
        K, r = a.experts, a.rank
        if self.kind == "vector":
            self.weight = nn.Parameter(torch.empty(1, d))
        elif self.kind == "full":
            self.weight = nn.Parameter(torch.empty(d, d))
        elif self.kind == "lowrank":
            self.v = nn.Parameter(torch.empty(r, d))
            self.u = nn.Parameter(torch.empty(d, r))
        else:
            self.v = nn.Parameter(torch.empty(K, r, d))
            self.c = nn.Parameter(torch.empty(K, r, r))
            self.u = nn.Parameter(torch.empty(K, d, r))
            self.g = _activation(a.activation)
            self.gate_kind = a.gate
            self.experts = K
            if a.gate != "constant" and not a.gate_shared:
                self.gate = nn.Linear(d, K, bias=a.gate_bias)
        self.bias = nn.Parameter(torch.zeros(d))
        self.reset_parameters()

    # Xavier-normal weights (as TorchRec and DeepCTR initialise), zero biases.
    def reset_parameters(self):
        for name, p in self.named_parameters(recurse=False):
            if name == "bias":
                nn.init.zeros_(p)
            elif p.dim() == 3:
                for k in range(p.shape[0]):
                    nn.init.xavier_normal_(p.data[k])
            else:
                nn.init.xavier_normal_(p)

    def forward(self, x0, x, shared_gate: Optional[nn.Module] = None):
        if self.kind == "vector":
            return x0 * (x @ self.weight.t()) + self.bias
        if self.kind == "full":
            return x0 * F.linear(x, self.weight, self.bias)
        if self.kind == "lowrank":
            return x0 * (F.linear(F.linear(x, self.v), self.u) + self.bias)
        h = self.g(torch.einsum("krd,bd->bkr", self.v, x))           # (B, K, r)
        h = self.g(torch.einsum("kij,bkj->bki", self.c, h))          # (B, K, r)
        e = torch.einsum("kdr,bkr->bkd", self.u, h)                  # (B, K, d)
        experts = x0.unsqueeze(1) * (e + self.bias)                  # (B, K, d)
        if self.gate_kind == "constant":
            return experts.sum(1) / self.experts
        gate = shared_gate if shared_gate is not None else self.gate
        s = gate(x)                                                  # (B, K)
        G = torch.softmax(s, dim=1) if self.gate_kind == "softmax" else torch.sigmoid(s)
        return (G.unsqueeze(2) * experts).sum(1)


class CrossNet(nn.Module):
    """The L cross layers, registered as '0'..'L-1', plus the shared gate
    'gate' of a mix network with gate_shared (file name cross.gate.*)."""

    def __init__(self, a: ArchSpec, d: int):
        super().__init__()
        self.n = a.cross_layers
        for l in range(self.n):
            self.add_module(str(l), CrossLayer(a, d))
        if a.cross_kind == "mix" and a.gate != "constant" and a.gate_shared:
            self.gate = nn.Linear(d, a.experts, bias=a.gate_bias)
        else:
            self.gate = None

    def layer(self, l):
        return getattr(self, str(l))

    def forward(self, x0):
        x = x0
        for l in range(self.n):
            x = self.layer(l)(x0, x, self.gate) + x
        return x


class DCNv2(nn.Module):
    """The whole model of a ModelSpec; forward(dense, ids, weights) -> logits
    (see the module docstring for the tensor layout)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        a = spec.arch
        dn = spec.dense

        def buf(name, vals):
            self.register_buffer(name, torch.tensor(vals, dtype=torch.float32), persistent=False)
        buf("dense_default", [f.default for f in dn])
        buf("dense_clip_min", [f.clip_min for f in dn])
        buf("dense_clip_max", [f.clip_max for f in dn])
        buf("dense_shift", [f.log_shift if f.transform == "log" else 0.0 for f in dn])
        buf("dense_floor", [f.log_floor if f.transform == "log" else 1.0 for f in dn])
        buf("dense_mean", [f.mean for f in dn])
        buf("dense_std", [f.std for f in dn])
        self.register_buffer("dense_log", torch.tensor([f.transform == "log" for f in dn],
                                                       dtype=torch.bool), persistent=False)

        self.emb = nn.ModuleList(nn.Embedding(s.vocab_size, s.dim) for s in spec.sparse)
        for e in self.emb:
            nn.init.normal_(e.weight, std=0.05)
        sizes = [len(dn)] + list(a.bottom)
        self.bottom = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        d = spec.d()
        self.cross = CrossNet(a, d)
        sizes = [d] + list(a.deep)
        self.deep = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        top = sizes[-1]
        if a.combine == "parallel":
            top = d + (a.deep[-1] if a.deep else d)
        self.logit = nn.Linear(top, 1)

    # The transformed dense values, (B, n_dense), in float32 as FORMAT.md §3.
    def dense_transform(self, dense):
        v = torch.where(torch.isnan(dense), self.dense_default, dense)
        v = torch.minimum(torch.maximum(v, self.dense_clip_min), self.dense_clip_max)
        lg = torch.log(torch.maximum(v + self.dense_shift, self.dense_floor))
        v = torch.where(self.dense_log, lg, v)
        return (v - self.dense_mean) / self.dense_std

    # x0 of a batch, (B, d).
    def x0(self, dense, ids, weights):
        parts = []
        if len(self.spec.dense):
            h = self.dense_transform(dense)
            for lin in self.bottom:
                h = torch.relu(lin(h))
            parts.append(h)
        for f, e in enumerate(self.emb):
            g = F.embedding(ids[:, f, :], e.weight)                   # (B, W, dim)
            parts.append((g * weights[:, f, :].unsqueeze(2)).sum(1))
        return torch.cat(parts, dim=1)

    def forward(self, dense, ids, weights):
        x0 = self.x0(dense, ids, weights)
        xl = self.cross(x0)
        comb = self.spec.arch.combine
        h = xl if comb != "parallel" else x0
        for lin in self.deep:
            h = torch.relu(lin(h))
        z = torch.cat([xl, h], dim=1) if comb == "parallel" else h
        return self.logit(z).squeeze(1)


# ---------------------------------------------------------------- encoding

def _is_missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def _map_spec(s: SparseSpec):
    """The dict dcnfile.map_feature takes for feature s, cached on the spec."""
    m = getattr(s, "_map_spec", None)
    if m is None or len(m.get("vocab") or ()) != len(s.vocab_keys):
        m = {"name": s.name, "vocab_size": s.vocab_size, "mapping": s.mapping,
             "hash_seed": s.hash_seed, "oov_buckets": s.oov_buckets,
             "missing_row": s.missing_row, "unknown_row": s.unknown_row,
             "max_ids": s.max_ids, "pooling": s.pooling, "dim": s.dim,
             "vocab": dict(zip(s.vocab_keys, s.vocab_rows)) if s.mapping == "vocab" else None}
        object.__setattr__(s, "_map_spec", m)
    return m


# Turns feature dicts (name -> value; sparse values an id or a list of ids) into
# the (dense, ids, weights) tensors of DCNv2.forward. Raises ValueError on a
# row with more ids than a feature's max_ids.
def encode(spec: ModelSpec, rows, width: Optional[int] = None):
    B, nd, ns = len(rows), len(spec.dense), len(spec.sparse)
    dense = np.full((B, nd), np.nan, dtype=np.float32)
    per_row = []
    W = 1
    for r, row in enumerate(rows):
        for j, f in enumerate(spec.dense):
            v = row.get(f.name)
            if not _is_missing(v) and v != "":
                with np.errstate(over="ignore"):       # beyond float32: +-inf, as C
                    dense[r, j] = float(v)
        slots = []
        for f in spec.sparse:
            v = row.get(f.name)
            try:
                rws = dcnfile.map_feature(_map_spec(f), None if _is_missing(v) else v)
            except ValueError as e:
                raise ValueError(f"feature {f.name}: {e}") from None
            if not rws:
                rws = [f.missing_row]
            slots.append(rws)
            W = max(W, len(rws))
        per_row.append(slots)
    if width is not None:
        W = max(W, width)
    ids = np.zeros((B, ns, W), dtype=np.int64)
    wts = np.zeros((B, ns, W), dtype=np.float32)
    for r, slots in enumerate(per_row):
        for f, rws in enumerate(slots):
            n = len(rws)
            w = 1.0 if spec.sparse[f].pooling == "sum" else 1.0 / n
            for k, row_ in enumerate(rws):
                if row_ >= 0:
                    ids[r, f, k] = row_
                    wts[r, f, k] = w
    return torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(wts)


# Scores feature dicts with a module: returns (scores, logits) as float64 numpy.
@torch.no_grad()
def score_rows(module: DCNv2, rows, batch=512):
    module.eval()
    out = []
    for i in range(0, len(rows), batch):
        out.append(module(*encode(module.spec, rows[i:i + batch])).double().numpy())
    logits = np.concatenate(out) if out else np.zeros(0)
    with np.errstate(over="ignore"):                  # exp overflow: score 0, as intended
        return 1.0 / (1.0 + np.exp(-logits)), logits


# ---------------------------------------------------------------- files

WEIGHT_DTYPES = ("f32", "f16", "bf16")
EMB_DTYPES = ("f32", "f16", "bf16", "i8")


# The plain spec dict of dcnfile.spec_metadata for a ModelSpec.
def _plain_spec(spec: ModelSpec):
    a = spec.arch
    cross = {"kind": a.cross_kind, "layers": a.cross_layers}
    if a.cross_kind in ("lowrank", "mix"):
        cross["rank"] = a.rank
    if a.cross_kind == "mix":
        cross.update(experts=a.experts, activation=a.activation, gate=a.gate,
                     gate_shared=a.gate_shared)
    return {"name": spec.name, "version": spec.version, "description": spec.description,
            "dense": [asdict(f) for f in spec.dense],
            "sparse": [{k: v for k, v in asdict(f).items() if k not in ("vocab_keys", "vocab_rows")}
                       for f in spec.sparse],
            "bottom": list(a.bottom), "cross": cross, "deep": list(a.deep),
            "combine": a.combine}


# Writes module as a model file at path (atomically, through dcnfile.write_dcn).
# dtype: f32 | f16 | bf16 for every dense weight matrix; emb_dtype (default:
# dtype): f32 | f16 | bf16 | i8 for the embedding tables (i8 with a per-row
# scale). Biases stay float32 as FORMAT.md requires. Returns the bytes written.
def to_dcn(module: DCNv2, path, dtype="f32", emb_dtype=None, checksum=True):
    emb_dtype = emb_dtype or dtype
    if dtype not in WEIGHT_DTYPES or emb_dtype not in EMB_DTYPES:
        raise ValueError(f"dtype {dtype!r} / emb_dtype {emb_dtype!r} not supported")
    spec = module.spec
    spec.validate()
    meta = dcnfile.spec_metadata(_plain_spec(spec))
    tensors = {}
    for i, f in enumerate(spec.sparse):
        w = module.emb[i].weight.detach().float().numpy()
        if emb_dtype == "i8":
            q, scale = dcnfile.quantize_i8(w)
            tensors[f"emb.{i}.weight"] = (q, "I8")
            tensors[f"emb.{i}.scale"] = (scale, "F32")
        else:
            tensors[f"emb.{i}.weight"] = (w, emb_dtype.upper())
        if f.mapping == "vocab":
            if not f.vocab_keys:
                raise ValueError(f"sparse {f.name}: a vocab mapping needs at least one term")
            keys = np.array(f.vocab_keys, dtype=np.uint64).view(np.int64)
            tensors[f"vocab.{i}.keys"] = (keys, "I64")
            tensors[f"vocab.{i}.rows"] = (np.array(f.vocab_rows, dtype=np.int32), "I32")
    for name, p in module.state_dict().items():
        if name.startswith("emb."):
            continue
        a = p.detach().float().numpy()
        tensors[name] = (a, "F32" if name.endswith(".bias") else dtype.upper())
    return dcnfile.write_dcn(path, meta, tensors, checksum=checksum)


# Builds the spec of a model file from its metadata and vocabulary tensors.
def spec_from_file(meta, tensors):
    g = lambda k, dflt=None: meta.get(k, dflt)
    dense = [DenseSpec(name=g("dcnv2.dense.names")[j],
                       default=float(g("dcnv2.dense.default")[j]),
                       clip_min=float(g("dcnv2.dense.clip_min")[j]),
                       clip_max=float(g("dcnv2.dense.clip_max")[j]),
                       transform=g("dcnv2.dense.transform")[j],
                       log_shift=float(g("dcnv2.dense.log_shift")[j]),
                       log_floor=float(g("dcnv2.dense.log_floor")[j]),
                       mean=float(g("dcnv2.dense.mean")[j]), std=float(g("dcnv2.dense.std")[j]))
             for j in range(g("dcnv2.dense.count"))]
    sparse = []
    for i in range(g("dcnv2.sparse.count")):
        s = lambda k: g("dcnv2.sparse." + k)[i]
        f = SparseSpec(name=s("names"), vocab_size=int(s("vocab_size")), dim=int(s("dim")),
                       pooling=s("pooling"), mapping=s("mapping"), hash_seed=int(s("hash_seed")),
                       oov_buckets=int(s("oov_buckets")), missing_row=int(s("missing_row")),
                       unknown_row=int(s("unknown_row")), max_ids=int(s("max_ids")))
        if f.mapping == "vocab":
            f.vocab_keys = [int(k) for k in np.asarray(tensors[f"vocab.{i}.keys"])
                            .astype(np.int64).view(np.uint64)]
            f.vocab_rows = [int(r) for r in np.asarray(tensors[f"vocab.{i}.rows"])]
        sparse.append(f)
    shared = bool(g("dcnv2.cross.gate_shared", False))
    gate_bias = ("cross.gate.bias" if shared else "cross.0.gate.bias") in tensors
    arch = ArchSpec(cross_kind=g("dcnv2.cross.kind"), cross_layers=int(g("dcnv2.cross.layers")),
                    rank=int(g("dcnv2.cross.rank", 0)), experts=int(g("dcnv2.cross.experts", 1)),
                    activation=g("dcnv2.cross.activation", "identity"),
                    gate=g("dcnv2.cross.gate", "softmax"), gate_shared=shared,
                    gate_bias=gate_bias, bottom=[int(w) for w in g("dcnv2.bottom.sizes", [])],
                    deep=[int(w) for w in g("dcnv2.deep.sizes")], combine=g("dcnv2.combine"))
    return ModelSpec(name=g("general.name"), version=g("general.version"),
                     description=g("general.description", ""), dense=dense, sparse=sparse,
                     arch=arch)


# Builds the reference module of a model file: weights widened to float32
# (F16/BF16 exactly, I8 as weight * scale, as the engine reads them). Returns
# a DCNv2 in eval mode; its spec carries the file's features and vocabulary.
# Raises dcnfile.DcnFormatError or ValueError naming a bad key or tensor.
def load_dcn(path) -> DCNv2:
    meta, tensors = dcnfile.read_dcn(path, dequant=True)
    dcnfile.validate_metadata(meta)
    module = DCNv2(spec_from_file(meta, tensors))
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()
             if not k.startswith("vocab.") and not k.endswith(".scale")}
    own = module.state_dict()
    for k in state:
        if k not in own:
            raise ValueError(f"{path}: tensor {k} is not part of this architecture")
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(own[k].shape)}")
    for k in own:
        if k not in state:
            raise ValueError(f"{path}: tensor {k} missing")
    module.load_state_dict(state)
    return module.eval()


# Loads a checkpoint saved by train.py --checkpoint ({"spec", "state_dict"}).
def load_checkpoint(path) -> DCNv2:
    ck = torch.load(path, map_location="cpu")
    module = DCNv2(ModelSpec.from_dict(ck["spec"]))
    module.load_state_dict(ck["state_dict"])
    return module.eval()
