# dcnserve — plain Makefile. Objects under build/ (build/asan, build/tsan for
# sanitizer builds). `make help` lists the targets.
#
#   make            build the library, the server and the tools
#   make run        install missing build deps (as root), build, serve the default model
#   make test       build, then every test (unit, golden parity, integration)
#   make check      the unit and integration tests under ASan+UBSan, threaded ones under TSan
#   make bench      engine benchmark against ONNX Runtime (bench/README.md)
#   make load       server load benchmark with wrk (deploy/load/run.py)

CC       ?= cc
PYTHON   ?= /usr/bin/python3
SANITIZER ?=
PORT     ?= 8080
MODEL    ?= model/default/criteo-dcn.dcn

ifeq ($(SANITIZER),address)
  BUILD  := build/asan
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SANITIZER),thread)
  BUILD  := build/tsan
  SANFLAGS := -fsanitize=thread
else
  BUILD  := build/release
  SANFLAGS :=
endif

OPT      ?= -O2
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -fno-strict-aliasing $(SANFLAGS) -MMD -MP -I.
LDFLAGS  += $(SANFLAGS)
LDLIBS   += -lm -lpthread

# Debian packages the build and the tests need (checked with dpkg).
DEPS_PKGS := build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev \
             libcriterion-dev libsimde-dev python3 python3-numpy python3-torch python3-jsonschema wrk curl

# ---------------------------------------------------------------- library
MODEL_SRC := model/dcn.c model/load.c model/idmap.c model/forward.c model/gguf.c model/kernels.c model/kern_scalar.c model/team.c \
             model/kern_avx2.c model/kern_avx512.c model/kern_avxvnni.c model/kern_vnni512.c \
             model/kern_bf16_fma.c model/kern_bf16_512.c model/kern_amx.c
MODEL_OBJ := $(MODEL_SRC:%.c=$(BUILD)/%.o)
LIBDCN    := $(BUILD)/libdcn.a

# Each instruction set in its own file with its own flags (chosen at run
# time): KF_<file>, for this build and the fuzz build alike.
KF_AVX2      := -mavx2 -mfma -mf16c
KF_AVX512    := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
KF_kern_avx2     := $(KF_AVX2)
KF_kern_avx512   := $(KF_AVX512) -mavx512bf16
KF_kern_avxvnni  := $(KF_AVX2) -mavxvnni
KF_kern_vnni512  := $(KF_AVX512) -mavx512vnni
KF_kern_bf16_fma := $(KF_AVX2)
KF_kern_bf16_512 := $(KF_AVX512) -mavx512bf16
KF_kern_amx      := $(KF_AVX512) -mavx512vnni -mamx-tile -mamx-int8
$(BUILD)/model/%.o: KFLAGS = $(KF_$(notdir $*))

