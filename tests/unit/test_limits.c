/*
 * limits/ without Redis: window edges (a slot leaves whole, exactly 60 s
 * after its second began), clocks stepping back, admission and finish
 * arithmetic (reconciliation both ways, refunds making room, concurrency,
 * rejections leaving the state alone, reasons and retry-afters), UTC days
 * and months against libc's gmtime_r/timegm, duration text, the meter, the
 * key file (every error), key digests, keys and script replies as Redis
 * would return them (hand-built replies, garbage included), and the command
 * builders.  A random run checks admission against a naive model that keeps
 * every request (no ring, no slots).
 */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limits/internal.h"
#include "tests/test.h"
#include "limits_helpers.h"

static dsv4_limits
L(int64_t rpm, int64_t tpm, int64_t conc, int64_t daily, int64_t monthly)
{
    dsv4_limits l = { rpm, tpm, conc, daily, monthly };
    return l;
}

/* ---- names, merge ------------------------------------------------------- */

static void
test_names_merge(void)
{
    const char *want[] = { "ok", "rpm", "tpm", "concurrency", "daily", "monthly" };
    dsv4_limits l, d = L(10, -1, 3, -1, 7);

    for (int i = 0; i < DSV4_LIMIT_REASONS; i++) {
        TEST_CHECK(strcmp(dsv4_limit_reason_name(i), want[i]) == 0, "reason %d: %s", i,
                   dsv4_limit_reason_name(i));
    }
    TEST_CHECK(strcmp(dsv4_limit_reason_name(-1), "unknown") == 0
               && strcmp(dsv4_limit_reason_name(DSV4_LIMIT_REASONS), "unknown") == 0,
               "reason out of range");
    dsv4_limits_unset(&l);
    TEST_CHECK(l.rpm == -1 && l.tpm == -1 && l.concurrency == -1 && l.daily == -1
               && l.monthly == -1, "unset");
    l.tpm = 500;
    l.daily = 0;
    dsv4_limits_merge(&l, &d);
    TEST_CHECK(l.rpm == 10 && l.tpm == 500 && l.concurrency == 3 && l.daily == 0
               && l.monthly == 7, "merge: %lld %lld %lld %lld %lld", (long long) l.rpm,
               (long long) l.tpm, (long long) l.concurrency, (long long) l.daily,
               (long long) l.monthly);
    dsv4_limits_unset(&l);
    dsv4_limits_unset(&d);
    dsv4_limits_merge(&l, &d);
    TEST_CHECK(l.rpm == 0 && l.tpm == 0 && l.concurrency == 0 && l.daily == 0
               && l.monthly == 0, "merge of two unset: zeros");
}

/* ---- calendar ------------------------------------------------------------ */

static void
test_calendar(void)
{
    struct {
        int64_t t, day, month, day_end, month_end;
    } c[] = {
        { 0, 19700101, 197001, T(1970, 1, 2, 0, 0, 0, 0), T(1970, 2, 1, 0, 0, 0, 0) },
        { T(2024, 2, 29, 23, 59, 59, 999), 20240229, 202402, T(2024, 3, 1, 0, 0, 0, 0),
          T(2024, 3, 1, 0, 0, 0, 0) },
        { T(2024, 3, 1, 0, 0, 0, 0), 20240301, 202403, T(2024, 3, 2, 0, 0, 0, 0),
          T(2024, 4, 1, 0, 0, 0, 0) },
        { T(2023, 2, 28, 12, 0, 0, 0), 20230228, 202302, T(2023, 3, 1, 0, 0, 0, 0),
          T(2023, 3, 1, 0, 0, 0, 0) },
        { T(2100, 2, 28, 23, 0, 0, 0), 21000228, 210002, T(2100, 3, 1, 0, 0, 0, 0),
          T(2100, 3, 1, 0, 0, 0, 0) },
        { T(2000, 2, 29, 1, 0, 0, 0), 20000229, 200002, T(2000, 3, 1, 0, 0, 0, 0),
          T(2000, 3, 1, 0, 0, 0, 0) },
        { T(2023, 12, 31, 23, 59, 59, 999), 20231231, 202312, T(2024, 1, 1, 0, 0, 0, 0),
          T(2024, 1, 1, 0, 0, 0, 0) },
        { T(2024, 1, 1, 0, 0, 0, 0), 20240101, 202401, T(2024, 1, 2, 0, 0, 0, 0),
          T(2024, 2, 1, 0, 0, 0, 0) },
    };
    uint64_t x = 88172645463325252ULL;
    int      bad = 0;

    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        TEST_CHECK(dsv4_limit_day(c[i].t) == c[i].day && dsv4_limit_month(c[i].t) == c[i].month
                   && dsv4_limit_day_end_ms(c[i].t) == c[i].day_end
                   && dsv4_limit_month_end_ms(c[i].t) == c[i].month_end,
                   "calendar %zu: %lld %lld %lld %lld", i, (long long) dsv4_limit_day(c[i].t),
                   (long long) dsv4_limit_month(c[i].t),
                   (long long) dsv4_limit_day_end_ms(c[i].t),
                   (long long) dsv4_limit_month_end_ms(c[i].t));
    }
    /* random instants up to year 2400 against gmtime_r / timegm */
    for (int i = 0; i < 200000; i++) {
        struct tm tm;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t t = (int64_t) (x % 13569465600000ULL), s = t / 1000;
        time_t  tt = (time_t) s;
        gmtime_r(&tt, &tm);
        int64_t day = (int64_t) (tm.tm_year + 1900) * 10000 + (tm.tm_mon + 1) * 100 + tm.tm_mday;
        int64_t dend = T(tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday + 1, 0, 0, 0, 0);
        int64_t mend = T(tm.tm_year + 1900, tm.tm_mon + 2, 1, 0, 0, 0, 0);
        bad += dsv4_limit_day(t) != day || dsv4_limit_month(t) != day / 100
               || dsv4_limit_day_end_ms(t) != dend || dsv4_limit_month_end_ms(t) != mend
               || dsv4_limit_day_end_of(day) != dend || dsv4_limit_month_end_of(day / 100) != mend
               || !dsv4_limit_day_ok(day);
    }
    TEST_CHECK(bad == 0, "calendar vs gmtime_r: %d of 200000 differ", bad);
    TEST_CHECK(dsv4_limit_day_ok(20240229) && !dsv4_limit_day_ok(20230229)
               && !dsv4_limit_day_ok(21000229) && !dsv4_limit_day_ok(20240431)
               && !dsv4_limit_day_ok(20241301) && !dsv4_limit_day_ok(20240100)
               && !dsv4_limit_day_ok(0) && dsv4_limit_month_ok(202412)
               && !dsv4_limit_month_ok(202413) && !dsv4_limit_month_ok(202400),
               "date validity");
}

static void
test_duration(void)
{
    struct {
        int64_t     ms;
        const char *want;
    } c[] = {
        { 0, "0s" }, { -5, "0s" }, { 1, "1ms" }, { 20, "20ms" }, { 999, "999ms" },
        { 1000, "1s" }, { 1500, "1.5s" }, { 8640, "8.64s" }, { 1001, "1.001s" },
        { 59999, "59.999s" }, { 60000, "1m0s" }, { 360000, "6m0s" }, { 61500, "1m1.5s" },
        { 3600000, "1h0m0s" }, { 3723000, "1h2m3s" }, { 3723040, "1h2m3.04s" },
        { 86400000, "24h0m0s" }, { INT64_MAX, "2562047788015h12m55.807s" },
    };
    char buf[32];

    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        size_t n = dsv4_limit_duration(buf, sizeof(buf), c[i].ms);
        TEST_CHECK(strcmp(buf, c[i].want) == 0 && n == strlen(c[i].want),
                   "duration %lld: '%s' (%zu), want '%s'", (long long) c[i].ms, buf, n,
                   c[i].want);
    }
    TEST_CHECK(dsv4_limit_duration(buf, 4, 3723000) == 3 && strcmp(buf, "1h2") == 0,
               "truncated duration: '%s'", buf);
    TEST_CHECK(dsv4_limit_duration(buf, 0, 1000) == 0, "size 0 writes nothing");
}

/* ---- windows and admission ---------------------------------------------- */

