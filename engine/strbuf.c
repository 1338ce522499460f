/* Growable byte buffer; see strbuf.h. */
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"


int
dsv4_strbuf_reserve(dsv4_strbuf *b, size_t extra)
{
    size_t want, cap;
    char  *p;

    if (extra > (size_t) -1 / 2 - b->len) {
        return -1;
    }
    want = b->len + extra + 1;
    if (want <= b->cap) {
        return 0;
    }
    cap = b->cap ? b->cap : 64;
    while (cap < want) {
        cap *= 2;
    }
    p = realloc(b->data, cap);
    if (p == NULL) {
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}


int
dsv4_strbuf_append(dsv4_strbuf *b, const char *s, size_t n)
{
    if (dsv4_strbuf_reserve(b, n) != 0) {
        return -1;
    }
    if (n) {
        memcpy(b->data + b->len, s, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}


int
dsv4_strbuf_puts(dsv4_strbuf *b, const char *s)
{
    return dsv4_strbuf_append(b, s, strlen(s));
}


int
dsv4_strbuf_putc(dsv4_strbuf *b, char c)
{
    return dsv4_strbuf_append(b, &c, 1);
}


void
dsv4_strbuf_reset(dsv4_strbuf *b)
{
    b->len = 0;
    if (b->cap) {
        b->data[0] = '\0';
    }
}


void
dsv4_strbuf_free(dsv4_strbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}


char *
dsv4_strbuf_take(dsv4_strbuf *b, size_t *len)
{
    char *p;

    if (dsv4_strbuf_reserve(b, 0) != 0) {
        return NULL;
    }
    p = b->data;
    if (len) {
        *len = b->len;
    }
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
