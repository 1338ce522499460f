/*
 * check_cache MODEL_DIR [redis]      prefix cache on a tiny model
 * check_cache --layout MODEL_DIR     bytes per cached token of a real layout
 *
 * Exactness: a request that resumes from a cached prefix of length P and
 * prefills the rest must produce the same logits, bit for bit (scalar
 * backend), as one that prefills everything — for prompts shorter than a
 * block, on a boundary, one past it and mid-block, for partial overlaps and
 * per-tenant salts, for the MTP block, and with several engine threads
 * sharing one cache.  Each check also asserts the restored length P.
 *
 * Tiers: memory only; disk only across a restart (a new cache on the same
 * directory) with promotion to memory; a corrupt disk file.
 *
 * With "redis" the test starts its own redis-server on 127.0.0.1 at a high
 * port (stopped by pid, never by name) and checks sharing between two
 * "servers" (two caches), TTL, and faults: garbage, truncated and
 * foreign-fingerprint values, maxmemory (OOM), a stopped server (SIGSTOP:
 * timeouts, then skipped while backing off), a server that went away, a
 * restart under an established connection, and the value size limit.  Every
 * fault must end in a correct answer (exact logits) and a moving counter.
 * SIGPIPE is left at its default: a write to a dead server must not kill us.
 *
 * --layout loads a real-size layout (holes, no weights), fills a sequence
 * with engine-shaped values (FP8 / FP4 quantised like forward.c) and packs
 * history and tail exactly as the cache does: bytes per token.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/internal.h"
#include "dsv4.h"
#include "kernels.h"
#include "seq_state.h"
#include "tests/test.h"

#define K_DECODE 3       /* greedy steps compared after the prompt */
#define MAX_LEN  400

static dsv4_model        *M;
static const dsv4_config *CFG;
static dsv4_ctx          *CTX;
static int                V, ALIGN;
static int32_t            TOKS[MAX_LEN + 8], OTHER[MAX_LEN + 8], FRESH[MAX_LEN + 8];
static char               TMP[512];
static int                log_warns;

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void
on_log(void *data, int level, const char *msg)
{
    if (level == DSV4_CACHE_LOG_WARN) {
        __atomic_add_fetch(&log_warns, 1, __ATOMIC_RELAXED);
    }
    if (getenv("CHECK_CACHE_VERBOSE")) {
        fprintf(stderr, "  [%s] %s\n", level == DSV4_CACHE_LOG_WARN ? "warn" : "info", msg);
    }
}

static int
argmax(const float *v)
{
    int b = 0;
    for (int i = 1; i < V; i++) {
        if (v[i] > v[b]) {
            b = i;
        }
    }
    return b;
}

/*
 * One request on ctx: restore from the cache (if any), prefill the rest of
 * toks[0..L) in chunks of 13 that stop at capture points (capturing there),
 * then K_DECODE greedy steps.  out: [(K_DECODE + 1), V] logits.  Returns P.
 */
static int
run_request(dsv4_ctx *ctx, dsv4_cache *cache, const int32_t *toks, int L, const char *salt,
            float *out)
{
    char            err[256];
    dsv4_seq       *s = dsv4_seq_new(M, L + K_DECODE + 1, err, sizeof(err));
    dsv4_cache_req *q = cache ? dsv4_cache_req_new(cache, toks, L, salt, salt ? strlen(salt)
                                                                              : 0) : NULL;
    int             P = q ? dsv4_cache_restore(q, s) : 0, pos = P;

    if (dsv4_seq_pos(s) != P) {
        fprintf(stderr, "sequence at %d after a restore of %d\n", dsv4_seq_pos(s), P);
        exit(3);
    }
    while (pos < L) {
        int n = L - pos < 13 ? L - pos : 13, cap = q ? dsv4_cache_next_capture(q, pos) : 0;
        if (cap > 0 && pos + n > cap) {
            n = cap - pos;
        }
        if (dsv4_forward(ctx, s, toks + pos, n, pos + n == L ? out : NULL, err, sizeof(err))
            != 0) {
            fprintf(stderr, "forward: %s\n", err);
            exit(3);
        }
        pos += n;
        if (cap > 0 && pos == cap) {
            dsv4_cache_capture(q, s);
        }
    }
    for (int k = 0; k < K_DECODE; k++) {
        int32_t t = argmax(out + (size_t) k * V);
        if (dsv4_forward(ctx, s, &t, 1, out + (size_t) (k + 1) * V, err, sizeof(err)) != 0) {
            fprintf(stderr, "decode: %s\n", err);
            exit(3);
        }
    }
    dsv4_cache_req_free(q);
    dsv4_seq_free(s);
    return P;
}

/* Baseline logits of toks[0..L) computed without any cache. */
static float *
baseline(const int32_t *toks, int L)
{
    float *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));
    run_request(CTX, NULL, toks, L, NULL, out);
    return out;
}

static int
same_logits(const float *a, const float *b)
{
    return memcmp(a, b, (size_t) (K_DECODE + 1) * V * sizeof(float)) == 0;
}

static dsv4_cache *
new_cache(dsv4_cache_conf *conf)
{
    dsv4_cache *c;
    char        err[256];

    conf->log = on_log;
    if (dsv4_cache_new(&c, M, conf, err, sizeof(err)) != 0) {
        fprintf(stderr, "cache: %s\n", err);
        exit(3);
    }
    return c;
}

