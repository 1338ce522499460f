/* Shared by the limits checks (test_limits.c, check_limits_redis.c). */
#ifndef DSV4_TESTS_LIMITS_HELPERS_H
#define DSV4_TESTS_LIMITS_HELPERS_H

#include <stdint.h>
#include <time.h>

#include "limits/limit.h"

/* ms of a UTC date and time, by libc (independent of limits/calendar.c) */
static inline int64_t
T(int y, int mo, int d, int h, int mi, int s, int ms)
{
    struct tm tm = { 0 };

    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    return (int64_t) timegm(&tm) * 1000 + ms;
}

/* every field of two admission answers equal */
static inline int
same_verdict(const dsv4_limit_verdict *a, const dsv4_limit_verdict *b)
{
    return a->allowed == b->allowed && a->reason == b->reason
           && a->limit_requests == b->limit_requests
           && a->remaining_requests == b->remaining_requests
           && a->reset_requests_ms == b->reset_requests_ms && a->limit_tokens == b->limit_tokens
           && a->remaining_tokens == b->remaining_tokens
           && a->reset_tokens_ms == b->reset_tokens_ms && a->retry_after_ms == b->retry_after_ms;
}

#endif
