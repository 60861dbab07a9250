# tests/fuzz/fuzz.mk — fuzz targets (tests/fuzz/README.md), included by the
# Makefile. Each tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput and
# links against libmoa and the server's modules:
#   MODE=fuzz  clang + libFuzzer + ASan/UBSan: build/fuzz/fuzz/fuzz_<name>
#   otherwise  tests/fuzz/replay.c as main, in that mode's build (make
#              test-fuzz-replay uses MODE=asan): build/<mode>/fuzz/fuzz_<name>

FUZZ_TARGETS ?= translate_parse text conf model_load tokenizer
FUZZ_SECONDS ?= 60
FUZZ_BIN = $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)

ifeq ($(MODE),fuzz)
  FUZZ_MAIN :=
  FUZZ_LINK := -fsanitize=fuzzer -fsanitize-link-c++-runtime
else
  FUZZ_MAIN := $(BUILD)/tests/fuzz/replay.o
  FUZZ_LINK :=
endif

$(BUILD)/tests/fuzz/%.o: tests/fuzz/%.c tests/fuzz/fuzz_util.h \
  $(wildcard server/*.h common/*.h model/*.h tokenizer/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/fuzz/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_MAIN) $(RUNNER_SERVER_OBJ) $(WEB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(FUZZ_LINK) -pthread $^ $(SERVER_LIBS) $(LDLIBS) -o $@

.PHONY: fuzz fuzz-build fuzz-merge test-fuzz-replay

fuzz-build: $(FUZZ_BIN)

# FUZZ_SECONDS per target, one target at a time, niced; new inputs go to
# build/fuzz/work/<name>, crashes to build/fuzz/artifacts/<name>/.
fuzz: check-deps
	@command -v clang >/dev/null || { echo "make fuzz needs clang with libFuzzer: apt-get install clang"; exit 1; }
	$(MAKE) MODE=fuzz fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run_fuzz.sh $(FUZZ_TARGETS)

# Minimises corpus + work into tests/fuzz/corpus/<name> (libFuzzer -merge=1).
fuzz-merge:
	$(MAKE) MODE=fuzz fuzz-build
	tests/fuzz/run_fuzz.sh --merge $(FUZZ_TARGETS)

# Every corpus file through its target under ASan/UBSan, leaks checked: the
# regression run (seconds).
test-fuzz-replay:
	$(MAKE) MODE=asan fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    build/asan/fuzz/fuzz_$$t tests/fuzz/corpus/$$t || exit 1; done
