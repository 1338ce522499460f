/*
 * Constrained decoding; see constrain.h for the contract.
 *
 * A grammar is a small tree of nodes; a state is a stack of frames, one per
 * node being matched, advanced one byte at a time by step().  Frames that
 * can end without a closing byte (free strings in DSML, numbers, enum
 * alternatives that prefix one another) end lazily: the byte that does not
 * fit them is fed to their parent.
 */
#define _GNU_SOURCE             /* qsort_r */

#include "constrain.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "strbuf.h"
#include "util.h"

#define MAX_FRAMES   32
#define MAX_TOKLEN   256        /* longer tokens are never allowed */
#define MAX_ALTS     64         /* alternatives of one choice (a mask bit each) */
#define MAX_PROPS    16         /* properties of a typed object */
#define MAX_FRAC     4          /* digits of a fraction */

enum { N_LIT, N_SEQ, N_CHOICE, N_STR, N_NUM, N_JVAL, N_OBJ, N_ARR };

typedef struct {
    int kind;
    int off, len;       /* LIT: bytes; SEQ: kids; CHOICE: (literal, next) pairs */
    int flag;           /* STR: quoted JSON string; NUM: integer only */
    int max;            /* STR: bytes; JVAL / OBJ / ARR: depth */
    int item;           /* ARR: item node; OBJ: member value node */
} node;

struct dsv4_grammar {
    atomic_int  refs;
    node       *nodes;
    int         nnodes, cap;
    int        *kids;
    int         nkids, kcap;
    dsv4_strbuf bytes;
    int         oom;
    int         root;
    int         jval[DSV4_GRAMMAR_MAX_DEPTH + 1];
    int         jobj[DSV4_GRAMMAR_MAX_DEPTH + 1];   /* generic, depth >= 1 */
    int         jarr[DSV4_GRAMMAR_MAX_DEPTH + 1];
    int         jstr, jnum, jint, jlit, jbool;
};

typedef struct {
    int      node;
    int      a, b, c;   /* per kind: offset / count, phase, UTF-8 bytes due */
    uint64_t mask;      /* CHOICE: viable alternatives; STR: next byte range */
} frame;

typedef struct {
    int   n;
    frame f[MAX_FRAMES];
} state;

struct dsv4_vocab_index {
    int            vocab;
    int            n;           /* tokens in the walk */
    int32_t       *ids;         /* [n] sorted by bytes */
    uint16_t      *lcp;         /* [n] common prefix with the previous one */
    const char   **bytes;       /* [vocab] NULL: never allowed */
    uint16_t      *len;         /* [vocab] */
    uint8_t       *added;       /* [vocab] an added token (forced text only) */
};

struct dsv4_constraint {
    dsv4_grammar           *g;
    const dsv4_vocab_index *vi;
    int32_t                 eos;
    state                   st;
    state                  *walk;       /* [MAX_TOKLEN + 1] */
    uint8_t                *allow;      /* [vocab] */
};

/* ---- vocabulary index ------------------------------------------------------ */

static int
cmp_tokens(const void *x, const void *y, void *arg)
{
    const dsv4_vocab_index *vi = arg;
    int32_t a = *(const int32_t *) x, b = *(const int32_t *) y;
    size_t  la = vi->len[a], lb = vi->len[b];
    int     r = memcmp(vi->bytes[a], vi->bytes[b], la < lb ? la : lb);

    if (r != 0) return r;
    return la < lb ? -1 : la > lb;
}

