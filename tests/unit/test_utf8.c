/*
 * UTF-8 validation and the replacing stream decoder, against a naive decoder
 * written from the definition (exhaustive over all 1- to 3-byte sequences,
 * sampled over 4-byte ones), and stream-vs-batch equality for random byte
 * strings cut at random points.
 */
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "utf8.h"

/* Length of the valid sequence starting at s, or 0: straight from the
 * definition (shortest form, no surrogates, <= U+10FFFF). */
static size_t
naive_seq(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t   len;

    if (n == 0) return 0;
    if (s[0] < 0x80) return 1;
    if ((s[0] & 0xE0) == 0xC0) { len = 2; cp = s[0] & 0x1F; }
    else if ((s[0] & 0xF0) == 0xE0) { len = 3; cp = s[0] & 0x0F; }
    else if ((s[0] & 0xF8) == 0xF0) { len = 4; cp = s[0] & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}


static size_t
naive_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0, k;

    while (i < n && (k = naive_seq(s + i, n - i)) > 0) i += k;
    return i;
}


int
main(void)
{
    unsigned char b[8];
    long          bad = 0;
    unsigned      seed = 12345;

    /* exhaustive: every 1-, 2- and 3-byte string */
    for (unsigned x = 0; x < (1u << 24); x++) {
        b[0] = (unsigned char) (x >> 16);
        b[1] = (unsigned char) (x >> 8);
        b[2] = (unsigned char) x;
        bad += dsv4_utf8_valid_prefix((char *) b, 3) != naive_prefix(b, 3);
        if ((x & 0xFFFF) == 0) {
            bad += dsv4_utf8_valid_prefix((char *) b, 1) != naive_prefix(b, 1);
        }
        if ((x & 0xFF) == 0) {
            bad += dsv4_utf8_valid_prefix((char *) b, 2) != naive_prefix(b, 2);
        }
    }
    TEST_CHECK(bad == 0, "%ld 1-3 byte strings disagree with the definition", bad);

    /* 4-byte: every lead byte F0..F7 with random continuations */
    bad = 0;
    for (int i = 0; i < 2000000; i++) {
        seed = seed * 1103515245u + 12345u;
        b[0] = (unsigned char) (0xF0 + (seed >> 28) % 8);
        b[1] = (unsigned char) (seed >> 8);
        b[2] = (unsigned char) (seed >> 16);
        b[3] = (unsigned char) (0x80 | ((seed >> 2) & 0x7F));
        bad += dsv4_utf8_valid_prefix((char *) b, 4) != naive_prefix(b, 4);
    }
    TEST_CHECK(bad == 0, "%ld 4-byte strings disagree", bad);

    /* code point round trip */
    bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        char     o[4];
        uint32_t back;
        int      n;

        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        n = dsv4_utf8_put(o, cp);
        bad += dsv4_utf8_valid_prefix(o, (size_t) n) != (size_t) n
               || dsv4_utf8_next(o, (size_t) n, &back) != n || back != cp;
    }
    TEST_CHECK(bad == 0, "%ld code points do not round-trip", bad);

    /* WHATWG replacement: known vectors */
    {
        static const struct { const char *in; size_t n; const char *out; } v[] = {
            {"a\x80z", 3, "a\xef\xbf\xbdz"},
            {"\xe4\xb8", 2, "\xef\xbf\xbd"},                       /* truncated: one U+FFFD */
            {"\xe4\xb8z", 3, "\xef\xbf\xbdz"},
            {"\xf0\x80\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  /* overlong */
            {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                  /* surrogate */
            {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  /* > U+10FFFF */
            {"\xf0\x9f\x98", 3, "\xef\xbf\xbd"},
            {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
            {"\xe2\x82\xac\xff", 4, "\xe2\x82\xac\xef\xbf\xbd"},
        };
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
            dsv4_utf8_stream s;
            char             out[64];
            size_t           k;

            dsv4_utf8_stream_init(&s);
            k = dsv4_utf8_stream_push(&s, v[i].in, v[i].n, out);
            k += dsv4_utf8_stream_flush(&s, out + k);
            TEST_CHECK(k == strlen(v[i].out) && memcmp(out, v[i].out, k) == 0,
                       "replacement vector %zu", i);
        }
    }

    /* streaming == batch, and every piece is valid UTF-8 */
    bad = 0;
    for (int t = 0; t < 20000; t++) {
        unsigned char    in[64];
        char             whole[256], part[256], piece[256];
        size_t           n, kw, kp = 0, at = 0;
        dsv4_utf8_stream s;

        seed = seed * 1103515245u + 12345u;
        n = 1 + (seed >> 16) % 60;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            /* mostly plausible bytes: leads, continuations, ASCII */
            unsigned r = (seed >> 16) & 0xFF;
            in[i] = (unsigned char) (r < 64 ? 0x80 | (r & 0x3F) : r < 96 ? 0xE0 | (r & 0xF)
                                     : r < 112 ? 0xF0 | (r & 7) : r < 128 ? 0xC0 | (r & 0x1F) : r);
        }
        dsv4_utf8_stream_init(&s);
        kw = dsv4_utf8_stream_push(&s, (char *) in, n, whole);
        kw += dsv4_utf8_stream_flush(&s, whole + kw);
        bad += dsv4_utf8_valid_prefix(whole, kw) != kw;

        dsv4_utf8_stream_init(&s);
        while (at < n) {
            size_t step, k;

            seed = seed * 1103515245u + 12345u;
            step = 1 + (seed >> 16) % 4;
            if (step > n - at) step = n - at;
            k = dsv4_utf8_stream_push(&s, (char *) in + at, step, piece);
            bad += dsv4_utf8_valid_prefix(piece, k) != k;
            memcpy(part + kp, piece, k);
            kp += k;
            at += step;
        }
        kp += dsv4_utf8_stream_flush(&s, part + kp);
        bad += kp != kw || memcmp(part, whole, kw) != 0;
    }
    TEST_CHECK(bad == 0, "%ld random byte strings: stream != batch or invalid output", bad);
    return TEST_REPORT();
}
