/*
 * The fast CPU backend (kernels/cpu/) against the scalar reference, for every
 * kernel set this CPU runs (generic, avx2, avx512), on random data with odd
 * sizes and tails: rows not a multiple of any tile or of 128, columns not a
 * multiple of the vector width or of 32 (where the format allows), token
 * counts on both sides of the GEMV/GEMM switch and of the token blocks.
 *
 * Error metrics (named in each failure message):
 *   matmul        max |y - ref| / sum_k |w_k x_k| over outputs ("scaled
 *                 error": float32 summation of K terms is bounded by about
 *                 K * 2^-24 of that sum); bound 1e-5.
 *   other ops     max |y - ref| / max(1, max |ref|) ("rel-to-max"); bounds
 *                 per op below: rope 1e-6, swiglu 1e-6, hc_post 1e-6, rmsnorm 1e-5
 *                 (4096-term sums),
 *                 attention / pooling / indexer 1e-5 (exp is a polynomial).
 *   hadamard      bit-identical (same butterflies).
 * And the properties the engine's consistency relies on, checked exactly
 * (memcmp): a matmul row does not depend on n, on the row range, or on the
 * thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "kernels.h"
#include "tests/test.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint32_t
rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t) (rng >> 32);
}

static float
frand(void)             /* uniform in [-1, 1) */
{
    return (float) (rnd() >> 8) / (float) (1u << 23) - 1.0f;
}

typedef struct {
    dsv4_mat m;
    void    *data;
    uint8_t *scale;
} test_mat;

/* A random matrix of the given format; FP8 has no NaN codes (the SIMD
 * conversion maps them to +-480, see kernels/cpu/avx2.c). */
static test_mat
make_mat(dsv4_mat_type t, int R, int C)
{
    test_mat tm = { { t, R, C, NULL, NULL }, NULL, NULL };
    size_t   n = (size_t) R * C;

    switch (t) {
    case DSV4_MAT_F32: {
        float *d = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            d[i] = frand();
        }
        tm.data = d;
        break;
    }
    case DSV4_MAT_BF16: {
        uint16_t *d = malloc(n * sizeof(uint16_t));
        for (size_t i = 0; i < n; i++) {
            float    f = frand();
            uint32_t u;
            memcpy(&u, &f, 4);
            d[i] = (uint16_t) (u >> 16);
        }
        tm.data = d;
        break;
    }
    case DSV4_MAT_FP8: {
        uint8_t *d = malloc(n);
        size_t   ns = (size_t) ((R + 127) / 128) * ((C + 127) / 128);
        for (size_t i = 0; i < n; i++) {
            d[i] = (uint8_t) rnd();
            if ((d[i] & 0x7F) == 0x7F) {
                d[i] ^= 1;
            }
        }
        tm.scale = malloc(ns);
        for (size_t i = 0; i < ns; i++) {
            tm.scale[i] = (uint8_t) (117 + rnd() % 10);
        }
        tm.data = d;
        break;
    }
    case DSV4_MAT_FP4: {
        uint8_t *d = malloc(n / 2);
        size_t   ns = n / 32;
        for (size_t i = 0; i < n / 2; i++) {
            d[i] = (uint8_t) rnd();
        }
        tm.scale = malloc(ns);
        for (size_t i = 0; i < ns; i++) {
            tm.scale[i] = (uint8_t) (120 + rnd() % 10);
        }
        tm.data = d;
        break;
    }
    }
    tm.m.data = tm.data;
    tm.m.scale = tm.scale;
    return tm;
}

static float
mat_at(const dsv4_mat *w, int r, int k)
{
    int C = w->cols;

    switch (w->type) {
    case DSV4_MAT_F32:  return ((const float *) w->data)[(size_t) r * C + k];
    case DSV4_MAT_BF16: return dsv4_bf16_to_f32(((const uint16_t *) w->data)[(size_t) r * C + k]);
    case DSV4_MAT_FP8:
        return dsv4_e4m3_table[((const uint8_t *) w->data)[(size_t) r * C + k]]
               * dsv4_e8m0_table[w->scale[(size_t) (r / 128) * ((C + 127) / 128) + k / 128]];
    case DSV4_MAT_FP4: {
        uint8_t b = ((const uint8_t *) w->data)[((size_t) r * C + k) / 2];
        return dsv4_e2m1_table[k % 2 ? b >> 4 : b & 15] * dsv4_e8m0_table[w->scale[(size_t) r * (C / 32) + k / 32]];
    }
    }
    return 0.0f;
}

