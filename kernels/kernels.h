/*
 * The compute backend vtable (DESIGN.md §6).  Every backend (cpu scalar, cpu
 * SIMD, CUDA, Ascend) fills one dsv4_backend; the engine calls only through
 * it.  The scalar CPU backend is the oracle every other one is tested against.
 *
 * All activations are float32, row-major.  Weights stay in their checkpoint
 * format (mmapped) and are dequantised inside the matmul.
 */
#ifndef DSV4_KERNELS_H
#define DSV4_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DSV4_MAT_F32 = 0,   /* float32 [rows, cols] */
    DSV4_MAT_BF16,      /* bfloat16 [rows, cols] */
    DSV4_MAT_FP8,       /* e4m3 [rows, cols] + e8m0 scale [ceil(rows/128), ceil(cols/128)] */
    DSV4_MAT_FP4        /* e2m1 x2 packed [rows, cols/2] (low nibble = even col)
                           + e8m0 scale [rows, cols/32] */
} dsv4_mat_type;

/* A weight matrix W [rows, cols]; a linear layer computes y = W x.
 * data/scale point into the mmapped checkpoint (borrowed from the model). */
typedef struct {
    dsv4_mat_type  type;
    int            rows;
    int            cols;
    const void    *data;
    const uint8_t *scale;   /* NULL for F32/BF16 */
} dsv4_mat;

typedef struct dsv4_backend dsv4_backend;

/* One matmul of a batch (see matmul_batch): the arguments of `matmul`. */
typedef struct {
    const dsv4_mat *w;
    int             row_begin;
    int             row_end;
    const float    *x;
    int             ldx;
    int             n;
    float          *y;
    int             ldy;
} dsv4_matmul_job;

/* Every op takes the backend itself first, so a backend can carry state
 * (a thread pool, a device stream) in `impl`. */
struct dsv4_backend {
    const char *name;
    void       *impl;       /* backend-private state; NULL for the scalar one */

    /* y[i, r - row_begin] = sum_k W[r, k] x[i, k] for i < n, row_begin <= r < row_end.
     * x: [n, ldx] (first W.cols used), y: [n, ldy]. */
    void (*matmul)(const dsv4_backend *be, const dsv4_mat *w, int row_begin, int row_end,
                   const float *x, int ldx, int n, float *y, int ldy);

    /* Independent matmuls in one call, each exactly as `matmul` would compute
     * it: a threaded backend runs them as one parallel job (the experts of a
     * MoE step, projections sharing an input).  Outputs must not overlap. */
    void (*matmul_batch)(const dsv4_backend *be, const dsv4_matmul_job *jobs, int njobs);

    /* y[d] = w ⊙ x / sqrt(mean(x²) + eps); w may be NULL (unit weights);
     * y may alias x. */
    void (*rmsnorm)(const dsv4_backend *be, float *y, const float *x, const float *w, int d,
                    float eps);

    /* Interleaved rotation of v[0 .. 2*npairs) by pos * freqs[i] (sign -1:
     * the inverse rotation). */
    void (*rope)(const dsv4_backend *be, float *v, int npairs, int pos, const float *freqs,
                 int sign);

    /* The MoE expert activation, in place: g[k] = silu(min(g[k], limit)) *
     * clamp(u[k], -limit, limit) * w (limit <= 0: no clamping). */
    void (*swiglu)(const dsv4_backend *be, float *g, const float *u, int n, float limit,
                   float w);

    /* mHC post-mixing of one token's hc <= 16 streams x [hc, d], in place:
     * x[k] <- post[k] o + sum_j comb[j * hc + k] x[j], j in increasing order. */
    void (*hc_post)(const dsv4_backend *be, float *x, const float *o, const float *post,
                    const float *comb, int hc, int d);

    /* In-place fake quantisation of v[n] in blocks of `block`:
     * fp8: e4m3 with scale 2^ceil(log2(max(amax,1e-4)/448)),
     * fp4: e2m1 with scale 2^ceil(log2(max(amax,6*2^-126)/6)). */
    void (*fake_quant_fp8)(const dsv4_backend *be, float *v, int n, int block);
    void (*fake_quant_fp4)(const dsv4_backend *be, float *v, int n, int block);

