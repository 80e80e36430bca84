#!/usr/bin/env bash
# docker-check.sh — builds the top-level Dockerfile with podman (offline, via
# deploy/container-check.sh), runs the image twice and checks it for real.
# `make docker-check` runs it; needs root on Debian 12 (see container-check.sh).
#
#   run 1, the image as shipped, hardened the way Kubernetes runs it
#          (--read-only root filesystem without tmpfs, --cap-drop=ALL,
#          no-new-privileges): ready within READY_TIMEOUT, deploy/smoke.py
#          (health, /v1/model, a real POST /rank, /metrics) on the default
#          model, image size <= MAX_IMAGE_BYTES, a non-root numeric user,
#          the HEALTHCHECK (the C probe) healthy, then `podman stop`: SIGTERM
#          must reach the server (exec-form ENTRYPOINT) and it must drain and
#          exit 0 well before the stop timeout.
#   run 2, model override: a host directory mounted read-only at /models/alt
#          and DCNSERVE_MODEL pointing into it; the smoke check must see
#          that model's name and rank with its feature names.
#   run 3, model repository: a host directory <name>/<version>/<file>.dcn
#          mounted read-only at /models/repo, DCNSERVE_MODEL_REPOSITORY
#          pointing at it and the image's DCNSERVE_MODEL emptied; the smoke
#          check must see the model under its directory's name.
#   run 4, deploy/compose/docker-compose.yml with podman-compose (installed
#          from Debian if missing): three replicas, nginx and Prometheus
#          built and started; deploy/smoke.py through the balancer (PORT+1),
#          /metrics not exposed there, and Prometheus (PORT+2) sees all three
#          replicas serving. Skip with COMPOSE=0. (It runs as the CHECK_CMD
#          of a plain container-check run, which hands it the podman setup.)
#
# Knobs: PORT (18080), ALT_MODEL (tests/golden/context_segments.dcn),
# MAX_IMAGE_BYTES (100000000), IMAGE (localhost/dcnserve:check), COMPOSE (1),
# and those of container-check.sh (WORK, STORAGE_DRIVER, READY_TIMEOUT...).
# Prints PASS/FAIL lines and a summary with the timings; exit 0 when all pass.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-/usr/bin/python3}
PORT=${PORT:-18080}
MAX_IMAGE_BYTES=${MAX_IMAGE_BYTES:-100000000}
ALT_MODEL=${ALT_MODEL:-$ROOT/tests/golden/context_segments.dcn}
export IMAGE=${IMAGE:-localhost/dcnserve:check}

