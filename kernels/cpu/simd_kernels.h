/*
 * The CPU kernels, written once over a small vector vocabulary (ggml's
 * simd-mappings idea).  An ISA file (generic.c, avx2.c, avx512.c) defines the
 * vocabulary, then includes this file, which instantiates every kernel and a
 * dsv4_cpu_kernels table named DSV4_KERNELS.
 *
 * Vocabulary the ISA file provides (all static inline, all DSV4_TARGET):
 *
 *   DSV4_TARGET         function attribute enabling the ISA (may be empty)
 *   DSV4_KERNELS        name of the table to define; DSV4_ISA_NAME its name
 *   VL                  float lanes in a vector; vf the vector type
 *   GEMM_MR, GEMM_NR    matmul register tile: tokens x weight rows
 *   GEMM_PANELS         NR-row panels per packed row block
 *   GEMV_RT(nt)         weight rows per GEMV tile for nt tokens (registers)
 *   vf_zero() vf_set1(f) vf_load(p) vf_loadn(p, n) vf_store(p, v) vf_storen(p, v, n)
 *                       (the n forms touch only lanes < n; loadn zero-fills the rest)
 *   vf_add vf_sub vf_mul vf_div vf_max vf_fma(a, b, c) = a*b + c (one rounding)
 *   vf_hsum(v)          lane sum by one fixed tree
 *   vf_exp(v)           e^v; 0 below -87.3 (and for -inf); within 2 ulp of expf
 *   vf_swap_pairs(v)    lanes (0 1)(2 3)... exchanged
 *   deq_fp8(p, n, out)  32 e4m3 codes -> NV vectors of value * 2^-8 (lanes >= n: 0)
 *   deq_fp4(p, out)     16 bytes of e2m1 pairs -> NV vectors, natural order
 *   deq_bf16(p, n, out) 32 bfloat16 -> NV vectors (lanes >= n: 0)
 *
 * where NV = 32 / VL: matrices are walked in units of 32 columns, the FP4
 * scale block, a quarter of the FP8 one.
 *
 * Canonical order (cpu.h): a matmul output is one chain of FMAs per lane over
 * the weight row times its scale, in increasing k, then vf_hsum.  The GEMV
 * tile (few tokens, weights dequantised in registers) and the GEMM path
 * (weights dequantised once into a packed block, reused by many tokens) both
 * follow it, so results never depend on n or on how rows were split.
 */
#include <math.h>

#include "formats.h"

#define NV          (32 / VL)
#define GEMV_MAXN   4                           /* tokens up to which GEMV is used */
#define GEMM_RB     (GEMM_NR * GEMM_PANELS)     /* rows per packed block */
#define GEMM_KC     512                         /* columns per packed block (x 32) */
#define GEMM_TB     32                          /* tokens per accumulator block */
#define DSV4_INLINE static inline __attribute__((always_inline)) DSV4_TARGET

_Static_assert(GEMM_KC % 128 == 0, "packed blocks hold whole FP8 scale blocks");
_Static_assert(GEMM_TB % GEMM_MR == 0, "token blocks hold whole register tiles");
_Static_assert(32 % VL == 0, "a 32-column unit is whole vectors");

/* ---- matmul -------------------------------------------------------------- */

/* Full unrolling of the small constant loops below keeps the accumulators in
 * registers (GCC does not at -O2 by itself). */
#define DSV4_UNROLL _Pragma("GCC unroll 32")

/* Where weight row r lives: its bytes and its scale bytes. */
typedef struct {
    const uint8_t *data;
    const uint8_t *scale;   /* FP8: the row block's scale row; FP4: the row's scales */
} dsv4_row;

DSV4_INLINE dsv4_row
dsv4_row_at(int fmt, const dsv4_mat *w, int r)
{
    size_t   K = (size_t) w->cols;
    dsv4_row row = { (const uint8_t *) w->data, w->scale };

    switch (fmt) {
    case DSV4_MAT_F32:  row.data += r * K * 4; break;
    case DSV4_MAT_BF16: row.data += r * K * 2; break;
    case DSV4_MAT_FP8:
        row.data += r * K;
        row.scale += (size_t) (r >> 7) * ((K + 127) >> 7);
        break;
    case DSV4_MAT_FP4:
        row.data += r * K / 2;
        row.scale += r * K / 32;
        break;
    }
    return row;
}