    /* In-place orthonormal Walsh-Hadamard transform (Sylvester order), n = 2^k. */
    void (*hadamard)(const dsv4_backend *be, float *v, int n);

    /* Sinkhorn projection of c [n, n] (row softmax + eps, then alternating
     * column/row normalisation, ending on a column pass; iters passes). */
    void (*sinkhorn)(const dsv4_backend *be, float *c, int n, int iters, float eps);

    /* Attention of one query token, all heads, over nkeys shared K=V vectors:
     *   out[h] = sum_u softmax_u(scale q[h]·key_u ; sink[h]) key_u
     * q: [nheads, dim], keys: array of nkeys pointers to [dim] vectors,
     * sink: [nheads] logits added to the denominator only, scores: scratch [nkeys],
     * out: [nheads, dim]. */
    void (*attention)(const dsv4_backend *be, const float *q, int nheads, int dim,
                      const float *const *keys, int nkeys, float scale,
                      const float *sink, float *scores, float *out);

    /* Compressor pooling: for each channel e < d, softmax over nslots of
     * score[s][e] and out[e] = sum_s w * kv[s][e].  kv/score: nslots pointers
     * to [d] rows (a slot with score -inf contributes nothing). */
    void (*compress_pool)(const dsv4_backend *be, const float *const *kv,
                          const float *const *score,
                          int nslots, int d, float *out);

    /* Lightning-indexer scores: out[j] = sum_h w[h] * relu(q[h]·keys[j])
     * for j < nkeys.  q: [nheads, dim], keys: [nkeys, dim], w: [nheads]. */
    void (*indexer_scores)(const dsv4_backend *be, const float *q, const float *w,
                           int nheads, int dim,
                           const float *keys, int nkeys, float *out);
};

/* The scalar reference backend (kernels/cpu/scalar.c). */
const dsv4_backend *dsv4_backend_cpu_scalar(void);

/*
 * The fast CPU backend (kernels/cpu/backend.c): SIMD kernels chosen at
 * runtime (AVX-512, AVX2+FMA, or portable C) and a persistent pool of
 * nthreads threads (0: one per CPU this process may run on).  The
 * environment may override the kernels (DSV4_CPU_ISA=avx512|avx2|generic)
 * and route matmuls of >= 16 tokens through OpenBLAS (DSV4_CPU_BLAS=1).
 * Returns NULL with err on failure; free with dsv4_backend_cpu_free().
 *
 * On one kernel set, results do not depend on the thread count, the chunk
 * size or the batch (see kernels/cpu/cpu.h); they differ from the scalar
 * reference by float32 summation order only.  OpenBLAS breaks the first
 * property (its sums are ordered differently from the decode kernels).
 */
const dsv4_backend *dsv4_backend_cpu_new(int nthreads, char *err, size_t errlen);

typedef struct {
    int         nthreads;   /* 0 = one per available CPU */
    const char *isa;        /* NULL/"auto", "avx512", "avx2", "generic" */
    int         blas;       /* 1: OpenBLAS sgemm for matmuls of >= 16 tokens */
} dsv4_cpu_opts;

/* As dsv4_backend_cpu_new, with explicit options (no environment). */
const dsv4_backend *dsv4_backend_cpu_new_opts(const dsv4_cpu_opts *o, char *err,
                                              size_t errlen);
void dsv4_backend_cpu_free(const dsv4_backend *be);

/* "avx512", "avx2" or "generic": the best kernels this CPU runs. */
const char *dsv4_cpu_best_isa(void);
int         dsv4_backend_cpu_threads(const dsv4_backend *be);

/* Counters of a fast CPU backend since creation or the last reset (zero for
 * other backends): weight bytes are those of the rows each matmul read. */
typedef struct {
    uint64_t matmul_calls;
    uint64_t weight_bytes;
    uint64_t flops;          /* 2 x rows x cols x tokens */
} dsv4_cpu_stats;

void dsv4_backend_cpu_stats(const dsv4_backend *be, dsv4_cpu_stats *st, int reset);

#endif
