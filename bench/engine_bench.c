/*
 * engine_bench: CPU speed of the engine against this machine's own limits,
 * measured in one run (driven by bench/engine, which generates the model).
 *
 *   build/bench/engine_bench MODEL_DIR [--threads N] [--isa avx512|avx2|generic]
 *                            [--no-kernels] [--no-blas]
 *
 * Baselines measured here, now, with the same thread count:
 *   - streaming-read memory bandwidth (every thread sums its slice of 1 GiB);
 *   - OpenBLAS sgemm GFLOP/s (dlopen'ed libopenblas) on the prefill shapes.
 * Without either baseline the benchmark stops (exit 1, one line naming what
 * is missing): no fraction is ever printed against a baseline it did not
 * measure.  --no-blas only skips the prefill pass on the OpenBLAS backend.
 * Then:
 *   - each SIMD kernel vs the scalar reference, one thread (speedup);
 *   - decode, one sequence: tokens/s, weight bytes read per token (counted by
 *     the backend: the rows every matmul touched, i.e. the active weights),
 *     and bytes/s as a fraction of the streaming bandwidth;
 *   - one-token matmuls streaming 512 MB of matrices of V4-Flash's own
 *     shapes (the model is a quarter of its width): weight GB/s;
 *   - prefill of 512 and 2048 tokens: tokens/s, matmul GFLOP/s (2 x rows x
 *     cols x tokens, counted by the backend; attention not included) as a
 *     fraction of sgemm; also with the OpenBLAS path;
 *   - decode of 1, 4, 16 sequences per step (dsv4_forward_batch): aggregate
 *     tokens/s and weight bytes per step (the union of the experts chosen).
 * The last lines are "name value" headlines.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu/cpu.h"
#include "dsv4.h"

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x853C49E6748FEA9Bull;

static uint32_t
rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t) (rng >> 32);
}

static float
frand(void)
{
    return (float) (rnd() >> 8) / (float) (1u << 23) - 1.0f;
}

/* ---- streaming read ------------------------------------------------------ */

typedef struct {
    const uint8_t *buf;
    size_t         len;      /* bytes, multiple of 64 * ntasks */
    int            ntasks;
    uint64_t       sink[64];
} bw_run;

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) static uint64_t
bw_sum_avx2(const uint8_t *p, size_t n)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;

    for (size_t i = 0; i < n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *) (p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *) (p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *) (p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *) (p + i + 96)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    return (uint64_t) _mm256_extract_epi64(a, 0) + (uint64_t) _mm256_extract_epi64(a, 3);
}
#endif

static uint64_t
bw_sum(const uint8_t *p, size_t n)
{
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2")) {
        return bw_sum_avx2(p, n);
    }
#endif
    const uint64_t *q = (const uint64_t *) p;
    uint64_t        s = 0;
    for (size_t i = 0; i < n / 8; i++) {
        s += q[i];
    }
    return s;
}

static void
bw_task(void *arg, int task, int thread)
{
    bw_run *r = arg;
    size_t  per = r->len / (size_t) r->ntasks;

    r->sink[task % 64] += bw_sum(r->buf + per * (size_t) task, per);
}

/* Best of `reps` passes over a 1 GiB buffer, GB/s. */
static double
measure_bandwidth(dsv4_pool *pool, int nthreads, int reps)
{
    size_t   len = (size_t) 1 << 30;
    uint8_t *buf = aligned_alloc(4096, len);
    double   best = 0.0;

    if (buf == NULL) {
        return 0.0;
    }
    memset(buf, 1, len);
    bw_run r = { buf, len, 8 * nthreads, { 0 } };
    for (int i = 0; i < reps; i++) {
        double t = now();
        dsv4_pool_run(pool, bw_task, &r, r.ntasks);
        t = now() - t;
        best = fmax(best, (double) len / t / 1e9);
    }
    free(buf);
    return best;
}

/* ---- sgemm baseline ---------------------------------------------------- */

