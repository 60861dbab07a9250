# moa-serve — see README.md.
#
#   make            build everything (release: -O3 -march=$(ARCH))
#   make run        set up and serve the default model
#   make test       install what is missing, build, run every test
#   make debug      -g -O0 build in build/debug (for gdb / valgrind)
#   make asan       AddressSanitizer + UBSan build; runs the C tests
#   make deps       install the Debian packages (apt-get; quiet when present)
#   make bench      engine benchmark (bench/engine.sh)

# x86-64-v3 = AVX2 + FMA (Haswell, 2013, and every x86 server CPU since).
# The engine's hot loops are vectorised for it; OpenBLAS picks its own kernels
# at run time whatever this says. Override for older CPUs: make ARCH=x86-64.
ARCH ?= x86-64-v3
MODE ?= release
BUILD := build/$(MODE)

PYTHON := /usr/bin/python3
DEB_PACKAGES := build-essential pkg-config libopenblas-dev libcjson-dev \
  libmicrohttpd-dev libuv1-dev libsentencepiece-dev sentencepiece \
  python3-torch python3-numpy python3-sentencepiece curl

CC := gcc
CXX := g++
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes
BLAS_INC := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
CPPFLAGS := -Imodel -Itokenizer -Itests $(BLAS_INC) -D_GNU_SOURCE
LDLIBS := -lopenblas -lcjson -lsentencepiece -lstdc++ -lm -lpthread

ifeq ($(MODE),release)
  OPT := -O3 -march=$(ARCH) -g
else ifeq ($(MODE),debug)
  OPT := -O0 -g
else ifeq ($(MODE),asan)
  OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
CFLAGS := -std=c11 $(OPT) $(WARN) -pthread
CXXFLAGS := -std=c++17 $(OPT) -Wall -Wextra -pthread

LIB_C := $(wildcard model/moa_*.c)
LIB_C := $(filter-out model/moa_cli.c,$(LIB_C))
LIB_CXX := $(wildcard tokenizer/*.cc)
LIB_OBJ := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CXX:%.cc=$(BUILD)/%.o)
TEST_C := $(wildcard tests/test_*.c) tests/run_tests.c
TEST_OBJ := $(TEST_C:%.c=$(BUILD)/%.o)

LIB := $(BUILD)/libmoa.a
CLI := $(BUILD)/moa-translate
RUNNER := $(BUILD)/run_tests

.PHONY: all run test test-c test-python test-golden debug asan deps clean bench check-deps model

all: check-deps $(LIB) $(CLI) $(RUNNER)

$(BUILD)/%.o: %.c $(wildcard model/*.h tokenizer/*.h tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc $(wildcard tokenizer/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CLI): $(BUILD)/model/moa_cli.o $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(LDLIBS) -o $@

$(RUNNER): $(TEST_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(LDLIBS) -o $@

# --- dependencies --------------------------------------------------------------

# Installs what is missing, says nothing when everything is there.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	  || { echo "apt-get failed; install these by hand: $$missing"; exit 1; }; \
	fi

# Fails early with the exact list instead of a compiler error.
check-deps:
	@for h in cblas.h cjson/cJSON.h sentencepiece_processor.h; do \
	  echo "#include <$$h>" | $(CXX) $(BLAS_INC) -E -x c++ - >/dev/null 2>&1 || \
	  { echo "missing header $$h: run 'make deps' (installs $(DEB_PACKAGES))"; exit 1; }; done

# --- tests ---------------------------------------------------------------------

# C unit tests, Python unit tests (evaluation, converter), golden tests of
# the C engine against the PyTorch reference.
test: deps
	$(MAKE) all
	$(MAKE) test-c
	$(MAKE) test-python
	$(MAKE) test-golden

test-c: $(RUNNER)
	$(RUNNER)

test-python: $(CLI)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/python/run_python_tests.py

test-golden: $(CLI)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/golden/run_golden.py --cli $(CLI)

debug:
	$(MAKE) MODE=debug all

asan: deps
	$(MAKE) MODE=asan all
	ASAN_OPTIONS=detect_leaks=1 build/asan/run_tests

bench: all
	bench/engine.sh

# The default model: weights/moa-en-de once trained (make model), else the
# tiny test model.
RUN_MODEL := $(firstword $(wildcard weights/moa-en-de/config.json) tests/fixtures/models/tiny-trained/config.json)

run: deps all
	@echo "the HTTP server is not built yet: translating sample sentences with the CLI on $(dir $(RUN_MODEL))"
	head -20 tests/fixtures/sample.en-de.tsv | cut -f1 | $(CLI) --model $(dir $(RUN_MODEL)) --verbose

# Trains, exports and evaluates the default model (hours; not part of make test).
model: deps all
	train/make_model.sh

clean:
	rm -rf build
