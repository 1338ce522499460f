/*
 * Incremental output parser; see parse.h for the contract.
 *
 * Text flows through three states.  REASONING and CONTENT keep a small
 * "pend" buffer: the tail that could still become a marker ("</think>", a
 * stop string, the start of a DSML block).  Every decision is made at the
 * earliest start position where a marker matches in full, and only once no
 * marker can still be completing at an earlier position; that is what makes
 * the result independent of how the text was cut into tokens.
 *
 * TOOLS keeps the whole block in "raw" and walks the official grammar with a
 * resumable cursor, so each token costs work proportional to its own length,
 * not to the block's:
 *
 *   <｜DSML｜tool_calls  SEP  ( INVOKE SEP )*  </｜DSML｜tool_calls>
 *   SEP     = ">\n"
 *   INVOKE  = <｜DSML｜invoke  \s* name="NAME">\n  PARAM*  </｜DSML｜invoke
 *   PARAM   = <｜DSML｜parameter  ' name="K" string="true|false">V<'
 *             /｜DSML｜parameter  SEP
 *
 * An invoke becomes one TOOL_CALL event when its closing tag arrives.  A
 * grammar failure sends raw[consumed..] (everything after the last complete
 * invoke) back through CONTENT with DSML detection off.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "parse.h"
#include "pyjson.h"
#include "strbuf.h"

#define DSML_CALLS      "<" DSV4_DSML "tool_calls"
#define DSML_CALLS_NL   "\n\n<" DSV4_DSML "tool_calls"
#define DSML_CALLS_END  "</" DSV4_DSML "tool_calls>"
#define DSML_INVOKE     "<" DSV4_DSML "invoke"
#define DSML_INVOKE_END "</" DSV4_DSML "invoke"
#define DSML_PARAM      "<" DSV4_DSML "parameter"
#define DSML_PARAM_END  "/" DSV4_DSML "parameter"
#define SEP             ">\n"

#define LIT(s)          s, sizeof(s) - 1

enum { S_REASONING, S_CONTENT, S_TOOLS, S_DONE };
enum { TS_SEP, TS_NEXT, TS_HEAD, TS_PBODY, TS_PSEP, TS_PNEXT };
enum { R_OK, R_NEED, R_FAIL, R_END };

/* marker ids in CONTENT: stop strings are 0..n_stop-1 */
#define M_DSML_NL   (-1)
#define M_DSML      (-2)

typedef struct {
    const char *s;
    size_t      n;
    int         id;
} marker;

typedef struct {
    size_t name_off, name_len, val_off, val_len;
    int    is_str;
} param;

typedef struct {
    dsv4_event_type  type;
    size_t           off, len, name_off, name_len;
    int              index;
    dsv4_stop_reason reason;
    int32_t          token;
} ev_rec;

struct dsv4_parser {
    const dsv4_tokenizer *tok;
    dsv4_parse_start      start;
    int                   parse_tools;
    char                **stop;
    size_t               *stop_len;
    size_t                n_stop, cap_stop;
    int32_t               stop_ids[4];
    int                   n_stop_ids;

    dsv4_utf8_stream      utf8;
    int                   state;
    int                   tools_off;     /* after a degraded block */
    int                   stopped;
    size_t                unknown;

    dsv4_strbuf           pend;          /* REASONING / CONTENT tail */
    dsv4_strbuf           raw;           /* TOOLS: the block so far */
    int                   ts;
    size_t                pos;           /* raw: grammar cursor */
    size_t                scan;          /* raw: search cursor in HEAD / PBODY */
    size_t                consumed;      /* raw: end of the last complete invoke */
    size_t                head_start, body_start;
    size_t                name_off, name_len;
    int                   block_calls;
    int                   n_calls;
    param                *params;
    size_t                nparams, capparams;

    marker               *markers;       /* CONTENT markers */
    size_t                nmarkers;

