/*
 * restore_bench: inter-token latency of running streams while another
 * request's prefix-cache restore waits on a slow or a stopped Redis (driven
 * by bench/cache, which starts the redis-server).
 *
 *   build/bench/restore_bench MODEL_DIR REDIS_PORT REDIS_PID [--threads N]
 *
 * A scheduler (one engine, 16 sequences, prefill chunks of 32) with a
 * Redis-only prefix cache (timeout 1 s) runs 8 greedy streams.  Once they
 * all stream, one more request is submitted whose 512-token prompt prefix
 * Redis holds, in three rounds:
 *   healthy  Redis answers;
 *   slow     DEBUG SLEEP 0.8 on another connection just before the submit
 *            (the restore waits for it, then hits);
 *   stopped  redis-server SIGSTOPped from just before the submit until that
 *            request has its first token (its restore times out: a miss).
 * The gaps between consecutive tokens of the 8 streams that overlap the
 * 0.75 s after the submit -- while the restore waits on Redis -- give each
 * round's p50/p99.  The restore runs off the engine
 * thread (engine/sched.c), so a slow Redis should not move them: the
 * headline is the worse of the two slow rounds' p99 over the healthy one's.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "dsv4.h"
#include "kernels.h"
#include "sched.h"

#define STREAMS    8
#define STREAM_LEN 150      /* tokens per stream: outlasts the window */
#define PROMPT     544      /* the restoring request: 4 blocks of 128 + 32 */
#define WINDOW_S   0.75     /* inside the stall: DEBUG SLEEP 0.8, timeout 1 s */
#define MAXGAPS    (STREAMS * STREAM_LEN)

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void
die(const char *what, const char *err)
{
    fprintf(stderr, "restore_bench: %s: %s\n", what, err);
    exit(1);
}

static void
log_cb(void *data, int level, const char *msg)
{
    (void) data;
    (void) level;
    fprintf(stderr, "restore_bench: cache: %s\n", msg);
}

static dsv4_request *
request(const int32_t *prompt, int n, int max_tokens)
{
    dsv4_request_params rp;
    char                err[256];

    memset(&rp, 0, sizeof(rp));
    rp.prompt = prompt;
    rp.n_prompt = n;
    rp.max_tokens = max_tokens;
    dsv4_sample_params_default(&rp.sample);
    rp.sample.temperature = 0.0f;
    dsv4_request *r = dsv4_request_new(&rp, err, sizeof(err));
    if (r == NULL) {
        die("request", err);
    }
    return r;
}

static void
submit(dsv4_sched *s, dsv4_request *r)
{
    char err[256];

    if (dsv4_sched_submit(s, r, err, sizeof(err)) != 0) {
        die("submit", err);
    }
}

/* What a round tracks of each request (the streams, then the restoring one). */
typedef struct {
    dsv4_request *r;
    double        last;      /* its last token, s; 0: none yet */
    int           ntok;
    int           done;
} tracked;

/* Takes every request's news; the gaps of streams that overlap [t0, t1] go
 * to gaps[] (a stall that outlasts the window counts whole). */
static void
drain(dsv4_sched *s, tracked *tr, int n, double t0, double t1, double *gaps, int *ngaps)
{
    dsv4_request *r;

    while ((r = dsv4_sched_next_ready(s)) != NULL) {
        double t = now();
        for (int i = 0; i < n; i++) {
            if (tr[i].r != r) {
                continue;
            }
            dsv4_token  tok[64];
            dsv4_finish f;
            int         k;
            while ((k = dsv4_request_take(r, tok, 64, &f)) > 0) {
                if (i < STREAMS && tr[i].last > 0 && t >= t0 && tr[i].last <= t1
                    && *ngaps < MAXGAPS) {
                    gaps[(*ngaps)++] = t - tr[i].last;
                }
                tr[i].last = t;
                tr[i].ntok += k;
            }
            tr[i].done |= f != DSV4_FINISH_NONE;
        }
        dsv4_request_release(r);
    }
}

/* Waits up to ms for news and drains it. */
static void
wait_drain(dsv4_sched *s, tracked *tr, int n, double t0, double t1, double *gaps, int *ngaps,
           int ms)
{
    struct pollfd pfd = { dsv4_sched_fd(s), POLLIN, 0 };

    if (poll(&pfd, 1, ms) > 0) {
        drain(s, tr, n, t0, t1, gaps, ngaps);
    }
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}