/* Best-of-reps GFLOP/s of C[m, n] = A[m, k] B[n, k]^T. */
static double
measure_sgemm(int m, int n, int k, int reps)
{
    float *a = malloc((size_t) m * k * sizeof(float)), *b = malloc((size_t) n * k * sizeof(float));
    float *c = malloc((size_t) m * n * sizeof(float));
    double best = 0.0;

    if (a == NULL || b == NULL || c == NULL) {
        free(a); free(b); free(c);
        return 0.0;
    }
    for (size_t i = 0; i < (size_t) m * k; i++) {
        a[i] = frand();
    }
    for (size_t i = 0; i < (size_t) n * k; i++) {
        b[i] = frand();
    }
    for (int i = 0; i < reps + 1; i++) {         /* first run warms up */
        double t = now();
        dsv4_blas_sgemm_nt(m, n, k, a, k, b, k, c, n);
        t = now() - t;
        if (i > 0) {
            best = fmax(best, 2.0 * m * n * k / t / 1e9);
        }
    }
    free(a); free(b); free(c);
    return best;
}

/* ---- kernel speedups ----------------------------------------------------- */

typedef struct {
    dsv4_mat m;
    void    *data;
    uint8_t *scale;
} bench_mat;

/* Bytes of an R x C matrix's data (scales apart). */
static size_t
bench_mat_data_bytes(dsv4_mat_type t, int R, int C)
{
    static const int bits[] = { 32, 16, 8, 4 };

    return (size_t) R * C * bits[t] / 8;
}

static bench_mat
bench_mat_new(dsv4_mat_type t, int R, int C)
{
    size_t    n = bench_mat_data_bytes(t, R, C);
    bench_mat b = { { t, R, C, NULL, NULL }, malloc(n), NULL };
    uint8_t  *d = b.data;

    for (size_t i = 0; i < n; i++) {
        d[i] = (uint8_t) (rnd() & 0x77);        /* no NaN/inf patterns in any format */
    }
    if (t == DSV4_MAT_FP8 || t == DSV4_MAT_FP4) {
        size_t ns = t == DSV4_MAT_FP8 ? (size_t) ((R + 127) / 128) * ((C + 127) / 128)
                                      : (size_t) R * C / 32;
        b.scale = malloc(ns);
        memset(b.scale, 120, ns);
    }
    b.m.data = b.data;
    b.m.scale = b.scale;
    return b;
}

/* ---- GEMV from memory at V4-Flash's widths ------------------------------ */

/* The benchmark model is a quarter of V4-Flash's width; these are the real
 * model's matrix shapes, whose rows of 1-8 KB stress prefetching differently. */
static const struct { dsv4_mat_type t; const char *what; int R, C; } v4_shapes[] = {
    { DSV4_MAT_FP8, "fp8 4096x4096 (attention, shared expert)", 4096, 4096 },
    { DSV4_MAT_BF16, "bf16 4096x4096 (compressors, head)", 4096, 4096 },
    { DSV4_MAT_FP4, "fp4 2048x4096 (routed expert w1, w3)", 2048, 4096 },
    { DSV4_MAT_FP4, "fp4 4096x2048 (routed expert w2)", 4096, 2048 },
};

/* Weight GB/s of one-token matmuls on fresh R x C matrices of type t laid
 * end to end over buf [len] (more than any cache), one pass over all of
 * them, best of 3.  scale: enough e8m0 bytes for any of them. */
static double
measure_gemv_stream(const dsv4_backend *be, dsv4_mat_type t, int R, int C, uint8_t *buf,
                    size_t len, const uint8_t *scale, const float *x, float *y)
{
    size_t mbytes = bench_mat_data_bytes(t, R, C);
    size_t count = len / mbytes;
    double best = 1e30;

    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (size_t i = 0; i < count; i++) {
            dsv4_mat m = { t, R, C, buf + i * mbytes, t >= DSV4_MAT_FP8 ? scale : NULL };
            be->matmul(be, &m, 0, R, x, C, 1, y, R);
        }
        best = fmin(best, now() - t0);
    }
    return (double) (count * mbytes) / best / 1e9;
}

#define TIME_BEST(reps, best, stmt)                                         \
    do {                                                                    \
        best = 1e30;                                                        \
        for (int rep_ = 0; rep_ < (reps); rep_++) {                          \
            double t_ = now();                                              \
            stmt;                                                           \
            t_ = now() - t_;                                                \
            best = t_ < best ? t_ : best;                                   \
        }                                                                   \
    } while (0)

static void
kernel_row(const char *name, double ts, double tf)
{
    printf("  %-34s %10.1f %10.1f %8.1fx\n", name, ts * 1e6, tf * 1e6, ts / tf);
}

