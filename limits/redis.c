/*
 * The scripts' argument vectors (layouts in lua.c) and the parsers of their
 * replies.  A reply comes from the network: anything but the exact layout
 * (type, length, ranges, consistency) is refused with a reason, never
 * trusted and never a crash.
 */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- argument vectors --------------------------------------------------- */

typedef struct {
    dsv4_limit_cmd *c;
    size_t          used;       /* bytes of c->storage taken */
    int             failed;     /* something did not fit */
} dsv4_cmd_builder;

static void
dsv4_cmd_begin(dsv4_cmd_builder *b, dsv4_limit_cmd *c)
{
    b->c = c;
    b->used = 0;
    b->failed = 0;
    c->argc = 0;
}

/* appends an argument printed into c->storage */
static void __attribute__((format(printf, 2, 3)))
dsv4_cmd_addf(dsv4_cmd_builder *b, const char *fmt, ...)
{
    dsv4_limit_cmd *c = b->c;
    size_t          room = sizeof(c->storage) - b->used;
    va_list         ap;
    int             n;

    if (b->failed || c->argc == DSV4_LIMIT_ARGV_MAX) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf(c->storage + b->used, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= room) {
        b->failed = 1;
        return;
    }
    c->argv[c->argc] = c->storage + b->used;
    c->argvlen[c->argc++] = (size_t) n;
    b->used += (size_t) n + 1;
}

static void
dsv4_cmd_addi(dsv4_cmd_builder *b, int64_t v)
{
    dsv4_cmd_addf(b, "%lld", (long long) v);
}

/* EVALSHA sha or EVAL script (pointed to, not copied), then numkeys and,
 * with a tenant, KEYS[1] = "<prefix>{<tenant>}:" */
static void
dsv4_cmd_script(dsv4_cmd_builder *b, const char *sha, const char *script, const char *prefix,
                const char *tenant)
{
    dsv4_limit_cmd *c = b->c;

    if (sha != NULL) {
        dsv4_cmd_addf(b, "EVALSHA");
        dsv4_cmd_addf(b, "%s", sha);
    } else {
        dsv4_cmd_addf(b, "EVAL");
        if (!b->failed) {
            c->argv[c->argc] = script;
            c->argvlen[c->argc++] = strlen(script);
        }
    }
    dsv4_cmd_addf(b, "%d", tenant != NULL);
    if (tenant != NULL) {
        dsv4_cmd_addf(b, "%s{%s}:", prefix, tenant);
    }
}

static int
dsv4_cmd_count_ok(int64_t v)
{
    return v <= DSV4_LIMIT_COUNT_MAX;
}

int
dsv4_limit_cmd_admit(dsv4_limit_cmd *c, const char *sha, const char *prefix,
                     const char *tenant, const dsv4_limits *l, int64_t tokens,
                     const char *lease_id, int64_t lease_ms, int64_t now_ms)
{
    dsv4_cmd_builder b;

    dsv4_cmd_begin(&b, c);
    if (!dsv4_limit_tenant_ok(tenant, strlen(tenant)) || lease_id == NULL || lease_ms < 0
        || !dsv4_cmd_count_ok(tokens) || !dsv4_cmd_count_ok(l->rpm)
        || !dsv4_cmd_count_ok(l->tpm) || !dsv4_cmd_count_ok(l->concurrency)
        || !dsv4_cmd_count_ok(l->daily) || !dsv4_cmd_count_ok(l->monthly)) {
        return -1;
    }
    dsv4_cmd_script(&b, sha, dsv4_limit_lua_admit, prefix, tenant);
    dsv4_cmd_addi(&b, now_ms < 0 ? -1 : now_ms);
    dsv4_cmd_addi(&b, tokens > 0 ? tokens : 0);
    dsv4_cmd_addf(&b, "%s", lease_id);
    dsv4_cmd_addi(&b, lease_ms);
    dsv4_cmd_addi(&b, l->rpm);
    dsv4_cmd_addi(&b, l->tpm);
    dsv4_cmd_addi(&b, l->concurrency);
    dsv4_cmd_addi(&b, l->daily);
    dsv4_cmd_addi(&b, l->monthly);
    return b.failed ? -1 : 0;
}

