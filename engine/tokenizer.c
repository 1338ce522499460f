/*
 * Tokenizer loading, id lookups and decoding.  Encoding lives in
 * tokenizer_encode.c.  See tokenizer.h for what is supported and why.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"
#include "tokenizer_impl.h"

#define DEFAULT_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DEFAULT_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/*
 * GPT-2's byte <-> character table.  Byte-level BPE stores every byte as a
 * printable character: bytes that are printable in Latin-1 stand for
 * themselves, the other 68 are mapped in order to U+0100..U+0143.
 */
static int
byte_is_printable(int b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}


static void
byte_level_tables(uint32_t byte_to_cp[256], int16_t cp_to_byte[324])
{
    int n = 0;

    for (int i = 0; i < 324; i++) {
        cp_to_byte[i] = -1;
    }
    for (int b = 0; b < 256; b++) {
        byte_to_cp[b] = byte_is_printable(b) ? (uint32_t) b : (uint32_t) (256 + n++);
        cp_to_byte[byte_to_cp[b]] = (int16_t) b;
    }
}


static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}


/* 32-bit hash of a short byte string (tokens and words are a few bytes):
 * 8 bytes at a time through a multiply-xorshift mixer. */
uint32_t
dsv4_tok_hash(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    uint64_t w;

    while (n >= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return (uint32_t) h;
}


/* ---- added-token tries ---------------------------------------------- */

static int32_t
trie_node(tok_trie *tr, uint8_t byte)
{
    if (tr->n == tr->cap) {
        int32_t cap = tr->cap ? tr->cap * 2 : 256;
        tok_trie_node *p = realloc(tr->nodes, (size_t) cap * sizeof(*p));

        if (p == NULL) {
            return -1;
        }
        tr->nodes = p;
        tr->cap = cap;
    }
    tr->nodes[tr->n] = (tok_trie_node) {byte, -1, -1, -1};
    return tr->n++;
}


static int
trie_insert(tok_trie *tr, const char *s, size_t n, int32_t id)
{
    int32_t cur = 0;

    if (tr->n == 0 && trie_node(tr, 0) < 0) {
        return -1;
    }
    tr->first[(uint8_t) s[0]] = 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t) s[i];
        int32_t c = tr->nodes[cur].child;

        while (c >= 0 && tr->nodes[c].byte != b) {
            c = tr->nodes[c].sibling;
        }
        if (c < 0) {
            c = trie_node(tr, b);
            if (c < 0) {
                return -1;
            }
            tr->nodes[c].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = c;
        }
        cur = c;
    }
    /* a later duplicate content wins, as in the reference's map */
    tr->nodes[cur].id = id;
    return 0;
}


/* ---- vocabulary map by bytes ------------------------------------------ */

static int
vocab_insert(dsv4_tokenizer *t, int32_t id)
{
    const char *s = t->bytes + t->off[id];
    uint32_t    n = t->len[id], h = dsv4_tok_hash(s, n);

    for (uint32_t i = h & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        tok_vslot *v = &t->vocab[i];

        if (v->id < 0) {
            v->id = id;
            v->hash = h;
            return 0;
        }
        if (v->hash == h && t->len[v->id] == n
            && memcmp(t->bytes + t->off[v->id], s, n) == 0)
        {
            return 0;   /* first one wins: added tokens are inserted first */
        }
    }
}


int32_t
dsv4_tokenizer_token_id(const dsv4_tokenizer *t, const char *s, size_t n)
{
    uint32_t h = dsv4_tok_hash(s, n);

    for (uint32_t i = h & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        const tok_vslot *v = &t->vocab[i];

        if (v->id < 0) {
            return -1;
        }
        if (v->hash == h && t->len[v->id] == n
            && memcmp(t->bytes + t->off[v->id], s, n) == 0)
        {
            return v->id;
        }
    }
}


/* ---- merges ----------------------------------------------------------- */

