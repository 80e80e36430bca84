#!/usr/bin/python3
"""int8_weight_bits — what 8-bit INT8 weights would buy over the 7-bit ones.

The INT8 copy keeps weights in [-63, 63] (7 bits) because vpmaddubsw's int16
pair sums would saturate with 127; vpdpbusd (VNNI) has no int16 stage, so a
VNNI-only copy could use [-127, 127]. This measures the difference without
changing the engine: the engine's INT8 is simulated end to end in PyTorch
(tools/calibrate.py's simulate, which tests/tools holds to the real server's
--int8 scores) with weight levels 63 and 127, on labelled real Criteo rows,
without and with the file's smoothing factors (a file calibrated by
tools/calibrate.py). One JSON line per case: score change against float (max,
mean), logloss and AUC.

usage: bench/int8_weight_bits.py [--model F] [--data CSV] [--alpha A]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import calibrate  # noqa: E402
import dcn_torch as dt  # noqa: E402
import dcnfile  # noqa: E402
import train  # noqa: E402


def with_weight_levels(levels):
    """calibrate._qlinear with the weights quantized to +-levels per output."""
    def qlinear(x, w, b, s):
        if s is not None:
            x, w = x * (1.0 / s), w * s
        return F.linear(calibrate._qrows(x, 127.0), calibrate._qrows(w, float(levels)), b)
    return qlinear


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "model", "default", "criteo-dcn.dcn"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "criteo_train_1999.csv"))
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant alpha of the smoothed cases")
    a = ap.parse_args()
    labels, rows = train.read_criteo(a.data)
    y = np.asarray(labels)
    module = dt.load_dcn(a.model)
    with torch.no_grad():
        ref, _ = dt.score_rows(module, rows)
    f = dcnfile.DcnFile(a.model)
    targets = dcnfile.smooth_targets(dict(f.metadata))
    amax = calibrate.collect(module, rows)
    wmax = {n: calibrate.weight_max(module, n) for n in targets}
    smoothed = {n: calibrate.factors(amax[n], wmax[n], a.alpha) for n in amax}
    base = {"model": os.path.basename(a.model), "rows": len(rows), "logloss_float": train.logloss(y, ref),
            "auc_float": train.auc(y, ref)}
    saved = calibrate._qlinear
    try:
        for smooth_name, sm in (("none", {}), (f"alpha {a.alpha} (on these rows)", smoothed)):
            for levels in (63, 127):
                calibrate._qlinear = with_weight_levels(levels)
                p = calibrate.simulate(module, rows, sm)
                d = np.abs(p - ref)
                print(json.dumps(dict(base, smoothing=smooth_name, weight_levels=levels,
                                      max_abs_score_change=float(d.max()), mean_abs_score_change=float(d.mean()),
                                      logloss=train.logloss(y, p), auc=train.auc(y, p))))
    finally:
        calibrate._qlinear = saved


if __name__ == "__main__":
    main()