/* The 32-column unit of a row from column k (n <= 32 valid), times its block
 * scale, exactly.  fmt is a constant at every call site, so each format gets
 * its own specialised loops. */
DSV4_INLINE void
dsv4_unit(int fmt, dsv4_row row, int k, int n, vf out[NV])
{
    switch (fmt) {
    case DSV4_MAT_F32: {
        const float *p = (const float *) row.data + k;
        DSV4_UNROLL
        for (int v = 0; v < NV; v++) {
            int m = n - v * VL;
            out[v] = m >= VL ? vf_load(p + v * VL) : vf_loadn(p + v * VL, m > 0 ? m : 0);
        }
        break;
    }
    case DSV4_MAT_BF16:
        deq_bf16((const uint16_t *) row.data + k, n, out);
        break;
    case DSV4_MAT_FP8: {
        /* deq_fp8 yields value * 2^-8 (see the ISA files); the table holds
         * scale * 2^8, exact for every scale below 2^120 */
        vf s = vf_set1(dsv4_cpu_e8m0_x256[row.scale[k >> 7]]);
        deq_fp8(row.data + k, n, out);
        DSV4_UNROLL
        for (int v = 0; v < NV; v++) {
            out[v] = vf_mul(out[v], s);
        }
        break;
    }
    case DSV4_MAT_FP4: {
        vf s = vf_set1(dsv4_e8m0_table[row.scale[k >> 5]]);
        deq_fp4(row.data + k / 2, out);
        DSV4_UNROLL
        for (int v = 0; v < NV; v++) {
            out[v] = vf_mul(out[v], s);
        }
        break;
    }
    }
}

/* GEMV tile: GEMV_RT(nt) rows from r0 (nr valid) against nt <= GEMV_MAXN
 * tokens, each weight vector dequantised once in registers and used by every
 * token.  Rows past nr repeat the last one (computed, not stored). */
DSV4_INLINE void
dsv4_gemv_tile(int fmt, int nt, const dsv4_mat *w, int r0, int nr, const float *x, int ldx,
               float *y, int ldy)
{
    enum { RT = GEMV_RT(GEMV_MAXN) > GEMV_RT(1) ? GEMV_RT(GEMV_MAXN) : GEMV_RT(1) };
    const int rt = GEMV_RT(nt);
    vf        acc[RT][GEMV_MAXN];
    dsv4_row  rows[RT];
    int       K = w->cols, k;

    DSV4_UNROLL
    for (int i = 0; i < rt; i++) {
        rows[i] = dsv4_row_at(fmt, w, r0 + (i < nr ? i : nr - 1));
        DSV4_UNROLL
        for (int t = 0; t < nt; t++) {
            acc[i][t] = vf_zero();
        }
    }
    for (k = 0; k + 32 <= K; k += 32) {
        DSV4_UNROLL
        for (int i = 0; i < rt; i++) {
            vf wv[NV];
            dsv4_unit(fmt, rows[i], k, 32, wv);
            DSV4_UNROLL
            for (int v = 0; v < NV; v++) {
                DSV4_UNROLL
                for (int t = 0; t < nt; t++) {
                    acc[i][t] = vf_fma(wv[v], vf_load(x + (size_t) t * ldx + k + v * VL),
                                       acc[i][t]);
                }
            }
        }
    }
    if (k < K) {                                /* last, partial unit (not FP4) */
        int n = K - k;
        for (int i = 0; i < rt; i++) {
            vf wv[NV];
            dsv4_unit(fmt, rows[i], k, n, wv);
            for (int v = 0; v < NV; v++) {
                int m = n - v * VL;
                for (int t = 0; t < nt; t++) {
                    vf xv = vf_loadn(x + (size_t) t * ldx + k + v * VL,
                                     m >= VL ? VL : (m > 0 ? m : 0));
                    acc[i][t] = vf_fma(wv[v], xv, acc[i][t]);
                }
            }
        }
    }
    for (int i = 0; i < nr && i < rt; i++) {
        for (int t = 0; t < nt; t++) {
            y[(size_t) t * ldy + i] = vf_hsum(acc[i][t]);
        }
    }
}

