/*
 * The fast CPU backend: picks the best kernel table this CPU supports
 * (AVX-512, AVX2, portable C), owns a persistent thread pool and splits the
 * heavy ops over it.  Matmuls are split by output rows (each thread writes
 * disjoint rows, so results do not depend on the thread count); a batch of
 * matmuls (dsv4_matmul_job[]) is one parallel job, which is how the MoE
 * experts of a step and the projections that share an input run.
 *
 * Ops too small to gain from SIMD (Sinkhorn on hc x hc) reuse the scalar
 * reference.
 *
 * Ownership: dsv4_backend_cpu_new() returns a heap object (vtable + state in
 * impl); dsv4_backend_cpu_free() joins the threads and frees it.  It may be
 * shared by several engine threads: their parallel jobs are serialised.
 */
#define _GNU_SOURCE             /* sched_getaffinity, CPU_COUNT */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "cpu.h"
#include "formats.h"

float dsv4_cpu_e8m0_x256[256];

static pthread_once_t dsv4_cpu_once = PTHREAD_ONCE_INIT;

static void
dsv4_cpu_tables(void)
{
    dsv4_formats_init();
    for (int b = 0; b < 256; b++) {
        dsv4_cpu_e8m0_x256[b] = dsv4_e8m0_table[b] * 256.0f;
    }
}

/* ---- per-thread scratch --------------------------------------------------- */

typedef struct {
    float  *p;
    size_t  cap;
} dsv4_tls_buf;

static pthread_key_t  dsv4_tls_key;
static pthread_once_t dsv4_tls_once = PTHREAD_ONCE_INIT;
static int            dsv4_tls_ok;

static void
dsv4_tls_free(void *v)
{
    dsv4_tls_buf *b = v;

    free(b->p);
    free(b);
}

static void
dsv4_tls_init(void)
{
    dsv4_tls_ok = pthread_key_create(&dsv4_tls_key, dsv4_tls_free) == 0;
}

float *
dsv4_cpu_tls_floats(size_t n)
{
    dsv4_tls_buf *b;

    pthread_once(&dsv4_tls_once, dsv4_tls_init);
    if (!dsv4_tls_ok) {
        return NULL;
    }
    b = pthread_getspecific(dsv4_tls_key);
    if (b == NULL) {
        if ((b = calloc(1, sizeof(*b))) == NULL) {
            return NULL;
        }
        if (pthread_setspecific(dsv4_tls_key, b) != 0) {
            free(b);
            return NULL;
        }
    }
    if (b->cap < n) {
        float *p = realloc(b->p, n * sizeof(float));
        if (p == NULL) {
            return NULL;
        }
        b->p = p;
        b->cap = n;
    }
    return b->p;
}

/* Below this many multiply-adds a parallel job costs more than it saves. */
#define DSV4_TASK_MIN_MACS   (32 * 1024)
/* Tasks per thread and job: more than one so a preempted thread is covered
 * (and, for attention and the indexer, so uneven heads/keys even out)... */
#define DSV4_TASKS_PER_THREAD 4
/* ...except for GEMVs (decode), which stream weights from memory: one
 * contiguous row range per thread keeps each prefetch stream long. */
#define DSV4_GEMV_TASKS_PER_THREAD 1
/* OpenBLAS path: only for at least this many tokens, in row chunks of this. */
#define DSV4_BLAS_MIN_N      16
#define DSV4_BLAS_ROWS       64
/* Most parallel tasks one attention call is split into. */
#define DSV4_ATTN_MAXTASKS   64
/* RoPE cos/sin cache size (pairs); larger rotations use the scalar op. */
#define DSV4_ROPE_MAX        256

typedef struct {
    dsv4_backend            be;         /* first: be.impl points back here */
    char                    name[48];
    const dsv4_cpu_kernels *k;
    const dsv4_backend     *scalar;
    dsv4_pool              *pool;
    int                     nthreads;
    int                     blas;
    atomic_ullong           st_calls;
    atomic_ullong           st_bytes;
    atomic_ullong           st_flops;
} dsv4_cpu;

