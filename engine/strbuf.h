/*
 * A growable byte buffer, always NUL-terminated so its text can be passed to
 * printf-style code.  Growth is geometric, so a buffer reused across calls
 * (dsv4_strbuf_reset keeps the allocation) stops allocating once it has
 * reached its working size.
 */
#ifndef DSV4_STRBUF_H
#define DSV4_STRBUF_H

#include <stddef.h>

typedef struct {
    char   *data;   /* NUL-terminated when cap > 0; owned */
    size_t  len;
    size_t  cap;
} dsv4_strbuf;

#define DSV4_STRBUF_INIT {NULL, 0, 0}

/* Makes room for extra more bytes (plus the NUL).  0 or -1 on ENOMEM. */
int  dsv4_strbuf_reserve(dsv4_strbuf *b, size_t extra);
int  dsv4_strbuf_append(dsv4_strbuf *b, const char *s, size_t n);
int  dsv4_strbuf_puts(dsv4_strbuf *b, const char *s);
int  dsv4_strbuf_putc(dsv4_strbuf *b, char c);
void dsv4_strbuf_reset(dsv4_strbuf *b);
void dsv4_strbuf_free(dsv4_strbuf *b);

/* Hands the buffer to the caller (who frees it with free()) and leaves b
 * empty.  Never NULL on success: an empty buffer yields "" (allocated). */
char *dsv4_strbuf_take(dsv4_strbuf *b, size_t *len);

#endif
