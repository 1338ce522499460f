/*
 * Scalar kernel and number-format checks against hand-computed values and
 * direct (naive) formulas.  Error metric: max absolute error, with the bound
 * given at each check.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "kernels.h"
#include "tests/test.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float
frand(void)             /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float) (rng >> 40) / (float) (1ull << 23) - 1.0f;
}

static void
test_formats(void)
{
    dsv4_formats_init();
    /* e4m3: 0x38 = 1.0, 0x7E = 448 (max), 0x01 = 2^-9 (smallest subnormal), sign bit */
    TEST_CHECK(dsv4_e4m3_table[0x38] == 1.0f, "e4m3 0x38 = %g", dsv4_e4m3_table[0x38]);
    TEST_CHECK(dsv4_e4m3_table[0x7E] == 448.0f, "e4m3 0x7E = %g", dsv4_e4m3_table[0x7E]);
    TEST_CHECK(dsv4_e4m3_table[0x01] == 0x1p-9f, "e4m3 0x01 = %g", dsv4_e4m3_table[0x01]);
    TEST_CHECK(dsv4_e4m3_table[0xB8] == -1.0f, "e4m3 0xB8 = %g", dsv4_e4m3_table[0xB8]);
    TEST_CHECK(isnan(dsv4_e4m3_table[0x7F]), "e4m3 0x7F is NaN");
    TEST_CHECK(dsv4_e8m0_table[127] == 1.0f && dsv4_e8m0_table[130] == 8.0f
               && dsv4_e8m0_table[120] == 0x1p-7f, "e8m0 table");
    /* rounding: every table value is a fixed point; midpoints go to even */
    int fixed = 1;
    for (int b = 0; b < 256; b++) {
        float v = dsv4_e4m3_table[b];
        if (!isnan(v) && dsv4_round_e4m3(v) != v) {
            fixed = 0;
        }
    }
    TEST_CHECK(fixed, "e4m3 values are fixed points of the rounding");
    TEST_CHECK(dsv4_round_e4m3(1.0625f) == 1.0f, "1.0625 -> 1 (tie to even): %g",
               dsv4_round_e4m3(1.0625f));
    TEST_CHECK(dsv4_round_e4m3(1.1875f) == 1.25f, "1.1875 -> 1.25 (tie to even): %g",
               dsv4_round_e4m3(1.1875f));
    TEST_CHECK(dsv4_round_e4m3(1000.0f) == 448.0f, "saturate");
    TEST_CHECK(dsv4_round_e4m3(0x1p-10f) == 0.0f && dsv4_round_e4m3(0x1.8p-10f) == 0x1p-9f,
               "subnormal ties");
    TEST_CHECK(dsv4_round_e4m3(464.0f) == 448.0f && dsv4_round_e4m3(-300.0f) == -288.0f,
               "e4m3 top binade: %g", dsv4_round_e4m3(-300.0f));
    static const float e2m1_in[] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 7.0f, -2.9f };
    static const float e2m1_out[] = { 0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f, -3.0f };
    for (size_t i = 0; i < sizeof(e2m1_in) / sizeof(e2m1_in[0]); i++) {
        TEST_CHECK(dsv4_round_e2m1(e2m1_in[i]) == e2m1_out[i], "e2m1(%g) = %g, expected %g",
                   e2m1_in[i], dsv4_round_e2m1(e2m1_in[i]), e2m1_out[i]);
    }
    TEST_CHECK(dsv4_pow2_ceil(1.0f) == 1.0f && dsv4_pow2_ceil(1.5f) == 2.0f
               && dsv4_pow2_ceil(0.25f) == 0.25f && dsv4_pow2_ceil(0.3f) == 0.5f, "pow2_ceil");
}

/* Each weight format against a dense float copy built element by element. */
static void
test_matmul(const dsv4_backend *be)
{
    enum { R = 150, C = 288, N = 3 };      /* odd sizes: partial 128-blocks in both dims */
    uint8_t  *q8 = malloc(R * C), *s8 = malloc(((R + 127) / 128) * ((C + 127) / 128));
    uint8_t  *q4 = malloc(R * C / 2), *s4 = malloc(R * C / 32);
    uint16_t *b16 = malloc(R * C * 2);
    float    *dense = malloc(R * C * sizeof(float)), *x = malloc(N * C * sizeof(float));
    float    *y = malloc(N * R * sizeof(float)), ref;
    dsv4_mat  mats[3];
    const char *names[] = { "fp8", "fp4", "bf16" };

    for (int i = 0; i < N * C; i++) {
        x[i] = frand();
    }
    for (int i = 0; i < ((R + 127) / 128) * ((C + 127) / 128); i++) {
        s8[i] = (uint8_t) (120 + i % 5);
    }
    for (int i = 0; i < R * C / 32; i++) {
        s4[i] = (uint8_t) (122 + i % 4);
    }
    for (int i = 0; i < R * C; i++) {
        q8[i] = (uint8_t) (rng >> 3), frand();
        if ((q8[i] & 0x7F) == 0x7F) {
            q8[i] = 0x30;                  /* no NaN codes */
        }
        b16[i] = (uint16_t) (0x3F00 + (i * 37) % 512);
    }
    for (int i = 0; i < R * C / 2; i++) {
        q4[i] = (uint8_t) (rng >> 11), frand();
    }
    mats[0] = (dsv4_mat) { DSV4_MAT_FP8, R, C, q8, s8 };
    mats[1] = (dsv4_mat) { DSV4_MAT_FP4, R, C, q4, s4 };
    mats[2] = (dsv4_mat) { DSV4_MAT_BF16, R, C, b16, NULL };
    for (int t = 0; t < 3; t++) {
        for (int r = 0; r < R; r++) {
            for (int k = 0; k < C; k++) {
                float w;
                if (t == 0) {
                    w = dsv4_e4m3_table[q8[r * C + k]]
                        * dsv4_e8m0_table[s8[(r / 128) * ((C + 127) / 128) + k / 128]];
                } else if (t == 1) {
                    uint8_t b = q4[(r * C + k) / 2];
                    w = dsv4_e2m1_table[k % 2 ? b >> 4 : b & 15] * dsv4_e8m0_table[s4[r * (C / 32) + k / 32]];
                } else {
                    w = dsv4_bf16_to_f32(b16[r * C + k]);
                }
                dense[r * C + k] = w;
            }
        }
        /* rows 7..150 only, to exercise row_begin */
        be->matmul(be, &mats[t], 7, R, x, C, N, y, R);
        float err = 0.0f;
        for (int i = 0; i < N; i++) {
            for (int r = 7; r < R; r++) {
                double acc = 0;
                for (int k = 0; k < C; k++) {
                    acc += (double) dense[r * C + k] * x[i * C + k];
                }
                ref = (float) acc;
                err = fmaxf(err, fabsf(ref - y[i * R + r - 7]) / (1.0f + fabsf(ref)));
            }
        }
        TEST_CHECK(err < 1e-5f, "%s matmul: max rel error %g", names[t], err);
    }
    free(q8); free(s8); free(q4); free(s4); free(b16); free(dense); free(x); free(y);
}

