/*
 * Per-tenant limits and metering: the arithmetic, the key file, and the
 * Redis side (Lua scripts, their arguments and replies).  No nginx here:
 * ngx_dsv4_module/ calls this under its shm mutex (single host) or sends the
 * scripts to Redis (fleet), and both give the same answers.
 *
 * The model (docs/limits.md):
 *
 *   requests per minute and tokens per minute are sliding windows of
 *   DSV4_LIMIT_SLOTS one-second slots: a request is admitted when what the
 *   last DSV4_LIMIT_SLOTS seconds (this second included) charged plus its
 *   cost stays within the limit.  The oldest slot leaves the window whole,
 *   so a window may hold up to one second more than a minute of traffic.
 *
 *   concurrency counts admitted, unfinished requests; each holds a lease
 *   that expires on its own (a crashed server does not leak streams).
 *
 *   daily and monthly budgets are token counters per UTC calendar period.
 *
 *   Admission reserves the cost (prompt tokens plus a completion estimate,
 *   as the caller counts them); finish corrects the reservation to the real
 *   count in the slot and periods it was charged to.  A zero limit means no
 *   limit.  All times are milliseconds since the Unix epoch; Redis uses its
 *   own TIME, so servers with skewed clocks share one clock.
 */

#ifndef DSV4_LIMIT_H
#define DSV4_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#define DSV4_LIMIT_SLOTS        60      /* one-second slots per window */
#define DSV4_LIMIT_TENANT_MAX   64      /* tenant id bytes, NUL excluded */
#define DSV4_LIMIT_MODELS_MAX   16      /* allowed models per key */
#define DSV4_LIMIT_MODEL_MAX    64      /* model name bytes */
/* largest limit or token count: the Lua scripts compute in doubles, exact
 * to 2^53; the key parsers and command builders refuse more */
#define DSV4_LIMIT_COUNT_MAX    1000000000000000LL

/* why a request was rejected (dsv4_limit_verdict.reason) */
enum {
    DSV4_LIMIT_OK = 0,
    DSV4_LIMIT_RPM,
    DSV4_LIMIT_TPM,
    DSV4_LIMIT_CONCURRENCY,
    DSV4_LIMIT_DAILY,
    DSV4_LIMIT_MONTHLY,
    DSV4_LIMIT_REASONS
};

/* name of a reason, for logs and metric labels: "rpm", "tpm", ... */
const char *dsv4_limit_reason_name(int reason);

typedef struct {
    int64_t rpm;                /* requests per minute; 0: unlimited */
    int64_t tpm;                /* tokens per minute; 0: unlimited */
    int64_t concurrency;        /* unfinished requests; 0: unlimited */
    int64_t daily;              /* tokens per UTC day; 0: unlimited */
    int64_t monthly;            /* tokens per UTC month; 0: unlimited */
} dsv4_limits;

/* -1 in every field: "not set" (a key that inherits the location's) */
void dsv4_limits_unset(dsv4_limits *l);
/* fields of *l still -1 take the value from *dflt (then 0 if unset too) */
void dsv4_limits_merge(dsv4_limits *l, const dsv4_limits *dflt);


/* ---- sliding window ---------------------------------------------------- */

typedef struct {
    int64_t count[DSV4_LIMIT_SLOTS];    /* [t % SLOTS]: charged in second t,
                                           for t in (newest - SLOTS, newest] */
    int64_t newest;                     /* the latest second charged */
} dsv4_limit_window;

/* what the window holds at now_ms (slots older than a window count 0; a
 * clock behind newest by less than a window reads it at newest) */
int64_t dsv4_limit_window_used(const dsv4_limit_window *w, int64_t now_ms);


/* ---- one tenant's state (fixed size: lives in nginx shm) --------------- */