static dsv4_cache_conf
mem_conf(int B, int ckpt)
{
    dsv4_cache_conf conf;

    memset(&conf, 0, sizeof(conf));
    conf.block_tokens = B;
    conf.checkpoint_blocks = ckpt;
    conf.mem_bytes = (size_t) 256 << 20;
    conf.write = DSV4_CACHE_WRITE_ALL;
    conf.chat_version = "test-chat-1";
    return conf;
}

static uint64_t
stat_err(dsv4_cache *c, int e)
{
    dsv4_cache_stats st;
    dsv4_cache_get_stats(c, &st);
    return st.errors[e];
}

/* The position a request of length L2 should resume at after one of length
 * L1 wrote its captures (same tokens; checkpoints every ckpt blocks and at
 * the last boundary <= L1). */
static int
expect_P(int B, int ckpt, int L1, int L2)
{
    int last = L1 / B * B, best = 0;

    for (int c = ckpt * B; c < last; c += ckpt * B) {
        if (c <= L2 - 1) {
            best = c;
        }
    }
    if (last > 0 && last <= L2 - 1) {
        best = last;
    }
    return best;
}

/* ---- exactness --------------------------------------------------------- */

static void
check_lengths(int B)
{
    const int ckpt = 2;
    int       L1s[2] = { 5 * B + 3, 4 * B };
    int       L2s[] = { B - 1, B, B + 1, 2 * B, 2 * B + 1, 3 * B + 5, 4 * B, 4 * B + 1,
                        5 * B + 3, 7 * B + 2 };
    float    *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));
    int       bad = 0, checked = 0;

    for (int a = 0; a < 2; a++) {
        for (size_t b = 0; b < sizeof(L2s) / sizeof(L2s[0]); b++) {
            int L1 = L1s[a], L2 = L2s[b];
            if (L2 > MAX_LEN || L2 < 1) {
                continue;
            }
            dsv4_cache_conf conf = mem_conf(B, ckpt);
            dsv4_cache     *c = new_cache(&conf);
            float          *base = baseline(TOKS, L2);
            int             P1 = run_request(CTX, c, TOKS, L1, NULL, out);
            dsv4_cache_flush(c, 10000);
            int P2 = run_request(CTX, c, TOKS, L2, NULL, out);
            int want = expect_P(B, ckpt, L1, L2);
            TEST_CHECK(P1 == 0, "first request restored %d", P1);
            TEST_CHECK(P2 == want, "L1 %d L2 %d: restored %d, expected %d", L1, L2, P2, want);
            TEST_CHECK(same_logits(out, base), "L1 %d L2 %d (P %d): logits differ from a cold"
                       " prefill", L1, L2, P2);
            bad += P2 != want || !same_logits(out, base);
            checked++;
            free(base);
            dsv4_cache_free(c);
        }
    }
    printf("lengths: %d resume cases (B %d, prompts below, on and past boundaries), %d bad\n",
           checked, B, bad);
    free(out);
}

static void
check_overlap_and_salt(int B)
{
    float          *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));
    dsv4_cache_conf conf = mem_conf(B, 1);
    dsv4_cache     *c = new_cache(&conf);
    int             L = 6 * B + 3, split = 3 * B + 4, P;
    int             hits[DSV4_CACHE_NTIERS];

    /* a second prompt sharing only the first split tokens */
    memcpy(OTHER, TOKS, sizeof(TOKS));
    for (int i = split; i < MAX_LEN; i++) {
        OTHER[i] = (TOKS[i] + 1 + i) % V;
    }
    run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    float *base = baseline(OTHER, L);
    P = run_request(CTX, c, OTHER, L, NULL, out);
    TEST_CHECK(P == 3 * B, "diverging at %d: restored %d, expected %d", split, P, 3 * B);
    TEST_CHECK(same_logits(out, base), "diverging prompt: logits differ");
    free(base);

    /* per-tenant salt: tenant b never sees tenant a's prefix */
    base = baseline(TOKS, L);
    run_request(CTX, c, TOKS, L, "tenant-a", out);
    dsv4_cache_flush(c, 10000);
    P = run_request(CTX, c, TOKS, L, "tenant-b", out);
    TEST_CHECK(P == 0, "tenant b restored %d tokens of tenant a's prefix", P);
    P = run_request(CTX, c, TOKS, L, "tenant-a", out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "tenant a: restored %d", P);

    /* hits by tier: all from memory */
    dsv4_cache_req *q = dsv4_cache_req_new(c, TOKS, L, NULL, 0);
    dsv4_seq       *s = dsv4_seq_new(M, L, NULL, 0);
    P = dsv4_cache_restore(q, s);
    dsv4_cache_req_hits(q, hits);
    TEST_CHECK(hits[DSV4_CACHE_TIER_MEM] == P && P == 6 * B, "memory hits %d of %d",
               hits[DSV4_CACHE_TIER_MEM], P);
    /* a sequence too short for the prefix: the restore is refused, not overrun */
    dsv4_seq *small = dsv4_seq_new(M, 2 * B + 3, NULL, 0);
    uint64_t  e0 = stat_err(c, DSV4_CACHE_ERR_CORRUPT) + stat_err(c, DSV4_CACHE_ERR_FOREIGN);
    P = dsv4_cache_restore(q, small);
    TEST_CHECK(P == 2 * B, "a sequence of %d positions restored %d", 2 * B + 3, P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_CORRUPT) + stat_err(c, DSV4_CACHE_ERR_FOREIGN) == e0,
               "a short sequence counted values as bad");
    dsv4_seq_free(small);
    P = dsv4_cache_restore(q, s);
    TEST_CHECK(P == 6 * B, "values lost after a short restore: %d", P);
    dsv4_cache_req_free(q);
    dsv4_seq_free(s);
    free(base);
    dsv4_cache_free(c);
    free(out);
}

