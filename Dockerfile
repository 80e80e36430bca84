# Dockerfile — dcnserve's image: a build stage with the compilers and -dev
# packages, a runtime stage on debian:bookworm-slim with only the three
# runtime libraries, the server, the probe, dcn-inspect and the default model.
#
#   docker build -t dcnserve .            (or: make docker; checked by make docker-check)
#   podman build --format docker -t dcnserve .   (OCI format would drop the HEALTHCHECK)
#   docker run --rm -p 8080:8080 --read-only dcnserve
#   docker run --rm -p 8080:8080 --read-only -v "$PWD/models:/models:ro" \
#       -e DCNSERVE_MODEL=/models/my-model.dcn dcnserve
#   docker run --rm -p 8080:8080 --read-only -v "$PWD/repo:/models/repo:ro" \
#       dcnserve --model-repository /models/repo   (repo/<name>/<version>/<file>.dcn)
#
# Every server option is a DCNSERVE_* variable (dcnserve --help). Portable:
# no -march=native; the engine picks its AVX-512/AVX2/scalar kernels at run
# time. The model lives in /models; mount your own directory there (read-only
# is enough) and point DCNSERVE_MODEL at the file, or mount a model
# repository and pass --model-repository (a flag beats the image's
# DCNSERVE_MODEL; with variables, set DCNSERVE_MODEL empty). Deploy a new
# model into a mounted directory by writing it elsewhere and renaming it into
# place (a repository picks new versions up by itself; a single file on
# SIGHUP or POST /admin/reload). A mapped file must never be truncated.

# ---------------------------------------------------------------- build
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make libmicrohttpd-dev libjansson-dev libuv1-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY model/ model/
COPY proto/ proto/
COPY server/ server/
COPY deploy/probe.c deploy/
RUN make -j"$(nproc)" build/release/dcnserve build/release/dcn-inspect \
 && cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -o build/release/dcnserve-probe deploy/probe.c \
 && strip build/release/dcnserve build/release/dcn-inspect build/release/dcnserve-probe

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="dcnserve" \
      org.opencontainers.image.description="Online ranking server for DCN-V2 recommendation models"
# Runtime libraries only; a fixed numeric user so that Kubernetes'
# runAsNonRoot can verify it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libmicrohttpd12 libjansson4 libuv1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 dcnserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin dcnserve
COPY --from=build /src/build/release/dcnserve /src/build/release/dcn-inspect \
     /src/build/release/dcnserve-probe /usr/local/bin/
COPY model/default/criteo-dcn.dcn /models/criteo-dcn.dcn
ENV DCNSERVE_MODEL=/models/criteo-dcn.dcn \
    DCNSERVE_HOST=0.0.0.0 \
    DCNSERVE_PORT=8080
USER 10001:10001
EXPOSE 8080
# dcnserve is PID 1 (exec form, no shell): SIGTERM reaches it and starts the
# drain (not ready, still serving, then waits for requests in flight).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/dcnserve-probe", "/v2/health/ready"]
ENTRYPOINT ["/usr/local/bin/dcnserve"]