static int
admit(dsv4_limit_state *s, dsv4_limits l, int64_t t, int64_t tokens, dsv4_limit_verdict *v,
      dsv4_limit_reservation *res)
{
    dsv4_limit_verdict     vv;
    dsv4_limit_reservation rr;

    return dsv4_limit_admit(s, &l, t, tokens, v ? v : &vv, res ? res : &rr);
}

static void
test_window_edges(void)
{
    int64_t            T0 = T(2024, 5, 10, 12, 0, 0, 0);
    dsv4_limits        none = L(0, 0, 0, 0, 0);
    dsv4_limit_state   s;
    dsv4_limit_verdict v;

    dsv4_limit_state_init(&s);
    admit(&s, none, T0, 10, NULL, NULL);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0) == 10
               && dsv4_limit_window_used(&s.tokens, T0 + 59999) == 10
               && dsv4_limit_window_used(&s.tokens, T0 + 60000) == 0
               && dsv4_limit_window_used(&s.requests, T0 + 59999) == 1
               && dsv4_limit_window_used(&s.requests, T0 + 60000) == 0,
               "a slot leaves exactly 60 s after its second began");
    admit(&s, none, T0 + 999, 5, NULL, NULL);          /* same second: leaves with it */
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 59999) == 15
               && dsv4_limit_window_used(&s.tokens, T0 + 60000) == 0,
               "charged at .999: gone 59.001 s later (the slot leaves whole)");
    admit(&s, none, T0 + 1000, 7, NULL, NULL);         /* next second */
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 60000) == 7
               && dsv4_limit_window_used(&s.tokens, T0 + 60999) == 7
               && dsv4_limit_window_used(&s.tokens, T0 + 61000) == 0,
               "slot boundary: %lld %lld %lld",
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 60000),
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 60999),
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 61000));
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 3600000) == 0, "an hour later: empty");

    /* reset: until the newest charged slot leaves */
    dsv4_limit_state_init(&s);
    admit(&s, L(10, 100, 0, 0, 0), T0 + 500, 30, &v, NULL);
    TEST_CHECK(v.allowed && v.limit_requests == 10 && v.remaining_requests == 9
               && v.reset_requests_ms == 59500 && v.limit_tokens == 100
               && v.remaining_tokens == 70 && v.reset_tokens_ms == 59500
               && v.retry_after_ms == 0 && v.reason == DSV4_LIMIT_OK,
               "first verdict: rem %lld/%lld reset %lld/%lld", (long long) v.remaining_requests,
               (long long) v.remaining_tokens, (long long) v.reset_requests_ms,
               (long long) v.reset_tokens_ms);
    admit(&s, L(10, 100, 0, 0, 0), T0 + 20250, 0, &v, NULL);
    TEST_CHECK(v.allowed && v.reset_requests_ms == 60000 + 20000 - 20250
               && v.reset_tokens_ms == 60000 - 20250 && v.remaining_tokens == 70,
               "a zero-token charge does not move the tokens reset: %lld %lld",
               (long long) v.reset_requests_ms, (long long) v.reset_tokens_ms);

    /* retry: the oldest slots leave first, until the cost fits */
    dsv4_limit_state_init(&s);
    admit(&s, L(0, 100, 0, 0, 0), T0, 40, NULL, NULL);
    admit(&s, L(0, 100, 0, 0, 0), T0 + 10000, 40, NULL, NULL);
    dsv4_limit_state before = s;
    admit(&s, L(0, 100, 0, 0, 0), T0 + 20000, 40, &v, NULL);
    TEST_CHECK(!v.allowed && v.reason == DSV4_LIMIT_TPM && v.retry_after_ms == 40000
               && v.remaining_tokens == 20 && v.reset_tokens_ms == 50000,
               "tpm retry: %lld rem %lld reset %lld", (long long) v.retry_after_ms,
               (long long) v.remaining_tokens, (long long) v.reset_tokens_ms);
    TEST_CHECK(memcmp(&before, &s, sizeof(s)) == 0, "a rejection leaves the state alone");
    admit(&s, L(0, 100, 0, 0, 0), T0 + 20000, 90, &v, NULL);
    TEST_CHECK(!v.allowed && v.retry_after_ms == 50000, "90 needs both slots gone: %lld",
               (long long) v.retry_after_ms);
    TEST_CHECK(!admit(&s, L(0, 100, 0, 0, 0), T0 + 59999, 40, &v, NULL)
               && v.retry_after_ms == 1, "1 ms before: %lld", (long long) v.retry_after_ms);
    TEST_CHECK(admit(&s, L(0, 100, 0, 0, 0), T0 + 60000, 40, &v, NULL)
               && v.remaining_tokens == 20, "admitted when the slot left");

    /* rpm */
    dsv4_limit_state_init(&s);
    for (int i = 0; i < 3; i++) {
        TEST_CHECK(admit(&s, L(3, 0, 0, 0, 0), T0 + i * 1000, 0, &v, NULL)
                   && v.remaining_requests == 2 - i, "rpm %d: remaining %lld", i,
                   (long long) v.remaining_requests);
    }
    TEST_CHECK(!admit(&s, L(3, 0, 0, 0, 0), T0 + 30000, 0, &v, NULL)
               && v.reason == DSV4_LIMIT_RPM && v.retry_after_ms == 30000
               && v.remaining_requests == 0 && v.reset_requests_ms == 62000 - 30000,
               "rpm reject: retry %lld reset %lld", (long long) v.retry_after_ms,
               (long long) v.reset_requests_ms);
    TEST_CHECK(admit(&s, L(3, 0, 0, 0, 0), T0 + 60000, 0, &v, NULL)
               && v.remaining_requests == 0, "rpm: room again after 60 s");
    TEST_CHECK(v.limit_tokens == 0 && v.remaining_tokens == 0 && v.reset_tokens_ms == 0,
               "an unset limit reports zeros");
}

static void
test_clock_back(void)
{
    int64_t                T0 = T(2024, 5, 10, 12, 0, 0, 0);
    dsv4_limits            l = L(100, 1000, 0, 0, 0);
    dsv4_limit_state       s;
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r1, r2;

    dsv4_limit_state_init(&s);
    admit(&s, l, T0 + 5500, 100, &v, &r1);
    TEST_CHECK(r1.time_ms == T0 + 5500, "reservation time");
    /* 2.3 s back: the clock stands still at the newest second */
    TEST_CHECK(admit(&s, l, T0 + 3200, 50, &v, &r2) && r2.time_ms == T0 + 5000,
               "behind the newest second: charged to it (%lld)", (long long) r2.time_ms - T0);
    TEST_CHECK(v.remaining_tokens == 850 && v.reset_tokens_ms == 65000 - 3200
               && v.reset_requests_ms == 65000 - 3200,
               "resets count from the real now: %lld", (long long) v.reset_tokens_ms);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 3200) == 150
               && dsv4_limit_window_used(&s.tokens, T0) == 150
               && dsv4_limit_window_used(&s.tokens, T0 + 64999) == 150
               && dsv4_limit_window_used(&s.tokens, T0 + 65000) == 0,
               "a clock behind sees what was charged until it leaves");
    dsv4_limit_finish(&s, &r2, T0 + 4000, 20);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 5000) == 120,
               "finish behind the clock corrects the slot it charged: %lld",
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 5000));
    TEST_CHECK(s.concurrent == 1 && s.day_tokens == 120, "day %lld",
               (long long) s.day_tokens);

    /* a whole window or more back: the window restarts at now */
    dsv4_limit_state_init(&s);
    admit(&s, l, T0 + 100000, 300, NULL, &r1);
    TEST_CHECK(admit(&s, l, T0 + 30000, 10, &v, &r2) && r2.time_ms == T0 + 30000
               && v.remaining_tokens == 990 && v.remaining_requests == 99,
               "70 s back: window restarted (remaining %lld)", (long long) v.remaining_tokens);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 30000) == 10
               && dsv4_limit_window_used(&s.tokens, T0 + 100000) == 0
               && dsv4_limit_window_used(&s.requests, T0 + 89999) == 1,
               "after a restart only the new charge counts");
    dsv4_limit_finish(&s, &r1, T0 + 31000, 5);      /* its slot is gone: no-op */
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 31000) == 10,
               "finish of a charge lost in a restart leaves the window alone");
    for (int i = 0; i < DSV4_LIMIT_SLOTS; i++) {
        TEST_CHECK(s.tokens.count[i] >= 0 && s.requests.count[i] >= 0, "slot %d negative", i);
    }

    /* forward again past the old charges: they are not resurrected */
    TEST_CHECK(admit(&s, l, T0 + 100500, 0, &v, NULL) && v.remaining_tokens == 1000
               && v.remaining_requests == 99, "forward again: %lld %lld",
               (long long) v.remaining_tokens, (long long) v.remaining_requests);
    /* the documented edge: the clock came round to the lost charge's second
     * again, so its correction lands in that (fresh) slot */
    dsv4_limit_finish(&s, &r1, T0 + 100600, 500);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 100600) == 200,
               "a reservation lost in a restart corrects its second's fresh slot: %lld",
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 100600));

    /* the day only moves forward */
    dsv4_limit_state_init(&s);
    int64_t mid = T(2024, 5, 11, 0, 0, 0, 0);
    admit(&s, L(0, 0, 0, 100, 0), mid + 200, 60, NULL, &r1);
    TEST_CHECK(!admit(&s, L(0, 0, 0, 100, 0), mid - 300, 60, &v, NULL)
               && v.reason == DSV4_LIMIT_DAILY
               && v.retry_after_ms == T(2024, 5, 12, 0, 0, 0, 0) - (mid - 300),
               "a clock behind midnight keeps the newer day: retry %lld",
               (long long) v.retry_after_ms);
    TEST_CHECK(admit(&s, L(0, 0, 0, 100, 0), mid - 300, 40, NULL, &r2) && r2.day == 20240511
               && s.day == 20240511 && s.day_tokens == 100, "charged to the newer day");
}