static void
test_ops(const dsv4_backend *be)
{
    float v[128], w[128], c[16];

    /* Hadamard is orthonormal and its own inverse */
    for (int i = 0; i < 128; i++) {
        v[i] = w[i] = frand();
    }
    be->hadamard(be, v, 128);
    be->hadamard(be, v, 128);
    float err = 0.0f;
    for (int i = 0; i < 128; i++) {
        err = fmaxf(err, fabsf(v[i] - w[i]));
    }
    TEST_CHECK(err < 1e-6f, "H·H = I: max abs error %g", err);
    /* RoPE then inverse RoPE is the identity; rotation keeps pair norms */
    float f[4] = { 1.0f, 0.1f, 0.01f, 0.001f };
    memcpy(v, w, 8 * sizeof(float));
    be->rope(be, v, 4, 1234, f, 1);
    float n0 = w[0] * w[0] + w[1] * w[1], n1 = v[0] * v[0] + v[1] * v[1];
    TEST_CHECK(fabsf(n0 - n1) < 1e-5f, "rope keeps the pair norm");
    be->rope(be, v, 4, 1234, f, -1);
    err = 0.0f;
    for (int i = 0; i < 8; i++) {
        err = fmaxf(err, fabsf(v[i] - w[i]));
    }
    TEST_CHECK(err < 1e-5f, "rope inverse: max abs error %g", err);
    /* Sinkhorn output is (nearly) doubly stochastic */
    for (int i = 0; i < 16; i++) {
        c[i] = 3.0f * frand();
    }
    be->sinkhorn(be, c, 4, 20, 1e-6f);
    err = 0.0f;
    for (int j = 0; j < 4; j++) {
        float rs = 0.0f, cs = 0.0f;
        for (int k = 0; k < 4; k++) {
            rs += c[j * 4 + k];
            cs += c[k * 4 + j];
        }
        err = fmaxf(err, fmaxf(fabsf(rs - 1.0f), fabsf(cs - 1.0f)));
    }
    TEST_CHECK(err < 1e-3f, "sinkhorn row/col sums off by %g", err);
    /* FP8 fake quant: results lie on the scaled e4m3 grid, error <= half a quantum */
    for (int i = 0; i < 128; i++) {
        v[i] = w[i] = 10.0f * frand();
    }
    be->fake_quant_fp8(be, v, 128, 64);
    err = 0.0f;
    for (int i = 0; i < 128; i++) {
        err = fmaxf(err, fabsf(v[i] - w[i]) / (fabsf(w[i]) + 1e-3f));
    }
    TEST_CHECK(err <= 1.0f / 16.0f + 1e-6f, "fp8 fake-quant relative error %g > 2^-4", err);
    /* FP4 fake quant: at most 8 distinct magnitudes per 32-block */
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) {
        amax = fmaxf(amax, fabsf(w[i]));
    }
    be->fake_quant_fp4(be, w, 32, 32);
    int   ok = 1;
    float s = dsv4_pow2_ceil(amax / 6.0f);
    for (int i = 0; i < 32; i++) {
        float q = fabsf(w[i]) / s;
        ok &= q == 0 || q == 0.5f || q == 1 || q == 1.5f || q == 2 || q == 3 || q == 4 || q == 6;
    }
    TEST_CHECK(ok, "fp4 fake-quant values on the e2m1 grid");
    /* attention with one key returns it scaled by p = e^z / (e^z + e^sink) */
    const float *keys[1] = { w };
    float q[4] = { 0.5f, 0.0f, 0.0f, 0.0f }, sink = 0.0f, score, out[4];
    w[0] = 1.0f; w[1] = 2.0f; w[2] = 3.0f; w[3] = 4.0f;
    be->attention(be, q, 1, 4, keys, 1, 1.0f, &sink, &score, out);
    float p = expf(0.5f) / (expf(0.5f) + 1.0f);
    TEST_CHECK(fabsf(out[3] - 4.0f * p) < 1e-6f, "attention sink: %g vs %g", out[3], 4.0f * p);
}

int
main(void)
{
    const dsv4_backend *be = dsv4_backend_cpu_scalar();

    test_formats();
    test_matmul(be);
    test_ops(be);
    return TEST_REPORT();
}
