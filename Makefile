# moa-serve — see README.md.
#
#   make            build everything (release: -O3 -march=$(ARCH))
#   make run        set up and serve the default model (moa-server, port 8080)
#   make test       install what is missing, build, run every test
#   make debug      -g -O0 build in build/debug (for gdb / valgrind)
#   make asan       AddressSanitizer + UBSan build; runs the C tests and the e2e suite
#   make deps       install the Debian packages (apt-get; quiet when present)
#   make bench      engine benchmark (bench/engine.sh): f32, bf16, int8, the shortlist
#   make shortlist  the default model's vocabulary shortlist (weights/moa-en-de/shortlist.tsv)
#   make test-browser      the pages at / and /heads in headless chromium
#   make test-deploy       image, compose stack, failover under load (root; README "Deploy")
#   make test-deploy-local the container-free part: k8s manifests, nginx failover
#   make fuzz              libFuzzer targets, FUZZ_SECONDS each (tests/fuzz/README.md)
#   make test-fuzz-replay  the fuzz corpora replayed under ASan/UBSan (seconds)
#   make test-oom          allocation failures injected into translate calls

# x86-64-v3 = AVX2 + FMA (Haswell, 2013, and every x86 server CPU since).
# The engine's hot loops are vectorised for it; OpenBLAS picks its own kernels
# at run time whatever this says. Override for older CPUs: make ARCH=x86-64.
ARCH ?= x86-64-v3
MODE ?= release
BUILD := build/$(MODE)

PYTHON := /usr/bin/python3
DEB_PACKAGES := build-essential pkg-config libopenblas-dev libcjson-dev \
  libmicrohttpd-dev libuv1-dev libsentencepiece-dev sentencepiece \
  python3-torch python3-numpy python3-sentencepiece curl chromium

CC := gcc
CXX := g++
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes
BLAS_INC := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
CPPFLAGS := -Icommon -Imodel -Itokenizer -Iserver -Itests $(BLAS_INC) -D_GNU_SOURCE
LDLIBS := -lopenblas -lcjson -lsentencepiece -lstdc++ -lm -lpthread

ifeq ($(MODE),release)
  OPT := -O3 -march=$(ARCH) -g
else ifeq ($(MODE),debug)
  OPT := -O0 -g
else ifeq ($(MODE),asan)
  OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(MODE),fuzz)
  # libFuzzer builds (tests/fuzz/fuzz.mk): clang's coverage instrumentation
  # plus ASan and UBSan. vptr is left out: the tokenizer's C++ is linked by
  # the C driver.
  CC := clang
  CXX := clang++
  OPT := -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=vptr \
    -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
CFLAGS := -std=c11 $(OPT) $(WARN) -pthread
CXXFLAGS := -std=c++17 $(OPT) -Wall -Wextra -pthread

