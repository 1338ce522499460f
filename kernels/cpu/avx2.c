/*
 * The kernel vocabulary in AVX2 + FMA + F16C (8 float lanes).  Compiled with
 * a target attribute per function, so the rest of the build stays baseline
 * x86-64; backend.c calls these only when the CPU has all three.
 *
 * FP8 e4m3 -> float goes through half precision: the byte's exponent and
 * mantissa bits, moved down one place, are an IEEE half whose value is the
 * e4m3 value times 2^-8 (same 3-bit mantissa, exponent bias 15 instead of 7,
 * and the half subnormals are exactly the e4m3 subnormals), and vcvtph2ps
 * converts halves exactly.  The 2^8 is folded into the block scale.  The
 * NaN codes 0x7F/0xFF come out as +-480 (checkpoints contain none).
 *
 * FP4 e2m1 -> float: a sign bit and one of 8 magnitudes, which an 8-lane
 * vpermps looks up in the block's scaled table (deq_fp4s).
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu.h"
#include "formats.h"

#define DSV4_TARGET    __attribute__((target("avx2,fma,f16c")))
#define DSV4_KERNELS   dsv4_cpu_kernels_avx2
#define DSV4_ISA_NAME  "avx2"
#define VL             8
#define GEMM_MR        4
#define GEMM_NR        3
#define GEMV_RT(nt)    ((nt) <= 2 ? 4 : (nt) <= 4 ? 2 : 1)
#define ATT_HB         4
#define ATT_DB         2
#define GEMM_PANELS    8

typedef __m256 vf;

#define DSV4_AV static inline __attribute__((always_inline)) DSV4_TARGET

DSV4_AV vf vf_zero(void) { return _mm256_setzero_ps(); }
DSV4_AV vf vf_set1(float a) { return _mm256_set1_ps(a); }
DSV4_AV vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
DSV4_AV void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
DSV4_AV vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
DSV4_AV vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
DSV4_AV vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
DSV4_AV vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
DSV4_AV vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
DSV4_AV vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
DSV4_AV vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
DSV4_AV vf vf_swap_pairs(vf v) { return _mm256_permute_ps(v, 0xB1); }
DSV4_AV vf vf_rint(vf v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
DSV4_AV vf
vf_pow2_floor(vf v)
{
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7F800000)));
}
DSV4_AV vf vf_keep_nan(vf a, vf b) { return _mm256_blendv_ps(a, b, _mm256_cmp_ps(b, b, _CMP_UNORD_Q)); }

/* lane mask for the first n (0..8) lanes */
DSV4_AV __m256i
dsv4_avx2_mask(int n)
{
    static const int32_t m[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };
    return _mm256_loadu_si256((const __m256i *) (m + 8 - n));
}

DSV4_AV vf vf_loadn(const float *p, int n) { return _mm256_maskload_ps(p, dsv4_avx2_mask(n)); }
DSV4_AV void vf_storen(float *p, vf v, int n) { _mm256_maskstore_ps(p, dsv4_avx2_mask(n), v); }

/* (l + l+4), then (l + l+2), then (l + l+1) */
DSV4_AV float
vf_hsum(vf v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* e^x = 2^n e^r, n = round(x / ln2), |r| <= ln2/2, e^r by a degree-6
 * polynomial (Cephes expf coefficients). */
DSV4_AV vf
vf_exp(vf x)
{
    const vf hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3f);
    vf       tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vf p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n for n in [-126, 128): n + 127 in the exponent field (n = 128 only
     * at the clamp, where p * 2^127 * 2 stays finite through the split) */
    __m256i e = _mm256_cvtps_epi32(n);
    vf      half = _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_add_epi32(_mm256_srai_epi32(e, 1), _mm256_set1_epi32(127)), 23));
    vf      rest = _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_add_epi32(_mm256_sub_epi32(e, _mm256_srai_epi32(e, 1)),
                                         _mm256_set1_epi32(127)), 23));
    p = _mm256_mul_ps(_mm256_mul_ps(p, half), rest);
    return _mm256_andnot_ps(tiny, p);
}

