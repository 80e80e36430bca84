#!/usr/bin/env bash
# container-check.sh DOCKERFILE_DIR [HTTP_PATH] [PORT]
#
# dcnserve's container smoke tool (deploy/docker-check.sh drives it; `make
# docker-check`). Added for dcnserve: IMAGE, CHECK_CMD and the image size line.
#
# Builds the Dockerfile in DOCKERFILE_DIR with podman (Debian packages only, no
# Docker engine, no registry), runs the image, probes http://127.0.0.1:PORT/HTTP_PATH,
# prints PASS or FAIL, and always removes the container it started.
#
# Needs: root on Debian bookworm; Debian's package mirror as configured in
# /etc/apt (for apt-get install of podman/runc/debootstrap/curl on first use, for
# debootstrap of the base image, and for `RUN apt-get ...` inside the build).
# No Docker Hub: debian:bookworm (and :12) is made locally with debootstrap
# --variant=minbase the first time and cached; debian:bookworm-slim (and
# :12-slim) from it the way Debian's image build slims it (see slimify).
#
# Arguments:
#   DOCKERFILE_DIR  build context; Dockerfile (or Containerfile) inside it
#   HTTP_PATH       path to GET, default /
#   PORT            port on 127.0.0.1 to probe, default 8080
#
# Environment knobs (all optional):
#   WORK=/tmp/container-test   all state: podman storage, config, base rootfs cache
#   DOCKERFILE=<dir>/Dockerfile
#   NETWORK=host               host: container shares the host network, so the
#                              daemon must itself listen on PORT;
#                              bridge: publish 127.0.0.1:PORT -> CONTAINER_PORT
#   CONTAINER_PORT=$PORT       container-side port for NETWORK=bridge
#   RUN_ARGS=""                extra `podman run` args, e.g. "-e PORT=18080"
#   BUILD_ARGS=""              extra `podman build` args, e.g. "--build-arg X=1"
#   STORAGE_DRIVER=auto        auto (overlay if the kernel can, else vfs) | overlay | vfs
#   ISOLATION=chroot           chroot | oci   (how build RUN steps are isolated)
#   READY_TIMEOUT=30           seconds to wait for the expected HTTP answer
#   EXPECT_STATUS=2xx          2xx or an exact code such as 200 or 204
#   CLEAN_IMAGE=0              1: also remove the built image afterwards
#   IMAGE=localhost/container-check-<dir>:latest   tag of the built image
#   BUILD=1                    0: run the existing IMAGE without building it
#   CHECK_CMD=""               after the probe PASSes, run this shell command with
#                              the container still up; env CHECK_BASE_URL,
#                              CHECK_CONTAINER, CHECK_IMAGE, CHECK_LOGS (and the
#                              podman configuration) are exported to it; its
#                              failure turns PASS into FAIL
#   MIRROR=<from /etc/apt>     Debian mirror for debootstrap
#
# Exit status: 0 PASS, 1 FAIL, 2 usage or setup error.

set -uo pipefail