/* MTP in step with the main model: a restored sequence continues both. */
static void
check_mtp(int B)
{
    int             L = 4 * B + 5, P = 0;
    char            err[256];
    float          *ref = malloc((size_t) L * V * sizeof(float));   /* MTP logits per t */
    float          *lg = malloc((size_t) V * sizeof(float));
    dsv4_cache_conf conf = mem_conf(B, 1);
    dsv4_cache     *c = new_cache(&conf);
    int             bad = 0;

    if (CFG->n_mtp_layers == 0) {
        free(ref);
        free(lg);
        dsv4_cache_free(c);
        return;
    }
    for (int pass = 0; pass < 2; pass++) {
        dsv4_seq       *s = dsv4_seq_new(M, L + 1, err, sizeof(err));
        dsv4_cache_req *q = dsv4_cache_req_new(c, TOKS, L, NULL, 0);
        int             t0 = pass == 0 ? 0 : (P = dsv4_cache_restore(q, s));
        if (pass == 1) {
            TEST_CHECK(dsv4_seq_mtp_pos(s) == P, "MTP position %d after restoring %d",
                       dsv4_seq_mtp_pos(s), P);
        }
        for (int t = t0; t < L - 1; t++) {
            dsv4_forward(CTX, s, TOKS + t, 1, lg, err, sizeof(err));
            dsv4_mtp_forward(CTX, s, dsv4_ctx_hidden(CTX, 0), TOKS[t + 1], lg, err,
                             sizeof(err));
            if (pass == 0) {
                memcpy(ref + (size_t) t * V, lg, (size_t) V * sizeof(float));
            } else {
                bad += memcmp(ref + (size_t) t * V, lg, (size_t) V * sizeof(float)) != 0;
            }
            int cap = dsv4_cache_next_capture(q, t);
            if (pass == 0 && cap == t + 1) {
                dsv4_cache_capture(q, s);     /* MTP has consumed the same positions */
            }
        }
        dsv4_cache_req_free(q);
        dsv4_seq_free(s);
        dsv4_cache_flush(c, 10000);
    }
    TEST_CHECK(P == (L - 1) / B * B, "MTP run restored %d", P);
    TEST_CHECK(bad == 0, "%d MTP logits differ after a restore", bad);
    printf("mtp: restored %d, MTP logits of %d later positions identical\n", P, L - 1 - P);
    free(ref);
    free(lg);
    dsv4_cache_free(c);
}

typedef struct {
    dsv4_cache *c;
    int         L;
    int         ok;
    float      *base;
} thread_arg;

static void *
thread_main(void *arg)
{
    thread_arg *a = arg;
    char        err[256];
    dsv4_ctx   *ctx = dsv4_ctx_new(M, dsv4_backend_cpu_scalar(), 64, MAX_LEN + 8, err,
                                   sizeof(err));
    float      *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));

    a->ok = 1;
    for (int it = 0; it < 3; it++) {
        run_request(ctx, a->c, TOKS, a->L, NULL, out);
        a->ok &= same_logits(out, a->base);
    }
    free(out);
    dsv4_ctx_free(ctx);
    return NULL;
}

/* Three engine threads sharing one cache (memory + whatever conf has). */
static void
check_threads(dsv4_cache_conf conf, const char *what)
{
    enum { NT = 3 };
    dsv4_cache *c = new_cache(&conf);
    int         B = dsv4_cache_block_tokens(c);
    pthread_t   th[NT];
    thread_arg  a[NT];
    int         ok = 1;

    for (int t = 0; t < NT; t++) {
        a[t] = (thread_arg) { c, (3 + 2 * t) * B + t, 0, NULL };
        a[t].base = baseline(TOKS, a[t].L);
        pthread_create(&th[t], NULL, thread_main, &a[t]);
    }
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        ok &= a[t].ok;
        free(a[t].base);
    }
    dsv4_cache_stats st;
    dsv4_cache_get_stats(c, &st);
    TEST_CHECK(ok, "%s: a thread saw different logits", what);
    TEST_CHECK(st.lookup_hits > 0, "%s: no thread hit the cache", what);
    printf("threads (%s): %d engines x 3 requests, %llu hits, all exact\n", what, NT,
           (unsigned long long) st.lookup_hits);
    dsv4_cache_free(c);
}

/* ---- disk tier --------------------------------------------------------- */