/* 32 e4m3 codes -> 4 vectors of value * 2^-8 (see the file comment). */
DSV4_AV void
deq_fp8(const uint8_t *p, int n, vf out[4])
{
    uint8_t buf[32];

    if (n < 32) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf, p, (size_t) n);
        p = buf;
    }
    _Pragma("GCC unroll 4")          /* out[] must stay in registers */
    for (int h = 0; h < 2; h++) {
        __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (p + 16 * h)));
        __m256i t = _mm256_slli_epi16(w, 7);            /* s at bit 14, eeeemmm at 13..7 */
        t = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000))); /* s -> 15 */
        out[2 * h] = _mm256_cvtph_ps(_mm256_castsi256_si128(t));
        out[2 * h + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(t, 1));
    }
}

/* 32 e4m3 codes -> 4 vectors of value * 2^-120 (the code's bits moved into
 * a float; e4m3 subnormals become float subnormals, exactly). */
DSV4_AV void
deq_fp8x(const uint8_t *p, int n, vf out[4])
{
    uint8_t       buf[32];
    const __m256i m = _mm256_set1_epi32((int) 0x87F00000u);

    if (n < 32) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf, p, (size_t) n);
        p = buf;
    }
    /* each 8 codes broadcast to both 128-bit lanes; one byte shuffle puts
     * code i at the top of dword i (lane 0: codes 0-3, lane 1: 4-7) */
    const __m256i top = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2,
                                         -1, -1, -1, 3, -1, -1, -1, 4, -1, -1, -1, 5,
                                         -1, -1, -1, 6, -1, -1, -1, 7);
    _Pragma("GCC unroll 4")          /* out[] must stay in registers */
    for (int v = 0; v < 4; v++) {
        int64_t c;
        memcpy(&c, p + 8 * v, sizeof(c));
        __m256i t = _mm256_shuffle_epi8(_mm256_set1_epi64x(c), top);
        t = _mm256_srai_epi32(t, 4);
        out[v] = _mm256_castsi256_ps(_mm256_and_si256(t, m));
    }
}

/* 16 bytes of e2m1 pairs (low nibble first) times scale s -> 4 vectors,
 * natural order: each 4 bytes (8 codes) are broadcast, a variable shift
 * brings code j to the bottom of lane j for vpermps over the scaled
 * magnitudes (it reads 3 bits), and another puts its sign bit at bit 31.
 * One shuffle per 8 weights; byte shuffles through half precision took
 * three and ran ~20% slower. */
DSV4_AV void
deq_fp4s(const uint8_t *p, float s, vf out[4])
{
    const vf      tab = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256i down = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i up = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
    const vf      sign = _mm256_set1_ps(-0.0f);
    vf            mag = _mm256_mul_ps(tab, _mm256_set1_ps(s));

    _Pragma("GCC unroll 4")          /* out[] must stay in registers */
    for (int v = 0; v < 4; v++) {
        int32_t c;
        memcpy(&c, p + 4 * v, sizeof(c));
        __m256i b = _mm256_set1_epi32(c);
        vf      sg = _mm256_and_ps(_mm256_castsi256_ps(_mm256_sllv_epi32(b, up)), sign);
        out[v] = _mm256_xor_ps(_mm256_permutevar8x32_ps(mag, _mm256_srlv_epi32(b, down)), sg);
    }
}

DSV4_AV void
deq_bf16(const uint16_t *p, int n, vf out[4])
{
    uint16_t buf[32];

    if (n < 32) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf, p, (size_t) n * sizeof(uint16_t));
        p = buf;
    }
    _Pragma("GCC unroll 4")          /* out[] must stay in registers */
    for (int v = 0; v < 4; v++) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) (p + 8 * v)));
        out[v] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
}

#include "simd_kernels.h"

#endif