dsv4_vocab_index *
dsv4_vocab_index_new(const dsv4_tokenizer *tok, int vocab)
{
    dsv4_vocab_index *vi = calloc(1, sizeof(*vi));
    int32_t           nid = dsv4_tokenizer_n_ids(tok);

    if (vi == NULL) return NULL;
    vi->vocab = vocab;
    vi->ids = malloc((size_t) vocab * sizeof(*vi->ids));
    vi->lcp = malloc((size_t) vocab * sizeof(*vi->lcp));
    vi->bytes = calloc((size_t) vocab, sizeof(*vi->bytes));
    vi->len = calloc((size_t) vocab, sizeof(*vi->len));
    vi->added = calloc((size_t) vocab, sizeof(*vi->added));
    if (vi->ids == NULL || vi->lcp == NULL || vi->bytes == NULL || vi->len == NULL
        || vi->added == NULL)
    {
        dsv4_vocab_index_free(vi);
        return NULL;
    }
    for (int32_t id = 0; id < vocab && id < nid; id++) {
        size_t      n;
        const char *s = dsv4_tokenizer_token_bytes(tok, id, &n);

        if (s == NULL || n == 0 || n > MAX_TOKLEN) {
            continue;
        }
        vi->added[id] = (uint8_t) dsv4_tokenizer_is_added(tok, id);
        vi->bytes[id] = s;
        vi->len[id] = (uint16_t) n;
        vi->ids[vi->n++] = id;
    }
    qsort_r(vi->ids, (size_t) vi->n, sizeof(*vi->ids), cmp_tokens, vi);
    for (int i = 0; i < vi->n; i++) {
        int a = i ? vi->ids[i - 1] : -1, b = vi->ids[i], k = 0;

        while (a >= 0 && k < vi->len[a] && k < vi->len[b] && vi->bytes[a][k] == vi->bytes[b][k]) {
            k++;
        }
        vi->lcp[i] = (uint16_t) k;
    }
    return vi;
}

void
dsv4_vocab_index_free(dsv4_vocab_index *vi)
{
    if (vi == NULL) return;
    free(vi->ids);
    free(vi->lcp);
    free(vi->bytes);
    free(vi->len);
    free(vi->added);
    free(vi);
}

/* ---- grammar construction --------------------------------------------------- */

static int
add_node(dsv4_grammar *g, int kind, int off, int len, int flag, int max, int item)
{
    if (g->nnodes == g->cap) {
        int   cap = g->cap ? g->cap * 2 : 32;
        node *nn = realloc(g->nodes, (size_t) cap * sizeof(*nn));

        if (nn == NULL) {
            g->oom = 1;
            return -1;
        }
        g->nodes = nn;
        g->cap = cap;
    }
    g->nodes[g->nnodes] = (node) { kind, off, len, flag, max, item };
    return g->nnodes++;
}

static int
add_lit(dsv4_grammar *g, const char *s, size_t n)
{
    int off = (int) g->bytes.len;

    if (dsv4_strbuf_append(&g->bytes, s, n) != 0) {
        g->oom = 1;
        return -1;
    }
    return add_node(g, N_LIT, off, (int) n, 0, 0, 0);
}

static int
add_kids(dsv4_grammar *g, const int *k, int n)
{
    if (g->nkids + n > g->kcap) {
        int  cap = g->kcap ? g->kcap : 32;
        int *nk;

        while (cap < g->nkids + n) cap *= 2;
        nk = realloc(g->kids, (size_t) cap * sizeof(*nk));
        if (nk == NULL) {
            g->oom = 1;
            return -1;
        }
        g->kids = nk;
        g->kcap = cap;
    }
    memcpy(g->kids + g->nkids, k, (size_t) n * sizeof(*k));
    g->nkids += n;
    return g->nkids - n;
}

/* A sequence being built: adjacent literal text is merged into one literal,
 * so a fixed run is forced with the longest tokens that fit it. */
typedef struct {
    dsv4_grammar *g;
    dsv4_strbuf   text;
    int           kids[2 * MAX_PROPS + 8];
    int           n;
} seqb;

static void
seq_flush(seqb *sb)
{
    if (sb->text.len == 0) return;
    if (sb->n < (int) (sizeof(sb->kids) / sizeof(sb->kids[0]))) {
        sb->kids[sb->n++] = add_lit(sb->g, sb->text.data, sb->text.len);
    } else {
        sb->g->oom = 1;
    }
    dsv4_strbuf_reset(&sb->text);
}

static void
seq_text(seqb *sb, const char *s)
{
    if (dsv4_strbuf_puts(&sb->text, s) != 0) sb->g->oom = 1;
}

