/*
 * Redis tier: hiredis 0.14's synchronous API, called on the caller's thread
 * (engine threads for lookups, the writer thread for stores).
 *
 * Connections.  A small pool: a caller takes a free connection for one
 * pipeline and gives it back; with none free the call is skipped (counted),
 * never queued.  Every connect and every socket read/write has the
 * configured timeout (redisConnectWithTimeout + redisSetTimeout).
 *
 * Failures.  A connection-level failure (connect refused, timeout, EOF,
 * protocol error) closes that connection and marks Redis down for
 * retry_ms: calls in that window return at once as skipped, so a dead or
 * stopped server costs one timeout per window, not one per request.  An
 * error reply (OOM under maxmemory, READONLY, LOADING...) fails only that
 * command.  Every failure is a miss for the caller and a counter here.
 *
 * SIGPIPE.  hiredis writes with write(2); a peer that went away would raise
 * SIGPIPE and kill a host that has not ignored it.  Each pipeline blocks
 * SIGPIPE in the calling thread and consumes one it caused before
 * restoring the mask, so the library is safe whatever the host does.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "internal.h"

typedef struct {
    redisContext *ctx;     /* NULL until connected (or after a failure) */
    int           busy;    /* taken by a caller (mu) */
} dsv4_redis_conn;

struct dsv4_cache_redis {
    char                *host;        /* TCP host, or NULL */
    char                *unix_path;   /* unix socket, or NULL */
    int                  port;
    char                *prefix;
    struct timeval       tv;          /* connect and I/O timeout */
    int                  retry_ms;
    int                  ttl_s;
    atomic_int           no_getex;    /* the server has no GETEX (Redis < 6.2) */
    size_t               max_value;
    dsv4_cache_ctr      *ctr;
    pthread_mutex_t      mu;
    dsv4_redis_conn     *conns;       /* [nconns] */
    int                  nconns;
    atomic_int_fast64_t  down_until;  /* ms (dsv4_cache_now_ms); 0 = up */
    atomic_int           down;        /* logged as down, not yet back */
};

dsv4_cache_redis *
dsv4_cache_redis_new(const dsv4_cache_conf *conf, dsv4_cache_ctr *ctr)
{
    dsv4_cache_redis *r = calloc(1, sizeof(*r));
    int               ms = conf->redis_timeout_ms > 0 ? conf->redis_timeout_ms : 100;

    if (r == NULL) {
        return NULL;
    }
    r->host = conf->redis_unix ? NULL : strdup(conf->redis_host);
    r->unix_path = conf->redis_unix ? strdup(conf->redis_unix) : NULL;
    r->prefix = strdup(conf->redis_prefix ? conf->redis_prefix : "dsv4:");
    r->port = conf->redis_port > 0 ? conf->redis_port : 6379;
    r->tv.tv_sec = ms / 1000;
    r->tv.tv_usec = (ms % 1000) * 1000;
    r->retry_ms = conf->redis_retry_ms > 0 ? conf->redis_retry_ms : 2000;
    r->ttl_s = conf->redis_ttl_s;
    r->max_value = conf->redis_max_value > 0 ? conf->redis_max_value : (size_t) 32 << 20;
    r->ctr = ctr;
    r->nconns = conf->redis_conns > 0 ? conf->redis_conns : 4;
    r->conns = calloc((size_t) r->nconns, sizeof(*r->conns));
    if ((r->host == NULL && r->unix_path == NULL) || r->prefix == NULL || r->conns == NULL) {
        dsv4_cache_redis_free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->down_until, 0);
    atomic_init(&r->down, 0);
    return r;
}

void
dsv4_cache_redis_free(dsv4_cache_redis *r)
{
    if (r == NULL) {
        return;
    }
    if (r->conns != NULL) {
        for (int i = 0; i < r->nconns; i++) {
            if (r->conns[i].ctx != NULL) {
                redisFree(r->conns[i].ctx);
            }
        }
        pthread_mutex_destroy(&r->mu);
    }
    free(r->conns);
    free(r->host);
    free(r->unix_path);
    free(r->prefix);
    free(r);
}

int
dsv4_cache_redis_up(dsv4_cache_redis *r)
{
    return dsv4_cache_now_ms() >= atomic_load(&r->down_until);
}

