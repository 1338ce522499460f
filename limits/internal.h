/*
 * Internals shared by the files of limits/ (not part of the API).
 *
 *   limit.c     windows, admission, finish, limits merge, reason names
 *   calendar.c  UTC days and months, duration text
 *   meter.c     usage sums and the per-host meter
 *   keys.c      key file, key digests, keys stored in Redis
 *   lua.c       the three Redis scripts
 *   redis.c     the scripts' argument vectors and reply parsers
 */
#ifndef DSV4_LIMITS_INTERNAL_H
#define DSV4_LIMITS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "limit.h"

#define DSV4_LIMIT_DAY_MS           86400000LL
/* retry_after_ms of a concurrency rejection: when a stream ends is unknown,
 * so a client is told to try again soon */
#define DSV4_LIMIT_CONC_RETRY_MS    1000
/* Redis TTLs, seconds: a window outlives its slots, a period hash is kept
 * for reports a little after its period */
#define DSV4_LIMIT_TTL_WINDOW_S     120
#define DSV4_LIMIT_TTL_DAY_S        (3 * 86400)
#define DSV4_LIMIT_TTL_MONTH_S      (93 * 86400)
/* the field of a period hash holding the tokens charged to its budget */
#define DSV4_LIMIT_BUDGET_FIELD     "budget"

/* dsv4_usage's fields in struct order: the one list the C names, the
 * struct accessors and the Lua scripts are generated from */
#define DSV4_USAGE_FIELDS(X)                                                 \
    X(requests) X(prompt_tokens) X(cached_tokens) X(completion_tokens)       \
    X(reasoning_tokens)
#define DSV4_USAGE_NFIELDS          5

#define DSV4_LIMIT_STR_(x)          #x
#define DSV4_LIMIT_STR(x)           DSV4_LIMIT_STR_(x)

/* floor division and modulo (times before 1970 stay consistent) */
static inline int64_t
dsv4_limit_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;

    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static inline int64_t
dsv4_limit_floormod(int64_t a, int64_t b)
{
    return a - dsv4_limit_floordiv(a, b) * b;
}

/* ---- calendar.c --------------------------------------------------------- */

/* days since 1970-01-01 of a proleptic Gregorian date, and back */
int64_t dsv4_limit_days_from_civil(int64_t y, int64_t m, int64_t d);
void    dsv4_limit_civil(int64_t days, int64_t *y, int64_t *m, int64_t *d);
/* ends of the period named yyyymmdd / yyyymm (ms) */
int64_t dsv4_limit_day_end_of(int64_t yyyymmdd);
int64_t dsv4_limit_month_end_of(int64_t yyyymm);
/* whether n names a real date yyyymmdd (year 1970..9999) / month yyyymm */
int     dsv4_limit_day_ok(int64_t yyyymmdd);
int     dsv4_limit_month_ok(int64_t yyyymm);

/* ---- meter.c ------------------------------------------------------------ */

/* field i (dsv4_usage_fields order) of u */
int64_t *dsv4_usage_field(dsv4_usage *u, int i);

/* ---- keys.c ------------------------------------------------------------- */

/* [A-Za-z0-9_.-]{1,DSV4_LIMIT_TENANT_MAX} */
int dsv4_limit_tenant_ok(const char *s, size_t len);

#endif