static void
seq_node(seqb *sb, int k)
{
    seq_flush(sb);
    if (sb->n < (int) (sizeof(sb->kids) / sizeof(sb->kids[0]))) {
        sb->kids[sb->n++] = k;
    } else {
        sb->g->oom = 1;
    }
}

static int
seq_end(seqb *sb)
{
    int off;

    seq_flush(sb);
    dsv4_strbuf_free(&sb->text);
    for (int i = 0; i < sb->n; i++) {
        if (sb->kids[i] < 0) return -1;
    }
    off = add_kids(sb->g, sb->kids, sb->n);
    return off < 0 ? -1 : add_node(sb->g, N_SEQ, off, sb->n, 0, 0, 0);
}

/* A choice among n literals; next[i] (or -1) follows alternative i. */
static int
add_choice(dsv4_grammar *g, const char **alts, const int *next, int n)
{
    int pairs[2 * MAX_ALTS], off;

    if (n < 1 || n > MAX_ALTS) return -1;
    for (int i = 0; i < n; i++) {
        pairs[2 * i] = add_lit(g, alts[i], strlen(alts[i]));
        pairs[2 * i + 1] = next ? next[i] : -1;
        if (pairs[2 * i] < 0) return -1;
    }
    off = add_kids(g, pairs, 2 * n);
    return off < 0 ? -1 : add_node(g, N_CHOICE, off, n, 0, 0, 0);
}

static dsv4_grammar *
grammar_new(void)
{
    static const char *lits[] = { "true", "false", "null" };
    dsv4_grammar      *g = calloc(1, sizeof(*g));

    if (g == NULL) return NULL;
    atomic_init(&g->refs, 1);
    g->jstr = add_node(g, N_STR, 0, 0, 1, DSV4_GRAMMAR_MAX_STR, 0);
    g->jnum = add_node(g, N_NUM, 0, 0, 0, 0, 0);
    g->jint = add_node(g, N_NUM, 0, 0, 1, 0, 0);
    g->jlit = add_choice(g, lits, NULL, 3);
    g->jbool = add_choice(g, lits, NULL, 2);
    for (int d = 0; d <= DSV4_GRAMMAR_MAX_DEPTH; d++) {
        g->jval[d] = add_node(g, N_JVAL, 0, 0, 0, d, 0);
        if (d > 0) {
            g->jobj[d] = add_node(g, N_OBJ, 0, 0, 0, d, g->jval[d - 1]);
            g->jarr[d] = add_node(g, N_ARR, 0, 0, 0, d, g->jval[d - 1]);
        }
    }
    if (g->oom) {
        dsv4_grammar_unref(g);
        return NULL;
    }
    return g;
}

