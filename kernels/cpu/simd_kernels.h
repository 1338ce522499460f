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
 *   ATT_HB, ATT_DB      attention register tile: heads x dim vectors
 *   vf_zero() vf_set1(f) vf_load(p) vf_loadn(p, n) vf_store(p, v) vf_storen(p, v, n)
 *                       (the n forms touch only lanes < n; loadn zero-fills the rest)
 *   vf_add vf_sub vf_mul vf_div vf_fma(a, b, c) = a*b + c (one rounding)
 *   vf_max vf_min       a NaN in a gives b (as fmaxf/fminf)
 *   vf_hsum(v)          lane sum by one fixed tree
 *   vf_exp(v)           e^v; 0 below -87.3 (and for -inf); within 2 ulp of expf
 *   vf_swap_pairs(v)    lanes (0 1)(2 3)... exchanged
 *   vf_rint(v)          nearest integer, ties to even (as rintf)
 *   vf_pow2_floor(v)    2^floor(log2|v|) for normal v, 0 for zero and subnormals
 *                       (v's exponent bits alone; inf for inf and NaN)
 *   vf_keep_nan(a, b)   b in the lanes where b is NaN, a elsewhere
 *   deq_fp8(p, n, out)  32 e4m3 codes -> NV vectors of value * 2^-8 (lanes >= n: 0)
 *   deq_fp8x(p, n, out) the same as value * 2^-120 (float bits, maybe subnormal)
 *   deq_fp4s(p, s, out) 16 bytes of e2m1 pairs times scale s -> NV vectors
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

#include "cpu.h"
#include "formats.h"

#define NV          (32 / VL)
#define GEMV_MAXN   DSV4_GEMV_MAX_TOKENS
#define GEMM_RB     (GEMM_NR * GEMM_PANELS)     /* rows per packed block */
#define GEMV_AHEAD  8192                        /* least bytes a GEMV prefetches ahead */
#define GEMM_KC     512                         /* columns per packed block (x 32) */
#define GEMM_TB     32                          /* tokens per accumulator block */
#define DSV4_INLINE static inline __attribute__((always_inline)) DSV4_TARGET

/* FP8 read with deq_fp8x against x pre-multiplied by scale * 2^120: a GEMV
 * fast path, never a matrix type */
#define DSV4_FMT_FP8X 16

_Static_assert(GEMV_RT(GEMV_MAXN) <= GEMV_RT(1), "GEMV tiles shrink as tokens grow");
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
    case DSV4_FMT_FP8X:
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
    case DSV4_MAT_FP4:
        deq_fp4s(row.data + k / 2, dsv4_e8m0_table[row.scale[k >> 5]], out);
        break;
    case DSV4_FMT_FP8X:
        /* value * 2^-120 times x * scale * 2^120: the same exact product */
        deq_fp8x(row.data + k, n, out);
        break;
    }
}

/* Bytes of weight data per 32-column unit. */
DSV4_INLINE int
dsv4_unit_bytes(int fmt)
{
    return fmt == DSV4_MAT_F32 ? 128 : fmt == DSV4_MAT_BF16 ? 64 : fmt == DSV4_MAT_FP4 ? 16 : 32;
}

/* The row advanced past the 32-column unit at column k: the next unit is
 * then at offset 0 (an FP8 scale byte covers four units). */
DSV4_INLINE dsv4_row
dsv4_row_next(int fmt, dsv4_row row, int k)
{
    row.data += dsv4_unit_bytes(fmt);
    if (fmt == DSV4_MAT_FP4) {
        row.scale += 1;
    } else if (fmt == DSV4_MAT_FP8) {
        row.scale += (k & 127) == 96;
    }
    return row;
}

/* GEMV tile: GEMV_RT(nt) rows from r0 (nr valid) against nt <= GEMV_MAXN
 * tokens, each weight vector dequantised once in registers and used by every
 * token.  Rows past nr repeat the last one (computed, not stored).  Each unit
 * prefetches `ahead` bytes further on (harmless past the matrix end). */
