#!/bin/sh
# device_amx.sh — the one prepared run that measures the AMX INT8 kernel
# (model/kern_amx.c) on a CPU that has AMX: the lent 16-core Xeon of the
# tool library's `device` entry, or any Sapphire Rapids or later. Built and
# checked here only through the emulated tiles; this run says whether the
# native tiles agree and whether they pay.
#
# Here (Debian, after `make all build/release/dcn-bench
# build/release/tests/model/test_kernels`):
#   ../shared/tools/device-pack.sh .device-pack build/release/dcn-bench \
#       build/release/tests/model/test_kernels
# There (one call; carry .device-pack; about 5 minutes):
#   . .device-pack/activate && sh bench/device_amx.sh
# Elsewhere, with the binaries on PATH: sh bench/device_amx.sh
#
# Writes under $OUT (default /tmp/dcn-amx): cpu.txt, models.json,
# test_kernels.txt, dump-*.json, int8-*.jsonl, summary.txt; prints the
# summary. Steps, each independent of the last's success:
#   1. the CPU's AMX flags and whether Linux grants the tile state;
#   2. dlrmv2 generated (bench/make_models.py, numpy; 1.3 GB of tables);
#   3. the kernel tests on the native tiles (every INT8 kernel against the
#      scalar reference, bit for bit);
#   4. the scores of 100 dlrmv2 rows through AMX and through AVX512-VNNI,
#      which must be byte-identical (both equal the reference);
#   5. samples/s of both kernels, dlrmv2 --int8 1, batches 1-1024, 1 and
#      all threads; AMX once more on tiles from 1 row (DCN_AMX_MIN_ROWS=1)
#      to choose the threshold below which the VNNI kernel serves.
# What to do with the figures: bench/README.md, "AMX".
set -u
OUT=${OUT:-/tmp/dcn-amx}
MODELS=${MODELS:-/tmp/dcn-models}
THREADS=${THREADS:-1,$(nproc)}
mkdir -p "$OUT" "$MODELS"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

say "== 1. CPU"
lscpu > "$OUT/cpu.txt" 2>&1
say "model: $(grep -m1 'Model name' "$OUT/cpu.txt" | sed 's/.*: *//'); cores: $(nproc)"
say "amx flags: $(grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"

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
