/*
 * check_limits_redis PORT: the Lua scripts (limits/lua.c) against the C state
 * machine (limits/limit.c) on a real redis-server at 127.0.0.1:PORT, which
 * tests/scripts/test_limits starts and stops.
 *
 *   - random admit/finish runs for several tenants with pinned clocks (steps
 *     of milliseconds to hours, over midnight and month ends, small and
 *     whole-window steps back within a day), through both: identical
 *     verdicts, remaining counts, resets, retry-afters and reservations, and
 *     identical window contents (Redis hashes against the C rings), budgets
 *     and lease counts;
 *   - metering: the usage script's day and month sums, for one tenant and
 *     for every tenant, against sums kept here;
 *   - TTLs on every key, leases expiring by themselves, Redis's own clock;
 *   - the reply parsers on what scripts returning wrong shapes, script
 *     errors and corrupted keys send back;
 *   - several connections interleaving on one tenant: each admission sees a
 *     distinct remaining count and the totals are exact (atomicity).
 */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "limits/internal.h"
#include "tests/test.h"
#include "limits_helpers.h"

#define PREFIX      "dsv4test:"
#define LEASE_MS    (400 * 86400000LL)      /* no lease expires in a run */
#define NTENANTS    5
#define OPS         20000
#define MAXOPEN     64

static int  port;
static int  quiet;              /* refusals expected: do not print them */
static char sha_admit[41], sha_finish[41], sha_usage[41];

static redisContext *
conn(void)
{
    struct timeval tv = { 5, 0 };
    redisContext  *c = redisConnectWithTimeout("127.0.0.1", port, tv);

    if (c == NULL || c->err) {
        fprintf(stderr, "connect 127.0.0.1:%d: %s\n", port, c ? c->errstr : "no memory");
        exit(1);
    }
    return c;
}

static redisReply *
send_cmd(redisContext *c, dsv4_limit_cmd *k)
{
    return redisCommandArgv(c, k->argc, k->argv, k->argvlen);
}

/* an integer command's result (-2 on anything else) */
static long long
qint(redisContext *c, const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(c, fmt, arg);
    long long   v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -2;

    freeReplyObject(r);
    return v;
}

static uint64_t X = 0x2545F4914F6CDD1DULL;

static int64_t
rnd(int64_t n)
{
    X ^= X << 13;
    X ^= X >> 7;
    X ^= X << 17;
    return (int64_t) (X % (uint64_t) n);
}

static void
print_verdict(const char *who, const dsv4_limit_verdict *v)
{
    fprintf(stderr, "  %s: allowed %d %s req %lld/%lld reset %lld tok %lld/%lld reset %lld"
            " retry %lld\n", who, v->allowed, dsv4_limit_reason_name(v->reason),
            (long long) v->remaining_requests, (long long) v->limit_requests,
            (long long) v->reset_requests_ms, (long long) v->remaining_tokens,
            (long long) v->limit_tokens, (long long) v->reset_tokens_ms,
            (long long) v->retry_after_ms);
}

/* ---- both sides, one step each ------------------------------------------ */

static int
lua_admit(redisContext *c, const char *tenant, const dsv4_limits *l, int64_t tokens,
          const char *lease, int64_t lease_ms, int64_t now, int eval, dsv4_limit_verdict *v,
          dsv4_limit_reservation *res)
{
    dsv4_limit_cmd k;
    redisReply    *r;
    char           err[256];
    int            rc;

    if (dsv4_limit_cmd_admit(&k, eval ? NULL : sha_admit, PREFIX, tenant, l, tokens, lease,
                             lease_ms, now) != 0) {
        fprintf(stderr, "admit command does not fit\n");
        return -1;
    }
    r = send_cmd(c, &k);
    rc = dsv4_limit_reply_admit(r, v, res, err, sizeof(err));
    if (rc != 0 && !quiet) {
        fprintf(stderr, "%s\n", err);
    }
    freeReplyObject(r);
    return rc;
}

