/*
 * The limits arithmetic of one tenant (limit.h has the model).  lua.c does
 * the same in Redis; the two must agree to the millisecond
 * (tests/unit/check_limits_redis.c runs them side by side).
 *
 * A window is a ring: count[t % SLOTS] holds second t for t in
 * (newest - SLOTS, newest]; a second outside that range reads 0, so slots
 * are cleared when a charge moves newest past them, never by a timer.
 *
 * Clocks that step back.  A window is read at its "effective second": now's,
 * except when now is behind newest by less than a window, when it is newest
 * (the clock is taken to stand still until it catches up): what was charged
 * still counts, the next charge goes into newest's slot, and resets and
 * retry-afters are measured from the real now, so they come out longer by the
 * step.  A step back of a whole window or more restarts the window at now:
 * what it held is at most one window of traffic, and keeping it would freeze
 * the tenant for as long as the step (a slot does not know which charges it
 * holds, so should the clock come round to a lost charge's second again, that
 * request's finish corrects the fresh slot).  Days and months only move
 * forward the same way: a clock behind the state's period keeps charging it.
 * (In Redis periods are keys, so there a clock that steps back over midnight
 * charges the older day; Redis's TIME is one clock, so that takes a server
 * whose own clock was set back.)
 *
 * Rejection.  Every limit is checked; the reason is the first one hit in the
 * order concurrency, rpm, tpm, daily, monthly, and retry_after the longest
 * wait among those hit (all must clear).  A cost over a limit cannot clear:
 * then that limit is the reason and retry_after is -1, whatever else was hit.
 *
 * Negative token counts are taken as 0.  Every limit is tracked whether or
 * not it is set, so a reload that sets one finds the recent history there.
 */
#include <string.h>

#include "internal.h"

static const char *const dsv4_limit_reasons[DSV4_LIMIT_REASONS] = {
    "ok", "rpm", "tpm", "concurrency", "daily", "monthly"
};

const char *
dsv4_limit_reason_name(int reason)
{
    return reason >= 0 && reason < DSV4_LIMIT_REASONS ? dsv4_limit_reasons[reason] : "unknown";
}

void
dsv4_limits_unset(dsv4_limits *l)
{
    l->rpm = l->tpm = l->concurrency = l->daily = l->monthly = -1;
}

void
dsv4_limits_merge(dsv4_limits *l, const dsv4_limits *dflt)
{
    int64_t       *f[] = { &l->rpm, &l->tpm, &l->concurrency, &l->daily, &l->monthly };
    const int64_t *d[] = { &dflt->rpm, &dflt->tpm, &dflt->concurrency, &dflt->daily,
                           &dflt->monthly };

    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (*f[i] == -1) {
            *f[i] = *d[i] == -1 ? 0 : *d[i];
        }
    }
}

/* ---- windows ------------------------------------------------------------ */

static int64_t
dsv4_window_second(const dsv4_limit_window *w, int64_t now_s)
{
    return now_s < w->newest && now_s > w->newest - DSV4_LIMIT_SLOTS ? w->newest : now_s;
}

/* whether second t is in the ring */
static int
dsv4_window_holds(const dsv4_limit_window *w, int64_t t)
{
    return t <= w->newest && t > w->newest - DSV4_LIMIT_SLOTS;
}

static int64_t
dsv4_window_slot(const dsv4_limit_window *w, int64_t t)
{
    return dsv4_window_holds(w, t) ? w->count[dsv4_limit_floormod(t, DSV4_LIMIT_SLOTS)] : 0;
}

/* what the window read at effective second e holds */
static int64_t
dsv4_window_sum(const dsv4_limit_window *w, int64_t e)
{
    int64_t n = 0;

    for (int64_t t = e - DSV4_LIMIT_SLOTS + 1; t <= e; t++) {
        n += dsv4_window_slot(w, t);
    }
    return n;
}

int64_t
dsv4_limit_window_used(const dsv4_limit_window *w, int64_t now_ms)
{
    return dsv4_window_sum(w, dsv4_window_second(w, dsv4_limit_floordiv(now_ms, 1000)));
}

