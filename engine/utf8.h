/*
 * UTF-8 validation and a streaming, replacing decoder.
 *
 * Everything the engine hands a client must be valid UTF-8, but the model
 * emits byte-level tokens: one character can be split over several tokens,
 * and a bad sample can produce bytes that never form a character.  The
 * stream below holds back an incomplete character until it completes and
 * replaces every invalid sequence with U+FFFD using the WHATWG "maximal
 * subpart" rule -- the rule of TextDecoder and Python's
 * bytes.decode(errors="replace"), so our decoded text equals the reference
 * tokenizer's byte for byte.
 */
#ifndef DSV4_UTF8_H
#define DSV4_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the longest valid UTF-8 prefix of s[0..len) (strict: no
 * overlongs, no surrogates, nothing above U+10FFFF).  Equal to len iff the
 * whole buffer is valid. */
size_t dsv4_utf8_valid_prefix(const char *s, size_t len);

/* Decodes one character at s[0..len) (which must be valid UTF-8); stores
 * its code point and returns its length in bytes (1..4). */
int dsv4_utf8_next(const char *s, size_t len, uint32_t *cp);

/* Encodes cp (<= 0x10FFFF, not a surrogate) into out[0..4); returns bytes. */
int dsv4_utf8_put(char *out, uint32_t cp);

/* Streaming sanitizer: bytes in, valid UTF-8 out. */
typedef struct {
    unsigned char pend[4];   /* bytes of the incomplete character */
    uint8_t       npend;     /* how many of them */
    uint8_t       need;      /* total length of the character being read */
    uint8_t       lo, hi;    /* allowed range of the next continuation byte */
} dsv4_utf8_stream;

#define DSV4_UTF8_FFFD "\xEF\xBF\xBD"

void dsv4_utf8_stream_init(dsv4_utf8_stream *s);

/* Feeds in[0..n) and writes the decided output to out, which must hold
 * at least 3 * (n + 3) bytes.  Returns the number of bytes written. */
size_t dsv4_utf8_stream_push(dsv4_utf8_stream *s, const char *in, size_t n,
                             char *out);

/* Ends the stream: an incomplete character becomes one U+FFFD.  Writes at
 * most 3 bytes to out and returns how many; the stream is ready for reuse. */
size_t dsv4_utf8_stream_flush(dsv4_utf8_stream *s, char *out);

#endif