static int
lua_finish(redisContext *c, const char *tenant, int admitted,
           const dsv4_limit_reservation *res, int64_t tokens, const char *lease,
           const dsv4_usage *u, int64_t now)
{
    dsv4_limit_cmd k;
    redisReply    *r;
    char           err[256];
    int            rc;

    if (dsv4_limit_cmd_finish(&k, sha_finish, PREFIX, tenant, admitted, res, tokens, lease, u,
                              now) != 0) {
        fprintf(stderr, "finish command does not fit\n");
        return -1;
    }
    r = send_cmd(c, &k);
    rc = dsv4_limit_reply_finish(r, err, sizeof(err));
    if (rc != 0 && !quiet) {
        fprintf(stderr, "%s\n", err);
    }
    freeReplyObject(r);
    return rc;
}

/* usage for one tenant or all (tenant NULL); n entries in *out, or -1 */
static int
lua_usage(redisContext *c, const char *tenant, int64_t now, dsv4_tenant_usage **out)
{
    dsv4_limit_cmd k;
    redisReply    *r;
    char           err[256];
    int            n = -1;

    if (dsv4_limit_cmd_usage(&k, sha_usage, PREFIX, tenant, now) != 0) {
        return -1;
    }
    r = send_cmd(c, &k);
    if (dsv4_limit_reply_usage(r, out, &n, err, sizeof(err)) != 0) {
        if (!quiet) {
            fprintf(stderr, "%s\n", err);
        }
        n = -1;
    }
    freeReplyObject(r);
    return n;
}

/* ---- random runs through both ------------------------------------------- */

typedef struct {
    char                   name[16];
    dsv4_limit_state       s;
    dsv4_limits            l;
    dsv4_limit_reservation res[MAXOPEN];
    char                   lease[MAXOPEN][24];
    int                    nopen;
} tenant;

/* what was metered, as the finish script should have recorded it */
typedef struct {
    int        t;
    int64_t    day, month;
    dsv4_usage u;
} metered;

static tenant  TN[NTENANTS];
static metered MET[OPS];
static int     NMET;

/* a period's budget as the C state held it when the period ended: Redis's
 * old period hashes must still say the same (late finishes leave them) */
typedef struct {
    int         t;
    const char *kind;           /* "d" or "m" */
    int64_t     period, tokens;
} ended;

static ended END[OPS];
static int   NEND;

static void
random_limits(dsv4_limits *l)
{
    l->rpm = rnd(3) ? 1 + rnd(8) : 0;
    l->tpm = rnd(4) ? 50 + rnd(400) : 0;
    l->concurrency = rnd(3) ? 1 + rnd(4) : 0;
    l->daily = rnd(3) ? 1000 + rnd(8000) : 0;
    l->monthly = rnd(3) ? 10000 + rnd(100000) : 0;
}

static void
random_usage(dsv4_usage *u, int64_t completion)
{
    u->requests = 1;
    u->prompt_tokens = rnd(300);
    u->cached_tokens = rnd(u->prompt_tokens + 1);
    u->completion_tokens = completion;
    u->reasoning_tokens = rnd(completion + 1);
}

/* the Redis window hash against the C ring: fields outside the ring or
 * holding another count, and nonzero slots without a field */
static int
window_diff(redisContext *c, const char *name, const char *which, const dsv4_limit_window *w)
{
    redisReply *r = redisCommand(c, "HGETALL " PREFIX "{%s}:%s", name, which);
    int         bad = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return 1;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        int64_t t = atoll(r->element[i]->str), v = atoll(r->element[i + 1]->str);
        bad += t <= w->newest - DSV4_LIMIT_SLOTS || t > w->newest
               || w->count[dsv4_limit_floormod(t, DSV4_LIMIT_SLOTS)] != v;
    }
    for (int64_t t = w->newest - DSV4_LIMIT_SLOTS + 1; t <= w->newest; t++) {
        int found = w->count[dsv4_limit_floormod(t, DSV4_LIMIT_SLOTS)] == 0;
        for (size_t i = 0; !found && i + 1 < r->elements; i += 2) {
            found = atoll(r->element[i]->str) == t;
        }
        bad += !found;
    }
    freeReplyObject(r);
    return bad;
}