    dsv4_strbuf           tmp;           /* sanitized input, argument JSON */
    dsv4_strbuf           evtext;
    ev_rec               *recs;
    size_t                nrecs, caprecs;
    dsv4_event           *out;
    size_t                capout;
    int                   nomem;
};


/* ---- events -------------------------------------------------------------- */

static ev_rec *
new_rec(dsv4_parser *p)
{
    if (p->nrecs == p->caprecs) {
        size_t  cap = p->caprecs ? p->caprecs * 2 : 8;
        ev_rec *r = realloc(p->recs, cap * sizeof(*r));

        if (r == NULL) {
            p->nomem = 1;
            return NULL;
        }
        p->recs = r;
        p->caprecs = cap;
    }
    memset(&p->recs[p->nrecs], 0, sizeof(ev_rec));
    return &p->recs[p->nrecs++];
}


static void
emit_text(dsv4_parser *p, dsv4_event_type type, const char *s, size_t n)
{
    ev_rec *r;

    if (n == 0) {
        return;
    }
    r = p->nrecs ? &p->recs[p->nrecs - 1] : NULL;
    if (r == NULL || r->type != type || r->off + r->len != p->evtext.len) {
        r = new_rec(p);
        if (r == NULL) return;
        r->type = type;
        r->off = p->evtext.len;
    }
    if (dsv4_strbuf_append(&p->evtext, s, n) != 0) {
        p->nomem = 1;
        return;
    }
    r->len += n;
}


static void
emit_stop(dsv4_parser *p, dsv4_stop_reason reason, int index, int32_t token)
{
    ev_rec *r = new_rec(p);

    if (r == NULL) return;
    r->type = DSV4_EV_STOP;
    r->reason = reason;
    r->index = index;
    r->token = token;
    p->stopped = 1;
    p->state = S_DONE;
}


static void
begin_call(dsv4_parser *p)
{
    p->nrecs = 0;
    dsv4_strbuf_reset(&p->evtext);
}


static int
end_call(dsv4_parser *p, const dsv4_event **ev, size_t *nev)
{
    *ev = NULL;
    *nev = 0;
    if (p->nomem) {
        p->nomem = 0;
        return DSV4_TOK_ENOMEM;
    }
    if (p->nrecs > p->capout) {
        dsv4_event *o = realloc(p->out, p->nrecs * sizeof(*o));

        if (o == NULL) return DSV4_TOK_ENOMEM;
        p->out = o;
        p->capout = p->nrecs;
    }
    /* pointers are fixed up last: evtext may have moved while growing */
    for (size_t i = 0; i < p->nrecs; i++) {
        ev_rec     *r = &p->recs[i];
        dsv4_event *e = &p->out[i];

        memset(e, 0, sizeof(*e));
        e->type = r->type;
        e->text = p->evtext.data ? p->evtext.data + r->off : "";
        e->len = r->len;
        e->name = p->evtext.data ? p->evtext.data + r->name_off : "";
        e->name_len = r->name_len;
        e->index = r->index;
        e->stop_reason = r->reason;
        e->stop_token = r->token;
    }
    *ev = p->out;
    *nev = p->nrecs;
    return 0;
}


/* ---- marker search ----------------------------------------------------------- */

/* Earliest full match (shortest at that position) and earliest position
 * where a marker is a proper prefix running to the end of s. */
static void
find_markers(const char *s, size_t n, const marker *m, size_t nm,
             size_t *fpos, size_t *fk, size_t *ppos)
{
    *fpos = SIZE_MAX;
    *fk = 0;
    *ppos = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < nm; k++) {
            size_t avail = n - i;

            if (s[i] != m[k].s[0]) continue;
            if (avail >= m[k].n) {
                if (memcmp(s + i, m[k].s, m[k].n) == 0
                    && (i < *fpos || m[k].n < m[*fk].n))
                {
                    *fpos = i;
                    *fk = k;
                }
            } else if (*ppos == SIZE_MAX && memcmp(s + i, m[k].s, avail) == 0) {
                *ppos = i;
            }
        }
        if (*fpos != SIZE_MAX) break;
    }
}