int
dsv4_limit_cmd_finish(dsv4_limit_cmd *c, const char *sha, const char *prefix,
                      const char *tenant, int admitted, const dsv4_limit_reservation *res,
                      int64_t tokens, const char *lease_id, const dsv4_usage *u,
                      int64_t now_ms)
{
    static const dsv4_limit_reservation none;
    dsv4_cmd_builder                    b;
    dsv4_usage                          use;

    dsv4_cmd_begin(&b, c);
    if (u == NULL) {
        return -1;
    }
    use = *u;
    if (!dsv4_limit_tenant_ok(tenant, strlen(tenant))
        || (admitted && (res == NULL || lease_id == NULL || !dsv4_cmd_count_ok(tokens)
                         || !dsv4_limit_day_ok(res->day) || !dsv4_limit_month_ok(res->month)))) {
        return -1;
    }
    for (int i = 0; i < DSV4_USAGE_NFIELDS; i++) {
        if (*dsv4_usage_field(&use, i) < 0) {
            return -1;
        }
    }
    if (!admitted) {
        res = &none;
        lease_id = "";
    }
    dsv4_cmd_script(&b, sha, dsv4_limit_lua_finish, prefix, tenant);
    dsv4_cmd_addf(&b, "%s", prefix);
    dsv4_cmd_addf(&b, "%s", tenant);
    dsv4_cmd_addi(&b, now_ms < 0 ? -1 : now_ms);
    dsv4_cmd_addi(&b, admitted != 0);
    dsv4_cmd_addi(&b, res->time_ms);
    dsv4_cmd_addi(&b, res->tokens);
    dsv4_cmd_addi(&b, res->day);
    dsv4_cmd_addi(&b, res->month);
    dsv4_cmd_addi(&b, tokens > 0 ? tokens : 0);
    dsv4_cmd_addf(&b, "%s", lease_id);
    for (int i = 0; i < DSV4_USAGE_NFIELDS; i++) {
        dsv4_cmd_addi(&b, *dsv4_usage_field(&use, i));
    }
    return b.failed ? -1 : 0;
}

int
dsv4_limit_cmd_usage(dsv4_limit_cmd *c, const char *sha, const char *prefix,
                     const char *tenant, int64_t now_ms)
{
    dsv4_cmd_builder b;

    dsv4_cmd_begin(&b, c);
    if (tenant != NULL && !dsv4_limit_tenant_ok(tenant, strlen(tenant))) {
        return -1;
    }
    dsv4_cmd_script(&b, sha, dsv4_limit_lua_usage, prefix, tenant);
    dsv4_cmd_addf(&b, "%s", prefix);
    dsv4_cmd_addi(&b, now_ms < 0 ? -1 : now_ms);
    if (tenant != NULL) {
        dsv4_cmd_addf(&b, "%s", tenant);
    }
    return b.failed ? -1 : 0;
}

/* ---- replies ------------------------------------------------------------ */

/* r's type, for messages */
static const char *
dsv4_reply_type(const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:  return "string";
    case REDIS_REPLY_ARRAY:   return "array";
    case REDIS_REPLY_INTEGER: return "integer";
    case REDIS_REPLY_NIL:     return "nil";
    case REDIS_REPLY_STATUS:  return "status";
    case REDIS_REPLY_ERROR:   return "error";
    default:                  return "unknown type";
    }
}

/* 0 when r is an array of exactly n elements (n 0: any); -1 with err (a
 * Redis error reply is quoted: NOSCRIPT, OOM, a script error...) */
