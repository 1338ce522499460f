/*
 * Python json.dumps(value, ensure_ascii=False) output for a jansson value.
 *
 * DeepSeek's chat encoder writes tool schemas, response formats and tool
 * arguments into the prompt with Python's json.dumps, so the model was
 * trained on exactly that spelling: ", " and ": " separators, key order as
 * given, non-ASCII characters raw, control characters as lowercase \u00XX,
 * and floats as Python's repr (shortest round-trip digits, exponent form
 * below 1e-4 and from 1e16 up).  jansson's own dumper differs on floats, so
 * this one is used for everything that reaches a prompt.
 */
#ifndef DSV4_PYJSON_H
#define DSV4_PYJSON_H

#include <jansson.h>

#include "strbuf.h"

/* Appends the text of v to b.  0, or -1 on ENOMEM (or a NaN/inf real,
 * which JSON input cannot produce). */
int dsv4_pyjson_dump(dsv4_strbuf *b, const json_t *v);

/* Appends s[0..n) (valid UTF-8) as a JSON string literal. */
int dsv4_pyjson_dump_string(dsv4_strbuf *b, const char *s, size_t n);

/* Appends Python's repr() of a finite double. */
int dsv4_pyjson_dump_real(dsv4_strbuf *b, double x);

#endif