static void
test_admit_finish(void)
{
    int64_t                T0 = T(2024, 5, 10, 12, 0, 0, 0);
    dsv4_limits            l = L(0, 1000, 0, 0, 0);
    dsv4_limit_state       s;
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r, r2;

    dsv4_limit_state_init(&s);
    TEST_CHECK(admit(&s, l, T0, 600, &v, &r) && v.remaining_tokens == 400 && r.tokens == 600
               && r.day == 20240510 && r.month == 202405 && r.time_ms == T0,
               "reserve 600");
    TEST_CHECK(!admit(&s, l, T0 + 1000, 800, &v, NULL) && v.reason == DSV4_LIMIT_TPM,
               "800 more does not fit");
    dsv4_limit_finish(&s, &r, T0 + 1500, 200);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 1500) == 200 && s.day_tokens == 200
               && s.month_tokens == 200 && s.concurrent == 0, "reconciled down to 200");
    TEST_CHECK(admit(&s, l, T0 + 2000, 800, &v, &r2) && v.remaining_tokens == 0,
               "the refund made room for 800");
    dsv4_limit_finish(&s, &r2, T0 + 3000, 1300);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 3000) == 1500 && s.day_tokens == 1500,
               "reconciled up to 1300: %lld", (long long) dsv4_limit_window_used(&s.tokens,
                                                                                T0 + 3000));
    TEST_CHECK(!admit(&s, l, T0 + 3000, 0, &v, NULL) && v.remaining_tokens == 0
               && v.reason == DSV4_LIMIT_TPM && v.retry_after_ms == 59000,
               "over the limit after an overrun: even 0 tokens wait (%lld)",
               (long long) v.retry_after_ms);

    /* finish after the slot left: only the day and month are corrected */
    dsv4_limit_state_init(&s);
    admit(&s, l, T0, 100, NULL, &r);
    dsv4_limit_finish(&s, &r, T0 + 61000, 500);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 61000) == 0 && s.day_tokens == 500
               && s.month_tokens == 500, "late finish: window %lld day %lld",
               (long long) dsv4_limit_window_used(&s.tokens, T0 + 61000),
               (long long) s.day_tokens);
    /* and after midnight: the day is not corrected, the month is */
    dsv4_limit_state_init(&s);
    admit(&s, l, T(2024, 5, 10, 23, 59, 59, 500), 100, NULL, &r);
    admit(&s, l, T(2024, 5, 11, 0, 0, 0, 100), 10, NULL, &r2);
    dsv4_limit_finish(&s, &r, T(2024, 5, 11, 0, 0, 1, 0), 400);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T(2024, 5, 11, 0, 0, 1, 0)) == 410
               && s.day == 20240511 && s.day_tokens == 10 && s.month_tokens == 410,
               "finish over midnight: day %lld month %lld", (long long) s.day_tokens,
               (long long) s.month_tokens);
    /* over midnight with nothing admitted since: the ended day is left as it was */
    dsv4_limit_state_init(&s);
    admit(&s, l, T(2024, 5, 31, 23, 59, 59, 500), 100, NULL, &r);
    dsv4_limit_finish(&s, &r, T(2024, 6, 1, 0, 0, 0, 500), 400);
    TEST_CHECK(s.day == 20240531 && s.day_tokens == 100 && s.month_tokens == 100
               && dsv4_limit_window_used(&s.tokens, T(2024, 6, 1, 0, 0, 0, 500)) == 400,
               "finish after the periods ended: day %lld month %lld", (long long) s.day_tokens,
               (long long) s.month_tokens);
    /* negative counts are 0; a second finish never drives counters below 0 */
    dsv4_limit_state_init(&s);
    admit(&s, l, T0, 100, NULL, &r);
    dsv4_limit_finish(&s, &r, T0 + 10, -5);
    dsv4_limit_finish(&s, &r, T0 + 20, 0);
    TEST_CHECK(dsv4_limit_window_used(&s.tokens, T0 + 20) == 0 && s.day_tokens == 0
               && s.concurrent == 0, "double finish clamps at 0");
    TEST_CHECK(admit(&s, l, T0 + 30, -7, &v, &r) && r.tokens == 0 && v.remaining_tokens == 1000,
               "negative admission cost is 0");
}

static void
test_concurrency_reasons(void)
{
    int64_t                T0 = T(2024, 5, 10, 12, 0, 0, 0);
    dsv4_limit_state       s, before;
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r[3];

    dsv4_limit_state_init(&s);
    TEST_CHECK(admit(&s, L(0, 0, 2, 0, 0), T0, 1, NULL, &r[0])
               && admit(&s, L(0, 0, 2, 0, 0), T0, 1, NULL, &r[1]), "two streams");
    before = s;
    TEST_CHECK(!admit(&s, L(0, 0, 2, 0, 0), T0, 1, &v, NULL)
               && v.reason == DSV4_LIMIT_CONCURRENCY && v.retry_after_ms == 1000,
               "third stream: %s %lld", dsv4_limit_reason_name(v.reason),
               (long long) v.retry_after_ms);
    TEST_CHECK(memcmp(&before, &s, sizeof(s)) == 0, "rejection leaves the state alone");
    dsv4_limit_finish(&s, &r[0], T0 + 100, 1);
    TEST_CHECK(admit(&s, L(0, 0, 2, 0, 0), T0 + 200, 1, NULL, &r[2]), "a stream ended");
    for (int i = 0; i < 4; i++) {
        dsv4_limit_finish(&s, &r[1], T0 + 300, 1);
    }
    TEST_CHECK(s.concurrent == 0, "concurrency never below 0: %lld", (long long) s.concurrent);

    /* several limits hit: the first names the reason, the longest wait counts */
    dsv4_limit_state_init(&s);
    admit(&s, L(1, 0, 1, 0, 0), T0, 1, NULL, NULL);
    TEST_CHECK(!admit(&s, L(1, 0, 1, 0, 0), T0 + 5000, 1, &v, NULL)
               && v.reason == DSV4_LIMIT_CONCURRENCY && v.retry_after_ms == 55000,
               "concurrency and rpm: %s %lld", dsv4_limit_reason_name(v.reason),
               (long long) v.retry_after_ms);
    /* a cost over a limit can never pass: that is the reason, retry -1 */
    TEST_CHECK(!admit(&s, L(1, 100, 1, 0, 0), T0 + 5000, 101, &v, NULL)
               && v.reason == DSV4_LIMIT_TPM && v.retry_after_ms == -1,
               "over tpm: %s %lld", dsv4_limit_reason_name(v.reason),
               (long long) v.retry_after_ms);
    TEST_CHECK(!admit(&s, L(0, 0, 0, 50, 40), T0 + 5000, 60, &v, NULL)
               && v.reason == DSV4_LIMIT_DAILY && v.retry_after_ms == -1,
               "over daily and monthly: %s", dsv4_limit_reason_name(v.reason));
    TEST_CHECK(!admit(&s, L(0, 0, 0, 0, 40), T0 + 5000, 41, &v, NULL)
               && v.reason == DSV4_LIMIT_MONTHLY && v.retry_after_ms == -1, "over monthly");
    dsv4_limit_state_init(&s);
    TEST_CHECK(admit(&s, L(0, 100, 0, 100, 100), T0, 100, &v, NULL) && v.remaining_tokens == 0,
               "a cost equal to the limit passes");
}