static int
dsv4_reply_array(const redisReply *r, size_t n, const char *what, char *err, size_t errlen)
{
    if (r == NULL) {
        snprintf(err, errlen, "%s reply: none (connection lost)", what);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s reply: redis error: %.*s", what,
                 (int) (r->len < 200 ? r->len : 200), r->str ? r->str : "");
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "%s reply: %s, want an array", what, dsv4_reply_type(r));
        return -1;
    }
    if (n != 0 && r->elements != n) {
        snprintf(err, errlen, "%s reply: %zu elements, want %zu", what, r->elements, n);
        return -1;
    }
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element == NULL || r->element[i] == NULL) {
            snprintf(err, errlen, "%s reply: element %zu missing", what, i + 1);
            return -1;
        }
    }
    return 0;
}

/* element i of r as an integer in [lo, hi]; 0, or -1 with err */
static int
dsv4_reply_int(const redisReply *r, size_t i, const char *what, const char *name, int64_t lo,
               int64_t hi, int64_t *out, char *err, size_t errlen)
{
    const redisReply *e = r->element[i];

    if (e->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "%s reply: element %zu (%s) is a %s, want an integer", what, i + 1,
                 name, dsv4_reply_type(e));
        return -1;
    }
    if (e->integer < lo || e->integer > hi) {
        snprintf(err, errlen, "%s reply: element %zu (%s) is %lld, want %lld to %lld", what,
                 i + 1, name, (long long) e->integer, (long long) lo, (long long) hi);
        return -1;
    }
    *out = e->integer;
    return 0;
}

#define DSV4_REPLY_ADMIT_N      13
#define DSV4_REPLY_USAGE_N      (1 + 2 * DSV4_USAGE_NFIELDS)

int
dsv4_limit_reply_admit(const struct redisReply *r, dsv4_limit_verdict *v,
                       dsv4_limit_reservation *res, char *err, size_t errlen)
{
    /* a reset is under a window from the newest second (a clock standing
     * still may add up to another window); a wait is at most a month */
    const int64_t  RESET = 2 * DSV4_LIMIT_SLOTS * 1000, WAIT = 32 * DSV4_LIMIT_DAY_MS;
    const int64_t  MAX = DSV4_LIMIT_COUNT_MAX, T = INT64_MAX;
    dsv4_limit_verdict     a;
    dsv4_limit_reservation b;
    int64_t                allowed, reason;
    struct {
        const char *name;
        int64_t     lo, hi, *out;
    } f[DSV4_REPLY_ADMIT_N] = {
        { "allowed", 0, 1, &allowed },
        { "reason", 0, DSV4_LIMIT_REASONS - 1, &reason },
        { "limit_requests", 0, MAX, &a.limit_requests },
        { "remaining_requests", 0, MAX, &a.remaining_requests },
        { "reset_requests_ms", 0, RESET, &a.reset_requests_ms },
        { "limit_tokens", 0, MAX, &a.limit_tokens },
        { "remaining_tokens", 0, MAX, &a.remaining_tokens },
        { "reset_tokens_ms", 0, RESET, &a.reset_tokens_ms },
        { "retry_after_ms", -1, WAIT, &a.retry_after_ms },
        { "time_ms", 0, T, &b.time_ms },
        { "tokens", 0, MAX, &b.tokens },
        { "day", 0, 99991231, &b.day },
        { "month", 0, 999912, &b.month },
    };
    const char *bad = NULL;

    if (dsv4_reply_array(r, DSV4_REPLY_ADMIT_N, "admit", err, errlen) != 0) {
        return -1;
    }
    for (int i = 0; i < DSV4_REPLY_ADMIT_N; i++) {
        if (dsv4_reply_int(r, (size_t) i, "admit", f[i].name, f[i].lo, f[i].hi, f[i].out, err,
                           errlen) != 0) {
            return -1;
        }
    }
    if ((allowed == 1) != (reason == DSV4_LIMIT_OK)) {
        bad = "allowed and reason disagree";
    } else if (a.remaining_requests > a.limit_requests || a.remaining_tokens > a.limit_tokens) {
        bad = "more remaining than the limit";
    } else if (allowed ? a.retry_after_ms != 0 : a.retry_after_ms == 0) {
        bad = "retry_after does not match the verdict";
    } else if (allowed ? !dsv4_limit_day_ok(b.day) || b.month != b.day / 100
                       : b.time_ms != 0 || b.tokens != 0 || b.day != 0 || b.month != 0) {
        bad = "reservation does not match the verdict";
    }
    if (bad != NULL) {
        snprintf(err, errlen, "admit reply: %s", bad);
        return -1;
    }
    a.allowed = (int) allowed;
    a.reason = (int) reason;
    *v = a;
    if (allowed) {
        *res = b;
    }
    return 0;
}