static const char *fmt_name[] = { "f32", "bf16", "fp8", "fp4" };
static double      worst_matmul;        /* largest scaled error seen, per kernel set */

/* One matmul shape on backend be vs the scalar reference; x uniform in
 * [-xscale, xscale). */
static void
check_matmul_x(const dsv4_backend *be, const dsv4_backend *sc, dsv4_mat_type t, int R, int C,
               int n, float xscale)
{
    test_mat tm = make_mat(t, R, C);
    int      r0 = R > 5 ? 3 : 0, nr = R - r0;         /* a row range not starting at 0 */
    int      ldx = C + 3, ldy = nr + 2;
    float   *x = malloc((size_t) n * ldx * sizeof(float));
    float   *y = calloc((size_t) n * ldy, sizeof(float)), *ref = calloc((size_t) n * ldy, sizeof(float));
    float   *one = malloc((size_t) nr * sizeof(float));
    double   worst = 0.0;
    int      n_indep = 1;

    for (int i = 0; i < n * ldx; i++) {
        x[i] = xscale * frand();
    }
    be->matmul(be, &tm.m, r0, R, x, ldx, n, y, ldy);
    sc->matmul(sc, &tm.m, r0, R, x, ldx, n, ref, ldy);
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < nr; r++) {
            double mag = 1e-30;
            for (int k = 0; k < C; k++) {
                mag += fabs((double) mat_at(&tm.m, r0 + r, k) * x[(size_t) i * ldx + k]);
            }
            double e = fabs((double) y[(size_t) i * ldy + r] - ref[(size_t) i * ldy + r]) / mag;
            worst = e > worst ? e : worst;
        }
    }
    worst_matmul = worst > worst_matmul ? worst : worst_matmul;
    TEST_CHECK(worst <= 1e-5, "%s %s matmul %dx%d n=%d: scaled error %.3g > 1e-5", be->name,
               fmt_name[t], R, C, n, worst);
    /* canonical order: each token alone gives the same bits as inside the batch */
    for (int i = 0; i < n; i++) {
        be->matmul(be, &tm.m, r0, R, x + (size_t) i * ldx, ldx, 1, one, nr);
        n_indep &= memcmp(one, y + (size_t) i * ldy, (size_t) nr * sizeof(float)) == 0;
    }
    TEST_CHECK(n_indep, "%s %s matmul %dx%d n=%d: a token alone differs from the batch",
               be->name, fmt_name[t], R, C, n);
    /* and a sub-range of rows gives the same bits as the whole range */
    if (nr > 9) {
        be->matmul(be, &tm.m, r0 + 5, R - 2, x, ldx, n, ref, ldy);
        int same = 1;
        for (int i = 0; i < n; i++) {
            same &= memcmp(ref + (size_t) i * ldy, y + (size_t) i * ldy + 5,
                           (size_t) (nr - 7) * sizeof(float)) == 0;
        }
        TEST_CHECK(same, "%s %s matmul %dx%d n=%d: a row sub-range differs", be->name,
                   fmt_name[t], R, C, n);
    }
    free(tm.data); free(tm.scale); free(x); free(y); free(ref); free(one);
}

static void
check_matmul(const dsv4_backend *be, const dsv4_backend *sc, dsv4_mat_type t, int R, int C,
             int n)
{
    check_matmul_x(be, sc, t, R, C, n, 1.0f);
}

