"""Export from foreign parameter names: TorchRec DLRM_DCN (every TorchRec
cross module), DeepCTR-Torch CrossNet / CrossNetMix / DCNMix, FuxiCTR
CrossNet / CrossNetV2 / CrossNetMix; reduced precision on export.

TorchRec, DeepCTR and FuxiCTR are not installable here, so each test builds a
state dict by hand with the parameter names and shapes those libraries write,
computes the expected logits with a small re-implementation of that library's
forward pass (written from its documented equations, in its own parameter
layout), exports through tools/export.py, reads the file back with
dcn_torch.load_dcn and compares. An unmapped or missing parameter must be an
error naming it."""
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import dcn_torch as dt  # noqa: E402
import export  # noqa: E402

torch.set_num_threads(1)
TOL = 2e-5


def xavier(*shape, g):
    return torch.randn(*shape, generator=g) * (2.0 / (shape[-1] + shape[-2 if len(shape) > 1 else -1])) ** 0.5


# ---------------------------------------------------------------- foreign forwards

def tr_crossnet(sd, p, x0, kind, act=torch.relu):
    """TorchRec cross modules on (B, N), in TorchRec's own layout."""
    x0c = x0.unsqueeze(2)
    xl = x0c
    L = sum(1 for k in sd if k.startswith(p + ("W_kernels." if kind == "lowrank" else
                                               "U_kernels." if kind == "mix" else "kernels.")))
    for l in range(L):
        b = sd[f"{p}bias.{l}"].reshape(-1, 1)      # stored [N, 1] (or [N])
        if kind == "full":
            xl = x0c * (torch.matmul(sd[f"{p}kernels.{l}"], xl) + b) + xl
        elif kind == "lowrank":
            xl = x0c * (torch.matmul(sd[f"{p}W_kernels.{l}"],
                                     torch.matmul(sd[f"{p}V_kernels.{l}"], xl)) + b) + xl
        elif kind == "vector":
            xw = torch.tensordot(xl, sd[f"{p}kernels.{l}"], dims=([1], [0]))
            xl = torch.matmul(x0c, xw) + b + xl
        else:
            U, V, C = sd[f"{p}U_kernels.{l}"], sd[f"{p}V_kernels.{l}"], sd[f"{p}C_kernels.{l}"]
            K = U.shape[0]
            experts = []
            for i in range(K):
                e = torch.matmul(V[i], xl)
                e = torch.matmul(C[i], act(e))
                e = torch.matmul(U[i], act(e))
                experts.append((x0c * (e + b)).squeeze(2))
            experts = torch.stack(experts, 2)
            if K > 1:
                gating = torch.stack([xl.squeeze(2) @ sd[f"{p}gates.{i}.weight"].t()
                                      for i in range(K)], 1)
                xl = torch.matmul(experts, torch.softmax(gating, 1)) + xl
            else:
                xl = experts + xl
    return xl.squeeze(2)


def tr_mlp(sd, p, x):
    j = 0
    while f"{p}_mlp.{j}._linear.weight" in sd:
        x = torch.relu(x @ sd[f"{p}_mlp.{j}._linear.weight"].t() + sd[f"{p}_mlp.{j}._linear.bias"])
        j += 1
    return x


def dlrm_dcn_forward(sd, dense_raw, ids):
    """TorchRec DLRM_DCN on Criteo preprocessing: dense log(x + 3), ids mod V."""
    dense = torch.log(dense_raw + 3)
    h = tr_mlp(sd, "dense_arch.model.", dense)
    tabs = [k for k in sd if k.startswith("sparse_arch.embedding_bag_collection.embedding_bags.")]
    embs = [sd[t][ids[:, i] % sd[t].shape[0]] for i, t in enumerate(tabs)]
    x = torch.cat([h] + embs, dim=1)
    kind = _tr_kind(sd)
    x = tr_crossnet(sd, "inter_arch.crossnet.", x, kind)
    x = tr_mlp(sd, "over_arch.model.0.", x)
    return (x @ sd["over_arch.model.1.weight"].t() + sd["over_arch.model.1.bias"]).squeeze(1)


def _tr_kind(sd):
    k = [x for x in sd if x.startswith("inter_arch.crossnet.")]
    if any("U_kernels" in x for x in k):
        return "mix"
    if any("W_kernels" in x for x in k):
        return "lowrank"
    return "vector" if sd["inter_arch.crossnet.kernels.0"].shape[1] == 1 else "full"