static int
merge_insert(dsv4_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = ((uint64_t) (uint32_t) (a + 1) << 32) | (uint32_t) b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;

    for (uint64_t i = (h >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        tok_merge *m = &t->merges[i];

        if (m->key == 0) {
            m->key = key;
            m->rank = rank;
            m->id = id;
            return 0;
        }
        if (m->key == key) {
            return 0;   /* a repeated merge keeps its first (lowest) rank */
        }
    }
}


/* ---- loading ---------------------------------------------------------- */

typedef struct {
    const char *path;
    char       *err;
    size_t      errlen;
    uint32_t    byte_to_cp[256];
    int16_t     cp_to_byte[324];
} load_ctx;


/* Converts a byte-level vocabulary string back to the bytes it stands for.
 * A string with characters outside the byte alphabet is kept as its UTF-8
 * (such entries are not reachable by BPE; this only affects decoding). */
static int
byte_level_decode(load_ctx *c, const char *s, size_t n, dsv4_strbuf *out)
{
    size_t   i = 0, start = out->len;
    uint32_t cp;

    while (i < n) {
        int k = dsv4_utf8_next(s + i, n - i, &cp);

        if (cp >= 324 || c->cp_to_byte[cp] < 0) {
            out->len = start;
            return dsv4_strbuf_append(out, s, n);
        }
        if (dsv4_strbuf_putc(out, (char) c->cp_to_byte[cp]) != 0) {
            return -1;
        }
        i += (size_t) k;
    }
    return 0;
}


static int
json_flag(json_t *obj, const char *key, int dflt)
{
    json_t *v = json_object_get(obj, key);

    return json_is_boolean(v) ? json_is_true(v) : dflt;
}


/* Rewrites an Oniguruma-flavoured pattern from tokenizer.json for PCRE2.
 * The one difference that matters for these patterns: \s and \S.  The
 * reference tokenizers match Oniguruma's \s = Unicode White_Space (which
 * includes U+0085 and excludes U+FEFF); PCRE2's \s under UCP differs on
 * those, so they are spelled as the property. */
static int
translate_regex(const char *src, size_t n, dsv4_strbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\\' && i + 1 < n) {
            char c = src[++i];

            if (c == 's') {
                if (dsv4_strbuf_puts(out, "\\p{White_Space}") != 0) return -1;
            } else if (c == 'S') {
                if (dsv4_strbuf_puts(out, "\\P{White_Space}") != 0) return -1;
            } else {
                char esc[2] = {'\\', c};

                if (dsv4_strbuf_append(out, esc, 2) != 0) return -1;
            }
            continue;
        }
        if (dsv4_strbuf_putc(out, src[i]) != 0) {
            return -1;
        }
    }
    return 0;
}