static void
check_disk(int B)
{
    char            dir[700], cmd[1500];
    float          *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));
    int             L = 5 * B + 1, P, hits[DSV4_CACHE_NTIERS];
    float          *base = baseline(TOKS, L);
    dsv4_cache_conf conf = mem_conf(B, 1);

    snprintf(dir, sizeof(dir), "%s/disk", TMP);
    conf.mem_bytes = 0;
    conf.disk_dir = dir;
    conf.disk_bytes = (size_t) 64 << 20;
    dsv4_cache *c = new_cache(&conf);
    run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    dsv4_cache_free(c);                         /* "restart" */

    conf.mem_bytes = (size_t) 64 << 20;         /* now memory + disk */
    c = new_cache(&conf);
    dsv4_cache_req *q = dsv4_cache_req_new(c, TOKS, L, NULL, 0);
    dsv4_seq       *s = dsv4_seq_new(M, L + K_DECODE + 1, NULL, 0);
    P = dsv4_cache_restore(q, s);
    dsv4_cache_req_hits(q, hits);
    TEST_CHECK(P == 5 * B && hits[DSV4_CACHE_TIER_DISK] == P, "after a restart: %d restored,"
               " %d from disk", P, hits[DSV4_CACHE_TIER_DISK]);
    dsv4_cache_req_free(q);
    dsv4_seq_free(s);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 5 * B && same_logits(out, base), "disk resume: %d, logits %s", P,
               same_logits(out, base) ? "same" : "differ");
    dsv4_cache_stats st;
    dsv4_cache_get_stats(c, &st);
    TEST_CHECK(st.hit_tokens[DSV4_CACHE_TIER_MEM] == (uint64_t) P, "promotion to memory: %llu"
               " memory hit tokens", (unsigned long long) st.hit_tokens[DSV4_CACHE_TIER_MEM]);
    dsv4_cache_free(c);

    /* a corrupt file: block 2's history overwritten -> resume at 2B, file gone */
    conf.mem_bytes = 0;
    c = new_cache(&conf);
    q = dsv4_cache_req_new(c, TOKS, L, NULL, 0);
    char hex[65];
    {
        uint8_t keys[8][32];
        dsv4_cache_chain(dsv4_cache_fingerprint(c), NULL, 0, B, TOKS, 3, keys);
        dsv4_cache_hex(keys[2], 32, hex);
    }
    snprintf(cmd, sizeof(cmd), "%s/%.2s/%s.h", dir, hex, hex);
    FILE *f = fopen(cmd, "r+");
    if (f != NULL) {
        fseek(f, 100, SEEK_SET);
        fputs("garbage", f);
        fclose(f);
    }
    uint64_t e0 = stat_err(c, DSV4_CACHE_ERR_CORRUPT);
    dsv4_cache_req_free(q);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(f != NULL && P == 2 * B && same_logits(out, base), "corrupt disk value: resumed"
               " at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_CORRUPT) == e0 + 1, "corrupt disk value not counted");
    dsv4_cache_flush(c, 10000);                 /* the recompute wrote it back */
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 5 * B && same_logits(out, base), "after repair: resumed at %d", P);
    dsv4_cache_free(c);
    free(base);
    free(out);
}

/* ---- Redis ------------------------------------------------------------- */

static pid_t redis_pid = -1;
static int   redis_port;

static redisContext *
redis_conn(void)
{
    struct timeval tv = { 1, 0 };
    redisContext  *r = redisConnectWithTimeout("127.0.0.1", redis_port, tv);

    if (r != NULL && r->err) {
        redisFree(r);
        return NULL;
    }
    return r;
}

static int
redis_ping(void)
{
    redisContext *r = redis_conn();
    redisReply   *rep = r ? redisCommand(r, "PING") : NULL;
    int           ok = rep && rep->type == REDIS_REPLY_STATUS;

    if (rep) {
        freeReplyObject(rep);
    }
    if (r) {
        redisFree(r);
    }
    return ok;
}

/* Starts redis-server on redis_port, with command `hide` disabled when not
 * NULL (as on an older server without it); returns 0 when it answers PING. */
static int
redis_start_hiding(const char *hide)
{
    char port[16], dir[700], log[800];

    snprintf(port, sizeof(port), "%d", redis_port);
    snprintf(dir, sizeof(dir), "%s/redis", TMP);
    snprintf(log, sizeof(log), "%s/redis.log", dir);
    mkdir(dir, 0700);
    redis_pid = fork();
    if (redis_pid == 0) {
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", dir, "--logfile", log,
               "--daemonize", "no", hide ? "--rename-command" : (char *) NULL, hide, "",
               (char *) NULL);
        _exit(127);
    }
    for (int i = 0; i < 250; i++) {
        int st;
        if (waitpid(redis_pid, &st, WNOHANG) == redis_pid) {
            redis_pid = -1;
            return -1;              /* exited: port taken? */
        }
        if (redis_ping()) {
            return 0;
        }
        usleep(20000);
    }
    return -1;
}

static int
redis_start(void)
{
    return redis_start_hiding(NULL);
}

static void
redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static void
redis_stop_atexit(void)
{
    redis_stop();
}