static void
test_matmul(const dsv4_backend *be, const dsv4_backend *sc)
{
    static const int rows[] = { 1, 7, 130, 300 };
    static const int ns[] = { 1, 2, 3, 4, 5, 8, 9, 37 };
    static const struct { dsv4_mat_type t; int cols[4]; } shapes[] = {
        { DSV4_MAT_F32,  { 1, 7, 45, 300 } },
        { DSV4_MAT_BF16, { 3, 16, 70, 290 } },
        { DSV4_MAT_FP8,  { 5, 32, 200, 520 } },     /* partial 128-blocks and tails */
        { DSV4_MAT_FP4,  { 32, 64, 288, 544 } },    /* whole 32-blocks (the format) */
    };

    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int ci = 0; ci < 4; ci++) {
            for (size_t ri = 0; ri < sizeof(rows) / sizeof(rows[0]); ri++) {
                for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
                    /* keep the time small: big shapes only with a few n */
                    if (rows[ri] * shapes[s].cols[ci] > 20000 && ns[ni] != 1 && ns[ni] != 37) {
                        continue;
                    }
                    check_matmul(be, sc, shapes[s].t, rows[ri], shapes[s].cols[ci], ns[ni]);
                }
            }
        }
    }
    /* 70 tokens: three token blocks of the GEMM path */
    check_matmul(be, sc, DSV4_MAT_FP8, 50, 300, 70);
    check_matmul(be, sc, DSV4_MAT_FP4, 50, 320, 70);
    /* FP8 with activations too large for the pre-scaled fast path (|x| * s
     * >= 2^7): the GEMV falls back, still equal to the GEMM path's bits */
    check_matmul_x(be, sc, DSV4_MAT_FP8, 300, 520, 2, 1e6f);
    check_matmul_x(be, sc, DSV4_MAT_FP8, 130, 200, 9, 1e6f);
}

/* matmul_batch: every job equals the same matmul alone. */
static void
test_matmul_batch(const dsv4_backend *be)
{
    enum { NJ = 5 };
    test_mat        m[NJ];
    dsv4_matmul_job jobs[NJ];
    float          *x = malloc(10 * 320 * sizeof(float)), *y[NJ], *z = malloc(10 * 300 * sizeof(float));
    int             same = 1;

    for (int i = 0; i < 10 * 320; i++) {
        x[i] = frand();
    }
    for (int j = 0; j < NJ; j++) {
        int R = 20 + 60 * j, n = 1 + j * 2;
        m[j] = make_mat((dsv4_mat_type) (j % 4), R, 320);
        y[j] = malloc((size_t) n * R * sizeof(float));
        jobs[j] = (dsv4_matmul_job) { &m[j].m, 0, R, x, 320, n, y[j], R };
    }
    be->matmul_batch(be, jobs, NJ);
    for (int j = 0; j < NJ; j++) {
        be->matmul(be, jobs[j].w, 0, jobs[j].row_end, x, 320, jobs[j].n, z, jobs[j].row_end);
        same &= memcmp(z, y[j], (size_t) jobs[j].n * jobs[j].row_end * sizeof(float)) == 0;
        free(m[j].data); free(m[j].scale); free(y[j]);
    }
    TEST_CHECK(same, "%s matmul_batch differs from separate matmuls", be->name);
    free(x); free(z);
}

static double
rel_to_max(const float *a, const float *ref, int n)
{
    double d = 0.0, mx = 1.0;

    for (int i = 0; i < n; i++) {
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
    }
    for (int i = 0; i < n; i++) {
        double e = fabs((double) a[i] - ref[i]);
        d = e > d || isnan(e) ? e : d;
    }
    return d / mx;
}