static int
dsv4_cpu_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static dsv4_cpu *
dsv4_cpu_of(const dsv4_backend *be)
{
    return (dsv4_cpu *) be->impl;
}

static void dsv4_cpu_matmul(const dsv4_backend *be, const dsv4_mat *w, int row_begin,
                            int row_end, const float *x, int ldx, int n, float *y, int ldy);

/* Is be one of ours (and not the scalar or another backend)? */
static int
dsv4_cpu_is(const dsv4_backend *be)
{
    return be != NULL && be->impl != NULL && be->matmul == dsv4_cpu_matmul;
}

/* ---- CPU features ------------------------------------------------------ */

static int
dsv4_cpu_has(const char *isa)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    int      f16c;

    __builtin_cpu_init();
    f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (strcmp(isa, "avx2") == 0) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    }
    if (strcmp(isa, "avx512") == 0) {
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2")
               && __builtin_cpu_supports("fma") && f16c;
    }
#endif
    return strcmp(isa, "generic") == 0;
}

static const dsv4_cpu_kernels *
dsv4_cpu_kernels_for(const char *isa)
{
#if defined(__x86_64__) || defined(__i386__)
    if (strcmp(isa, "avx512") == 0) {
        return &dsv4_cpu_kernels_avx512;
    }
    if (strcmp(isa, "avx2") == 0) {
        return &dsv4_cpu_kernels_avx2;
    }
#endif
    return strcmp(isa, "generic") == 0 ? &dsv4_cpu_kernels_generic : NULL;
}

const char *
dsv4_cpu_best_isa(void)
{
    return dsv4_cpu_has("avx512") ? "avx512" : dsv4_cpu_has("avx2") ? "avx2" : "generic";
}

/* CPUs this process may run on (taskset, cgroup cpusets), not the machine's. */
static int
dsv4_cpu_count(void)
{
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
        return CPU_COUNT(&set);
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) n : 1;
}

/* ---- matmul ------------------------------------------------------------ */

typedef struct {
    dsv4_cpu              *c;
    const dsv4_matmul_job *jobs;
    int                    njobs;
    const int             *task_end;    /* [njobs] cumulative task counts */
    const int             *rows_per;    /* [njobs] rows per task */
    const int             *use_blas;    /* [njobs] */
} dsv4_mm_run;

/* Bytes of weights (and scales) a matmul over `rows` rows of w reads. */
static uint64_t
dsv4_mat_bytes(const dsv4_mat *w, int rows)
{
    uint64_t r = (uint64_t) rows, k = (uint64_t) w->cols;

    switch (w->type) {
    case DSV4_MAT_F32:  return r * k * 4;
    case DSV4_MAT_BF16: return r * k * 2;
    case DSV4_MAT_FP8:  return r * k + (r + 127) / 128 * ((k + 127) / 128);
    case DSV4_MAT_FP4:  return r * (k / 2 + k / 32);
    }
    return 0;
}

/* Rows of one job per task: whole tiles, at least DSV4_TASK_MIN_MACS each,
 * about DSV4_TASKS_PER_THREAD (GEMV: DSV4_GEMV_TASKS_PER_THREAD) per thread. */
static int
dsv4_mm_rows_per_task(const dsv4_cpu *c, const dsv4_matmul_job *j, int blas)
{
    int    rows = j->row_end - j->row_begin;
    int    gemv = j->n <= DSV4_GEMV_MAX_TOKENS;
    int    grain = blas ? DSV4_BLAS_ROWS : gemv ? 4 : 24;
    double per_row = (double) j->w->cols * j->n;
    int    min_rows = (int) (DSV4_TASK_MIN_MACS / per_row) + 1;
    int    per_thread = gemv ? DSV4_GEMV_TASKS_PER_THREAD : DSV4_TASKS_PER_THREAD;
    int    target = (rows + c->nthreads * per_thread - 1) / (c->nthreads * per_thread);
    int    r = min_rows > target ? min_rows : target;

    return (r + grain - 1) / grain * grain;
}