/* Each op on the scalar reference and on the fast backend with one thread. */
static void
bench_kernels(const dsv4_backend *sc, const dsv4_backend *fb)
{
    static const struct { dsv4_mat_type t; const char *name; int R, C; } mats[] = {
        { DSV4_MAT_FP8, "fp8", 4096, 1024 }, { DSV4_MAT_FP4, "fp4", 4096, 1024 },
        { DSV4_MAT_BF16, "bf16", 4096, 1024 }, { DSV4_MAT_F32, "f32", 1024, 1024 },
    };
    float *x = malloc((size_t) 64 * 4096 * sizeof(float)), *y = malloc((size_t) 64 * 4096 * sizeof(float));
    double ts, tf;
    char   name[64];

    for (int i = 0; i < 64 * 4096; i++) {
        x[i] = frand();
    }
    printf("\nkernels, one thread: %s vs %s (best of several runs)\n", fb->name, sc->name);
    printf("  %-34s %10s %10s %9s\n", "op", "scalar us", "simd us", "speedup");
    for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++) {
        bench_mat b = bench_mat_new(mats[i].t, mats[i].R, mats[i].C);
        int       ns[] = { 1, 64 };
        for (int k = 0; k < 2; k++) {
            int n = ns[k];
            TIME_BEST(n == 1 ? 5 : 2, ts, sc->matmul(sc, &b.m, 0, b.m.rows, x, b.m.cols, n, y, b.m.rows));
            TIME_BEST(n == 1 ? 20 : 5, tf, fb->matmul(fb, &b.m, 0, b.m.rows, x, b.m.cols, n, y, b.m.rows));
            snprintf(name, sizeof(name), "matmul %s %dx%d, %d token%s", mats[i].name, mats[i].R,
                     mats[i].C, n, n > 1 ? "s" : "");
            kernel_row(name, ts, tf);
        }
        free(b.data);
        free(b.scale);
    }
    /* attention: 16 heads of 512 over 256 keys (window + selected entries) */
    {
        enum { H = 16, DIM = 512, NK = 256 };
        const float *keys[NK];
        float       *kv = malloc((size_t) NK * DIM * sizeof(float)), sink[H], *sco = malloc(NK * sizeof(float));
        for (int i = 0; i < NK * DIM; i++) {
            kv[i] = frand();
        }
        for (int u = 0; u < NK; u++) {
            keys[u] = kv + (size_t) u * DIM;
        }
        for (int h = 0; h < H; h++) {
            sink[h] = frand();
        }
        TIME_BEST(5, ts, sc->attention(sc, x, H, DIM, keys, NK, 0.04f, sink, sco, y));
        TIME_BEST(20, tf, fb->attention(fb, x, H, DIM, keys, NK, 0.04f, sink, sco, y));
        kernel_row("attention 16 heads x 512, 256 keys", ts, tf);
        /* indexer: 16 heads x 128 over 1024 compressed keys */
        TIME_BEST(5, ts, sc->indexer_scores(sc, x, sink, 16, 128, kv, 1024, y));
        TIME_BEST(20, tf, fb->indexer_scores(fb, x, sink, 16, 128, kv, 1024, y));
        kernel_row("indexer scores 16 x 128, 1024 keys", ts, tf);
        /* compressor pooling: CSA (8 slots) and HCA (128 slots) of 512 */
        const float *slots[128], *scs[128];
        for (int s = 0; s < 128; s++) {
            slots[s] = kv + (size_t) s * DIM;
            scs[s] = kv + (size_t) (s + 128) * DIM;
        }
        TIME_BEST(20, ts, sc->compress_pool(sc, slots, scs, 8, DIM, y));
        TIME_BEST(50, tf, fb->compress_pool(fb, slots, scs, 8, DIM, y));
        kernel_row("compressor pooling 8 slots x 512", ts, tf);
        TIME_BEST(5, ts, sc->compress_pool(sc, slots, scs, 128, DIM, y));
        TIME_BEST(20, tf, fb->compress_pool(fb, slots, scs, 128, DIM, y));
        kernel_row("compressor pooling 128 slots x 512", ts, tf);
        free(kv);
        free(sco);
    }
    {
        float freqs[32];
        for (int i = 0; i < 32; i++) {
            freqs[i] = powf(10000.0f, -(float) i / 32.0f);
        }
        TIME_BEST(50, ts, sc->rmsnorm(sc, y, x, x + 4096, 4096, 1e-6f));
        TIME_BEST(50, tf, fb->rmsnorm(fb, y, x, x + 4096, 4096, 1e-6f));
        kernel_row("rmsnorm 4096", ts, tf);
        TIME_BEST(50, ts, for (int h = 0; h < 16; h++) sc->rope(sc, y + h * 512 + 448, 32, 777, freqs, 1));
        TIME_BEST(50, tf, for (int h = 0; h < 16; h++) fb->rope(fb, y + h * 512 + 448, 32, 777, freqs, 1));
        kernel_row("rope 16 heads x 32 pairs", ts, tf);
        TIME_BEST(50, ts, for (int h = 0; h < 16; h++) sc->hadamard(sc, y + h * 128, 128));
        TIME_BEST(50, tf, for (int h = 0; h < 16; h++) fb->hadamard(fb, y + h * 128, 128));
        kernel_row("hadamard 16 x 128", ts, tf);
    }
    {
        /* the glue of one decode token: 6 expert activations, an mHC
         * post-mix of 4 streams, the FP8 KV and FP4 indexer quantisers */
        float post[4] = { 0.5f, 0.5f, 0.5f, 0.5f }, comb[16];
        for (int k = 0; k < 16; k++) {
            comb[k] = 0.25f;
        }
        TIME_BEST(50, ts, sc->swiglu(sc, y, x, 6 * 512, 10.0f, 0.3f));
        TIME_BEST(50, tf, fb->swiglu(fb, y, x, 6 * 512, 10.0f, 0.3f));
        kernel_row("swiglu 6 x 512", ts, tf);
        TIME_BEST(50, ts, sc->hc_post(sc, y, x, post, comb, 4, 1024));
        TIME_BEST(50, tf, fb->hc_post(fb, y, x, post, comb, 4, 1024));
        kernel_row("mHC post-mix 4 x 1024", ts, tf);
        TIME_BEST(50, ts, sc->fake_quant_fp8(sc, y, 448, 64));
        TIME_BEST(50, tf, fb->fake_quant_fp8(fb, y, 448, 64));
        kernel_row("fake quant fp8 448 (blocks of 64)", ts, tf);
        TIME_BEST(50, ts, sc->fake_quant_fp4(sc, y, 16 * 128, 32));
        TIME_BEST(50, tf, fb->fake_quant_fp4(fb, y, 16 * 128, 32));
        kernel_row("fake quant fp4 16 x 128 (of 32)", ts, tf);
    }
    free(x);
    free(y);
}