void
dsv4_cache_redis_key(const char *prefix, const dsv4_cache_id *id, char *out, size_t cap)
{
    char hex[65];

    dsv4_cache_hex(id->key, 32, hex);
    snprintf(out, cap, "%s%c:%s", prefix, id->kind, hex);
}

static const char *
dsv4_redis_where(const dsv4_cache_redis *r, char *buf, size_t cap)
{
    if (r->unix_path) {
        snprintf(buf, cap, "unix:%s", r->unix_path);
    } else {
        snprintf(buf, cap, "%s:%d", r->host, r->port);
    }
    return buf;
}

/* Marks Redis down for retry_ms after a connection-level failure of kind e. */
static void
dsv4_redis_mark_down(dsv4_cache_redis *r, int e, const char *what)
{
    char where[300];

    atomic_store(&r->down_until, dsv4_cache_now_ms() + r->retry_ms);
    atomic_store(&r->down, 1);
    dsv4_cache_fail(r->ctr, e, "cache: redis %s: %s; not used for %d ms (requests recompute)",
                    dsv4_redis_where(r, where, sizeof(where)), what, r->retry_ms);
}

/* A connected connection for one pipeline, or NULL (skipped or failed:
 * counted).  *fresh: connected by this call (not a pooled one). */
static dsv4_redis_conn *
dsv4_redis_acquire(dsv4_cache_redis *r, int *fresh)
{
    dsv4_redis_conn *c = NULL;

    *fresh = 0;
    if (!dsv4_cache_redis_up(r)) {
        atomic_fetch_add(&r->ctr->errors[DSV4_CACHE_ERR_SKIPPED], 1);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    for (int pass = 0; pass < 2 && c == NULL; pass++) {     /* connected ones first */
        for (int i = 0; i < r->nconns; i++) {
            if (!r->conns[i].busy && (pass == 1 || r->conns[i].ctx != NULL)) {
                c = &r->conns[i];
                c->busy = 1;
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (c == NULL) {
        dsv4_cache_fail(r->ctr, DSV4_CACHE_ERR_SKIPPED, "cache: all %d redis connections busy",
                        r->nconns);
        return NULL;
    }
    if (c->ctx == NULL) {
        redisContext *ctx = r->unix_path ? redisConnectUnixWithTimeout(r->unix_path, r->tv)
                                         : redisConnectWithTimeout(r->host, r->port, r->tv);
        if (ctx == NULL || ctx->err || redisSetTimeout(ctx, r->tv) != REDIS_OK) {
            char what[200];
            snprintf(what, sizeof(what), "connect: %s", ctx ? ctx->errstr : "out of memory");
            if (ctx != NULL) {
                redisFree(ctx);
            }
            dsv4_redis_mark_down(r, DSV4_CACHE_ERR_CONNECT, what);
            pthread_mutex_lock(&r->mu);
            c->busy = 0;
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
        c->ctx = ctx;
        *fresh = 1;
    }
    return c;
}

static void
dsv4_redis_release(dsv4_cache_redis *r, dsv4_redis_conn *c, int broken)
{
    if (broken && c->ctx != NULL) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
    pthread_mutex_lock(&r->mu);
    c->busy = 0;
    pthread_mutex_unlock(&r->mu);
}

static void
dsv4_redis_latency(dsv4_cache_redis *r, int64_t us)
{
    dsv4_cache_ctr *t = r->ctr;
    uint64_t        u = us > 0 ? (uint64_t) us : 0, max = atomic_load(&t->redis_usec_max);
    int             k = 0;

    atomic_fetch_add(&t->redis_calls, 1);
    atomic_fetch_add(&t->redis_usec_sum, u);
    while (u > max && !atomic_compare_exchange_weak(&t->redis_usec_max, &max, u)) {
    }
    while (k < DSV4_CACHE_NLAT - 1 && u > dsv4_cache_latency_le_us[k]) {
        k++;
    }
    atomic_fetch_add(&t->redis_latency[k], 1);
}

static int64_t
dsv4_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One attempt of a pipeline on connection c (SIGPIPE already blocked).
 * Returns 0, or -1 with *timeout set when the socket timed out. */
static int
dsv4_redis_attempt(dsv4_cache_redis *r, dsv4_redis_conn *c, int n, const int *argc,
                   const char ***argv, const size_t **len, redisReply **replies, int *timeout)
{
    int64_t t0 = dsv4_now_us();
    int     rc = 0, err_no = 0;

    *timeout = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (redisAppendCommandArgv(c->ctx, argc[i], argv[i], len[i]) != REDIS_OK) {
            rc = -1;
        }
    }
    for (int k = 0; k < n && rc == 0; k++) {
        void *rep = NULL;
        errno = 0;
        if (redisGetReply(c->ctx, &rep) != REDIS_OK || rep == NULL) {
            err_no = errno;
            rc = -1;
            break;
        }
        replies[k] = rep;
    }
    dsv4_redis_latency(r, dsv4_now_us() - t0);
    if (rc != 0) {
        *timeout = c->ctx->err == REDIS_ERR_IO
                   && (err_no == EAGAIN || err_no == EWOULDBLOCK || err_no == ETIMEDOUT);
        for (int i = 0; i < n; i++) {
            if (replies[i] != NULL) {
                freeReplyObject(replies[i]);
                replies[i] = NULL;
            }
        }
    }
    return rc;
}

/*
 * Runs n commands in one round trip: command k is argv[k][0..argc[k]) with
 * lengths len[k].  replies[k] receives each reply (the caller frees them with
 * freeReplyObject).  Returns 0, or -1 when Redis was unusable: every reply is
 * then NULL and the failure is counted (the connection is dropped and Redis
 * marked down).
 *
 * A pooled connection that fails other than by timing out (the server
 * restarted or closed it while idle) is counted, replaced by a fresh one and
 * the pipeline retried once: every command sent here is idempotent.
 */
static int
dsv4_redis_pipeline(dsv4_cache_redis *r, int n, const int *argc, const char ***argv,
                    const size_t **len, redisReply **replies)
{
    dsv4_redis_conn *c;
    sigset_t         pipe_set, old, pend;
    struct timespec  zero = { 0, 0 };
    int              pending_before, rc = -1, fresh, timeout = 0;
    char             what[200] = "";

    memset(replies, 0, (size_t) n * sizeof(*replies));
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pend);
    pending_before = sigismember(&pend, SIGPIPE);

    for (int attempt = 0; attempt < 2; attempt++) {
        if ((c = dsv4_redis_acquire(r, &fresh)) == NULL) {
            break;                              /* counted */
        }
        rc = dsv4_redis_attempt(r, c, n, argc, argv, len, replies, &timeout);
        if (rc == 0) {
            dsv4_redis_release(r, c, 0);
            break;
        }
        snprintf(what, sizeof(what), "%s", c->ctx->err ? c->ctx->errstr : "no reply");
        dsv4_redis_release(r, c, 1);
        if (timeout || fresh || attempt == 1) {
            dsv4_redis_mark_down(r, timeout ? DSV4_CACHE_ERR_TIMEOUT : DSV4_CACHE_ERR_IO,
                                 timeout ? "timed out" : what);
            break;
        }
        dsv4_cache_fail(r->ctr, DSV4_CACHE_ERR_IO, "cache: redis connection lost (%s);"
                        " reconnecting", what);
    }

    if (!pending_before) {
        sigpending(&pend);
        if (sigismember(&pend, SIGPIPE)) {
            sigtimedwait(&pipe_set, NULL, &zero);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0 && atomic_exchange(&r->down, 0)) {
        char where[300];
        dsv4_cache_info(r->ctr, "cache: redis %s usable again",
                        dsv4_redis_where(r, where, sizeof(where)));
    }
    return rc;
}

/* Counts an error reply: OOM when Redis refused for maxmemory. */
static void
dsv4_redis_reply_error(dsv4_cache_redis *r, const redisReply *rep, const char *cmd)
{
    int oom = rep->type == REDIS_REPLY_ERROR && rep->str != NULL
              && strncmp(rep->str, "OOM", 3) == 0;

    dsv4_cache_fail(r->ctr, oom ? DSV4_CACHE_ERR_OOM : DSV4_CACHE_ERR_REPLY,
                    "cache: redis %s: %s", cmd,
                    rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "unexpected reply");
}

/* Keys of ids[n] into one buffer: keys + k * DSV4_REDIS_KEYLEN. */
#define DSV4_REDIS_KEYLEN 320

/* Builds n single-key commands NAME KEY(ids[k]) TAIL... (ntail <= 2
 * arguments after the key) and runs them. */
static int
dsv4_redis_keyed(dsv4_cache_redis *r, const char *name, const dsv4_cache_id *ids, int n,
                 const char *const *tail, int ntail, redisReply **replies)
{
    int           w = 2 + ntail;              /* arguments per command */
    char         *keys = malloc((size_t) n * DSV4_REDIS_KEYLEN);
    const char  **args = malloc((size_t) n * w * sizeof(*args));
    size_t       *lens = malloc((size_t) n * w * sizeof(*lens));
    const char ***argv = malloc((size_t) n * sizeof(*argv));
    const size_t **lenv = malloc((size_t) n * sizeof(*lenv));
    int          *argc = malloc((size_t) n * sizeof(*argc));
    int           rc = -1;

    if (keys && args && lens && argv && lenv && argc) {
        for (int k = 0; k < n; k++) {
            char *key = keys + (size_t) k * DSV4_REDIS_KEYLEN;
            dsv4_cache_redis_key(r->prefix, &ids[k], key, DSV4_REDIS_KEYLEN);
            args[w * k] = name;
            lens[w * k] = strlen(name);
            args[w * k + 1] = key;
            lens[w * k + 1] = strlen(key);
            for (int t = 0; t < ntail; t++) {
                args[w * k + 2 + t] = tail[t];
                lens[w * k + 2 + t] = strlen(tail[t]);
            }
            argv[k] = &args[w * k];
            lenv[k] = &lens[w * k];
            argc[k] = w;
        }
        rc = dsv4_redis_pipeline(r, n, argc, argv, lenv, replies);
    } else {
        memset(replies, 0, (size_t) n * sizeof(*replies));
        dsv4_cache_fail(r->ctr, DSV4_CACHE_ERR_NOMEM, "cache: out of memory for redis %s",
                        name);
    }
    free(keys);
    free(args);
    free(lens);
    free(argv);
    free(lenv);
    free(argc);
    return rc;
}

int
dsv4_cache_redis_exists(dsv4_cache_redis *r, const dsv4_cache_id *ids, int n, uint8_t *present)
{
    redisReply **rep = calloc((size_t) (n > 0 ? n : 1), sizeof(*rep));
    int          rc;

    memset(present, 0, (size_t) n);
    if (rep == NULL) {
        atomic_fetch_add(&r->ctr->errors[DSV4_CACHE_ERR_NOMEM], 1);
        return -1;
    }
    rc = n > 0 ? dsv4_redis_keyed(r, "EXISTS", ids, n, NULL, 0, rep) : 0;
    for (int k = 0; k < n && rc == 0; k++) {
        if (rep[k]->type == REDIS_REPLY_INTEGER) {
            present[k] = rep[k]->integer > 0;
        } else {
            dsv4_redis_reply_error(r, rep[k], "EXISTS");
        }
    }
    for (int k = 0; k < n; k++) {
        if (rep[k] != NULL) {
            freeReplyObject(rep[k]);
        }
    }
    free(rep);
    return rc;
}

/* GET, or with a TTL GETEX ... PX, so that a value read keeps living as
 * long as it is used (the TTL then bounds idle time, as an LRU would).  A
 * server without GETEX answers "ERR unknown command": the batch is read
 * again with GET, and GET is used from then on. */
static int
dsv4_redis_get_replies(dsv4_cache_redis *r, const dsv4_cache_id *ids, int n, redisReply **rep)
{
    char        ttl[32];
    const char *tail[2] = { "PX", ttl };
    int         rc;

    if (r->ttl_s <= 0 || atomic_load(&r->no_getex)) {
        return dsv4_redis_keyed(r, "GET", ids, n, NULL, 0, rep);
    }
    snprintf(ttl, sizeof(ttl), "%lld", (long long) r->ttl_s * 1000);
    rc = dsv4_redis_keyed(r, "GETEX", ids, n, tail, 2, rep);
    if (rc == 0 && rep[0]->type == REDIS_REPLY_ERROR && rep[0]->str != NULL
        && strncmp(rep[0]->str, "ERR unknown command", 19) == 0)
    {
        atomic_store(&r->no_getex, 1);
        for (int k = 0; k < n; k++) {
            freeReplyObject(rep[k]);
            rep[k] = NULL;
        }
        rc = dsv4_redis_keyed(r, "GET", ids, n, NULL, 0, rep);
    }
    return rc;
}

int
dsv4_cache_redis_get(dsv4_cache_redis *r, const dsv4_cache_id *ids, int n,
                     dsv4_cache_blob **out)
{
    redisReply **rep = calloc((size_t) (n > 0 ? n : 1), sizeof(*rep));
    int          rc;

    memset(out, 0, (size_t) n * sizeof(*out));
    if (rep == NULL) {
        atomic_fetch_add(&r->ctr->errors[DSV4_CACHE_ERR_NOMEM], 1);
        return -1;
    }
    rc = n > 0 ? dsv4_redis_get_replies(r, ids, n, rep) : 0;
    for (int k = 0; k < n && rc == 0; k++) {
        if (rep[k]->type == REDIS_REPLY_NIL) {
            continue;
        }
        if (rep[k]->type != REDIS_REPLY_STRING) {
            dsv4_redis_reply_error(r, rep[k], "GET");
            continue;
        }
        if ((size_t) rep[k]->len > r->max_value) {
            dsv4_cache_fail(r->ctr, DSV4_CACHE_ERR_TOO_BIG, "cache: redis value of %zu bytes"
                            " over the limit %zu", (size_t) rep[k]->len, r->max_value);
            continue;
        }
        out[k] = dsv4_cache_blob_new((size_t) rep[k]->len);
        if (out[k] == NULL) {
            atomic_fetch_add(&r->ctr->errors[DSV4_CACHE_ERR_NOMEM], 1);
            continue;
        }
        memcpy(out[k]->data, rep[k]->str, (size_t) rep[k]->len);
        atomic_fetch_add(&r->ctr->read_bytes[DSV4_CACHE_TIER_REDIS], (uint64_t) rep[k]->len);
    }
    for (int k = 0; k < n; k++) {
        if (rep[k] != NULL) {
            freeReplyObject(rep[k]);
        }
    }
    free(rep);
    return rc;
}

int
dsv4_cache_redis_set(dsv4_cache_redis *r, const dsv4_cache_id *id, const dsv4_cache_blob *b)
{
    char         key[DSV4_REDIS_KEYLEN], ttl[32];
    const char  *args[5] = { "SET", key, (const char *) b->data, "PX", ttl };
    size_t       lens[5];
    const char **argv = args;
    const size_t *lenv = lens;
    int          argc = r->ttl_s > 0 ? 5 : 3, rc;
    redisReply  *rep;

    if (b->len > r->max_value) {
        dsv4_cache_fail(r->ctr, DSV4_CACHE_ERR_TOO_BIG, "cache: value of %zu bytes over the"
                        " redis limit %zu: not stored", b->len, r->max_value);
        return -1;
    }
    dsv4_cache_redis_key(r->prefix, id, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%lld", (long long) r->ttl_s * 1000);
    lens[0] = 3;
    lens[1] = strlen(key);
    lens[2] = b->len;
    lens[3] = 2;
    lens[4] = strlen(ttl);
    if (dsv4_redis_pipeline(r, 1, &argc, &argv, &lenv, &rep) != 0) {
        return -1;
    }
    rc = rep->type == REDIS_REPLY_STATUS ? 0 : -1;
    if (rc != 0) {
        dsv4_redis_reply_error(r, rep, "SET");
    } else {
        atomic_fetch_add(&r->ctr->written_bytes[DSV4_CACHE_TIER_REDIS], b->len);
        atomic_fetch_add(&r->ctr->written_values[DSV4_CACHE_TIER_REDIS], 1);
    }
    freeReplyObject(rep);
    return rc;
}

int
dsv4_cache_redis_del(dsv4_cache_redis *r, const dsv4_cache_id *id)
{
    redisReply *rep;
    int         rc = dsv4_redis_keyed(r, "DEL", id, 1, NULL, 0, &rep);

    if (rc == 0) {
        freeReplyObject(rep);
    }
    return rc;
}