static char *
json_text(json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* A JSON value following schema (the subset in constrain.h). */
static int
value_node(dsv4_grammar *g, json_t *sch, int depth)
{
    json_t     *t, *en, *props, *req, *v;
    const char *type = NULL, *key;
    size_t      i;

    if (!json_is_object(sch)) {
        return g->jval[depth];
    }
    en = json_object_get(sch, "enum");
    if (json_is_array(en) && json_array_size(en) > 0 && json_array_size(en) <= MAX_ALTS) {
        const char *alts[MAX_ALTS];
        char       *txt[MAX_ALTS];
        int         n = (int) json_array_size(en), k;

        for (k = 0; k < n; k++) {
            txt[k] = json_text(json_array_get(en, (size_t) k));
            alts[k] = txt[k];
            if (txt[k] == NULL || strchr(txt[k], '<') != NULL) break;
        }
        int c = k == n ? add_choice(g, alts, NULL, n) : -2;
        for (int j = 0; j <= k && j < n; j++) free(txt[j]);
        if (c != -2) return c;
    }
    t = json_object_get(sch, "type");
    if (json_is_array(t)) {             /* ["string", "null"]: the first non-null */
        json_array_foreach(t, i, v) {
            if (json_is_string(v) && strcmp(json_string_value(v), "null") != 0) {
                type = json_string_value(v);
                break;
            }
        }
    } else if (json_is_string(t)) {
        type = json_string_value(t);
    }
    if (type == NULL) return g->jval[depth];
    if (strcmp(type, "string") == 0) return g->jstr;
    if (strcmp(type, "integer") == 0) return g->jint;
    if (strcmp(type, "number") == 0) return g->jnum;
    if (strcmp(type, "boolean") == 0) return g->jbool;
    if (strcmp(type, "null") == 0) return add_lit(g, "null", 4);
    if (strcmp(type, "array") == 0) {
        if (depth == 0) return add_lit(g, "[]", 2);
        return add_node(g, N_ARR, 0, 0, 0, depth,
                        value_node(g, json_object_get(sch, "items"), depth - 1));
    }
    if (strcmp(type, "object") != 0) return g->jval[depth];

    props = json_object_get(sch, "properties");
    if (!json_is_object(props) || json_object_size(props) == 0) {
        return depth ? g->jobj[depth] : add_lit(g, "{}", 2);
    }

    /* the required properties in declared order; all of them if none is */
    seqb sb = { g, DSV4_STRBUF_INIT, {0}, 0 };
    int  any = 0, nreq = 0;

    req = json_object_get(sch, "required");
    json_object_foreach(props, key, v) {
        int    wanted = 1;
        json_t *r;

        if (json_is_array(req) && json_array_size(req) > 0) {
            wanted = 0;
            json_array_foreach(req, i, r) {
                if (json_is_string(r) && strcmp(json_string_value(r), key) == 0) wanted = 1;
            }
        }
        if (!wanted || nreq == MAX_PROPS) continue;
        nreq++;

        json_t *ks = json_string(key);
        char   *kt = ks ? json_text(ks) : NULL;

        json_decref(ks);
        if (kt == NULL) {
            g->oom = 1;
            break;
        }
        seq_text(&sb, any ? "," : "{");
        seq_text(&sb, kt);
        seq_text(&sb, ":");
        free(kt);
        seq_node(&sb, value_node(g, v, depth ? depth - 1 : 0));
        any = 1;
    }
    seq_text(&sb, any ? "}" : "{}");
    return seq_end(&sb);
}

static dsv4_grammar *
grammar_done(dsv4_grammar *g, int root, char *err, size_t errlen)
{
    if (root < 0 || g->oom) {
        dsv4_error(err, errlen, "out of memory for the output grammar");
        dsv4_grammar_unref(g);
        return NULL;
    }
    g->root = root;
    return g;
}

dsv4_grammar *
dsv4_grammar_json(json_t *schema, int think_close, char *err, size_t errlen)
{
    dsv4_grammar *g = grammar_new();
    json_t       *t = json_object_get(schema, "type");
    seqb          sb;
    int           v;

    if (g == NULL) return grammar_done(NULL, -1, err, errlen);
    /* the top level is an object: a typed one when the schema says so */
    if (json_is_string(t) && strcmp(json_string_value(t), "object") == 0) {
        v = value_node(g, schema, DSV4_GRAMMAR_MAX_DEPTH);
    } else {
        v = g->jobj[DSV4_GRAMMAR_MAX_DEPTH];
    }
    sb = (seqb) { g, DSV4_STRBUF_INIT, {0}, 0 };
    if (think_close) seq_text(&sb, "</think>");
    seq_node(&sb, v);
    return grammar_done(g, seq_end(&sb), err, errlen);
}

/* One parameter: string-typed values raw (string="true"), others as JSON. */
static void
dsml_param(seqb *sb, const char *key, json_t *sch)
{
    dsv4_grammar *g = sb->g;
    json_t       *t = json_object_get(sch, "type");
    int           raw = json_is_string(t) && strcmp(json_string_value(t), "string") == 0;
    json_t       *en = json_object_get(sch, "enum");

    seq_text(sb, "<" DSV4_DSML "parameter name=\"");
    seq_text(sb, key);
    seq_text(sb, raw ? "\" string=\"true\">" : "\" string=\"false\">");
    if (!raw) {
        seq_node(sb, value_node(g, sch, DSV4_GRAMMAR_MAX_DEPTH - 1));
    } else if (json_is_array(en) && json_array_size(en) > 0 && json_array_size(en) <= MAX_ALTS) {
        const char *alts[MAX_ALTS];
        size_t      i, n = json_array_size(en);

        for (i = 0; i < n; i++) {
            alts[i] = json_string_value(json_array_get(en, i));
            if (alts[i] == NULL || strchr(alts[i], '<') != NULL) break;
        }
        seq_node(sb, i == n ? add_choice(g, alts, NULL, (int) n)
                            : add_node(g, N_STR, 0, 0, 0, DSV4_GRAMMAR_MAX_STR, 0));
    } else {
        seq_node(sb, add_node(g, N_STR, 0, 0, 0, DSV4_GRAMMAR_MAX_STR, 0));
    }
    seq_text(sb, "</" DSV4_DSML "parameter>\n");
}

/* After the function's name: its parameters and the invoke's end. */
static int
dsml_body(dsv4_grammar *g, json_t *params)
{
    seqb        sb = { g, DSV4_STRBUF_INIT, {0}, 0 };
    json_t     *props = json_object_get(params, "properties"), *req, *v, *r;
    const char *key;
    size_t      i;
    int         n = 0;

    seq_text(&sb, "\">\n");
    req = json_object_get(params, "required");
    json_object_foreach(props, key, v) {
        int wanted = !json_is_array(req) || json_array_size(req) == 0;

        json_array_foreach(req, i, r) {
            if (json_is_string(r) && strcmp(json_string_value(r), key) == 0) wanted = 1;
        }
        if (wanted && strchr(key, '"') == NULL && n++ < MAX_PROPS) {
            dsml_param(&sb, key, v);
        }
    }
    seq_text(&sb, "</" DSV4_DSML "invoke>\n");
    return seq_end(&sb);
}

dsv4_grammar *
dsv4_grammar_tool_call(json_t *tools, const char *name, int think_close, char *err,
                       size_t errlen)
{
    dsv4_grammar *g;
    const char   *names[MAX_ALTS];
    int           next[MAX_ALTS], n = 0;
    json_t       *t;
    size_t        i;
    seqb          sb;

    if (!json_is_array(tools)) {
        dsv4_error(err, errlen, "a forced tool call needs 'tools'");
        return NULL;
    }
    g = grammar_new();
    if (g == NULL) return grammar_done(NULL, -1, err, errlen);
    json_array_foreach(tools, i, t) {
        json_t     *f = json_object_get(t, "function");
        const char *fn = json_string_value(json_object_get(f, "name"));

        if (fn == NULL || fn[0] == '\0' || strchr(fn, '"') != NULL
            || (name != NULL && strcmp(fn, name) != 0))
        {
            continue;
        }
        if (n == MAX_ALTS) {
            dsv4_error(err, errlen, "a forced tool call supports at most %d tools", MAX_ALTS);
            dsv4_grammar_unref(g);
            return NULL;
        }
        names[n] = fn;
        next[n++] = dsml_body(g, json_object_get(f, "parameters"));
    }
    if (n == 0) {
        dsv4_error(err, errlen, name ? "tool_choice names the function '%s', which 'tools'"
                                       " does not declare" : "'tools' declares no function%s",
                   name ? name : "");
        dsv4_grammar_unref(g);
        return NULL;
    }
    sb = (seqb) { g, DSV4_STRBUF_INIT, {0}, 0 };
    if (think_close) seq_text(&sb, "</think>");
    seq_text(&sb, "<" DSV4_DSML "tool_calls>\n<" DSV4_DSML "invoke name=\"");
    seq_node(&sb, add_choice(g, names, next, n));
    seq_text(&sb, "</" DSV4_DSML "tool_calls>");
    return grammar_done(g, seq_end(&sb), err, errlen);
}

dsv4_grammar *
dsv4_grammar_ref(dsv4_grammar *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void
dsv4_grammar_unref(dsv4_grammar *g)
{
    if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1) return;
    free(g->nodes);
    free(g->kids);
    dsv4_strbuf_free(&g->bytes);
    free(g);
}

/* ---- matching -------------------------------------------------------------- */

static int
push(const dsv4_grammar *g, state *st, int k)
{
    frame *f;

    if (st->n == MAX_FRAMES) return -1;
    f = &st->f[st->n++];
    memset(f, 0, sizeof(*f));
    f->node = k;
    if (g->nodes[k].kind == N_CHOICE) {
        f->mask = g->nodes[k].len == 64 ? ~0ULL : (1ULL << g->nodes[k].len) - 1;
    }
    return 0;
}

/* Pops finished sequences, so that an empty stack means "complete". */
static void
settle(const dsv4_grammar *g, state *st)
{
    while (st->n > 0) {
        const frame *f = &st->f[st->n - 1];
        const node  *nd = &g->nodes[f->node];

        if (nd->kind != N_SEQ || f->a < nd->len) break;
        st->n--;
    }
}

/* Alternative i of the choice on top is matched: its continuation follows. */
static int
choose(const dsv4_grammar *g, state *st, int i)
{
    const node *nd = &g->nodes[st->f[st->n - 1].node];
    int         next = g->kids[nd->off + 2 * i + 1];

    st->n--;
    return next >= 0 ? push(g, st, next) : 0;
}

static int
step_choice(const dsv4_grammar *g, state *st, unsigned char c)
{
    frame      *f = &st->f[st->n - 1];
    const node *nd = &g->nodes[f->node];
    uint64_t    m = 0;
    int         ended = -1, now = -1, longer = 0;

    for (int i = 0; i < nd->len; i++) {
        const node *lit;

        if (!(f->mask >> i & 1)) continue;
        lit = &g->nodes[g->kids[nd->off + 2 * i]];
        if (lit->len == f->a) {
            ended = i;
        } else if ((unsigned char) g->bytes.data[lit->off + f->a] == c) {
            m |= 1ULL << i;
            if (lit->len == f->a + 1) now = i; else longer = 1;
        }
    }
    if (m != 0) {
        f->mask = m;
        f->a++;
        return now >= 0 && !longer ? choose(g, st, now) : 0;
    }
    if (ended < 0 || choose(g, st, ended) != 0) return -1;
    return 1;                           /* the byte belongs to what follows */
}

/* A string byte: valid UTF-8, no control characters, no '<' (it would
 * start a DSML tag), no backslash in JSON (no escapes are generated). */
static int
step_str(const node *nd, frame *f, unsigned char c)
{
    if (f->c > 0) {
        if (c < (f->mask & 0xff) || c > (f->mask >> 8)) return -1;
        f->c--;
        f->mask = 0x80 | 0xbf << 8;
        f->a++;
        return 0;
    }
    if (c < 0x20 || c == 0x7f || c == '<' || (nd->flag && c == '\\') || f->a >= nd->max) {
        return -1;
    }
    f->a++;
    f->mask = 0x80 | 0xbf << 8;
    if (c < 0x80) return 0;
    if (c >= 0xc2 && c <= 0xdf) f->c = 1;
    else if (c == 0xe0) { f->c = 2; f->mask = 0xa0 | 0xbf << 8; }
    else if (c == 0xed) { f->c = 2; f->mask = 0x80 | 0x9f << 8; }
    else if (c >= 0xe1 && c <= 0xef) f->c = 2;
    else if (c == 0xf0) { f->c = 3; f->mask = 0x90 | 0xbf << 8; }
    else if (c == 0xf4) { f->c = 3; f->mask = 0x80 | 0x8f << 8; }
    else if (c >= 0xf1 && c <= 0xf3) f->c = 3;
    else return -1;
    return 0;
}

/* A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?, bounded.  1: not a number
 * byte, the number ended before it. */
static int
step_num(const node *nd, frame *f, unsigned char c)
{
    int digit = c >= '0' && c <= '9';

    switch (f->b) {
    case 0:
        if (c == '-') {
            f->b = 1;
            return 0;
        }
        /* fall through */
    case 1:
        if (!digit) return -1;
        f->b = c == '0' ? 3 : 2;
        f->a = 1;
        return 0;
    case 2:
        if (digit && f->a < DSV4_GRAMMAR_MAX_DIGITS) {
            f->a++;
            return 0;
        }
        /* fall through */
    case 3:
        if (c == '.' && !nd->flag) {
            f->b = 4;
            return 0;
        }
        return 1;
    case 4:
        if (!digit) return -1;
        f->b = 5;
        f->a = 1;
        return 0;
    default:
        if (digit && f->a < MAX_FRAC) {
            f->a++;
            return 0;
        }
        return 1;
    }
}

/* Advances st over byte c.  0, or -1 if the grammar rejects it. */
static int
step(const dsv4_grammar *g, state *st, unsigned char c)
{
    for (;;) {
        frame      *f;
        const node *nd;
        int         rc;

        if (st->n == 0) return -1;
        f = &st->f[st->n - 1];
        nd = &g->nodes[f->node];

        switch (nd->kind) {
        case N_SEQ:
            if (push(g, st, g->kids[nd->off + f->a++]) != 0) return -1;
            continue;

        case N_LIT:
            if ((unsigned char) g->bytes.data[nd->off + f->a] != c) return -1;
            if (++f->a == nd->len) st->n--;
            break;

        case N_CHOICE:
            rc = step_choice(g, st, c);
            if (rc < 0) return -1;
            if (rc > 0) continue;
            break;

        case N_STR:
            if (nd->flag && f->b == 0) {        /* the opening quote */
                if (c != '"') return -1;
                f->b = 1;
                break;
            }
            if (f->c == 0 && c == (nd->flag ? '"' : '<')) {
                st->n--;
                if (nd->flag) break;
                continue;                       /* '<' opens the closing tag */
            }
            if (step_str(nd, f, c) != 0) return -1;
            break;

        case N_NUM:
            rc = step_num(nd, f, c);
            if (rc < 0) return -1;
            if (rc > 0) {
                st->n--;
                continue;
            }
            break;

        case N_JVAL:                            /* the first byte picks the kind */
            st->n--;
            rc = c == '{' && nd->max > 0 ? g->jobj[nd->max]
                 : c == '[' && nd->max > 0 ? g->jarr[nd->max]
                 : c == '"' ? g->jstr
                 : c == '-' || (c >= '0' && c <= '9') ? g->jnum : g->jlit;
            if (push(g, st, rc) != 0) return -1;
            continue;

        case N_OBJ:                             /* {"key":value,...} */
        case N_ARR:                             /* [value,...] */
            rc = nd->kind == N_OBJ;
            switch (f->b) {
            case 0:
                if (c != (rc ? '{' : '[')) return -1;
                f->b = 1;
                break;
            case 1:
                if (c == (rc ? '}' : ']')) {
                    st->n--;
                    break;
                }
                f->a = 1;
                f->b = rc ? 2 : 4;
                if (push(g, st, rc ? g->jstr : nd->item) != 0) return -1;
                continue;
            case 2:
                if (c != ':') return -1;
                f->b = 3;
                break;
            case 3:
                f->b = 4;
                if (push(g, st, nd->item) != 0) return -1;
                continue;
            case 4:
                if (c == ',' && f->a < DSV4_GRAMMAR_MAX_ITEMS) {
                    f->a++;
                    f->b = 5;
                    break;
                }
                if (c != (rc ? '}' : ']')) return -1;
                st->n--;
                break;
            default:
                f->b = rc ? 2 : 4;
                if (push(g, st, rc ? g->jstr : nd->item) != 0) return -1;
                continue;
            }
            break;

        default:
            return -1;
        }
        settle(g, st);
        return 0;
    }
}

/* ---- constraint -------------------------------------------------------------- */

dsv4_constraint *
dsv4_constraint_new(dsv4_grammar *g, const dsv4_vocab_index *vi, int32_t eos)
{
    dsv4_constraint *c = calloc(1, sizeof(*c));

    if (c == NULL) return NULL;
    c->walk = malloc((MAX_TOKLEN + 1) * sizeof(*c->walk));
    c->allow = malloc((size_t) vi->vocab);
    if (c->walk == NULL || c->allow == NULL) {
        free(c->walk);
        free(c->allow);
        free(c);
        return NULL;
    }
    c->g = dsv4_grammar_ref(g);
    c->vi = vi;
    c->eos = eos;
    push(g, &c->st, g->root);
    return c;
}

void
dsv4_constraint_free(dsv4_constraint *c)
{
    if (c == NULL) return;
    dsv4_grammar_unref(c->g);
    free(c->walk);
    free(c->allow);
    free(c);
}

int
dsv4_constraint_done(const dsv4_constraint *c)
{
    return c->st.n == 0;
}

int
dsv4_constraint_feed(dsv4_constraint *c, const char *s, size_t n)
{
    state st = c->st;

    for (size_t i = 0; i < n; i++) {
        if (step(c->g, &st, (unsigned char) s[i]) != 0) return -1;
    }
    c->st = st;
    return 0;
}

int
dsv4_constraint_accept(dsv4_constraint *c, int32_t id)
{
    const dsv4_vocab_index *vi = c->vi;

    if (dsv4_constraint_done(c)) return id == c->eos ? 0 : -1;
    if (id < 0 || id >= vi->vocab || vi->bytes[id] == NULL) return -1;
    return dsv4_constraint_feed(c, vi->bytes[id], vi->len[id]);
}

static void
copy_state(state *dst, const state *src)
{
    dst->n = src->n;
    memcpy(dst->f, src->f, (size_t) src->n * sizeof(frame));
}

/* 1 if the next bytes are a fixed literal (a sequence's next literal). */
static int
literal_ahead(const dsv4_grammar *g, const state *st)
{
    int n = st->n, a;

    if (n == 0) return 0;
    a = st->f[n - 1].a;
    for (int k = st->f[n - 1].node;;) {
        const node *nd = &g->nodes[k];

        if (nd->kind == N_LIT) return 1;
        if (nd->kind != N_SEQ || a >= nd->len) return 0;
        k = g->kids[nd->off + a];
        a = 0;
    }
}

int
dsv4_constraint_mask(dsv4_constraint *c, float *logits)
{
    const dsv4_vocab_index *vi = c->vi;
    const dsv4_grammar     *g = c->g;
    state                  *w = c->walk;
    int                     valid = 0, dead = MAX_TOKLEN + 1, best = -1, nallow = 0;

    memset(c->allow, 0, (size_t) vi->vocab);
    if (dsv4_constraint_done(c)) {
        if (c->eos >= 0 && c->eos < vi->vocab) {
            c->allow[c->eos] = 1;
            nallow = 1;
        }
    } else {
        int forced = literal_ahead(g, &c->st);

        copy_state(&w[0], &c->st);
        for (int j = 0; j < vi->n; j++) {
            int32_t     id = vi->ids[j];
            int         l = vi->lcp[j], n = vi->len[id], k;
            const char *s = vi->bytes[id];

            if (l > dead) continue;             /* shares the byte that failed */
            if (vi->added[id] && !forced) {
                /* special tokens (end of sentence, "｜DSML｜", ...) only
                 * ever spell structural text, never a free value */
                valid = valid < l ? valid : l;
                dead = MAX_TOKLEN + 1;
                continue;
            }
            dead = MAX_TOKLEN + 1;
            valid = valid < l ? valid : l;
            for (k = valid; k < n; k++) {
                copy_state(&w[k + 1], &w[k]);
                if (step(g, &w[k + 1], (unsigned char) s[k]) != 0) break;
            }
            valid = k;
            if (k < n) {
                dead = k;
                continue;
            }
            c->allow[id] = 1;
            nallow++;
            if (best < 0 || n > vi->len[best]) best = id;
        }
        if (best >= 0 && forced) {
            /* structural text: forced, with the longest token that fits */
            memset(c->allow, 0, (size_t) vi->vocab);
            c->allow[best] = 1;
            nallow = 1;
        }
    }
    for (int id = 0; id < vi->vocab; id++) {
        if (!c->allow[id]) logits[id] = -INFINITY;
    }
    return nallow;
}