/* Runs a command on a fresh connection; returns the reply (caller frees). */
static redisReply *
redis_do(const char *fmt, ...)
{
    redisContext *r = redis_conn();
    redisReply   *rep = NULL;
    va_list       ap;

    if (r == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    rep = redisvCommand(r, fmt, ap);
    va_end(ap);
    redisFree(r);
    return rep;
}

static void
redis_ok(const char *fmt, const char *a, const char *b)
{
    redisReply *rep = redis_do(fmt, a, b);
    if (rep) {
        freeReplyObject(rep);
    }
}

static dsv4_cache_conf
redis_conf(int B)
{
    dsv4_cache_conf conf = mem_conf(B, 1);

    conf.mem_bytes = 0;
    conf.redis_host = "127.0.0.1";
    conf.redis_port = redis_port;
    conf.redis_prefix = "dsv4test:";
    conf.redis_timeout_ms = 200;
    conf.redis_retry_ms = 300;
    conf.redis_ttl_s = 600;
    conf.redis_conns = 4;
    return conf;
}

/* Redis key of block j's value of kind under cache c (unsalted TOKS). */
static void
key_of(dsv4_cache *c, int B, int j, int kind, char *out, size_t cap)
{
    uint8_t       keys[64][32];
    dsv4_cache_id id;

    dsv4_cache_chain(dsv4_cache_fingerprint(c), NULL, 0, B, TOKS, j + 1, keys);
    memcpy(id.key, keys[j], 32);
    id.kind = kind;
    dsv4_cache_redis_key("dsv4test:", &id, out, cap);
}

static long long
redis_int(const char *fmt, const char *key)
{
    redisReply *rep = redis_do(fmt, key);
    long long   v = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -999;

    if (rep) {
        freeReplyObject(rep);
    }
    return v;
}

static void
check_redis(int B)
{
    float          *out = malloc((size_t) (K_DECODE + 1) * V * sizeof(float));
    int             L = 6 * B + 2, P, hits[DSV4_CACHE_NTIERS];
    float          *base = baseline(TOKS, L);
    char            key[400], dir[700];
    dsv4_cache_conf conf = redis_conf(B);
    double          t0;

    /* two servers: A writes through Redis, B (memory + disk + Redis) reads a
     * longer conversation, then hits its own memory */
    dsv4_cache_conf ca = conf, cb = conf;
    ca.mem_bytes = (size_t) 64 << 20;
    cb.mem_bytes = (size_t) 64 << 20;
    snprintf(dir, sizeof(dir), "%s/disk-b", TMP);
    cb.disk_dir = dir;
    dsv4_cache *A = new_cache(&ca), *Bc = new_cache(&cb);
    int         L1 = 4 * B + 3;
    run_request(CTX, A, TOKS, L1, NULL, out);
    dsv4_cache_flush(A, 10000);
    key_of(A, B, 3, 'h', key, sizeof(key));
    long long ttl = redis_int("PTTL %s", key);
    TEST_CHECK(ttl > 500000 && ttl <= 600000, "TTL of %s: %lld ms", key, ttl);
    /* as if written long ago: a read gives it its whole TTL again */
    redisReply *rr = redis_do("PEXPIRE %s 100000", key);
    if (rr) {
        freeReplyObject(rr);
    }
    dsv4_cache_req *q = dsv4_cache_req_new(Bc, TOKS, L, NULL, 0);
    dsv4_seq       *s = dsv4_seq_new(M, L + 8, NULL, 0);
    P = dsv4_cache_restore(q, s);
    dsv4_cache_req_hits(q, hits);
    TEST_CHECK(P == 4 * B && hits[DSV4_CACHE_TIER_REDIS] == P, "server B: restored %d, %d from"
               " redis", P, hits[DSV4_CACHE_TIER_REDIS]);
    ttl = redis_int("PTTL %s", key);
    TEST_CHECK(ttl > 500000 && ttl <= 600000, "TTL of %s after a read: %lld ms (not refreshed)",
               key, ttl);
    dsv4_cache_req_free(q);
    dsv4_seq_free(s);
    P = run_request(CTX, Bc, TOKS, L, NULL, out);
    TEST_CHECK(P == 4 * B && same_logits(out, base), "server B: resumed at %d, logits %s", P,
               same_logits(out, base) ? "same" : "differ");
    dsv4_cache_flush(Bc, 10000);
    q = dsv4_cache_req_new(Bc, TOKS, L, NULL, 0);
    s = dsv4_seq_new(M, L + 8, NULL, 0);
    P = dsv4_cache_restore(q, s);
    dsv4_cache_req_hits(q, hits);
    TEST_CHECK(P == 6 * B && hits[DSV4_CACHE_TIER_MEM] == P, "server B again: %d restored, %d"
               " from memory", P, hits[DSV4_CACHE_TIER_MEM]);
    dsv4_cache_req_free(q);
    dsv4_seq_free(s);
    dsv4_cache_stats st;
    dsv4_cache_get_stats(Bc, &st);
    TEST_CHECK(st.written_values[DSV4_CACHE_TIER_DISK] > 0, "server B: Redis hits not promoted"
               " to disk");
    dsv4_cache_free(A);
    dsv4_cache_free(Bc);

    /* faults, on a Redis-only cache so every value comes from Redis */
    dsv4_cache *c = new_cache(&conf);
    run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "redis resume at %d", P);

    /* garbage in block 2's history: resume at 2B, the key is deleted, the
     * recompute writes it back */
    uint64_t e0 = stat_err(c, DSV4_CACHE_ERR_CORRUPT);
    key_of(c, B, 2, 'h', key, sizeof(key));
    redis_ok("SET %s %s", key, "garbage, not a value");
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 2 * B && same_logits(out, base), "garbage value: resumed at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_CORRUPT) == e0 + 1, "garbage not counted as corrupt");
    dsv4_cache_flush(c, 10000);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "after the write-back repaired it: %d", P);

    /* a value cut in half (the last checkpoint): resume at the one before */
    key_of(c, B, 5, 't', key, sizeof(key));
    redisReply *rep = redis_do("GET %s", key);
    TEST_CHECK(rep && rep->type == REDIS_REPLY_STRING, "GET %s", key);
    if (rep && rep->type == REDIS_REPLY_STRING) {
        redisReply *r2 = redis_do("SET %s %b", key, rep->str, (size_t) rep->len / 2);
        if (r2) {
            freeReplyObject(r2);
        }
    }
    if (rep) {
        freeReplyObject(rep);
    }
    e0 = stat_err(c, DSV4_CACHE_ERR_CORRUPT);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 5 * B && same_logits(out, base), "truncated tail: resumed at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_CORRUPT) == e0 + 1, "truncation not counted");

    /* a well-formed value of another model fingerprint under block 0's key */
    {
        dsv4_cache_value v;
        uint8_t          payload[64] = { 0 }, keys[1][32];
        memset(&v, 0, sizeof(v));
        v.kind = 'h';
        memset(v.fp, 0xAB, 32);
        dsv4_cache_chain(dsv4_cache_fingerprint(c), NULL, 0, B, TOKS, 1, keys);
        memcpy(v.key, keys[0], 32);
        v.block_tokens = (uint32_t) B;
        v.pos = (uint32_t) B;
        v.payload = payload;
        v.payload_len = sizeof(payload);
        dsv4_cache_blob *b = dsv4_cache_value_encode(&v);
        key_of(c, B, 0, 'h', key, sizeof(key));
        redisReply *r2 = redis_do("SET %s %b", key, b->data, b->len);
        if (r2) {
            freeReplyObject(r2);
        }
        dsv4_cache_blob_unref(b);
    }
    e0 = stat_err(c, DSV4_CACHE_ERR_FOREIGN);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 0 && same_logits(out, base), "foreign value: resumed at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_FOREIGN) == e0 + 1, "foreign value not counted");
    dsv4_cache_flush(c, 10000);

    /* maxmemory: writes refused (OOM), reads still served */
    redis_ok("CONFIG SET %s %s", "maxmemory", "1");
    e0 = stat_err(c, DSV4_CACHE_ERR_OOM);
    float *base2 = baseline(FRESH, 3 * B + 1);
    P = run_request(CTX, c, FRESH, 3 * B + 1, NULL, out);      /* new blocks to write */
    dsv4_cache_flush(c, 10000);
    TEST_CHECK(same_logits(out, base2), "under OOM: logits differ");
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_OOM) > e0, "OOM not counted");
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "reads under OOM: resumed at %d", P);
    redis_ok("CONFIG SET %s %s", "maxmemory", "0");
    free(base2);

    /* a stopped server: one timeout, then skipped while backing off */
    kill(redis_pid, SIGSTOP);
    e0 = stat_err(c, DSV4_CACHE_ERR_TIMEOUT);
    t0 = now_s();
    dsv4_cache_req *q2 = dsv4_cache_req_new(c, TOKS, L, NULL, 0);
    s = dsv4_seq_new(M, L + 8, NULL, 0);
    P = dsv4_cache_restore(q2, s);
    double dt = now_s() - t0;
    TEST_CHECK(P == 0 && dt < 1.0, "stopped server: restored %d in %.3f s", P, dt);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_TIMEOUT) == e0 + 1, "timeout not counted");
    uint64_t sk = stat_err(c, DSV4_CACHE_ERR_SKIPPED);
    t0 = now_s();
    P = dsv4_cache_restore(q2, s);
    dt = now_s() - t0;
    TEST_CHECK(P == 0 && dt < 0.05 && stat_err(c, DSV4_CACHE_ERR_SKIPPED) > sk,
               "while backing off: %d in %.3f s, skipped not counted", P, dt);
    dsv4_cache_req_free(q2);
    dsv4_seq_free(s);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(same_logits(out, base), "stopped server: logits differ");
    dsv4_cache_flush(c, 10000);
    kill(redis_pid, SIGCONT);
    usleep(400000);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "after SIGCONT: resumed at %d", P);

    /* the server goes away: connect refused after the back-off, answers correct */
    redis_stop();
    usleep(400000);
    e0 = stat_err(c, DSV4_CACHE_ERR_CONNECT) + stat_err(c, DSV4_CACHE_ERR_IO);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    TEST_CHECK(P == 0 && same_logits(out, base), "server down: resumed at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_CONNECT) + stat_err(c, DSV4_CACHE_ERR_IO) > e0,
               "server down: no connect/io error counted");

    /* it comes back empty: a miss, then the write-back repopulates it */
    TEST_CHECK(redis_start() == 0, "redis restart");
    usleep(400000);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    TEST_CHECK(P == 0 && same_logits(out, base), "restarted empty: resumed at %d", P);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "repopulated: resumed at %d", P);

    /* restart under established connections: the first call fails (EOF),
     * the next ones reconnect; the new server has no GETEX (Redis < 6.2),
     * so reads fall back to GET */
    redis_stop();
    TEST_CHECK(redis_start_hiding("GETEX") == 0, "redis second restart");
    e0 = stat_err(c, DSV4_CACHE_ERR_IO) + stat_err(c, DSV4_CACHE_ERR_CONNECT);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 0 && same_logits(out, base), "stale connection: resumed at %d", P);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_IO) + stat_err(c, DSV4_CACHE_ERR_CONNECT) > e0,
               "stale connection: error not counted");
    dsv4_cache_flush(c, 10000);
    usleep(400000);
    run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    P = run_request(CTX, c, TOKS, L, NULL, out);
    TEST_CHECK(P == 6 * B && same_logits(out, base), "reconnected: resumed at %d", P);
    dsv4_cache_get_stats(c, &st);
    printf("redis: %llu round trips, mean %.0f us, max %llu us; errors:",
           (unsigned long long) st.redis_calls,
           st.redis_calls ? (double) st.redis_usec_sum / (double) st.redis_calls : 0.0,
           (unsigned long long) st.redis_usec_max);
    for (int e = 0; e < DSV4_CACHE_NERRORS; e++) {
        if (st.errors[e]) {
            printf(" %s %llu", dsv4_cache_error_name(e), (unsigned long long) st.errors[e]);
        }
    }
    printf("\n");
    dsv4_cache_free(c);

    /* the size limit: nothing stored, counted */
    conf.redis_max_value = 1000;
    conf.redis_prefix = "dsv4test-small:";
    c = new_cache(&conf);
    run_request(CTX, c, TOKS, L, NULL, out);
    dsv4_cache_flush(c, 10000);
    TEST_CHECK(stat_err(c, DSV4_CACHE_ERR_TOO_BIG) > 0, "oversized values not counted");
    dsv4_cache_get_stats(c, &st);
    TEST_CHECK(st.written_values[DSV4_CACHE_TIER_REDIS] == 0, "oversized values stored");
    dsv4_cache_free(c);

    /* the value of a > 16 KB reply path and the log lines */
    TEST_CHECK(log_warns > 0, "no warning was logged for the faults");
    free(base);
    free(out);
}

