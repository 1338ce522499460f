/*
 * Number formats of the DeepSeek-V4 checkpoint (V4-MODEL.md §3.2) and the
 * quantisers the model was trained with (§4.0).  Decoding is by table, so the
 * inner loops of the matmuls are a load and a multiply.
 */
#ifndef DSV4_FORMATS_H
#define DSV4_FORMATS_H

#include <stdint.h>
#include <string.h>

/* Hidden: the kernels' inner loops then address the tables directly instead
 * of through the GOT, even in the nginx module's shared object. */
#define DSV4_TABLE extern __attribute__((visibility("hidden")))

/* e4m3fn byte -> float (bias 7, max 448, subnormals, 0x7F/0xFF = NaN) */
DSV4_TABLE float dsv4_e4m3_table[256];
/* e8m0 byte b -> 2^(b-127) (0xFF = NaN) */
DSV4_TABLE float dsv4_e8m0_table[256];
/* e2m1 nibble -> float: 0 .5 1 1.5 2 3 4 6 and the negatives (bit 3 = sign) */
DSV4_TABLE const float dsv4_e2m1_table[16];

/* Fills the tables; idempotent and thread-safe (pthread_once). */
void dsv4_formats_init(void);

static inline float dsv4_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t) h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* A fake-quantisation target (kernels.h): scale 2^ceil(log2(max(amax,
 * floor_amax) / qmax)); values carry mbits mantissa bits, exponents down
 * to emin (below: the subnormal step 2^(emin - mbits)). */
typedef struct {
    float floor_amax;
    float qmax;
    int   mbits;
    int   emin;
} dsv4_qfmt;

extern const dsv4_qfmt dsv4_qfmt_e4m3;     /* 1e-4, 448, 3, -6 */
extern const dsv4_qfmt dsv4_qfmt_e2m1;     /* 6 * 2^-126, 6, 1, 0 */

/* Round-to-nearest-even onto the e4m3fn grid, saturating at +-448. */
float dsv4_round_e4m3(float v);
/* Round-to-nearest-even onto the e2m1 grid, saturating at +-6. */
float dsv4_round_e2m1(float v);
/* 2^ceil(log2(x)) for x > 0, exact (no log2f rounding). */
float dsv4_pow2_ceil(float x);

#endif