DSV4_INLINE void
dsv4_gemv_nt(int fmt, int nt, const dsv4_mat *w, int r0, int r1, const float *x, int ldx,
             float *y, int ldy)
{
    const int rt = GEMV_RT(nt);

    for (int r = r0; r < r1; r += rt) {
        dsv4_gemv_tile(fmt, nt, w, r, r1 - r < rt ? r1 - r : rt, x, ldx, y + (r - r0), ldy);
    }
}

DSV4_INLINE void
dsv4_gemv_fmt(int fmt, const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n,
              float *y, int ldy)
{
    switch (n) {
    case 1: dsv4_gemv_nt(fmt, 1, w, r0, r1, x, ldx, y, ldy); break;
    case 2: dsv4_gemv_nt(fmt, 2, w, r0, r1, x, ldx, y, ldy); break;
    case 3: dsv4_gemv_nt(fmt, 3, w, r0, r1, x, ldx, y, ldy); break;
    default: dsv4_gemv_nt(fmt, 4, w, r0, r1, x, ldx, y, ldy); break;
    }
}

/* Packs rows rb .. rb+nrows-1, columns kc .. kc+klen-1 of w (scaled, float)
 * into wb [GEMM_RB][GEMM_KC]; rows nrows .. up to the panel boundary are
 * zero, and so is each row past klen up to a whole unit. */
DSV4_INLINE void
dsv4_pack_fmt(int fmt, const dsv4_mat *w, int rb, int nrows, int kc, int klen, float *wb)
{
    int nunits = (klen + 31) / 32, prow = (nrows + GEMM_NR - 1) / GEMM_NR * GEMM_NR;

    for (int i = 0; i < nrows; i++) {
        float   *dst = wb + (size_t) i * GEMM_KC;
        dsv4_row row = dsv4_row_at(fmt, w, rb + i);
        for (int u = 0; u < nunits; u++) {
            vf  wv[NV];
            int n = klen - u * 32;
            dsv4_unit(fmt, row, kc + u * 32, n < 32 ? n : 32, wv);
            DSV4_UNROLL
            for (int v = 0; v < NV; v++) {
                vf_store(dst + u * 32 + v * VL, wv[v]);
            }
        }
    }
    for (int i = nrows; i < prow; i++) {
        for (int c = 0; c < nunits * 32; c += VL) {
            vf_store(wb + (size_t) i * GEMM_KC + c, vf_zero());
        }
    }
}

/* Register tile: GEMM_MR tokens (x rows xp[], kleft valid columns from the
 * block start) x GEMM_NR packed weight rows, over nunits units.  The
 * accumulators come from (or start at zero when first) and go back to
 * accb[t * GEMM_RB + i], or, when last, are reduced into y. */
DSV4_INLINE void
dsv4_micro(const float *wb, const float *const *xp, int nunits, int kleft, vf *accb,
           int first, int last, float *y, int ldy, int ntok, int nrow)
{
    vf  acc[GEMM_MR][GEMM_NR];
    int nfull = kleft / 32 < nunits ? kleft / 32 : nunits;

    DSV4_UNROLL
    for (int t = 0; t < GEMM_MR; t++) {
        DSV4_UNROLL
        for (int i = 0; i < GEMM_NR; i++) {
            acc[t][i] = first ? vf_zero() : accb[t * GEMM_RB + i];
        }
    }
    for (int kk = 0; kk < nfull * 32; kk += VL) {
        vf wv[GEMM_NR];
        DSV4_UNROLL
        for (int i = 0; i < GEMM_NR; i++) {
            wv[i] = vf_load(wb + (size_t) i * GEMM_KC + kk);
        }
        DSV4_UNROLL
        for (int t = 0; t < GEMM_MR; t++) {
            vf xv = vf_load(xp[t] + kk);
            DSV4_UNROLL
            for (int i = 0; i < GEMM_NR; i++) {
                acc[t][i] = vf_fma(wv[i], xv, acc[t][i]);
            }
        }
    }
    for (int kk = nfull * 32; kk < nunits * 32; kk += VL) {    /* the matrix's last unit */
        int m = kleft - kk;
        vf  wv[GEMM_NR];
        for (int i = 0; i < GEMM_NR; i++) {
            wv[i] = vf_load(wb + (size_t) i * GEMM_KC + kk);
        }
        for (int t = 0; t < GEMM_MR; t++) {
            vf xv = vf_loadn(xp[t] + kk, m >= VL ? VL : (m > 0 ? m : 0));
            for (int i = 0; i < GEMM_NR; i++) {
                acc[t][i] = vf_fma(wv[i], xv, acc[t][i]);
            }
        }
    }
    if (!last) {
        DSV4_UNROLL
        for (int t = 0; t < GEMM_MR; t++) {
            DSV4_UNROLL
            for (int i = 0; i < GEMM_NR; i++) {
                accb[t * GEMM_RB + i] = acc[t][i];
            }
        }
        return;
    }
    for (int t = 0; t < ntok; t++) {
        for (int i = 0; i < nrow; i++) {
            y[(size_t) t * ldy + i] = vf_hsum(acc[t][i]);
        }
    }
}