/* ---- bytes per token --------------------------------------------------- */

/* Packed bytes of history per token and of one tail, on the model's real
 * layout, with state values shaped like the engine's. */
static void
measure_bytes(const char *what, int B)
{
    const dsv4_backend *be = dsv4_backend_cpu_scalar();
    char                err[256];
    int                 nblk = 4, ns, cap = dsv4_seq_state_max_sections(M);
    dsv4_seq           *s = dsv4_seq_new(M, nblk * B, err, sizeof(err));
    dsv4_ss_section    *sec = calloc((size_t) cap, sizeof(*sec));
    size_t              hist = 0, hist_raw = 0, tail, tail_raw = 0;
    uint64_t            x = 12345;

    if (s == NULL) {
        fprintf(stderr, "%s: %s\n", what, err);
        exit(3);
    }
    /* fill every history and tail row the way forward.c leaves them */
    for (int pass = 0; pass < 2; pass++) {
        ns = pass == 0 ? dsv4_seq_history_sections(s, 0, nblk * B, sec, cap, err, sizeof(err))
                       : dsv4_seq_tail_sections(s, nblk * B, nblk * B, sec, cap, err,
                                                sizeof(err));
        for (int k = 0; k < ns; k++) {
            for (int r = 0; r < sec[k].rows; r++) {
                float *row = sec[k].data + (size_t) r * sec[k].stride;
                for (int i = 0; i < sec[k].width; i++) {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    row[i] = (float) ((double) (x >> 11) / 9007199254740992.0 - 0.5);
                }
                if (sec[k].kind == DSV4_SS_KV) {
                    be->fake_quant_fp8(be, row, sec[k].width - sec[k].raw_tail, 64);
                } else if (sec[k].kind == DSV4_SS_IDX) {
                    be->hadamard(be, row, sec[k].width);
                    be->fake_quant_fp4(be, row, sec[k].width, 32);
                }
            }
        }
    }
    for (int b = 0; b < nblk; b++) {
        ns = dsv4_seq_history_sections(s, b * B, (b + 1) * B, sec, cap, err, sizeof(err));
        uint8_t *buf = malloc(dsv4_cache_pack_bound(sec, ns) + 1);
        hist += dsv4_cache_pack(sec, ns, buf);
        for (int k = 0; k < ns; k++) {
            hist_raw += (size_t) sec[k].rows * sec[k].width * 4;
        }
        free(buf);
    }
    ns = dsv4_seq_tail_sections(s, nblk * B, nblk * B, sec, cap, err, sizeof(err));
    uint8_t *buf = malloc(dsv4_cache_pack_bound(sec, ns) + 1);
    tail = dsv4_cache_pack(sec, ns, buf);
    for (int k = 0; k < ns; k++) {
        tail_raw += (size_t) sec[k].rows * sec[k].width * 4;
    }
    /* unpacking into a second sequence reproduces the bits */
    dsv4_seq *s2 = dsv4_seq_new(M, nblk * B, err, sizeof(err));
    dsv4_ss_section *sec2 = calloc((size_t) cap, sizeof(*sec2));
    int ns2 = dsv4_seq_tail_sections(s2, nblk * B, nblk * B, sec2, cap, err, sizeof(err));
    int ok = ns2 == ns && dsv4_cache_unpack(sec2, ns2, buf, tail) == 0;
    for (int k = 0; k < ns && ok; k++) {
        for (int r = 0; r < sec[k].rows; r++) {
            ok &= memcmp(sec[k].data + (size_t) r * sec[k].stride,
                         sec2[k].data + (size_t) r * sec2[k].stride,
                         (size_t) sec[k].width * 4) == 0;
        }
    }
    TEST_CHECK(ok, "%s: tail round trip not exact", what);
    /* speed of the CPU side of a restore: checksum + unpack of one tail */
    double t0 = now_s();
    int    reps = 0;
    uint64_t sum = 0;
    while (now_s() - t0 < 0.3) {
        sum += dsv4_cache_sum64(buf, tail);
        dsv4_cache_unpack(sec2, ns2, buf, tail);
        reps++;
    }
    double per = (now_s() - t0) / reps, pt0 = now_s();
    int    preps = 0;
    while (now_s() - pt0 < 0.3) {
        sum += dsv4_cache_pack(sec, ns, buf);
        preps++;
    }
    double pper = (now_s() - pt0) / preps;
    printf("%s: tail of %zu bytes: pack %.2f ms (writer thread), checksum + unpack %.2f ms"
           " (%.0f MB/s)%s\n", what, tail, pper * 1e3, per * 1e3, (double) tail / per / 1e6,
           sum == 1 ? " " : "");
    TEST_CHECK(hist * 2 < hist_raw, "%s: history packs to %zu of %zu raw bytes", what, hist,
               hist_raw);
    printf("%s: block %d tokens: history %.1f bytes/token packed (float32: %.1f, %.2fx),"
           " tail %zu bytes packed (float32: %zu) = %.1f bytes/token amortised over %d"
           " blocks\n", what, B, (double) hist / (nblk * B), (double) hist_raw / (nblk * B),
           (double) hist_raw / (double) hist, tail, tail_raw, (double) tail / (16.0 * B), 16);
    free(buf);
    free(sec);
    free(sec2);
    dsv4_seq_free(s);
    dsv4_seq_free(s2);
}