int
dsv4_limit_reply_finish(const struct redisReply *r, char *err, size_t errlen)
{
    if (r != NULL && r->type == REDIS_REPLY_STATUS && r->len == 2 && r->str != NULL
        && memcmp(r->str, "OK", 2) == 0) {
        return 0;
    }
    if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "finish reply: redis error: %.*s",
                 (int) (r->len < 200 ? r->len : 200), r->str ? r->str : "");
    } else {
        snprintf(err, errlen, "finish reply: %s, want status OK",
                 r == NULL ? "none (connection lost)" : dsv4_reply_type(r));
    }
    return -1;
}

/* one tenant's entry (an array of 11) into *t; 0, or -1 with err */
static int
dsv4_reply_tenant(const redisReply *e, size_t i, int64_t day, int64_t month,
                  dsv4_tenant_usage *t, char *err, size_t errlen)
{
    char what[32];

    snprintf(what, sizeof(what), "usage entry %zu", i);
    if (dsv4_reply_array(e, DSV4_REPLY_USAGE_N, what, err, errlen) != 0) {
        return -1;
    }
    if (e->element[0]->type != REDIS_REPLY_STRING
        || !dsv4_limit_tenant_ok(e->element[0]->str, e->element[0]->len)) {
        snprintf(err, errlen, "%s reply: element 1 is not a tenant id", what);
        return -1;
    }
    memcpy(t->tenant, e->element[0]->str, e->element[0]->len);
    t->tenant[e->element[0]->len] = '\0';
    t->day = day;
    t->month = month;
    for (int k = 0; k < 2 * DSV4_USAGE_NFIELDS; k++) {
        dsv4_usage *u = k < DSV4_USAGE_NFIELDS ? &t->today : &t->this_month;
        if (dsv4_reply_int(e, (size_t) k + 1, what, dsv4_usage_fields[k % DSV4_USAGE_NFIELDS],
                           0, INT64_MAX, dsv4_usage_field(u, k % DSV4_USAGE_NFIELDS), err,
                           errlen) != 0) {
            return -1;
        }
    }
    return 0;
}

int
dsv4_limit_reply_usage(const struct redisReply *r, dsv4_tenant_usage **out, int *n,
                       char *err, size_t errlen)
{
    dsv4_tenant_usage *v;
    int64_t            day, month;

    *out = NULL;
    *n = 0;
    if (dsv4_reply_array(r, 0, "usage", err, errlen) != 0) {
        return -1;
    }
    if (r->elements < 2 || r->elements > INT32_MAX) {
        snprintf(err, errlen, "usage reply: %zu elements, want day, month, tenants...",
                 r->elements);
        return -1;
    }
    if (dsv4_reply_int(r, 0, "usage", "day", 0, 99991231, &day, err, errlen) != 0
        || dsv4_reply_int(r, 1, "usage", "month", 0, 999912, &month, err, errlen) != 0) {
        return -1;
    }
    if (!dsv4_limit_day_ok(day) || month != day / 100) {
        snprintf(err, errlen, "usage reply: day %lld and month %lld are not a date",
                 (long long) day, (long long) month);
        return -1;
    }
    v = calloc(r->elements - 1, sizeof(*v));    /* never 0 bytes: callers free() it */
    if (v == NULL) {
        snprintf(err, errlen, "usage reply: out of memory");
        return -1;
    }
    for (size_t i = 2; i < r->elements; i++) {
        if (dsv4_reply_tenant(r->element[i], i - 1, day, month, &v[i - 2], err, errlen) != 0) {
            free(v);
            return -1;
        }
    }
    *out = v;
    *n = (int) (r->elements - 2);
    return 0;
}