typedef struct {
    dsv4_limit_window requests;
    dsv4_limit_window tokens;
    int64_t concurrent;                 /* leases not yet finished */
    int64_t day;                        /* yyyymmdd of day_tokens */
    int64_t day_tokens;
    int64_t month;                      /* yyyymm of month_tokens */
    int64_t month_tokens;
} dsv4_limit_state;

/* What admission charged; finish needs it back to correct the charge. */
typedef struct {
    int64_t time_ms;            /* admission time (its slot was charged) */
    int64_t tokens;             /* tokens reserved */
    int64_t day;                /* yyyymmdd charged */
    int64_t month;              /* yyyymm charged */
} dsv4_limit_reservation;

/* The answer to an admission, accepted or not (OpenAI x-ratelimit-*). */
typedef struct {
    int allowed;                /* 1: admitted and charged */
    int reason;                 /* DSV4_LIMIT_*, the first limit hit */
    int64_t limit_requests;     /* rpm; 0: unlimited */
    int64_t remaining_requests; /* after this request */
    int64_t reset_requests_ms;  /* until the window is empty again */
    int64_t limit_tokens;       /* tpm; 0: unlimited */
    int64_t remaining_tokens;
    int64_t reset_tokens_ms;
    int64_t retry_after_ms;     /* rejected: until it could be admitted */
} dsv4_limit_verdict;

void dsv4_limit_state_init(dsv4_limit_state *s);

/*
 * Admits one request costing `tokens` at now_ms, or rejects it leaving *s
 * unchanged.  Checks concurrency, rpm, tpm, daily, monthly in that order:
 * the reason is the first limit hit, retry_after_ms the longest wait among
 * those hit (concurrency: 1000 ms, as when a stream ends is unknown).  A
 * cost larger than a limit can never pass: that limit is the reason, with
 * retry_after_ms -1.  Negative costs count 0.  Fills *v always, *res when
 * admitted.  Returns v->allowed.  (Clocks that step back: limit.c.)
 */
int dsv4_limit_admit(dsv4_limit_state *s, const dsv4_limits *l,
                     int64_t now_ms, int64_t tokens,
                     dsv4_limit_verdict *v, dsv4_limit_reservation *res);

/*
 * A request admitted with *res has finished having used `tokens`: corrects
 * the tpm slot it was charged to (if still in the window) and the periods it
 * was charged to (if still current), and ends its concurrency lease.
 */
void dsv4_limit_finish(dsv4_limit_state *s, const dsv4_limit_reservation *res,
                       int64_t now_ms, int64_t tokens);


/* ---- calendar (UTC) ----------------------------------------------------- */

int64_t dsv4_limit_day(int64_t now_ms);             /* yyyymmdd */
int64_t dsv4_limit_month(int64_t now_ms);           /* yyyymm */
int64_t dsv4_limit_day_end_ms(int64_t now_ms);      /* next 00:00 UTC */
int64_t dsv4_limit_month_end_ms(int64_t now_ms);    /* 1st, 00:00 UTC */

/* OpenAI's duration form for x-ratelimit-reset-* (Go's, to the ms): "0s",
 * "20ms", "1s", "1.5s", "6m0s", "1h2m3s"; ms <= 0 gives "0s".  Returns the
 * bytes written, NUL excluded (buf of 32 is always enough) */
size_t dsv4_limit_duration(char *buf, size_t size, int64_t ms);


/* ---- metering ----------------------------------------------------------- */

typedef struct {
    int64_t requests;
    int64_t prompt_tokens;
    int64_t cached_tokens;      /* prompt tokens read from the prefix cache */
    int64_t completion_tokens;
    int64_t reasoning_tokens;   /* part of completion_tokens */
} dsv4_usage;

/* field names, in struct order, as stored in Redis hashes and printed */
extern const char *const dsv4_usage_fields[5];
void dsv4_usage_add(dsv4_usage *to, const dsv4_usage *u);

/* A tenant's usage on one host (shm mode): the current day and month roll
 * over on the first add in a new period; total never resets (metrics). */