/* Drops the first n bytes of b. */
static void
consume(dsv4_strbuf *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}


/* ---- DSML block grammar ------------------------------------------------------ */

static int
expect(dsv4_parser *p, const char *lit, size_t n)
{
    size_t avail = p->raw.len - p->pos;

    if (avail >= n) {
        if (memcmp(p->raw.data + p->pos, lit, n) != 0) return R_FAIL;
        p->pos += n;
        return R_OK;
    }
    return memcmp(p->raw.data + p->pos, lit, avail) == 0 ? R_NEED : R_FAIL;
}


/* Searches raw from the scan cursor for the markers; R_OK with *at / *which
 * set, or R_NEED (the cursor moves to where a marker could still start). */
static int
search(dsv4_parser *p, const marker *m, size_t nm, size_t *at, size_t *which)
{
    size_t fpos, fk, ppos;

    find_markers(p->raw.data + p->scan, p->raw.len - p->scan, m, nm, &fpos, &fk, &ppos);
    if (fpos != SIZE_MAX && (ppos == SIZE_MAX || ppos >= fpos)) {
        *at = p->scan + fpos;
        *which = fk;
        return R_OK;
    }
    p->scan += ppos != SIZE_MAX ? ppos : p->raw.len - p->scan;
    return R_NEED;
}


static int
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}


/* The invoke head between "<｜DSML｜invoke" and its end marker must be
 * \s*name="NAME">\n (NAME may hold anything, as in the official regex). */
static int
parse_head(dsv4_parser *p, size_t from, size_t to)
{
    const char *s = p->raw.data;

    while (from < to && is_space(s[from])) from++;
    if (to - from < sizeof("name=\"\">\n") - 1 || memcmp(s + from, LIT("name=\"")) != 0
        || memcmp(s + to - 3, LIT("\">\n")) != 0)
    {
        return R_FAIL;
    }
    p->name_off = from + 6;
    p->name_len = to - 3 - p->name_off;
    return R_OK;
}


/* A parameter body between "<｜DSML｜parameter" and "/｜DSML｜parameter":
 *  name="K" string="true|false">V<  (K ends at the first string="..."). */
static int
parse_param(dsv4_parser *p, size_t from, size_t to)
{
    const char *s = p->raw.data;
    param       pr = {0, 0, 0, 0, 0};
    size_t      i;
    int         found = 0;

    if (to - from < sizeof(" name=\"\" string=\"true\"><") - 1
        || memcmp(s + from, LIT(" name=\"")) != 0 || s[to - 1] != '<')
    {
        return R_FAIL;
    }
    for (i = from + 7; i < to; i++) {
        if (to - i >= sizeof("\" string=\"true\">") - 1
            && memcmp(s + i, LIT("\" string=\"true\">")) == 0)
        {
            pr.is_str = 1;
            pr.val_off = i + sizeof("\" string=\"true\">") - 1;
            found = 1;
            break;
        }
        if (to - i >= sizeof("\" string=\"false\">") - 1
            && memcmp(s + i, LIT("\" string=\"false\">")) == 0)
        {
            pr.is_str = 0;
            pr.val_off = i + sizeof("\" string=\"false\">") - 1;
            found = 1;
            break;
        }
    }
    if (!found || pr.val_off > to - 1) {
        return R_FAIL;
    }
    pr.name_off = from + 7;
    pr.name_len = i - pr.name_off;
    pr.val_len = to - 1 - pr.val_off;
    for (size_t k = 0; k < p->nparams; k++) {
        if (p->params[k].name_len == pr.name_len
            && memcmp(s + p->params[k].name_off, s + pr.name_off, pr.name_len) == 0)
        {
            return R_FAIL;  /* duplicate parameter name */
        }
    }
    if (p->nparams == p->capparams) {
        size_t cap = p->capparams ? p->capparams * 2 : 8;
        param *np = realloc(p->params, cap * sizeof(*np));

        if (np == NULL) {
            p->nomem = 1;
            return R_FAIL;
        }
        p->params = np;
        p->capparams = cap;
    }
    p->params[p->nparams++] = pr;
    return R_OK;
}