static void
test_periods(void)
{
    dsv4_limit_state       s;
    dsv4_limit_verdict     v;
    dsv4_limit_reservation r;
    int64_t                t = T(2024, 2, 29, 23, 59, 59, 0);

    /* daily over midnight on a leap day (the month rolls too) */
    dsv4_limit_state_init(&s);
    TEST_CHECK(admit(&s, L(0, 0, 0, 100, 150), t, 100, NULL, &r) && r.day == 20240229
               && r.month == 202402, "leap day");
    TEST_CHECK(!admit(&s, L(0, 0, 0, 100, 150), t + 999, 1, &v, NULL)
               && v.reason == DSV4_LIMIT_DAILY && v.retry_after_ms == 1,
               "daily: retry until midnight (%lld)", (long long) v.retry_after_ms);
    TEST_CHECK(admit(&s, L(0, 0, 0, 100, 150), t + 1000, 100, &v, &r) && r.day == 20240301
               && r.month == 202403 && s.day_tokens == 100 && s.month_tokens == 100,
               "March 1: both rolled");
    /* both periods hit: daily named, the month's end is the wait */
    dsv4_limit_state_init(&s);
    t = T(2023, 2, 28, 12, 0, 0, 0);
    admit(&s, L(0, 0, 0, 100, 100), t, 100, NULL, NULL);
    TEST_CHECK(!admit(&s, L(0, 0, 0, 100, 100), t, 1, &v, NULL) && v.reason == DSV4_LIMIT_DAILY
               && v.retry_after_ms == 12 * 3600000LL, "Feb 28 2023: %lld",
               (long long) v.retry_after_ms);
    TEST_CHECK(!admit(&s, L(0, 0, 0, 0, 100), t, 1, &v, NULL) && v.reason == DSV4_LIMIT_MONTHLY
               && v.retry_after_ms == 12 * 3600000LL, "month ends with Feb 28 in 2023");
    /* December to January */
    dsv4_limit_state_init(&s);
    t = T(2023, 12, 31, 23, 0, 0, 0);
    admit(&s, L(0, 0, 0, 0, 100), t, 100, NULL, NULL);
    TEST_CHECK(!admit(&s, L(0, 0, 0, 0, 100), t, 1, &v, NULL) && v.reason == DSV4_LIMIT_MONTHLY
               && v.retry_after_ms == 3600000, "Dec 31: %lld", (long long) v.retry_after_ms);
    TEST_CHECK(admit(&s, L(0, 0, 0, 0, 100), T(2024, 1, 1, 0, 0, 0, 0), 100, NULL, &r)
               && r.month == 202401 && s.month_tokens == 100, "January 1");
    /* a day without traffic in between: the old count is not today's */
    dsv4_limit_state_init(&s);
    admit(&s, L(0, 0, 0, 100, 0), T(2024, 7, 1, 10, 0, 0, 0), 100, NULL, NULL);
    TEST_CHECK(admit(&s, L(0, 0, 0, 100, 0), T(2024, 7, 3, 10, 0, 0, 0), 100, NULL, NULL),
               "two days later");
}

/* ---- random run against a naive model ---------------------------------- */

typedef struct {
    int64_t sec, win;           /* second charged; tokens it holds there */
    int64_t day, dtok, month, mtok;
    int     open;
} naive_req;

typedef struct {
    naive_req *r;
    int        n;
} naive;

static int64_t
naive_win(const naive *m, int64_t S, int tokens)
{
    int64_t u = 0;

    for (int i = 0; i < m->n; i++) {
        if (m->r[i].sec > S - 60 && m->r[i].sec <= S) {
            u += tokens ? m->r[i].win : 1;
        }
    }
    return u;
}

/* until the first second boundary at which the window holds room for cost */
static int64_t
naive_wait(const naive *m, int64_t now, int tokens, int64_t cost, int64_t limit)
{
    int64_t S = now / 1000 + 1;

    while (naive_win(m, S, tokens) + cost > limit) {
        S++;
    }
    return S * 1000 - now;
}

static int64_t
naive_reset(const naive *m, int64_t now, int tokens, int64_t limit)
{
    int64_t best = -1, now_s = now / 1000;

    if (limit <= 0) {
        return 0;
    }
    for (int64_t t = now_s - 59; t <= now_s; t++) {
        int64_t c = 0;
        for (int i = 0; i < m->n; i++) {
            c += m->r[i].sec == t ? (tokens ? m->r[i].win : 1) : 0;
        }
        best = c > 0 ? t : best;
    }
    return best < 0 ? 0 : (best + 60) * 1000 - now;
}

static void
naive_admit(naive *m, const dsv4_limits *l, int64_t now, int64_t tokens, dsv4_limit_verdict *v)
{
    int64_t ru = naive_win(m, now / 1000, 0), tu = naive_win(m, now / 1000, 1);
    int64_t conc = 0, du = 0, mu = 0, day = dsv4_limit_day(now), wait = 0;
    int     reason = 0, never = 0;

    for (int i = 0; i < m->n; i++) {
        conc += m->r[i].open;
        du += m->r[i].day == day ? m->r[i].dtok : 0;
        mu += m->r[i].month == day / 100 ? m->r[i].mtok : 0;
    }
    int64_t w[6] = { 0 };
    int     hit[6] = { 0 }, nv[6] = { 0 };
    hit[DSV4_LIMIT_CONCURRENCY] = l->concurrency > 0 && conc + 1 > l->concurrency;
    w[DSV4_LIMIT_CONCURRENCY] = 1000;
    hit[DSV4_LIMIT_RPM] = l->rpm > 0 && ru + 1 > l->rpm;
    w[DSV4_LIMIT_RPM] = hit[DSV4_LIMIT_RPM] ? naive_wait(m, now, 0, 1, l->rpm) : 0;
    hit[DSV4_LIMIT_TPM] = l->tpm > 0 && tu + tokens > l->tpm;
    nv[DSV4_LIMIT_TPM] = l->tpm > 0 && tokens > l->tpm;
    w[DSV4_LIMIT_TPM] = hit[DSV4_LIMIT_TPM] && !nv[DSV4_LIMIT_TPM]
                        ? naive_wait(m, now, 1, tokens, l->tpm) : 0;
    hit[DSV4_LIMIT_DAILY] = l->daily > 0 && du + tokens > l->daily;
    nv[DSV4_LIMIT_DAILY] = l->daily > 0 && tokens > l->daily;
    w[DSV4_LIMIT_DAILY] = dsv4_limit_day_end_ms(now) - now;
    hit[DSV4_LIMIT_MONTHLY] = l->monthly > 0 && mu + tokens > l->monthly;
    nv[DSV4_LIMIT_MONTHLY] = l->monthly > 0 && tokens > l->monthly;
    w[DSV4_LIMIT_MONTHLY] = dsv4_limit_month_end_ms(now) - now;
    static const int order[] = { DSV4_LIMIT_CONCURRENCY, DSV4_LIMIT_RPM, DSV4_LIMIT_TPM,
                                 DSV4_LIMIT_DAILY, DSV4_LIMIT_MONTHLY };
    for (int k = 0; k < 5; k++) {
        int i = order[k];
        if (hit[i] && nv[i] && !never) {
            reason = i;
            never = 1;
        }
    }
    for (int k = 0; k < 5 && !never; k++) {
        int i = order[k];
        if (hit[i]) {
            reason = reason ? reason : i;
            wait = w[i] > wait ? w[i] : wait;
        }
    }
    v->allowed = reason == 0;
    v->reason = reason;
    v->retry_after_ms = v->allowed ? 0 : never ? -1 : wait;
    if (v->allowed) {
        naive_req q = { now / 1000, tokens, day, tokens, day / 100, tokens, 1 };
        m->r[m->n++] = q;
        ru++;
        tu += tokens;
    }
    v->limit_requests = l->rpm > 0 ? l->rpm : 0;
    v->remaining_requests = l->rpm > ru ? l->rpm - ru : 0;
    v->reset_requests_ms = naive_reset(m, now, 0, l->rpm);
    v->limit_tokens = l->tpm > 0 ? l->tpm : 0;
    v->remaining_tokens = l->tpm > tu ? l->tpm - tu : 0;
    v->reset_tokens_ms = naive_reset(m, now, 1, l->tpm);
}

