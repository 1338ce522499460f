/*
 * Fault lines that cannot flood the log: one line per cause per
 * NGX_HTTP_DSV4_LOG_EVERY seconds per worker, the next one saying how many
 * were suppressed in between.  A Redis restart or an overloaded engine
 * refuses every request for a while; each refusal still gets its answer
 * and its counter in /metrics, but the error log gets one line per cause
 * and interval instead of one per request.
 *
 * A cause is a short string the caller composes ("redis 10.0.0.5:6379
 * connect", "limit zone k", "http 503 overloaded"): faults of different
 * causes never hide each other.  Called on the worker's event loop only.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dsv4_module.h"


#define NGX_HTTP_DSV4_LOG_CAUSES  64
#define NGX_HTTP_DSV4_CAUSE_LEN   96


typedef struct {
    u_char                      cause[NGX_HTTP_DSV4_CAUSE_LEN];
    size_t                      len;            /* 0: a free slot */
    time_t                      last;           /* the last line, seconds */
    ngx_uint_t                  suppressed;     /* since then */
} ngx_http_dsv4_log_slot_t;


/* per worker: the causes seen, the least recently logged one recycled */
static ngx_http_dsv4_log_slot_t  ngx_http_dsv4_log_slots[NGX_HTTP_DSV4_LOG_CAUSES];


static ngx_http_dsv4_log_slot_t *
ngx_http_dsv4_log_slot(const u_char *cause, size_t len)
{
    ngx_uint_t                 i;
    ngx_http_dsv4_log_slot_t  *s, *oldest;

    oldest = &ngx_http_dsv4_log_slots[0];

    for (i = 0; i < NGX_HTTP_DSV4_LOG_CAUSES; i++) {
        s = &ngx_http_dsv4_log_slots[i];

        if (s->len == len && ngx_memcmp(s->cause, cause, len) == 0) {
            return s;
        }

        if (s->len == 0 || s->last < oldest->last) {
            oldest = s;

            if (s->len == 0) {
                break;
            }
        }
    }

    ngx_memcpy(oldest->cause, cause, len);
    oldest->len = len;
    oldest->last = 0;
    oldest->suppressed = 0;

    return oldest;
}


void
ngx_http_dsv4_log_fault(ngx_uint_t level, ngx_log_t *log, const char *cause,
    const char *fmt, ...)
{
    u_char                    *p, *last;
    size_t                     len;
    va_list                    args;
    ngx_http_dsv4_log_slot_t  *s;
    u_char                     msg[NGX_MAX_ERROR_STR];

    if (log->log_level < level) {
        return;
    }

    len = ngx_min(ngx_strlen(cause), NGX_HTTP_DSV4_CAUSE_LEN);
    s = ngx_http_dsv4_log_slot((const u_char *) cause, len);

    if (s->last != 0 && ngx_time() - s->last < NGX_HTTP_DSV4_LOG_EVERY) {
        s->suppressed++;
        return;
    }

    last = msg + sizeof(msg);

    va_start(args, fmt);
    p = ngx_vslprintf(msg, last, fmt, args);
    va_end(args);

    if (s->suppressed) {
        p = ngx_slprintf(p, last, " (%ui more like this in the last %T s "
                         "not logged)", s->suppressed, ngx_time() - s->last);
    }

    s->last = ngx_time();
    s->suppressed = 0;

    ngx_log_error(level, log, 0, "%*s", (size_t) (p - msg), msg);
}