$(LIBDCN): $(MODEL_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

INSPECT := $(BUILD)/dcn-inspect
$(INSPECT): $(BUILD)/model/inspect.o $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---------------------------------------------------------------- server
SERVER_SRC := $(wildcard server/*.c) $(wildcard proto/*.c)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o)
SERVER_MAIN := $(BUILD)/server/main.o
SERVER_LIBOBJ := $(filter-out $(SERVER_MAIN),$(SERVER_OBJ))
DCNSERVE := $(BUILD)/dcnserve
SERVER_LIBS := -lmicrohttpd -ljansson -luv

$(DCNSERVE): $(SERVER_OBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS) $(LDLIBS)

# ---------------------------------------------------------------- tests
# One Criterion binary per test file; tests/<module>/test_*.c mirrors the tree.
TEST_SRC := $(wildcard tests/model/test_*.c) $(wildcard tests/proto/test_*.c) $(wildcard tests/server/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# Stress programs of the threaded code (own main, no Criterion: Criterion
# cannot start under TSan here); `make unit` runs them in every build and
# `make check` once more under TSan, with the integration tests against a
# TSan server binary.
STRESS_SRC := $(wildcard tests/model/stress_*.c) $(wildcard tests/server/stress_*.c)
STRESS_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(STRESS_SRC))
TSAN_TESTS := $(STRESS_SRC)
TSAN_PYTESTS := test_server. test_lifecycle. test_golden_http. test_loops. test_repository. test_status_page.

# Emulated kernel sets (test binaries only): each SIMD file whose
# instructions not every x86-64 CPU has is compiled a second time against
# SIMDe (tests/lib/simde_x86.h), so the kernel and parity tests run its code
# on any machine with AVX2 (kernels.h: kern_available). AVX2 + FMA, which
# every machine of this project has, keeps SIMDe's 512-bit FMA fused (two
# 256-bit halves), as the real instruction is: unfused, the emulated set
# would round differently from the one it stands in for.
# The AMX kernel's tile instructions are emulated in C (tests/lib/amx_emu.h).
EMU_SRC := model/kern_avx512.c model/kern_avxvnni.c model/kern_vnni512.c model/kern_bf16_512.c model/kern_amx.c
EMU_OBJ := $(EMU_SRC:model/%.c=$(BUILD)/tests/emu/%.o)
$(BUILD)/tests/emu/kern_amx.o: EMUFLAGS := -include tests/lib/amx_emu.h
$(BUILD)/tests/emu/%.o: model/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -mavx2 -mfma -mf16c -DKERN_EMULATED -include tests/lib/simde_x86.h $(EMUFLAGS) -c -o $@ $<

$(BUILD)/tests/model/%: $(BUILD)/tests/model/%.o $(EMU_OBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion -ljansson $(LDLIBS)
$(BUILD)/tests/proto/%: $(BUILD)/tests/proto/%.o $(SERVER_LIBOBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(SERVER_LIBS) $(LDLIBS)
$(BUILD)/tests/server/%: $(BUILD)/tests/server/%.o $(SERVER_LIBOBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(SERVER_LIBS) $(LDLIBS)
$(BUILD)/tests/server/stress_%: $(BUILD)/tests/server/stress_%.o $(SERVER_LIBOBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS) $(LDLIBS)
$(BUILD)/tests/model/stress_%: $(BUILD)/tests/model/stress_%.o $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---------------------------------------------------------------- bench
# bench/run.py drives it (bench/README.md); `make bench BENCH_ARGS=--quick`
# is a short smoke run.
BENCH := $(BUILD)/dcn-bench
BENCH_ARGS ?=
$(BENCH): $(BUILD)/bench/dcn_bench.o $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---------------------------------------------------------------- rules
$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(KFLAGS) -c -o $@ $<

.PHONY: all deps test-deps run test unit pytest check bench load golden clean help
.SECONDARY:
.DEFAULT_GOAL := all

all: $(LIBDCN) $(INSPECT) $(DCNSERVE)

# Installs what is missing when run as root, else prints the apt-get line.
# test-deps: what only the tests need (headless Chromium renders the status
# page), kept out of `make run`.
TEST_PKGS := chromium
test-deps: PKGS = $(TEST_PKGS)
deps: PKGS = $(DEPS_PKGS)
deps test-deps:
	@missing=""; for p in $(PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing packages; run:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

run: deps all
	$(DCNSERVE) --model $(MODEL) --port $(PORT)

# The golden parity test runs once more on the scalar kernels (the oracle),
# once on the AVX-512 set (native, or emulated where the CPU lacks it: the
# kernel tests print which), once on each VNNI INT8 kernel (AVX-VNNI under
# the avx2 set, AVX512-VNNI under avx512), once on AMX's tiles (emulated
# where the CPU lacks them; every row count on tiles), and once with small
# row chunks.
unit: $(TEST_BIN) $(STRESS_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; $$t --jobs 2; done; \
	for k in scalar avx512; do echo "== $(BUILD)/tests/model/test_golden (DCN_KERNELS=$$k)"; \
	  DCN_KERNELS=$$k $(BUILD)/tests/model/test_golden --jobs 2; done; \
	for k in avx2:avxvnni avx512:avx512vnni; do \
	  echo "== $(BUILD)/tests/model/test_golden (DCN_KERNELS=$${k%:*} DCN_INT8_KERNEL=$${k#*:})"; \
	  DCN_KERNELS=$${k%:*} DCN_INT8_KERNEL=$${k#*:} $(BUILD)/tests/model/test_golden --jobs 2; done; \
	echo "== $(BUILD)/tests/model/test_golden (DCN_KERNELS=avx512 DCN_INT8_KERNEL=amx DCN_AMX_MIN_ROWS=1)"; \
	DCN_KERNELS=avx512 DCN_INT8_KERNEL=amx DCN_AMX_MIN_ROWS=1 $(BUILD)/tests/model/test_golden --jobs 2; \
	echo "== $(BUILD)/tests/model/test_golden (DCN_CHUNK_ROWS=7: chunk edges inside segments)"; \
	DCN_CHUNK_ROWS=7 $(BUILD)/tests/model/test_golden --jobs 2; \
	echo "== $(BUILD)/tests/model/test_golden (DCN_TEST_TEAM=2 DCN_TEAM_MIN_BYTES=0: every layer split as planned)"; \
	DCN_TEST_TEAM=2 DCN_TEAM_MIN_BYTES=0 $(BUILD)/tests/model/test_golden --jobs 2; \
	echo "== $(BUILD)/tests/model/test_golden (DCN_TEST_TEAM=3 DCN_TEAM_GRID=2x2: rows and columns)"; \
	DCN_TEST_TEAM=3 DCN_TEAM_GRID=2x2 $(BUILD)/tests/model/test_golden --jobs 2; \
	echo "== $(BUILD)/tests/model/test_team (DCN_KERNELS=scalar)"; \
	DCN_KERNELS=scalar $(BUILD)/tests/model/test_team --jobs 2; \
	echo "== $(BUILD)/tests/model/test_team (DCN_KERNELS=avx512 DCN_INT8_KERNEL=avx512vnni: column shares of the VNNI tiles)"; \
	DCN_KERNELS=avx512 DCN_INT8_KERNEL=avx512vnni $(BUILD)/tests/model/test_team --jobs 2; \
	echo "== $(BUILD)/tests/model/test_team (DCN_KERNELS=avx512 DCN_INT8_KERNEL=amx DCN_AMX_MIN_ROWS=1: column shares of the AMX tiles)"; \
	DCN_KERNELS=avx512 DCN_INT8_KERNEL=amx DCN_AMX_MIN_ROWS=1 $(BUILD)/tests/model/test_team --jobs 2; \
	for t in $(STRESS_BIN); do echo "== $$t"; $$t; done

pytest: all
	DCNSERVE=$(DCNSERVE) DCN_INSPECT=$(INSPECT) $(PYTHON) tests/run_py.py

test: deps test-deps all unit fuzz-replay pytest

check: deps test-deps
	$(MAKE) SANITIZER=address all unit fuzz-replay
	$(MAKE) SANITIZER=address pytest
	$(if $(TSAN_TESTS),$(MAKE) SANITIZER=thread tsan-unit)

# The stress programs, then the integration tests against the TSan server
# (which fail on any sanitizer report in the server's output).
tsan-unit: $(TSAN_TESTS:tests/%.c=$(BUILD)/tests/%) $(DCNSERVE)
	@set -e; for t in $(filter-out $(DCNSERVE),$^); do echo "== $$t (tsan)"; \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $$t; done
	TSAN_OPTIONS="second_deadlock_stack=1" DCNSERVE=$(DCNSERVE) $(PYTHON) tests/run_py.py $(TSAN_PYTESTS)

# ONNX Runtime's INT8 graph is written with the onnx package (bench only).
bench: deps $(BENCH)
	@$(MAKE) --no-print-directory deps DEPS_PKGS=python3-onnx
	$(PYTHON) bench/run.py --bench $(BENCH) $(BENCH_ARGS)

# Load benchmark of the server (figures, not tests): wrk + deploy/load/rank.lua
# at 1, 10, 100 and 1,000 candidates per request, closed loop then paced.
LOAD_DURATION ?= 5
LOAD_CONNS    ?= 8
DECODE_BENCH := $(BUILD)/decode-bench
$(DECODE_BENCH): $(BUILD)/deploy/load/decode_bench.o $(SERVER_LIBOBJ) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS) $(LDLIBS)
# LOAD_ARGS="--ids random --engine-bench build/release/dcn-bench" compares with
# the engine alone on dcn-bench-like rows (the issue-7 ratio; see run.py).
LOAD_ARGS ?=
load: deps all $(DECODE_BENCH) $(BENCH)
	$(PYTHON) deploy/load/run.py --server $(DCNSERVE) --model $(MODEL) \
	  --duration $(LOAD_DURATION) --connections $(LOAD_CONNS) --decode-bench $(DECODE_BENCH) $(LOAD_ARGS)

golden:
	$(PYTHON) tests/ref/gen_golden.py --out tests/golden

clean:
	rm -rf build

help:
	@sed -n '1,12p' Makefile

# ---------------------------------------------------------------- hardening
# Fuzzing (tests/fuzz), soak (deploy/soak); figures in RELIABILITY.md.
#   make fuzz         each libFuzzer target FUZZ_SECONDS (300) s; prints executions and coverage
#   make fuzz-ci      the replay, then each target FUZZ_CI_SECONDS (60) s
#   make fuzz-replay  every committed corpus and crash file through each target, normal build
#   make soak         10 minutes of mixed load: RSS, fds and p99 every 30 s
#   make soak-ci      the same for 60 s; fails if RSS or fds grow past a bound
DEPS_PKGS    += clang libclang-rt-14-dev
FUZZ_CC      ?= clang
FUZZ_BUILD   := build/fuzz
FUZZ_TARGETS := model score request
FUZZ_SECONDS ?= 300
FUZZ_CI_SECONDS ?= 120
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) -fno-strict-aliasing -I. -MMD -MP \
                $(FUZZ_SAN) -fsanitize=fuzzer-no-link
# What each target links besides itself: the engine, and for the request
# target the decoder, the encoder and the server's scorer (which asks the
# worker pool how many workers are idle).
FUZZ_XOBJ_request := proto/request.o proto/response.o server/score.o server/pool.o server/batch.o
FUZZ_LIBS_request := -ljansson

$(FUZZ_BUILD)/model/%.o: KFLAGS = $(KF_$(notdir $*))
$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(KFLAGS) -c -o $@ $<

.SECONDEXPANSION:
$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/tests/fuzz/fuzz_%.o $(MODEL_SRC:%.c=$(FUZZ_BUILD)/%.o) \
                      $$(addprefix $(FUZZ_BUILD)/,$$(FUZZ_XOBJ_$$*))
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LIBS_$*) $(LDLIBS)

# The replay runners: the same targets with a plain main, any compiler.
FUZZ_REPLAY := $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/replay_%)
$(BUILD)/tests/fuzz/replay_%: $(BUILD)/tests/fuzz/replay.o $(BUILD)/tests/fuzz/fuzz_%.o \
                              $$(addprefix $(BUILD)/,$$(FUZZ_XOBJ_$$*)) $(LIBDCN)
	$(CC) $(LDFLAGS) -o $@ $^ $(FUZZ_LIBS_$*) $(LDLIBS)

.PHONY: fuzz fuzz-ci fuzz-build fuzz-replay soak soak-ci
fuzz-replay: $(FUZZ_REPLAY)
	@set -e; for t in $(FUZZ_TARGETS); do echo "== replay $$t"; \
	  extra=""; [ $$t = model ] && extra=tests/golden; \
	  $(BUILD)/tests/fuzz/replay_$$t tests/fuzz/corpus/$$t tests/fuzz/crashes/$$t $$extra; done

fuzz-build: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

fuzz: deps fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_BUILD)/run $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# CI's run is deterministic: a fixed seed and number of executions per target
# (FUZZ_CI_SECONDS only caps a slow machine).
FUZZ_CI_RUNS ?= 150000
fuzz-ci: deps fuzz-replay fuzz-build
	rm -rf $(FUZZ_BUILD)/ci
	FUZZ_FLAGS="-seed=1 -runs=$(FUZZ_CI_RUNS)" \
	  tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_BUILD)/ci $(FUZZ_CI_SECONDS) $(FUZZ_TARGETS)

SOAK_ARGS ?=
soak: deps all
	$(PYTHON) deploy/soak/soak.py --server $(DCNSERVE) --model $(MODEL) \
	  --duration 600 --interval 30 $(SOAK_ARGS)

soak-ci: deps all
	$(PYTHON) deploy/soak/soak.py --server $(DCNSERVE) --model $(MODEL) \
	  --duration 60 --interval 10 --check $(SOAK_ARGS)

# ---------------------------------------------------------------- container
# Dockerfile at the top; manifests under deploy/ (k8s, compose, systemd).
#   make docker        build the image with a Docker engine (DOCKER=podman works too)
#   make docker-check  as root: build with Debian's podman offline, run the image
#                      read-only, check health, a real POST /rank, the HEALTHCHECK,
#                      SIGTERM drain, a model mounted over the default, and the
#                      Compose stack (3 replicas, nginx, Prometheus); ~1 min warm, ~6 cold
DEPS_PKGS    += python3-yaml
DOCKER       ?= docker
DOCKER_IMAGE ?= dcnserve:latest
DOCKER_CHECK_PORT ?= 18080

.PHONY: docker docker-check
# podman keeps HEALTHCHECK only in the docker image format (OCI has no field for it).
docker:
	$(DOCKER) build $(if $(findstring podman,$(DOCKER)),--format docker) -t $(DOCKER_IMAGE) .

docker-check:
	PORT=$(DOCKER_CHECK_PORT) PYTHON=$(PYTHON) deploy/docker-check.sh

-include $(shell find build -name '*.d' 2>/dev/null)