/* Rows [r0, r1) for many tokens: for each block of GEMM_RB rows and
 * GEMM_TB tokens, walk the columns in GEMM_KC steps, dequantising the rows'
 * slice once into wb and running every token tile over it.  wb (24 KB) and
 * the accumulators (<= 48 KB) live on the stack: no allocation, any thread. */
DSV4_INLINE void
dsv4_gemm_fmt(int fmt, const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n,
              float *y, int ldy)
{
    float wb[GEMM_RB * GEMM_KC] __attribute__((aligned(64)));
    vf    accb[GEMM_TB * GEMM_RB];
    int   K = w->cols;

    for (int rb = r0; rb < r1; rb += GEMM_RB) {
        int nrows = r1 - rb < GEMM_RB ? r1 - rb : GEMM_RB;
        for (int tb = 0; tb < n; tb += GEMM_TB) {
            int ntok = n - tb < GEMM_TB ? n - tb : GEMM_TB;
            for (int kc = 0; kc < K; kc += GEMM_KC) {
                int klen = K - kc < GEMM_KC ? K - kc : GEMM_KC;
                int nunits = (klen + 31) / 32, first = kc == 0, last = kc + klen >= K;

                dsv4_pack_fmt(fmt, w, rb, nrows, kc, klen, wb);
                for (int t = 0; t < ntok; t += GEMM_MR) {
                    const float *xp[GEMM_MR];
                    int          nt = ntok - t < GEMM_MR ? ntok - t : GEMM_MR;
                    for (int j = 0; j < GEMM_MR; j++) {     /* short tile: repeat a token */
                        xp[j] = x + (size_t) (tb + t + (j < nt ? j : nt - 1)) * ldx + kc;
                    }
                    for (int p = 0; p * GEMM_NR < nrows; p++) {
                        int nr = nrows - p * GEMM_NR < GEMM_NR ? nrows - p * GEMM_NR : GEMM_NR;
                        dsv4_micro(wb + (size_t) p * GEMM_NR * GEMM_KC, xp, nunits, K - kc,
                                   accb + t * GEMM_RB + p * GEMM_NR, first, last,
                                   y + (size_t) (tb + t) * ldy + (rb - r0) + p * GEMM_NR, ldy,
                                   nt, nr);
                    }
                }
            }
        }
    }
}

static DSV4_TARGET void
dsv4_k_matmul_rows(const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n,
                   float *y, int ldy)
{
    if (r1 <= r0 || n <= 0) {
        return;
    }
#define DSV4_MATMUL_CASE(fmt)                                           \
    case fmt:                                                           \
        if (n <= GEMV_MAXN) {                                           \
            dsv4_gemv_fmt(fmt, w, r0, r1, x, ldx, n, y, ldy);           \
        } else {                                                        \
            dsv4_gemm_fmt(fmt, w, r0, r1, x, ldx, n, y, ldy);           \
        }                                                               \
        break;
    switch (w->type) {
    DSV4_MATMUL_CASE(DSV4_MAT_F32)
    DSV4_MATMUL_CASE(DSV4_MAT_BF16)
    DSV4_MATMUL_CASE(DSV4_MAT_FP8)
    DSV4_MATMUL_CASE(DSV4_MAT_FP4)
    }
#undef DSV4_MATMUL_CASE
}

