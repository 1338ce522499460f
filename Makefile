# dsv4 — one entry point.  `make` builds the engine library, the CLI tools and
# the unit tests; `make test` runs every test; `make demo` runs the demo.
#
# Conventions (so new components need no Makefile edits):
#   engine/*.c kernels/cpu/*.c cache/*.c limits/*.c -> build/libdsv4.a
#   engine/cli/NAME.c               -> build/NAME          (CLI tools)
#   tests/unit/NAME.c               -> build/tests/NAME    (C unit tests)
#   bench/NAME.c                    -> build/bench/NAME    (benchmark binaries)

CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=gnu11 -fPIC -pthread -W -Wall -Wextra -Wpointer-arith \
           -Wno-unused-parameter -Werror -I. -iquote engine -iquote kernels
LDLIBS  += -ljansson -lpcre2-8 -lhiredis -lmsgpackc -lm -lpthread

LIB_SRCS   := $(sort $(wildcard engine/*.c kernels/cpu/*.c cache/*.c limits/*.c))
LIB_OBJS   := $(LIB_SRCS:%.c=build/obj/%.o)
TOOLS      := $(patsubst engine/cli/%.c,build/%,$(wildcard engine/cli/*.c))
UNIT_TESTS := $(patsubst tests/unit/%.c,build/tests/%,$(wildcard tests/unit/*.c))
BENCHES    := $(patsubst bench/%.c,build/bench/%,$(wildcard bench/*.c))

# the nginx module (build/ngx_dsv4_module.so) and its check/serve targets
include ngx_dsv4_module/module.mk
.DEFAULT_GOAL := all

.PHONY: all test demo clean
all: build/libdsv4.a $(TOOLS) $(UNIT_TESTS) $(BENCHES) $(NGX_MOD_SO)

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

build/libdsv4.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

build/%: engine/cli/%.c build/libdsv4.a
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ build/libdsv4.a $(LDLIBS)

build/tests/%: tests/unit/%.c build/libdsv4.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ build/libdsv4.a $(LDLIBS)

build/bench/%: bench/%.c build/libdsv4.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -MF $@.d $< -o $@ build/libdsv4.a $(LDLIBS)

test: all
	tests/run

demo: all
	scripts/run-demo

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(wildcard build/*.d build/tests/*.d build/bench/*.d)