/* until the newest charged slot leaves (the window is empty again), or 0 */
static int64_t
dsv4_window_reset(const dsv4_limit_window *w, int64_t e, int64_t now_ms)
{
    for (int64_t t = e; t > e - DSV4_LIMIT_SLOTS; t--) {
        if (dsv4_window_slot(w, t) > 0) {
            return (t + DSV4_LIMIT_SLOTS) * 1000 - now_ms;
        }
    }
    return 0;
}

/* Until enough of the oldest slots have left for cost to fit under limit
 * (cost <= limit: at worst every slot leaves). */
static int64_t
dsv4_window_wait(const dsv4_limit_window *w, int64_t e, int64_t now_ms, int64_t used,
                 int64_t cost, int64_t limit)
{
    int64_t t = e - DSV4_LIMIT_SLOTS + 1;

    for (; t < e; t++) {
        used -= dsv4_window_slot(w, t);
        if (used + cost <= limit) {
            break;
        }
    }
    return (t + DSV4_LIMIT_SLOTS) * 1000 - now_ms;
}

/* Moves newest to e (clearing the slots that enter the ring, or all of them
 * on a restart) and charges cost to e's slot. */
static void
dsv4_window_charge(dsv4_limit_window *w, int64_t e, int64_t cost)
{
    if (e != w->newest) {
        int64_t from = e > w->newest && e - w->newest < DSV4_LIMIT_SLOTS
                       ? w->newest + 1 : e - DSV4_LIMIT_SLOTS + 1;
        for (int64_t t = from; t <= e; t++) {
            w->count[dsv4_limit_floormod(t, DSV4_LIMIT_SLOTS)] = 0;
        }
        w->newest = e;
    }
    w->count[dsv4_limit_floormod(e, DSV4_LIMIT_SLOTS)] += cost;
}

/* The x-ratelimit-* triple of a window; used includes this request's charge
 * when it was admitted.  An unset limit reports zeros. */
static void
dsv4_window_report(const dsv4_limit_window *w, int64_t e, int64_t now_ms, int64_t limit,
                   int64_t used, int64_t *lim, int64_t *rem, int64_t *reset)
{
    *lim = limit > 0 ? limit : 0;
    *rem = limit > used ? limit - used : 0;
    *reset = limit > 0 ? dsv4_window_reset(w, e, now_ms) : 0;
}

/* ---- admission ---------------------------------------------------------- */

/* the limits a request hits (see the top of the file) */
typedef struct {
    int     reason;             /* first limit hit, DSV4_LIMIT_OK: none */
    int     never;              /* reason is a cost over its limit */
    int64_t wait;               /* longest wait among the limits hit */
} dsv4_limit_hits;

static void
dsv4_limit_hit(dsv4_limit_hits *h, int reason, int never, int64_t wait)
{
    if (never) {
        if (!h->never) {
            h->reason = reason;
            h->never = 1;
        }
        return;
    }
    if (h->reason == DSV4_LIMIT_OK) {
        h->reason = reason;
    }
    if (wait > h->wait) {
        h->wait = wait;
    }
}

static int
dsv4_limit_over(int64_t limit, int64_t used, int64_t cost)
{
    return limit > 0 && used + cost > limit;
}

void
dsv4_limit_state_init(dsv4_limit_state *s)
{
    memset(s, 0, sizeof(*s));
}