static DSV4_TARGET void
dsv4_k_dequant_rows(const dsv4_mat *w, int r0, int r1, float *dst)
{
    int K = w->cols;

    for (int r = r0; r < r1; r++) {
        float *d = dst + (size_t) (r - r0) * K;
        for (int k = 0; k < K; k += 32) {
            vf  wv[NV];
            int n = K - k < 32 ? K - k : 32;
            switch (w->type) {
            case DSV4_MAT_F32:  dsv4_unit(DSV4_MAT_F32, dsv4_row_at(DSV4_MAT_F32, w, r), k, n, wv); break;
            case DSV4_MAT_BF16: dsv4_unit(DSV4_MAT_BF16, dsv4_row_at(DSV4_MAT_BF16, w, r), k, n, wv); break;
            case DSV4_MAT_FP8:  dsv4_unit(DSV4_MAT_FP8, dsv4_row_at(DSV4_MAT_FP8, w, r), k, n, wv); break;
            case DSV4_MAT_FP4:  dsv4_unit(DSV4_MAT_FP4, dsv4_row_at(DSV4_MAT_FP4, w, r), k, n, wv); break;
            }
            for (int v = 0; v < NV; v++) {
                int m = n - v * VL;
                if (m >= VL) {
                    vf_store(d + k + v * VL, wv[v]);
                } else if (m > 0) {
                    vf_storen(d + k + v * VL, wv[v], m);
                }
            }
        }
    }
}

/* ---- vector helpers ------------------------------------------------------ */

DSV4_INLINE float
dsv4_dot(const float *a, const float *b, int n)
{
    vf  acc = vf_zero();
    int i = 0;

    for (; i + VL <= n; i += VL) {
        acc = vf_fma(vf_load(a + i), vf_load(b + i), acc);
    }
    if (i < n) {
        acc = vf_fma(vf_loadn(a + i, n - i), vf_loadn(b + i, n - i), acc);
    }
    return vf_hsum(acc);
}

/* y[i] += a * x[i] */
DSV4_INLINE void
dsv4_axpy(float *y, float a, const float *x, int n)
{
    vf  av = vf_set1(a);
    int i = 0;

    for (; i + VL <= n; i += VL) {
        vf_store(y + i, vf_fma(av, vf_load(x + i), vf_load(y + i)));
    }
    if (i < n) {
        vf_storen(y + i, vf_fma(av, vf_loadn(x + i, n - i), vf_loadn(y + i, n - i)), n - i);
    }
}

/* ---- small ops ----------------------------------------------------------- */

static DSV4_TARGET void
dsv4_k_rmsnorm(float *y, const float *x, const float *w, int d, float eps)
{
    float r = 1.0f / sqrtf(dsv4_dot(x, x, d) / (float) d + eps);
    vf    rv = vf_set1(r);
    int   i = 0;

    for (; i + VL <= d; i += VL) {
        vf v = vf_mul(vf_load(x + i), rv);
        vf_store(y + i, w ? vf_mul(v, vf_load(w + i)) : v);
    }
    for (; i < d; i++) {
        y[i] = x[i] * r * (w ? w[i] : 1.0f);
    }
}

/* v[0 .. n2) rotated pairwise: cd = (c0 c0 c1 c1 ...), sd = (-s0 s0 -s1 s1 ...)
 * with the sign of the rotation already in s. */
static DSV4_TARGET void
dsv4_k_rope(float *v, int n2, const float *cd, const float *sd)
{
    int i = 0;

    for (; i + VL <= n2; i += VL) {
        vf a = vf_load(v + i);
        vf_store(v + i, vf_fma(a, vf_load(cd + i), vf_mul(vf_swap_pairs(a), vf_load(sd + i))));
    }
    for (; i < n2; i += 2) {
        float a = v[i], b = v[i + 1];
        v[i] = a * cd[i] + b * sd[i];
        v[i + 1] = b * cd[i + 1] + a * sd[i + 1];
    }
}