static int
add_split(dsv4_tokenizer *t, load_ctx *c, json_t *step, int idx)
{
    json_t     *pat = json_object_get(step, "pattern");
    json_t     *re = json_object_get(pat, "Regex");
    json_t     *str = json_object_get(pat, "String");
    const char *behavior = json_string_value(json_object_get(step, "behavior"));
    dsv4_strbuf src = DSV4_STRBUF_INIT;
    int         rc, errcode;
    PCRE2_SIZE  erroff;

    if (behavior == NULL || strcmp(behavior, "Isolated") != 0
        || json_flag(step, "invert", 0))
    {
        set_err(c->err, c->errlen, "%s: pre_tokenizer step %d: only Split with "
                "behavior \"Isolated\" and invert false is supported", c->path, idx);
        return -1;
    }
    if (t->n_split == TOK_MAX_SPLITS) {
        set_err(c->err, c->errlen, "%s: more than %d Split steps", c->path, TOK_MAX_SPLITS);
        return -1;
    }
    if (json_is_string(re)) {
        rc = translate_regex(json_string_value(re), json_string_length(re), &src);
    } else if (json_is_string(str)) {
        /* a literal: escape every non-alphanumeric ASCII character */
        const char *s = json_string_value(str);
        size_t      n = json_string_length(str);

        rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            unsigned char ch = (unsigned char) s[i];

            if (ch < 0x80 && !((ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z'))) {
                rc = dsv4_strbuf_putc(&src, '\\');
            }
            if (rc == 0) {
                rc = dsv4_strbuf_putc(&src, (char) ch);
            }
        }
    } else {
        set_err(c->err, c->errlen, "%s: pre_tokenizer step %d: pattern has no "
                "\"Regex\" or \"String\"", c->path, idx);
        return -1;
    }
    if (rc != 0) {
        dsv4_strbuf_free(&src);
        set_err(c->err, c->errlen, "out of memory");
        return -1;
    }

    t->split[t->n_split] = pcre2_compile((PCRE2_SPTR) src.data, src.len,
                                         PCRE2_UTF | PCRE2_UCP, &errcode,
                                         &erroff, NULL);
    if (t->split[t->n_split] == NULL) {
        PCRE2_UCHAR msg[160];

        pcre2_get_error_message(errcode, msg, sizeof(msg));
        set_err(c->err, c->errlen, "%s: pre_tokenizer step %d: regex does not "
                "compile at offset %zu: %s", c->path, idx, (size_t) erroff, (char *) msg);
        dsv4_strbuf_free(&src);
        return -1;
    }
    dsv4_strbuf_free(&src);
    /* JIT is an optimisation only: without it pcre2_match gives the same
     * answers, slower */
    t->split_jit[t->n_split] =
        pcre2_jit_compile(t->split[t->n_split], PCRE2_JIT_COMPLETE) == 0;
    t->n_split++;
    return 0;
}


static int
load_pre_tokenizer(dsv4_tokenizer *t, load_ctx *c, json_t *pt)
{
    const char *type = json_string_value(json_object_get(pt, "type"));
    json_t     *steps, *single = pt;
    size_t      n, i;
    int         byte_level = 0;

    if (type != NULL && strcmp(type, "Sequence") == 0) {
        steps = json_object_get(pt, "pretokenizers");
        if (!json_is_array(steps)) {
            set_err(c->err, c->errlen, "%s: pre_tokenizer Sequence has no "
                    "\"pretokenizers\" array", c->path);
            return -1;
        }
        n = json_array_size(steps);
    } else {
        steps = NULL;
        n = 1;
    }

    for (i = 0; i < n; i++) {
        json_t     *step = steps ? json_array_get(steps, i) : single;
        const char *st = json_string_value(json_object_get(step, "type"));

        if (byte_level) {
            set_err(c->err, c->errlen, "%s: pre_tokenizer: ByteLevel must be "
                    "the last step", c->path);
            return -1;
        }
        if (st != NULL && strcmp(st, "Split") == 0) {
            if (add_split(t, c, step, (int) i) != 0) {
                return -1;
            }
        } else if (st != NULL && strcmp(st, "ByteLevel") == 0) {
            if (json_flag(step, "add_prefix_space", 0)
                || json_flag(step, "use_regex", 1))
            {
                set_err(c->err, c->errlen, "%s: pre_tokenizer ByteLevel: only "
                        "add_prefix_space=false, use_regex=false is supported",
                        c->path);
                return -1;
            }
            byte_level = 1;
        } else {
            set_err(c->err, c->errlen, "%s: pre_tokenizer step type \"%s\" is "
                    "not supported", c->path, st ? st : "?");
            return -1;
        }
    }
    if (!byte_level) {
        set_err(c->err, c->errlen, "%s: pre_tokenizer has no ByteLevel step "
                "(only byte-level BPE is supported)", c->path);
        return -1;
    }
    return 0;
}


static int
load_config(dsv4_tokenizer *t, const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t      *cfg, *v;
    const char  *bos = DEFAULT_BOS, *eos = DEFAULT_EOS;

    cfg = json_load_file(path, 0, &jerr);
    if (cfg == NULL) {
        set_err(err, errlen, "%s:%d: %s", path, jerr.line, jerr.text);
        return -1;
    }
    v = json_object_get(cfg, "bos_token");
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (json_is_string(v)) bos = json_string_value(v);
    v = json_object_get(cfg, "eos_token");
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (json_is_string(v)) eos = json_string_value(v);
    t->bos_id = dsv4_tokenizer_token_id(t, bos, strlen(bos));
    t->eos_id = dsv4_tokenizer_token_id(t, eos, strlen(eos));
    json_decref(cfg);
    return 0;
}


static int
load_model(dsv4_tokenizer *t, load_ctx *c, json_t *root)
{
    json_t      *model = json_object_get(root, "model");
    json_t      *vocab = json_object_get(model, "vocab");
    json_t      *merges = json_object_get(model, "merges");
    json_t      *added = json_object_get(root, "added_tokens");
    const char  *type = json_string_value(json_object_get(model, "type"));
    const char  *key;
    json_t      *val, *v;
    dsv4_strbuf  bytes = DSV4_STRBUF_INIT;
    int32_t      max_id = -1;
    size_t       i, nv;
    uint32_t     vcap;
    uint64_t     mcap;

    if (type == NULL || strcmp(type, "BPE") != 0 || !json_is_object(vocab)
        || !json_is_array(merges))
    {
        set_err(c->err, c->errlen, "%s: model must be BPE with \"vocab\" and "
                "\"merges\"", c->path);
        return -1;
    }
    if (json_flag(model, "byte_fallback", 0)
        || json_is_string(json_object_get(model, "continuing_subword_prefix"))
        || json_is_string(json_object_get(model, "end_of_word_suffix")))
    {
        set_err(c->err, c->errlen, "%s: model: byte_fallback / subword "
                "prefixes and suffixes are not supported", c->path);
        return -1;
    }
    t->ignore_merges = json_flag(model, "ignore_merges", 0);

    /* the id space: vocab and added tokens together */
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0
            || json_integer_value(val) >= (1 << 30))
        {
            set_err(c->err, c->errlen, "%s: vocab entry \"%s\" has a bad id", c->path, key);
            return -1;
        }
        if (json_integer_value(val) > max_id) max_id = (int32_t) json_integer_value(val);
    }
    if (added != NULL && !json_is_array(added)) {
        set_err(c->err, c->errlen, "%s: added_tokens is not an array", c->path);
        return -1;
    }
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        json_t *content = json_object_get(v, "content");

        if (!json_is_integer(id) || json_integer_value(id) < 0
            || json_integer_value(id) >= (1 << 30) || !json_is_string(content))
        {
            set_err(c->err, c->errlen, "%s: added_tokens[%zu] needs an id and "
                    "a content", c->path, i);
            return -1;
        }
        if (json_flag(v, "lstrip", 0) || json_flag(v, "rstrip", 0)
            || json_flag(v, "single_word", 0))
        {
            set_err(c->err, c->errlen, "%s: added_tokens[%zu]: lstrip / rstrip "
                    "/ single_word are not supported", c->path, i);
            return -1;
        }
        if (json_integer_value(id) > max_id) max_id = (int32_t) json_integer_value(id);
    }
    if (max_id < 0) {
        set_err(c->err, c->errlen, "%s: empty vocabulary", c->path);
        return -1;
    }

    t->n_ids = max_id + 1;
    t->off = calloc((size_t) t->n_ids, sizeof(*t->off));
    t->len = calloc((size_t) t->n_ids, sizeof(*t->len));
    t->flags = calloc((size_t) t->n_ids, sizeof(*t->flags));
    if (t->off == NULL || t->len == NULL || t->flags == NULL) {
        goto nomem;
    }

    /* token bytes: added tokens' content overrides the vocab string */
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t) json_integer_value(val);

        t->off[id] = (uint32_t) bytes.len;
        if (byte_level_decode(c, key, strlen(key), &bytes) != 0) goto nomem;
        t->len[id] = (uint32_t) (bytes.len - t->off[id]);
        t->flags[id] = TOK_EXISTS;
    }
    json_array_foreach(added, i, v) {
        int32_t     id = (int32_t) json_integer_value(json_object_get(v, "id"));
        json_t     *content = json_object_get(v, "content");
        int         special = json_flag(v, "special", 0);

        t->off[id] = (uint32_t) bytes.len;
        if (dsv4_strbuf_append(&bytes, json_string_value(content),
                               json_string_length(content)) != 0) goto nomem;
        t->len[id] = (uint32_t) json_string_length(content);
        t->flags[id] = TOK_EXISTS | TOK_ADDED | (special ? TOK_SPECIAL : 0);
    }
    if (bytes.len >= UINT32_MAX) {
        goto nomem;
    }
    t->bytes = dsv4_strbuf_take(&bytes, NULL);
    if (t->bytes == NULL) {
        goto nomem;
    }

    /* lookup by bytes; added tokens first so they win over a vocab twin */
    nv = 0;
    for (int32_t id = 0; id < t->n_ids; id++) nv += (t->flags[id] & TOK_EXISTS) != 0;
    for (vcap = 1024; vcap < 2 * nv; vcap *= 2) {}
    t->vocab = malloc(vcap * sizeof(*t->vocab));
    if (t->vocab == NULL) goto nomem;
    for (uint32_t k = 0; k < vcap; k++) t->vocab[k].id = -1;
    t->vocab_mask = vcap - 1;
    json_array_foreach(added, i, v) {
        if (vocab_insert(t, (int32_t) json_integer_value(json_object_get(v, "id"))) != 0) goto nomem;
    }
    for (int32_t id = 0; id < t->n_ids; id++) {
        if ((t->flags[id] & TOK_EXISTS) && !(t->flags[id] & TOK_ADDED)) {
            vocab_insert(t, id);
        }
        if (t->len[id] > t->max_len) t->max_len = t->len[id];
    }

    /* the 256 single-byte tokens BPE starts from */
    for (int b = 0; b < 256; b++) {
        char s[4];
        int  k = dsv4_utf8_put(s, c->byte_to_cp[b]);

        s[k] = '\0';
        v = json_object_get(vocab, s);
        t->byte_id[b] = v ? (int32_t) json_integer_value(v) : -1;
    }

    /* merges: "left right" strings or [left, right] pairs, rank = index */
    for (mcap = 1024; mcap < 2 * json_array_size(merges); mcap *= 2) {}
    t->merges = calloc(mcap, sizeof(*t->merges));
    if (t->merges == NULL) goto nomem;
    t->merge_mask = mcap - 1;
    json_array_foreach(merges, i, v) {
        char        lbuf[1024], mbuf[2048];
        const char *l, *r;
        size_t      ln, rn;
        json_t     *a, *b, *m;

        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            const char *sp = strchr(s, ' ');

            if (sp == NULL || strchr(sp + 1, ' ') != NULL
                || (size_t) (sp - s) >= sizeof(lbuf))
            {
                set_err(c->err, c->errlen, "%s: merges[%zu] is not \"left right\"", c->path, i);
                return -1;
            }
            memcpy(lbuf, s, (size_t) (sp - s));
            lbuf[sp - s] = '\0';
            l = lbuf;
            r = sp + 1;
        } else if (json_is_array(v) && json_array_size(v) == 2
                   && json_is_string(json_array_get(v, 0))
                   && json_is_string(json_array_get(v, 1)))
        {
            l = json_string_value(json_array_get(v, 0));
            r = json_string_value(json_array_get(v, 1));
        } else {
            set_err(c->err, c->errlen, "%s: merges[%zu] is malformed", c->path, i);
            return -1;
        }
        ln = strlen(l);
        rn = strlen(r);
        if (ln + rn >= sizeof(mbuf)) {
            set_err(c->err, c->errlen, "%s: merges[%zu] is too long", c->path, i);
            return -1;
        }
        memcpy(mbuf, l, ln);
        memcpy(mbuf + ln, r, rn + 1);
        a = json_object_get(vocab, l);
        b = json_object_get(vocab, r);
        m = json_object_get(vocab, mbuf);
        /* the reference merges strings and would drop an out-of-vocab
         * result later; with ids we need every piece in the vocab */
        if (a == NULL || b == NULL || m == NULL) {
            set_err(c->err, c->errlen, "%s: merges[%zu] (\"%s\" + \"%s\") uses "
                    "or makes a token that is not in the vocab", c->path, i, l, r);
            return -1;
        }
        merge_insert(t, (int32_t) json_integer_value(a), (int32_t) json_integer_value(b),
                     (int32_t) i, (int32_t) json_integer_value(m));
    }

    /* added tokens for matching in text */
    json_array_foreach(added, i, v) {
        json_t *content = json_object_get(v, "content");
        int     special = json_flag(v, "special", 0);
        int     normalized = json_flag(v, "normalized", !special);
        tok_trie *tr;

        if (json_string_length(content) == 0) {
            continue;
        }
        /* the reference only uses the second pass when a normalizer
         * exists; with none, every added token is matched in the first */
        tr = normalized && json_object_get(root, "normalizer") != NULL
             && !json_is_null(json_object_get(root, "normalizer"))
             ? &t->added_norm : &t->added_raw;
        if (trie_insert(tr, json_string_value(content), json_string_length(content),
                        (int32_t) json_integer_value(json_object_get(v, "id"))) != 0)
        {
            goto nomem;
        }
    }
    return 0;