int
main(int argc, char **argv)
{
    char err[512];
    int  layout = argc > 1 && strcmp(argv[1], "--layout") == 0;
    const char *dir = argv[layout ? 2 : 1];

    if (argc < 2 + layout) {
        fprintf(stderr, "usage: check_cache MODEL_DIR [redis] | check_cache --layout DIR\n");
        return 2;
    }
    if (dsv4_model_load(&M, dir, layout ? DSV4_LOAD_LAYOUT_ONLY : 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "load: %s\n", err);
        return 2;
    }
    CFG = dsv4_model_config(M);
    V = CFG->vocab_size;
    ALIGN = dsv4_seq_state_align(M);
    if (layout) {
        measure_bytes(dir, (128 + ALIGN - 1) / ALIGN * ALIGN);
        dsv4_model_free(M);
        return TEST_REPORT();
    }
    snprintf(TMP, sizeof(TMP), "%s/check_cache.%d",
             getenv("DSV4_TEST_TMP") ? getenv("DSV4_TEST_TMP") : "/tmp", (int) getpid());
    mkdir(TMP, 0700);
    CTX = dsv4_ctx_new(M, dsv4_backend_cpu_scalar(), 64, MAX_LEN + 8, err, sizeof(err));
    if (CTX == NULL) {
        fprintf(stderr, "ctx: %s\n", err);
        return 2;
    }
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < MAX_LEN + 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        TOKS[i] = (int32_t) (x % (uint64_t) V);
        FRESH[i] = (int32_t) ((x >> 20) % (uint64_t) V);
    }
    int B = ALIGN >= 8 ? ALIGN : 8;
    while (7 * B + 2 > MAX_LEN) {
        B /= 2;
    }
    printf("model: alignment %d, block %d tokens, window %d\n", ALIGN, B, CFG->window);
    measure_bytes("tiny", B);
    check_lengths(B);
    check_overlap_and_salt(B);
    check_mtp(B);
    check_threads(mem_conf(B, 2), "memory");
    check_disk(B);
    if (argc > 2 && strcmp(argv[2], "redis") == 0) {
        atexit(redis_stop_atexit);
        for (int tries = 0; tries < 5; tries++) {
            redis_port = 20000 + (int) ((getpid() * 7919 + tries * 104729) % 30000);
            if (redis_start() == 0) {
                break;
            }
        }
        TEST_CHECK(redis_pid > 0, "cannot start redis-server");
        if (redis_pid > 0) {
            printf("redis-server pid %d on 127.0.0.1:%d\n", (int) redis_pid, redis_port);
            check_redis(B);
            dsv4_cache_conf conf = redis_conf(B);
            conf.mem_bytes = (size_t) 32 << 20;
            conf.redis_prefix = "dsv4test-threads:";
            check_threads(conf, "memory + redis");
            redis_stop();
        }
    }
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", TMP);
    if (system(cmd) != 0) {
        fprintf(stderr, "cleanup failed\n");
    }
    dsv4_ctx_free(CTX);
    dsv4_model_free(M);
    return TEST_REPORT();
}