def dlrm_dcn_state(kind, g, n_dense=13, n_sparse=4, D=8, V=50, L=2, r=6, K=3, bias_2d=True):
    """A DLRM_DCN state dict with TorchRec's names and shapes."""
    sd = {}
    for i in range(n_sparse):
        sd[f"sparse_arch.embedding_bag_collection.embedding_bags.t_cat_{i}.weight"] = \
            torch.randn(V + i, D, generator=g) * 0.3
    sizes = [n_dense, 16, D]
    for j in range(2):
        sd[f"dense_arch.model._mlp.{j}._linear.weight"] = xavier(sizes[j + 1], sizes[j], g=g)
        sd[f"dense_arch.model._mlp.{j}._linear.bias"] = torch.randn(sizes[j + 1], generator=g) * 0.1
    N = D * (n_sparse + 1)
    p = "inter_arch.crossnet."
    bshape = (N, 1) if bias_2d else (N,)
    for l in range(L):
        if kind == "full":
            sd[f"{p}kernels.{l}"] = xavier(N, N, g=g)
        elif kind == "vector":
            sd[f"{p}kernels.{l}"] = xavier(N, 1, g=g)
        elif kind == "lowrank":
            sd[f"{p}W_kernels.{l}"] = xavier(N, r, g=g)
            sd[f"{p}V_kernels.{l}"] = xavier(r, N, g=g)
        else:
            sd[f"{p}U_kernels.{l}"] = xavier(K, N, r, g=g)
            sd[f"{p}V_kernels.{l}"] = xavier(K, r, N, g=g)
            sd[f"{p}C_kernels.{l}"] = xavier(K, r, r, g=g)
        sd[f"{p}bias.{l}"] = torch.randn(*bshape, generator=g) * 0.1
    if kind == "mix" and K > 1:
        for i in range(K):
            sd[f"{p}gates.{i}.weight"] = xavier(1, N, g=g)
    over = [N, 32, 16]
    for j in range(2):
        sd[f"over_arch.model.0._mlp.{j}._linear.weight"] = xavier(over[j + 1], over[j], g=g)
        sd[f"over_arch.model.0._mlp.{j}._linear.bias"] = torch.randn(over[j + 1], generator=g) * 0.1
    sd["over_arch.model.1.weight"] = xavier(1, 16, g=g)
    sd["over_arch.model.1.bias"] = torch.randn(1, generator=g) * 0.1
    return sd


def criteo_rows(g, B, n_dense=13, n_sparse=4):
    """Raw Criteo-like inputs: dense counts (some -1, -2) and 32-bit hex ids."""
    dense = torch.randint(-2, 200, (B, n_dense), generator=g).float()
    ids = torch.randint(0, 2**32, (B, n_sparse), generator=g, dtype=torch.int64)
    rows = [{**{f"I{j + 1}": float(dense[b, j]) for j in range(n_dense)},
             **{f"C{i + 1}": "%08x" % int(ids[b, i]) for i in range(n_sparse)}} for b in range(B)]
    return dense, ids, rows


class TorchRecTest(unittest.TestCase):
    def check_kind(self, kind, **kw):
        g = torch.Generator().manual_seed(hash(kind) % 1000)
        sd = dlrm_dcn_state(kind, g, **kw)
        dense, ids, rows = criteo_rows(g, 64)
        want = dlrm_dcn_forward(sd, dense, ids).double().numpy()
        with tempfile.TemporaryDirectory() as tmp:
            ck = os.path.join(tmp, "dlrm.pt")
            torch.save(sd, ck)
            out = os.path.join(tmp, "m.dcn")
            with redirect_stdout(io.StringIO()):
                rc = export.main(["--from", "torchrec", ck, "--out", out,
                                  "--features", "criteo-torchrec", "--name", "dlrm-" + kind])
            self.assertEqual(rc, 0)
            m = dt.load_dcn(out)
            _, got = dt.score_rows(m, rows)
        self.assertLess(np.abs(got - want).max(), TOL, kind)
        return m

    def test_low_rank_crossnet(self):
        m = self.check_kind("lowrank")
        self.assertEqual((m.spec.arch.cross_kind, m.spec.arch.rank, m.spec.arch.bottom,
                          m.spec.arch.deep), ("lowrank", 6, [16, 8], [32, 16]))

    def test_full_crossnet(self):
        self.check_kind("full", bias_2d=False)

    def test_vector_crossnet(self):
        self.check_kind("vector")

    def test_mixture_crossnet_shared_gates_relu(self):
        m = self.check_kind("mix")
        a = m.spec.arch
        self.assertEqual((a.experts, a.activation, a.gate, a.gate_shared), (3, "relu", "softmax", True))

    def test_mixture_one_expert_has_no_gate(self):
        m = self.check_kind("mix", K=1)
        self.assertEqual(m.spec.arch.gate, "constant")

    def test_unmapped_parameter_is_named(self):
        g = torch.Generator().manual_seed(1)
        sd = dlrm_dcn_state("lowrank", g)
        sd["inter_arch.extra_scale"] = torch.ones(3)
        with self.assertRaisesRegex(export.MappingError, "inter_arch.extra_scale"):
            export.from_state_dict(sd, export.torchrec_mapping(sd))

    def test_missing_parameter_is_named(self):
        g = torch.Generator().manual_seed(2)
        sd = dlrm_dcn_state("lowrank", g)
        del sd["inter_arch.crossnet.V_kernels.1"]
        with self.assertRaisesRegex(export.MappingError, "inter_arch.crossnet.V_kernels.1"):
            export.from_state_dict(sd, export.torchrec_mapping(sd))

    def test_misshapen_parameter_is_named(self):
        g = torch.Generator().manual_seed(3)
        sd = dlrm_dcn_state("full", g)
        sd["inter_arch.crossnet.kernels.1"] = torch.zeros(40, 39)
        with self.assertRaisesRegex(export.MappingError, "inter_arch.crossnet.kernels.1"):
            export.from_state_dict(sd, export.torchrec_mapping(sd))