/* The official decode_dsml_to_arguments: {"K": V, ...} with string values
 * JSON-encoded and the others passed through as the JSON they are. */
static int
emit_invoke(dsv4_parser *p)
{
    dsv4_strbuf *b = &p->tmp;
    const char  *s = p->raw.data;
    ev_rec      *r;
    int          rc = 0;

    dsv4_strbuf_reset(b);
    rc |= dsv4_strbuf_putc(b, '{');
    for (size_t k = 0; k < p->nparams; k++) {
        param *pr = &p->params[k];

        if (k > 0) rc |= dsv4_strbuf_append(b, ", ", 2);
        rc |= dsv4_pyjson_dump_string(b, s + pr->name_off, pr->name_len);
        rc |= dsv4_strbuf_append(b, ": ", 2);
        if (pr->is_str) {
            rc |= dsv4_pyjson_dump_string(b, s + pr->val_off, pr->val_len);
        } else {
            json_t *v = json_loadb(s + pr->val_off, pr->val_len, JSON_DECODE_ANY, NULL);

            if (v != NULL) {
                rc |= dsv4_strbuf_append(b, s + pr->val_off, pr->val_len);
            } else {
                rc |= dsv4_pyjson_dump_string(b, s + pr->val_off, pr->val_len);
            }
            json_decref(v);
        }
    }
    rc |= dsv4_strbuf_putc(b, '}');
    if (rc != 0) {
        p->nomem = 1;
        return -1;
    }

    r = new_rec(p);
    if (r == NULL) return -1;
    r->type = DSV4_EV_TOOL_CALL;
    r->index = p->n_calls++;
    r->name_off = p->evtext.len;
    r->name_len = p->name_len;
    if (dsv4_strbuf_append(&p->evtext, s + p->name_off, p->name_len) != 0) {
        p->nomem = 1;
        return -1;
    }
    r->off = p->evtext.len;
    r->len = b->len;
    if (dsv4_strbuf_append(&p->evtext, b->data, b->len) != 0) {
        p->nomem = 1;
        return -1;
    }
    p->nparams = 0;
    return 0;
}


/* Advances the grammar over raw as far as the text allows. */
static int
run_tools(dsv4_parser *p)
{
    static const marker head_end[] = {{LIT(DSML_PARAM), 0}, {LIT(DSML_INVOKE_END), 1}};
    static const marker body_end[] = {{LIT(DSML_PARAM_END), 0}};
    size_t at, which;
    int    rc, rc2;

    for (;;) {
        switch (p->ts) {
        case TS_SEP:
            if ((rc = expect(p, LIT(SEP))) != R_OK) return rc;
            /* after a complete invoke, its separator is spent too */
            if (p->block_calls > 0) p->consumed = p->pos;
            p->ts = TS_NEXT;
            break;

        case TS_NEXT:
            rc = expect(p, LIT(DSML_INVOKE));
            if (rc == R_OK) {
                p->head_start = p->scan = p->pos;
                p->ts = TS_HEAD;
                break;
            }
            rc2 = expect(p, LIT(DSML_CALLS_END));
            if (rc2 == R_OK) return R_END;
            if (rc == R_FAIL && rc2 == R_FAIL) return R_FAIL;
            return R_NEED;

        case TS_HEAD:
            if ((rc = search(p, head_end, 2, &at, &which)) != R_OK) return rc;
            if (parse_head(p, p->head_start, at) != R_OK) return R_FAIL;
            p->nparams = 0;
            p->pos = at + head_end[which].n;
            if (which == 0) {
                p->body_start = p->scan = p->pos;
                p->ts = TS_PBODY;
            } else {
                goto invoke_end;
            }
            break;

        case TS_PBODY:
            if ((rc = search(p, body_end, 1, &at, &which)) != R_OK) return rc;
            if (parse_param(p, p->body_start, at) != R_OK) return R_FAIL;
            p->pos = at + body_end[0].n;
            p->ts = TS_PSEP;
            break;

        case TS_PSEP:
            if ((rc = expect(p, LIT(SEP))) != R_OK) return rc;
            p->ts = TS_PNEXT;
            break;

        case TS_PNEXT:
            rc = expect(p, LIT(DSML_PARAM));
            if (rc == R_OK) {
                p->body_start = p->scan = p->pos;
                p->ts = TS_PBODY;
                break;
            }
            rc2 = expect(p, LIT(DSML_INVOKE_END));
            if (rc2 == R_OK) goto invoke_end;
            if (rc == R_FAIL && rc2 == R_FAIL) return R_FAIL;
            return R_NEED;
        }
        continue;

    invoke_end:
        if (emit_invoke(p) != 0) return R_FAIL;
        p->block_calls++;
        p->consumed = p->pos;
        p->ts = TS_SEP;
    }
}