usage() { sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac

CTX=$(cd "$1" 2>/dev/null && pwd) || { echo "FAIL: no such directory: $1"; exit 2; }
HPATH=${2:-/}
case "$HPATH" in /*) ;; *) HPATH="/$HPATH" ;; esac
PORT=${3:-8080}
case "$PORT" in ''|*[!0-9]*) echo "FAIL: port must be a number: $PORT"; exit 2 ;; esac

WORK=${WORK:-/tmp/container-test}
NETWORK=${NETWORK:-host}
CONTAINER_PORT=${CONTAINER_PORT:-$PORT}
RUN_ARGS=${RUN_ARGS:-}
BUILD_ARGS=${BUILD_ARGS:-}
STORAGE_DRIVER=${STORAGE_DRIVER:-auto}
ISOLATION=${ISOLATION:-chroot}
READY_TIMEOUT=${READY_TIMEOUT:-30}
EXPECT_STATUS=${EXPECT_STATUS:-2xx}
CLEAN_IMAGE=${CLEAN_IMAGE:-0}

if [ -z "${DOCKERFILE:-}" ]; then
  if [ -f "$CTX/Dockerfile" ]; then DOCKERFILE=$CTX/Dockerfile
  elif [ -f "$CTX/Containerfile" ]; then DOCKERFILE=$CTX/Containerfile
  else echo "FAIL: no Dockerfile or Containerfile in $CTX"; exit 2; fi
fi
[ -f "$DOCKERFILE" ] || { echo "FAIL: no such file: $DOCKERFILE"; exit 2; }

log() { printf '[container-check] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || { echo "FAIL: must run as root (rootful podman)"; exit 2; }
T_ALL=$(now)
mkdir -p "$WORK" || { echo "FAIL: cannot create $WORK"; exit 2; }

# ---------------------------------------------------------------- packages
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  T=$(now); log "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y "${need[@]}" >"$WORK/apt-install.log" 2>&1; then
    apt-get update >>"$WORK/apt-install.log" 2>&1
    apt-get install -y "${need[@]}" >>"$WORK/apt-install.log" 2>&1 \
      || { tail -20 "$WORK/apt-install.log"; echo "FAIL: apt-get install ${need[*]}"; exit 2; }
  fi
  log "packages installed in $(since "$T")s"
fi

# ---------------------------------------------------------------- podman config
# Everything lives under $WORK; nothing is written to /etc/containers or /var/lib/containers.
if [ "$STORAGE_DRIVER" = auto ]; then
  p="$WORK/.overlay-probe"; rm -rf "$p"; mkdir -p "$p/l" "$p/u" "$p/w" "$p/m"
  if mount -t overlay overlay -o "lowerdir=$p/l,upperdir=$p/u,workdir=$p/w" "$p/m" 2>/dev/null; then
    umount "$p/m"; STORAGE_DRIVER=overlay
  else
    STORAGE_DRIVER=vfs
  fi
  rm -rf "$p"
fi
CONF=$WORK/conf; STORE=$WORK/storage-$STORAGE_DRIVER
mkdir -p "$CONF" "$STORE/root" "$STORE/run" "$WORK/tmp" "$WORK/libpod-tmp"

cat >"$CONF/storage-$STORAGE_DRIVER.conf" <<EOF
[storage]
driver = "$STORAGE_DRIVER"
graphroot = "$STORE/root"
runroot = "$STORE/run"
EOF
[ "$STORAGE_DRIVER" = overlay ] && printf '[storage.options.overlay]\nmountopt = "nodev"\n' >>"$CONF/storage-$STORAGE_DRIVER.conf"

# Without CAP_SYS_RESOURCE (as in this sandbox) the runtime cannot raise rlimits,
# and podman's default nofile/nproc of 1048576 makes every `podman run` fail with
# "setrlimit RLIMIT_NOFILE: Operation not permitted". Podman also lowers its own
# RLIMIT_NPROC to 32768 at startup, so the container may not ask for more.
hn=$(ulimit -Hn); [ "$hn" = unlimited ] && hn=1048576
hu=$(ulimit -Hu); [ "$hu" = unlimited ] && hu=32768
[ "$hu" -gt 32768 ] && hu=32768
# crun 1.8 (Debian's default runtime) refuses hybrid cgroup v1/v2 hosts
# ("cgroups in hybrid mode not supported"); runc copes with them.
cat >"$CONF/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$hn:$hn", "nproc=$hu:$hu"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/libpod-tmp"
EOF
# No search registries: a missing base image is an error, never a pull.
cat >"$CONF/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF
export CONTAINERS_STORAGE_CONF="$CONF/storage-$STORAGE_DRIVER.conf"
export CONTAINERS_CONF="$CONF/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$CONF/registries.conf"
export TMPDIR="$WORK/tmp"

# ---------------------------------------------------------------- base image
BASE=docker.io/library/debian:bookworm-slim
BASE_TAGS="docker.io/library/debian:12-slim localhost/debian:bookworm-slim"
FULL=docker.io/library/debian:bookworm
FULL_TAGS="docker.io/library/debian:12"
SLIM_LABEL=io.dcnserve.base-variant

detect_mirror() {
  local m=""
  if [ -r /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb" { for (i=2;i<NF;i++) if ($i ~ /^(https?|file):/ && $(i+1)=="bookworm") { print $i; exit } }' /etc/apt/sources.list)
  fi
  if [ -z "$m" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      m=$(awk 'BEGIN { RS="" } /Suites:[^\n]*[ \t]bookworm([ \t\n]|$)/ { if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s=substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' "$f")
      [ -n "$m" ] && break
    done
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

make_base_tar() {  # debootstrap a minbase bookworm, give it this host's apt sources
  local tarball=$1 root="$WORK/base/rootfs" mirror=${MIRROR:-$(detect_mirror)} f kr ok
  rm -rf "$root"; mkdir -p "$WORK/base"
  local T; T=$(now); log "debootstrap --variant=minbase bookworm from $mirror (about 70 s)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$WORK/base/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/base/debootstrap.log"; return 1; }
  log "debootstrap done in $(since "$T")s"
  # apt sources as on this host (only Debian entries whose keyrings exist in the rootfs)
  rm -f "$root/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    if [ ! -s "$f" ] || ! grep -q '/debian' "$f"; then continue; fi
    ok=1
    for kr in $(grep -o -i -E 'signed-by[:=][[:space:]]*[^] ]+' "$f" | sed -E 's/^[^:=]*[:=][[:space:]]*//'); do
      [ -e "$root$kr" ] || ok=0
    done
    [ $ok = 1 ] || continue
    case "$f" in
      /etc/apt/sources.list) cp "$f" "$root/etc/apt/sources.list" ;;
      *) cp "$f" "$root/etc/apt/sources.list.d/" ;;
    esac
  done
  if [ ! -s "$root/etc/apt/sources.list" ] \
     && [ -z "$(find "$root/etc/apt/sources.list.d" -name '*.list' -o -name '*.sources' 2>/dev/null)" ]; then
    echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
  fi
  # host apt settings that concern fetching (proxy, Valid-Until, ...) and the
  # docker-* apt settings of the official image, where this host has them
  for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] || continue
    case "$(basename "$f")" in
      docker-*) cp "$f" "$root/etc/apt/apt.conf.d/" ;;
      *) grep -q 'Acquire::' "$f" && ! grep -q -i 'invoke' "$f" && cp "$f" "$root/etc/apt/apt.conf.d/" ;;
    esac
  done
  chroot "$root" apt-get clean >/dev/null 2>&1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
  : >"$root/etc/resolv.conf"; echo localhost >"$root/etc/hostname"
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball" && rm -rf "$root"
}