static void
check_random(redisContext *c)
{
    int64_t now = T(2024, 2, 28, 23, 40, 0, 0), start = now;
    int     bad = 0, admitted = 0, rejected = 0, backs = 0, restarts = 0, wbad = 0;
    int     why[DSV4_LIMIT_REASONS] = { 0 };

    for (int i = 0; i < NTENANTS; i++) {
        snprintf(TN[i].name, sizeof(TN[i].name), "tenant-%d", i);
        dsv4_limit_state_init(&TN[i].s);
        random_limits(&TN[i].l);
    }
    for (int op = 0; op < OPS && bad < 5; op++) {
        int64_t step = rnd(100), back;
        tenant *t = &TN[rnd(NTENANTS)];

        if (step < 5 && dsv4_limit_day(now - (back = 1 + rnd(2500))) == dsv4_limit_day(now)) {
            now -= back;                                /* a clock a little behind */
            backs++;
        } else if (step < 6 && dsv4_limit_day(now - (back = 60000 + rnd(30000)))
                               == dsv4_limit_day(now)) {
            now -= back;                                /* a whole window back */
            restarts++;
        } else {
            now += step < 70   ? rnd(3000)
                   : step < 90 ? rnd(200)
                   : step < 98 ? 10000 + rnd(60000)
                               : 3600000 + rnd(18000000);
        }
        if (rnd(60) == 0) {
            random_limits(&t->l);
        }
        if (rnd(2) == 0 && t->nopen > 0) {
            int        j = (int) rnd(t->nopen);
            int64_t    used = rnd(350);
            dsv4_usage u;
            random_usage(&u, used);
            dsv4_limit_finish(&t->s, &t->res[j], now, used);
            if (lua_finish(c, t->name, 1, &t->res[j], used, t->lease[j], &u, now) != 0) {
                bad++;
            }
            metered m = { (int) (t - TN), t->res[j].day, t->res[j].month, u };
            MET[NMET++] = m;
            t->nopen--;
            t->res[j] = t->res[t->nopen];
            memcpy(t->lease[j], t->lease[t->nopen], sizeof(t->lease[j]));
            continue;
        }
        dsv4_limit_verdict     a, b;
        dsv4_limit_reservation ra, rb;
        int64_t                tokens = rnd(10) == 0 ? rnd(600) : rnd(150);
        char                   lease[24];

        snprintf(lease, sizeof(lease), "%s-%d", t->name, op);
        if (t->nopen == MAXOPEN) {
            t->l.concurrency = MAXOPEN;         /* the bookkeeping here is bounded */
        }
        dsv4_limit_state old = t->s;
        dsv4_limit_admit(&t->s, &t->l, now, tokens, &a, &ra);
        if (old.day != 0 && old.day != t->s.day) {
            ended e = { (int) (t - TN), "d", old.day, old.day_tokens };
            END[NEND++] = e;
        }
        if (old.month != 0 && old.month != t->s.month) {
            ended e = { (int) (t - TN), "m", old.month, old.month_tokens };
            END[NEND++] = e;
        }
        if (lua_admit(c, t->name, &t->l, tokens, lease, LEASE_MS, now, op % 7 == 0, &b, &rb)
            != 0) {
            bad++;
            continue;
        }
        if (!same_verdict(&a, &b) || (a.allowed && memcmp(&ra, &rb, sizeof(ra)) != 0)) {
            fprintf(stderr, "op %d, %s at +%lld ms, %lld tokens, limits %lld/%lld/%lld/%lld/"
                    "%lld:\n", op, t->name, (long long) (now - start), (long long) tokens,
                    (long long) t->l.rpm, (long long) t->l.tpm, (long long) t->l.concurrency,
                    (long long) t->l.daily, (long long) t->l.monthly);
            print_verdict("C  ", &a);
            print_verdict("lua", &b);
            if (a.allowed) {
                fprintf(stderr, "  res C %lld %lld %lld %lld lua %lld %lld %lld %lld\n",
                        (long long) ra.time_ms, (long long) ra.tokens, (long long) ra.day,
                        (long long) ra.month, (long long) rb.time_ms, (long long) rb.tokens,
                        (long long) rb.day, (long long) rb.month);
            }
            bad++;
        }
        admitted += a.allowed;
        rejected += !a.allowed;
        why[a.reason]++;
        if (a.allowed) {
            t->res[t->nopen] = ra;
            memcpy(t->lease[t->nopen++], lease, sizeof(lease));
        } else if (rnd(3) == 0) {
            /* a rejected request metered (admitted 0): today's period */
            dsv4_usage u;
            random_usage(&u, 0);
            if (lua_finish(c, t->name, 0, NULL, 0, NULL, &u, now) != 0) {
                bad++;
            }
            metered m = { (int) (t - TN), dsv4_limit_day(now), dsv4_limit_month(now), u };
            MET[NMET++] = m;
        }
        if (op % 50 == 0) {
            wbad += window_diff(c, t->name, "rpm", &t->s.requests)
                    + window_diff(c, t->name, "tpm", &t->s.tokens);
        }
    }
    printf("random run: %d admitted, %d rejected (rpm %d tpm %d concurrency %d daily %d"
           " monthly %d), %d steps back, %d whole-window steps back, %lld days\n", admitted,
           rejected, why[1], why[2], why[3], why[4], why[5], backs, restarts,
           (long long) ((now - start) / 86400000));
    TEST_CHECK(bad == 0, "random run: %d steps differ between C and Lua", bad);
    TEST_CHECK(wbad == 0, "random run: %d window hashes differ from the C rings", wbad);
    TEST_CHECK(admitted > 3000 && rejected > 1000 && why[1] && why[2] && why[3] && why[4]
               && why[5] && backs > 20 && restarts > 3, "random run exercised too little");

    /* the ended periods' budgets, then the final state, key by key */
    int ebad = 0;
    for (int k = 0; k < NEND; k++) {
        redisReply *r = redisCommand(c, "HGET " PREFIX "{%s}:%s:%lld budget", TN[END[k].t].name,
                                     END[k].kind, (long long) END[k].period);
        ebad += !r || r->type != REDIS_REPLY_STRING || atoll(r->str) != END[k].tokens;
        freeReplyObject(r);
    }
    TEST_CHECK(NEND > 50 && ebad == 0, "%d of %d ended periods' budgets differ", ebad, NEND);
    for (int i = 0; i < NTENANTS; i++) {
        tenant *t = &TN[i];
        char    key[128];
        TEST_CHECK(window_diff(c, t->name, "rpm", &t->s.requests) == 0
                   && window_diff(c, t->name, "tpm", &t->s.tokens) == 0, "%s: windows", t->name);
        snprintf(key, sizeof(key), PREFIX "{%.15s}:conc", t->name);
        TEST_CHECK(qint(c, "ZCARD %s", key) == t->s.concurrent && t->s.concurrent == t->nopen,
                   "%s: %lld leases, C %lld", t->name, qint(c, "ZCARD %s", key),
                   (long long) t->s.concurrent);
        redisReply *r = redisCommand(c, "HGET " PREFIX "{%s}:d:%lld budget", t->name,
                                     (long long) t->s.day);
        TEST_CHECK(r && r->type == REDIS_REPLY_STRING && atoll(r->str) == t->s.day_tokens,
                   "%s: day budget %s, C %lld", t->name, r && r->str ? r->str : "?",
                   (long long) t->s.day_tokens);
        freeReplyObject(r);
        r = redisCommand(c, "HGET " PREFIX "{%s}:m:%lld budget", t->name, (long long) t->s.month);
        TEST_CHECK(r && r->type == REDIS_REPLY_STRING && atoll(r->str) == t->s.month_tokens,
                   "%s: month budget %s, C %lld", t->name, r && r->str ? r->str : "?",
                   (long long) t->s.month_tokens);
        freeReplyObject(r);
    }
}