/* Same butterflies as the scalar reference, so the result is bit-identical. */
static DSV4_TARGET void
dsv4_k_hadamard(float *v, int n)
{
    int h = 1;

    for (; h < n && h < VL; h *= 2) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
    }
    for (; h < n; h *= 2) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j += VL) {
                vf a = vf_load(v + j), b = vf_load(v + j + h);
                vf_store(v + j, vf_add(a, b));
                vf_store(v + j + h, vf_sub(a, b));
            }
        }
    }
    vf  s = vf_set1(1.0f / sqrtf((float) n));
    int i = 0;
    for (; i + VL <= n; i += VL) {
        vf_store(v + i, vf_mul(vf_load(v + i), s));
    }
    for (; i < n; i++) {
        v[i] *= 1.0f / sqrtf((float) n);
    }
}

static DSV4_TARGET void
dsv4_k_attention(const float *q, int h0, int h1, int dim, const float *const *keys, int nkeys,
                 float scale, const float *sink, float *scores, float *out)
{
    for (int h = h0; h < h1; h++) {
        const float *qh = q + (size_t) h * dim;
        float       *oh = out + (size_t) h * dim;
        float        mx = -INFINITY;
        int          u = 0;

        for (u = 0; u < nkeys; u++) {
            scores[u] = dsv4_dot(qh, keys[u], dim) * scale;
            mx = fmaxf(mx, scores[u]);
        }
        vf m = vf_set1(mx), den = vf_zero();
        for (u = 0; u + VL <= nkeys; u += VL) {
            vf e = vf_exp(vf_sub(vf_load(scores + u), m));
            vf_store(scores + u, e);
            den = vf_add(den, e);
        }
        if (u < nkeys) {
            vf e = vf_exp(vf_sub(vf_loadn(scores + u, nkeys - u), m));
            vf_storen(scores + u, e, nkeys - u);
            /* lanes past nkeys hold e^(0 - mx): keep them out of the sum */
            den = vf_add(den, vf_loadn(scores + u, nkeys - u));
        }
        float inv = 1.0f / (vf_hsum(den) + expf(sink[h] - mx));
        for (int i = 0; i < dim; i++) {
            oh[i] = 0.0f;
        }
        for (u = 0; u < nkeys; u++) {
            dsv4_axpy(oh, scores[u] * inv, keys[u], dim);
        }
    }
}

static DSV4_TARGET void
dsv4_k_compress_pool(const float *const *kv, const float *const *score, int nslots, int d,
                     float *out)
{
    for (int e = 0; e < d; e += VL) {
        int n = d - e < VL ? d - e : VL;
        vf  mx = vf_set1(-INFINITY), den = vf_zero(), acc = vf_zero();

        for (int s = 0; s < nslots; s++) {
            mx = vf_max(mx, vf_loadn(score[s] + e, n));
        }
        for (int s = 0; s < nslots; s++) {
            vf wgt = vf_exp(vf_sub(vf_loadn(score[s] + e, n), mx));     /* -inf slots: 0 */
            den = vf_add(den, wgt);
            acc = vf_fma(wgt, vf_loadn(kv[s] + e, n), acc);
        }
        vf_storen(out + e, vf_div(acc, den), n);
    }
}

static DSV4_TARGET void
dsv4_k_indexer_scores(const float *q, const float *w, int nheads, int dim, const float *keys,
                      int j0, int j1, float *out)
{
    for (int j = j0; j < j1; j++) {
        const float *kj = keys + (size_t) j * dim;
        float        s = 0.0f;
        for (int h = 0; h < nheads; h++) {
            s += w[h] * fmaxf(dsv4_dot(q + (size_t) h * dim, kj, dim), 0.0f);
        }
        out[j] = s;
    }
}

const dsv4_cpu_kernels DSV4_KERNELS = {
    .name = DSV4_ISA_NAME,
    .vl = VL,
    .matmul_rows = dsv4_k_matmul_rows,
    .dequant_rows = dsv4_k_dequant_rows,
    .rmsnorm = dsv4_k_rmsnorm,
    .rope = dsv4_k_rope,
    .hadamard = dsv4_k_hadamard,
    .attention = dsv4_k_attention,
    .compress_pool = dsv4_k_compress_pool,
    .indexer_scores = dsv4_k_indexer_scores,
};
