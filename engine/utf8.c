/*
 * UTF-8 helpers; see utf8.h.  The decoder state machine follows the WHATWG
 * Encoding Standard's UTF-8 decoder step for step: a lead byte fixes the
 * sequence length and the allowed range of the first continuation byte
 * (which is what excludes overlongs, surrogates and code points above
 * U+10FFFF); a byte out of range ends the sequence with one U+FFFD and is
 * then looked at again as a new lead byte.
 */
#include <string.h>

#include "utf8.h"

/* Sequence length for a lead byte and the range of its first continuation
 * byte; need == 0 marks a byte that can never start a sequence. */
static void
utf8_lead(unsigned char b, uint8_t *need, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b < 0x80) {
        *need = 1;
    } else if (b >= 0xC2 && b <= 0xDF) {
        *need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        *need = 3;
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        *need = 4;
        if (b == 0xF0) *lo = 0x90;
        if (b == 0xF4) *hi = 0x8F;
    } else {
        *need = 0;
    }
}


size_t
dsv4_utf8_valid_prefix(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t i = 0;

    while (i < len) {
        uint8_t need, lo, hi;

        if (p[i] < 0x80) {
            i++;
            continue;
        }
        utf8_lead(p[i], &need, &lo, &hi);
        if (need == 0 || len - i < need) {
            return i;
        }
        if (p[i + 1] < lo || p[i + 1] > hi) {
            return i;
        }
        for (uint8_t k = 2; k < need; k++) {
            if ((p[i + k] & 0xC0) != 0x80) {
                return i;
            }
        }
        i += need;
    }
    return len;
}


int
dsv4_utf8_next(const char *s, size_t len, uint32_t *cp)
{
    const unsigned char *p = (const unsigned char *) s;

    if (p[0] < 0x80 || len < 2) {
        *cp = p[0];
        return 1;
    }
    if (p[0] < 0xE0) {
        *cp = ((uint32_t) (p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    if (p[0] < 0xF0 || len < 4) {
        *cp = ((uint32_t) (p[0] & 0x0F) << 12) | ((uint32_t) (p[1] & 0x3F) << 6)
              | (p[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t) (p[0] & 0x07) << 18) | ((uint32_t) (p[1] & 0x3F) << 12)
          | ((uint32_t) (p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    return 4;
}


int
dsv4_utf8_put(char *out, uint32_t cp)
{
    unsigned char *o = (unsigned char *) out;

    if (cp < 0x80) {
        o[0] = (unsigned char) cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char) (0xC0 | (cp >> 6));
        o[1] = (unsigned char) (0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char) (0xE0 | (cp >> 12));
        o[1] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char) (0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char) (0xF0 | (cp >> 18));
    o[1] = (unsigned char) (0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char) (0x80 | (cp & 0x3F));
    return 4;
}


void
dsv4_utf8_stream_init(dsv4_utf8_stream *s)
{
    memset(s, 0, sizeof(*s));
}


size_t
dsv4_utf8_stream_push(dsv4_utf8_stream *s, const char *in, size_t n, char *out)
{
    const unsigned char *p = (const unsigned char *) in;
    size_t o = 0, i = 0;

    while (i < n) {
        unsigned char b = p[i];

        if (s->npend == 0) {
            /* fast path: a run of ASCII */
            if (b < 0x80) {
                out[o++] = (char) b;
                i++;
                continue;
            }
            utf8_lead(b, &s->need, &s->lo, &s->hi);
            if (s->need == 0) {
                memcpy(out + o, DSV4_UTF8_FFFD, 3);
                o += 3;
            } else {
                s->pend[s->npend++] = b;
            }
            i++;
            continue;
        }

        if (b < s->lo || b > s->hi) {
            /* the sequence is cut short: one U+FFFD, then b starts anew */
            memcpy(out + o, DSV4_UTF8_FFFD, 3);
            o += 3;
            s->npend = 0;
            continue;
        }
        s->pend[s->npend++] = b;
        s->lo = 0x80;
        s->hi = 0xBF;
        i++;
        if (s->npend == s->need) {
            memcpy(out + o, s->pend, s->npend);
            o += s->npend;
            s->npend = 0;
        }
    }
    return o;
}


size_t
dsv4_utf8_stream_flush(dsv4_utf8_stream *s, char *out)
{
    if (s->npend == 0) {
        return 0;
    }
    s->npend = 0;
    memcpy(out, DSV4_UTF8_FFFD, 3);
    return 3;
}