static void
dsv4_mm_blas_task(dsv4_cpu *c, const dsv4_matmul_job *j, int r0, int r1, int thread)
{
    const dsv4_mat *w = j->w;
    float          *buf = dsv4_cpu_tls_floats((size_t) (r1 - r0) * w->cols);
    float          *y = j->y + (r0 - j->row_begin);

    if (buf == NULL) {
        c->k->matmul_rows(w, r0, r1, j->x, j->ldx, j->n, y, j->ldy);
        return;
    }
    c->k->dequant_rows(w, r0, r1, buf);
    dsv4_blas_sgemm_nt(j->n, r1 - r0, w->cols, j->x, j->ldx, buf, w->cols, y, j->ldy);
}

static void
dsv4_mm_task(void *arg, int task, int thread)
{
    dsv4_mm_run *run = arg;
    int          jb = 0;

    while (task >= run->task_end[jb]) {
        jb++;
    }
    const dsv4_matmul_job *j = &run->jobs[jb];
    int first = jb > 0 ? run->task_end[jb - 1] : 0;
    int r0 = j->row_begin + (task - first) * run->rows_per[jb];
    int r1 = r0 + run->rows_per[jb] < j->row_end ? r0 + run->rows_per[jb] : j->row_end;

    if (run->use_blas[jb]) {
        dsv4_mm_blas_task(run->c, j, r0, r1, thread);
    } else {
        run->c->k->matmul_rows(j->w, r0, r1, j->x, j->ldx, j->n, j->y + (r0 - j->row_begin),
                               j->ldy);
    }
}

#define DSV4_MM_MAX_JOBS 256

static void
dsv4_cpu_matmul_batch(const dsv4_backend *be, const dsv4_matmul_job *jobs, int njobs)
{
    dsv4_cpu *c = dsv4_cpu_of(be);
    int       task_end[DSV4_MM_MAX_JOBS], rows_per[DSV4_MM_MAX_JOBS], use_blas[DSV4_MM_MAX_JOBS];

    while (njobs > 0) {
        int      nj = njobs < DSV4_MM_MAX_JOBS ? njobs : DSV4_MM_MAX_JOBS, ntasks = 0;
        uint64_t bytes = 0, flops = 0;

        for (int i = 0; i < nj; i++) {
            const dsv4_matmul_job *j = &jobs[i];
            int rows = j->row_end - j->row_begin;

            use_blas[i] = c->blas && j->n >= DSV4_BLAS_MIN_N;
            rows_per[i] = rows > 0 && j->n > 0 ? dsv4_mm_rows_per_task(c, j, use_blas[i]) : 1;
            ntasks += rows > 0 && j->n > 0 ? (rows + rows_per[i] - 1) / rows_per[i] : 0;
            task_end[i] = ntasks;
            if (rows > 0 && j->n > 0) {
                bytes += dsv4_mat_bytes(j->w, rows);
                flops += 2ull * rows * j->w->cols * j->n;
            }
        }
        dsv4_mm_run run = { c, jobs, nj, task_end, rows_per, use_blas };
        dsv4_pool_run(c->pool, dsv4_mm_task, &run, ntasks);
        atomic_fetch_add_explicit(&c->st_calls, (unsigned long long) nj, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->st_bytes, bytes, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->st_flops, flops, memory_order_relaxed);
        jobs += nj;
        njobs -= nj;
    }
}

static void
dsv4_cpu_matmul(const dsv4_backend *be, const dsv4_mat *w, int row_begin, int row_end,
                const float *x, int ldx, int n, float *y, int ldy)
{
    dsv4_matmul_job j = { w, row_begin, row_end, x, ldx, n, y, ldy };

    dsv4_cpu_matmul_batch(be, &j, 1);
}

/* ---- small ops ----------------------------------------------------------- */

static void
dsv4_cpu_swiglu(const dsv4_backend *be, float *g, const float *u, int n, float limit, float w)
{
    dsv4_cpu_of(be)->k->swiglu(g, u, n, limit, w);
}

static void
dsv4_cpu_hc_post(const dsv4_backend *be, float *x, const float *o, const float *post,
                 const float *comb, int hc, int d)
{
    dsv4_cpu_of(be)->k->hc_post(x, o, post, comb, hc, d);
}

