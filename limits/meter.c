/*
 * Usage sums and the per-host meter (shm mode; Redis meters in the finish
 * script).  Like the budgets, the meter's periods only move forward: usage
 * added while the clock is behind the meter's day counts to that day.
 */
#include <stddef.h>
#include <string.h>

#include "internal.h"

#define DSV4_USAGE_NAME(f)      #f,
#define DSV4_USAGE_OFFSET(f)    offsetof(dsv4_usage, f),
#define DSV4_USAGE_ADD(f)       to->f += u->f;

const char *const dsv4_usage_fields[DSV4_USAGE_NFIELDS] = { DSV4_USAGE_FIELDS(DSV4_USAGE_NAME) };

static const size_t dsv4_usage_offsets[DSV4_USAGE_NFIELDS] = {
    DSV4_USAGE_FIELDS(DSV4_USAGE_OFFSET)
};

int64_t *
dsv4_usage_field(dsv4_usage *u, int i)
{
    return (int64_t *) ((char *) u + dsv4_usage_offsets[i]);
}

void
dsv4_usage_add(dsv4_usage *to, const dsv4_usage *u)
{
    DSV4_USAGE_FIELDS(DSV4_USAGE_ADD)
}

void
dsv4_meter_add(dsv4_meter *m, int64_t now_ms, const dsv4_usage *u)
{
    int64_t day = dsv4_limit_day(now_ms), month = day / 100;

    if (day > m->day) {
        m->day = day;
        memset(&m->today, 0, sizeof(m->today));
    }
    if (month > m->month) {
        m->month = month;
        memset(&m->this_month, 0, sizeof(m->this_month));
    }
    dsv4_usage_add(&m->today, u);
    dsv4_usage_add(&m->this_month, u);
    dsv4_usage_add(&m->total, u);
}

void
dsv4_meter_read(const dsv4_meter *m, int64_t now_ms, dsv4_usage *today,
                dsv4_usage *this_month)
{
    int64_t day = dsv4_limit_day(now_ms);

    memset(today, 0, sizeof(*today));
    memset(this_month, 0, sizeof(*this_month));
    if (m->day >= day) {
        *today = m->today;
    }
    if (m->month >= day / 100) {
        *this_month = m->this_month;
    }
}