static void
test_ops(const dsv4_backend *be, const dsv4_backend *sc)
{
    enum { MAXN = 1 << 17 };
    float *a = malloc(MAXN * sizeof(float)), *b = malloc(MAXN * sizeof(float));
    float *w = malloc(MAXN * sizeof(float)), *o1 = malloc(MAXN * sizeof(float));
    float *o2 = malloc(MAXN * sizeof(float)), *sc1 = malloc(MAXN * sizeof(float));
    float *sc2 = malloc(MAXN * sizeof(float));
    float  freqs[400];

    for (int i = 0; i < MAXN; i++) {
        a[i] = 3.0f * frand();
        w[i] = 1.0f + 0.1f * frand();
    }
    /* rmsnorm */
    static const int ds[] = { 1, 7, 37, 100, 4096 };
    for (size_t i = 0; i < sizeof(ds) / sizeof(ds[0]); i++) {
        be->rmsnorm(be, o1, a, w, ds[i], 1e-6f);
        sc->rmsnorm(sc, o2, a, w, ds[i], 1e-6f);
        double e = rel_to_max(o1, o2, ds[i]);
        TEST_CHECK(e <= 1e-5, "%s rmsnorm d=%d: rel-to-max %.3g > 1e-5", be->name, ds[i], e);
        memcpy(o1, a, ds[i] * sizeof(float));       /* in place, no weights */
        be->rmsnorm(be, o1, o1, NULL, ds[i], 1e-6f);
        sc->rmsnorm(sc, o2, a, NULL, ds[i], 1e-6f);
        e = rel_to_max(o1, o2, ds[i]);
        TEST_CHECK(e <= 1e-5, "%s rmsnorm in place d=%d: rel-to-max %.3g", be->name, ds[i], e);
    }
    /* swiglu: clamped and not, odd lengths (tails), values beyond the clamp */
    static const int sws[] = { 1, 7, 37, 512, 1000 };
    for (size_t i = 0; i < sizeof(sws) / sizeof(sws[0]); i++) {
        for (int clamp = 0; clamp <= 1; clamp++) {
            float limit = clamp ? 2.0f : 0.0f;
            for (int k = 0; k < sws[i]; k++) {
                o1[k] = o2[k] = 4.0f * a[k];
                sc1[k] = 4.0f * w[k] * a[MAXN - 1 - k];
            }
            be->swiglu(be, o1, sc1, sws[i], limit, 1.5f);
            sc->swiglu(sc, o2, sc1, sws[i], limit, 1.5f);
            double e = rel_to_max(o1, o2, sws[i]);
            TEST_CHECK(e <= 1e-6, "%s swiglu n=%d limit=%g: rel-to-max %.3g > 1e-6", be->name,
                       sws[i], limit, e);
        }
    }
    /* hc_post: stream counts up to the limit, widths with tails */
    static const int hcs[][2] = { { 1, 5 }, { 4, 1024 }, { 4, 37 }, { 16, 100 } };
    for (size_t i = 0; i < sizeof(hcs) / sizeof(hcs[0]); i++) {
        int   hc = hcs[i][0], d = hcs[i][1];
        float post[16], comb[256];
        for (int k = 0; k < hc; k++) {
            post[k] = 2.0f * frand();
        }
        for (int k = 0; k < hc * hc; k++) {
            comb[k] = frand();
        }
        memcpy(o1, a, (size_t) hc * d * sizeof(float));
        memcpy(o2, a, (size_t) hc * d * sizeof(float));
        be->hc_post(be, o1, w, post, comb, hc, d);
        sc->hc_post(sc, o2, w, post, comb, hc, d);
        double e = rel_to_max(o1, o2, hc * d);
        TEST_CHECK(e <= 1e-6, "%s hc_post hc=%d d=%d: rel-to-max %.3g > 1e-6", be->name, hc, d, e);
    }
    /* rope, both directions, cache hits and misses, > 256 pairs (scalar path) */
    for (int i = 0; i < 400; i++) {
        freqs[i] = powf(10000.0f, -(float) i / 400.0f);
    }
    static const int nps[] = { 1, 3, 16, 32, 300 };
    for (size_t i = 0; i < sizeof(nps) / sizeof(nps[0]); i++) {
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int pos = 0; pos < 5000; pos += 1777) {
                memcpy(o1, a, 2 * nps[i] * sizeof(float));
                memcpy(o2, a, 2 * nps[i] * sizeof(float));
                be->rope(be, o1, nps[i], pos, freqs, sign);
                be->rope(be, o1 + 0, 0, pos, freqs, sign);         /* no-op */
                sc->rope(sc, o2, nps[i], pos, freqs, sign);
                double e = rel_to_max(o1, o2, 2 * nps[i]);
                TEST_CHECK(e <= 1e-6, "%s rope npairs=%d pos=%d sign=%d: rel-to-max %.3g",
                           be->name, nps[i], pos, sign, e);
            }
        }
    }
    /* hadamard: bit-identical */
    for (int n = 1; n <= 1024; n *= 2) {
        memcpy(o1, a, n * sizeof(float));
        memcpy(o2, a, n * sizeof(float));
        be->hadamard(be, o1, n);
        sc->hadamard(sc, o2, n);
        TEST_CHECK(memcmp(o1, o2, n * sizeof(float)) == 0, "%s hadamard n=%d not bit-identical",
                   be->name, n);
    }
    /* attention: keys shared by the heads; sizes around the threading cut */
    static const int att[][3] = { { 1, 4, 1 }, { 3, 7, 5 }, { 4, 64, 37 }, { 16, 96, 300 },
                                  { 8, 512, 150 }, { 2, 33, 1000 } };
    for (size_t i = 0; i < sizeof(att) / sizeof(att[0]); i++) {
        int          H = att[i][0], dim = att[i][1], nk = att[i][2];
        const float *keys[1000];
        float        sink[16];
        for (int u = 0; u < nk; u++) {
            keys[u] = b + (size_t) (u * 7) % (MAXN - dim);
        }
        for (int j = 0; j < MAXN; j++) {
            b[j] = frand();
        }
        for (int h = 0; h < H; h++) {
            sink[h] = frand();
        }
        float scale = 3.0f / sqrtf((float) dim);
        be->attention(be, a, H, dim, keys, nk, scale, sink, sc1, o1);
        sc->attention(sc, a, H, dim, keys, nk, scale, sink, sc2, o2);
        double e = rel_to_max(o1, o2, H * dim);
        TEST_CHECK(e <= 1e-5, "%s attention H=%d dim=%d keys=%d: rel-to-max %.3g > 1e-5",
                   be->name, H, dim, nk, e);
    }
    /* compressor pooling: some slots empty (-inf) */
    static const int pools[][2] = { { 8, 5 }, { 8, 64 }, { 4, 130 }, { 128, 96 } };
    for (size_t i = 0; i < sizeof(pools) / sizeof(pools[0]); i++) {
        int          ns = pools[i][0], d = pools[i][1];
        const float *kv[128], *sco[128];
        for (int s = 0; s < ns; s++) {
            kv[s] = a + s * d;
            sco[s] = b + s * d;
        }
        for (int j = 0; j < ns * d; j++) {
            b[j] = 4.0f * frand();
        }
        for (int j = 0; j < d; j += 3) {
            b[j] = -INFINITY;                   /* slot 0 empty on every third channel */
        }
        be->compress_pool(be, kv, sco, ns, d, o1);
        sc->compress_pool(sc, kv, sco, ns, d, o2);
        double e = rel_to_max(o1, o2, d);
        TEST_CHECK(e <= 1e-5, "%s compress_pool slots=%d d=%d: rel-to-max %.3g > 1e-5",
                   be->name, ns, d, e);
    }
    /* indexer scores */
    for (int j = 0; j < MAXN; j++) {
        b[j] = frand();
    }
    static const int idx[][3] = { { 4, 64, 1 }, { 4, 64, 37 }, { 8, 128, 600 }, { 3, 20, 9 } };
    for (size_t i = 0; i < sizeof(idx) / sizeof(idx[0]); i++) {
        int Hi = idx[i][0], di = idx[i][1], nk = idx[i][2];
        be->indexer_scores(be, a, w, Hi, di, b, nk, o1);
        sc->indexer_scores(sc, a, w, Hi, di, b, nk, o2);
        double e = rel_to_max(o1, o2, nk);
        TEST_CHECK(e <= 1e-5, "%s indexer_scores heads=%d dim=%d keys=%d: rel-to-max %.3g",
                   be->name, Hi, di, nk, e);
    }
    /* the ops the backend shares with the reference stay bit-identical */
    memcpy(o1, a, 256 * sizeof(float));
    memcpy(o2, a, 256 * sizeof(float));
    be->fake_quant_fp8(be, o1, 256, 64);
    sc->fake_quant_fp8(sc, o2, 256, 64);
    be->fake_quant_fp4(be, o1 + 128, 128, 32);
    sc->fake_quant_fp4(sc, o2 + 128, 128, 32);
    be->sinkhorn(be, o1 + 200, 4, 20, 1e-6f);
    sc->sinkhorn(sc, o2 + 200, 4, 20, 1e-6f);
    TEST_CHECK(memcmp(o1, o2, 256 * sizeof(float)) == 0, "%s fake-quant/sinkhorn differ",
               be->name);
    free(a); free(b); free(w); free(o1); free(o2); free(sc1); free(sc2);
}