# ---------------------------------------------------------------- DeepCTR / FuxiCTR

def mix_forward(U, V, C, B, gates, x0, act, v_transposed):
    """CrossNetMix as DeepCTR-Torch / FuxiCTR compute it: per layer lists."""
    xl = x0.unsqueeze(2)
    x0c = xl
    for l in range(len(U)):
        outs, scores = [], []
        for e in range(U[l].shape[0]):
            scores.append(xl.squeeze(2) @ gates[e].t())
            v = V[l][e].t() if v_transposed else V[l][e]
            h = act(torch.matmul(v, xl))
            h = act(torch.matmul(C[l][e], h))
            outs.append((x0c * (torch.matmul(U[l][e], h) + B[l])).squeeze(2))
        outs = torch.stack(outs, 2)
        scores = torch.stack(scores, 1)
        xl = torch.matmul(outs, scores.softmax(1)) + xl
    return xl.squeeze(2)


class DeepCtrFuxiTest(unittest.TestCase):
    d, L, K, r = 20, 2, 3, 5

    def x0(self, g, B=32):
        return torch.randn(B, self.d, generator=g)

    def cross_only(self, sd, style, x0):
        """Exports a bare cross network as a cross_only model whose x0 is one
        dense feature per coordinate (no transform) and returns its logits."""
        d = self.d
        sd = dict(sd)
        sd["head.weight"] = torch.linspace(-1, 1, d).reshape(1, d)
        sd["head.bias"] = torch.tensor([0.25])
        mapping = {"cross": {"prefix": "cn", "style": style}, "logit": {"weight": "head.weight",
                   "bias": "head.bias"}, "combine": "cross_only", "n_dense": d,
                   "features": {"dense": [{"name": f"x{j}"} for j in range(d)], "sparse": []}}
        m = export.from_state_dict(sd, mapping)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.dcn")
            dt.to_dcn(m, path)
            m2 = dt.load_dcn(path)
        rows = [{f"x{j}": float(x0[b, j]) for j in range(d)} for b in range(len(x0))]
        return dt.score_rows(m2, rows)[1], sd

    def head(self, sd, x):
        return (x @ sd["head.weight"].t() + sd["head.bias"]).squeeze(1).double().numpy()

    def test_deepctr_crossnetmix(self):
        g = torch.Generator().manual_seed(11)
        d, L, K, r = self.d, self.L, self.K, self.r
        sd = {"cn.U_list": torch.randn(L, K, d, r, generator=g) * 0.3,
              "cn.V_list": torch.randn(L, K, d, r, generator=g) * 0.3,
              "cn.C_list": torch.randn(L, K, r, r, generator=g) * 0.3,
              "cn.bias": torch.randn(L, d, 1, generator=g) * 0.1}
        for e in range(K):
            sd[f"cn.gating.{e}.weight"] = torch.randn(1, d, generator=g) * 0.3
        x0 = self.x0(g)
        got, sd2 = self.cross_only(sd, "deepctr.CrossNetMix", x0)
        want = mix_forward([sd["cn.U_list"][l] for l in range(L)], [sd["cn.V_list"][l] for l in range(L)],
                           [sd["cn.C_list"][l] for l in range(L)], [sd["cn.bias"][l] for l in range(L)],
                           [sd[f"cn.gating.{e}.weight"] for e in range(K)], x0, torch.tanh, True)
        self.assertLess(np.abs(got - self.head(sd2, want)).max(), TOL)

    def test_fuxictr_crossnetmix(self):
        g = torch.Generator().manual_seed(12)
        d, L, K, r = self.d, self.L, self.K, self.r
        sd = {}
        for l in range(L):
            sd[f"cn.U_list.{l}"] = torch.randn(K, d, r, generator=g) * 0.3
            sd[f"cn.V_list.{l}"] = torch.randn(K, d, r, generator=g) * 0.3
            sd[f"cn.C_list.{l}"] = torch.randn(K, r, r, generator=g) * 0.3
            sd[f"cn.bias.{l}"] = torch.randn(d, 1, generator=g) * 0.1
        for e in range(K):
            sd[f"cn.gating.{e}.weight"] = torch.randn(1, d, generator=g) * 0.3
        x0 = self.x0(g)
        got, sd2 = self.cross_only(sd, "fuxictr.CrossNetMix", x0)
        want = mix_forward([sd[f"cn.U_list.{l}"] for l in range(L)], [sd[f"cn.V_list.{l}"] for l in range(L)],
                           [sd[f"cn.C_list.{l}"] for l in range(L)], [sd[f"cn.bias.{l}"] for l in range(L)],
                           [sd[f"cn.gating.{e}.weight"] for e in range(K)], x0, torch.tanh, True)
        self.assertLess(np.abs(got - self.head(sd2, want)).max(), TOL)

    def test_deepctr_crossnet_vector_and_matrix(self):
        g = torch.Generator().manual_seed(13)
        d, L = self.d, self.L
        for inner in (1, d):
            sd = {"cn.kernels": torch.randn(L, d, inner, generator=g) * 0.2,
                  "cn.bias": torch.randn(L, d, 1, generator=g) * 0.1}
            x0 = self.x0(g)
            got, sd2 = self.cross_only(sd, "deepctr.CrossNet", x0)
            xl = x0.unsqueeze(2)
            x0c = xl
            for l in range(L):
                if inner == 1:
                    xl = torch.matmul(x0c, torch.tensordot(xl, sd["cn.kernels"][l], dims=([1], [0]))) \
                        + sd["cn.bias"][l] + xl
                else:
                    xl = x0c * (torch.matmul(sd["cn.kernels"][l], xl) + sd["cn.bias"][l]) + xl
            self.assertLess(np.abs(got - self.head(sd2, xl.squeeze(2))).max(), TOL)

    def test_fuxictr_crossnet_and_v2(self):
        g = torch.Generator().manual_seed(14)
        d, L = self.d, self.L
        sd = {}
        for l in range(L):
            sd[f"cn.cross_layers.{l}.weight"] = torch.randn(d, d, generator=g) * 0.2
            sd[f"cn.cross_layers.{l}.bias"] = torch.randn(d, generator=g) * 0.1
        x0 = self.x0(g)
        got, sd2 = self.cross_only(sd, "fuxictr.CrossNetV2", x0)
        x = x0
        for l in range(L):
            x = x + x0 * (x @ sd[f"cn.cross_layers.{l}.weight"].t() + sd[f"cn.cross_layers.{l}.bias"])
        self.assertLess(np.abs(got - self.head(sd2, x)).max(), TOL)
        sd = {}
        for l in range(L):
            sd[f"cn.cross_net.{l}.weight.weight"] = torch.randn(1, d, generator=g) * 0.2
            sd[f"cn.cross_net.{l}.bias"] = torch.randn(d, generator=g) * 0.1
        got, sd2 = self.cross_only(sd, "fuxictr.CrossNet", x0)
        x = x0
        for l in range(L):
            x = x + (x @ sd[f"cn.cross_net.{l}.weight.weight"].t()) * x0 + sd[f"cn.cross_net.{l}.bias"]
        self.assertLess(np.abs(got - self.head(sd2, x)).max(), TOL)

    def test_deepctr_dcnmix_model_sparse_first(self):
        """A whole DeepCTR DCNMix: x0 = [embeddings, dense], cross and dnn in
        parallel, dnn_linear (no bias) + out.bias; vocab-mapped ids."""
        g = torch.Generator().manual_seed(15)
        nd, dim, terms = 3, 4, ["a", "b", "c", "d", "e"]
        names = ["u", "v"]
        d = nd + dim * len(names)
        L, K, r = 2, 2, 3
        sd = {f"embedding_dict.{n}.weight": torch.randn(len(terms), dim, generator=g) * 0.5
              for n in names}
        sd.update({"crossnet.U_list": torch.randn(L, K, d, r, generator=g) * 0.3,
                   "crossnet.V_list": torch.randn(L, K, d, r, generator=g) * 0.3,
                   "crossnet.C_list": torch.randn(L, K, r, r, generator=g) * 0.3,
                   "crossnet.bias": torch.randn(L, d, 1, generator=g) * 0.1})
        for e in range(K):
            sd[f"crossnet.gating.{e}.weight"] = torch.randn(1, d, generator=g) * 0.3
        sd["dnn.linears.0.weight"] = torch.randn(8, d, generator=g) * 0.3
        sd["dnn.linears.0.bias"] = torch.randn(8, generator=g) * 0.1
        sd["dnn_linear.weight"] = torch.randn(1, d + 8, generator=g) * 0.3
        sd["out.bias"] = torch.tensor([0.1])
        feats = {"dense": [{"name": f"n{j}"} for j in range(nd)],
                 "sparse": [{"name": n, "mapping": "vocab", "vocab": terms} for n in names]}
        m = export.from_state_dict(sd, export.deepctr_mapping(sd, feats))
        rng = np.random.RandomState(0)
        rows, xs = [], []
        for _ in range(16):
            row = {f"n{j}": float(rng.randn()) for j in range(nd)}
            tix = [int(rng.randint(len(terms))) for _ in names]
            row.update({n: terms[t] for n, t in zip(names, tix)})
            rows.append(row)
            emb = [sd[f"embedding_dict.{n}.weight"][t] for n, t in zip(names, tix)]
            xs.append(torch.cat(emb + [torch.tensor([row[f"n{j}"] for j in range(nd)])]))
        x0 = torch.stack(xs)
        xl = mix_forward([sd["crossnet.U_list"][l] for l in range(L)],
                         [sd["crossnet.V_list"][l] for l in range(L)],
                         [sd["crossnet.C_list"][l] for l in range(L)],
                         [sd["crossnet.bias"][l] for l in range(L)],
                         [sd[f"crossnet.gating.{e}.weight"] for e in range(K)], x0, torch.tanh, True)
        deep = torch.relu(x0 @ sd["dnn.linears.0.weight"].t() + sd["dnn.linears.0.bias"])
        want = (torch.cat([xl, deep], 1) @ sd["dnn_linear.weight"].t()).squeeze(1) + sd["out.bias"]
        _, got = dt.score_rows(m, rows)
        self.assertLess(np.abs(got - want.double().numpy()).max(), TOL)
        sd["linear_model.weight"] = torch.zeros(3, 1)
        with self.assertRaisesRegex(export.MappingError, "linear_model.weight"):
            export.from_state_dict(sd, export.deepctr_mapping(sd, feats))