static void
dsv4_cpu_rmsnorm(const dsv4_backend *be, float *y, const float *x, const float *w, int d,
                 float eps)
{
    dsv4_cpu_of(be)->k->rmsnorm(y, x, w, d, eps);
}

/* The same angles are applied to every head of a token (and undone after
 * attention), so the cos/sin of the last (table, position, sign) are kept
 * per thread; they are computed exactly as the scalar reference does. */
static __thread struct {
    const float *freqs;
    int          pos, npairs, sign;
    float        cd[2 * DSV4_ROPE_MAX], sd[2 * DSV4_ROPE_MAX];
} dsv4_rope_cache;

static void
dsv4_cpu_rope(const dsv4_backend *be, float *v, int npairs, int pos, const float *freqs,
              int sign)
{
    dsv4_cpu *c = dsv4_cpu_of(be);

    if (npairs > DSV4_ROPE_MAX) {
        c->scalar->rope(c->scalar, v, npairs, pos, freqs, sign);
        return;
    }
    if (dsv4_rope_cache.freqs != freqs || dsv4_rope_cache.pos != pos
        || dsv4_rope_cache.npairs != npairs || dsv4_rope_cache.sign != sign) {
        for (int i = 0; i < npairs; i++) {
            float th = (float) pos * freqs[i];
            float cs = cosf(th), sn = sign * sinf(th);
            dsv4_rope_cache.cd[2 * i] = dsv4_rope_cache.cd[2 * i + 1] = cs;
            dsv4_rope_cache.sd[2 * i] = -sn;
            dsv4_rope_cache.sd[2 * i + 1] = sn;
        }
        dsv4_rope_cache.freqs = freqs;
        dsv4_rope_cache.pos = pos;
        dsv4_rope_cache.npairs = npairs;
        dsv4_rope_cache.sign = sign;
    }
    c->k->rope(v, 2 * npairs, dsv4_rope_cache.cd, dsv4_rope_cache.sd);
}

static void
dsv4_cpu_fake_quant_fp8(const dsv4_backend *be, float *v, int n, int block)
{
    dsv4_cpu_of(be)->k->fake_quant(v, n, block, &dsv4_qfmt_e4m3);
}

static void
dsv4_cpu_fake_quant_fp4(const dsv4_backend *be, float *v, int n, int block)
{
    dsv4_cpu_of(be)->k->fake_quant(v, n, block, &dsv4_qfmt_e2m1);
}

static void
dsv4_cpu_hadamard(const dsv4_backend *be, float *v, int n)
{
    dsv4_cpu_of(be)->k->hadamard(v, n);
}

static void
dsv4_cpu_sinkhorn(const dsv4_backend *be, float *cm, int n, int iters, float eps)
{
    const dsv4_backend *s = dsv4_cpu_of(be)->scalar;

    s->sinkhorn(s, cm, n, iters, eps);
}

/* Attention and indexer scores split over heads / keys when the work is
 * worth a parallel job (long contexts); otherwise they run inline. */
typedef struct {
    dsv4_cpu            *c;
    const float         *q, *w, *sink, *keys;
    const float *const  *keyp;
    int                  nheads, dim, nkeys, per;
    float                scale;
    float               *scores, *out;
    unsigned char        failed[DSV4_ATTN_MAXTASKS];
} dsv4_attn_run;

/* Heads [h0, h1) with per-thread scratch for their scores.  Returns -1
 * (nothing done) when there is no memory for it. */
static int
dsv4_attn_heads(dsv4_cpu *c, const dsv4_attn_run *r, int h0, int h1)
{
    float *sc = dsv4_cpu_tls_floats((size_t) (h1 - h0) * r->nkeys);

    if (sc == NULL) {
        return -1;
    }
    c->k->attention(r->q, h0, h1, r->dim, r->keyp, r->nkeys, r->scale, r->sink, sc, r->out);
    return 0;
}

/* The caller's way out of no memory: one head at a time in its [nkeys]
 * scores buffer (same results: heads are independent). */