/* Equal bits, or both NaN. */
static int
same_float(float a, float b)
{
    return memcmp(&a, &b, sizeof(a)) == 0 || (isnan(a) && isnan(b));
}

/* Fake quantisation is bit-identical to the reference on values spread over
 * the whole float range, the specials, grid ties and saturation, for block
 * sizes and lengths with tails. */
static void
test_fake_quant(const dsv4_backend *be, const dsv4_backend *sc)
{
    enum { N = 448 };
    static const float special[] = {
        0.0f, -0.0f, NAN, INFINITY, -INFINITY, 0x1p-149f, -0x1p-130f, 3.4e38f,
        1.0625f, 1.1875f, 447.0f, 464.0f, -448.0f, 0.25f, 0.75f, 2.5f, 5.0f, 6.0f, -7.0f
    };
    static const int shapes[][2] = { { 448, 64 }, { 128, 32 }, { 37, 32 }, { 100, 64 },
                                     { 7, 128 }, { 1, 32 }, { 256, 128 } };
    float *a = malloc(N * sizeof(float)), *o1 = malloc(N * sizeof(float));
    float *o2 = malloc(N * sizeof(float));
    int    bad = 0;

    for (int trial = 0; trial < 40; trial++) {
        for (int i = 0; i < N; i++) {
            /* magnitudes from 2^-140 to 2^100, a few blocks of one scale */
            int e = trial % 4 == 0 ? (int) (frand() * 120.0f) - 20 : (trial % 40) - 12;
            a[i] = ldexpf(frand(), e);
        }
        if (trial % 3 == 1) {
            for (size_t k = 0; k < sizeof(special) / sizeof(special[0]); k++) {
                a[(k * 37 + (size_t) trial) % N] = special[k];
            }
        }
        for (size_t sh = 0; sh < sizeof(shapes) / sizeof(shapes[0]); sh++) {
            int n = shapes[sh][0], block = shapes[sh][1];
            for (int fmt = 0; fmt < 2; fmt++) {
                memcpy(o1, a, N * sizeof(float));
                memcpy(o2, a, N * sizeof(float));
                if (fmt == 0) {
                    be->fake_quant_fp8(be, o1, n, block);
                    sc->fake_quant_fp8(sc, o2, n, block);
                } else {
                    be->fake_quant_fp4(be, o1, n, block);
                    sc->fake_quant_fp4(sc, o2, n, block);
                }
                for (int i = 0; i < N && bad < 5; i++) {
                    if (!same_float(o1[i], o2[i])) {
                        TEST_CHECK(0, "%s fake_quant_%s n=%d block=%d: [%d] %a -> %a, reference %a",
                                   be->name, fmt == 0 ? "fp8" : "fp4", n, block, i, a[i], o1[i],
                                   o2[i]);
                        bad++;
                    }
                }
            }
        }
    }
    TEST_CHECK(bad == 0, "%s fake quantisation bit-identical to the reference", be->name);
    free(a); free(o1); free(o2);
}