/* metering: the usage script against MET, at instant q */
static void
check_usage_at(redisContext *c, int64_t q)
{
    int64_t           day = dsv4_limit_day(q), month = day / 100;
    dsv4_usage        want_d[NTENANTS], want_m[NTENANTS];
    int               in[NTENANTS] = { 0 }, nin = 0, bad = 0;
    dsv4_tenant_usage *u;
    int               n;

    memset(want_d, 0, sizeof(want_d));
    memset(want_m, 0, sizeof(want_m));
    for (int k = 0; k < NMET; k++) {
        if (MET[k].day == day) {
            dsv4_usage_add(&want_d[MET[k].t], &MET[k].u);
            in[MET[k].t] = 1;
        }
        if (MET[k].month == month) {
            dsv4_usage_add(&want_m[MET[k].t], &MET[k].u);
            in[MET[k].t] = 1;
        }
    }
    for (int i = 0; i < NTENANTS; i++) {
        nin += in[i];
        n = lua_usage(c, TN[i].name, q, &u);
        bad += n != 1 || strcmp(u[0].tenant, TN[i].name) != 0 || u[0].day != day
               || u[0].month != month || memcmp(&u[0].today, &want_d[i], sizeof(dsv4_usage)) != 0
               || memcmp(&u[0].this_month, &want_m[i], sizeof(dsv4_usage)) != 0;
        if (n >= 0) {
            free(u);
        }
    }
    n = lua_usage(c, NULL, q, &u);
    bad += n != nin;
    for (int i = 0, k = 0; n == nin && i < NTENANTS; i++) {
        if (in[i]) {                    /* names sort like their indexes */
            bad += strcmp(u[k].tenant, TN[i].name) != 0
                   || memcmp(&u[k].today, &want_d[i], sizeof(dsv4_usage)) != 0
                   || memcmp(&u[k].this_month, &want_m[i], sizeof(dsv4_usage)) != 0;
            k++;
        }
    }
    if (n >= 0) {
        free(u);
    }
    TEST_CHECK(bad == 0, "usage on %lld: %d mismatches (%d tenants listed, want %d)",
               (long long) day, bad, n, nin);
}