int
dsv4_limit_admit(dsv4_limit_state *s, const dsv4_limits *l, int64_t now_ms, int64_t tokens,
                 dsv4_limit_verdict *v, dsv4_limit_reservation *res)
{
    dsv4_limit_hits h = { DSV4_LIMIT_OK, 0, 0 };
    int64_t         now_s = dsv4_limit_floordiv(now_ms, 1000);
    int64_t         re = dsv4_window_second(&s->requests, now_s);
    int64_t         te = dsv4_window_second(&s->tokens, now_s);
    int64_t         ru = dsv4_window_sum(&s->requests, re);
    int64_t         tu = dsv4_window_sum(&s->tokens, te);
    int64_t         day = dsv4_limit_day(now_ms), month = day / 100;
    int64_t         du, mu;

    if (tokens < 0) {
        tokens = 0;
    }
    day = day > s->day ? day : s->day;
    month = month > s->month ? month : s->month;
    du = s->day == day ? s->day_tokens : 0;
    mu = s->month == month ? s->month_tokens : 0;

    if (dsv4_limit_over(l->concurrency, s->concurrent, 1)) {
        dsv4_limit_hit(&h, DSV4_LIMIT_CONCURRENCY, 0, DSV4_LIMIT_CONC_RETRY_MS);
    }
    if (dsv4_limit_over(l->rpm, ru, 1)) {
        dsv4_limit_hit(&h, DSV4_LIMIT_RPM, 0,
                       dsv4_window_wait(&s->requests, re, now_ms, ru, 1, l->rpm));
    }
    if (dsv4_limit_over(l->tpm, tu, tokens)) {
        dsv4_limit_hit(&h, DSV4_LIMIT_TPM, tokens > l->tpm, tokens > l->tpm ? 0
                       : dsv4_window_wait(&s->tokens, te, now_ms, tu, tokens, l->tpm));
    }
    if (dsv4_limit_over(l->daily, du, tokens)) {
        dsv4_limit_hit(&h, DSV4_LIMIT_DAILY, tokens > l->daily,
                       dsv4_limit_day_end_of(day) - now_ms);
    }
    if (dsv4_limit_over(l->monthly, mu, tokens)) {
        dsv4_limit_hit(&h, DSV4_LIMIT_MONTHLY, tokens > l->monthly,
                       dsv4_limit_month_end_of(month) - now_ms);
    }

    v->allowed = h.reason == DSV4_LIMIT_OK;
    v->reason = h.reason;
    v->retry_after_ms = v->allowed ? 0 : h.never ? -1 : h.wait;
    if (v->allowed) {
        dsv4_window_charge(&s->requests, re, 1);
        dsv4_window_charge(&s->tokens, te, tokens);
        ru += 1;
        tu += tokens;
        s->concurrent++;
        if (s->day != day) {
            s->day = day;
            s->day_tokens = 0;
        }
        if (s->month != month) {
            s->month = month;
            s->month_tokens = 0;
        }
        s->day_tokens += tokens;
        s->month_tokens += tokens;
        res->time_ms = te == now_s ? now_ms : te * 1000;
        res->tokens = tokens;
        res->day = day;
        res->month = month;
    }
    dsv4_window_report(&s->requests, re, now_ms, l->rpm, ru, &v->limit_requests,
                       &v->remaining_requests, &v->reset_requests_ms);
    dsv4_window_report(&s->tokens, te, now_ms, l->tpm, tu, &v->limit_tokens,
                       &v->remaining_tokens, &v->reset_tokens_ms);
    return v->allowed;
}

static void
dsv4_limit_correct(int64_t *c, int64_t delta)
{
    *c = *c + delta > 0 ? *c + delta : 0;
}

void
dsv4_limit_finish(dsv4_limit_state *s, const dsv4_limit_reservation *res, int64_t now_ms,
                  int64_t tokens)
{
    int64_t delta = (tokens > 0 ? tokens : 0) - res->tokens;
    int64_t e = dsv4_window_second(&s->tokens, dsv4_limit_floordiv(now_ms, 1000));
    int64_t t = dsv4_limit_floordiv(res->time_ms, 1000);

    if (dsv4_window_holds(&s->tokens, t) && t > e - DSV4_LIMIT_SLOTS && t <= e) {
        dsv4_limit_correct(&s->tokens.count[dsv4_limit_floormod(t, DSV4_LIMIT_SLOTS)], delta);
    }
    if (res->day == s->day && dsv4_limit_day(now_ms) <= s->day) {
        dsv4_limit_correct(&s->day_tokens, delta);
    }
    if (res->month == s->month && dsv4_limit_month(now_ms) <= s->month) {
        dsv4_limit_correct(&s->month_tokens, delta);
    }
    if (s->concurrent > 0) {
        s->concurrent--;
    }
}
