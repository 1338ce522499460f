/*
 * Lossless packing of sequence state sections (seq_state.h).
 *
 * The engine keeps KV in float32, but its values come out of quantisers
 * (forward.c): the non-RoPE dims of window and compressed KV are FP8 e4m3 in
 * blocks of 64 with power-of-two scales, indexer keys FP4 e2m1 in blocks of
 * 32.  Such a block is stored as one scale byte (e8m0: 2^(e-127)) and its
 * codes: 64 + 1 bytes instead of 256, 16 + 1 instead of 128.  A block whose
 * values are not exactly codes times one power of two (never, for state the
 * engine wrote) is stored raw behind the marker 0xFF, so unpacking always
 * reproduces every float bit for bit (signed zeros included).
 *
 * Stream: per section a 16-byte header (kind, rows, width, raw_tail as
 * little-endian u32) that unpack checks against the section it fills, then
 * each row:
 *   RAW  width float32
 *   KV   blocks of the first width - raw_tail dims: scale byte + a code byte
 *        per value (or 0xFF + raw float32), then raw_tail float32
 *   IDX  blocks: scale byte + two codes per byte, low nibble first (or 0xFF
 *        + raw float32)
 */
#include <math.h>
#include <string.h>

#include "formats.h"
#include "internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cache/pack.c stores float32 in host order, which must be little-endian"
#endif

#define DSV4_PACK_RAW 0xFF

static uint32_t
dsv4_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Power-of-two exponent k of the scale the engine's quantiser would pick for
 * a block whose largest magnitude is amax (see dsv4_scalar_fake_quant). */
static int
dsv4_pack_scale_exp(float amax, float floor_amax, float qmax)
{
    return ilogbf(dsv4_pow2_ceil(fmaxf(amax, floor_amax) / qmax));
}

/* e4m3 code of v / 2^k, or -1 when that is not exactly a code. */
static int
dsv4_pack_e4m3(float v, int k)
{
    uint32_t u = dsv4_f2u(v), sign = u >> 31, mant = u & 0x7FFFFF;
    int      ef = (int) (u >> 23 & 0xFF), e, code;

    if ((u & 0x7FFFFFFF) == 0) {
        return (int) (sign << 7);
    }
    if (ef == 0 || ef == 255) {
        return -1;
    }
    e = ef - 127 - k;                       /* v / 2^k = 1.mant * 2^e */
    if (e >= -6) {
        if (e > 8 || (mant & 0xFFFFF) != 0) {
            return -1;
        }
        code = (e + 7) << 3 | (int) (mant >> 20);
    } else if (e >= -9) {                   /* subnormal: m * 2^-9 */
        uint32_t full = 0x800000 | mant;
        int      sh = 23 - (e + 9);
        if ((full & ((1u << sh) - 1)) != 0) {
            return -1;
        }
        code = (int) (full >> sh);
    } else {
        return -1;
    }
    if ((code & 0x7F) == 0x7F) {
        return -1;
    }
    return (int) (sign << 7) | code;
}

/* e2m1 nibble of v / 2^k, or -1. */
static int
dsv4_pack_e2m1(float v, int k)
{
    uint32_t u = dsv4_f2u(v), sign = u >> 31, mant = u & 0x7FFFFF;
    int      ef = (int) (u >> 23 & 0xFF), e;

    if ((u & 0x7FFFFFFF) == 0) {
        return (int) (sign << 3);
    }
    if (ef == 0 || ef == 255) {
        return -1;
    }
    e = ef - 127 - k;
    if (e >= 0 && e <= 2 && (mant & 0x3FFFFF) == 0) {
        return (int) (sign << 3) | (e + 1) << 1 | (int) (mant >> 22);
    }
    if (e == -1 && mant == 0) {
        return (int) (sign << 3) | 1;       /* 0.5 */
    }
    return -1;
}

static void
dsv4_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t) (v >> (8 * i));
    }
}

static uint32_t
dsv4_get_u32(const uint8_t *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}

/* Bytes of one packed row at most. */
static size_t
dsv4_pack_row_bound(const dsv4_ss_section *s)
{
    int block = s->kind == DSV4_SS_KV ? DSV4_SS_KV_BLOCK : DSV4_SS_IDX_BLOCK;
    int q = s->kind == DSV4_SS_KV ? s->width - s->raw_tail : s->width;

    if (s->kind == DSV4_SS_RAW) {
        return (size_t) s->width * 4;
    }
    return (size_t) s->width * 4 + (size_t) (q + block - 1) / block;
}

size_t
dsv4_cache_pack_bound(const dsv4_ss_section *sec, int n)
{
    size_t b = 0;

    for (int i = 0; i < n; i++) {
        b += 16 + (size_t) sec[i].rows * dsv4_pack_row_bound(&sec[i]);
    }
    return b;
}