static void
naive_finish(naive *m, int i, int64_t now, int64_t tokens)
{
    naive_req *q = &m->r[i];

    if (q->sec > now / 1000 - 60) {
        q->win = tokens;
    }
    if (q->day == dsv4_limit_day(now)) {
        q->dtok = tokens;
    }
    if (q->month == dsv4_limit_month(now)) {
        q->mtok = tokens;
    }
    q->open = 0;
}

/* xorshift64: a uniform-enough integer in [0, n) */
static int64_t
rnd(uint64_t *x, int64_t n)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return (int64_t) (*x % (uint64_t) n);
}

static void
test_random_vs_naive(void)
{
    enum { OPS = 6000 };
    naive                   m = { calloc(OPS, sizeof(naive_req)), 0 };
    dsv4_limit_reservation *res = calloc(OPS, sizeof(*res));
    dsv4_limit_state        s;
    dsv4_limits             l = L(5, 300, 3, 20000, 150000);
    uint64_t                x = 0x9E3779B97F4A7C15ULL;
    int64_t                 now = T(2024, 2, 28, 23, 50, 0, 0);
    int                     bad = 0, admitted = 0, rejected = 0, never = 0;
    int                     why[DSV4_LIMIT_REASONS] = { 0 };

#define RND(n) rnd(&x, n)
    dsv4_limit_state_init(&s);
    for (int op = 0; op < OPS && bad < 5; op++) {
        int64_t step = RND(100);
        now += step < 70 ? RND(3000) : step < 90 ? RND(200) : step < 98 ? 10000 + RND(60000)
                                                                        : 3600000 + RND(18000000);
        if (RND(50) == 0) {
            l = L(RND(2) ? 0 : 1 + RND(8), RND(4) ? 50 + RND(400) : 0, RND(3) ? 1 + RND(4) : 0,
                  RND(3) ? 5000 + RND(40000) : 0, RND(3) ? 50000 + RND(400000) : 0);
        }
        if (RND(2) == 0) {
            int open[OPS], n = 0;
            for (int i = 0; i < m.n; i++) {
                if (m.r[i].open) {
                    open[n++] = i;
                }
            }
            if (n > 0) {
                int     i = open[RND(n)];
                int64_t used = RND(350);
                dsv4_limit_finish(&s, &res[i], now, used);
                naive_finish(&m, i, now, used);
                continue;
            }
        }
        dsv4_limit_verdict a, b;
        int64_t            tokens = RND(10) == 0 ? RND(600) : RND(150);
        dsv4_limit_admit(&s, &l, now, tokens, &a, &res[m.n]);
        naive_admit(&m, &l, now, tokens, &b);
        admitted += a.allowed;
        rejected += !a.allowed;
        never += a.retry_after_ms == -1;
        why[a.reason]++;
        if (!same_verdict(&a, &b)) {
            bad++;
            fprintf(stderr, "op %d at %lld: allowed %d/%d reason %d/%d rem %lld/%lld %lld/%lld"
                    " reset %lld/%lld %lld/%lld retry %lld/%lld\n", op, (long long) now,
                    a.allowed, b.allowed, a.reason, b.reason, (long long) a.remaining_requests,
                    (long long) b.remaining_requests, (long long) a.remaining_tokens,
                    (long long) b.remaining_tokens, (long long) a.reset_requests_ms,
                    (long long) b.reset_requests_ms, (long long) a.reset_tokens_ms,
                    (long long) b.reset_tokens_ms, (long long) a.retry_after_ms,
                    (long long) b.retry_after_ms);
        }
    }
#undef RND
    TEST_CHECK(bad == 0, "random run: %d verdicts differ from the naive model", bad);
    TEST_CHECK(admitted > 1000 && rejected > 500 && never > 0 && why[DSV4_LIMIT_RPM] > 0
               && why[DSV4_LIMIT_TPM] > 0 && why[DSV4_LIMIT_CONCURRENCY] > 0
               && why[DSV4_LIMIT_DAILY] > 0 && why[DSV4_LIMIT_MONTHLY] > 0,
               "random run exercised too little: %d admitted, %d rejected (%d never; rpm %d"
               " tpm %d concurrency %d daily %d monthly %d)", admitted, rejected, never,
               why[1], why[2], why[3], why[4], why[5]);
    free(m.r);
    free(res);
}

/* ---- meter -------------------------------------------------------------- */

static void
test_meter(void)
{
    dsv4_meter m;
    dsv4_usage u = { 1, 100, 40, 20, 5 }, today, month;
    int64_t    d1 = T(2024, 1, 31, 10, 0, 0, 0), d2 = T(2024, 2, 1, 10, 0, 0, 0);

    TEST_CHECK(strcmp(dsv4_usage_fields[0], "requests") == 0
               && strcmp(dsv4_usage_fields[1], "prompt_tokens") == 0
               && strcmp(dsv4_usage_fields[2], "cached_tokens") == 0
               && strcmp(dsv4_usage_fields[3], "completion_tokens") == 0
               && strcmp(dsv4_usage_fields[4], "reasoning_tokens") == 0, "usage field names");
    memset(&m, 0, sizeof(m));
    dsv4_meter_read(&m, d1, &today, &month);
    TEST_CHECK(today.requests == 0 && month.requests == 0, "empty meter");
    dsv4_meter_add(&m, d1, &u);
    dsv4_meter_add(&m, d1 + 1000, &u);
    dsv4_meter_read(&m, d1, &today, &month);
    TEST_CHECK(today.requests == 2 && today.prompt_tokens == 200 && today.cached_tokens == 80
               && today.completion_tokens == 40 && today.reasoning_tokens == 10
               && month.requests == 2 && m.total.requests == 2, "same day");
    dsv4_meter_read(&m, d1 + 86400000, &today, &month);
    TEST_CHECK(today.requests == 0 && month.requests == 0,
               "read on the next day (a new month): both ended");
    dsv4_meter_add(&m, d2, &u);
    dsv4_meter_read(&m, d2, &today, &month);
    TEST_CHECK(today.requests == 1 && month.requests == 1 && m.total.requests == 3
               && m.total.prompt_tokens == 300 && m.day == 20240201 && m.month == 202402,
               "rolled into February");
    dsv4_meter_add(&m, d2 + 86400000, &u);
    dsv4_meter_read(&m, d2 + 86400000, &today, &month);
    TEST_CHECK(today.requests == 1 && month.requests == 2, "next day, same month");
    dsv4_meter_add(&m, d2 + 86400000 - 5000, &u);   /* clock behind: counts today */
    dsv4_meter_read(&m, d2 + 86400000, &today, &month);
    TEST_CHECK(today.requests == 2 && month.requests == 3 && m.total.requests == 5,
               "clock behind midnight counts to the newer day");
    dsv4_usage_add(&today, &u);
    TEST_CHECK(today.requests == 3 && today.reasoning_tokens == 15, "usage_add");
}

/* ---- keys --------------------------------------------------------------- */

