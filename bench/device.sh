#!/bin/sh
# device.sh — the prepared runs for a machine these 2-core hosts cannot
# stand in for: the lent 16-core Intel Xeon of the tool library's `device`
# entry (AVX-512, VNNI, BF16, AMX), or any such server. One section a call:
#   amx      the AMX INT8 kernel (model/kern_amx.c), built and checked here
#            only through emulated tiles: do the native tiles agree, and do
#            they pay? (about 5 minutes)
#   scaling  issue 15's many-core figures: the engine on 1..N threads, and
#            the server under wrk with 1, 2 and 4 event loops (about 6
#            minutes)
#
# Here (Debian), build, then pack the binaries with their libraries:
#   make all build/release/dcn-bench build/release/tests/model/test_kernels
#   ../shared/tools/device-pack.sh .device-pack build/release/dcnserve \
#       build/release/dcn-bench build/release/tests/model/test_kernels wrk
# There (one call per section; carry .device-pack):
#   . .device-pack/activate && sh bench/device.sh amx
# Elsewhere, with the binaries on PATH: sh bench/device.sh amx
#
# Writes under $OUT (default /tmp/dcn-device) and prints a summary
# (summary.txt). Steps run whether or not the one before succeeded.
#
# amx:
#   1. the CPU's AMX flags;
#   2. dlrmv2 generated (bench/make_models.py, numpy; 1.3 GB of tables);
#   3. the kernel tests on the native tiles (every INT8 kernel against the
#      scalar reference, bit for bit);
#   4. the scores of 100 dlrmv2 rows through AMX and through AVX512-VNNI,
#      which must be byte-identical (both equal the reference);
#   5. samples/s of both kernels, dlrmv2 --int8 1, batches 1-1024, 1 and
#      all threads; AMX once more on tiles from 1 row (DCN_AMX_MIN_ROWS=1)
#      to choose the threshold below which the VNNI kernel serves.
#   What to do with the figures: bench/README.md, "AMX".
# scaling:
#   1. dlrmv2 and criteo-full generated;
#   2. dcn-bench on 1, 2, 4, 8 ... all threads, batches 1, 256, 1024, FP32
#      and INT8 (issue 15's engine targets: dlrmv2 batch 256 on 16 threads
#      >= 23,600 samples/s, batch 1024 >= 12x one thread, batch 1 <= 0.35
#      ms, criteo-full batch 1 never slower than on one thread);
#   3. deploy/load/run.py on the default model: random ids over each
#      vocabulary, 10 and 100 candidates a request, 1, 2 and 4 loops, the
#      server's default workers (one a core), wrk 4 x 128, the engine alone
#      beside it (targets: 100 candidates >= 90% of the engine, 10
#      candidates >= 45,000 requests/s with p99).
set -u
WHAT=${1:-amx}
OUT=${OUT:-/tmp/dcn-device}
MODELS=${MODELS:-/tmp/dcn-models}
THREADS=${THREADS:-1,$(nproc)}
mkdir -p "$OUT" "$MODELS"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

say "== 1. CPU"
lscpu > "$OUT/cpu.txt" 2>&1
say "model: $(grep -m1 'Model name' "$OUT/cpu.txt" | sed 's/.*: *//'); cores: $(nproc)"
say "amx flags: $(grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"

if [ "$WHAT" = scaling ]; then
  say "== models"
  python3 bench/make_models.py --outdir "$MODELS" --models dlrmv2,criteo-full > "$OUT/models.json" 2>&1 ||
    say "make_models failed: see models.json"
  T=1; n=2; while [ "$n" -le "$(nproc)" ]; do T="$T,$n"; n=$((n * 2)); done
  [ "${T##*,}" = "$(nproc)" ] || T="$T,$(nproc)"
  say "== engine, threads $T"
  for mdl in dlrmv2 criteo-full; do
    for q in 0 1; do
      dcn-bench run --model "$MODELS/$mdl.dcn" --int8 $q --batches 1,256,1024 --threads "$T" --min-time 0.5 \
        > "$OUT/engine-$mdl-int8$q.jsonl" 2>> "$OUT/run.err"
    done
  done
  python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "engine-*.jsonl"))):
    pts = [json.loads(l) for l in open(f) if l.startswith("{")]
    pts = [p for p in pts if p.get("kind") == "point"]
    one = {p["batch"]: p for p in pts if p["threads"] == 1}
    print(f"\n{os.path.basename(f)}\n| T | batch | samples/s | x one thread | p50 ms |\n|---:|---:|---:|---:|---:|")
    for p in pts:
        b = one.get(p["batch"])
        x = p["samples_per_s"] / b["samples_per_s"] if b else float("nan")
        print(f"| {p['threads']} | {p['batch']} | {p['samples_per_s']:,.0f} | {x:.2f} | {p['lat_ms_median']:.3f} |")
