# tests/oom/oom.mk — the allocation-failure tests (tests/oom/test_oom.c),
# included by the Makefile. The binary links tests/oom/failalloc.c and
# routes every malloc-family call of the objects it links (libmoa, the
# server's modules, the test) through it with the linker's --wrap.

OOM_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc \
  -Wl,--wrap=posix_memalign,--wrap=strdup,--wrap=strndup

$(BUILD)/tests/oom/%.o: tests/oom/%.c tests/oom/failalloc.h tests/moa_test.h \
  $(wildcard server/*.h common/*.h model/*.h tokenizer/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/test_oom: $(BUILD)/tests/oom/test_oom.o $(BUILD)/tests/oom/failalloc.o \
  $(RUNNER_SERVER_OBJ) $(WEB_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -pthread $^ $(OOM_WRAP) $(SERVER_LIBS) $(LDLIBS) -o $@

.PHONY: test-oom

# Under ASan/UBSan, leaks checked after every failure (a minute or two).
test-oom:
	$(MAKE) MODE=asan build/asan/test_oom
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_WAIT_POLICY=PASSIVE \
	  build/asan/test_oom
