/* Python-compatible JSON serialisation; see pyjson.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyjson.h"


int
dsv4_pyjson_dump_string(dsv4_strbuf *b, const char *s, size_t n)
{
    size_t run = 0;

    if (dsv4_strbuf_putc(b, '"') != 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        const char   *esc = NULL;
        char          hex[8];

        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        switch (c) {
        case '"':  esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            snprintf(hex, sizeof(hex), "\\u%04x", c);
            esc = hex;
        }
        if (dsv4_strbuf_append(b, s + run, i - run) != 0
            || dsv4_strbuf_puts(b, esc) != 0)
        {
            return -1;
        }
        run = i + 1;
    }
    if (dsv4_strbuf_append(b, s + run, n - run) != 0) {
        return -1;
    }
    return dsv4_strbuf_putc(b, '"');
}


int
dsv4_pyjson_dump_real(dsv4_strbuf *b, double x)
{
    char   buf[40], digits[24], out[48];
    int    prec, exp10, nd = 0, o = 0, decpt;
    char  *e, *p;

    if (!isfinite(x)) {
        return -1;
    }
    /* shortest %.*e that reads back as x: the digits Python's repr picks */
    for (prec = 0; prec < 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec, x);
        if (strtod(buf, NULL) == x) {
            break;
        }
    }
    snprintf(buf, sizeof(buf), "%.*e", prec, x);
    e = strchr(buf, 'e');
    exp10 = atoi(e + 1);
    p = buf;
    if (*p == '-') {
        out[o++] = '-';
        p++;
    }
    for (; p < e; p++) {
        if (*p != '.') digits[nd++] = *p;
    }
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';

    /* value = 0.DIGITS x 10^decpt; Python uses exponent form when
     * decpt <= -4 or decpt > 16, else positional with at least ".0" */
    decpt = exp10 + 1;
    if (decpt <= -4 || decpt > 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, (size_t) nd - 1);
            o += nd - 1;
        }
        o += snprintf(out + o, sizeof(out) - (size_t) o, "e%c%02d",
                      exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -decpt; i++) out[o++] = '0';
        memcpy(out + o, digits, (size_t) nd);
        o += nd;
    } else {
        for (int i = 0; i < decpt; i++) out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > decpt) {
            memcpy(out + o, digits + decpt, (size_t) (nd - decpt));
            o += nd - decpt;
        } else {
            out[o++] = '0';
        }
    }
    return dsv4_strbuf_append(b, out, (size_t) o);
}


int
dsv4_pyjson_dump(dsv4_strbuf *b, const json_t *v)
{
    char        num[32];
    const char *key;
    json_t     *val;
    size_t      i;
    int         first = 1;

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        if (dsv4_strbuf_putc(b, '{') != 0) return -1;
        json_object_foreach((json_t *) v, key, val) {
            if ((!first && dsv4_strbuf_append(b, ", ", 2) != 0)
                || dsv4_pyjson_dump_string(b, key, strlen(key)) != 0
                || dsv4_strbuf_append(b, ": ", 2) != 0
                || dsv4_pyjson_dump(b, val) != 0)
            {
                return -1;
            }
            first = 0;
        }
        return dsv4_strbuf_putc(b, '}');
    case JSON_ARRAY:
        if (dsv4_strbuf_putc(b, '[') != 0) return -1;
        json_array_foreach((json_t *) v, i, val) {
            if ((i > 0 && dsv4_strbuf_append(b, ", ", 2) != 0)
                || dsv4_pyjson_dump(b, val) != 0)
            {
                return -1;
            }
        }
        return dsv4_strbuf_putc(b, ']');
    case JSON_STRING:
        return dsv4_pyjson_dump_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return dsv4_strbuf_puts(b, num);
    case JSON_REAL:
        return dsv4_pyjson_dump_real(b, json_real_value(v));
    case JSON_TRUE:
        return dsv4_strbuf_puts(b, "true");
    case JSON_FALSE:
        return dsv4_strbuf_puts(b, "false");
    case JSON_NULL:
        return dsv4_strbuf_puts(b, "null");
    }
    return -1;
}