static void
dsv4_attn_heads_small(dsv4_cpu *c, const dsv4_attn_run *r, int h0, int h1)
{
    for (int h = h0; h < h1; h++) {
        c->k->attention(r->q, h, h + 1, r->dim, r->keyp, r->nkeys, r->scale, r->sink,
                        r->scores, r->out);
    }
}

static void
dsv4_attn_task(void *arg, int task, int thread)
{
    dsv4_attn_run *r = arg;
    int            h0 = task * r->per, h1 = h0 + r->per < r->nheads ? h0 + r->per : r->nheads;

    r->failed[task] = dsv4_attn_heads(r->c, r, h0, h1) != 0;
}

static void
dsv4_cpu_attention(const dsv4_backend *be, const float *q, int nheads, int dim,
                   const float *const *keys, int nkeys, float scale, const float *sink,
                   float *scores, float *out)
{
    dsv4_cpu     *c = dsv4_cpu_of(be);
    dsv4_attn_run r = { .c = c, .q = q, .sink = sink, .keyp = keys, .nheads = nheads,
                        .dim = dim, .nkeys = nkeys, .scale = scale, .scores = scores,
                        .out = out };

    if (c->nthreads == 1 || nheads < 2
        || (double) nheads * nkeys * dim < 8 * DSV4_TASK_MIN_MACS) {
        if (dsv4_attn_heads(c, &r, 0, nheads) != 0) {
            dsv4_attn_heads_small(c, &r, 0, nheads);
        }
        return;
    }
    int ntasks = nheads < 2 * c->nthreads ? nheads : 2 * c->nthreads;
    ntasks = ntasks < DSV4_ATTN_MAXTASKS ? ntasks : DSV4_ATTN_MAXTASKS;
    r.per = (nheads + ntasks - 1) / ntasks;
    ntasks = (nheads + r.per - 1) / r.per;
    dsv4_pool_run(c->pool, dsv4_attn_task, &r, ntasks);
    for (int t = 0; t < ntasks; t++) {
        if (r.failed[t]) {
            dsv4_attn_heads_small(c, &r, t * r.per,
                                  (t + 1) * r.per < nheads ? (t + 1) * r.per : nheads);
        }
    }
}

static void
dsv4_cpu_compress_pool(const dsv4_backend *be, const float *const *kv,
                       const float *const *score, int nslots, int d, float *out)
{
    dsv4_cpu_of(be)->k->compress_pool(kv, score, nslots, d, out);
}

static void
dsv4_idx_task(void *arg, int task, int thread)
{
    dsv4_attn_run *r = arg;
    int            j0 = task * r->per, j1 = j0 + r->per < r->nkeys ? j0 + r->per : r->nkeys;

    r->c->k->indexer_scores(r->q, r->w, r->nheads, r->dim, r->keys, j0, j1, r->out);
}

static void
dsv4_cpu_indexer_scores(const dsv4_backend *be, const float *q, const float *w, int nheads,
                        int dim, const float *keys, int nkeys, float *out)
{
    dsv4_cpu *c = dsv4_cpu_of(be);

    if (c->nthreads == 1 || (double) nheads * nkeys * dim < 4 * DSV4_TASK_MIN_MACS) {
        c->k->indexer_scores(q, w, nheads, dim, keys, 0, nkeys, out);
        return;
    }
    dsv4_attn_run r = { .c = c, .q = q, .w = w, .keys = keys, .nheads = nheads, .dim = dim,
                        .nkeys = nkeys, .out = out };
    int ntasks = DSV4_TASKS_PER_THREAD * c->nthreads;
    r.per = (nkeys + ntasks - 1) / ntasks;
    dsv4_pool_run(c->pool, dsv4_idx_task, &r, (nkeys + r.per - 1) / r.per);
}

/* ---- construction ------------------------------------------------------ */

void
dsv4_backend_cpu_free(const dsv4_backend *be)
{
    if (!dsv4_cpu_is(be)) {
        return;
    }
    dsv4_cpu *c = dsv4_cpu_of(be);
    dsv4_pool_free(c->pool);
    free(c);
}