/* One quantised block v[nb] into out; returns bytes written. */
static size_t
dsv4_pack_block(const float *v, int nb, int fp4, uint8_t *out)
{
    float amax = 0.0f;
    int   k, ok = 1;

    for (int i = 0; i < nb; i++) {
        if (!isfinite(v[i])) {
            ok = 0;
        }
        amax = fmaxf(amax, fabsf(v[i]));
    }
    k = ok ? (fp4 ? dsv4_pack_scale_exp(amax, 6.0f * 0x1p-126f, 6.0f)
                  : dsv4_pack_scale_exp(amax, 1e-4f, 448.0f)) : 0;
    if (ok && (k < -127 || k > 127)) {
        ok = 0;
    }
    if (ok) {
        float s = ldexpf(1.0f, k);
        if (fp4) {
            memset(out + 1, 0, (size_t) (nb + 1) / 2);
        }
        for (int i = 0; i < nb && ok; i++) {
            int   c = fp4 ? dsv4_pack_e2m1(v[i], k) : dsv4_pack_e4m3(v[i], k);
            float back;
            if (c < 0) {
                ok = 0;
                break;
            }
            back = (fp4 ? dsv4_e2m1_table[c] : dsv4_e4m3_table[c]) * s;
            if (dsv4_f2u(back) != dsv4_f2u(v[i])) {
                ok = 0;
                break;
            }
            if (fp4) {
                out[1 + i / 2] |= (uint8_t) (c << (4 * (i & 1)));
            } else {
                out[1 + i] = (uint8_t) c;
            }
        }
    }
    if (ok) {
        out[0] = (uint8_t) (k + 127);
        return 1 + (size_t) (fp4 ? (nb + 1) / 2 : nb);
    }
    out[0] = DSV4_PACK_RAW;
    memcpy(out + 1, v, (size_t) nb * 4);
    return 1 + (size_t) nb * 4;
}

size_t
dsv4_cache_pack(const dsv4_ss_section *sec, int n, uint8_t *out)
{
    uint8_t *p = out;

    dsv4_formats_init();
    for (int i = 0; i < n; i++) {
        const dsv4_ss_section *s = &sec[i];
        int                    fp4 = s->kind == DSV4_SS_IDX;
        int                    block = fp4 ? DSV4_SS_IDX_BLOCK : DSV4_SS_KV_BLOCK;
        int                    q = s->kind == DSV4_SS_KV ? s->width - s->raw_tail
                                   : s->kind == DSV4_SS_IDX ? s->width : 0;

        dsv4_put_u32(p, (uint32_t) s->kind);
        dsv4_put_u32(p + 4, (uint32_t) s->rows);
        dsv4_put_u32(p + 8, (uint32_t) s->width);
        dsv4_put_u32(p + 12, (uint32_t) s->raw_tail);
        p += 16;
        for (int r = 0; r < s->rows; r++) {
            const float *row = s->data + (size_t) r * s->stride;
            for (int b0 = 0; b0 < q; b0 += block) {
                p += dsv4_pack_block(row + b0, q - b0 < block ? q - b0 : block, fp4, p);
            }
            memcpy(p, row + q, (size_t) (s->width - q) * 4);
            p += (size_t) (s->width - q) * 4;
        }
    }
    return (size_t) (p - out);
}

int
dsv4_cache_unpack(const dsv4_ss_section *sec, int n, const uint8_t *in, size_t len)
{
    const uint8_t *p = in, *end = in + len;

    dsv4_formats_init();
    for (int i = 0; i < n; i++) {
        const dsv4_ss_section *s = &sec[i];
        int                    fp4 = s->kind == DSV4_SS_IDX;
        int                    block = fp4 ? DSV4_SS_IDX_BLOCK : DSV4_SS_KV_BLOCK;
        int                    q = s->kind == DSV4_SS_KV ? s->width - s->raw_tail
                                   : s->kind == DSV4_SS_IDX ? s->width : 0;

        if (end - p < 16 || dsv4_get_u32(p) != (uint32_t) s->kind
            || dsv4_get_u32(p + 4) != (uint32_t) s->rows
            || dsv4_get_u32(p + 8) != (uint32_t) s->width
            || dsv4_get_u32(p + 12) != (uint32_t) s->raw_tail) {
            return -1;
        }
        p += 16;
        for (int r = 0; r < s->rows; r++) {
            float *row = s->data + (size_t) r * s->stride;
            for (int b0 = 0; b0 < q; b0 += block) {
                int nb = q - b0 < block ? q - b0 : block;
                if (end - p < 1) {
                    return -1;
                }
                if (*p == DSV4_PACK_RAW) {
                    if ((size_t) (end - p) < 1 + (size_t) nb * 4) {
                        return -1;
                    }
                    memcpy(row + b0, p + 1, (size_t) nb * 4);
                    p += 1 + (size_t) nb * 4;
                    continue;
                }
                float  sc = ldexpf(1.0f, (int) *p - 127);
                size_t nbytes = fp4 ? (size_t) (nb + 1) / 2 : (size_t) nb;
                if ((size_t) (end - p) < 1 + nbytes) {
                    return -1;
                }
                for (int k = 0; k < nb && !fp4; k++) {
                    if ((p[1 + k] & 0x7F) == 0x7F) {      /* e4m3 NaN: never packed */
                        return -1;
                    }
                }
                for (int k = 0; k < nb; k++) {
                    row[b0 + k] = fp4 ? dsv4_e2m1_table[p[1 + k / 2] >> (4 * (k & 1)) & 15] * sc
                                      : dsv4_e4m3_table[p[1 + k]] * sc;
                }
                p += 1 + nbytes;
            }
            size_t nraw = (size_t) (s->width - q) * 4;
            if ((size_t) (end - p) < nraw) {
                return -1;
            }
            memcpy(row + q, p, nraw);
            p += nraw;
        }
    }
    return p == end ? 0 : -1;
}