nomem:
    dsv4_strbuf_free(&bytes);
    set_err(c->err, c->errlen, "%s: out of memory", c->path);
    return -1;
}


int
dsv4_tokenizer_load_files(const char *json_path, const char *config_path,
                          dsv4_tokenizer **out, char *err, size_t errlen)
{
    dsv4_tokenizer *t;
    json_error_t    jerr;
    json_t         *root, *norm, *dec;
    load_ctx        c;
    const char     *nt, *dt;

    *out = NULL;
    root = json_load_file(json_path, 0, &jerr);
    if (root == NULL) {
        set_err(err, errlen, "%s:%d: %s", json_path, jerr.line, jerr.text);
        return -1;
    }

    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        json_decref(root);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    t->bos_id = t->eos_id = -1;

    c.path = json_path;
    c.err = err;
    c.errlen = errlen;
    byte_level_tables(c.byte_to_cp, c.cp_to_byte);

    norm = json_object_get(root, "normalizer");
    nt = json_string_value(json_object_get(norm, "type"));
    if (norm != NULL && !json_is_null(norm)
        && !(nt != NULL && strcmp(nt, "Sequence") == 0
             && json_array_size(json_object_get(norm, "normalizers")) == 0))
    {
        set_err(err, errlen, "%s: normalizer \"%s\" is not supported (only "
                "none or an empty Sequence)", json_path, nt ? nt : "?");
        goto fail;
    }
    dec = json_object_get(root, "decoder");
    dt = json_string_value(json_object_get(dec, "type"));
    if (dt == NULL || strcmp(dt, "ByteLevel") != 0) {
        set_err(err, errlen, "%s: decoder \"%s\" is not supported (only "
                "ByteLevel)", json_path, dt ? dt : "?");
        goto fail;
    }
    if (load_model(t, &c, root) != 0
        || load_pre_tokenizer(t, &c, json_object_get(root, "pre_tokenizer")) != 0)
    {
        goto fail;
    }
    json_decref(root);
    root = NULL;

    if (config_path != NULL) {
        if (load_config(t, config_path, err, errlen) != 0) {
            goto fail;
        }
    } else {
        t->bos_id = dsv4_tokenizer_token_id(t, DEFAULT_BOS, strlen(DEFAULT_BOS));
        t->eos_id = dsv4_tokenizer_token_id(t, DEFAULT_EOS, strlen(DEFAULT_EOS));
    }
    *out = t;
    return 0;

fail:
    json_decref(root);
    dsv4_tokenizer_free(t);
    return -1;
}