static void
check_usage(redisContext *c)
{
    TEST_CHECK(NMET > 500, "metered %d", NMET);
    for (int k = 0; k < NMET; k += NMET / 12 + 1) {
        check_usage_at(c, dsv4_limit_day_end_of(MET[k].day) - 1);
    }
    check_usage_at(c, dsv4_limit_day_end_of(MET[NMET - 1].day) - 1);
    check_usage_at(c, T(2030, 1, 1, 0, 0, 0, 0));          /* nothing then */
}

/* ---- TTLs, leases, Redis's clock --------------------------------------- */

static void
check_ttls(redisContext *c)
{
    dsv4_limits            l = { 10, 1000, 5, 10000, 100000 };
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r1, r2;
    dsv4_usage             u = { 1, 10, 0, 5, 0 };
    int64_t                now = T(2024, 6, 2, 12, 0, 0, 0);
    struct {
        const char *key;
        long long   lo, hi;
    } k[] = {
        { PREFIX "{ttl}:rpm", 1, 120 },
        { PREFIX "{ttl}:tpm", 1, 120 },
        { PREFIX "{ttl}:conc", 590, 600 },          /* the lease's 10 minutes */
        { PREFIX "{ttl}:d:20240602", 3 * 86400 - 60, 3 * 86400 },
        { PREFIX "{ttl}:m:202406", 93 * 86400 - 60, 93 * 86400 },
        { PREFIX "tenants:d:20240602", 3 * 86400 - 60, 3 * 86400 },
        { PREFIX "tenants:m:202406", 93 * 86400 - 60, 93 * 86400 },
    };

    TEST_CHECK(lua_admit(c, "ttl", &l, 10, "held", 600000, now, 0, &v, &r1) == 0 && v.allowed
               && lua_admit(c, "ttl", &l, 10, "done", 600000, now, 0, &v, &r2) == 0
               && v.allowed && lua_finish(c, "ttl", 1, &r2, 5, "done", &u, now + 10) == 0,
               "ttl: two admitted, one finished");
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        long long ttl = qint(c, "TTL %s", k[i].key);
        TEST_CHECK(ttl >= k[i].lo && ttl <= k[i].hi, "TTL %s: %lld", k[i].key, ttl);
    }
    /* no key without a TTL */
    redisReply *r = redisCommand(c, "KEYS " PREFIX "*");
    int         none = 0;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        none += qint(c, "TTL %s", r->element[i]->str) < 0;
    }
    TEST_CHECK(r && r->elements > 10 && none == 0, "%d of %zu keys have no TTL", none,
               r ? r->elements : 0);
    freeReplyObject(r);
}