static const char *H1 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
static const char *H2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void
test_digest(void)
{
    uint8_t d[32], e[32];
    char    hex[65];
    dsv4_key k;

    dsv4_key_digest("abc", 3, d);
    dsv4_key_hex(d, hex);
    TEST_CHECK(strcmp(hex, H1) == 0, "sha256(abc) = %s", hex);
    TEST_CHECK(dsv4_key_from_hex(H1, 64, e) == 0 && memcmp(d, e, 32) == 0, "from_hex");
    TEST_CHECK(dsv4_key_from_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                                 64, e) == 0 && memcmp(d, e, 32) == 0, "from_hex uppercase");
    TEST_CHECK(dsv4_key_from_hex(H1, 63, e) != 0 && dsv4_key_from_hex(H1, 65, e) != 0,
               "from_hex length");
    TEST_CHECK(dsv4_key_from_hex("g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                 64, e) != 0, "from_hex bad character");
    memset(&k, 0, sizeof(k));
    TEST_CHECK(dsv4_key_allows(&k, "anything", 8), "no models: all");
    k.nmodels = 2;
    strcpy(k.models[0], "deepseek-chat");
    strcpy(k.models[1], "deepseek-reasoner");
    TEST_CHECK(dsv4_key_allows(&k, "deepseek-chat", 13)
               && dsv4_key_allows(&k, "deepseek-reasoner", 17)
               && !dsv4_key_allows(&k, "deepseek-cha", 12)
               && !dsv4_key_allows(&k, "deepseek-chatx", 14), "models are exact names");
}

static int
parse(const char *text, dsv4_key **k, int *n, char *err)
{
    return dsv4_keys_parse(text, strlen(text), k, n, err, 256);
}

static void
test_keys_file(void)
{
    char      text[4096], err[256];
    dsv4_key *k;
    int       n;

    snprintf(text, sizeof(text),
             "# keys\r\n"
             "\r\n"
             "   \t\n"
             "%s acme rpm=60 tpm=100000\tconcurrency=4 daily=0 monthly=9000000 "
             "models=deepseek-chat,deepseek-reasoner # rotation 2024\r\n"
             "  %s acme.dev-2_x\n"
             "%s", H1, H2, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AE"
             " beta models=m");
    TEST_CHECK(parse(text, &k, &n, err) == 0, "valid file: %s", err);
    if (k != NULL && n == 3) {
        char hex[65];
        dsv4_key_hex(k[0].digest, hex);
        TEST_CHECK(strcmp(hex, H1) == 0 && strcmp(k[0].tenant, "acme") == 0
                   && k[0].limits.rpm == 60 && k[0].limits.tpm == 100000
                   && k[0].limits.concurrency == 4 && k[0].limits.daily == 0
                   && k[0].limits.monthly == 9000000 && k[0].nmodels == 2
                   && strcmp(k[0].models[1], "deepseek-reasoner") == 0, "line 4 fields");
        TEST_CHECK(strcmp(k[1].tenant, "acme.dev-2_x") == 0 && k[1].limits.rpm == -1
                   && k[1].limits.tpm == -1 && k[1].limits.concurrency == -1
                   && k[1].limits.daily == -1 && k[1].limits.monthly == -1
                   && k[1].nmodels == 0, "unset limits are -1");
        TEST_CHECK(strcmp(k[2].tenant, "beta") == 0 && k[2].nmodels == 1
                   && k[2].digest[31] == 0xae, "uppercase hex, no final newline");
    } else {
        TEST_CHECK(0, "valid file: %d keys", n);
    }
    free(k);
    TEST_CHECK(parse("", &k, &n, err) == 0 && n == 0 && k != NULL, "empty file");
    free(k);
    TEST_CHECK(parse("# only\n\n", &k, &n, err) == 0 && n == 0, "comments only");
    free(k);

    /* every error: line number, what, the token; never a whole digest */
    char bad65[80], many[2048], longmodel[200], longtenant[200], dup[400];
    snprintf(bad65, sizeof(bad65), "%s0 t", H1);
    strcpy(many, H1);
    strcat(many, " t models=");
    for (int i = 0; i < 17; i++) {
        strcat(many, i ? ",m" : "m");
        snprintf(many + strlen(many), 8, "%d", i);
    }
    snprintf(longmodel, sizeof(longmodel), "%s t models=%0*d", H1, 65, 7);
    snprintf(longtenant, sizeof(longtenant), "%s %0*d", H1, 65, 7);
    snprintf(dup, sizeof(dup), "%s a\n%s b\n# x\n%s c\n%s d\n", H1, H2, H2, H1);
    struct {
        const char *text, *want;
    } c[] = {
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aZ t",
          "line 1: key hash has a non-hex character (ba7816bf...)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a t",
          "line 1: key hash has 63 hex digits, want 64 (ba7816bf...)" },
        { bad65, "line 1: key hash has 65 hex digits, want 64 (ba7816bf...)" },
        { "\n# c\nsk-dsv4-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG acme",
          "line 3: a raw key (sk-dsv4-...) where its SHA-256 belongs" },
        { "rpm=5", "line 1: key hash has a non-hex character (rpm=5)" },
        { H1, "line 1: no tenant after the key hash (ba7816bf...)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad # x",
          "line 1: no tenant after the key hash" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad te$t",
          "line 1: invalid tenant (te$t)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad {x}",
          "line 1: invalid tenant ({x})" },
        { longtenant, "line 1: invalid tenant (0000" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t foo=1",
          "line 1: unknown option (foo=1)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t rpm=-1",
          "line 1: rpm wants an integer from 0 to 10^15 (rpm=-1)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t tpm=1e5",
          "line 1: tpm wants an integer from 0 to 10^15 (tpm=1e5)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t daily=",
          "line 1: daily wants an integer from 0 to 10^15 (daily=)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t "
          "monthly=1000000000000001", "line 1: monthly wants an integer from 0 to 10^15" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t "
          "concurrency=99999999999999999999999", "line 1: concurrency wants an integer" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t models=a,,b",
          "line 1: empty model name (models=a,,b)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t models=",
          "line 1: empty model name (models=)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t models=a,",
          "line 1: empty model name" },
        { many, "line 1: more than 16 models (models=m0,m1," },
        { longmodel, "line 1: model name longer than 64 bytes" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t rpm=1 rpm=2",
          "line 1: option given twice (rpm=2)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t rpm=1 junk",
          "line 1: unexpected token (junk): want option=value" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t =5",
          "line 1: unknown option (=5)" },
        { "# ok\nba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t\x01",
          "line 2: control character 0x01 (column 67)" },
        { "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad t\rrpm=1",
          "line 1: control character 0x0d" },
        { dup, "line 4: key hash 01234567... already listed on line 2" },
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        err[0] = '\0';
        k = (dsv4_key *) 1;
        int rc = parse(c[i].text, &k, &n, err);
        TEST_CHECK(rc == -1 && k == NULL && strstr(err, c[i].want) != NULL,
                   "case %zu: rc %d, err '%s', want '%s'", i, rc, err, c[i].want);
        TEST_CHECK(strstr(err, "ba7816bf8") == NULL && strstr(err, "012345678") == NULL
                   && strstr(err, "sk-dsv4-a") == NULL, "case %zu echoes a secret: %s", i, err);
    }
    /* a NUL byte inside the text (length-delimited, not a C string) */
    char nul[100];
    snprintf(nul, sizeof(nul), "%s x", H1);
    nul[strlen(nul) - 1] = '\0';
    TEST_CHECK(dsv4_keys_parse(nul, strlen(H1) + 3, &k, &n, err, sizeof(err)) == -1
               && strstr(err, "control character 0x00") != NULL, "NUL byte: %s", err);
    /* a long error is cut to errlen, NUL-terminated */
    TEST_CHECK(dsv4_keys_parse(longmodel, strlen(longmodel), &k, &n, err, 10) == -1
               && strlen(err) == 9, "short errlen");
}

/* hand-built replies, freed with freeReplyObject */
static redisReply *
rep(int type, long long integer, const char *str)
{
    redisReply *r = calloc(1, sizeof(*r));

    r->type = type;
    r->integer = integer;
    if (str != NULL) {
        r->str = strdup(str);
        r->len = strlen(str);
    }
    return r;
}

static redisReply *
rint_(long long v)
{
    return rep(REDIS_REPLY_INTEGER, v, NULL);
}

static redisReply *
rstr(const char *s)
{
    return rep(REDIS_REPLY_STRING, 0, s);
}

/* an array of n replies given as varargs */
static redisReply *
rarr(int n, ...)
{
    redisReply *r = rep(REDIS_REPLY_ARRAY, 0, NULL);
    va_list     ap;

    r->elements = (size_t) n;
    r->element = calloc((size_t) (n > 0 ? n : 1), sizeof(*r->element));
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        r->element[i] = va_arg(ap, redisReply *);
    }
    va_end(ap);
    return r;
}

/* an array of n integers */
static redisReply *
rints(int n, const long long *v)
{
    redisReply *r = rarr(0);

    free(r->element);
    r->elements = (size_t) n;
    r->element = calloc((size_t) n, sizeof(*r->element));
    for (int i = 0; i < n; i++) {
        r->element[i] = rint_(v[i]);
    }
    return r;
}