int
dsv4_tokenizer_load(const char *dir, dsv4_tokenizer **out, char *err, size_t errlen)
{
    char  jp[4096], cp[4096];
    FILE *f;

    if (snprintf(jp, sizeof(jp), "%s/tokenizer.json", dir) >= (int) sizeof(jp)
        || snprintf(cp, sizeof(cp), "%s/tokenizer_config.json", dir) >= (int) sizeof(cp))
    {
        *out = NULL;
        set_err(err, errlen, "model directory path is too long");
        return -1;
    }
    f = fopen(cp, "r");
    if (f != NULL) {
        fclose(f);
    }
    return dsv4_tokenizer_load_files(jp, f ? cp : NULL, out, err, errlen);
}


void
dsv4_tokenizer_free(dsv4_tokenizer *t)
{
    if (t == NULL) {
        return;
    }
    dsv4_tok_threads_free(t);
    for (int i = 0; i < t->n_split; i++) {
        pcre2_code_free(t->split[i]);
    }
    free(t->added_raw.nodes);
    free(t->added_norm.nodes);
    free(t->merges);
    free(t->vocab);
    free(t->bytes);
    free(t->off);
    free(t->len);
    free(t->flags);
    free(t);
}


/* ---- lookups ---------------------------------------------------------- */

int32_t
dsv4_tokenizer_n_ids(const dsv4_tokenizer *t)
{
    return t->n_ids;
}