static void
check_leases_and_clock(redisContext *c)
{
    dsv4_limits            l = { 0, 0, 1, 0, 0 }, l2 = { 10, 0, 0, 0, 0 };
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r1, r2;
    int64_t                t0 = T(2024, 6, 1, 12, 0, 0, 0);
    dsv4_usage             u = { 1, 10, 0, 5, 0 };
    dsv4_tenant_usage     *tu;
    struct timeval         tv;

    TEST_CHECK(lua_admit(c, "lease", &l, 1, "a", 1000, t0, 0, &v, &r1) == 0 && v.allowed,
               "lease a");
    TEST_CHECK(lua_admit(c, "lease", &l, 1, "b", 1000, t0 + 999, 0, &v, &r2) == 0 && !v.allowed
               && v.reason == DSV4_LIMIT_CONCURRENCY && v.retry_after_ms == 1000,
               "lease a still held");
    TEST_CHECK(lua_admit(c, "lease", &l, 1, "b", 1000, t0 + 1000, 0, &v, &r2) == 0 && v.allowed,
               "lease a expired by itself");
    TEST_CHECK(lua_finish(c, "lease", 1, &r2, 1, "b", &u, t0 + 1100) == 0
               && qint(c, "ZCARD %s", PREFIX "{lease}:conc") == 0, "finish ends lease b");

    /* Redis's clock: now_ms < 0 */
    gettimeofday(&tv, NULL);
    int64_t real = (int64_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
    TEST_CHECK(lua_admit(c, "clock", &l2, 5, "c", 60000, -1, 0, &v, &r1) == 0 && v.allowed
               && llabs(r1.time_ms - real) < 5000 && r1.day == dsv4_limit_day(r1.time_ms)
               && v.reset_requests_ms > 0 && v.reset_requests_ms <= 60000,
               "TIME: reservation at %lld, here %lld", (long long) r1.time_ms, (long long) real);
    TEST_CHECK(lua_finish(c, "clock", 1, &r1, 7, "c", &u, -1) == 0, "finish on TIME");
    TEST_CHECK(lua_usage(c, "clock", -1, &tu) == 1 && tu[0].day == r1.day
               && tu[0].today.completion_tokens == 5 && tu[0].today.requests == 1,
               "usage on TIME");
    free(tu);
    redisReply *r = redisCommand(c, "HGET " PREFIX "{clock}:d:%lld budget", (long long) r1.day);
    TEST_CHECK(r && r->str && strcmp(r->str, "7") == 0, "budget corrected on TIME");
    freeReplyObject(r);
}

/* ---- garbage ------------------------------------------------------------ */

/* the reply of EVAL script (no keys) */
static redisReply *
eval(redisContext *c, const char *script)
{
    return redisCommand(c, "EVAL %s 0", script);
}

static void
check_garbage(redisContext *c)
{
    dsv4_limit_verdict     v;
    dsv4_limit_reservation res;
    dsv4_tenant_usage     *u;
    dsv4_limit_cmd         k;
    dsv4_limits            l = { 5, 0, 0, 0, 0 };
    redisReply            *r;
    char                   err[256];
    int                    n;
    struct {
        const char *script, *want;
    } admit[] = {
        { "return 'x'", "string, want an array" },
        { "return {1,2,3}", "3 elements, want 13" },
        { "return {1,0,60,-1,0,0,0,0,0,1,1,20240510,202405}", "element 4 (remaining_requests)" },
        { "return {1,0,60,59,0,0,0,0,0,1,1,'20240510',202405}", "element 12 (day) is a string" },
        { "return {0,0,60,59,0,0,0,0,0,0,0,0,0}", "allowed and reason disagree" },
        { "return redis.error_reply('boom')", "redis error: ERR boom" },
        { "return false", "nil, want an array" },
        { "return {ok='fine'}", "status, want an array" },
        { "return 12", "integer, want an array" },
    }, usage[] = {
        { "return {20240510, 202405, {'acme', 1, 2}}", "3 elements, want 11" },
        { "return {20240510, 202405, {'a b',0,0,0,0,0,0,0,0,0,0}}", "not a tenant id" },
        { "return {20240510, 202405, {'acme',0,0,0,0,-1,0,0,0,0,0}}", "is -1" },
        { "return {20240510}", "1 elements" },
        { "return {20240532, 202405}", "not a date" },
        { "return {20240510, 202405, 'acme'}", "string, want an array" },
    }, finish[] = {
        { "return 'OK'", "string, want status OK" },
        { "return {ok='NOPE'}", "status, want status OK" },
        { "return 1", "integer, want status OK" },
        { "return {err='ERR no'}", "redis error: ERR no" },
    };

    for (size_t i = 0; i < sizeof(admit) / sizeof(admit[0]); i++) {
        r = eval(c, admit[i].script);
        err[0] = '\0';
        TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == -1
                   && strstr(err, admit[i].want) != NULL, "admit garbage '%s': %s",
                   admit[i].script, err);
        freeReplyObject(r);
    }
    for (size_t i = 0; i < sizeof(usage) / sizeof(usage[0]); i++) {
        r = eval(c, usage[i].script);
        err[0] = '\0';
        TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1 && u == NULL
                   && strstr(err, usage[i].want) != NULL, "usage garbage '%s': %s",
                   usage[i].script, err);
        freeReplyObject(r);
    }
    for (size_t i = 0; i < sizeof(finish) / sizeof(finish[0]); i++) {
        r = eval(c, finish[i].script);
        err[0] = '\0';
        TEST_CHECK(dsv4_limit_reply_finish(r, err, sizeof(err)) == -1
                   && strstr(err, finish[i].want) != NULL, "finish garbage '%s': %s",
                   finish[i].script, err);
        freeReplyObject(r);
    }
    r = eval(c, "return {ok='OK'}");
    TEST_CHECK(dsv4_limit_reply_finish(r, err, sizeof(err)) == 0, "status OK from a script");
    freeReplyObject(r);

    /* an unknown script */
    dsv4_limit_cmd_admit(&k, "0000000000000000000000000000000000000000", PREFIX, "g", &l, 1, "x",
                         1000, 5000);
    r = send_cmd(c, &k);
    TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == -1
               && strstr(err, "NOSCRIPT") != NULL, "NOSCRIPT: %s", err);
    freeReplyObject(r);
    /* arguments the script cannot read: a script error, not a crash */
    dsv4_limit_cmd_admit(&k, sha_admit, PREFIX, "g", &l, 1, "x", 1000, 5000);
    k.argv[5] = "many";
    k.argvlen[5] = 4;
    r = send_cmd(c, &k);
    TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == -1
               && strstr(err, "redis error") != NULL, "bad argument: %s", err);
    freeReplyObject(r);
    /* corrupted keys */
    quiet = 1;
    freeReplyObject(redisCommand(c, "HSET " PREFIX "{g}:tpm x y"));
    TEST_CHECK(lua_admit(c, "g", &l, 1, "x", 1000, 5000, 0, &v, &res) == -1,
               "corrupted window: refused");
    freeReplyObject(redisCommand(c, "SET " PREFIX "{g2}:rpm a-string"));
    TEST_CHECK(lua_admit(c, "g2", &l, 1, "x", 1000, 5000, 0, &v, &res) == -1,
               "window key of the wrong type: refused");
    int64_t day = dsv4_limit_day(5000);
    char    cmd[200];
    snprintf(cmd, sizeof(cmd), "HSET " PREFIX "{g3}:d:%lld requests lots", (long long) day);
    freeReplyObject(redisCommand(c, cmd));
    TEST_CHECK(lua_usage(c, "g3", 5000, &u) == -1, "corrupted usage hash: refused");
    quiet = 0;
}