/* The thread count must not change a single bit. */
static void
test_threads(const char *isa)
{
    char                err[256];
    dsv4_cpu_opts       op1 = { 1, isa, 0 }, op3 = { 3, isa, 0 };
    const dsv4_backend *b1 = dsv4_backend_cpu_new_opts(&op1, err, sizeof(err));
    const dsv4_backend *b3 = dsv4_backend_cpu_new_opts(&op3, err, sizeof(err));
    int                 same = 1;

    TEST_CHECK(b1 != NULL && b3 != NULL, "backend %s: %s", isa, err);
    if (b1 == NULL || b3 == NULL) {
        return;
    }
    for (int t = 0; t < 4; t++) {
        test_mat m = make_mat((dsv4_mat_type) t, 517, 1024);
        int      ns[] = { 1, 3, 40 };
        for (int k = 0; k < 3; k++) {
            int    n = ns[k];
            float *x = malloc((size_t) n * 1024 * sizeof(float));
            float *y1 = malloc((size_t) n * 517 * sizeof(float));
            float *y3 = malloc((size_t) n * 517 * sizeof(float));
            for (int i = 0; i < n * 1024; i++) {
                x[i] = frand();
            }
            b1->matmul(b1, &m.m, 0, 517, x, 1024, n, y1, 517);
            b3->matmul(b3, &m.m, 0, 517, x, 1024, n, y3, 517);
            same &= memcmp(y1, y3, (size_t) n * 517 * sizeof(float)) == 0;
            free(x); free(y1); free(y3);
        }
        free(m.data); free(m.scale);
    }
    TEST_CHECK(same, "%s: 1 and 3 threads give different matmul bits", isa);
    /* attention split over heads (and indexer scores over keys) by the pool */
    enum { H = 16, DIM = 512, NK = 300 };
    float       *q = malloc((size_t) H * DIM * sizeof(float)), sink[H];
    float       *kv = malloc((size_t) NK * DIM * sizeof(float)), *sc = malloc(NK * sizeof(float));
    float       *o1 = malloc((size_t) H * DIM * sizeof(float)), *o3 = malloc((size_t) H * DIM * sizeof(float));
    const float *keys[NK];
    for (int i = 0; i < H * DIM; i++) {
        q[i] = frand();
    }
    for (int i = 0; i < NK * DIM; i++) {
        kv[i] = frand();
    }
    for (int u = 0; u < NK; u++) {
        keys[u] = kv + (size_t) u * DIM;
    }
    for (int h = 0; h < H; h++) {
        sink[h] = frand();
    }
    b1->attention(b1, q, H, DIM, keys, NK, 0.05f, sink, sc, o1);
    b3->attention(b3, q, H, DIM, keys, NK, 0.05f, sink, sc, o3);
    TEST_CHECK(memcmp(o1, o3, (size_t) H * DIM * sizeof(float)) == 0,
               "%s: attention split over 3 threads differs from 1 thread", isa);
    b1->indexer_scores(b1, q, sink, 16, 128, kv, 1000, o1);
    b3->indexer_scores(b3, q, sink, 16, 128, kv, 1000, o3);
    TEST_CHECK(memcmp(o1, o3, 1000 * sizeof(float)) == 0,
               "%s: indexer scores split over 3 threads differ from 1 thread", isa);
    free(q); free(kv); free(sc); free(o1); free(o3);
    dsv4_backend_cpu_free(b1);
    dsv4_backend_cpu_free(b3);
}