static double
percentile(double *v, int n, double p)
{
    int k = (int) (p * (n - 1) + 0.5);

    qsort(v, (size_t) n, sizeof(double), cmp_double);
    return n > 0 ? v[k] : 0.0;
}

typedef struct {
    int    port;
    double secs;
} sleeper;

/* DEBUG SLEEP on a connection of its own (blocks Redis for everyone) */
static void *
debug_sleep(void *arg)
{
    sleeper       *sl = arg;
    redisContext  *c = redisConnect("127.0.0.1", sl->port);
    redisReply    *rep;

    if (c == NULL || c->err) {
        fprintf(stderr, "restore_bench: DEBUG SLEEP: cannot connect\n");
        exit(1);
    }
    rep = redisCommand(c, "DEBUG SLEEP %.3f", sl->secs);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "restore_bench: DEBUG SLEEP refused: %s (redis-server needs "
                "--enable-debug-command)\n", rep ? rep->str : c->errstr);
        exit(1);
    }
    freeReplyObject(rep);
    redisFree(c);
    return NULL;
}

enum { ROUND_HEALTHY, ROUND_SLOW, ROUND_STOPPED };
static const char *round_name[] = { "healthy", "slow (DEBUG SLEEP 0.8 s)", "stopped (SIGSTOP)" };

/* One round: 8 streams, then the restoring request; p50/p99 of the gaps. */
static void
run_round(dsv4_sched *s, int kind, const int32_t *prompt, int port, pid_t redis_pid,
          double *p50, double *p99, double *restore_ttft, int *ngaps_out)
{
    static double gaps[MAXGAPS];
    int32_t       sp[STREAMS][8];
    tracked       tr[STREAMS + 1];
    int           ngaps = 0, stopped = 0;
    pthread_t     th;
    sleeper       sl = { port, 0.8 };

    memset(tr, 0, sizeof(tr));
    for (int i = 0; i < STREAMS; i++) {
        for (int k = 0; k < 8; k++) {
            sp[i][k] = (int32_t) (1000 + 97 * i + 13 * k + 7 * kind);
        }
        tr[i].r = request(sp[i], 8, STREAM_LEN);
        submit(s, tr[i].r);
    }
    /* every stream past its first few tokens */
    for (double end = now() + 60; now() < end; ) {
        int ready = 1;
        for (int i = 0; i < STREAMS; i++) {
            ready &= tr[i].ntok >= 5;
        }
        if (ready) {
            break;
        }
        wait_drain(s, tr, STREAMS, 0, 0, gaps, &ngaps, 100);
    }
    if (kind == ROUND_SLOW && pthread_create(&th, NULL, debug_sleep, &sl) != 0) {
        die("thread", strerror(errno));
    }
    if (kind == ROUND_SLOW) {
        struct timespec ts = { 0, 20 * 1000000 };      /* let DEBUG SLEEP reach Redis */
        nanosleep(&ts, NULL);
    }
    if (kind == ROUND_STOPPED) {
        if (kill(redis_pid, SIGSTOP) != 0) {
            die("SIGSTOP redis-server", strerror(errno));
        }
        stopped = 1;
    }
    double t0 = now(), t1 = t0 + WINDOW_S;
    tr[STREAMS].r = request(prompt, PROMPT, 4);
    submit(s, tr[STREAMS].r);
    *restore_ttft = 0;
    while (now() < t1 || !tr[STREAMS].done) {
        wait_drain(s, tr, STREAMS + 1, t0, t1, gaps, &ngaps, 50);
        if (tr[STREAMS].ntok > 0 && *restore_ttft == 0) {
            *restore_ttft = now() - t0;
        }
        if (stopped && tr[STREAMS].ntok > 0) {
            kill(redis_pid, SIGCONT);
            stopped = 0;
        }
        if (now() > t0 + 60) {
            die("round", "the restoring request did not finish in 60 s");
        }
    }
    if (stopped) {
        kill(redis_pid, SIGCONT);
    }
    if (kind == ROUND_SLOW) {
        pthread_join(th, NULL);
    }
    /* the streams run out; then the next round starts from an idle engine */
    for (double end = now() + 120; now() < end; ) {
        int open = 0;
        for (int i = 0; i < STREAMS; i++) {
            open += !tr[i].done;
        }
        if (!open) {
            break;
        }
        wait_drain(s, tr, STREAMS + 1, 0, 0, gaps, &ngaps, 100);
    }
    *ngaps_out = ngaps;
    *p50 = percentile(gaps, ngaps, 0.50);
    *p99 = percentile(gaps, ngaps, 0.99);
    for (int i = 0; i <= STREAMS; i++) {
        dsv4_request_release(tr[i].r);
    }
}

