/*
 * check_cache_sched MODEL_DIR: the scheduler with a prefix cache attached
 * (dsv4_sched_conf.cache).
 *
 * A first request fills the cache (0 cached tokens); then, submitted
 * together to two engines with chunked prefill of 5 in 12-row steps: a
 * longer prompt sharing its prefix, the same prompt again, and the same
 * prompt under another tenant salt.  Each must report the cached tokens the
 * capture points predict (dsv4_request_cached_tokens) and produce exactly
 * the greedy completion of a solo run without any cache.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "sched.h"
#include "seq_state.h"
#include "tests/test.h"
#include "tests/unit/sched_helpers.h"

#define NGEN 6

static dsv4_request *
make_req(const int32_t *p, int n, const char *salt)
{
    dsv4_request_params rp;
    char                err[256];

    memset(&rp, 0, sizeof(rp));
    rp.prompt = p;
    rp.n_prompt = n;
    rp.max_tokens = NGEN;
    dsv4_sample_params_default(&rp.sample);
    rp.sample.temperature = 0.0f;
    dsv4_request *r = dsv4_request_new(&rp, err, sizeof(err));
    if (r != NULL && salt != NULL) {
        dsv4_request_set_cache_salt(r, salt, strlen(salt));
    }
    return r;
}

/* Runs requests rs[n] (n <= 8) to completion; toks[i] gets request i's tokens. */
static int
run(dsv4_sched *s, dsv4_request **rs, int n, int32_t (*toks)[NGEN])
{
    char        err[256];
    int         ntok[8] = { 0 };
    dsv4_finish fin[8] = { 0 };

    for (int i = 0; i < n; i++) {
        if (dsv4_sched_submit(s, rs[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "submit: %s\n", err);
            return -1;
        }
    }
    return drain_requests(s, rs, n, &toks[0][0], NGEN, ntok, fin, 30000);
}

int
main(int argc, char **argv)
{
    char            err[256];
    dsv4_model     *m;
    dsv4_cache     *cache;
    dsv4_cache_conf cc;
    dsv4_sched_conf sc;

    if (argc < 2 || dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "usage: check_cache_sched MODEL_DIR (%s)\n", argc < 2 ? "" : err);
        return 2;
    }
    int     V = dsv4_model_config(m)->vocab_size, A = dsv4_seq_state_align(m);
    int     B = A >= 8 ? A : 8, L1 = 5 * B + 3, L2 = 7 * B + 1;
    int32_t *toks = malloc((size_t) L2 * sizeof(int32_t)), want[3][NGEN], got[4][NGEN];
    uint64_t x = 0x2545F4914F6CDD1Dull;

    for (int i = 0; i < L2; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        toks[i] = (int32_t) (x % (uint64_t) V);
    }
    solo_greedy(m, toks, L1, NGEN, want[0]);
    solo_greedy(m, toks, L2, NGEN, want[1]);

    memset(&cc, 0, sizeof(cc));
    cc.block_tokens = B;
    cc.checkpoint_blocks = 2;
    cc.mem_bytes = (size_t) 64 << 20;
    cc.write = DSV4_CACHE_WRITE_ALL;
    if (dsv4_cache_new(&cache, m, &cc, err, sizeof(err)) != 0) {
        fprintf(stderr, "cache: %s\n", err);
        return 2;
    }
    memset(&sc, 0, sizeof(sc));
    sc.n_engines = 2;
    sc.max_seqs = 4;
    sc.max_batch_tokens = 12;
    sc.prefill_chunk = 5;
    sc.max_queue = 8;
    sc.max_ctx = L2 + NGEN + 1;
    sc.backend = dsv4_backend_cpu_scalar();
    sc.cache = cache;
    dsv4_sched *s = dsv4_sched_new(m, &sc, err, sizeof(err));
    TEST_CHECK(s != NULL, "sched: %s", err);
    if (s == NULL) {
        return TEST_REPORT();
    }

    dsv4_request *r1 = make_req(toks, L1, NULL);
    TEST_CHECK(run(s, &r1, 1, got) == 0, "first request did not finish");
    TEST_CHECK(dsv4_request_cached_tokens(r1) == 0, "first request: %d cached",
               dsv4_request_cached_tokens(r1));
    TEST_CHECK(memcmp(got[0], want[0], sizeof(want[0])) == 0, "first request: tokens differ");
    dsv4_request_release(r1);
    TEST_CHECK(dsv4_cache_flush(cache, 10000) == 0, "write-back did not drain");

    dsv4_request *rs[3] = { make_req(toks, L2, NULL), make_req(toks, L1, NULL),
                            make_req(toks, L1, "another tenant") };
    int expect[3] = { 5 * B, 5 * B, 0 };
    TEST_CHECK(run(s, rs, 3, got) == 0, "requests did not finish");
    for (int i = 0; i < 3; i++) {
        int c = dsv4_request_cached_tokens(rs[i]);
        TEST_CHECK(c == expect[i], "request %d: %d cached tokens, expected %d", i, c, expect[i]);
        TEST_CHECK(memcmp(got[i], want[i == 0 ? 1 : 0], sizeof(want[0])) == 0,
                   "request %d (%d cached): tokens differ from a solo run", i, c);
        dsv4_request_release(rs[i]);
    }
    dsv4_cache_stats st;
    dsv4_cache_get_stats(cache, &st);
    TEST_CHECK(st.lookups == 4 && st.lookup_hits == 2 && st.captures > 0,
               "stats: %llu lookups, %llu hits, %llu captures",
               (unsigned long long) st.lookups, (unsigned long long) st.lookup_hits,
               (unsigned long long) st.captures);
    printf("sched + cache: block %d, cached tokens %d/%d/%d, completions equal solo runs\n", B,
           expect[0], expect[1], expect[2]);
    dsv4_sched_free(s);
    dsv4_cache_free(cache);
    dsv4_model_free(m);
    free(toks);
    return TEST_REPORT();
}