# The slim variant as Debian's image build makes it (debuerreotype's slimify):
# no docs but the copyrights, no man/info pages, no locales, and a dpkg
# configuration that keeps later installs slim too; plus the docker-* apt
# settings of the official images (no package caches, no translations).
# Without it the "slim" base would be a 120 MB minbase, 45 MB over the real one.
slimify() {  # rootfs directory
  local root=$1
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
  printf '%s\n' '# slim image: see container-check.sh' \
    'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/lintian/overrides/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    'path-exclude /usr/share/man/*' >"$root/etc/dpkg/dpkg.cfg.d/docker-slim"
  printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    >"$root/etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null
  find "$root/usr/share/doc" -mindepth 1 -depth -type d -empty -delete 2>/dev/null
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null
  rm -rf "$root"/usr/share/groff/* "$root"/usr/share/info/* "$root"/usr/share/linda/* \
         "$root"/usr/share/lintian/overrides/* "$root"/usr/share/man/*
}

TARBALL=$WORK/base/debian-bookworm-minbase.tar
SLIM_TARBALL=$WORK/base/debian-bookworm-slim.tar
if ! podman image exists "$FULL"; then
  T=$(now)
  [ -s "$TARBALL" ] || make_base_tar "$TARBALL" || { echo "FAIL: could not debootstrap the base image"; exit 2; }
  podman import -q --change 'CMD ["bash"]' "$TARBALL" "$FULL" >/dev/null \
    || { echo "FAIL: podman import of the base image"; exit 2; }
  for t in $FULL_TAGS; do podman tag "$FULL" "$t"; done
  log "base image $FULL ready in $(since "$T")s"
fi
# (an earlier version of this tool tagged the minbase image as -slim too)
if [ "$(podman image inspect -f "{{index .Config.Labels \"$SLIM_LABEL\"}}" "$BASE" 2>/dev/null)" != slim ]; then
  T=$(now)
  if [ ! -s "$SLIM_TARBALL" ]; then
    [ -s "$TARBALL" ] || make_base_tar "$TARBALL" || { echo "FAIL: could not debootstrap the base image"; exit 2; }
    sroot=$WORK/base/slim; rm -rf "$sroot"; mkdir -p "$sroot"
    tar -C "$sroot" --numeric-owner -xf "$TARBALL" && slimify "$sroot" \
      && tar -C "$sroot" --numeric-owner -cf "$SLIM_TARBALL.tmp" . && mv "$SLIM_TARBALL.tmp" "$SLIM_TARBALL" \
      || { echo "FAIL: could not make the slim base image"; exit 2; }
    rm -rf "$sroot"
  fi
  podman import -q --change 'CMD ["bash"]' --change "LABEL $SLIM_LABEL=slim" "$SLIM_TARBALL" "$BASE" >/dev/null \
    || { echo "FAIL: podman import of the slim base image"; exit 2; }
  for t in $BASE_TAGS; do podman tag "$BASE" "$t"; done
  log "base image $BASE ($(podman image inspect -f '{{.Size}}' "$BASE") bytes) ready in $(since "$T")s"
fi
# Other base images cannot be pulled: say so before the build does.
while read -r ref; do
  [ -n "$ref" ] || continue
  case "$ref" in scratch|*'$'*) continue ;; esac
  grep -q -i -E "^[[:space:]]*FROM[[:space:]].*[[:space:]]AS[[:space:]]+${ref}[[:space:]]*$" "$DOCKERFILE" && continue
  podman image exists "$ref" || log "WARNING: base image '$ref' is not in local storage and cannot be pulled here"
done < <(awk 'toupper($1)=="FROM" { for (i=2;i<=NF;i++) if ($i !~ /^--/) { print $i; break } }' "$DOCKERFILE")

# ---------------------------------------------------------------- build
slug=$(basename "$CTX" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9._-' '-' | sed 's/^[-.]*//; s/-*$//')
IMAGE=${IMAGE:-localhost/container-check-${slug:-app}:latest}
NAME=container-check-${slug:-app}-$$
LOGS=$WORK/logs/${slug:-app}; mkdir -p "$LOGS"

# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  # stop first: without systemd, `rm -f` of a running container that has a
  # HEALTHCHECK fails on the health timer and leaves the container behind
  podman stop -t 10 "$NAME" >/dev/null 2>&1
  podman rm -f "$NAME" >/dev/null 2>&1
  if [ "$CLEAN_IMAGE" = 1 ]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
    podman image prune -f >/dev/null 2>&1
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ "${BUILD:-1}" = 0 ]; then
  podman image exists "$IMAGE" || { echo "FAIL: BUILD=0 but no image $IMAGE"; exit 2; }
  log "using the existing $IMAGE (BUILD=0)"
