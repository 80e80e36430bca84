#!/usr/bin/python3
"""export.py — writes a dcnserve model file from trained PyTorch weights.

Sources (--from):
  dcnserve   a train.py checkpoint (--checkpoint) or a .dcn file (to change
             its precision);
  torchrec   a TorchRec DLRM_DCN state dict (the MLPerf DLRM-v2 model): its
             sparse arch (EmbeddingBagCollection tables), dense arch (bottom
             MLP), interaction arch (any TorchRec cross module: CrossNet,
             LowRankCrossNet, VectorCrossNet, LowRankMixtureCrossNet) and over
             arch (deep MLP + final Linear);
  deepctr    a DeepCTR-Torch DCN / DCNMix state dict (embedding_dict, crossnet,
             dnn, dnn_linear, out.bias);
  map        any state dict, described by a mapping file (--map).
A mapping file names the parameters of each part, which convention each part
follows, the combination and the feature spec; the presets above are mapping
files built from the state dict's own names. Every parameter of the state
dict must be consumed: an unmapped one is an error that names it, as is a
missing or misshapen one.

Mapping file (JSON):
  {"embeddings": ["<table>.weight", ...]            feature order, or
                 {"prefix": "emb.", "order": ["C1", ...]}    prefix+x+".weight"
                 {"prefix": "emb.", "auto": true}            state-dict order
   "bottom": {"prefix": P, "style": "torchrec_mlp" | "sequential" | "deepctr_dnn"},
   "cross":  {"prefix": P, "style": <cross style>, "activation": g, "gate": ...},
   "deep":   {"prefix": P, "style": ...},
   "logit":  {"weight": name, "bias": name or null},
   "combine": "stacked" | "parallel" | "cross_only",
   "x0_order": "dense_first" | "sparse_first",
   "features": "criteo-torchrec" | "criteo-log1p" | {"dense": [...], "sparse": [...]}}
Cross styles (prefix-relative names, shapes outermost first):
  torchrec.CrossNet        kernels.<l> [d,d], bias.<l> [d,1]
  torchrec.LowRankCrossNet W_kernels.<l> [d,r] (= u), V_kernels.<l> [r,d], bias.<l>
  torchrec.VectorCrossNet  kernels.<l> [d,1], bias.<l>
  torchrec.LowRankMixtureCrossNet  U_kernels.<l> [K,d,r], V_kernels.<l> [K,r,d],
                           C_kernels.<l> [K,r,r], bias.<l>, gates.<k>.weight [1,d]
                           (K > 1; no bias; one gate shared by every layer),
                           activation relu unless given
  deepctr.CrossNet         kernels [L,d,1] (vector) or [L,d,d] (matrix), bias [L,d,1]
  deepctr.CrossNetMix      U_list [L,K,d,r], V_list [L,K,d,r] (V transposed),
                           C_list [L,K,r,r], bias [L,d,1], gating.<k>.weight [1,d];
                           tanh, shared softmax gate
  fuxictr.CrossNet         cross_net.<l>.weight.weight [1,d], cross_net.<l>.bias [d]
  fuxictr.CrossNetV2       cross_layers.<l>.weight [d,d], cross_layers.<l>.bias [d]
  fuxictr.CrossNetMix      U_list.<l> [K,d,r], V_list.<l> [K,d,r], C_list.<l>,
                           bias.<l> [d,1], gating.<k>.weight; tanh, shared softmax
A bias may be stored [d] or [d,1]. "sparse_first" (DeepCTR's order: embeddings,
then dense values) is permuted into the file's dense-first x0.

Precision: --dtype f32|f16|bf16 for weight matrices, --emb-dtype f32|f16|bf16|i8
for embedding tables. The change is measured and printed: the largest score
difference against float32 over --eval rows (a Criteo file) or over random
rows, plus logloss/AUC before and after when the rows are labeled.

    export.py --from torchrec dlrm_dcn.pt --features criteo-torchrec --out m.dcn --dtype bf16
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402

CROSS_STYLES = ("torchrec.CrossNet", "torchrec.LowRankCrossNet", "torchrec.VectorCrossNet",
                "torchrec.LowRankMixtureCrossNet", "deepctr.CrossNet", "deepctr.CrossNetMix",
                "fuxictr.CrossNet", "fuxictr.CrossNetV2", "fuxictr.CrossNetMix")
MLP_STYLES = ("torchrec_mlp", "sequential", "deepctr_dnn")


class MappingError(ValueError):
    """A parameter the mapping cannot place, or a place without a parameter."""


class StateDict:
    """A state dict whose entries are consumed by name; leftovers are errors."""

    def __init__(self, sd):
        self.sd = {k: (v.detach().float() if torch.is_tensor(v) else torch.as_tensor(v).float())
                   for k, v in sd.items()}
        self.used = set()

    def has(self, name):
        return name in self.sd

    # Returns parameter name as float32 (marked used); shape, when given, must
    # match (a trailing 1 of a [d, 1] bias may be dropped with squeeze_last).
    def take(self, name, shape=None, squeeze_last=False):
        if name not in self.sd:
            raise MappingError(f"parameter {name} not found in the state dict")
        t = self.sd[name]
        if squeeze_last and t.dim() == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise MappingError(f"parameter {name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
        self.used.add(name)
        return t.clone()

    def count(self, pattern):
        """Number of consecutive indices l for which pattern % l is a key."""
        n = 0
        while pattern % n in self.sd:
            n += 1
        return n

    def leftovers(self):
        return [k for k in self.sd if k not in self.used]


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------- parts

# Reads an MLP in one of MLP_STYLES: returns [(weight [out,in], bias [out])].
def read_mlp(sd: StateDict, prefix, style):
    if style not in MLP_STYLES:
        raise MappingError(f"MLP style {style!r}: one of {', '.join(MLP_STYLES)}")
    if style == "torchrec_mlp":
        pat = _join(prefix, "_mlp.%d._linear")
        names = [pat % j for j in range(sd.count(pat + ".weight"))]
    elif style == "deepctr_dnn":
        pat = _join(prefix, "linears.%d")
        names = [pat % j for j in range(sd.count(pat + ".weight"))]
    else:
        rx = re.compile(re.escape(_join(prefix, "")) + r"(\d+)\.weight$") if prefix else \
            re.compile(r"(\d+)\.weight$")
        idx = sorted(int(m.group(1)) for k in sd.sd if (m := rx.match(k)))
        names = [_join(prefix, str(i)) for i in idx]
    if not names:
        raise MappingError(f"no MLP layer found under {prefix!r} ({style})")
    layers = []
    for n in names:
        w = sd.take(n + ".weight")
        if w.dim() != 2:
            raise MappingError(f"parameter {n}.weight: not a matrix")
        b = sd.take(n + ".bias", (w.shape[0],)) if sd.has(n + ".bias") else torch.zeros(w.shape[0])
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise MappingError(f"parameter {n}.weight: input width {w.shape[1]}, "
                               f"previous layer gives {layers[-1][0].shape[0]}")
        layers.append((w, b))
    return layers


# Reads a cross network in one of CROSS_STYLES for x0 width d: returns
# (ArchSpec fields dict, {file tensor name: tensor}).
def read_cross(sd: StateDict, prefix, style, d, activation=None, gate=None):
    P = lambda n: _join(prefix, n)
    t = {}
    if style not in CROSS_STYLES:
        raise MappingError(f"cross style {style!r}: one of {', '.join(CROSS_STYLES)}")
    fam, cls = style.split(".")
    if style in ("torchrec.CrossNet", "torchrec.VectorCrossNet", "torchrec.LowRankCrossNet"):
        kern = "W_kernels.%d" if cls == "LowRankCrossNet" else "kernels.%d"
        L = sd.count(P(kern))
        kind = {"CrossNet": "full", "VectorCrossNet": "vector", "LowRankCrossNet": "lowrank"}[cls]
        rank = 0
        for l in range(L):
            if kind == "full":
                t[f"cross.{l}.weight"] = sd.take(P(f"kernels.{l}"), (d, d))
            elif kind == "vector":
                t[f"cross.{l}.weight"] = sd.take(P(f"kernels.{l}"), (d, 1)).reshape(1, d)
            else:
                u = sd.take(P(f"W_kernels.{l}"))
                rank = u.shape[1]
                t[f"cross.{l}.u"] = sd.take(P(f"W_kernels.{l}"), (d, rank))
                t[f"cross.{l}.v"] = sd.take(P(f"V_kernels.{l}"), (rank, d))
            t[f"cross.{l}.bias"] = sd.take(P(f"bias.{l}"), (d,), squeeze_last=True)
        return dict(cross_kind=kind, cross_layers=L, rank=rank), t
    if style == "deepctr.CrossNet":
        if sd.has(P("kernels")):                       # one [L, d, 1|d] parameter
            K = sd.take(P("kernels"))
            B = sd.take(P("bias"))
            L = K.shape[0]
            kern = [K[l] for l in range(L)]
            bias = [B[l] for l in range(L)]
        else:                                          # ParameterList (older releases)
            L = sd.count(P("kernels.%d"))
            kern = [sd.take(P(f"kernels.{l}")) for l in range(L)]
            bias = [sd.take(P(f"bias.{l}")) for l in range(L)]
        kind = "vector" if L and kern[0].shape[-1] == 1 else "full"
        for l in range(L):
            shp = (d, 1) if kind == "vector" else (d, d)
            if tuple(kern[l].shape) != shp:
                raise MappingError(f"parameter {P('kernels')}[{l}]: shape {tuple(kern[l].shape)}, expected {shp}")
            t[f"cross.{l}.weight"] = kern[l].reshape(1, d) if kind == "vector" else kern[l]
            t[f"cross.{l}.bias"] = bias[l].reshape(-1)
            if t[f"cross.{l}.bias"].shape[0] != d:
                raise MappingError(f"parameter {P('bias')}[{l}]: {tuple(bias[l].shape)}, expected ({d}, 1)")
        return dict(cross_kind=kind, cross_layers=L), t
    if style == "fuxictr.CrossNet":
        L = sd.count(P("cross_net.%d.bias"))
        for l in range(L):
            t[f"cross.{l}.weight"] = sd.take(P(f"cross_net.{l}.weight.weight"), (1, d))
            t[f"cross.{l}.bias"] = sd.take(P(f"cross_net.{l}.bias"), (d,), squeeze_last=True)
        return dict(cross_kind="vector", cross_layers=L), t
    if style == "fuxictr.CrossNetV2":
        L = sd.count(P("cross_layers.%d.weight"))
        for l in range(L):
            t[f"cross.{l}.weight"] = sd.take(P(f"cross_layers.{l}.weight"), (d, d))
            b = P(f"cross_layers.{l}.bias")
            t[f"cross.{l}.bias"] = sd.take(b, (d,)) if sd.has(b) else torch.zeros(d)
        return dict(cross_kind="full", cross_layers=L), t

    # Mixtures: (U [K,d,r], V as [K,r,d], C [K,r,r], bias [d]) per layer.
    if style == "torchrec.LowRankMixtureCrossNet":
        L = sd.count(P("U_kernels.%d"))
        us = [sd.take(P(f"U_kernels.{l}")) for l in range(L)]
        vs = [sd.take(P(f"V_kernels.{l}")) for l in range(L)]
        cs = [sd.take(P(f"C_kernels.{l}")) for l in range(L)]
        bs = [sd.take(P(f"bias.{l}"), (d,), squeeze_last=True) for l in range(L)]
        gate_pat, act = "gates.%d.weight", activation or "relu"
    elif style == "deepctr.CrossNetMix":
        U, V, C, B = (sd.take(P(n)) for n in ("U_list", "V_list", "C_list", "bias"))
        L = U.shape[0]
        us, cs = [U[l] for l in range(L)], [C[l] for l in range(L)]
        vs = [V[l].transpose(1, 2) for l in range(L)]
        bs = [B[l].reshape(-1) for l in range(L)]
        gate_pat, act = "gating.%d.weight", activation or "tanh"
    else:  # fuxictr.CrossNetMix
        L = sd.count(P("U_list.%d"))
        us = [sd.take(P(f"U_list.{l}")) for l in range(L)]
        vs = [sd.take(P(f"V_list.{l}")).transpose(1, 2) for l in range(L)]
        cs = [sd.take(P(f"C_list.{l}")) for l in range(L)]
        bs = [sd.take(P(f"bias.{l}"), (d,), squeeze_last=True) for l in range(L)]
        gate_pat, act = "gating.%d.weight", activation or "tanh"
    if L == 0:
        raise MappingError(f"no cross layer found under {prefix!r} ({style})")
    K, _, r = us[0].shape
    for l in range(L):
        for nm, a, shp in (("U", us[l], (K, d, r)), ("V", vs[l], (K, r, d)), ("C", cs[l], (K, r, r))):
            if tuple(a.shape) != shp:
                raise MappingError(f"{style} layer {l}: {nm} has shape {tuple(a.shape)}, expected {shp}")
        t[f"cross.{l}.u"], t[f"cross.{l}.v"], t[f"cross.{l}.c"] = us[l], vs[l], cs[l]
        t[f"cross.{l}.bias"] = bs[l]
    nk = sd.count(P(gate_pat))
    if nk == 0 and K == 1:
        g = "constant"                 # one expert: no gate, weight 1 = 1/K
    else:
        if nk != K:
            raise MappingError(f"{style}: {nk} gates for {K} experts ({P(gate_pat % 0)} ...)")
        t["cross.gate.weight"] = torch.cat([sd.take(P(gate_pat % k), (1, d)) for k in range(K)])
        for k in range(K):
            bn = P(gate_pat % k)[:-len("weight")] + "bias"
            if sd.has(bn):
                raise MappingError(f"parameter {bn}: gate biases are not part of {style}")
        g = gate or "softmax"
    return dict(cross_kind="mix", cross_layers=L, rank=r, experts=K, activation=act, gate=g,
                gate_shared=True, gate_bias=False), t


# ---------------------------------------------------------------- features

# Dense and sparse feature specs. preset criteo-torchrec: TorchRec's Criteo
# preprocessing (missing -> 0, log(x + 3), negatives floored at log 1; hex ids
# mod the table size, missing -> 0); criteo-log1p: train.py's dense transform
# (log(x + 1), no standardisation) with the same sparse ids. A dict gives
# {"dense": [DenseSpec fields], "sparse": [SparseSpec fields; vocab_size and
# dim come from the tables; "vocab": [terms in row order] for mapping vocab]}.
def feature_specs(features, n_dense, tables):
    ns = len(tables)
    if isinstance(features, str):
        if features not in ("criteo-torchrec", "criteo-log1p"):
            raise MappingError(f"features {features!r}: criteo-torchrec, criteo-log1p or a dict")
        shift = 3.0 if features == "criteo-torchrec" else 1.0
        dense = [dt.DenseSpec(name=f"I{j + 1}", transform="log", log_shift=shift, log_floor=1.0)
                 for j in range(n_dense)]
        sparse = [dict(name=f"C{i + 1}", mapping="hex_mod", missing_row=0) for i in range(ns)]
    else:
        dense = [dt.DenseSpec(**f) for f in features.get("dense", [])]
        sparse = [dict(f) for f in features.get("sparse", [])]
    if len(dense) != n_dense:
        raise MappingError(f"features: {len(dense)} dense features, the model takes {n_dense}")
    if len(sparse) != ns:
        raise MappingError(f"features: {len(sparse)} sparse features, the model has {ns} tables")
    out = []
    for f, w in zip(sparse, tables):
        terms = f.pop("vocab", None)
        f.setdefault("vocab_size", w.shape[0])
        f.setdefault("dim", w.shape[1])
        if (f["vocab_size"], f["dim"]) != tuple(w.shape):
            raise MappingError(f"feature {f['name']}: table is {tuple(w.shape)}, spec says "
                               f"({f['vocab_size']}, {f['dim']})")
        s = dt.SparseSpec(**f)
        if terms is not None:
            keys, rows = dcnfile.vocab_tensors(terms, s.hash_seed, f.get("vocab_rows"))
            s.vocab_keys = [int(k) for k in keys.view(np.uint64)]
            s.vocab_rows = [int(r) for r in rows]
        out.append(s)
    return dense, out


# ---------------------------------------------------------------- assembly

def _embedding_names(sd: StateDict, emb):
    if isinstance(emb, list):
        return emb
    prefix = emb.get("prefix", "")
    if "order" in emb:
        return [prefix + x + ".weight" for x in emb["order"]]
    return [k for k in sd.sd if k.startswith(prefix) and k.endswith(".weight")
            and "." not in k[len(prefix):-len(".weight")]]


# Builds the reference module of a mapped state dict. Raises MappingError
# naming any parameter that is missing, misshapen or left unmapped.
def from_state_dict(state_dict, mapping, name="model", version="1", description=""):
    sd = StateDict(state_dict)
    tables = [sd.take(n) for n in _embedding_names(sd, mapping.get("embeddings", []))]
    bottom = read_mlp(sd, mapping["bottom"]["prefix"], mapping["bottom"].get("style", "torchrec_mlp")) \
        if mapping.get("bottom") else []
    n_dense = mapping.get("n_dense")
    if n_dense is None:
        n_dense = bottom[0][0].shape[1] if bottom else None
    if n_dense is None:
        feats = mapping.get("features")
        n_dense = len(feats.get("dense", [])) if isinstance(feats, dict) else 13
    dense, sparse = feature_specs(mapping.get("features", "criteo-torchrec"), n_dense, tables)
    dense_dim = bottom[-1][0].shape[0] if bottom else n_dense
    d = dense_dim + sum(w.shape[1] for w in tables)
    c = mapping["cross"]
    arch_fields, cross_t = read_cross(sd, c.get("prefix", ""), c["style"], d,
                                      c.get("activation"), c.get("gate"))
    deep = read_mlp(sd, mapping["deep"]["prefix"], mapping["deep"].get("style", "torchrec_mlp")) \
        if mapping.get("deep") else []
    lg = mapping["logit"]
    lw = sd.take(lg["weight"])
    if lw.dim() != 2 or lw.shape[0] != 1:
        raise MappingError(f"parameter {lg['weight']}: logit weight must be [1, in], is {tuple(lw.shape)}")
    lb = sd.take(lg["bias"], (1,)) if lg.get("bias") else torch.zeros(1)
    left = sd.leftovers()
    if left:
        raise MappingError(f"unmapped parameter {left[0]}" +
                           (f" (and {len(left) - 1} more: {', '.join(left[1:4])}...)" if len(left) > 1 else ""))
    arch = dt.ArchSpec(bottom=[w.shape[0] for w, _ in bottom], deep=[w.shape[0] for w, _ in deep],
                       combine=mapping.get("combine", "stacked"), **arch_fields)
    spec = dt.ModelSpec(name=name, version=version, description=description,
                        dense=dense, sparse=sparse, arch=arch)
    module = dt.DCNv2(spec)
    state = dict(cross_t)
    for i, w in enumerate(tables):
        state[f"emb.{i}.weight"] = w
    for j, (w, b) in enumerate(bottom):
        state[f"bottom.{j}.weight"], state[f"bottom.{j}.bias"] = w, b
    for j, (w, b) in enumerate(deep):
        state[f"deep.{j}.weight"], state[f"deep.{j}.bias"] = w, b
    state["logit.weight"], state["logit.bias"] = lw, lb
    if mapping.get("x0_order", "dense_first") == "sparse_first":
        state = _sparse_first_to_dense_first(state, spec)
    own = module.state_dict()
    for k, v in state.items():
        if k not in own:
            raise MappingError(f"{k}: not part of the {arch.cross_kind} architecture")
        if tuple(v.shape) != tuple(own[k].shape):
            raise MappingError(f"{k}: mapped shape {tuple(v.shape)}, the architecture needs "
                               f"{tuple(own[k].shape)} (check combine, bottom and deep)")
    missing = [k for k in own if k not in state]
    if missing:
        raise MappingError(f"nothing maps to {missing[0]}")
    module.load_state_dict(state)
    return module.eval()


# Re-indexes every tensor that reads or writes x0 coordinates so that a model
# trained with x0 = [embeddings..., dense] computes the same with the file's
# x0 = [dense, embeddings...]. Returns the new state dict.
def _sparse_first_to_dense_first(state, spec):
    d = spec.d()
    ne = d - spec.dense_dim()
    perm = torch.cat([torch.arange(ne, d), torch.arange(0, ne)])   # new i <- old perm[i]
    mix = spec.arch.cross_kind == "mix"
    comb, deep = spec.arch.combine, bool(spec.arch.deep)
    # tensor name suffix -> the axes that index x0 coordinates
    axes = {".weight": (0, 1) if spec.arch.cross_kind == "full" else (1,),
            ".v": (2,) if mix else (1,), ".u": (1,) if mix else (0,), ".bias": (0,)}
    out = {}
    for k, v in state.items():
        if k.startswith("cross.") and ".gate." not in k and not k.startswith("cross.gate."):
            for suf, ax in axes.items():
                if k.endswith(suf):
                    for a in ax:
                        v = v.index_select(a, perm)
        elif k in ("cross.gate.weight",) or (k.startswith("cross.") and k.endswith(".gate.weight")):
            v = v[:, perm]
        elif k == "deep.0.weight":
            v = v[:, perm]                       # reads x_L (stacked) or x0 (parallel)
        elif k == "logit.weight":
            if comb == "parallel":
                tail = v[:, d:][:, perm] if not deep else v[:, d:]
                v = torch.cat([v[:, :d][:, perm], tail], dim=1)
            elif not deep:
                v = v[:, perm]
        out[k] = v
    return out


# The mapping of a TorchRec DLRM_DCN state dict (cross module recognised by
# its parameter names).
def torchrec_mapping(state_dict, features="criteo-torchrec"):
    keys = list(state_dict)
    cp = "inter_arch.crossnet."
    cross_keys = [k[len(cp):] for k in keys if k.startswith(cp)]
    if not cross_keys:
        raise MappingError("no inter_arch.crossnet.* parameters: not a DLRM_DCN state dict")
    if any(k.startswith("U_kernels.") for k in cross_keys):
        style = "torchrec.LowRankMixtureCrossNet"
    elif any(k.startswith("W_kernels.") for k in cross_keys):
        style = "torchrec.LowRankCrossNet"
    elif "kernels.0" in cross_keys:
        k0 = state_dict[cp + "kernels.0"]
        style = "torchrec.VectorCrossNet" if k0.shape[-1] == 1 and k0.shape[0] != 1 else "torchrec.CrossNet"
    else:
        raise MappingError(f"inter_arch.crossnet: unknown cross module ({cross_keys[0]} ...)")
    over = sorted({int(m.group(1)) for k in keys
                   if (m := re.match(r"over_arch\.model\.(\d+)\.", k))})
    if not over:
        raise MappingError("no over_arch.model.* parameters")
    last = over[-1]
    has_mlp = any(k.startswith("over_arch.model.0._mlp.") for k in keys)
    return {
        "embeddings": {"prefix": "sparse_arch.embedding_bag_collection.embedding_bags.", "auto": True},
        "bottom": {"prefix": "dense_arch.model", "style": "torchrec_mlp"},
        "cross": {"prefix": "inter_arch.crossnet", "style": style},
        "deep": {"prefix": "over_arch.model.0", "style": "torchrec_mlp"} if has_mlp else None,
        "logit": {"weight": f"over_arch.model.{last}.weight", "bias": f"over_arch.model.{last}.bias"},
        "combine": "stacked",
        "features": features,
    }


# The mapping of a DeepCTR-Torch DCN (parameterization vector/matrix) or
# DCNMix state dict: embeddings in embedding_dict (feature order from the
# features spec), x0 = [embeddings, dense], cross and dnn in parallel,
# dnn_linear + out.bias as the logit layer.
def deepctr_mapping(state_dict, features):
    if not isinstance(features, dict):
        raise MappingError("deepctr: --features must be a JSON file naming every feature in "
                           "the model's feature-column order")
    style = "deepctr.CrossNetMix" if "crossnet.U_list" in state_dict else "deepctr.CrossNet"
    has_dnn = any(k.startswith("dnn.linears.") for k in state_dict)
    return {
        "embeddings": {"prefix": "embedding_dict.", "order": [f["name"] for f in features["sparse"]]},
        "cross": {"prefix": "crossnet", "style": style},
        "deep": {"prefix": "dnn", "style": "deepctr_dnn"} if has_dnn else None,
        "logit": {"weight": "dnn_linear.weight", "bias": "out.bias" if "out.bias" in state_dict else None},
        "combine": "parallel" if has_dnn else "cross_only",
        "x0_order": "sparse_first",
        "features": features,
    }


# ---------------------------------------------------------------- precision

def _random_rows(spec, n, seed=0):
    """Feature dicts with random in-range ids and dense values, for sources
    without data."""
    rng = np.random.RandomState(seed)
    rows = []
    for _ in range(n):
        r = {f.name: float(rng.lognormal(1.0, 1.5)) for f in spec.dense}
        for f in spec.sparse:
            r[f.name] = int(rng.randint(0, f.vocab_size)) if f.mapping in ("index", "hex_mod") \
                else f"t{rng.randint(0, 10 * f.vocab_size + 1)}"
        rows.append(r)
    return rows


# Scores rows with the float32 module and with the file just written; prints
# the largest score change and, with labels, logloss/AUC before and after.
# Returns the dict of figures.
def report_precision(module, path, rows, labels=None, out=None):
    import train
    out = out or sys.stdout
    ref, _ = dt.score_rows(module, rows)
    got, _ = dt.score_rows(dt.load_dcn(path), rows)
    diff = np.abs(ref - got)
    res = {"rows": len(rows), "max_abs_score_change": float(diff.max()) if len(diff) else 0.0,
           "mean_abs_score_change": float(diff.mean()) if len(diff) else 0.0}
    print(f"score change over {len(rows)} rows: max {res['max_abs_score_change']:.3g}, "
          f"mean {res['mean_abs_score_change']:.3g}", file=out)
    if labels is not None and len(labels):
        for tag, p in (("f32", ref), ("file", got)):
            res[f"logloss_{tag}"] = train.logloss(labels, p)
            res[f"auc_{tag}"] = train.auc(labels, p)
        print(f"logloss {res['logloss_f32']:.6f} -> {res['logloss_file']:.6f} "
              f"({res['logloss_file'] - res['logloss_f32']:+.2e}), AUC {res['auc_f32']:.6f} -> "
              f"{res['auc_file']:.6f} ({res['auc_file'] - res['auc_f32']:+.2e})", file=out)
    return res


def _load_state_dict(path):
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    # DistributedDataParallel / DataParallel wrappers prefix every name.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _features_arg(s):
    if s is None or s in ("criteo-torchrec", "criteo-log1p"):
        return s
    with open(s) as fh:
        return json.load(fh)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--from", dest="source", required=True,
                    choices=["dcnserve", "torchrec", "deepctr", "map"])
    ap.add_argument("input", help="checkpoint, state dict (torch.save) or .dcn")
    ap.add_argument("--out", required=True)
    ap.add_argument("--map", help="mapping file (JSON); required with --from map")
    ap.add_argument("--features", help="criteo-torchrec | criteo-log1p | features JSON")
    ap.add_argument("--activation", choices=dt.ACTIVATIONS, help="override a mixture's activation")
    ap.add_argument("--name", default=None)
    ap.add_argument("--version", default=None)
    ap.add_argument("--description", default="")
    ap.add_argument("--dtype", default="f32", choices=dt.WEIGHT_DTYPES)
    ap.add_argument("--emb-dtype", choices=dt.EMB_DTYPES)
    ap.add_argument("--eval", help="Criteo CSV/TSV rows to measure the precision change on")
    ap.add_argument("--eval-rows", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    try:
        if args.source == "dcnserve":
            module = dt.load_dcn(args.input) if args.input.endswith(".dcn") \
                else dt.load_checkpoint(args.input)
            if args.name:
                module.spec.name = args.name
            if args.version:
                module.spec.version = args.version
            if args.description:
                module.spec.description = args.description
        else:
            sd = _load_state_dict(args.input)
            feats = _features_arg(args.features)
            if args.source == "torchrec":
                mapping = torchrec_mapping(sd, feats or "criteo-torchrec")
            elif args.source == "deepctr":
                mapping = deepctr_mapping(sd, feats)
            else:
                if not args.map:
                    ap.error("--from map needs --map FILE")
                with open(args.map) as fh:
                    mapping = json.load(fh)
                if feats is not None:
                    mapping["features"] = feats
            if args.activation:
                mapping["cross"]["activation"] = args.activation
            module = from_state_dict(sd, mapping, name=args.name or "model",
                                     version=args.version or "1", description=args.description)
    except (MappingError, dcnfile.DcnFormatError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    n = dt.to_dcn(module, args.out, dtype=args.dtype, emb_dtype=args.emb_dtype)
    a = module.spec.arch
    print(f"wrote {args.out}: {n} bytes, d = {module.spec.d()}, cross {a.cross_kind} x "
          f"{a.cross_layers}, {a.combine}, weights {args.dtype}, embeddings "
          f"{args.emb_dtype or args.dtype}")
    if args.eval:
        import train
        labels, rows = train.read_criteo(args.eval, limit=args.eval_rows)
    else:
        labels, rows = None, _random_rows(module.spec, 512)
    report_precision(module, args.out, rows, labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