int
main(void)
{
    const dsv4_backend *sc = dsv4_backend_cpu_scalar();
    static const char  *isas[] = { "generic", "avx2", "avx512" };
    char                err[256];
    const char         *best = dsv4_cpu_best_isa();

    printf("best kernels on this CPU: %s\n", best);
    for (size_t i = 0; i < sizeof(isas) / sizeof(isas[0]); i++) {
        dsv4_cpu_opts       o = { 2, isas[i], 0 };
        const dsv4_backend *be = dsv4_backend_cpu_new_opts(&o, err, sizeof(err));
        if (be == NULL) {
            printf("%s: skipped (%s)\n", isas[i], err);
            TEST_CHECK(strcmp(isas[i], "generic") != 0, "generic kernels must always load");
            continue;
        }
        int before = test_failed_count;
        worst_matmul = 0.0;
        test_matmul(be, sc);
        test_matmul_batch(be);
        test_ops(be, sc);
        test_fake_quant(be, sc);
        test_threads(isas[i]);
        printf("%s: %s (worst matmul scaled error %.2g)\n", be->name,
               test_failed_count == before ? "ok" : "FAILED", worst_matmul);
        dsv4_backend_cpu_free(be);
    }
    /* bad requests are refused with a message, not a crash */
    dsv4_cpu_opts bad = { 2, "sse9", 0 };
    TEST_CHECK(dsv4_backend_cpu_new_opts(&bad, err, sizeof(err)) == NULL
               && strstr(err, "sse9") != NULL, "unknown kernel set accepted (%s)", err);
    dsv4_cpu_opts many = { 5000, NULL, 0 };
    TEST_CHECK(dsv4_backend_cpu_new_opts(&many, err, sizeof(err)) == NULL,
               "5000 threads accepted");
    dsv4_backend_cpu_free(dsv4_backend_cpu_scalar());   /* not ours: ignored */
    return TEST_REPORT();
}