/* ---- model runs -------------------------------------------------------- */

typedef struct {
    dsv4_model *m;
    int         V;
    int32_t    *toks;       /* [4096] random prompt tokens */
    float      *logits;     /* [16, V] */
} bench_model;

/* Prefill of n tokens in one call on a fresh sequence: seconds and matmul
 * flops.  Returns 0 or -1. */
static int
run_prefill(bench_model *bm, const dsv4_backend *be, int n, double *secs, uint64_t *flops)
{
    char            err[256];
    dsv4_seq       *s = dsv4_seq_new(bm->m, n, err, sizeof(err));
    dsv4_ctx       *c = dsv4_ctx_new(bm->m, be, n, n, err, sizeof(err));
    dsv4_cpu_stats  st;
    int             rc = -1;

    if (s != NULL && c != NULL) {
        dsv4_backend_cpu_stats(be, &st, 1);
        double t = now();
        rc = dsv4_forward(c, s, bm->toks, n, bm->logits, err, sizeof(err));
        *secs = now() - t;
        dsv4_backend_cpu_stats(be, &st, 1);
        *flops = st.flops;
    }
    if (rc != 0) {
        fprintf(stderr, "engine_bench: prefill %d: %s\n", n, err);
    }
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
    return rc;
}

/* nseq sequences, each prefilled with `prompt` tokens, then `steps` steps of
 * one token per sequence.  Aggregate tokens/s and weight bytes per step of
 * the best of `reps` segments. */
