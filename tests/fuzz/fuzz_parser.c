/*
 * libFuzzer target: the incremental output parser.
 *
 * The input picks options (start state, tools, up to two stop strings cut
 * from the input), a completion text, and cut points.  The text is parsed
 * once whole and once cut into pieces (plus, separately, token by token);
 * the two must agree exactly, every emitted text must be valid UTF-8, events
 * must be well-formed, and nothing may follow a stop.  abort() = a finding.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "strbuf.h"
#include "tokenizer.h"

static dsv4_tokenizer *tok;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("DSV4_FUZZ_TOKENIZER");
    char        err[512];

    (void) argc;
    (void) argv;
    if (dir == NULL || dsv4_tokenizer_load(dir, &tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_parser: set DSV4_FUZZ_TOKENIZER to a tokenizer dir\n");
        abort();
    }
    return 0;
}

typedef struct {
    dsv4_strbuf all;    /* a canonical transcript of the events */
    int         stopped;
    int         calls;
} transcript;


static void
record(transcript *t, const dsv4_event *ev, size_t n)
{
    char head[64];

    for (size_t i = 0; i < n; i++) {
        const dsv4_event *e = &ev[i];

        if (t->stopped) abort();
        switch (e->type) {
        case DSV4_EV_REASONING:
        case DSV4_EV_CONTENT:
            if (e->len == 0 || dsv4_utf8_valid_prefix(e->text, e->len) != e->len) abort();
            /* adjacent deltas of one kind concatenate: record per byte run */
            snprintf(head, sizeof(head), "%c", e->type == DSV4_EV_REASONING ? 'R' : 'C');
            for (size_t k = 0; k < e->len; k++) {
                dsv4_strbuf_append(&t->all, head, 1);
                dsv4_strbuf_append(&t->all, e->text + k, 1);
            }
            break;
        case DSV4_EV_TOOL_CALL:
            if (e->index != t->calls++) abort();
            if (dsv4_utf8_valid_prefix(e->name, e->name_len) != e->name_len) abort();
            if (dsv4_utf8_valid_prefix(e->text, e->len) != e->len) abort();
            snprintf(head, sizeof(head), "T%zu:%zu:", e->name_len, e->len);
            dsv4_strbuf_puts(&t->all, head);
            dsv4_strbuf_append(&t->all, e->name, e->name_len);
            dsv4_strbuf_append(&t->all, e->text, e->len);
            break;
        case DSV4_EV_STOP:
            snprintf(head, sizeof(head), "S%d:%d:%d", e->stop_reason, e->index, e->stop_token);
            dsv4_strbuf_puts(&t->all, head);
            t->stopped = 1;
            break;
        default:
            abort();
        }
    }
}


static void
run(dsv4_parser *p, const dsv4_parser_options *o, const char *text, size_t n, const uint8_t *cuts,
    size_t ncuts, int end_eos, transcript *t)
{
    const dsv4_event *ev;
    size_t            nev, at = 0;

    memset(t, 0, sizeof(*t));
    if (dsv4_parser_reset(p, o) != 0) abort();
    for (size_t i = 0; i <= ncuts && at < n; i++) {
        size_t step = i < ncuts ? 1 + cuts[i] % 16 : n - at;

        if (step > n - at) step = n - at;
        if (dsv4_parser_feed_text(p, text + at, step, &ev, &nev) != 0) abort();
        record(t, ev, nev);
        at += step;
    }
    if (at < n) {
        if (dsv4_parser_feed_text(p, text + at, n - at, &ev, &nev) != 0) abort();
        record(t, ev, nev);
    }
    if (end_eos) {
        dsv4_parser_feed(p, dsv4_tokenizer_eos_id(tok), &ev, &nev);
    } else {
        dsv4_parser_finish(p, &ev, &nev);
    }
    record(t, ev, nev);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsv4_parser_options o;
    char                stop[2][9];
    const char         *stops[2] = {stop[0], stop[1]};
    transcript          a, b;
    dsv4_parser        *p;
    size_t              ns, ncuts, n;
    const char         *text;

    if (size < 11) return 0;
    o.start = (dsv4_parse_start) (data[0] % 3);
    o.parse_tools = (data[0] >> 2) & 1;
    ns = (data[0] >> 3) % 3;
    /* stop strings: up to 8 bytes each, kept only if valid UTF-8 */
    for (size_t i = 0; i < 2; i++) {
        size_t l = data[1 + i] % 5;

        memcpy(stop[i], data + 3 + 4 * i, 4);
        stop[i][l] = '\0';
        if (dsv4_utf8_valid_prefix(stop[i], l) != l) stop[i][0] = '\0';
    }
    o.stop = stops;
    o.n_stop = ns;
    ncuts = data[2] % 32;
    if (size < 11 + ncuts) return 0;
    text = (const char *) data + 11 + ncuts;
    n = size - 11 - ncuts;

    p = dsv4_parser_new(tok, &o);
    if (p == NULL) abort();
    run(p, &o, text, n, NULL, 0, data[0] >> 7, &a);
    run(p, &o, text, n, data + 11, ncuts, data[0] >> 7, &b);
    if (a.all.len != b.all.len || (a.all.len && memcmp(a.all.data, b.all.data, a.all.len) != 0)) abort();

    /* and token by token, when the text is valid UTF-8 (it then encodes);
     * unless it spells a stop token (which encodes to the id and stops),
     * the transcript must be the same again */
    if (dsv4_utf8_valid_prefix(text, n) == n) {
        static const char *const stop_spellings[] = {
            "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
            "<\xef\xbd\x9cUser\xef\xbd\x9c>", "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
            "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>"};
        int32_t          *ids;
        size_t            k, nev;
        const dsv4_event *ev;
        transcript        c;
        int               spelled = 0;

        for (int i = 0; i < 4; i++) {
            spelled |= memmem(text, n, stop_spellings[i], strlen(stop_spellings[i])) != NULL;
        }
        if (dsv4_tokenizer_encode_alloc(tok, text, n, &ids, &k) != DSV4_TOK_OK) abort();
        memset(&c, 0, sizeof(c));
        dsv4_parser_reset(p, &o);
        for (size_t i = 0; i < k; i++) {
            dsv4_parser_feed(p, ids[i], &ev, &nev);
            record(&c, ev, nev);
        }
        if (data[0] >> 7) {
            dsv4_parser_feed(p, dsv4_tokenizer_eos_id(tok), &ev, &nev);
        } else {
            dsv4_parser_finish(p, &ev, &nev);
        }
        record(&c, ev, nev);
        if (!spelled && (c.all.len != a.all.len
                         || (a.all.len && memcmp(a.all.data, c.all.data, a.all.len) != 0))) abort();
        dsv4_strbuf_free(&c.all);
        free(ids);
    }
    dsv4_strbuf_free(&a.all);
    dsv4_strbuf_free(&b.all);
    dsv4_parser_free(p);
    return 0;
}