int
main(int argc, char **argv)
{
    char          err[256];
    dsv4_model   *m;
    dsv4_cache   *cache;
    int           nthreads = 0;

    if (argc < 4) {
        fprintf(stderr, "usage: restore_bench MODEL_DIR REDIS_PORT REDIS_PID [--threads N]\n");
        return 2;
    }
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            nthreads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "restore_bench: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    int   port = atoi(argv[2]);
    pid_t redis_pid = (pid_t) atoi(argv[3]);
    if (dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        die("load", err);
    }
    const dsv4_backend *be = dsv4_backend_cpu_new(nthreads, err, sizeof(err));
    if (be == NULL) {
        die("backend", err);
    }
    dsv4_cache_conf cc;
    memset(&cc, 0, sizeof(cc));
    cc.redis_host = "127.0.0.1";
    cc.redis_port = port;
    cc.redis_prefix = "dsv4restore:";
    cc.redis_timeout_ms = 1000;
    cc.write = DSV4_CACHE_WRITE_REDIS;
    cc.log = log_cb;
    if (dsv4_cache_new(&cache, m, &cc, err, sizeof(err)) != 0) {
        die("cache", err);
    }
    dsv4_sched_conf sc;
    memset(&sc, 0, sizeof(sc));
    sc.n_engines = 1;
    sc.max_seqs = 16;
    sc.max_batch_tokens = 64;
    sc.prefill_chunk = 32;
    sc.max_queue = 64;
    sc.max_ctx = 1024;
    sc.backend = be;
    sc.cache = cache;
    dsv4_sched *s = dsv4_sched_new(m, &sc, err, sizeof(err));
    if (s == NULL) {
        die("scheduler", err);
    }
    /* the restoring request's prefix, written to Redis once */
    int32_t  prompt[PROMPT];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < PROMPT; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        prompt[i] = (int32_t) (x % (uint64_t) dsv4_model_config(m)->vocab_size);
    }
    tracked fill = { request(prompt, PROMPT, 1), 0, 0, 0 };
    double  nogaps[1];
    int     nng = 0;
    submit(s, fill.r);
    for (double end = now() + 120; !fill.done && now() < end; ) {
        wait_drain(s, &fill, 1, 0, 0, nogaps, &nng, 100);
    }
    dsv4_request_release(fill.r);
    if (!fill.done || dsv4_cache_flush(cache, 30000) != 0) {
        die("fill", "the prefix did not reach Redis");
    }
    printf("restore_bench: %s, backend %s, %d thread%s; %d streams, a %d-token restore, "
           "Redis timeout %d ms\n\n", argv[1], be->name, dsv4_backend_cpu_threads(be),
           dsv4_backend_cpu_threads(be) > 1 ? "s" : "", STREAMS, PROMPT, cc.redis_timeout_ms);
    printf("%-26s %8s %10s %10s %16s\n", "round", "gaps", "p50 ms", "p99 ms", "restore TTFT ms");
    double p50[3], p99[3], ttft[3];
    int    ng[3];
    for (int k = ROUND_HEALTHY; k <= ROUND_STOPPED; k++) {
        run_round(s, k, prompt, port, redis_pid, &p50[k], &p99[k], &ttft[k], &ng[k]);
        printf("%-26s %8d %10.1f %10.1f %16.0f\n", round_name[k], ng[k], p50[k] * 1e3,
               p99[k] * 1e3, ttft[k] * 1e3);
        fflush(stdout);
        if (ng[k] < STREAMS) {
            die("round", "a stream produced no token in the window");
        }
    }
    double slow = p99[ROUND_SLOW] / p99[ROUND_HEALTHY];
    double stopped = p99[ROUND_STOPPED] / p99[ROUND_HEALTHY];
    printf("\nitl_p99_ms_healthy %.1f\n", p99[ROUND_HEALTHY] * 1e3);
    printf("itl_p99_ratio_redis_debug_sleep %.2f\n", slow);
    printf("itl_p99_ratio_redis_sigstop %.2f\n", stopped);
    printf("itl_p99_ratio_during_slow_restore %.2f\n", slow > stopped ? slow : stopped);
    dsv4_sched_free(s);
    dsv4_cache_free(cache);
    dsv4_backend_cpu_free(be);
    dsv4_model_free(m);
    return 0;
}