static int
run_decode(bench_model *bm, const dsv4_backend *be, int nseq, int prompt, int steps, int reps,
           double *tok_s, double *bytes_step)
{
    char            err[256];
    int             ctx = prompt + steps * reps + 1, rc = 0;
    dsv4_ctx       *c = dsv4_ctx_new(bm->m, be, nseq * prompt, ctx, err, sizeof(err));
    dsv4_seq       *s[16];
    dsv4_batch_item it[16];
    dsv4_cpu_stats  st;

    *tok_s = 0.0;
    for (int b = 0; b < nseq; b++) {
        s[b] = dsv4_seq_new(bm->m, ctx, err, sizeof(err));
        rc |= s[b] == NULL ? -1 : 0;
    }
    if (c == NULL || rc != 0) {
        fprintf(stderr, "engine_bench: decode setup: %s\n", err);
        rc = -1;
        goto done;
    }
    for (int b = 0; b < nseq; b++) {            /* prefill, all sequences in one step */
        it[b] = (dsv4_batch_item) { s[b], bm->toks + 97 * b, prompt, NULL };
    }
    if ((rc = dsv4_forward_batch(c, it, nseq, err, sizeof(err))) != 0) {
        goto done;
    }
    for (int r = 0; r < reps && rc == 0; r++) {
        dsv4_backend_cpu_stats(be, &st, 1);
        double t = now();
        for (int i = 0; i < steps && rc == 0; i++) {
            for (int b = 0; b < nseq; b++) {
                int p = dsv4_seq_pos(s[b]);
                it[b] = (dsv4_batch_item) { s[b], bm->toks + (p + 131 * b) % 4096, 1,
                                            bm->logits + (size_t) b * bm->V };
            }
            rc = dsv4_forward_batch(c, it, nseq, err, sizeof(err));
        }
        t = now() - t;
        dsv4_backend_cpu_stats(be, &st, 1);
        if (nseq * steps / t > *tok_s) {
            *tok_s = nseq * steps / t;
            *bytes_step = (double) st.weight_bytes / steps;
        }
    }
    if (rc != 0) {
        fprintf(stderr, "engine_bench: decode: %s\n", err);
    }
done:
    for (int b = 0; b < nseq; b++) {
        dsv4_seq_free(s[b]);
    }
    dsv4_ctx_free(c);
    return rc;
}

static const char *
cpu_model_name(char *buf, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char  line[256];

    snprintf(buf, len, "unknown CPU");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        char *p = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && p != NULL) {
            snprintf(buf, len, "%s", p + 2);
            buf[strcspn(buf, "\n")] = '\0';
            break;
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return buf;
}

