/*
 * Output grammars (constrain.h): a forced DSML tool call or a JSON object,
 * built from the request's tools / JSON schema into grammar_impl.h's node
 * tree.  constrain.c matches bytes against it.
 */
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "grammar_impl.h"
#include "util.h"

#define MAX_ALTS     DSV4_GRAMMAR_MAX_ALTS
#define MAX_PROPS    16         /* properties of a typed object */
#define MAX_LEVELS   8          /* nesting of typed values; deeper: generic */

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

/* A JSON value following schema (the subset in constrain.h).  depth
 * bounds generic values; level counts typed nesting, bounded too so that
 * a deeply nested schema cannot exhaust the (thread pool's) stack. */
static int
value_node(dsv4_grammar *g, json_t *sch, int depth, int level)
{
    json_t     *t, *en, *props, *req, *v;
    const char *type = NULL, *key;
    size_t      i;

    if (!json_is_object(sch) || level > MAX_LEVELS) {
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
                        value_node(g, json_object_get(sch, "items"), depth - 1, level + 1));
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
        seq_node(&sb, value_node(g, v, depth ? depth - 1 : 0, level + 1));
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
        v = value_node(g, schema, DSV4_GRAMMAR_MAX_DEPTH, 0);
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
        seq_node(sb, value_node(g, sch, DSV4_GRAMMAR_MAX_DEPTH - 1, 0));
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
