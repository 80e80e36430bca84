"""precision_eval — what a reduced-precision mode of the engine costs on real
rows: the same model served twice by the real dcnserve binary, once in float
and once with extra flags (e.g. `--int8`), the same Criteo rows posted to
both over HTTP, and the score, logloss and AUC changes printed.

usage: precision_eval.py --dcnserve BIN --model F.dcn [--data CSV] [--flags=--int8]
Prints one JSON line: rows, max/mean |score change|, logloss and AUC of both.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import train  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_score(binary, model, flags, rows):
    """Starts dcnserve on a free loopback port, scores rows in requests of
    100 candidates, stops it; returns the scores in row order."""
    port = free_port()
    proc = subprocess.Popen([binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warn"] + flags,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/v2/health/ready")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                sys.exit(f"precision_eval: dcnserve did not become ready: {proc.stderr.read()[-500:]}")
            time.sleep(0.05)
        scores = np.full(len(rows), np.nan)
        for start in range(0, len(rows), 100):
            body = json.dumps({"candidates": [{"id": i, "features": rows[i]}
                                              for i in range(start, min(len(rows), start + 100))]})
            c.request("POST", "/rank", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            out = json.loads(r.read())
            if r.status != 200:
                sys.exit(f"precision_eval: /rank answered {r.status}: {out}")
            for cand in out["ranked"]:
                scores[cand["id"]] = cand["score"]
        return scores
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dcnserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "criteo_train_1999.csv"))
    ap.add_argument("--flags", default="--int8")
    a = ap.parse_args()
    labels, rows = train.read_criteo(a.data)
    base = serve_and_score(a.dcnserve, a.model, [], rows)
    other = serve_and_score(a.dcnserve, a.model, a.flags.split(), rows)
    d = np.abs(other - base)
    y = np.asarray(labels)
    res = {"model": os.path.basename(a.model), "flags": a.flags, "rows": len(rows),
           "max_abs_score_change": float(d.max()), "mean_abs_score_change": float(d.mean()),
           "logloss": [train.logloss(y, base), train.logloss(y, other)],
           "auc": [train.auc(y, base), train.auc(y, other)]}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