/* ---- the text states ----------------------------------------------------------- */

static void
enter_tools(dsv4_parser *p, size_t at, const marker *m)
{
    dsv4_strbuf_reset(&p->raw);
    if (dsv4_strbuf_append(&p->raw, p->pend.data + at, p->pend.len - at) != 0) {
        p->nomem = 1;
    }
    dsv4_strbuf_reset(&p->pend);
    p->state = S_TOOLS;
    p->pos = m->n;
    p->consumed = 0;
    p->block_calls = 0;
    p->nparams = 0;
    p->ts = TS_SEP;
}


/* Sends raw[consumed..] back through CONTENT with DSML detection off. */
static void
degrade(dsv4_parser *p)
{
    dsv4_strbuf_reset(&p->pend);
    if (dsv4_strbuf_append(&p->pend, p->raw.data + p->consumed, p->raw.len - p->consumed) != 0) {
        p->nomem = 1;
    }
    dsv4_strbuf_reset(&p->raw);
    p->tools_off = 1;
    p->nmarkers = p->n_stop;
    p->state = S_CONTENT;
}


static void
run(dsv4_parser *p)
{
    static const marker think_end[] = {{LIT(DSV4_THINK_END), 0}};
    size_t fpos, fk, ppos;

    while (!p->nomem) {
        switch (p->state) {
        case S_REASONING:
            find_markers(p->pend.data, p->pend.len, think_end, 1, &fpos, &fk, &ppos);
            if (fpos != SIZE_MAX) {
                emit_text(p, DSV4_EV_REASONING, p->pend.data, fpos);
                consume(&p->pend, fpos + think_end[0].n);
                p->state = S_CONTENT;
                continue;
            }
            if (ppos == SIZE_MAX) ppos = p->pend.len;
            emit_text(p, DSV4_EV_REASONING, p->pend.data, ppos);
            consume(&p->pend, ppos);
            return;

        case S_CONTENT:
            find_markers(p->pend.data, p->pend.len, p->markers, p->nmarkers, &fpos, &fk, &ppos);
            if (fpos != SIZE_MAX && (ppos == SIZE_MAX || ppos >= fpos)) {
                const marker *m = &p->markers[fk];

                emit_text(p, DSV4_EV_CONTENT, p->pend.data, fpos);
                if (m->id >= 0) {
                    dsv4_strbuf_reset(&p->pend);
                    emit_stop(p, DSV4_STOP_STRING, m->id, -1);
                    return;
                }
                enter_tools(p, fpos, m);
                continue;
            }
            if (ppos == SIZE_MAX) ppos = p->pend.len;
            emit_text(p, DSV4_EV_CONTENT, p->pend.data, ppos);
            consume(&p->pend, ppos);
            return;

        case S_TOOLS:
            switch (run_tools(p)) {
            case R_NEED:
                return;
            case R_END:
                /* the rest after the block is content again */
                dsv4_strbuf_reset(&p->pend);
                if (dsv4_strbuf_append(&p->pend, p->raw.data + p->pos, p->raw.len - p->pos) != 0) {
                    p->nomem = 1;
                }
                dsv4_strbuf_reset(&p->raw);
                p->state = S_CONTENT;
                continue;
            default:
                degrade(p);
                continue;
            }

        default:
            return;
        }
    }
}


