# ngx_dsv4_module: the nginx dynamic module, built with plain cc against
# Debian's nginx-dev (TOOLCHAIN.md §1, recipe B).  Included from the
# top-level Makefile:
#
#     include ngx_dsv4_module/module.mk
#
# Targets:
#   build/ngx_dsv4_module.so   the module (engine objects linked in)
#   check-module               `nginx -t` with load_module and every directive
#   check-module-clang         the module's sources compiled by clang-14 -Werror
#   serve PORT=N               nginx in the foreground with conf.d/dsv4.conf
#                              on 127.0.0.1:N and the demo model (SIGTERM or
#                              SIGINT stops it)
#
# nginx-dev ships headers but no objs/ngx_auto_config.h, so Debian's
# configure runs once (about 5 s) into build/nginx with exactly Debian's
# flags (conf_flags), which is what makes the module binary compatible with
# the stock /usr/sbin/nginx.  The ngx_modules[] table configure would write
# for a dynamic module is generated below.

NGX_SRC        ?= /usr/share/nginx/src
NGX_BUILD      := build/nginx
NGX_AUTO_H     := $(NGX_BUILD)/ngx_auto_config.h
NGX_MOD_SO     := build/ngx_dsv4_module.so
NGX_MOD_SRCS   := $(sort $(wildcard ngx_dsv4_module/*.c))
NGX_MOD_HDRS   := $(wildcard ngx_dsv4_module/*.h) engine/dsv4.h engine/sched.h \
                  engine/sample.h engine/tokenizer.h engine/chat.h engine/parse.h \
                  engine/strbuf.h engine/utf8.h cache/cache.h limits/limit.h
NGX_MOD_OBJS   := $(NGX_MOD_SRCS:ngx_dsv4_module/%.c=$(NGX_BUILD)/mod/%.o) \
                  $(NGX_BUILD)/mod/ngx_http_dsv4_modules.o
# engine/ goes on the quote path only: engine/sched.h would otherwise shadow
# the system <sched.h> that <pthread.h> includes.
NGX_INCS       := -I$(NGX_SRC)/src/core -I$(NGX_SRC)/src/event \
                  -I$(NGX_SRC)/src/event/modules -I$(NGX_SRC)/src/os/unix \
                  -I$(NGX_BUILD) -I$(NGX_SRC)/src/http \
                  -I$(NGX_SRC)/src/http/modules -I$(NGX_SRC)/src/http/v2 \
                  -iquote . -iquote engine -iquote kernels -iquote ngx_dsv4_module
NGX_CC         ?= cc
# Debian's cc-opt, then nginx's own warning flags
NGX_CFLAGS     ?= -g -O2 -fstack-protector-strong -Wformat \
                  -Werror=format-security -D_FORTIFY_SOURCE=2
NGX_WARN       := -fPIC -pipe -W -Wall -Wpointer-arith -Wno-unused-parameter -Werror
# the engine's libraries (the top-level LDLIBS when it has them)
NGX_MOD_LIBS    = $(if $(LDLIBS),$(LDLIBS),-ljansson -lpcre2-8 -lm -lpthread) -ldl
PORT           ?= 8080

.PHONY: module check-module check-module-clang serve
module: $(NGX_MOD_SO)

$(NGX_AUTO_H):
	@mkdir -p $(NGX_BUILD)
	@echo "configure nginx headers (Debian's flags) into $(NGX_BUILD)"
	cd $(NGX_SRC) && bash -c '. ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --builddir=$(CURDIR)/$(NGX_BUILD)' > $(CURDIR)/$(NGX_BUILD)/configure.log 2>&1 \
	    || { tail -20 $(CURDIR)/$(NGX_BUILD)/configure.log; exit 1; }

$(NGX_BUILD)/mod/ngx_http_dsv4_modules.c: ngx_dsv4_module/module.mk
	@mkdir -p $(dir $@)
	@{ echo '#include <ngx_config.h>'; echo '#include <ngx_core.h>'; \
	   echo 'extern ngx_module_t  ngx_http_dsv4_module;'; \
	   echo 'ngx_module_t *ngx_modules[] = { &ngx_http_dsv4_module, NULL };'; \
	   echo 'char *ngx_module_names[] = { "ngx_http_dsv4_module", NULL };'; \
	   echo 'char *ngx_module_order[] = { NULL };'; } > $@

$(NGX_BUILD)/mod/ngx_http_dsv4_modules.o: $(NGX_BUILD)/mod/ngx_http_dsv4_modules.c $(NGX_AUTO_H)
	$(NGX_CC) -c $(NGX_CFLAGS) $(NGX_WARN) $(NGX_INCS) $< -o $@

$(NGX_BUILD)/mod/%.o: ngx_dsv4_module/%.c $(NGX_MOD_HDRS) $(NGX_AUTO_H)
	@mkdir -p $(dir $@)
	$(NGX_CC) -c $(NGX_CFLAGS) $(NGX_WARN) $(NGX_INCS) $< -o $@

# the engine's symbols stay private to the module
$(NGX_MOD_SO): $(NGX_MOD_OBJS) build/libdsv4.a
	$(NGX_CC) -shared -o $@ $(NGX_MOD_OBJS) build/libdsv4.a \
	    -Wl,--exclude-libs,ALL $(NGX_MOD_LIBS)

check-module: $(NGX_MOD_SO)
	@rm -rf build/nginx-check && mkdir -p build/nginx-check/logs
	@printf '%s\n' "load_module $(CURDIR)/$(NGX_MOD_SO);" 'pid logs/nginx.pid;' \
	    'error_log logs/error.log;' 'events {}' 'http {' \
	    '  dsv4_model check $(CURDIR)/engine alias=check-chat:chat tokenizer=off;' \
	    '  dsv4_engine_threads 1; dsv4_max_seqs 4; dsv4_max_batch_tokens 64;' \
	    '  dsv4_prefill_chunk 32; dsv4_max_queue 8;' \
	    '  dsv4_cache on; dsv4_cache_redis 127.0.0.1:6379; dsv4_cache_key_prefix dsv4:;' \
	    '  dsv4_cache_redis_timeout 100ms; dsv4_cache_ttl 1h; dsv4_cache_max_value 32m;' \
	    '  dsv4_cache_memory 64m; dsv4_cache_disk kv max=1g; dsv4_cache_block 128;' \
	    '  dsv4_cache_write all; dsv4_cache_scope global;' \
	    '  server { listen 127.0.0.1:1; location / { dsv4_api chat_completions;' \
	    '    dsv4_max_body_size 2m; dsv4_max_tokens 100; dsv4_max_n 2;' \
	    '    dsv4_max_prompt_tokens 1000; dsv4_timeout 10s; dsv4_retry_after 2; } } }' \
	    > build/nginx-check/nginx.conf
	nginx -t -q -p $(CURDIR)/build/nginx-check/ -c nginx.conf -e logs/error.log

check-module-clang: $(NGX_AUTO_H) $(NGX_BUILD)/mod/ngx_http_dsv4_modules.c
	@for f in $(NGX_MOD_SRCS) $(NGX_BUILD)/mod/ngx_http_dsv4_modules.c; do \
	    echo "clang-14 $$f"; \
	    clang-14 -c $(NGX_CFLAGS) $(NGX_WARN) $(NGX_INCS) $$f -o /dev/null || exit 1; \
	done

serve: $(NGX_MOD_SO)
	@PORT=$(PORT) ngx_dsv4_module/serve