# ---------------------------------------------------------------- inner checks
# Run by container-check.sh (CHECK_CMD) while the container is up; podman's
# configuration and CHECK_* come from its environment.
if [ "${1:-}" = inner-default ]; then
  fails=0
  pass() { echo "PASS: $*"; }
  fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
  "$PYTHON" "$HERE/smoke.py" "$CHECK_BASE_URL" --expect-model criteo-dcn --candidates 100 || fails=$((fails + 1))
  size=$(podman image inspect -f '{{.Size}}' "$CHECK_IMAGE")
  if [ "$size" -le "$MAX_IMAGE_BYTES" ]; then pass "image size $size bytes <= $MAX_IMAGE_BYTES"
  else fail "image size $size bytes > $MAX_IMAGE_BYTES"; fi
  user=$(podman image inspect -f '{{.Config.User}}' "$CHECK_IMAGE")
  uid=$(podman exec "$CHECK_CONTAINER" /usr/bin/id -u 2>/dev/null)
  if [ -n "$uid" ] && [ "$uid" != 0 ] && [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]]; then pass "non-root user $user (id -u: $uid)"
  else fail "user '$user', id -u '$uid' (want a numeric non-root user)"; fi
  ro=$(podman container inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$CHECK_CONTAINER")
  if [ "$ro" = true ] && ! podman exec "$CHECK_CONTAINER" /usr/bin/touch /tmp/x 2>/dev/null; then
    pass "read-only root filesystem (no tmpfs; /tmp not writable) and still serving"
  else fail "read-only root filesystem not in effect (ReadonlyRootfs=$ro)"; fi
  hc=$(podman image inspect -f '{{json .Config.Healthcheck}}' "$CHECK_IMAGE")
  if out=$(podman healthcheck run "$CHECK_CONTAINER" 2>&1); then pass "HEALTHCHECK healthy ($hc)"
  else fail "HEALTHCHECK: $out ($hc)"; fi
  t0=$(date +%s.%N)
  podman stop -t 20 "$CHECK_CONTAINER" >/dev/null 2>&1
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  code=$(podman container inspect -f '{{.State.ExitCode}}' "$CHECK_CONTAINER")
  logs=$(podman logs "$CHECK_CONTAINER" 2>&1)   # not piped into grep -q: SIGPIPE + pipefail
  if [ "$code" = 0 ] && [[ "$logs" == *'"msg":"draining'* ]]; then
    pass "SIGTERM drain: exit 0 after ${dt}s (drain delay 1 s, stop timeout 20 s)"
  else
    fail "SIGTERM drain: exit code $code after ${dt}s"; podman logs --tail 5 "$CHECK_CONTAINER" 2>&1
  fi
  exit $((fails > 0))
fi
if [ "${1:-}" = inner-alt ]; then
  exec "$PYTHON" "$HERE/smoke.py" "$CHECK_BASE_URL" --expect-model "$2" --candidates 20
fi
if [ "${1:-}" = inner-compose ]; then
  # The Compose stack, for real: three replicas, nginx, Prometheus.
  lb=$((PORT + 1)); prom=$((PORT + 2)); project=dcnserve-check
  command -v podman-compose >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman-compose >/dev/null 2>&1 \
    || { echo "FAIL: cannot install podman-compose"; exit 1; }
  export BUILDAH_FORMAT=docker LB_PORT=$lb PROMETHEUS_PORT=$prom
  pc() { podman-compose -p "$project" -f "$HERE/compose/docker-compose.yml" "$@"; }
  down() { pc down >"$CHECK_LOGS/compose-down.log" 2>&1; podman network rm -f "${project}_default" >/dev/null 2>&1; }
  trap down EXIT
  t0=$(date +%s)
  # the replicas run the image checked above; the balancer and Prometheus
  # are rebuilt (layer cache) so that edits to their configuration count
  podman tag "$CHECK_IMAGE" localhost/dcnserve:latest
  pc build lb prometheus >"$CHECK_LOGS/compose-build.log" 2>&1 \
    || { tail -20 "$CHECK_LOGS/compose-build.log"; echo "FAIL: compose build"; exit 1; }
  pc up -d >"$CHECK_LOGS/compose-up.log" 2>&1 || { tail -20 "$CHECK_LOGS/compose-up.log"; echo "FAIL: compose up"; exit 1; }
  for _ in $(seq 60); do
    curl -fsS -o /dev/null "http://127.0.0.1:$lb/v2/health/ready" 2>/dev/null && break; sleep 0.5
  done
  echo "PASS: compose up, ready through the balancer after $(( $(date +%s) - t0 ))s"
  fails=0
  "$PYTHON" "$HERE/smoke.py" "http://127.0.0.1:$lb" --expect-model criteo-dcn --candidates 50 --no-metrics || fails=1
  for _ in $(seq 30); do
    curl -fsS -o /dev/null -H 'Content-Type: application/json' -d '{"candidates":[{"id":1,"features":{"I1":3}}]}' \
      "http://127.0.0.1:$lb/rank" || fails=1
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$lb/metrics")
  [ "$code" = 404 ] && echo "PASS: /metrics is not exposed by the balancer (404)" \
    || { echo "FAIL: /metrics through the balancer -> $code"; fails=1; }
  # Prometheus scrapes every 15 s: wait for all three replicas to report rank requests.
  q='count(sum by (instance) (dcnserve_requests_total{handler="rank",code="200"}) > 0)'
  n=0
  for _ in $(seq 60); do
    n=$(curl -s -G "http://127.0.0.1:$prom/api/v1/query" --data-urlencode "query=$q" \
        | "$PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null)
    [ "${n:-0}" = 3 ] && break; sleep 1
  done
  if [ "${n:-0}" = 3 ]; then echo "PASS: Prometheus scraped all 3 replicas, each served rank requests (least_conn spread)"
  else echo "FAIL: Prometheus sees $n of 3 replicas serving rank requests"; fails=1; fi
  exit $fails
fi

# ---------------------------------------------------------------- driver
[ -f "$ALT_MODEL" ] || { echo "FAIL: no model at $ALT_MODEL (set ALT_MODEL)"; exit 2; }
alt_dir=$(cd "$(dirname "$ALT_MODEL")" && pwd)
alt_file=$(basename "$ALT_MODEL")
alt_name=$("$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1]); import dcnfile; print(dcnfile.load_dcn(sys.argv[2]).metadata["general.name"])' \
           "$ROOT/tools" "$ALT_MODEL" 2>/dev/null || echo "${alt_file%.dcn}")
HARDEN="--read-only --read-only-tmpfs=false --cap-drop=ALL --security-opt=no-new-privileges"
repo_dir=$(mktemp -d /tmp/docker-check-repo.XXXXXX)
trap 'rm -rf "$repo_dir"' EXIT
mkdir -p "$repo_dir/ranker/3" && cp "$ALT_MODEL" "$repo_dir/ranker/3/model.dcn"
chmod -R a+rX "$repo_dir"
summary=()
rc=0
T0=$(date +%s)

step() {  # name, then the environment for container-check.sh
  local name=$1 t r; shift
  t=$(date +%s)
  env "$@" bash "$HERE/container-check.sh" "$ROOT" /v2/health/ready "$PORT" 2> >(tee "/tmp/docker-check.$$.$name.err" >&2)
  r=$?
  summary+=("$name: $([ $r = 0 ] && echo PASS || echo FAIL) in $(( $(date +%s) - t ))s; $(grep -o -E 'build done in [0-9.]+s|image size [0-9]+ bytes|run-to-answer [0-9.]+s' "/tmp/docker-check.$$.$name.err" | paste -sd, -)")
  rm -f "/tmp/docker-check.$$.$name.err"
  [ $r = 0 ] || rc=1
}

step default BUILD_ARGS="--format docker" \
  RUN_ARGS="$HARDEN -e DCNSERVE_PORT=$PORT -e DCNSERVE_DRAIN_DELAY_MS=1000" \
  CHECK_CMD="bash '$HERE/docker-check.sh' inner-default"
# the image just built and checked: no second build
if [ $rc = 0 ]; then
  step model-override BUILD=0 \
    RUN_ARGS="$HARDEN -e DCNSERVE_PORT=$PORT -e DCNSERVE_DRAIN_DELAY_MS=500 -v $alt_dir:/models/alt:ro -e DCNSERVE_MODEL=/models/alt/$alt_file" \
    CHECK_CMD="bash '$HERE/docker-check.sh' inner-alt '$alt_name'"
else
  summary+=("model-override: SKIPPED (the default run failed)")
fi
if [ $rc = 0 ]; then
  step repository BUILD=0 \
    RUN_ARGS="$HARDEN -e DCNSERVE_PORT=$PORT -e DCNSERVE_DRAIN_DELAY_MS=500 -v $repo_dir:/models/repo:ro -e DCNSERVE_MODEL= -e DCNSERVE_MODEL_REPOSITORY=/models/repo" \
    CHECK_CMD="bash '$HERE/docker-check.sh' inner-alt ranker"
fi
if [ "${COMPOSE:-1}" = 1 ] && [ $rc = 0 ]; then
  step compose BUILD=0 RUN_ARGS="-e DCNSERVE_PORT=$PORT -e DCNSERVE_DRAIN_DELAY_MS=500" READY_TIMEOUT=30 \
    CHECK_CMD="PORT=$PORT bash '$HERE/docker-check.sh' inner-compose"
fi

echo "---- docker-check summary (total $(( $(date +%s) - T0 ))s)"
printf '%s\n' "${summary[@]}"
[ $rc = 0 ] && echo "PASS: docker-check" || echo "FAIL: docker-check"
exit $rc
