/*
 * Constrained decoding; see constrain.h for the contract.  The grammars are
 * built by grammar.c.
 *
 * A state is a stack of frames, one per grammar node being matched,
 * advanced one byte at a time by step().  Frames that can end without a
 * closing byte (free strings in DSML, numbers, enum alternatives that
 * prefix one another) end lazily: the byte that does not fit them is fed to
 * their parent.
 */
#define _GNU_SOURCE             /* qsort_r */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "grammar_impl.h"

#define MAX_FRAMES   32
#define MAX_TOKLEN   256        /* longer tokens are never allowed */
#define MAX_FRAC     4          /* digits of a fraction */

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
        int n = g->nodes[k].len;

        f->mask = n == DSV4_GRAMMAR_MAX_ALTS ? ~0ULL : (1ULL << n) - 1;
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
