/*
 * Format tables and exact rounding helpers.  The rounding functions are the
 * quantisers of V4-MODEL.md §4.0 and must be bit-exact: a quantiser that
 * rounds a midpoint the other way moves a value by a whole quantum.
 */
#include <math.h>
#include <pthread.h>

#include "formats.h"

float dsv4_e4m3_table[256];
float dsv4_e8m0_table[256];

const float dsv4_e2m1_table[16] = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

static pthread_once_t dsv4_formats_once = PTHREAD_ONCE_INIT;

static void
dsv4_formats_fill(void)
{
    for (int b = 0; b < 256; b++) {
        int sign = b >> 7, exp = (b >> 3) & 0xF, man = b & 7;
        float v;

        if (exp == 0xF && man == 7) {
            v = NAN;
        } else if (exp == 0) {
            v = ldexpf((float) man, -9);            /* subnormal: man/8 * 2^-6 */
        } else {
            v = ldexpf(1.0f + (float) man / 8.0f, exp - 7);
        }
        dsv4_e4m3_table[b] = sign ? -v : v;
        dsv4_e8m0_table[b] = b == 255 ? NAN : ldexpf(1.0f, b - 127);
    }
}

void
dsv4_formats_init(void)
{
    pthread_once(&dsv4_formats_once, dsv4_formats_fill);
}

const dsv4_qfmt dsv4_qfmt_e4m3 = { 1e-4f, 448.0f, 3, -6 };
const dsv4_qfmt dsv4_qfmt_e2m1 = { 6.0f * 0x1p-126f, 6.0f, 1, 0 };

float
dsv4_pow2_ceil(float x)
{
    int e;
    float f = frexpf(x, &e);     /* x = f * 2^e, f in [0.5, 1) */

    return ldexpf(1.0f, f == 0.5f ? e - 1 : e);
}

float
dsv4_round_e4m3(float v)
{
    float a = fabsf(v), q;
    int e;

    if (a == 0.0f || isnan(v)) {
        return v;
    }
    if (a >= 448.0f) {
        return copysignf(448.0f, v);
    }
    frexpf(a, &e);                       /* a in [2^(e-1), 2^e) */
    e -= 1;
    q = ldexpf(1.0f, (e < -6 ? -6 : e) - 3); /* 3 mantissa bits; subnormal step 2^-9 */
    v = rintf(v / q) * q;                /* exact scaling; rintf = nearest-even */
    return fabsf(v) > 448.0f ? copysignf(448.0f, v) : v;
}

float
dsv4_round_e2m1(float v)
{
    float a = fabsf(v), q;

    if (isnan(v)) {
        return v;
    }
    if (a >= 6.0f) {
        return copysignf(6.0f, v);
    }
    q = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f);
    return rintf(v / q) * q;
}
