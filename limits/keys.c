/*
 * API keys: the key file, key digests, and keys stored in Redis hashes.
 *
 * Only SHA-256 digests of keys are ever stored; an error message shows at
 * most the first 8 characters of a digest (or of whatever stands where a
 * digest belongs, which may be a raw key pasted by mistake).
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "internal.h"

#define DSV4_KEYS_SHOW_DIGEST   8       /* digest characters an error shows */
#define DSV4_KEYS_SHOW_TOKEN    48      /* other tokens: enough to recognise */

int
dsv4_limit_tenant_ok(const char *s, size_t len)
{
    if (len == 0 || len > DSV4_LIMIT_TENANT_MAX) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '_' || c == '.' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

void
dsv4_key_digest(const void *key, size_t len, uint8_t digest[32])
{
    dsv4_sha256_once(key, len, digest);
}

void
dsv4_key_hex(const uint8_t digest[32], char hex[65])
{
    dsv4_cache_hex(digest, 32, hex);
}

static int
dsv4_keys_xdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int
dsv4_key_from_hex(const char *hex, size_t len, uint8_t digest[32])
{
    uint8_t d[32];

    if (len != 64) {
        return -1;
    }
    for (int i = 0; i < 32; i++) {
        int hi = dsv4_keys_xdigit(hex[2 * i]), lo = dsv4_keys_xdigit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        d[i] = (uint8_t) (hi << 4 | lo);
    }
    memcpy(digest, d, 32);
    return 0;
}

int
dsv4_key_allows(const dsv4_key *k, const char *model, size_t len)
{
    if (k->nmodels == 0) {
        return 1;
    }
    for (int i = 0; i < k->nmodels; i++) {
        if (strlen(k->models[i]) == len && memcmp(k->models[i], model, len) == 0) {
            return 1;
        }
    }
    return 0;
}

/* s[len] for a message into buf[cap]: at most max bytes, "..." when cut */
static const char *
dsv4_keys_show(char *buf, size_t cap, const char *s, size_t len, size_t max)
{
    snprintf(buf, cap, "%.*s%s", (int) (len < max ? len : max), s, len > max ? "..." : "");
    return buf;
}

/* ---- options (key file and Redis alike) --------------------------------- */

static const char *const dsv4_keys_options[] = {
    "rpm", "tpm", "concurrency", "daily", "monthly", "models"
};
#define DSV4_KEYS_NOPTIONS      6
#define DSV4_KEYS_OPT_MODELS    5

static int64_t *
dsv4_keys_limit(dsv4_key *k, int opt)
{
    int64_t *f[] = { &k->limits.rpm, &k->limits.tpm, &k->limits.concurrency,
                     &k->limits.daily, &k->limits.monthly };
    return f[opt];
}

/* a decimal integer in [0, DSV4_LIMIT_COUNT_MAX]; 0 or -1 */
static int
dsv4_keys_number(const char *s, size_t len, int64_t *out)
{
    int64_t v = 0;

    if (len == 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
        if (v > DSV4_LIMIT_COUNT_MAX) {
            return -1;
        }
    }
    *out = v;
    return 0;
}

/* models=a,b,c into k; 0, or -1 with why */
static int
dsv4_keys_models(dsv4_key *k, const char *s, size_t len, char *why, size_t cap)
{
    const char *p = s, *end = s + len;

    k->nmodels = 0;
    for (;;) {
        const char *c = memchr(p, ',', (size_t) (end - p)), *e = c ? c : end;
        size_t      n = (size_t) (e - p);
        if (n == 0) {
            snprintf(why, cap, "empty model name");
            return -1;
        }
        if (n > DSV4_LIMIT_MODEL_MAX) {
            snprintf(why, cap, "model name longer than %d bytes", DSV4_LIMIT_MODEL_MAX);
            return -1;
        }
        if (k->nmodels == DSV4_LIMIT_MODELS_MAX) {
            snprintf(why, cap, "more than %d models", DSV4_LIMIT_MODELS_MAX);
            return -1;
        }
        memcpy(k->models[k->nmodels], p, n);
        k->models[k->nmodels++][n] = '\0';
        if (c == NULL) {
            return 0;
        }
        p = c + 1;
    }
}

/* Sets option name=val of k.  Returns the option's index, -1 for a name
 * that is not an option, -2 for a bad value (why says what is wrong). */
static int
dsv4_keys_option(dsv4_key *k, const char *name, size_t nlen, const char *val, size_t vlen,
                 char *why, size_t cap)
{
    int opt = 0;

    while (opt < DSV4_KEYS_NOPTIONS && (strlen(dsv4_keys_options[opt]) != nlen
                                        || memcmp(dsv4_keys_options[opt], name, nlen) != 0)) {
        opt++;
    }
    if (opt == DSV4_KEYS_NOPTIONS) {
        return -1;
    }
    if (opt == DSV4_KEYS_OPT_MODELS) {
        return dsv4_keys_models(k, val, vlen, why, cap) == 0 ? opt : -2;
    }
    if (dsv4_keys_number(val, vlen, dsv4_keys_limit(k, opt)) != 0) {
        snprintf(why, cap, "%s wants an integer from 0 to 10^15", dsv4_keys_options[opt]);
        return -2;
    }
    return opt;
}

static void
dsv4_keys_init(dsv4_key *k)
{
    memset(k, 0, sizeof(*k));
    dsv4_limits_unset(&k->limits);
}

/* ---- the key file ------------------------------------------------------- */

/* The next blank-separated token of [*p, end) into *tok; its length, or 0 at
 * the end of the line or at a comment. */
static size_t
dsv4_keys_token(const char **p, const char *end, const char **tok)
{
    const char *s = *p;

    while (s < end && (*s == ' ' || *s == '\t')) {
        s++;
    }
    *tok = s;
    if (s == end || *s == '#') {
        *p = end;
        return 0;
    }
    while (s < end && *s != ' ' && *s != '\t') {
        s++;
    }
    *p = s;
    return (size_t) (s - *tok);
}

/* One line [p, end) (no line terminator).  Returns 1 with *k filled, 0 for a
 * blank or comment line, -1 with err. */
static int
dsv4_keys_line(const char *p, const char *end, int line, dsv4_key *k, char *err,
               size_t errlen)
{
    char        show[64], why[96];
    const char *tok;
    size_t      n;
    unsigned    seen = 0;

    for (const char *c = p; c < end; c++) {
        if (((unsigned char) *c < 0x20 && *c != '\t') || *c == 0x7f) {
            snprintf(err, errlen, "line %d: control character 0x%02x (column %d)", line,
                     (unsigned char) *c, (int) (c - p) + 1);
            return -1;
        }
    }
    if ((n = dsv4_keys_token(&p, end, &tok)) == 0) {
        return 0;
    }
    dsv4_keys_init(k);
    dsv4_keys_show(show, sizeof(show), tok, n, DSV4_KEYS_SHOW_DIGEST);
    if (n >= 3 && memcmp(tok, "sk-", 3) == 0) {
        snprintf(err, errlen, "line %d: a raw key (%s) where its SHA-256 belongs"
                 " (store the output of dsv4-key hash)", line, show);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (dsv4_keys_xdigit(tok[i]) < 0) {
            snprintf(err, errlen, "line %d: key hash has a non-hex character (%s)", line, show);
            return -1;
        }
    }
    if (dsv4_key_from_hex(tok, n, k->digest) != 0) {
        snprintf(err, errlen, "line %d: key hash has %zu hex digits, want 64 (%s)", line, n,
                 show);
        return -1;
    }
    if ((n = dsv4_keys_token(&p, end, &tok)) == 0) {
        snprintf(err, errlen, "line %d: no tenant after the key hash (%s)", line, show);
        return -1;
    }
    if (!dsv4_limit_tenant_ok(tok, n)) {
        snprintf(err, errlen, "line %d: invalid tenant (%s): want [A-Za-z0-9_.-], 1 to %d"
                 " bytes", line, dsv4_keys_show(show, sizeof(show), tok, n,
                                                DSV4_KEYS_SHOW_TOKEN), DSV4_LIMIT_TENANT_MAX);
        return -1;
    }
    memcpy(k->tenant, tok, n);
    k->tenant[n] = '\0';
    while ((n = dsv4_keys_token(&p, end, &tok)) > 0) {
        const char *eq = memchr(tok, '=', n);
        int         opt;

        dsv4_keys_show(show, sizeof(show), tok, n, DSV4_KEYS_SHOW_TOKEN);
        if (eq == NULL) {
            snprintf(err, errlen, "line %d: unexpected token (%s): want option=value", line,
                     show);
            return -1;
        }
        opt = dsv4_keys_option(k, tok, (size_t) (eq - tok), eq + 1, n - (size_t) (eq - tok) - 1,
                               why, sizeof(why));
        if (opt == -1) {
            snprintf(err, errlen, "line %d: unknown option (%s)", line, show);
            return -1;
        }
        if (opt == -2) {
            snprintf(err, errlen, "line %d: %s (%s)", line, why, show);
            return -1;
        }
        if (seen & (1u << opt)) {
            snprintf(err, errlen, "line %d: option given twice (%s)", line, show);
            return -1;
        }
        seen |= 1u << opt;
    }
    return 1;
}

typedef struct {
    uint8_t digest[32];
    int     line;
} dsv4_keys_seen;

static int
dsv4_keys_seen_cmp(const void *a, const void *b)
{
    const dsv4_keys_seen *x = a, *y = b;
    int                   c = memcmp(x->digest, y->digest, 32);

    return c != 0 ? c : (x->line > y->line) - (x->line < y->line);
}

/* A digest listed twice: the earliest second listing, with err; 0 if none,
 * -1 on a duplicate or out of memory. */
static int
dsv4_keys_dups(const dsv4_key *keys, const int *lines, int n, char *err, size_t errlen)
{
    dsv4_keys_seen *s = malloc((size_t) (n > 0 ? n : 1) * sizeof(*s));
    int             first = 0, again = 0;
    char            hex[65];

    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        memcpy(s[i].digest, keys[i].digest, 32);
        s[i].line = lines[i];
    }
    qsort(s, (size_t) n, sizeof(*s), dsv4_keys_seen_cmp);
    for (int i = 1; i < n; i++) {
        if (memcmp(s[i].digest, s[i - 1].digest, 32) == 0 && (again == 0 || s[i].line < again)) {
            again = s[i].line;
            first = s[i - 1].line;
            dsv4_key_hex(s[i].digest, hex);
        }
    }
    free(s);
    if (again != 0) {
        snprintf(err, errlen, "line %d: key hash %.*s... already listed on line %d", again,
                 DSV4_KEYS_SHOW_DIGEST, hex, first);
        return -1;
    }
    return 0;
}

