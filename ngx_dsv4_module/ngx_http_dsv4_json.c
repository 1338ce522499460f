
/*
 * JSON output helpers.  Parsing and the rarer objects (final responses,
 * tool calls, logprobs, errors) go through jansson; the per-token SSE text
 * delta is written directly, because it is the one object built thousands
 * of times per request and its shape never changes.
 */


#include "ngx_http_dsv4_module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>


/*
 * Appends s[0..len) as a JSON string literal.  s must be valid UTF-8 (the
 * output parser and the tokenizer's decoder guarantee it); non-ASCII bytes
 * are copied raw, control characters escaped.
 */

int
ngx_http_dsv4_json_str(dsv4_strbuf *b, const char *s, size_t len)
{
    u_char       *d;
    size_t        i, n;
    u_char        c;

    static const char  hex[] = "0123456789abcdef";

    /* worst case: every byte becomes \u00XX */

    if (dsv4_strbuf_reserve(b, len * 6 + 2) != 0) {
        return -1;
    }

    d = (u_char *) b->data + b->len;
    *d++ = '"';

    for (i = 0; i < len; i++) {
        c = (u_char) s[i];

        if (c >= 0x20 && c != '"' && c != '\\') {
            *d++ = c;
            continue;
        }

        *d++ = '\\';

        switch (c) {
        case '"':
            *d++ = '"';
            break;
        case '\\':
            *d++ = '\\';
            break;
        case '\n':
            *d++ = 'n';
            break;
        case '\r':
            *d++ = 'r';
            break;
        case '\t':
            *d++ = 't';
            break;
        case '\b':
            *d++ = 'b';
            break;
        case '\f':
            *d++ = 'f';
            break;
        default:
            *d++ = 'u';
            *d++ = '0';
            *d++ = '0';
            *d++ = hex[c >> 4];
            *d++ = hex[c & 0xf];
            break;
        }
    }

    *d++ = '"';

    n = d - (u_char *) b->data;
    b->len = n;
    b->data[n] = '\0';

    return 0;
}


int
ngx_http_dsv4_strbuf_printf(dsv4_strbuf *b, const char *fmt, ...)
{
    int      n;
    size_t   room;
    va_list  args;

    /* one pass when the text fits the room left, which it mostly does */

    room = b->cap > b->len ? b->cap - b->len : 0;

    va_start(args, fmt);
    n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, args);
    va_end(args);

    if (n < 0) {
        return -1;
    }

    if ((size_t) n >= room) {
        if (dsv4_strbuf_reserve(b, (size_t) n) != 0) {
            return -1;
        }

        va_start(args, fmt);
        vsnprintf(b->data + b->len, (size_t) n + 1, fmt, args);
        va_end(args);
    }

    b->len += n;

    return 0;
}


int
ngx_http_dsv4_dump(dsv4_strbuf *b, const json_t *v)
{
    size_t  n;

    n = json_dumpb(v, NULL, 0, JSON_COMPACT);
    if (n == 0 || dsv4_strbuf_reserve(b, n) != 0) {
        return -1;
    }

    n = json_dumpb(v, b->data + b->len, n, JSON_COMPACT);
    b->len += n;
    b->data[b->len] = '\0';

    return 0;
}


/*
 * {"token": text, "bytes": [...]} for a logprobs entry.  A token may be a
 * fragment of a UTF-8 character: "bytes" has the exact bytes, "token" the
 * text with invalid sequences replaced (as OpenAI does).
 */

json_t *
ngx_http_dsv4_json_token(const dsv4_tokenizer *tok, int32_t id)
{
    char              buf[3 * (256 + 3)];
    size_t            len, n, i;
    json_t           *o, *bytes;
    const char       *p;
    dsv4_utf8_stream  us;

    p = tok ? dsv4_tokenizer_token_bytes(tok, id, &len) : NULL;

    if (p == NULL) {

        /* no tokenizer, or an id with no token: vLLM's spelling */

        n = (size_t) snprintf(buf, sizeof(buf), "token_id:%d", (int) id);

        return json_pack("{s:s%,s:[]}", "token", buf, n, "bytes");
    }

    if (len > 256) {
        len = 256;
    }

    dsv4_utf8_stream_init(&us);
    n = dsv4_utf8_stream_push(&us, p, len, buf);
    n += dsv4_utf8_stream_flush(&us, buf + n);

    bytes = json_array();
    o = json_object();

    if (bytes == NULL || o == NULL) {
        json_decref(bytes);
        json_decref(o);
        return NULL;
    }

    for (i = 0; i < len; i++) {
        if (json_array_append_new(bytes, json_integer((u_char) p[i])) != 0) {
            json_decref(bytes);
            json_decref(o);
            return NULL;
        }
    }

    if (json_object_set_new(o, "token", json_stringn(buf, n)) != 0
        || json_object_set_new(o, "bytes", bytes) != 0)
    {
        json_decref(o);
        return NULL;
    }

    return o;
}