else
T=$(now); log "building $IMAGE from $DOCKERFILE (driver $STORAGE_DRIVER, isolation $ISOLATION)"
# shellcheck disable=SC2086
if ! podman build --pull=never --network=host --isolation="$ISOLATION" --force-rm --layers \
     -f "$DOCKERFILE" -t "$IMAGE" $BUILD_ARGS "$CTX" >"$LOGS/build.log" 2>&1; then
  tail -30 "$LOGS/build.log"
  echo "FAIL: build failed after $(since "$T")s (full log: $LOGS/build.log)"
  exit 1
fi
log "build done in $(since "$T")s (log: $LOGS/build.log)"
log "image size $(podman image inspect -f '{{.Size}}' "$IMAGE" 2>/dev/null) bytes"
fi

# ---------------------------------------------------------------- run
port_busy() {
  if command -v ss >/dev/null; then ss -H -ltn "sport = :$1" 2>/dev/null | grep -q .
  else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; fi
}
if port_busy "$PORT"; then
  echo "FAIL: something already listens on port $PORT; pick another port"
  exit 1
fi
case "$NETWORK" in
  host) NETARGS=(--network host) ;;
  bridge) NETARGS=(--network bridge -p "127.0.0.1:$PORT:$CONTAINER_PORT") ;;
  *) echo "FAIL: NETWORK must be host or bridge"; exit 2 ;;
esac
T=$(now)
# shellcheck disable=SC2086
if ! podman run -d --name "$NAME" "${NETARGS[@]}" $RUN_ARGS "$IMAGE" >"$LOGS/run.log" 2>&1; then
  cat "$LOGS/run.log"
  echo "FAIL: podman run failed"
  exit 1
fi

# ---------------------------------------------------------------- probe
URL="http://127.0.0.1:$PORT$HPATH"
matches() {
  case "$EXPECT_STATUS" in
    2xx) [ "${1:0:1}" = 2 ] ;;
    *) [ "$1" = "$EXPECT_STATUS" ] ;;
  esac
}
code=000; result=FAIL; reason=""
deadline=$(( $(date +%s) + READY_TIMEOUT ))
while :; do
  if [ "$(podman container inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; then
    reason="container exited ($(podman container inspect -f 'exit code {{.State.ExitCode}}' "$NAME" 2>/dev/null))"
    break
  fi
  code=$(curl -sS -o "$LOGS/body" -w '%{http_code}' --max-time 3 "$URL" 2>/dev/null) || code=${code:-000}
  if matches "$code"; then result=PASS; break; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then reason="no $EXPECT_STATUS answer within ${READY_TIMEOUT}s (last status $code)"; break; fi
  sleep 0.3
done
log "run-to-answer $(since "$T")s"
if [ "$result" = PASS ] && [ -n "${CHECK_CMD:-}" ]; then
  export CHECK_BASE_URL="http://127.0.0.1:$PORT" CHECK_CONTAINER="$NAME" CHECK_IMAGE="$IMAGE" CHECK_LOGS="$LOGS"
  if ! bash -c "$CHECK_CMD"; then result=FAIL; reason="CHECK_CMD failed: $CHECK_CMD"; fi
fi
if [ "$result" = PASS ]; then
  echo "PASS: GET $URL -> $code ($(head -c 80 "$LOGS/body" | tr -d '\r' | tr '\n' ' ')) [image $IMAGE, total $(since "$T_ALL")s]"
  exit 0
fi
echo "--- container logs (last 30 lines) ---"
podman logs --tail 30 "$NAME" 2>&1
echo "FAIL: GET $URL: $reason"
exit 1