static void
append_text(dsv4_parser *p, const char *s, size_t n)
{
    dsv4_strbuf *dst = p->state == S_TOOLS ? &p->raw : &p->pend;

    if (p->state == S_DONE) {
        return;
    }
    if (dsv4_strbuf_append(dst, s, n) != 0) {
        p->nomem = 1;
    }
}


/* Ends the text: what was held back is emitted, an open block degrades. */
static void
finish_text(dsv4_parser *p)
{
    char   fffd[4];
    size_t k = dsv4_utf8_stream_flush(&p->utf8, fffd);

    append_text(p, fffd, k);
    run(p);
    if (p->state == S_TOOLS) {
        degrade(p);
        run(p);
    }
    if (p->state == S_REASONING) {
        emit_text(p, DSV4_EV_REASONING, p->pend.data, p->pend.len);
    } else if (p->state == S_CONTENT) {
        emit_text(p, DSV4_EV_CONTENT, p->pend.data, p->pend.len);
    }
    dsv4_strbuf_reset(&p->pend);
    p->state = S_DONE;
}


/* ---- public ---------------------------------------------------------------------- */

static int
set_options(dsv4_parser *p, const dsv4_parser_options *opt)
{
    static const char *const stop_names[] = {DSV4_EOS, DSV4_USER, DSV4_ASSISTANT, DSV4_REMINDER};

    for (size_t i = 0; i < p->n_stop; i++) free(p->stop[i]);
    p->n_stop = 0;
    p->nmarkers = 0;
    for (size_t i = 0; i < opt->n_stop; i++) {
        size_t len = strlen(opt->stop[i]);

        if (dsv4_utf8_valid_prefix(opt->stop[i], len) != len) {
            return -1;
        }
    }
    if (p->markers == NULL || opt->n_stop > p->cap_stop) {
        char  **s = realloc(p->stop, (opt->n_stop + 1) * sizeof(*s));
        size_t *l;
        marker *m;

        if (s == NULL) return -1;
        p->stop = s;
        l = realloc(p->stop_len, (opt->n_stop + 1) * sizeof(*l));
        if (l == NULL) return -1;
        p->stop_len = l;
        m = realloc(p->markers, (opt->n_stop + 2) * sizeof(*m));
        if (m == NULL) return -1;
        p->markers = m;
        p->cap_stop = opt->n_stop;
    }
    for (size_t i = 0; i < opt->n_stop; i++) {
        size_t len = strlen(opt->stop[i]);

        if (len == 0) continue;     /* an empty stop string matches nothing */
        p->stop[p->n_stop] = malloc(len + 1);
        if (p->stop[p->n_stop] == NULL) return -1;
        memcpy(p->stop[p->n_stop], opt->stop[i], len + 1);
        p->stop_len[p->n_stop] = len;
        p->markers[p->n_stop] = (marker) {p->stop[p->n_stop], len, (int) i};
        p->n_stop++;
    }
    p->nmarkers = p->n_stop;
    p->parse_tools = opt->parse_tools && opt->start != DSV4_PARSE_RAW;
    if (p->parse_tools) {
        p->markers[p->nmarkers++] = (marker) {LIT(DSML_CALLS_NL), M_DSML_NL};
        p->markers[p->nmarkers++] = (marker) {LIT(DSML_CALLS), M_DSML};
    }

    p->start = opt->start;
    p->n_stop_ids = 0;
    for (size_t i = 0; i < 4; i++) {
        int32_t id = dsv4_tokenizer_token_id(p->tok, stop_names[i], strlen(stop_names[i]));

        if (id >= 0) p->stop_ids[p->n_stop_ids++] = id;
    }
    dsv4_utf8_stream_init(&p->utf8);
    p->state = opt->start == DSV4_PARSE_REASONING ? S_REASONING : S_CONTENT;
    p->tools_off = 0;
    p->stopped = 0;
    p->unknown = 0;
    p->n_calls = 0;
    p->nparams = 0;
    p->nomem = 0;
    dsv4_strbuf_reset(&p->pend);
    dsv4_strbuf_reset(&p->raw);
    return 0;
}