typedef struct {
    int64_t day;                /* yyyymmdd of today; 0: none yet */
    int64_t month;              /* yyyymm of this_month */
    dsv4_usage today;
    dsv4_usage this_month;
    dsv4_usage total;
} dsv4_meter;

void dsv4_meter_add(dsv4_meter *m, int64_t now_ms, const dsv4_usage *u);
/* copies of today/this_month as seen at now_ms (zero if the period ended) */
void dsv4_meter_read(const dsv4_meter *m, int64_t now_ms, dsv4_usage *today,
                     dsv4_usage *this_month);


/* ---- API keys ----------------------------------------------------------- */

/*
 * A key file holds one key per line:
 *
 *   # comment
 *   <sha256 of the key, 64 hex> <tenant> [rpm=N] [tpm=N] [concurrency=N]
 *       [daily=N] [monthly=N] [models=name,name,...]
 *
 * Tenants are [A-Za-z0-9_.-]{1,64}; several keys may share a tenant (key
 * rotation) and then share its counters.  Limits not given are -1 (the
 * location's dsv4_limit values apply); limits are 0..DSV4_LIMIT_COUNT_MAX.
 * No models= means every model.  Blank lines, CRLF, and a "#" starting a
 * line or a token (a comment to the end of the line) are accepted.
 */
typedef struct {
    uint8_t digest[32];                 /* SHA-256 of the raw key */
    char tenant[DSV4_LIMIT_TENANT_MAX + 1];
    dsv4_limits limits;
    int nmodels;                        /* 0: all models */
    char models[DSV4_LIMIT_MODELS_MAX][DSV4_LIMIT_MODEL_MAX + 1];
} dsv4_key;

/*
 * Parses a key file's text.  On success returns 0 and a malloc'd array in
 * *keys (free() it; never NULL, even for no keys) of *nkeys entries.  On
 * error returns -1, *keys NULL, and writes "line N: what is wrong (the
 * offending token)" to err; a key hash is shown by its first 8 characters
 * at most.  A digest listed twice is an error.
 */
int dsv4_keys_parse(const char *text, size_t len, dsv4_key **keys,
                    int *nkeys, char *err, size_t errlen);

/* SHA-256 of a raw key, and its 64-char lowercase hex form (+ NUL) */
void dsv4_key_digest(const void *key, size_t len, uint8_t digest[32]);
void dsv4_key_hex(const uint8_t digest[32], char hex[65]);
int dsv4_key_from_hex(const char *hex, size_t len, uint8_t digest[32]);

/* whether a key may use `model` (exact name) */
int dsv4_key_allows(const dsv4_key *k, const char *model, size_t len);

/*
 * A key stored in Redis: HGETALL <prefix>key:<hex digest> returns fields
 * tenant, rpm, tpm, concurrency, daily, monthly, models (comma list),
 * revoked (1: refused).  Parses such a reply's flat field/value pairs;
 * returns 1 found, 0 no such key (empty reply) or revoked, -1 malformed
 * (err says why).  Fields other than these are ignored (an admin's notes);
 * an empty models field means every model.
 */
struct redisReply;
int dsv4_key_from_redis(const struct redisReply *r, const uint8_t digest[32],
                        dsv4_key *k, char *err, size_t errlen);


/* ---- Redis: the same limits, atomically, for a fleet ------------------- */

/*
 * Keys (one hash tag per tenant, so a cluster keeps a tenant on one node):
 *   <prefix>{<tenant>}:rpm           hash second -> requests
 *   <prefix>{<tenant>}:tpm           hash second -> tokens
 *   <prefix>{<tenant>}:conc          zset lease id -> expiry ms
 *   <prefix>{<tenant>}:d:<yyyymmdd>  hash: "budget" (tokens charged to the
 *                                    daily budget), then the usage fields
 *   <prefix>{<tenant>}:m:<yyyymm>    same per month
 *   <prefix>tenants:d:<yyyymmdd>     set of tenants metered that day
 *   <prefix>tenants:m:<yyyymm>       same per month
 * Every key gets a TTL (windows: 2 minutes; conc: at least its longest
 * lease; days: 3 days; months: 93 days).  The tenants sets are on another
 * slot than the tenant's keys: the finish script and the all-tenants usage
 * script are not cluster-safe.  Exact layout, arguments and replies:
 * limits/lua.c (and docs/limits.md).
 */