const char *
dsv4_tokenizer_token_bytes(const dsv4_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_ids || !(t->flags[id] & TOK_EXISTS)) {
        return NULL;
    }
    *len = t->len[id];
    return t->bytes + t->off[id];
}


int
dsv4_tokenizer_is_added(const dsv4_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && (t->flags[id] & TOK_ADDED) != 0;
}


int32_t
dsv4_tokenizer_bos_id(const dsv4_tokenizer *t)
{
    return t->bos_id;
}


int32_t
dsv4_tokenizer_eos_id(const dsv4_tokenizer *t)
{
    return t->eos_id;
}


/* ---- decoding --------------------------------------------------------- */

void
dsv4_decoder_init(dsv4_decoder *d, const dsv4_tokenizer *tok)
{
    d->tok = tok;
    dsv4_utf8_stream_init(&d->utf8);
}


size_t
dsv4_decoder_bound(const dsv4_tokenizer *t)
{
    /* every byte may become a 3-byte U+FFFD, plus the pending fragment */
    return 3 * (t->max_len + 3) + 3;
}


int
dsv4_decoder_push(dsv4_decoder *d, int32_t id, char *out, size_t cap, size_t *outlen)
{
    const dsv4_tokenizer *t = d->tok;
    const char           *s;
    size_t                n, o;

    *outlen = 0;
    s = dsv4_tokenizer_token_bytes(t, id, &n);
    if (s == NULL) {
        return DSV4_TOK_EINVAL;
    }
    if (cap < dsv4_decoder_bound(t)) {
        return DSV4_TOK_ENOSPC;
    }
    if (t->flags[id] & TOK_ADDED) {
        /* the reference decodes the bytes before an added token on their
         * own, so a fragment pending here is final */
        o = dsv4_utf8_stream_flush(&d->utf8, out);
        memcpy(out + o, s, n);
        *outlen = o + n;
        return DSV4_TOK_OK;
    }
    *outlen = dsv4_utf8_stream_push(&d->utf8, s, n, out);
    return DSV4_TOK_OK;
}