dsv4_parser *
dsv4_parser_new(const dsv4_tokenizer *tok, const dsv4_parser_options *opt)
{
    dsv4_parser *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        return NULL;
    }
    p->tok = tok;
    if (set_options(p, opt) != 0) {
        dsv4_parser_free(p);
        return NULL;
    }
    return p;
}


int
dsv4_parser_reset(dsv4_parser *p, const dsv4_parser_options *opt)
{
    return set_options(p, opt);
}


void
dsv4_parser_free(dsv4_parser *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t i = 0; i < p->n_stop; i++) free(p->stop[i]);
    free(p->stop);
    free(p->stop_len);
    free(p->markers);
    free(p->params);
    free(p->recs);
    free(p->out);
    dsv4_strbuf_free(&p->pend);
    dsv4_strbuf_free(&p->raw);
    dsv4_strbuf_free(&p->tmp);
    dsv4_strbuf_free(&p->evtext);
    free(p);
}


static void
push_bytes(dsv4_parser *p, const char *s, size_t n)
{
    /* sanitize in bounded slices so tmp stays small for huge inputs */
    while (n > 0 && !p->nomem) {
        size_t k = n < 4096 ? n : 4096;

        dsv4_strbuf_reset(&p->tmp);
        if (dsv4_strbuf_reserve(&p->tmp, 3 * (k + 3)) != 0) {
            p->nomem = 1;
            return;
        }
        p->tmp.len = dsv4_utf8_stream_push(&p->utf8, s, k, p->tmp.data);
        append_text(p, p->tmp.data, p->tmp.len);
        run(p);
        s += k;
        n -= k;
    }
}


int
dsv4_parser_feed_text(dsv4_parser *p, const char *s, size_t n,
                      const dsv4_event **ev, size_t *nev)
{
    begin_call(p);
    if (p->state != S_DONE) {
        push_bytes(p, s, n);
    }
    return end_call(p, ev, nev);
}


int
dsv4_parser_feed(dsv4_parser *p, int32_t id, const dsv4_event **ev, size_t *nev)
{
    const char *s;
    size_t      n;

    begin_call(p);
    if (p->state == S_DONE) {
        return end_call(p, ev, nev);
    }
    for (int i = 0; i < p->n_stop_ids; i++) {
        if (id == p->stop_ids[i]) {
            finish_text(p);
            if (!p->stopped) {
                emit_stop(p, DSV4_STOP_TOKEN, -1, id);
            }
            return end_call(p, ev, nev);
        }
    }
    s = dsv4_tokenizer_token_bytes(p->tok, id, &n);
    if (s == NULL) {
        p->unknown++;
        return end_call(p, ev, nev);
    }
    if (dsv4_tokenizer_is_added(p->tok, id)) {
        /* as in decoding: an added token ends a pending byte fragment */
        char   fffd[4];
        size_t k = dsv4_utf8_stream_flush(&p->utf8, fffd);

        append_text(p, fffd, k);
        append_text(p, s, n);
        run(p);
    } else {
        push_bytes(p, s, n);
    }
    return end_call(p, ev, nev);
}


int
dsv4_parser_finish(dsv4_parser *p, const dsv4_event **ev, size_t *nev)
{
    begin_call(p);
    if (p->state != S_DONE) {
        finish_text(p);
    }
    return end_call(p, ev, nev);
}


int
dsv4_parser_stopped(const dsv4_parser *p)
{
    return p->stopped;
}


size_t
dsv4_parser_unknown_ids(const dsv4_parser *p)
{
    return p->unknown;
}