DSV4_INLINE void
dsv4_gemv_tile(int fmt, int nt, const dsv4_mat *w, int r0, int nr, const float *x, int ldx,
               float *y, int ldy, size_t ahead)
{
    enum { RT = GEMV_RT(1) };
    const int rt = GEMV_RT(nt);
    vf        acc[RT][GEMV_MAXN];
    dsv4_row  rows[RT];
    int       K = w->cols, k;

    DSV4_UNROLL
    for (int i = 0; i < rt; i++) {
        rows[i] = dsv4_row_at(fmt, w, r0 + (i < nr ? i : nr - 1));
        if (fmt == DSV4_MAT_FP4) {
            __builtin_prefetch(rows[i].scale + ahead / 16);
        }
        DSV4_UNROLL
        for (int t = 0; t < nt; t++) {
            acc[i][t] = vf_zero();
        }
    }
    /* rows[i] walks along its row: each unit is read at offset 0 */
    for (k = 0; k + 32 <= K; k += 32) {
        DSV4_UNROLL
        for (int i = 0; i < rt; i++) {
            vf wv[NV];
            __builtin_prefetch(rows[i].data + ahead);
            dsv4_unit(fmt, rows[i], 0, 32, wv);
            rows[i] = dsv4_row_next(fmt, rows[i], k);
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
            dsv4_unit(fmt, rows[i], 0, n, wv);
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
    /* Decode rows are read once, as rt streams side by side, too briefly for
     * the hardware prefetchers (which also stop at every 4 KB page).  The
     * rows of a tile are adjacent, so the bytes a unit will need later lie a
     * whole number of tiles further on: prefetch there, at least GEMV_AHEAD
     * bytes (memory latency) ahead.  With rows of 4 KB and more (V4-Flash's
     * dim) a fixed distance would land inside the tile being read.  The
     * first `ahead` bytes of the range are prefetched here. */
    size_t    row_bytes = (size_t) w->cols * dsv4_unit_bytes(fmt) / 32;
    size_t    tile = (size_t) rt * row_bytes;
    size_t    ahead = (GEMV_AHEAD + tile - 1) / tile * tile;
    size_t    lead = (size_t) (r1 - r0) * row_bytes;
    dsv4_row  first = dsv4_row_at(fmt, w, r0);

    for (size_t off = 0; off < lead && off < ahead; off += 64) {
        __builtin_prefetch(first.data + off);
    }
    for (int r = r0; r < r1; r += rt) {
        dsv4_gemv_tile(fmt, nt, w, r, r1 - r < rt ? r1 - r : rt, x, ldx, y + (r - r0), ldy,
                       ahead);
    }
}

/* call(nt) with nt the constant equal to n (1 .. GEMV_MAXN): every token
 * count gets its own unrolled GEMV */
#define DSV4_GEMV_SWITCH(n, call)                                               \
    switch (n) {                                                                \
    case 1: call(1); break;                                                     \
    case 2: call(2); break;                                                     \
    case 3: call(3); break;                                                     \
    case 4: call(4); break;                                                     \
    case 5: call(5); break;                                                     \
    case 6: call(6); break;                                                     \
    case 7: call(7); break;                                                     \
    default: call(8); break;                                                    \
    }
_Static_assert(GEMV_MAXN == 8, "DSV4_GEMV_SWITCH has a case per token count");

/*
 * FP8 GEMV: per 128-row block, x is copied pre-multiplied by each column
 * block's scale * 2^120 and the weights are read as value * 2^-120 float
 * bits (deq_fp8x): no multiply per weight vector, and every product is the
 * same exact w * s * x as on the other path, so results are bit-identical.
 * The copy is used only where it is exact (scales >= 2^-100, no overflow:
 * max|x| * s < 2^7); a block where it would not be, or no scratch memory,
 * takes the other path.
 */
DSV4_INLINE void
dsv4_gemv_fp8(const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n, float *y,
              int ldy)
{
    int    K = w->cols, nkb = (K + 127) / 128;
    float *xs = dsv4_cpu_tls_floats((size_t) n * K);
    float  amax = 0.0f;

    for (int t = 0; xs != NULL && t < n; t++) {
        const float *xt = x + (size_t) t * ldx;
        vf           m = vf_zero();
        int          k = 0;
        for (; k + VL <= K; k += VL) {
            vf v = vf_load(xt + k);
            m = vf_max(m, vf_max(v, vf_sub(vf_zero(), v)));
        }
        if (k < K) {
            vf v = vf_loadn(xt + k, K - k);
            m = vf_max(m, vf_max(v, vf_sub(vf_zero(), v)));
        }
        float lanes[VL];
        vf_store(lanes, m);
        for (int l = 0; l < VL; l++) {
            amax = lanes[l] > amax || lanes[l] != lanes[l] ? lanes[l] : amax;
        }
    }
    for (int rb = r0; rb < r1; ) {
        int            re = (rb / 128 + 1) * 128 < r1 ? (rb / 128 + 1) * 128 : r1;
        const uint8_t *srow = w->scale + (size_t) (rb / 128) * nkb;
        int            ok = xs != NULL;

        for (int kb = 0; ok && kb < nkb; kb++) {
            float s = dsv4_e8m0_table[srow[kb]];
            ok = s >= 0x1p-100f && amax * s < 0x1p7f;       /* false for NaN too */
        }
        for (int t = 0; ok && t < n; t++) {
            const float *xt = x + (size_t) t * ldx;
            float       *st = xs + (size_t) t * K;
            for (int kb = 0; kb < nkb; kb++) {
                vf  f = vf_set1(dsv4_e8m0_table[srow[kb]] * 0x1p120f);
                int k = kb * 128, ke = k + 128 < K ? k + 128 : K;
                for (; k + VL <= ke; k += VL) {
                    vf_store(st + k, vf_mul(vf_load(xt + k), f));
                }
                if (k < ke) {
                    vf_storen(st + k, vf_mul(vf_loadn(xt + k, ke - k), f), ke - k);
                }
            }
        }
#define DSV4_GEMV_FP8(nt)                                                               \
        if (ok) dsv4_gemv_nt(DSV4_FMT_FP8X, nt, w, rb, re, xs, K, y + (rb - r0), ldy);     \
        else dsv4_gemv_nt(DSV4_MAT_FP8, nt, w, rb, re, x, ldx, y + (rb - r0), ldy)
        DSV4_GEMV_SWITCH(n, DSV4_GEMV_FP8);
#undef DSV4_GEMV_FP8
        rb = re;
    }
}

DSV4_INLINE void
dsv4_gemv_fmt(int fmt, const dsv4_mat *w, int r0, int r1, const float *x, int ldx, int n,
              float *y, int ldy)
{
    if (fmt == DSV4_MAT_FP8) {
        dsv4_gemv_fp8(w, r0, r1, x, ldx, n, y, ldy);
        return;
    }
#define DSV4_GEMV_ANY(nt) dsv4_gemv_nt(fmt, nt, w, r0, r1, x, ldx, y, ldy)
    DSV4_GEMV_SWITCH(n, DSV4_GEMV_ANY);
#undef DSV4_GEMV_ANY
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

/* silu(min(g, limit)) * clamp(u, +-limit) * w; lanes past n are computed on
 * zeros and not stored */
static DSV4_TARGET void
dsv4_k_swiglu(float *g, const float *u, int n, float limit, float w)
{
    vf hi = vf_set1(limit), lo = vf_set1(-limit), one = vf_set1(1.0f), wv = vf_set1(w);

    for (int i = 0; i < n; i += VL) {
        int m = n - i < VL ? n - i : VL;
        vf  gv = m == VL ? vf_load(g + i) : vf_loadn(g + i, m);
        vf  uv = m == VL ? vf_load(u + i) : vf_loadn(u + i, m);
        if (limit > 0) {
            gv = vf_min(gv, hi);
            uv = vf_min(vf_max(uv, lo), hi);
        }
        vf  y = vf_mul(vf_mul(vf_div(gv, vf_add(one, vf_exp(vf_sub(vf_zero(), gv)))), uv), wv);
        if (m == VL) {
            vf_store(g + i, y);
        } else {
            vf_storen(g + i, y, m);
        }
    }
}

/* Fake quantisation (kernels.h) onto the grid of f, bit-identical to the
 * scalar reference: the block's scale from its largest magnitude (NaNs
 * ignored), then each value / scale saturated at +-qmax and rounded to the
 * multiple of its own step, 2^(max(exponent, emin) - mbits), ties to even. */
static DSV4_TARGET void
dsv4_k_fake_quant(float *v, int n, int block, const dsv4_qfmt *f)
{
    const vf lo = vf_set1(-f->qmax), hi = vf_set1(f->qmax);
    const vf step_min = vf_set1(ldexpf(1.0f, f->emin)), mstep = vf_set1(ldexpf(1.0f, -f->mbits));

    for (int b0 = 0; b0 < n; b0 += block) {
        int   b1 = b0 + block < n ? b0 + block : n;
        vf    m = vf_zero();
        float lanes[VL], amax = f->floor_amax;

        for (int i = b0; i < b1; i += VL) {
            vf x = b1 - i >= VL ? vf_load(v + i) : vf_loadn(v + i, b1 - i);
            m = vf_max(vf_max(x, vf_sub(vf_zero(), x)), m);
        }
        vf_store(lanes, m);
        for (int l = 0; l < VL; l++) {
            amax = fmaxf(amax, lanes[l]);
        }
        vf s = vf_set1(dsv4_pow2_ceil(amax / f->qmax));
        for (int i = b0; i < b1; i += VL) {
            int k = b1 - i < VL ? b1 - i : VL;
            vf  u = vf_div(k == VL ? vf_load(v + i) : vf_loadn(v + i, k), s);
            vf  c = vf_min(vf_max(u, lo), hi);
            vf  q = vf_mul(vf_max(vf_pow2_floor(c), step_min), mstep);
            vf  r = vf_keep_nan(vf_mul(vf_mul(vf_rint(vf_div(c, q)), q), s), u);
            if (k == VL) {
                vf_store(v + i, r);
            } else {
                vf_storen(v + i, r, k);
            }
        }
    }
}

/* x [hc, d] <- post[k] o + sum_j comb[j * hc + k] x[j], a VL-column slice of
 * every stream at a time (read whole before any is written: no copy) */
static DSV4_TARGET void
dsv4_k_hc_post(float *x, const float *o, const float *post, const float *comb, int hc, int d)
{
    for (int e = 0; e < d; e += VL) {
        int m = d - e < VL ? d - e : VL;
        vf  old[16], ov = m == VL ? vf_load(o + e) : vf_loadn(o + e, m);

        for (int j = 0; j < hc; j++) {
            old[j] = m == VL ? vf_load(x + (size_t) j * d + e) : vf_loadn(x + (size_t) j * d + e, m);
        }
        for (int k = 0; k < hc; k++) {
            vf acc = vf_mul(vf_set1(post[k]), ov);
            for (int j = 0; j < hc; j++) {
                acc = vf_fma(vf_set1(comb[j * hc + k]), old[j], acc);
            }
            if (m == VL) {
                vf_store(x + (size_t) k * d + e, acc);
            } else {
                vf_storen(x + (size_t) k * d + e, acc, m);
            }
        }
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

/* Attention of heads [h0, h1) (see kernels.h); sc: [h1-h0, nkeys] scratch.
 * The K=V vectors are shared by every head, so each key vector load feeds
 * ATT_HB heads: scores in ATT_HB x 4 (head, key) register tiles, the
 * weighted sum in ATT_HB x ATT_DB (head, dim vector) tiles.  Every output
 * is one fixed chain over its head's keys, so any split of the heads gives
 * the same bits. */
static DSV4_TARGET void
dsv4_k_attention(const float *q, int h0, int h1, int dim, const float *const *keys, int nkeys,
                 float scale, const float *sink, float *sc, float *out)
{
    enum { HB = ATT_HB, KB = 4 };
    int nh = h1 - h0, dfull = dim / VL * VL;

    for (int hb = 0; hb < nh; hb += HB) {
        const float *qh[HB];
        DSV4_UNROLL
        for (int i = 0; i < HB; i++) {
            qh[i] = q + (size_t) (h0 + (hb + i < nh ? hb + i : nh - 1)) * dim;
        }
        for (int ub = 0; ub < nkeys; ub += KB) {
            const float *kp[KB];
            vf           acc[HB][KB];
            DSV4_UNROLL
            for (int j = 0; j < KB; j++) {
                kp[j] = keys[ub + j < nkeys ? ub + j : nkeys - 1];
                DSV4_UNROLL
                for (int i = 0; i < HB; i++) {
                    acc[i][j] = vf_zero();
                }
            }
            for (int d = 0; d < dfull; d += VL) {
                vf kv[KB];
                DSV4_UNROLL
                for (int j = 0; j < KB; j++) {
                    kv[j] = vf_load(kp[j] + d);
                }
                DSV4_UNROLL
                for (int i = 0; i < HB; i++) {
                    vf qv = vf_load(qh[i] + d);
                    DSV4_UNROLL
                    for (int j = 0; j < KB; j++) {
                        acc[i][j] = vf_fma(qv, kv[j], acc[i][j]);
                    }
                }
            }
            if (dfull < dim) {
                for (int i = 0; i < HB; i++) {
                    vf qv = vf_loadn(qh[i] + dfull, dim - dfull);
                    for (int j = 0; j < KB; j++) {
                        acc[i][j] = vf_fma(qv, vf_loadn(kp[j] + dfull, dim - dfull), acc[i][j]);
                    }
                }
            }
            for (int i = 0; i < HB && hb + i < nh; i++) {
                for (int j = 0; j < KB && ub + j < nkeys; j++) {
                    sc[(size_t) (hb + i) * nkeys + ub + j] = vf_hsum(acc[i][j]) * scale;
                }
            }
        }
    }
    /* softmax with the sink in the denominator; probabilities stay in sc */
    for (int h = 0; h < nh; h++) {
        float *s = sc + (size_t) h * nkeys, mx = -INFINITY;
        int    u;
        for (u = 0; u < nkeys; u++) {
            mx = fmaxf(mx, s[u]);
        }
        vf m = vf_set1(mx), den = vf_zero();
        for (u = 0; u + VL <= nkeys; u += VL) {
            vf e = vf_exp(vf_sub(vf_load(s + u), m));
            vf_store(s + u, e);
            den = vf_add(den, e);
        }
        if (u < nkeys) {
            vf e = vf_exp(vf_sub(vf_loadn(s + u, nkeys - u), m));
            vf_storen(s + u, e, nkeys - u);
            den = vf_add(den, vf_loadn(s + u, nkeys - u));  /* lanes past nkeys: 0 */
        }
        vf inv = vf_set1(1.0f / (vf_hsum(den) + expf(sink[h0 + h] - mx)));
        for (u = 0; u + VL <= nkeys; u += VL) {
            vf_store(s + u, vf_mul(vf_load(s + u), inv));
        }
        if (u < nkeys) {
            vf_storen(s + u, vf_mul(vf_loadn(s + u, nkeys - u), inv), nkeys - u);
        }
    }
    /* out[h] = sum_u p[h][u] key_u */
    for (int hb = 0; hb < nh; hb += HB) {
        const float *ph[HB];
        DSV4_UNROLL
        for (int i = 0; i < HB; i++) {
            ph[i] = sc + (size_t) (hb + i < nh ? hb + i : nh - 1) * nkeys;
        }
        for (int d = 0; d < dim; d += ATT_DB * VL) {
            vf  acc[HB][ATT_DB];
            int m[ATT_DB];
            DSV4_UNROLL
            for (int v = 0; v < ATT_DB; v++) {
                int left = dim - d - v * VL;
                m[v] = left >= VL ? VL : left > 0 ? left : 0;
                DSV4_UNROLL
                for (int i = 0; i < HB; i++) {
                    acc[i][v] = vf_zero();
                }
            }
            if (d + ATT_DB * VL <= dim) {
                for (int u = 0; u < nkeys; u++) {
                    vf kv[ATT_DB];
                    DSV4_UNROLL
                    for (int v = 0; v < ATT_DB; v++) {
                        kv[v] = vf_load(keys[u] + d + v * VL);
                    }
                    DSV4_UNROLL
                    for (int i = 0; i < HB; i++) {
                        vf pv = vf_set1(ph[i][u]);
                        DSV4_UNROLL
                        for (int v = 0; v < ATT_DB; v++) {
                            acc[i][v] = vf_fma(pv, kv[v], acc[i][v]);
                        }
                    }
                }
            } else {
                for (int u = 0; u < nkeys; u++) {
                    for (int v = 0; v < ATT_DB; v++) {
                        vf kv = vf_loadn(keys[u] + d + v * VL, m[v]);
                        for (int i = 0; i < HB; i++) {
                            acc[i][v] = vf_fma(vf_set1(ph[i][u]), kv, acc[i][v]);
                        }
                    }
                }
            }
            for (int i = 0; i < HB && hb + i < nh; i++) {
                float *oh = out + (size_t) (h0 + hb + i) * dim + d;
                for (int v = 0; v < ATT_DB; v++) {
                    if (m[v] == VL) {
                        vf_store(oh + v * VL, acc[i][v]);
                    } else if (m[v] > 0) {
                        vf_storen(oh + v * VL, acc[i][v], m[v]);
                    }
                }
            }
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
    .swiglu = dsv4_k_swiglu,
    .hc_post = dsv4_k_hc_post,
    .fake_quant = dsv4_k_fake_quant,
    .rope = dsv4_k_rope,
    .hadamard = dsv4_k_hadamard,
    .attention = dsv4_k_attention,
    .compress_pool = dsv4_k_compress_pool,
    .indexer_scores = dsv4_k_indexer_scores,
};
