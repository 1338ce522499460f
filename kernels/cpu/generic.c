/*
 * The kernel vocabulary in plain C: 8-lane "vectors" as arrays.  Used on
 * CPUs without AVX2 (and on other architectures); compilers vectorise some
 * of it.  Same canonical order as the SIMD files, so it doubles as a check
 * that simd_kernels.h says nothing ISA-specific.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu.h"
#include "formats.h"

#define DSV4_TARGET
#define DSV4_KERNELS   dsv4_cpu_kernels_generic
#define DSV4_ISA_NAME  "generic"
#define VL             8
#define GEMM_MR        2
#define GEMM_NR        2
#define GEMV_RT(nt)    2
#define ATT_HB         2
#define ATT_DB         1
#define GEMM_PANELS    4

typedef struct {
    float l[VL];
} vf;

#define DSV4_GV static inline

DSV4_GV vf vf_zero(void) { vf r; memset(&r, 0, sizeof(r)); return r; }
DSV4_GV vf vf_set1(float a) { vf r; for (int i = 0; i < VL; i++) r.l[i] = a; return r; }
DSV4_GV vf vf_load(const float *p) { vf r; memcpy(r.l, p, sizeof(r.l)); return r; }
DSV4_GV void vf_store(float *p, vf v) { memcpy(p, v.l, sizeof(v.l)); }

DSV4_GV vf
vf_loadn(const float *p, int n)
{
    vf r = vf_zero();
    memcpy(r.l, p, (size_t) n * sizeof(float));
    return r;
}

DSV4_GV void vf_storen(float *p, vf v, int n) { memcpy(p, v.l, (size_t) n * sizeof(float)); }

#define DSV4_GV_BINOP(name, expr)                                        \
    DSV4_GV vf name(vf a, vf b)                                          \
    {                                                                    \
        vf r;                                                            \
        for (int i = 0; i < VL; i++) {                                   \
            r.l[i] = expr;                                               \
        }                                                                \
        return r;                                                        \
    }
DSV4_GV_BINOP(vf_add, a.l[i] + b.l[i])
DSV4_GV_BINOP(vf_sub, a.l[i] - b.l[i])
DSV4_GV_BINOP(vf_mul, a.l[i] * b.l[i])
DSV4_GV_BINOP(vf_div, a.l[i] / b.l[i])
DSV4_GV_BINOP(vf_max, fmaxf(a.l[i], b.l[i]))
DSV4_GV_BINOP(vf_min, fminf(a.l[i], b.l[i]))
#undef DSV4_GV_BINOP

DSV4_GV vf
vf_rint(vf a)
{
    vf r;
    for (int i = 0; i < VL; i++) {
        r.l[i] = rintf(a.l[i]);
    }
    return r;
}

DSV4_GV vf
vf_pow2_floor(vf a)
{
    vf r;
    for (int i = 0; i < VL; i++) {
        uint32_t u;
        memcpy(&u, &a.l[i], sizeof(u));
        u &= 0x7F800000u;
        memcpy(&r.l[i], &u, sizeof(u));
    }
    return r;
}

DSV4_GV vf
vf_keep_nan(vf a, vf b)
{
    vf r;
    for (int i = 0; i < VL; i++) {
        r.l[i] = isnan(b.l[i]) ? b.l[i] : a.l[i];
    }
    return r;
}

DSV4_GV vf
vf_fma(vf a, vf b, vf c)
{
    vf r;
    for (int i = 0; i < VL; i++) {
        r.l[i] = fmaf(a.l[i], b.l[i], c.l[i]);
    }
    return r;
}

/* the same tree as the SIMD files: halves, then quarters, then pairs */
DSV4_GV float
vf_hsum(vf v)
{
    float a[4], b[2];
    for (int i = 0; i < 4; i++) {
        a[i] = v.l[i] + v.l[i + 4];
    }
    b[0] = a[0] + a[2];
    b[1] = a[1] + a[3];
    return b[0] + b[1];
}

DSV4_GV vf
vf_exp(vf v)
{
    vf r;
    for (int i = 0; i < VL; i++) {
        r.l[i] = v.l[i] < -87.3f ? 0.0f : expf(v.l[i]);
    }
    return r;
}

DSV4_GV vf
vf_swap_pairs(vf v)
{
    vf r;
    for (int i = 0; i < VL; i += 2) {
        r.l[i] = v.l[i + 1];
        r.l[i + 1] = v.l[i];
    }
    return r;
}

DSV4_GV void
deq_fp8(const uint8_t *p, int n, vf out[32 / VL])
{
    for (int k = 0; k < 32; k++) {
        out[k / VL].l[k % VL] = k < n ? dsv4_e4m3_table[p[k]] * 0x1p-8f : 0.0f;
    }
}

/* value * 2^-120, exact (subnormal for the smallest codes) */
DSV4_GV void
deq_fp8x(const uint8_t *p, int n, vf out[32 / VL])
{
    for (int k = 0; k < 32; k++) {
        out[k / VL].l[k % VL] = k < n ? dsv4_e4m3_table[p[k]] * 0x1p-120f : 0.0f;
    }
}

DSV4_GV void
deq_fp4s(const uint8_t *p, float s, vf out[32 / VL])
{
    for (int k = 0; k < 32; k++) {
        uint8_t b = p[k / 2];
        out[k / VL].l[k % VL] = dsv4_e2m1_table[k & 1 ? b >> 4 : b & 0xF] * s;
    }
}

DSV4_GV void
deq_bf16(const uint16_t *p, int n, vf out[32 / VL])
{
    for (int k = 0; k < 32; k++) {
        out[k / VL].l[k % VL] = k < n ? dsv4_bf16_to_f32(p[k]) : 0.0f;
    }
}

#include "simd_kernels.h"