int
main(int argc, char **argv)
{
    const char *dir = NULL, *isa = NULL;
    int         nthreads = 0, do_kernels = 1, do_blas = 1;
    char        err[512], cpu[128];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            nthreads = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--isa") == 0 && i + 1 < argc) {
            isa = argv[++i];
        } else if (strcmp(argv[i], "--no-kernels") == 0) {
            do_kernels = 0;
        } else if (strcmp(argv[i], "--no-blas") == 0) {
            do_blas = 0;
        } else if (argv[i][0] != '-' && dir == NULL) {
            dir = argv[i];
        } else {
            fprintf(stderr, "usage: engine_bench MODEL_DIR [--threads N] [--isa NAME] "
                    "[--no-kernels] [--no-blas]\n");
            return 2;
        }
    }
    if (dir == NULL) {
        fprintf(stderr, "usage: engine_bench MODEL_DIR [--threads N] [--isa NAME] [--no-kernels] "
                "[--no-blas]\n");
        return 2;
    }
    dsv4_cpu_opts       o = { nthreads, isa, 0 };
    const dsv4_backend *fb = dsv4_backend_cpu_new_opts(&o, err, sizeof(err));
    if (fb == NULL) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    nthreads = dsv4_backend_cpu_threads(fb);
    if (dsv4_blas_load(err, sizeof(err)) != 0) {
        fprintf(stderr, "engine_bench: no sgemm baseline: %s\n", err);
        return 1;
    }
    printf("machine: %s; kernels %s, %d thread%s; OpenBLAS: %s\n", cpu_model_name(cpu, sizeof(cpu)),
           fb->name, nthreads, nthreads > 1 ? "s" : "", dsv4_blas_config());
    fflush(stdout);

    /* baselines */
    dsv4_pool *pool = dsv4_pool_new(nthreads, err, sizeof(err));
    if (pool == NULL) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    double bw = measure_bandwidth(pool, nthreads, 5);
    double bw1 = 0.0;
    if (nthreads > 1) {
        dsv4_pool *p1 = dsv4_pool_new(1, err, sizeof(err));
        bw1 = p1 != NULL ? measure_bandwidth(p1, 1, 3) : 0.0;
        dsv4_pool_free(p1);
    }
    dsv4_pool_free(pool);
    if (bw <= 0.0 || (nthreads > 1 && bw1 <= 0.0)) {
        fprintf(stderr, "engine_bench: no bandwidth baseline: could not allocate or read the "
                "1 GiB buffer\n");
        return 1;
    }
    printf("\nbaselines (same run)\n");
    printf("  streaming read, %d thread%s:   %7.2f GB/s\n", nthreads, nthreads > 1 ? "s" : "", bw);
    if (nthreads > 1) {
        printf("  streaming read, 1 thread:    %7.2f GB/s\n", bw1);
    }
    const dsv4_config *cfg = NULL;
    dsv4_model        *m = NULL;
    if (dsv4_model_load(&m, dir, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    cfg = dsv4_model_config(m);
    /* the model's most common prefill shape: tokens x (I or D) x D */
    dsv4_blas_set_threads(nthreads);
    double sg512 = measure_sgemm(512, 2 * cfg->dim, cfg->dim, 3);
    double sg2048 = measure_sgemm(2048, 2 * cfg->dim, cfg->dim, 2);
    dsv4_blas_set_threads(1);
    double sg1 = measure_sgemm(512, 2 * cfg->dim, cfg->dim, 3);
    if (sg512 <= 0.0 || sg2048 <= 0.0 || sg1 <= 0.0) {
        fprintf(stderr, "engine_bench: no sgemm baseline: out of memory for the sgemm operands\n");
        return 1;
    }
    printf("  OpenBLAS sgemm 512x%dx%d, %d thr: %7.1f GFLOP/s\n", 2 * cfg->dim, cfg->dim,
           nthreads, sg512);
    printf("  OpenBLAS sgemm 2048x%dx%d, %d thr:%7.1f GFLOP/s\n", 2 * cfg->dim, cfg->dim,
           nthreads, sg2048);
    printf("  OpenBLAS sgemm 512x%dx%d, 1 thr:  %7.1f GFLOP/s\n", 2 * cfg->dim, cfg->dim, sg1);
    fflush(stdout);

    if (do_kernels) {
        dsv4_cpu_opts       o1 = { 1, isa, 0 };
        const dsv4_backend *f1 = dsv4_backend_cpu_new_opts(&o1, err, sizeof(err));
        if (f1 != NULL) {
            bench_kernels(dsv4_backend_cpu_scalar(), f1);
            dsv4_backend_cpu_free(f1);
        }
        fflush(stdout);
    }

    dsv4_model_stats mst;
    dsv4_model_get_stats(m, &mst);
    bench_model bm = { m, cfg->vocab_size, malloc(4096 * sizeof(int32_t)),
                       malloc((size_t) 16 * cfg->vocab_size * sizeof(float)) };
    for (int i = 0; i < 4096; i++) {
        bm.toks[i] = (int32_t) (rnd() % (uint32_t) cfg->vocab_size);
    }
    printf("\nmodel: %s\n  %d layers, hidden %d, %d experts (k=%d), vocab %d; %.2f GB mapped, "
           "%.0fM params (%.0fM active)\n", dir, cfg->n_layers, cfg->dim, cfg->n_routed_experts,
           cfg->n_active_experts, cfg->vocab_size, mst.mapped_bytes / 1e9, mst.params / 1e6,
           mst.params_active / 1e6);

    /* warm-up: a 512-token prefill touches every weight page */
    double   secs, t512 = 0, t2048 = 0, b512 = 0, b2048 = 0;
    uint64_t fl512 = 0, fl2048 = 0, fl;
    printf("  warm-up (page cache, 512-token prefill)...\n");
    fflush(stdout);
    if (run_prefill(&bm, fb, 512, &secs, &fl) != 0) {
        return 1;
    }

    /* decode, one sequence; the bandwidth is measured again right after it
     * and the higher figure of the run is the denominator (on a shared
     * machine both move with the neighbours' load) */
    double dec_tok_s = 0, dec_bytes = 0;
    if (run_decode(&bm, fb, 1, 64, 16, 5, &dec_tok_s, &dec_bytes) != 0) {
        return 1;
    }
    pool = dsv4_pool_new(nthreads, err, sizeof(err));
    double bw_after = pool != NULL ? measure_bandwidth(pool, nthreads, 3) : 0.0;
    dsv4_pool_free(pool);
    bw = fmax(bw, bw_after);
    double dec_bw = dec_tok_s * dec_bytes / 1e9;
    printf("\ndecode, one sequence (after a 64-token prompt; best of 5 x 16 tokens)\n");
    printf("  %.2f tokens/s, %.1f MB of weights per token -> %.2f GB/s = %.2f of %.2f GB/s\n",
           dec_tok_s, dec_bytes / 1e6, dec_bw, dec_bw / bw, bw);
    printf("  roofline: %.1f MB / %.2f GB/s = %.2f ms per token, at most %.1f tokens/s "
           "(streaming read again after decode: %.2f GB/s)\n", dec_bytes / 1e6, bw,
           dec_bytes / bw / 1e6, bw * 1e9 / dec_bytes, bw_after);
    fflush(stdout);

    /* GEMV from memory at the real model's widths, one thread and all */
    double   v4_fp8 = 0.0;
    size_t   v4_len = (size_t) 512 << 20;
    uint8_t *v4_buf = malloc(v4_len), *v4_scale = malloc((size_t) 4096 * 4096 / 32);
    float   *v4_x = malloc(4096 * sizeof(float)), *v4_y = malloc(4096 * sizeof(float));
    dsv4_cpu_opts       o1 = { 1, isa, 0 };
    const dsv4_backend *f1 = dsv4_backend_cpu_new_opts(&o1, err, sizeof(err));
    if (v4_buf != NULL && v4_scale != NULL && v4_x != NULL && v4_y != NULL && f1 != NULL) {
        memset(v4_buf, 0x3C, v4_len);           /* a normal value in every format */
        memset(v4_scale, 120, (size_t) 4096 * 4096 / 32);
        for (int i = 0; i < 4096; i++) {
            v4_x[i] = frand();
        }
        printf("\nGEMV from memory at V4-Flash's widths (one token, 512 MB of matrices per pass)\n");
        printf("  %-42s %12s %12s\n", "matrix", "1 thread", nthreads > 1 ? "all threads" : "");
        for (size_t i = 0; i < sizeof(v4_shapes) / sizeof(v4_shapes[0]); i++) {
            double g1 = measure_gemv_stream(f1, v4_shapes[i].t, v4_shapes[i].R, v4_shapes[i].C,
                                            v4_buf, v4_len, v4_scale, v4_x, v4_y);
            double gn = nthreads > 1 ? measure_gemv_stream(fb, v4_shapes[i].t, v4_shapes[i].R,
                                                           v4_shapes[i].C, v4_buf, v4_len,
                                                           v4_scale, v4_x, v4_y) : g1;
            printf("  %-42s %7.1f GB/s %7.1f GB/s  (%.2f of streaming)\n", v4_shapes[i].what, g1,
                   gn, gn / bw);
            if (i == 0) {
                v4_fp8 = gn;
            }
        }
        fflush(stdout);
    }
    dsv4_backend_cpu_free(f1);
    free(v4_buf); free(v4_scale); free(v4_x); free(v4_y);

    /* prefill */
    printf("\nprefill (one call per prompt; matmul GFLOP/s vs OpenBLAS sgemm)\n");
    printf("  %-28s %8s %10s %10s %9s\n", "backend", "tokens", "tokens/s", "GFLOP/s", "vs sgemm");
    for (int pass = 0; pass < 1 + do_blas; pass++) {
        const dsv4_backend *be = fb;
        if (pass == 1) {
            dsv4_cpu_opts ob = { nthreads, isa, 1 };
            be = dsv4_backend_cpu_new_opts(&ob, err, sizeof(err));
            if (be == NULL) {
                break;
            }
        }
        int sizes[] = { 512, 2048 };
        for (int k = 0; k < 2; k++) {
            double best = 1e30;
            for (int r = 0; r < (sizes[k] == 512 ? 2 : 1); r++) {
                if (run_prefill(&bm, be, sizes[k], &secs, &fl) != 0) {
                    return 1;
                }
                best = fmin(best, secs);
            }
            double gf = fl / best / 1e9, base = sizes[k] == 512 ? sg512 : sg2048;
            printf("  %-28s %8d %10.1f %10.1f %9.2f   (%.0f MFLOP/token)\n", be->name, sizes[k],
                   sizes[k] / best, gf, gf / base, fl / 1e6 / sizes[k]);
            if (pass == 0) {
                *(k == 0 ? &t512 : &t2048) = sizes[k] / best;
                *(k == 0 ? &b512 : &b2048) = gf / base;
                *(k == 0 ? &fl512 : &fl2048) = fl;
            }
            fflush(stdout);
        }
        if (pass == 1) {
            dsv4_backend_cpu_free(be);
        }
    }

    /* batched decode */
    static const int batches[] = { 1, 4, 16 };
    double           agg[3] = { 0 }, bstep[3] = { 0 };
    printf("\nbatched decode (dsv4_forward_batch, one token per sequence per step)\n");
    printf("  %-10s %12s %12s %16s %10s\n", "sequences", "tokens/s", "ms/step", "MB weights/step",
           "vs batch 1");
    for (int k = 0; k < 3; k++) {
        if (run_decode(&bm, fb, batches[k], 32, batches[k] == 16 ? 6 : 10, 3, &agg[k],
                       &bstep[k]) != 0) {
            return 1;
        }
        if (k == 0) {
            /* batch 1 is the single-sequence decode measured twice: the
             * better figure is the reference (neighbours only slow us) */
            agg[0] = fmax(agg[0], dec_tok_s);
        }
        printf("  %-10d %12.2f %12.1f %16.1f %10.2f\n", batches[k], agg[k],
               1e3 * batches[k] / agg[k], bstep[k] / 1e6, agg[k] / agg[0]);
        fflush(stdout);
    }
    /* if every step were bound by the bytes it reads, batch 16 could be
     * 16 x (bytes of a 1-sequence step) / (bytes of a 16-sequence step) */
    double bound16 = 16.0 * bstep[0] / bstep[2];
    printf("  bandwidth bound on batch 16 / batch 1 for this model: %.2f (the experts chosen by "
           "16 sequences: %.1fx the bytes of one)\n", bound16, bstep[2] / bstep[0]);
    /* and if every step ran its matmuls at this machine's sgemm rate, a
     * 16-sequence step could not take less than 16 x FLOP per token / rate */
    double flop_tok = (double) fl512 / 512, sgemm_best = fmax(sg512, sg2048);
    double cbound16 = flop_tok > 0 && agg[0] > 0 ? sgemm_best * 1e9 / flop_tok / agg[0] : 0.0;
    printf("  compute bound on batch 16 / batch 1 on this machine: %.2f (%.0f MFLOP per token "
           "at the sgemm rate of %.1f GFLOP/s: at most %.1f tokens/s)\n", cbound16,
           flop_tok / 1e6, sgemm_best, sgemm_best * 1e9 / flop_tok);

    printf("\nload average at the end: ");
    FILE *la = fopen("/proc/loadavg", "r");
    char  lbuf[64] = "?";
    if (la != NULL) {
        if (fgets(lbuf, sizeof(lbuf), la) == NULL) {
            snprintf(lbuf, sizeof(lbuf), "?");
        }
        fclose(la);
    }
    printf("%s", lbuf);
    printf("\n");
    printf("stream_read_gb_per_s %.2f\n", bw);
    printf("sgemm_gflops_512 %.1f\n", sg512);
    printf("sgemm_gflops_2048 %.1f\n", sg2048);
    printf("decode_tokens_per_s %.2f\n", dec_tok_s);
    printf("decode_weight_mb_per_token %.1f\n", dec_bytes / 1e6);
    printf("decode_bw_fraction %.2f\n", dec_bw / bw);
    printf("gemv_fp8_4096_gb_per_s %.2f\n", v4_fp8);
    printf("gemv_fp8_4096_fraction %.2f\n", v4_fp8 / bw);
    printf("prefill_tokens_per_s_512 %.1f\n", t512);
    printf("prefill_tokens_per_s_2048 %.1f\n", t2048);
    printf("prefill_gflops_512 %.1f\n", fl512 * t512 / 512 / 1e9);
    printf("prefill_gflops_2048 %.1f\n", fl2048 * t2048 / 2048 / 1e9);
    printf("prefill_gemm_fraction_512 %.2f\n", b512);
    printf("prefill_gemm_fraction_2048 %.2f\n", b2048);
    printf("batch1_tokens_per_s %.2f\n", agg[0]);
    printf("batch4_tokens_per_s %.2f\n", agg[1]);
    printf("batch16_tokens_per_s %.2f\n", agg[2]);
    printf("batch16_bandwidth_bound %.2f\n", bound16);
    printf("batch16_compute_bound %.2f\n", cbound16);
    printf("batch16_speedup %.2f\n", agg[2] / agg[0]);
    /* the three closing lines (prefill: the lower of the two sizes) */
    printf("decode_bandwidth_fraction %.2f\n", dec_bw / bw);
    printf("prefill_sgemm_fraction %.2f\n", fmin(b512, b2048));
    printf("batch16_over_batch1 %.2f\n", agg[2] / agg[0]);
    free(bm.toks);
    free(bm.logits);
    dsv4_model_free(m);
    dsv4_backend_cpu_free(fb);
    return 0;
}