static void
test_key_from_redis(void)
{
    uint8_t     d[32];
    dsv4_key    k;
    char        err[256];
    redisReply *r;
    int         rc;

    dsv4_key_from_hex(H1, 64, d);
    r = rarr(10, rstr("tenant"), rstr("acme"), rstr("rpm"), rstr("60"), rstr("models"),
             rstr("a,b"), rstr("note"), rstr("anything at all"), rstr("revoked"), rstr("0"));
    rc = dsv4_key_from_redis(r, d, &k, err, sizeof(err));
    TEST_CHECK(rc == 1 && strcmp(k.tenant, "acme") == 0 && k.limits.rpm == 60
               && k.limits.tpm == -1 && k.nmodels == 2 && memcmp(k.digest, d, 32) == 0,
               "redis key: rc %d %s", rc, rc < 0 ? err : "");
    freeReplyObject(r);
    r = rarr(4, rstr("tenant"), rstr("acme"), rstr("models"), rstr(""));
    TEST_CHECK(dsv4_key_from_redis(r, d, &k, err, sizeof(err)) == 1 && k.nmodels == 0,
               "empty models: every model");
    freeReplyObject(r);
    r = rarr(4, rstr("tenant"), rstr("acme"), rstr("revoked"), rstr("1"));
    TEST_CHECK(dsv4_key_from_redis(r, d, &k, err, sizeof(err)) == 0, "revoked");
    freeReplyObject(r);
    r = rarr(0);
    TEST_CHECK(dsv4_key_from_redis(r, d, &k, err, sizeof(err)) == 0, "no such key");
    freeReplyObject(r);

    struct {
        redisReply *r;
        const char *want;
    } c[] = {
        { rarr(2, rstr("rpm"), rstr("5")), "no tenant field" },
        { rarr(2, rstr("tenant"), rstr("a}b")), "invalid tenant (a}b)" },
        { rarr(4, rstr("tenant"), rstr("a"), rstr("rpm"), rstr("-3")), "rpm wants an integer" },
        { rarr(4, rstr("tenant"), rstr("a"), rstr("models"), rstr("x,,y")), "empty model name" },
        { rarr(4, rstr("tenant"), rstr("a"), rstr("revoked"), rstr("yes")),
          "revoked wants 0 or 1" },
        { rarr(3, rstr("tenant"), rstr("a"), rstr("rpm")), "not a field/value list" },
        { rarr(2, rstr("tenant"), rint_(5)), "field 1 is not a string pair" },
        { rep(REDIS_REPLY_ERROR, 0, "WRONGTYPE Operation against a key"),
          "redis error: WRONGTYPE" },
        { rep(REDIS_REPLY_NIL, 0, NULL), "not a field/value list" },
        { rstr("tenant"), "not a field/value list" },
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        err[0] = '\0';
        rc = dsv4_key_from_redis(c[i].r, d, &k, err, sizeof(err));
        TEST_CHECK(rc == -1 && strstr(err, c[i].want) != NULL && strstr(err, "ba7816bf...") != NULL
                   && strstr(err, "ba7816bf8") == NULL, "redis key case %zu: %d '%s'", i, rc, err);
        freeReplyObject(c[i].r);
    }
    TEST_CHECK(dsv4_key_from_redis(NULL, d, &k, err, sizeof(err)) == -1
               && strstr(err, "no reply") != NULL, "NULL reply");
}

static void
test_replies(void)
{
    char                   err[256];
    dsv4_limit_verdict     v;
    dsv4_limit_reservation res;
    dsv4_tenant_usage     *u;
    int                    n, rc;
    long long ok[13] = { 1, 0, 60, 59, 59500, 1000, 900, 59500, 0, 1715342400500LL, 100,
                         20240510, 202405 };
    long long no[13] = { 0, 2, 60, 59, 59500, 1000, 900, 59500, 40000, 0, 0, 0, 0 };
    redisReply *r;

    r = rints(13, ok);
    memset(&res, 0, sizeof(res));
    rc = dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err));
    TEST_CHECK(rc == 0 && v.allowed && v.limit_requests == 60 && v.remaining_requests == 59
               && v.reset_requests_ms == 59500 && v.limit_tokens == 1000
               && v.remaining_tokens == 900 && v.retry_after_ms == 0
               && res.time_ms == 1715342400500LL && res.tokens == 100 && res.day == 20240510
               && res.month == 202405, "admit reply: %d %s", rc, rc ? err : "");
    freeReplyObject(r);
    r = rints(13, no);
    res.tokens = 77;
    TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == 0 && !v.allowed
               && v.reason == DSV4_LIMIT_TPM && v.retry_after_ms == 40000 && res.tokens == 77,
               "rejected reply leaves *res alone");
    freeReplyObject(r);

    /* each garbage variant of the good reply */
    struct {
        int       i;
        long long val;
        const char *want;
    } g[] = {
        { 0, 2, "element 1 (allowed) is 2" },
        { 1, 6, "element 2 (reason) is 6" },
        { 1, 1, "allowed and reason disagree" },
        { 3, -1, "element 4 (remaining_requests) is -1" },
        { 3, 61, "more remaining than the limit" },
        { 4, 120001, "element 5 (reset_requests_ms)" },
        { 6, -5, "element 7 (remaining_tokens)" },
        { 8, 5, "retry_after does not match" },
        { 8, -2, "element 9 (retry_after_ms)" },
        { 10, -1, "element 11 (tokens)" },
        { 11, 20240230, "reservation does not match" },
        { 12, 202406, "reservation does not match" },
        { 9, -1, "element 10 (time_ms)" },
    };
    for (size_t k = 0; k < sizeof(g) / sizeof(g[0]); k++) {
        long long b[13];
        memcpy(b, ok, sizeof(b));
        b[g[k].i] = g[k].val;
        r = rints(13, b);
        err[0] = '\0';
        rc = dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err));
        TEST_CHECK(rc == -1 && strstr(err, g[k].want) != NULL, "admit garbage %zu: '%s'", k,
                   err);
        freeReplyObject(r);
    }
    long long nr[13];
    memcpy(nr, no, sizeof(nr));
    nr[10] = 5;
    r = rints(13, nr);
    TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == -1
               && strstr(err, "reservation does not match") != NULL, "rejected with a reservation");
    freeReplyObject(r);
    nr[10] = 0;
    nr[8] = 0;
    r = rints(13, nr);
    TEST_CHECK(dsv4_limit_reply_admit(r, &v, &res, err, sizeof(err)) == -1, "rejected, retry 0");
    freeReplyObject(r);
    struct {
        redisReply *r;
        const char *want;
    } c[] = {
        { rints(12, ok), "12 elements, want 13" },
        { rarr(0), "0 elements, want 13" },
        { rstr("OK"), "string, want an array" },
        { rep(REDIS_REPLY_STATUS, 0, "OK"), "status, want an array" },
        { rep(REDIS_REPLY_NIL, 0, NULL), "nil, want an array" },
        { rep(REDIS_REPLY_ERROR, 0, "NOSCRIPT No matching script"), "redis error: NOSCRIPT" },
        { rarr(13, rint_(1), rint_(0), rint_(60), rint_(59), rint_(1), rint_(0), rint_(0),
               rint_(0), rint_(0), rint_(1), rint_(1), rstr("20240510"), rint_(202405)),
          "element 12 (day) is a string" },
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        err[0] = '\0';
        rc = dsv4_limit_reply_admit(c[k].r, &v, &res, err, sizeof(err));
        TEST_CHECK(rc == -1 && strstr(err, c[k].want) != NULL, "admit shape %zu: '%s'", k, err);
        freeReplyObject(c[k].r);
    }
    TEST_CHECK(dsv4_limit_reply_admit(NULL, &v, &res, err, sizeof(err)) == -1, "NULL admit");

    /* finish */
    r = rep(REDIS_REPLY_STATUS, 0, "OK");
    TEST_CHECK(dsv4_limit_reply_finish(r, err, sizeof(err)) == 0, "finish OK");
    freeReplyObject(r);
    redisReply *fb[] = { rstr("OK"), rep(REDIS_REPLY_STATUS, 0, "QUEUED"), rint_(1), rarr(0),
                         rep(REDIS_REPLY_ERROR, 0, "ERR user_script:1: oops") };
    for (size_t k = 0; k < sizeof(fb) / sizeof(fb[0]); k++) {
        TEST_CHECK(dsv4_limit_reply_finish(fb[k], err, sizeof(err)) == -1, "finish garbage %zu",
                   k);
        freeReplyObject(fb[k]);
    }
    TEST_CHECK(dsv4_limit_reply_finish(NULL, err, sizeof(err)) == -1, "NULL finish");

    /* usage */
    long long a[10] = { 3, 300, 30, 60, 6, 9, 900, 90, 180, 18 };
    redisReply *e1 = rints(10, a), *e2 = rints(10, a);