PY
  say "== server under wrk"
  python3 deploy/load/run.py --server "$(command -v dcnserve)" --sizes 10,100 --duration 6 --no-paced \
    --ids random --connections 128 --threads 4 --loops 1,2,4 --engine-bench "$(command -v dcn-bench)" \
    > "$OUT/load.txt" 2>&1 || say "run.py failed: see load.txt"
  tee -a "$OUT/summary.txt" < "$OUT/load.txt"
  exit 0
fi

say "== 2. model"
python3 bench/make_models.py --outdir "$MODELS" --models dlrmv2 > "$OUT/models.json" 2>&1 || say "make_models failed: see models.json"
M="$MODELS/dlrmv2.dcn"

say "== 3. kernel tests on this CPU"
test_kernels --jobs 4 > "$OUT/test_kernels.txt" 2>&1
say "test_kernels exit $?: $(grep -m1 'INT8 kernels tested' "$OUT/test_kernels.txt")"
say "$(grep 'Synthesis' "$OUT/test_kernels.txt")"

say "== 4. the same scores through AMX and AVX512-VNNI"
for k in avx512vnni amx; do
  DCN_INT8_KERNEL=$k DCN_AMX_MIN_ROWS=1 dcn-bench dump --model "$M" --int8 1 --rows 100 --out "$OUT/dump-$k.json" 2>> "$OUT/dump.err"
done
if cmp -s "$OUT/dump-avx512vnni.json" "$OUT/dump-amx.json"; then say "100 rows: identical"; else say "100 rows: DIFFER (or a run failed: dump.err)"; fi

say "== 5. speed, dlrmv2 --int8 1, threads $THREADS"
for k in avx512vnni amx; do
  DCN_INT8_KERNEL=$k dcn-bench run --model "$M" --int8 1 --batches 1,16,64,256,1024 --threads "$THREADS" \
    --min-time 0.5 > "$OUT/int8-$k.jsonl" 2>> "$OUT/run.err"
done
DCN_INT8_KERNEL=amx DCN_AMX_MIN_ROWS=1 dcn-bench run --model "$M" --int8 1 --batches 1,4,8,16 --threads 1 \
  --min-time 0.5 > "$OUT/int8-amx-min1.jsonl" 2>> "$OUT/run.err"
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, os
out = sys.argv[1]
def load(name):
    pts = {}
    try:
        for line in open(os.path.join(out, name)):
            p = json.loads(line)
            if p.get("kind") == "point":
                pts[(p["threads"], p["batch"])] = p
    except OSError:
        pass
    return pts
v, a, a1 = load("int8-avx512vnni.jsonl"), load("int8-amx.jsonl"), load("int8-amx-min1.jsonl")
print("| T | batch | avx512vnni samples/s | amx samples/s | amx/vnni | amx p50 ms | amx kernel |")
print("|---:|---:|---:|---:|---:|---:|---|")
for key in sorted(set(v) | set(a)):
    pv, pa = v.get(key), a.get(key)
    sv = pv["samples_per_s"] if pv else float("nan")
    sa = pa["samples_per_s"] if pa else float("nan")
    print(f"| {key[0]} | {key[1]} | {sv:,.0f} | {sa:,.0f} | {sa / sv:.2f} | "
          f"{pa['lat_ms_median'] if pa else float('nan'):.3f} | {pa.get('dot_kernel', '?') if pa else '-'} |")
print("AMX from 1 row (DCN_AMX_MIN_ROWS=1), T=1: " + ", ".join(
    f"batch {b}: {a1[(1, b)]['samples_per_s']:,.0f} vs vnni {v[(1, b)]['samples_per_s']:,.0f}" if (1, b) in a1 and (1, b) in v
    else f"batch {b}: {a1[(1, b)]['samples_per_s']:,.0f}" if (1, b) in a1 else f"batch {b}: -"
    for b in (1, 4, 8, 16)))
PY
exit 0