# libmoa: the engine, the tokenizer and what they share (error codes, UTF-8).
LIB_C := $(wildcard common/moa_*.c model/moa_*.c tokenizer/moa_*.c)
LIB_CXX := $(wildcard tokenizer/*.cc)
LIB_OBJ := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CXX:%.cc=$(BUILD)/%.o)
TEST_C := $(wildcard tests/test_*.c) tests/run_tests.c
TEST_OBJ := $(TEST_C:%.c=$(BUILD)/%.o)

SERVER_C := $(wildcard server/*.c)
SERVER_OBJ := $(SERVER_C:%.c=$(BUILD)/%.o)
SERVER_LIBS := -lmicrohttpd -luv
# The browser pages (server/web/, moa_web.h), built into the server as a
# generated C file: nothing to install or find at run time.
WEB_FILES := $(sort $(wildcard server/web/*.html server/web/*.css server/web/*.js server/web/*.svg))
WEB_C := $(BUILD)/server/moa_web_assets.c
WEB_OBJ := $(WEB_C:.c=.o)

LIB := $(BUILD)/libmoa.a
SERVER := $(BUILD)/moa-server
CLI := $(BUILD)/moa-translate
RUNNER := $(BUILD)/run_tests

.PHONY: all run test test-c test-python test-golden test-e2e test-e2e-asan test-browser debug asan deps \
  clean bench check-deps model shortlist test-deploy test-deploy-local

all: check-deps $(LIB) $(CLI) $(RUNNER) $(SERVER)

$(BUILD)/%.o: %.c $(wildcard common/*.h model/*.h tokenizer/*.h tests/*.h server/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc $(wildcard common/*.h tokenizer/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(SERVER_OBJ): $(BUILD)/server/%.o: server/%.c $(wildcard server/*.h common/*.h model/*.h tokenizer/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The command-line translator (cli/), an application of libmoa like the server.
$(CLI): $(BUILD)/cli/moa_cli.o $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(LDLIBS) -o $@

# White-box tests include the engine's source.
$(BUILD)/tests/test_engine.o: model/moa_engine.c

# The runner also links the server's modules but its main (tests/test_sched.c).
RUNNER_SERVER_OBJ := $(filter-out $(BUILD)/server/moa_server.o,$(SERVER_OBJ))
$(BUILD)/tests/test_sched.o $(BUILD)/tests/test_api.o: $(wildcard server/*.h)
$(RUNNER): $(TEST_OBJ) $(RUNNER_SERVER_OBJ) $(WEB_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(SERVER_LIBS) $(LDLIBS) -o $@

$(WEB_C): server/web/embed.sh $(WEB_FILES)
	@mkdir -p $(dir $@)
	sh server/web/embed.sh $@ $(WEB_FILES)

$(WEB_OBJ): $(WEB_C) server/moa_web.h
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

# The HTTP server (server/README.md).
$(SERVER): $(SERVER_OBJ) $(WEB_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(SERVER_LIBS) $(LDLIBS) -o $@

# Optional: the Docker build context has no tests/ (.dockerignore).
-include tests/fuzz/fuzz.mk
-include tests/oom/oom.mk

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
	@for h in cblas.h cjson/cJSON.h sentencepiece_processor.h microhttpd.h uv.h; do \
	  echo "#include <$$h>" | $(CXX) $(BLAS_INC) -E -x c++ - >/dev/null 2>&1 || \
	  { echo "missing header $$h: run 'make deps' (installs $(DEB_PACKAGES))"; exit 1; }; done

# --- tests ---------------------------------------------------------------------

# C unit tests, the fuzz corpora and the allocation-failure sweeps under
# ASan, Python unit tests (evaluation, converter), golden tests of the C
# engine against the PyTorch reference.
test: deps
	$(MAKE) all
	$(MAKE) test-c
	$(MAKE) test-fuzz-replay
	$(MAKE) test-oom
	$(MAKE) test-python
	$(MAKE) test-golden
	$(MAKE) test-e2e
	$(MAKE) test-e2e-asan
	$(MAKE) test-browser

# The bf16/int8 kernels once more on their AVX2 path (MOA_AVX512=0: what a CPU
# without AVX512_VNNI / AVX512_BF16 runs; the same bits are expected).
test-c: $(RUNNER)
	$(RUNNER)
	MOA_AVX512=0 $(RUNNER) quant

test-python: $(CLI)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/python/run_python_tests.py

# Then two configurations again with the engine's packed AVX-512 kernel off
# (MOA_AVX512=0: every product through OpenBLAS, the path of CPUs without it).
test-golden: $(CLI)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/golden/run_golden.py --cli $(CLI)
	MOA_AVX512=0 OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/golden/run_golden.py --cli $(CLI) \
	  --models a-postnorm-relu-f32,c-separate-out-f16

# End-to-end: a real moa-server process on free ports (tests/e2e/README.md);
# then its translation tests again with every server at precision int8.
test-e2e: $(SERVER) $(CLI)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/e2e/run_e2e.py --server $(SERVER)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/e2e/run_e2e.py --server $(SERVER) --precision int8 -k translate

# The same suite against the AddressSanitizer + UBSan build of the server
# (leaks checked at its exit), compared with the CLI of the same build (-O1
# and -O3 builds round a few last bits differently; int8 can turn that into
# another word).
test-e2e-asan:
	$(MAKE) MODE=asan build/asan/moa-server build/asan/moa-translate
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/e2e/run_e2e.py --server build/asan/moa-server --sanitizer

# The pages in a real browser (tests/browser/README.md): Debian's headless
# chromium (make deps installs it) against a real server, ~15 s. Screenshots
# of the pages go to build/browser/.
test-browser: $(SERVER)
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) tests/browser/run_browser.py --server $(SERVER)

# Deployment (tests/deploy/README.md; needs root): builds docker/Dockerfile
# from a debootstrapped base with a private dockerd, runs HAProxy + 2 replicas
# with docker-compose, fails one over under load (SIGTERM, SIGKILL), then runs
# test-deploy-local. Installs docker.io, docker-compose, debootstrap, nginx.
# DEPLOY_STATE keeps the dockerd's images and the base tarball between runs.
DEPLOY_STATE ?= /var/lib/moa-serve-deploy
test-deploy: deps
	$(MAKE) $(SERVER)
	DEPLOY_STATE=$(DEPLOY_STATE) tests/deploy/run_deploy.sh --server $(SERVER)

# The container-free part (~40 s): docker/k8s checked, two moa-server
# processes behind Debian's nginx on loopback, failover under load.
test-deploy-local: deps
	$(MAKE) $(SERVER)
	tests/deploy/run_local.sh --server $(SERVER)

debug:
	$(MAKE) MODE=debug all

asan: deps
	$(MAKE) MODE=asan all
	ASAN_OPTIONS=detect_leaks=1 build/asan/run_tests
	$(MAKE) test-e2e-asan

bench: all
	bench/engine.sh

# The default model: weights/moa-en-de once trained (make model), else the
# tiny test model.
RUN_MODEL := $(firstword $(wildcard weights/moa-en-de/config.json) tests/fixtures/models/tiny-trained/config.json)

RUN_PORT ?= 8080

run: deps all
	@echo "serving $(dir $(RUN_MODEL)) on http://127.0.0.1:$(RUN_PORT) (Ctrl-C drains and stops). Try:"
	@echo "  curl -s localhost:$(RUN_PORT)/translate -H 'Content-Type: application/json' -d '{\"text\": \"Delete unused files\"}'"
	@echo "  curl -s localhost:$(RUN_PORT)/heads?format=text ; curl -s localhost:$(RUN_PORT)/metrics"
	@echo "  or open http://localhost:$(RUN_PORT)/ in a browser (translate, head usage; /heads: routing statistics)"
	$(SERVER) --config conf/moa-server.conf --model $(patsubst %/,%,$(dir $(RUN_MODEL))) --port $(RUN_PORT)

# Trains, exports and evaluates the default model (hours; not part of make test).
model: deps all
	train/make_model.sh

# The vocabulary shortlist of the default model (weights/moa-en-de/shortlist.tsv,
# docs/moa-spec.md section 9) from the token cache of the corpus, made here
# with the model's tokenizer when build/model/data lacks it (a few minutes;
# make model makes it too). It depends on the tokenizer and the corpus, not
# on the weights: a retrained model with the kept tokenizer keeps it.
SHORTLIST_DATA ?= build/model/data
shortlist: deps
	@[ -f $(SHORTLIST_DATA)/meta.json ] || $(PYTHON) train/data.py cache \
	  --spm weights/moa-en-de/sentencepiece.model --vocab weights/moa-en-de/vocab.txt \
	  --out $(SHORTLIST_DATA)
	$(PYTHON) train/make_shortlist.py --data $(SHORTLIST_DATA) --model weights/moa-en-de \
	  --out weights/moa-en-de/shortlist.tsv --report valid

clean:
	rm -rf build