#define ENTRY(e, name)                                                                   \
    (memmove((e)->element + 1, (e)->element, 10 * sizeof(*(e)->element)),              \
     (e)->element[0] = rstr(name), (e)->elements = 11, (e))
    e1->element = realloc(e1->element, 11 * sizeof(*e1->element));
    e2->element = realloc(e2->element, 11 * sizeof(*e2->element));
    r = rarr(4, rint_(20240510), rint_(202405), ENTRY(e1, "acme"), ENTRY(e2, "beta"));
#undef ENTRY
    rc = dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err));
    TEST_CHECK(rc == 0 && n == 2 && strcmp(u[0].tenant, "acme") == 0
               && strcmp(u[1].tenant, "beta") == 0 && u[0].day == 20240510
               && u[1].month == 202405 && u[0].today.requests == 3
               && u[0].today.reasoning_tokens == 6 && u[1].this_month.requests == 9
               && u[1].this_month.reasoning_tokens == 18, "usage reply: %d %s", rc,
               rc ? err : "");
    free(u);
    /* break it in place, one way at a time */
    r->element[2]->element[5]->integer = -1;
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1 && u == NULL
               && strstr(err, "usage entry 1 reply: element 6 (reasoning_tokens) is -1"),
               "negative usage: %s", err);
    r->element[2]->element[5]->integer = 6;
    free(r->element[3]->element[0]->str);
    r->element[3]->element[0]->str = strdup("be ta");
    r->element[3]->element[0]->len = 5;
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1
               && strstr(err, "not a tenant id") != NULL, "bad tenant: %s", err);
    r->element[3]->elements = 10;
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1
               && strstr(err, "10 elements, want 11") != NULL, "short entry: %s", err);
    r->element[3]->elements = 11;
    r->element[0]->integer = 20240532;
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1
               && strstr(err, "not a date") != NULL, "bad day: %s", err);
    r->element[0]->integer = 20240510;
    r->element[1]->integer = 202406;
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1, "month of another day");
    freeReplyObject(r);
    r = rarr(3, rint_(20240510), rint_(202405), rint_(7));
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1
               && strstr(err, "integer, want an array") != NULL, "entry not an array: %s", err);
    freeReplyObject(r);
    r = rarr(1, rint_(20240510));
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == -1, "too short");
    freeReplyObject(r);
    r = rarr(2, rint_(20240510), rint_(202405));
    TEST_CHECK(dsv4_limit_reply_usage(r, &u, &n, err, sizeof(err)) == 0 && n == 0 && u != NULL,
               "no tenants");
    free(u);
    freeReplyObject(r);
    TEST_CHECK(dsv4_limit_reply_usage(NULL, &u, &n, err, sizeof(err)) == -1, "NULL usage");
}

static void
test_commands(void)
{
    dsv4_limit_cmd         c;
    dsv4_limits            l = L(60, 1000, 4, 0, -1);
    dsv4_limit_reservation res = { 1715342400500LL, 100, 20240510, 202405 };
    dsv4_usage             u = { 1, 10, 2, 5, 1 };
    const char            *sha = "0123456789abcdef0123456789abcdef01234567";
    char                   big[1100];

    TEST_CHECK(dsv4_limit_cmd_admit(&c, sha, "dsv4:", "acme", &l, 100, "lease-1", 600000, -5)
               == 0 && c.argc == 13, "admit argv: %d", c.argc);
    const char *want[] = { "EVALSHA", sha, "1", "dsv4:{acme}:", "-1", "100", "lease-1",
                           "600000", "60", "1000", "4", "0", "-1" };
    for (int i = 0; i < 13 && i < c.argc; i++) {
        TEST_CHECK(c.argvlen[i] == strlen(want[i]) && memcmp(c.argv[i], want[i], c.argvlen[i]) == 0,
                   "admit argv[%d]: '%.*s'", i, (int) c.argvlen[i], c.argv[i]);
    }
    TEST_CHECK(dsv4_limit_cmd_admit(&c, NULL, "p:", "acme", &l, -3, "x", 1, 123) == 0
               && strcmp(c.argv[0], "EVAL") == 0 && c.argv[1] == dsv4_limit_lua_admit
               && c.argvlen[1] == strlen(dsv4_limit_lua_admit)
               && strcmp(c.argv[4], "123") == 0 && strcmp(c.argv[5], "0") == 0,
               "EVAL: the script text, pinned clock, negative cost sent as 0");
    memset(big, 'p', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    TEST_CHECK(dsv4_limit_cmd_admit(&c, sha, big, "acme", &l, 1, "x", 1, -1) == -1,
               "prefix too long");
    TEST_CHECK(dsv4_limit_cmd_admit(&c, sha, "p:", "a{b}", &l, 1, "x", 1, -1) == -1
               && dsv4_limit_cmd_admit(&c, sha, "p:", "", &l, 1, "x", 1, -1) == -1,
               "invalid tenant");
    l.daily = DSV4_LIMIT_COUNT_MAX + 1;
    TEST_CHECK(dsv4_limit_cmd_admit(&c, sha, "p:", "acme", &l, 1, "x", 1, -1) == -1,
               "limit over 10^15");
    l.daily = 0;
    TEST_CHECK(dsv4_limit_cmd_admit(&c, sha, "p:", "acme", &l, DSV4_LIMIT_COUNT_MAX + 1, "x", 1,
                                    -1) == -1, "cost over 10^15");

    TEST_CHECK(dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 1, &res, 250, "lease-1", &u, -1)
               == 0 && c.argc == 19, "finish argv: %d", c.argc);
    const char *fw[] = { "EVALSHA", sha, "1", "dsv4:{acme}:", "dsv4:", "acme", "-1", "1",
                         "1715342400500", "100", "20240510", "202405", "250", "lease-1", "1",
                         "10", "2", "5", "1" };
    for (int i = 0; i < 19 && i < c.argc; i++) {
        TEST_CHECK(strcmp(c.argv[i], fw[i]) == 0, "finish argv[%d]: '%s'", i, c.argv[i]);
    }
    TEST_CHECK(dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 0, NULL, 0, NULL, &u, 5) == 0
               && strcmp(c.argv[7], "0") == 0 && strcmp(c.argv[8], "0") == 0
               && strcmp(c.argv[13], "") == 0, "finish, not admitted: meters only");
    TEST_CHECK(dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 1, NULL, 0, "x", &u, 5) == -1
               && dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 1, &res, 0, NULL, &u, 5) == -1
               && dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 0, NULL, 0, NULL, NULL, 5) == -1,
               "finish: missing reservation, lease or usage");
    u.cached_tokens = -1;
    TEST_CHECK(dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 0, NULL, 0, NULL, &u, 5) == -1,
               "negative usage");
    res.day = 20240231;
    u.cached_tokens = 0;
    TEST_CHECK(dsv4_limit_cmd_finish(&c, sha, "dsv4:", "acme", 1, &res, 0, "x", &u, 5) == -1,
               "reservation with a bad day");

    TEST_CHECK(dsv4_limit_cmd_usage(&c, sha, "dsv4:", NULL, -1) == 0 && c.argc == 5
               && strcmp(c.argv[2], "0") == 0 && strcmp(c.argv[3], "dsv4:") == 0,
               "usage, every tenant");
    TEST_CHECK(dsv4_limit_cmd_usage(&c, sha, "dsv4:", "acme", 7) == 0 && c.argc == 7
               && strcmp(c.argv[3], "dsv4:{acme}:") == 0 && strcmp(c.argv[5], "7") == 0
               && strcmp(c.argv[6], "acme") == 0, "usage, one tenant");
    TEST_CHECK(dsv4_limit_cmd_usage(&c, sha, "dsv4:", "a b", 7) == -1, "usage, bad tenant");
}

int
main(void)
{
    test_names_merge();
    test_calendar();
    test_duration();
    test_window_edges();
    test_clock_back();
    test_admit_finish();
    test_concurrency_reasons();
    test_periods();
    test_random_vs_naive();
    test_meter();
    test_digest();
    test_keys_file();
    test_key_from_redis();
    test_replies();
    test_commands();
    return TEST_REPORT();
}
