/*
 * Internals of the fast CPU backend (kernels/cpu/backend.c): the per-ISA
 * kernel tables, the thread pool and the optional OpenBLAS binding.
 *
 * Layout:
 *   simd_kernels.h   every kernel written once, over a small vector vocabulary
 *   generic.c        that vocabulary in plain C (any CPU; the fallback)
 *   avx2.c           ... in AVX2+FMA+F16C intrinsics
 *   avx512.c         ... in AVX-512 (F, BW, VL) intrinsics
 *   backend.c        ISA selection, thread splitting, the dsv4_backend vtable
 *   pool.c           persistent worker threads
 *   blas.c           OpenBLAS sgemm, loaded with dlopen when asked for
 *
 * The ISA files are compiled with function-level target attributes, never
 * with -march: one binary runs everywhere and picks its kernels at runtime.
 *
 * Numerics (the "canonical order"): every matmul output y[i, r] is computed
 * the same way whatever n, the row range or the thread split is: the weight
 * row is dequantised and multiplied by its block scale (exact: a power of
 * two), then accumulated with fused multiply-adds into one vector of VL
 * lanes, lane l taking k = l, l+VL, ... in increasing k, then the lanes are
 * summed by one fixed tree.  So prefill, chunked prefill, decode and batched
 * decode give bit-identical results on a given ISA, as on the scalar backend.
 */
#ifndef DSV4_KERNELS_CPU_H
#define DSV4_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "formats.h"
#include "kernels.h"

/* One ISA's kernels.  Each works on a slice of the problem the backend
 * hands to one thread; none allocates or keeps state. */
typedef struct {
    const char *name;
    int         vl;          /* float lanes per vector */

    /* y[i, r - r0] for rows r0 <= r < r1 of w, tokens i < n (any n >= 1). */
    void (*matmul_rows)(const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n,
                        float *y, int ldy);
    /* Dequantises rows [r0, r1) of w into dst [r1-r0, w->cols] float32 (the
     * exact values the matmul uses: weight times block scale). */
    void (*dequant_rows)(const dsv4_mat *w, int r0, int r1, float *dst);

    void  (*rmsnorm)(float *y, const float *x, const float *w, int d, float eps);
    void  (*swiglu)(float *g, const float *u, int n, float limit, float w);
    void  (*hc_post)(float *x, const float *o, const float *post, const float *comb, int hc,
                     int d);
    /* the fake_quant_fp8/fp4 ops of kernels.h, f the format */
    void  (*fake_quant)(float *v, int n, int block, const dsv4_qfmt *f);
    /* v[0 .. n2) rotated pairwise by cd = (c0 c0 c1 c1 ...), sd = (-s0 s0 -s1 s1 ...) */
    void  (*rope)(float *v, int n2, const float *cd, const float *sd);
    void  (*hadamard)(float *v, int n);
    /* Heads [h0, h1) of the attention op (kernels.h); scores: [h1-h0, nkeys]
     * scratch (any split of the heads gives the same results). */
    void  (*attention)(const float *q, int h0, int h1, int dim, const float *const *keys,
                       int nkeys, float scale, const float *sink, float *scores, float *out);
    void  (*compress_pool)(const float *const *kv, const float *const *score, int nslots,
                           int d, float *out);
    /* Keys [j0, j1) of the indexer op. */
    void  (*indexer_scores)(const float *q, const float *w, int nheads, int dim,
                            const float *keys, int j0, int j1, float *out);
} dsv4_cpu_kernels;

/* Up to this many tokens a matmul takes the GEMV path (weights dequantised
 * in registers, used by every token); more take the packed GEMM path. */
#define DSV4_GEMV_MAX_TOKENS 8

/* e8m0 byte -> 2^(b-127) * 2^8: FP8 block scales with the 2^-8 of the
 * half-precision conversion folded in (filled by the backend constructor). */
extern __attribute__((visibility("hidden"))) float dsv4_cpu_e8m0_x256[256];

extern const dsv4_cpu_kernels dsv4_cpu_kernels_generic;
#if defined(__x86_64__) || defined(__i386__)
extern const dsv4_cpu_kernels dsv4_cpu_kernels_avx2;
extern const dsv4_cpu_kernels dsv4_cpu_kernels_avx512;
#endif

/* A per-thread scratch buffer of at least n floats, grown (never shrunk) and
 * freed when the thread exits; NULL when out of memory (callers then take a
 * path that needs none).  Valid until the same thread's next call. */
float *dsv4_cpu_tls_floats(size_t n);

/* ---- thread pool (pool.c) ---------------------------------------------- */

typedef struct dsv4_pool dsv4_pool;

/* Runs fn(arg, task, thread) for task = 0 .. ntasks-1 on the pool's threads
 * (the calling thread works too, as thread 0); returns when all are done.
 * thread < dsv4_pool_size(p) identifies per-thread scratch. */
typedef void (*dsv4_pool_fn)(void *arg, int task, int thread);

/* nthreads >= 1 (1 = no worker threads).  NULL with err on failure. */
dsv4_pool *dsv4_pool_new(int nthreads, char *err, size_t errlen);
void       dsv4_pool_free(dsv4_pool *p);
int        dsv4_pool_size(const dsv4_pool *p);
/* Callers from several threads are serialised (one job at a time). */
void       dsv4_pool_run(dsv4_pool *p, dsv4_pool_fn fn, void *arg, int ntasks);

/* ---- OpenBLAS (blas.c) --------------------------------------------------- */

/* Loads libopenblas with dlopen (once); 0 or -1 with err.  Single-threaded
 * OpenBLAS: the backend's own threads call it on disjoint row ranges. */
int  dsv4_blas_load(char *err, size_t errlen);
/* C[m, n] = A[m, k] · B[n, k]^T (row-major, lda/ldb/ldc in elements). */
void dsv4_blas_sgemm_nt(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc);
/* Sets OpenBLAS's own thread count (the bench's sgemm baseline). */
void dsv4_blas_set_threads(int n);
/* "OpenBLAS 0.3.21 ... Haswell" or NULL when not loaded. */
const char *dsv4_blas_config(void);

#endif