class PrecisionTest(unittest.TestCase):
    def test_reduced_precision_is_reported_and_small(self):
        g = torch.Generator().manual_seed(21)
        sd = dlrm_dcn_state("lowrank", g)
        m = export.from_state_dict(sd, export.torchrec_mapping(sd))
        _, _, rows = criteo_rows(g, 128)
        ref, _ = dt.score_rows(m, rows)
        with tempfile.TemporaryDirectory() as tmp:
            for dtype, emb, bound in (("f16", None, 2e-3), ("bf16", None, 2e-2),
                                      ("f32", "i8", 2e-2), ("bf16", "i8", 3e-2)):
                path = os.path.join(tmp, f"{dtype}-{emb}.dcn")
                dt.to_dcn(m, path, dtype=dtype, emb_dtype=emb)
                buf = io.StringIO()
                res = export.report_precision(m, path, rows, out=buf)
                self.assertIn("score change", buf.getvalue())
                self.assertLess(res["max_abs_score_change"], bound, (dtype, emb))
                self.assertGreater(res["max_abs_score_change"], 0.0, (dtype, emb))
                size32 = os.path.getsize(path)
                self.assertGreater(size32, 0)

    def test_cli_prints_accuracy_change_on_labeled_rows(self):
        ck = os.path.join(ROOT, "model", "default", "criteo-dcn.dcn")
        data = os.path.join(ROOT, "data", "criteo_train_1999.csv")
        with tempfile.TemporaryDirectory() as tmp:
            buf = io.StringIO()
            with redirect_stdout(buf):
                rc = export.main(["--from", "dcnserve", ck, "--out", os.path.join(tmp, "b.dcn"),
                                  "--dtype", "bf16", "--emb-dtype", "i8", "--eval", data,
                                  "--eval-rows", "300"])
            self.assertEqual(rc, 0)
            out = buf.getvalue()
            self.assertIn("logloss", out)
            self.assertIn("AUC", out)


if __name__ == "__main__":
    unittest.main()