/* ---- several connections at once ---------------------------------------- */

#define RACERS      4
#define RACE_TRIES  60

typedef struct {
    int     id, mode;           /* mode 0: rpm race, 1: tpm race */
    int     admitted, errors;
    int64_t rem[RACE_TRIES];
    int64_t used;               /* tokens finished (mode 0) */
} racer;

static const int64_t RACE_NOW = 1717243200000LL;       /* 2024-06-01 12:00:00 */

static void *
race(void *arg)
{
    racer        *q = arg;
    redisContext *c = conn();
    dsv4_limits   l = { q->mode == 0 ? 100 : 0, q->mode == 1 ? 1000 : 0, 0, 0, 0 };
    const char   *tenant = q->mode == 0 ? "race-rpm" : "race-tpm";

    for (int i = 0; i < RACE_TRIES; i++) {
        dsv4_limit_verdict     v;
        dsv4_limit_reservation res;
        char                   lease[32];
        int64_t                tokens = q->mode == 0 ? 1 + (q->id * 31 + i) % 90 : 7;

        snprintf(lease, sizeof(lease), "%d-%d", q->id, i);
        if (lua_admit(c, tenant, &l, tokens, lease, 60000, RACE_NOW + i, 0, &v, &res) != 0) {
            q->errors++;
            continue;
        }
        if (!v.allowed) {
            continue;
        }
        q->rem[q->admitted++] = q->mode == 0 ? v.remaining_requests : v.remaining_tokens;
        if (q->mode == 0) {
            dsv4_usage u = { 1, tokens, 0, tokens / 2, 0 };
            q->used += tokens / 2;
            q->errors += lua_finish(c, tenant, 1, &res, tokens / 2, lease, &u, RACE_NOW + i) != 0;
        }
    }
    redisFree(c);
    return NULL;
}

