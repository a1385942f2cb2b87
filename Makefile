# dsv3 — build, test, demo. See README.md.
#   make            bin/dsv3 and the tools
#   make deps       install the Debian packages the build, tests and demos need, and the
#                   test virtualenv .venv (pinned Python clients, tools/reference/requirements-test.txt)
#   make test       deps + build + the whole suite (unit tests + MPI tests)
#   make demo       deps + build + train input/tiny.cfg on fortunes text, then sample from it
#   make sft-demo   deps + build + LoRA and full fine-tuning of the demo model on an
#                   instruction task from fortunes text (runs make demo first if needed)
#   make bench      benchmarks (numbers for notes, never pass/fail)
#   make SAN=1 ...  AddressSanitizer + UBSan build (in build-san/, bin-san/)
#   make CUDA=emu   CUDA backend through the CPU emulator: twin tests (cuda/cuda.mk)
#   make CUDA=1     CUDA backend through nvcc for sm_80/sm_90 (compiles and links without a GPU)

SHELL := /bin/bash
CC := mpicc
PKGS := hdf5-openmpi libconfig hwloc libpcre2-8 jansson
# OpenBLAS, OpenMP flavour: it shares dsv3's OpenMP thread pool instead of
# running a second pool of pthreads that spins against it on the same cores.
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIBS := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas
# Debian packages: build, tests, demo. Kept in one place; `make deps` installs the missing ones.
DEBS := build-essential pkg-config openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools \
        libconfig-dev libhwloc-dev hwloc libopenblas-openmp-dev libcmocka-dev libpcre2-dev libjansson-dev \
        zlib1g-dev fortunes python3 python3-h5py python3-numpy python3-venv gnuplot-nox numdiff slurm-wlm munge \
        clang libclang-rt-14-dev
# The project virtualenv (git-ignored): Debian's python3 with the pinned light
# Python clients the tests check dsv3 against (tokenizers, tensorboard, h5py,
# safetensors, numpy; not torch). `make deps` creates it and installs the pins
# with the venv's pip; quiet once its stamp matches the pins. PyPI unreachable:
# a loud warning and $(VENV)/.pypi-unreachable, and the tests needing it skip loudly.
VENV := .venv
VENV_PYTHON := /usr/bin/python3
VENV_REQS := tools/reference/requirements-test.txt
VENV_IMPORTS := tokenizers tensorboard.backend.event_processing.event_accumulator safetensors.numpy numpy h5py

ifeq ($(SAN),1)
  BUILD := build-san
  BIN := bin-san
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
  BUILD := build
  BIN := bin
  SANFLAGS :=
endif
# CUDA=emu / CUDA=1: the CUDA backend (cuda/cuda.mk) instead of the CPU build as the default goal
ifeq ($(CUDA),1)
  .DEFAULT_GOAL := cuda-gpu
else ifeq ($(CUDA),emu)
  .DEFAULT_GOAL := cuda-emu
else ifneq ($(CUDA),)
  $(error CUDA=$(CUDA): use CUDA=1 (nvcc, real libraries) or CUDA=emu (g++ and the emulator))
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
GIT_REV := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
CFLAGS ?= -O2 -g -march=x86-64-v2
override CFLAGS += -std=c11 -D_GNU_SOURCE -Isrc -Wall -Wextra -Werror -fopenmp $(SANFLAGS) $(PKG_CFLAGS) $(BLAS_CFLAGS) \
          -DDSV3_GIT_REV='"$(GIT_REV)"' -MMD -MP