const dsv4_backend *
dsv4_backend_cpu_new_opts(const dsv4_cpu_opts *o, char *err, size_t errlen)
{
    const char *isa = o->isa == NULL || o->isa[0] == '\0' || strcmp(o->isa, "auto") == 0
                      ? dsv4_cpu_best_isa() : o->isa;
    int         nthreads = o->nthreads > 0 ? o->nthreads : dsv4_cpu_count();
    dsv4_cpu   *c;

    if (dsv4_cpu_kernels_for(isa) == NULL) {
        dsv4_cpu_error(err, errlen, "unknown CPU kernel set \"%s\" (expected auto, avx512, avx2 "
                       "or generic)", isa);
        return NULL;
    }
    if (!dsv4_cpu_has(isa)) {
        dsv4_cpu_error(err, errlen, "this CPU does not support the \"%s\" kernels (best: %s)",
                       isa, dsv4_cpu_best_isa());
        return NULL;
    }
    if (nthreads > 1024) {
        dsv4_cpu_error(err, errlen, "invalid thread count %d (expected 1..1024)", nthreads);
        return NULL;
    }
    if (o->blas && dsv4_blas_load(err, errlen) != 0) {
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        dsv4_cpu_error(err, errlen, "out of memory for the CPU backend");
        return NULL;
    }
    c->k = dsv4_cpu_kernels_for(isa);
    c->scalar = dsv4_backend_cpu_scalar();
    pthread_once(&dsv4_cpu_once, dsv4_cpu_tables);
    c->nthreads = nthreads;
    c->blas = o->blas != 0;
    c->be.impl = c;
    c->be.matmul = dsv4_cpu_matmul;             /* marks it ours for _free */
    c->pool = dsv4_pool_new(nthreads, err, errlen);
    if (c->pool == NULL) {
        dsv4_backend_cpu_free(&c->be);
        return NULL;
    }
    snprintf(c->name, sizeof(c->name), "cpu-%s%s", c->k->name, c->blas ? "+openblas" : "");
    c->be.name = c->name;
    c->be.matmul = dsv4_cpu_matmul;
    c->be.matmul_batch = dsv4_cpu_matmul_batch;
    c->be.rmsnorm = dsv4_cpu_rmsnorm;
    c->be.swiglu = dsv4_cpu_swiglu;
    c->be.hc_post = dsv4_cpu_hc_post;
    c->be.rope = dsv4_cpu_rope;
    c->be.fake_quant_fp8 = dsv4_cpu_fake_quant_fp8;
    c->be.fake_quant_fp4 = dsv4_cpu_fake_quant_fp4;
    c->be.hadamard = dsv4_cpu_hadamard;
    c->be.sinkhorn = dsv4_cpu_sinkhorn;
    c->be.attention = dsv4_cpu_attention;
    c->be.compress_pool = dsv4_cpu_compress_pool;
    c->be.indexer_scores = dsv4_cpu_indexer_scores;
    return &c->be;
}

const dsv4_backend *
dsv4_backend_cpu_new(int nthreads, char *err, size_t errlen)
{
    const char   *blas = getenv("DSV4_CPU_BLAS");
    dsv4_cpu_opts o = { nthreads, getenv("DSV4_CPU_ISA"), blas != NULL && strcmp(blas, "1") == 0 };

    return dsv4_backend_cpu_new_opts(&o, err, errlen);
}

int
dsv4_backend_cpu_threads(const dsv4_backend *be)
{
    return dsv4_cpu_is(be) ? dsv4_cpu_of(be)->nthreads : 1;
}

void
dsv4_backend_cpu_stats(const dsv4_backend *be, dsv4_cpu_stats *st, int reset)
{
    memset(st, 0, sizeof(*st));
    if (!dsv4_cpu_is(be)) {
        return;
    }
    dsv4_cpu *c = dsv4_cpu_of(be);
    if (reset) {
        st->matmul_calls = atomic_exchange(&c->st_calls, 0);
        st->weight_bytes = atomic_exchange(&c->st_bytes, 0);
        st->flops = atomic_exchange(&c->st_flops, 0);
    } else {
        st->matmul_calls = atomic_load(&c->st_calls);
        st->weight_bytes = atomic_load(&c->st_bytes);
        st->flops = atomic_load(&c->st_flops);
    }
}