size_t
dsv4_decoder_flush(dsv4_decoder *d, char *out)
{
    return dsv4_utf8_stream_flush(&d->utf8, out);
}


int
dsv4_tokenizer_decode(const dsv4_tokenizer *t, const int32_t *ids, size_t n,
                      char **text, size_t *len)
{
    dsv4_strbuf  b = DSV4_STRBUF_INIT;
    dsv4_decoder d;
    size_t       bound = dsv4_decoder_bound(t), k;

    *text = NULL;
    dsv4_decoder_init(&d, t);
    for (size_t i = 0; i < n; i++) {
        int rc;

        if (dsv4_strbuf_reserve(&b, bound) != 0) {
            dsv4_strbuf_free(&b);
            return DSV4_TOK_ENOMEM;
        }
        rc = dsv4_decoder_push(&d, ids[i], b.data + b.len, bound, &k);
        if (rc != DSV4_TOK_OK) {
            dsv4_strbuf_free(&b);
            return rc;
        }
        b.len += k;
    }
    if (dsv4_strbuf_reserve(&b, 3) != 0) {
        dsv4_strbuf_free(&b);
        return DSV4_TOK_ENOMEM;
    }
    b.len += dsv4_decoder_flush(&d, b.data + b.len);
    b.data[b.len] = '\0';
    *text = dsv4_strbuf_take(&b, len);
    return *text ? DSV4_TOK_OK : DSV4_TOK_ENOMEM;
}