/* appends k, listed on line, to v[*n] / lines[*n] (room for *cap);
 * 0 or -1 (out of memory) */
static int
dsv4_keys_push(dsv4_key **v, int **lines, int *n, int *cap, const dsv4_key *k, int line)
{
    if (*n == *cap) {
        dsv4_key *nv = realloc(*v, (size_t) *cap * 2 * sizeof(**v));
        int      *nl;

        if (nv == NULL) {
            return -1;
        }
        *v = nv;
        if ((nl = realloc(*lines, (size_t) *cap * 2 * sizeof(**lines))) == NULL) {
            return -1;
        }
        *lines = nl;
        *cap *= 2;
    }
    (*v)[*n] = *k;
    (*lines)[(*n)++] = line;
    return 0;
}

int
dsv4_keys_parse(const char *text, size_t len, dsv4_key **keys, int *nkeys, char *err,
                size_t errlen)
{
    const char *p = text, *end = text + len;
    dsv4_key   *v = malloc(sizeof(*v)), k;
    int        *lines = malloc(sizeof(*lines));
    int         n = 0, cap = 1, line = 0, rc = 0;

    *keys = NULL;
    *nkeys = 0;
    if (v == NULL || lines == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    while (rc == 0 && p < end) {
        const char *nl = memchr(p, '\n', (size_t) (end - p)), *le = nl ? nl : end;

        line++;
        if (le > p && le[-1] == '\r') {
            le--;
        }
        rc = dsv4_keys_line(p, le, line, &k, err, errlen);
        p = nl ? nl + 1 : end;
        if (rc == 1 && (rc = dsv4_keys_push(&v, &lines, &n, &cap, &k, line)) != 0) {
            snprintf(err, errlen, "out of memory");
        }
    }
    if (rc == 0) {
        rc = dsv4_keys_dups(v, lines, n, err, errlen);
    }
    free(lines);
    if (rc != 0) {
        free(v);
        return -1;
    }
    *keys = v;
    *nkeys = n;
    return 0;
}

/* ---- keys stored in Redis ----------------------------------------------- */

int
dsv4_key_from_redis(const struct redisReply *r, const uint8_t digest[32], dsv4_key *k,
                    char *err, size_t errlen)
{
    char hex[65], show[64], why[96];
    int  revoked = 0;

    dsv4_key_hex(digest, hex);
    hex[DSV4_KEYS_SHOW_DIGEST] = '\0';
    if (r == NULL) {
        snprintf(err, errlen, "key %s...: no reply", hex);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "key %s...: redis error: %s", hex,
                 dsv4_keys_show(show, sizeof(show), r->str, r->len, DSV4_KEYS_SHOW_TOKEN));
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) {
        snprintf(err, errlen, "key %s...: not a field/value list (reply type %d, %zu elements)",
                 hex, r->type, r->type == REDIS_REPLY_ARRAY ? r->elements : 0);
        return -1;
    }
    if (r->elements == 0) {
        return 0;
    }
    dsv4_keys_init(k);
    memcpy(k->digest, digest, 32);
    for (size_t i = 0; i < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f == NULL || v == NULL || f->type != REDIS_REPLY_STRING
            || v->type != REDIS_REPLY_STRING) {
            snprintf(err, errlen, "key %s...: field %zu is not a string pair", hex, i / 2 + 1);
            return -1;
        }
        dsv4_keys_show(show, sizeof(show), v->str, v->len, DSV4_KEYS_SHOW_TOKEN);
        if (f->len == 6 && memcmp(f->str, "tenant", 6) == 0) {
            if (!dsv4_limit_tenant_ok(v->str, v->len)) {
                snprintf(err, errlen, "key %s...: invalid tenant (%s)", hex, show);
                return -1;
            }
            memcpy(k->tenant, v->str, v->len);
            k->tenant[v->len] = '\0';
        } else if (f->len == 7 && memcmp(f->str, "revoked", 7) == 0) {
            if (v->len != 1 || (v->str[0] != '0' && v->str[0] != '1')) {
                snprintf(err, errlen, "key %s...: revoked wants 0 or 1 (%s)", hex, show);
                return -1;
            }
            revoked = v->str[0] == '1';
        } else if (!(f->len == 6 && memcmp(f->str, "models", 6) == 0 && v->len == 0)
                   && dsv4_keys_option(k, f->str, f->len, v->str, v->len, why, sizeof(why))
                      == -2) {
            /* an empty models field means every model; fields that are not
             * options (notes, creation dates) are the admin's */
            snprintf(err, errlen, "key %s...: %s (%s)", hex, why, show);
            return -1;
        }
    }
    if (k->tenant[0] == '\0') {
        snprintf(err, errlen, "key %s...: no tenant field", hex);
        return -1;
    }
    return revoked ? 0 : 1;
}