/* the scripts' source, for SCRIPT LOAD / EVAL */
extern const char dsv4_limit_lua_admit[];
extern const char dsv4_limit_lua_finish[];
extern const char dsv4_limit_lua_usage[];

#define DSV4_LIMIT_ARGV_MAX     24

/* An argument vector for redisAsyncCommandArgv / redisCommandArgv, pointing
 * into its own storage (and, for EVAL, at the script text). */
typedef struct {
    int argc;
    const char *argv[DSV4_LIMIT_ARGV_MAX];
    size_t argvlen[DSV4_LIMIT_ARGV_MAX];
    char storage[1024];
} dsv4_limit_cmd;

/*
 * EVALSHA sha (40 hex) or, with sha NULL, EVAL of the script text.
 * lease_id identifies the request for the concurrency set; lease_ms is how
 * long it holds a stream at most.  now_ms < 0: the script uses Redis TIME
 * (production); >= 0 pins the clock (tests).  Returns 0, -1 if it does not
 * fit (tenant/prefix too long), the tenant is not a valid id, or a limit or
 * the cost is over DSV4_LIMIT_COUNT_MAX.
 */
int dsv4_limit_cmd_admit(dsv4_limit_cmd *c, const char *sha,
                         const char *prefix, const char *tenant,
                         const dsv4_limits *l, int64_t tokens,
                         const char *lease_id, int64_t lease_ms,
                         int64_t now_ms);

/* *v and (when admitted) *res from the admit script's reply; -1 and err on
 * a reply that is not what the script returns (an error reply, wrong type,
 * length, values out of range or inconsistent) */
int dsv4_limit_reply_admit(const struct redisReply *r, dsv4_limit_verdict *v,
                           dsv4_limit_reservation *res, char *err,
                           size_t errlen);

/*
 * Ends a request: corrects the tpm slot and the budgets to `tokens`, ends
 * the lease, and meters *u for the tenant in the day and month it was
 * admitted.  admitted 0 (rejected, or limits off): meters only, in now's
 * period; res and lease_id are then ignored (may be NULL).  u is required.
 */
int dsv4_limit_cmd_finish(dsv4_limit_cmd *c, const char *sha,
                          const char *prefix, const char *tenant,
                          int admitted, const dsv4_limit_reservation *res,
                          int64_t tokens, const char *lease_id,
                          const dsv4_usage *u, int64_t now_ms);
/* the finish script returns OK; -1 on anything else */
int dsv4_limit_reply_finish(const struct redisReply *r, char *err,
                            size_t errlen);

/*
 * Usage for one tenant (tenant non-NULL) or every tenant metered in the
 * period (tenant NULL; sorted by tenant), for the day and month containing
 * now_ms (< 0: Redis TIME).
 */
int dsv4_limit_cmd_usage(dsv4_limit_cmd *c, const char *sha,
                         const char *prefix, const char *tenant,
                         int64_t now_ms);

typedef struct {
    char tenant[DSV4_LIMIT_TENANT_MAX + 1];
    int64_t day;                /* yyyymmdd */
    int64_t month;              /* yyyymm */
    dsv4_usage today;
    dsv4_usage this_month;
} dsv4_tenant_usage;

/* parses the usage script's reply into a malloc'd array (free() it; never
 * NULL on success); -1, *out NULL and err on a malformed reply */
int dsv4_limit_reply_usage(const struct redisReply *r,
                           dsv4_tenant_usage **out, int *n, char *err,
                           size_t errlen);

#endif