LDLIBS := $(PKG_LIBS) $(BLAS_LIBS) -lz -lmvec -lm
override LDFLAGS += -fopenmp $(SANFLAGS)

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*.c src/model/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_SRC := $(wildcard tools/*.c)
TOOLS := $(TOOL_SRC:tools/%.c=$(BIN)/%)
TEST_SRC := $(wildcard tests/test_*.c)
TESTS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps test demo sft-demo bench clean regression fuzz slice
all: $(BIN)/dsv3 $(TOOLS) $(TESTS)

# libFuzzer harness of the safetensors reader (tests/it_fuzz_safetensors.sh, a
# long run in tools/bench.sh). clang, not mpicc: src/safetensors.c needs only
# libc and jansson. Built by `make fuzz`, `make test` and `make bench`, not by
# `make` (clang comes with `make deps`).
FUZZ := build/fuzz/fuzz_safetensors
fuzz: $(FUZZ)
$(FUZZ): tools/fuzz/fuzz_safetensors.c src/safetensors.c src/safetensors.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -Isrc -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined $(filter %.c,$^) $(shell pkg-config --cflags --libs jansson) -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libdsv3.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BIN)/dsv3: $(BUILD)/src/main.o $(BUILD)/libdsv3.a
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BIN)/%: $(BUILD)/tools/%.o $(BUILD)/libdsv3.a
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libdsv3.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing $$missing"; \
	  SUDO=$$([ $$(id -u) -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@v=$(VENV); imports="import $$(echo $(VENV_IMPORTS) | sed 's/ /, /g')"; \
	if [ -x $$v/bin/python ] && cmp -s $(VENV_REQS) $$v/.requirements && $$v/bin/python -c "$$imports" 2>/dev/null; then exit 0; fi; \
	echo "make deps: Python test clients into $$v/ (pins: $(VENV_REQS))"; \
	[ -x $$v/bin/python ] || $(VENV_PYTHON) -m venv $$v || { echo "make deps: $(VENV_PYTHON) -m venv $$v failed (Debian package python3-venv)"; exit 1; }; \
	rm -f $$v/.requirements $$v/.pypi-unreachable; \
	pip="$$v/bin/python -m pip --disable-pip-version-check --require-virtualenv"; \
	if $$pip install -q -r $(VENV_REQS) >$$v/pip.log 2>&1 && $$v/bin/python -c "$$imports" >>$$v/pip.log 2>&1; then \
	  cp $(VENV_REQS) $$v/.requirements; \
	elif ! $$pip index versions --retries 1 --timeout 20 idna >/dev/null 2>&1; then \
	  { date -u +%FT%TZ; tail -n 3 $$v/pip.log; } >$$v/.pypi-unreachable; \
	  echo "################################################################################"; \
	  echo "##  make deps: WARNING: the Python package index is UNREACHABLE: $$v/ lacks"; \
	  echo "##  the pinned test clients ($(VENV_REQS)). The tests that need them"; \
	  echo "##  (it_tensorboard, it_tokenizer_hf, it_ckpt_h5py) will SKIP, NOT CHECKED."; \
	  echo "##  Rerun make deps with network access (pip log: $$v/pip.log)."; \
	  echo "################################################################################"; \
	else \
	  tail -n 20 $$v/pip.log; echo "make deps: pip install -r $(VENV_REQS) into $$v failed (the index is reachable)"; exit 1; \
	fi

test: deps
	@$(MAKE) --no-print-directory all $(FUZZ) cuda-emu cuda-emu-model
	@BIN=$(BIN) BUILD=$(BUILD) tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory $(BIN)/dsv3 $(BIN)/dsv3-generate
	@tools/demo.sh $(BIN)

sft-demo: deps
	@$(MAKE) --no-print-directory $(BIN)/dsv3 $(BIN)/dsv3-prep $(BIN)/dsv3-verify $(BIN)/plot-loss
	@tools/sft-demo.sh $(BIN)

# the real-width slice run of issue 14 (minutes, ~33 GB of disk; not in make test)
slice: deps all
	bash tools/slice.sh

bench: deps
	@$(MAKE) --no-print-directory all $(FUZZ)
	@BIN=$(BIN) tools/bench.sh

regression: deps
	@$(MAKE) --no-print-directory all
	@regression/run

include cuda/cuda.mk

clean:
	rm -rf build build-san bin bin-san build-emu build-emu-san build-cuda bin-emu bin-emu-san bin-cuda

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
