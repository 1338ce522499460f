/*
 * UTC calendar periods for the daily and monthly budgets, and the duration
 * text of the x-ratelimit-reset-* headers.
 *
 * Days are counted from the Unix epoch with the usual civil-date formulas
 * (400-year eras of 146097 days, years starting in March so the leap day is
 * last); no libc time functions, so the answer never depends on TZ or on a
 * time_t width, and the Lua scripts (lua.c) do exactly the same arithmetic.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

int64_t
dsv4_limit_days_from_civil(int64_t y, int64_t m, int64_t d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = dsv4_limit_floordiv(y, 400);
    yoe = y - era * 400;                                    /* [0, 399] */
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;  /* from March 1 */
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;            /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

void
dsv4_limit_civil(int64_t days, int64_t *y, int64_t *m, int64_t *d)
{
    int64_t z = days + 719468, era, doe, yoe, doy, mp;

    era = dsv4_limit_floordiv(z, 146097);
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

int64_t
dsv4_limit_day(int64_t now_ms)
{
    int64_t y, m, d;

    dsv4_limit_civil(dsv4_limit_floordiv(now_ms, DSV4_LIMIT_DAY_MS), &y, &m, &d);
    return y * 10000 + m * 100 + d;
}

int64_t
dsv4_limit_month(int64_t now_ms)
{
    return dsv4_limit_day(now_ms) / 100;
}

int64_t
dsv4_limit_day_end_ms(int64_t now_ms)
{
    return (dsv4_limit_floordiv(now_ms, DSV4_LIMIT_DAY_MS) + 1) * DSV4_LIMIT_DAY_MS;
}

int64_t
dsv4_limit_month_end_ms(int64_t now_ms)
{
    return dsv4_limit_month_end_of(dsv4_limit_month(now_ms));
}

int64_t
dsv4_limit_day_end_of(int64_t yyyymmdd)
{
    return (dsv4_limit_days_from_civil(yyyymmdd / 10000, yyyymmdd / 100 % 100,
                                       yyyymmdd % 100) + 1) * DSV4_LIMIT_DAY_MS;
}

int64_t
dsv4_limit_month_end_of(int64_t yyyymm)
{
    int64_t y = yyyymm / 100, m = yyyymm % 100;

    return dsv4_limit_days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1)
           * DSV4_LIMIT_DAY_MS;
}

int
dsv4_limit_month_ok(int64_t yyyymm)
{
    return yyyymm >= 197001 && yyyymm <= 999912 && yyyymm % 100 >= 1 && yyyymm % 100 <= 12;
}

int
dsv4_limit_day_ok(int64_t yyyymmdd)
{
    int64_t y = yyyymmdd / 10000, m = yyyymmdd / 100 % 100, d = yyyymmdd % 100;

    return dsv4_limit_month_ok(yyyymmdd / 100) && d >= 1
           && dsv4_limit_days_from_civil(y, m, d) < dsv4_limit_month_end_of(y * 100 + m)
                                                    / DSV4_LIMIT_DAY_MS;
}

/*
 * Go's time.Duration text at millisecond precision, which is what OpenAI's
 * headers carry: "0s", "20ms", "1.5s", "6m0s", "1h2m3.04s".  Negative
 * durations print as "0s" (nothing to wait for).  The longest, for
 * INT64_MAX ms, is 24 bytes.
 */
size_t
dsv4_limit_duration(char *buf, size_t size, int64_t ms)
{
    char    tmp[48], frac[8] = "";
    int64_t h, m, s;
    int     n;

    if (ms <= 0) {
        n = snprintf(tmp, sizeof(tmp), "0s");
    } else if (ms < 1000) {
        n = snprintf(tmp, sizeof(tmp), "%lldms", (long long) ms);
    } else {
        h = ms / 3600000;
        m = ms / 60000 % 60;
        s = ms / 1000 % 60;
        if (ms % 1000 != 0) {                   /* ".5", ".04", ".001" */
            int f = (int) (ms % 1000), digits = 3;
            while (f % 10 == 0) {
                f /= 10;
                digits--;
            }
            snprintf(frac, sizeof(frac), ".%0*d", digits, f);
        }
        if (h > 0) {
            n = snprintf(tmp, sizeof(tmp), "%lldh%dm%d%ss", (long long) h, (int) m, (int) s,
                         frac);
        } else if (m > 0) {
            n = snprintf(tmp, sizeof(tmp), "%dm%d%ss", (int) m, (int) s, frac);
        } else {
            n = snprintf(tmp, sizeof(tmp), "%d%ss", (int) s, frac);
        }
    }
    if (size == 0) {
        return 0;
    }
    if ((size_t) n >= size) {
        n = (int) size - 1;
    }
    memcpy(buf, tmp, (size_t) n);
    buf[n] = '\0';
    return (size_t) n;
}
