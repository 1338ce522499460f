# dsv4 — one entry point.  `make` builds the engine library, the CLI tools and
# the unit tests; `make test` runs every test; `make demo` runs the demo.
#
# Conventions (so new components need no Makefile edits):
#   engine/*.c kernels/cpu/*.c cache/*.c limits/*.c -> build/libdsv4.a
#   engine/cli/NAME.c               -> build/NAME          (CLI tools)
#   tests/unit/NAME.c               -> build/tests/NAME    (C unit tests)
#   bench/NAME.c                    -> build/bench/NAME    (benchmark binaries)

# make SAN=1: the library and the unit tests built with ASan + UBSan into
# build/san/ (tests/scripts/test_sanitizers runs them); nothing else.
ifeq ($(SAN),1)
B       := build/san
CC      := clang-14
OPT     := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
           -fno-sanitize-recover=undefined
else
B       := build
CC      ?= cc
OPT     ?= -O2
endif
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=gnu11 -fPIC -pthread -W -Wall -Wextra -Wpointer-arith \
           -Wno-unused-parameter -Werror -I. -iquote engine -iquote kernels
LDLIBS  += -ljansson -lpcre2-8 -lhiredis -lmsgpackc -lm -lpthread

LIB_SRCS   := $(sort $(wildcard engine/*.c kernels/cpu/*.c cache/*.c limits/*.c))
LIB_OBJS   := $(LIB_SRCS:%.c=$(B)/obj/%.o)
TOOLS      := $(patsubst engine/cli/%.c,$(B)/%,$(wildcard engine/cli/*.c))
UNIT_TESTS := $(patsubst tests/unit/%.c,$(B)/tests/%,$(wildcard tests/unit/*.c))
BENCHES    := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))

.PHONY: all test demo clean
ifeq ($(SAN),1)
all: $(B)/libdsv4.a $(UNIT_TESTS)
else
# the nginx module (build/ngx_dsv4_module.so) and its check/serve targets
include ngx_dsv4_module/module.mk
.DEFAULT_GOAL := all
all: $(B)/libdsv4.a $(TOOLS) $(UNIT_TESTS) $(BENCHES) $(NGX_MOD_SO)
endif

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/libdsv4.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(B)/%: engine/cli/%.c $(B)/libdsv4.a
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ $(B)/libdsv4.a $(LDLIBS)

$(B)/tests/%: tests/unit/%.c $(B)/libdsv4.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ $(B)/libdsv4.a $(LDLIBS)

$(B)/bench/%: bench/%.c $(B)/libdsv4.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ $(B)/libdsv4.a $(LDLIBS)

test: all
	tests/run

demo: all
	scripts/run-demo

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(wildcard $(B)/*.d $(B)/tests/*.d $(B)/bench/*.d)
