#!/bin/sh
# run.sh — runs libFuzzer targets for a bounded time each and prints one
# summary line per target: executions, coverage (edges), features, corpus
# size, crashes. Used by `make fuzz` (long) and `make fuzz-ci` (a minute).
#
# Usage: tests/fuzz/run.sh BIN_DIR WORK_DIR SECONDS TARGET...
# FUZZ_FLAGS adds libFuzzer flags: CI passes a fixed -seed and -runs, so a
# CI run repeats exactly what passed before it was submitted (a crash that
# a longer `make fuzz` finds is fixed, then kept under crashes/).
# A target T is BIN_DIR/fuzz_T, seeded from tests/fuzz/corpus/T (read only;
# the model target also from tests/golden) and tests/fuzz/crashes/T; new
# inputs go to WORK_DIR/corpus/T, crashes to WORK_DIR/crashes/T/, the log to
# WORK_DIR/T.log. Exits 1 if any target crashed (copy the crash file into
# tests/fuzz/crashes/T/ once fixed: it becomes a regression test).
set -u
bin=$1 work=$2 secs=$3
shift 3
status=0
summary=""
for t in "$@"; do
  mkdir -p "$work/corpus/$t" "$work/crashes/$t" "tests/fuzz/crashes/$t"
  seeds="tests/fuzz/corpus/$t tests/fuzz/crashes/$t"
  [ "$t" = model ] && seeds="$seeds tests/golden"
  dict=""
  [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
  echo "== fuzz_$t for ${secs}s (log: $work/$t.log)"
  # rss_limit: hostile model files may ask for large repacked weights; a
  # refused allocation is fine, unbounded growth is a bug.
  "$bin/fuzz_$t" -max_total_time="$secs" ${FUZZ_FLAGS:-} -print_final_stats=1 -rss_limit_mb=2048 \
    -timeout=10 $dict -artifact_prefix="$work/crashes/$t/" \
    "$work/corpus/$t" $seeds >"$work/$t.log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  corp=$(ls "$work/corpus/$t" | wc -l)
  crashes=$(ls "$work/crashes/$t" | wc -l)
  line=$(printf '%-8s %6ss %12s execs  cov %6s  ft %6s  corpus %6s  crashes %s' \
    "$t" "$secs" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corp" "$crashes")
  summary="$summary$line
"
  if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    echo "fuzz_$t failed (exit $rc); tail of its log:"
    tail -30 "$work/$t.log"
  fi
done
echo "== fuzz summary"
printf '%s' "$summary"
exit $status
