/*
 * cache_bench: time to first token of a prompt served from the prefix cache
 * (cache/cache.h) vs computed cold, each tier separately (driven by
 * bench/cache, which generates the model and starts a redis-server).
 *
 *   build/bench/cache_bench MODEL_DIR DISK_DIR REDIS_PORT [--threads N]
 *                           [--tokens N,N,...] [--turn T]
 *
 * For each prefix length N (default 2048 and 8192) the prompt is N random
 * tokens followed by a new turn of T (16) tokens; the cache block is the
 * default (128 for V4), so the N-token prefix is whole blocks.
 *   cold: a fresh sequence prefills the N+T tokens without any cache (chunks
 *         of 2048) and the first token is chosen from the last logits;
 *   fill: the same prompt again, prefilled in chunks ending at the cache's
 *         capture points, capturing into three caches at once: memory only,
 *         disk only (DISK_DIR), Redis only (127.0.0.1:REDIS_PORT); then the
 *         write-back queues are drained (not timed);
 *   hit:  for each tier's cache, a fresh sequence: chain keys, restore (N
 *         tokens from that tier alone), prefill of the T remaining tokens,
 *         first token.  Its first token must equal the cold one.
 * Bytes per cached token: the tier's written value bytes (history blocks and
 * the checkpoint tails) / N.  The disk tier reads through the page cache.
 * The last lines are "name value" headlines, the last `redis_hit_speedup_8k`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "dsv4.h"
#include "kernels.h"

#define CHUNK 2048
#define MAXN  8

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static int
argmax(const float *lg, int V)
{
    int best = 0;

    for (int v = 1; v < V; v++) {
        best = lg[v] > lg[best] ? v : best;
    }
    return best;
}

static void
die(const char *what, const char *err)
{
    fprintf(stderr, "cache_bench: %s: %s\n", what, err);
    exit(1);
}

static void
logf_cb(void *data, int level, const char *msg)
{
    fprintf(stderr, "cache_bench: cache (%s): %s\n", (const char *) data, msg);
}

int
main(int argc, char **argv)
{
    char                err[256];
    dsv4_model         *m;
    int                 nthreads = 0, turn = 16, ntok = 2, lens[MAXN] = { 2048, 8192 };
    const char         *tiername[3] = { "memory", "disk", "redis" };

    if (argc < 4) {
        fprintf(stderr, "usage: cache_bench MODEL_DIR DISK_DIR REDIS_PORT [--threads N] "
                        "[--tokens N,N] [--turn T]\n");
        return 2;
    }
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            nthreads = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--turn") == 0 && i + 1 < argc) {
            turn = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
            char *p = argv[++i];
            for (ntok = 0; ntok < MAXN && *p; ntok++) {
                lens[ntok] = (int) strtol(p, &p, 10);
                if (*p == ',') {
                    p++;
                }
            }
        } else {
            fprintf(stderr, "cache_bench: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (turn < 1) {
        turn = 1;
    }
    if (dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        die("load", err);
    }
    const dsv4_backend *be = dsv4_backend_cpu_new(nthreads, err, sizeof(err));
    if (be == NULL) {
        die("backend", err);
    }
    const dsv4_config *cfg = dsv4_model_config(m);
    int                V = cfg->vocab_size, maxn = 0;
    for (int k = 0; k < ntok; k++) {
        maxn = lens[k] > maxn ? lens[k] : maxn;
    }
    int      ctxlen = maxn + turn + 1;
    int32_t *toks = malloc((size_t) ctxlen * sizeof(int32_t));
    float   *lg = malloc((size_t) V * sizeof(float));
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < ctxlen; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        toks[i] = (int32_t) (x % (uint64_t) V);
    }
    dsv4_ctx *ctx = dsv4_ctx_new(m, be, CHUNK, ctxlen, err, sizeof(err));
    dsv4_seq *seq = dsv4_seq_new(m, ctxlen, err, sizeof(err));
    if (ctx == NULL || seq == NULL) {
        die("ctx/seq", err);
    }
    printf("cache_bench: %s, %d layers, hidden %d, backend %s, %d thread%s\n", argv[1],
           cfg->n_layers, cfg->dim, be->name, dsv4_backend_cpu_threads(be),
           dsv4_backend_cpu_threads(be) > 1 ? "s" : "");
    /* warm-up: touches every weight page */
    if (dsv4_forward(ctx, seq, toks, 256, lg, err, sizeof(err)) != 0) {
        die("warm-up", err);
    }

    double res_cold[MAXN], res_hit[MAXN][3], res_bpt[MAXN][3], res_fill[MAXN];
    int    ok = 1;

    printf("\n%-8s %7s %10s %10s %8s %10s %8s\n", "tier", "tokens", "cold ms", "hit ms",
           "speedup", "B/token", "cached");
    for (int k = 0; k < ntok; k++) {
        int N = lens[k], n = N + turn, first_cold;

        /* cold, no cache */
        dsv4_seq_reset(seq);
        double t0 = now();
        for (int p = 0; p < n; ) {
            int c = n - p < CHUNK ? n - p : CHUNK;
            if (dsv4_forward(ctx, seq, toks + p, c, p + c == n ? lg : NULL, err,
                             sizeof(err)) != 0) {
                die("cold prefill", err);
            }
            p += c;
        }
        first_cold = argmax(lg, V);
        res_cold[k] = (now() - t0) * 1e3;

        /* three single-tier caches, filled by one prefill */
        dsv4_cache     *cache[3];
        dsv4_cache_req *q[3];
        for (int t = 0; t < 3; t++) {
            dsv4_cache_conf cc;
            memset(&cc, 0, sizeof(cc));
            cc.queue_bytes = (size_t) 2 << 30;
            cc.log = logf_cb;
            cc.log_data = (void *) tiername[t];
            cc.redis_timeout_ms = 2000;
            if (t == 0) {
                cc.mem_bytes = (size_t) 2 << 30;
                cc.write = DSV4_CACHE_WRITE_MEM;
            } else if (t == 1) {
                cc.disk_dir = argv[2];
                cc.disk_bytes = (size_t) 4 << 30;
                cc.write = DSV4_CACHE_WRITE_DISK;
            } else {
                cc.redis_host = "127.0.0.1";
                cc.redis_port = atoi(argv[3]);
                cc.redis_prefix = "dsv4bench:";
                cc.write = DSV4_CACHE_WRITE_REDIS;
            }
            if (dsv4_cache_new(&cache[t], m, &cc, err, sizeof(err)) != 0) {
                die("cache", err);
            }
            q[t] = dsv4_cache_req_new(cache[t], toks, n, NULL, 0);
            if (q[t] == NULL) {
                die("cache", "req_new");
            }
        }
        dsv4_seq_reset(seq);
        t0 = now();
        for (int p = 0; p < n; ) {
            int c = n - p < CHUNK ? n - p : CHUNK, cap = dsv4_cache_next_capture(q[0], p);
            if (cap > 0 && p + c > cap) {
                c = cap - p;
            }
            if (dsv4_forward(ctx, seq, toks + p, c, p + c == n ? lg : NULL, err,
                             sizeof(err)) != 0) {
                die("fill prefill", err);
            }
            p += c;
            for (int t = 0; t < 3; t++) {
                if (p == dsv4_cache_next_capture(q[t], p - c) && dsv4_cache_capture(q[t], seq) != 0) {
                    fprintf(stderr, "cache_bench: %s: capture at %d not queued\n", tiername[t], p);
                }
            }
        }
        res_fill[k] = (now() - t0) * 1e3;
        for (int t = 0; t < 3; t++) {
            dsv4_cache_req_free(q[t]);
            if (dsv4_cache_flush(cache[t], 120000) != 0) {
                die(tiername[t], "write-back did not drain");
            }
        }

        /* hits, one tier at a time */
        for (int t = 0; t < 3; t++) {
            int hits[DSV4_CACHE_NTIERS];
            dsv4_seq_reset(seq);
            t0 = now();
            dsv4_cache_req *r = dsv4_cache_req_new(cache[t], toks, n, NULL, 0);
            int             P = r != NULL ? dsv4_cache_restore(r, seq) : 0;
            for (int p = P; p < n; ) {
                int c = n - p < CHUNK ? n - p : CHUNK;
                if (dsv4_forward(ctx, seq, toks + p, c, p + c == n ? lg : NULL, err,
                                 sizeof(err)) != 0) {
                    die("hit prefill", err);
                }
                p += c;
            }
            int first = argmax(lg, V);
            res_hit[k][t] = (now() - t0) * 1e3;
            dsv4_cache_req_hits(r, hits);
            dsv4_cache_req_free(r);
            dsv4_cache_stats st;
            dsv4_cache_get_stats(cache[t], &st);
            res_bpt[k][t] = (double) st.written_bytes[t] / N;
            if (P != N || hits[t] != N || first != first_cold) {
                fprintf(stderr, "cache_bench: %s %d: restored %d (%d from the tier), first token %d,"
                        " cold %d\n", tiername[t], N, P, hits[t], first, first_cold);
                ok = 0;
            }
            printf("%-8s %7d %10.1f %10.1f %7.2fx %10.1f %8d\n", tiername[t], N, res_cold[k],
                   res_hit[k][t], res_cold[k] / res_hit[k][t], res_bpt[k][t], P);
            fflush(stdout);
        }
        for (int t = 0; t < 3; t++) {
            dsv4_cache_free(cache[t]);
        }
    }
    printf("\n(prompt = N cached tokens + a %d-token turn; cold = prefill without a cache;"
           " hit = keys + restore + prefill of the turn; first tokens equal the cold ones: %s)\n",
           turn, ok ? "yes" : "NO");
    for (int k = 0; k < ntok; k++) {
        printf("cold_ttft_ms_%dk %.1f\n", lens[k] / 1024, res_cold[k]);
        printf("fill_ttft_ms_%dk %.1f\n", lens[k] / 1024, res_fill[k]);
        printf("bytes_per_cached_token_%dk %.1f\n", lens[k] / 1024, res_bpt[k][2]);
        for (int t = 0; t < 3; t++) {
            if (t == 2 && lens[k] == 8192) {
                continue;
            }
            printf("%s_hit_speedup_%dk %.2f\n", tiername[t], lens[k] / 1024,
                   res_cold[k] / res_hit[k][t]);
        }
    }
    for (int k = 0; k < ntok; k++) {
        if (lens[k] == 8192) {
            printf("redis_hit_speedup_8k %.2f\n", res_cold[k] / res_hit[k][2]);
        }
    }
    dsv4_seq_free(seq);
    dsv4_ctx_free(ctx);
    dsv4_backend_cpu_free(be);
    dsv4_model_free(m);
    free(toks);
    free(lg);
    return ok ? 0 : 1;
}