static int
cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return (x > y) - (x < y);
}

static void
check_race(redisContext *c, int mode)
{
    pthread_t th[RACERS];
    racer     q[RACERS];
    int64_t   all[RACERS * RACE_TRIES], used = 0;
    int       n = 0, errors = 0, distinct = 1;
    int       want = mode == 0 ? 100 : 1000 / 7;

    for (int i = 0; i < RACERS; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        q[i].id = i;
        q[i].mode = mode;
        pthread_create(&th[i], NULL, race, &q[i]);
    }
    for (int i = 0; i < RACERS; i++) {
        pthread_join(th[i], NULL);
        memcpy(all + n, q[i].rem, (size_t) q[i].admitted * sizeof(int64_t));
        n += q[i].admitted;
        errors += q[i].errors;
        used += q[i].used;
    }
    qsort(all, (size_t) n, sizeof(int64_t), cmp64);
    for (int i = 0; i < n; i++) {
        distinct &= all[i] == (mode == 0 ? i : (1000 - 7 * want) + 7 * i);
    }
    TEST_CHECK(errors == 0 && n == want && distinct,
               "%s race: %d admitted (want %d), %d errors, remaining counts %s",
               mode == 0 ? "rpm" : "tpm", n, want, errors, distinct ? "distinct" : "repeated");
    if (mode == 0) {
        redisReply *r = redisCommand(c, "HGETALL " PREFIX "{race-rpm}:tpm");
        int64_t     sum = 0;
        for (size_t i = 1; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i += 2) {
            sum += atoll(r->element[i]->str);
        }
        freeReplyObject(r);
        TEST_CHECK(sum == used, "rpm race: tpm window holds %lld, finished %lld",
                   (long long) sum, (long long) used);
        dsv4_tenant_usage *u;
        TEST_CHECK(lua_usage(c, "race-rpm", RACE_NOW, &u) == 1 && u[0].today.requests == 100
                   && u[0].today.completion_tokens == used
                   && qint(c, "ZCARD %s", PREFIX "{race-rpm}:conc") == 0,
                   "rpm race: metering and leases");
        free(u);
    }
}

static int
load(redisContext *c, const char *script, char sha[41])
{
    redisReply *r = redisCommand(c, "SCRIPT LOAD %s", script);
    int         ok = r && r->type == REDIS_REPLY_STRING && r->len == 40;

    if (ok) {
        memcpy(sha, r->str, 41);
    } else {
        fprintf(stderr, "SCRIPT LOAD: %s\n", r && r->str ? r->str : "no reply");
    }
    freeReplyObject(r);
    return ok;
}

int
main(int argc, char **argv)
{
    redisContext *c;

    if (argc != 2 || (port = atoi(argv[1])) <= 0) {
        fprintf(stderr, "usage: check_limits_redis PORT\n");
        return 2;
    }
    c = conn();
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    TEST_CHECK(load(c, dsv4_limit_lua_admit, sha_admit) && load(c, dsv4_limit_lua_finish,
                                                                    sha_finish)
               && load(c, dsv4_limit_lua_usage, sha_usage), "scripts load");
    if (sha_usage[0] != '\0') {
        check_random(c);
        check_usage(c);
        check_ttls(c);
        check_leases_and_clock(c);
        check_garbage(c);
        check_race(c, 0);
        check_race(c, 1);
    }
    redisFree(c);
    return TEST_REPORT();
}
