/*
 * The kernel vocabulary in AVX-512 F/BW/VL (16 float lanes).  Compiled with
 * a target attribute per function; backend.c calls these only when the CPU
 * (and the OS, which must save the zmm state) supports them, so the same
 * binary runs on AVX2-only machines such as CI.
 *
 * FP8 goes through half precision exactly as in avx2.c (value * 2^-8, the
 * 2^8 folded into the scale), or, faster, straight into float bits (value *
 * 2^-120) against a copy of x pre-multiplied by scale * 2^120 (deq_fp8x).
 * FP4 uses the 16-entry table of e2m1 values, scaled per block: vpermps
 * looks up 16 nibbles at once, after a vpermd and a variable shift put each
 * element's nibble at the bottom of its lane.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu.h"
#include "formats.h"

#define DSV4_TARGET    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define DSV4_KERNELS   dsv4_cpu_kernels_avx512
#define DSV4_ISA_NAME  "avx512"
#define VL             16
#define GEMM_MR        4
#define GEMM_NR        6
#define GEMV_RT(nt)    ((nt) <= 4 ? 4 : 2)
#define ATT_HB         4
#define ATT_DB         4
#define GEMM_PANELS    3

typedef __m512 vf;

#define DSV4_AV static inline __attribute__((always_inline)) DSV4_TARGET

DSV4_AV vf vf_zero(void) { return _mm512_setzero_ps(); }
DSV4_AV vf vf_set1(float a) { return _mm512_set1_ps(a); }
DSV4_AV vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
DSV4_AV void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
DSV4_AV vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
DSV4_AV vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
DSV4_AV vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
DSV4_AV vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
DSV4_AV vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
DSV4_AV vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
DSV4_AV vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
DSV4_AV vf vf_swap_pairs(vf v) { return _mm512_permute_ps(v, 0xB1); }
DSV4_AV vf vf_rint(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
DSV4_AV vf
vf_pow2_floor(vf v)
{
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v),
                                                _mm512_set1_epi32(0x7F800000)));
}
DSV4_AV vf
vf_keep_nan(vf a, vf b)
{
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q), a, b);
}
DSV4_AV __mmask16 dsv4_k16(int n) { return (__mmask16) ((1u << n) - 1); }
DSV4_AV vf vf_loadn(const float *p, int n) { return _mm512_maskz_loadu_ps(dsv4_k16(n), p); }
DSV4_AV void vf_storen(float *p, vf v, int n) { _mm512_mask_storeu_ps(p, dsv4_k16(n), v); }

/* (l + l+8), then the AVX2 tree: (l + l+4), (l + l+2), (l + l+1) */
DSV4_AV float
vf_hsum(vf v)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* as in avx2.c: 2^n e^r with the Cephes polynomial */
DSV4_AV vf
vf_exp(vf x)
{
    const vf  hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3f);
    __mmask16 ok = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    vf p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    /* p * 2^n (scalef handles the whole exponent range) */
    return _mm512_maskz_scalef_ps(ok, p, n);
}

/* 32 e4m3 codes -> 2 vectors of value * 2^-8 */
DSV4_AV void
deq_fp8(const uint8_t *p, int n, vf out[2])
{
    __m256i b = n >= 32 ? _mm256_loadu_si256((const __m256i *) p)
                        : _mm256_maskz_loadu_epi8((__mmask32) ((1ull << n) - 1), p);
    __m512i t = _mm512_slli_epi16(_mm512_cvtepu8_epi16(b), 7);
    t = _mm512_add_epi16(t, _mm512_and_si512(t, _mm512_set1_epi16(0x4000)));
    out[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(t));
    out[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(t, 1));
}

/* 32 e4m3 codes -> 2 vectors of value * 2^-120: the code's bits moved into a
 * float's sign, exponent and mantissa fields (e4m3 subnormals become float
 * subnormals, exactly).  Used with x pre-multiplied by scale * 2^120. */
DSV4_AV void
deq_fp8x(const uint8_t *p, int n, vf out[2])
{
    const __m512i m = _mm512_set1_epi32((int) 0x87F00000u);

    _Pragma("GCC unroll 4")          /* out[] must stay in registers */
    for (int h = 0; h < 2; h++) {
        int     c = n - 16 * h;
        __m128i b = c >= 16 ? _mm_loadu_si128((const __m128i *) (p + 16 * h))
                            : _mm_maskz_loadu_epi8((__mmask16) (c > 0 ? (1u << c) - 1 : 0),
                                                   p + 16 * h);
        /* byte to the top, then down 4 with the sign copied: s eeee mmm at 27..20 */
        __m512i t = _mm512_srai_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(b), 24), 4);
        out[h] = _mm512_castsi512_ps(_mm512_and_si512(t, m));
    }
}

/* 16 bytes of e2m1 pairs times scale s -> 2 vectors, natural order: the
 * table of the 16 values is scaled once (exact: s is a power of two); lane l
 * of out[h] takes dword 2h + l / 8 shifted right by 4 (l % 8), and vpermps
 * reads only the low four bits of each index */
DSV4_AV void
deq_fp4s(const uint8_t *p, float s, vf out[2])
{
    const vf      tab = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                       -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    const __m512i d0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i d1 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28,
                                         0, 4, 8, 12, 16, 20, 24, 28);
    vf            ts = _mm512_mul_ps(tab, _mm512_set1_ps(s));
    __m512i       b = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *) p));

    out[0] = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_permutexvar_epi32(d0, b), sh), ts);
    out[1] = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_permutexvar_epi32(d1, b), sh), ts);
}

DSV4_AV void
deq_bf16(const uint16_t *p, int n, vf out[2])
{
    __m512i b = n >= 32 ? _mm512_loadu_si512(p)
                        : _mm512_maskz_loadu_epi16((__mmask32) ((1ull << n) - 1), p);
    out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(
                 _mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)), 16));
    out[1] = _mm512_castsi512_ps(_mm512_slli_epi32(
                 _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1)), 16));
}

#include "simd_kernels.h"

#endif
