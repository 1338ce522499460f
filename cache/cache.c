/*
 * The cache proper (see cache.h): lookup across tiers and restore into a
 * sequence, capture of new state, and the write-back thread.
 *
 * Restore walks the request's chain keys: which blocks' history ("h") and
 * which checkpoints ("t") exist, looking in memory, then on disk, then in
 * Redis with one pipelined EXISTS for everything not found locally.  The
 * usable prefix ends at the last checkpoint inside the leading run of
 * history blocks.  It then fetches and unpacks history blocks in order
 * (Redis ones in pipelined batches) straight into the sequence, and the
 * checkpoint's tail last.  A value that is missing, corrupt or foreign moves
 * the target back to an earlier checkpoint; with none left the sequence is
 * reset and the request recomputes everything.  History unpacked beyond the
 * final position is never read (entry counts come from the position).
 *
 * Capture copies the history computed since the previous capture and the
 * tail into one job; the writer thread packs, encodes and stores it.  The
 * queue is bounded in bytes: a full queue drops the job (counted).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

const uint64_t dsv4_cache_latency_le_us[DSV4_CACHE_NLAT] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, UINT64_MAX
};

/* Redis values fetched per round trip while restoring. */
#define DSV4_CACHE_GET_BATCH 8

typedef struct dsv4_cache_job dsv4_cache_job;

struct dsv4_cache_job {
    dsv4_cache_job  *next;
    size_t           bytes;      /* charged to the queue */
    /* a ready value to store (promotion): blob != NULL */
    dsv4_cache_id    id;
    dsv4_cache_blob *blob;
    int              tiers;      /* DSV4_CACHE_WRITE_* for the blob */
    /* a state snapshot: blocks [b0, b1) of history, then the tail at b1*B */
    int              b0, b1;
    int              pos, mtp_pos;
    uint8_t        (*keys)[32];  /* [b1 - b0] chain keys of the blocks */
    dsv4_ss_section *secs;       /* [nsecs], data inside buf (stride = width) */
    int             *sec0;       /* [b1 - b0 + 2]: block k's sections are
                                    sec0[k] .. sec0[k+1]-1; the tail's the last range */
    float           *buf;        /* the copied rows */
};

struct dsv4_cache {
    const dsv4_model  *m;
    uint8_t            fp[32];
    int                B;             /* block tokens */
    int                ckpt;          /* checkpoint every ckpt blocks */
    int                write;         /* DSV4_CACHE_WRITE_* over enabled tiers */
    int                max_secs;      /* dsv4_seq_state_max_sections */
    size_t             max_value;
    dsv4_cache_ctr     ctr;
    dsv4_cache_mem    *mem;
    dsv4_cache_disk   *disk;
    dsv4_cache_redis  *redis;
    /* write-back queue (mu) */
    pthread_mutex_t    mu;
    pthread_cond_t     cv;            /* a job arrived or stop */
    pthread_cond_t     idle;          /* the queue drained */
    dsv4_cache_job    *head, *tail;
    size_t             queue_bytes, queue_cap;
    int                njobs;
    int                busy;          /* the writer is processing a job */
    int                stop;
    pthread_t          thread;
    int                started;
};

struct dsv4_cache_req {
    dsv4_cache *c;
    int         n;                    /* prompt tokens */
    int         nkeys;                /* n / B full blocks */
    uint8_t   (*keys)[32];            /* [nkeys] */
    int         restored;             /* position of the last restore */
    int         captured;             /* state written up to here */
    int         hits[DSV4_CACHE_NTIERS];
};

/* ---- blobs, counters, logging ------------------------------------------ */

dsv4_cache_blob *
dsv4_cache_blob_new(size_t len)
{
    dsv4_cache_blob *b = malloc(sizeof(*b) + (len ? len : 1));

    if (b != NULL) {
        atomic_init(&b->refs, 1);
        b->len = len;
    }
    return b;
}

void
dsv4_cache_blob_ref(dsv4_cache_blob *b)
{
    atomic_fetch_add(&b->refs, 1);
}

void
dsv4_cache_blob_unref(dsv4_cache_blob *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
        free(b);
    }
}

int64_t
dsv4_cache_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
dsv4_cache_vlog(dsv4_cache_ctr *ctr, int level, const char *fmt, va_list ap)
{
    char msg[512];

    if (ctr->log == NULL) {
        return;
    }
    vsnprintf(msg, sizeof(msg), fmt, ap);
    ctr->log(ctr->log_data, level, msg);
}

/*
 * Counts a failure of kind e and logs it, at most one line per kind per
 * DSV4_CACHE_LOG_EVERY_MS (an outage fails every lookup); the next line
 * says how many were not logged in between.  Any thread.
 */
void
dsv4_cache_fail(dsv4_cache_ctr *ctr, int e, const char *fmt, ...)
{
    int64_t  now = dsv4_cache_now_ms(), last = atomic_load(&ctr->last_log_ms[e]);
    uint64_t unlogged;
    char     msg[512], line[600];
    va_list  ap;

    atomic_fetch_add(&ctr->errors[e], 1);
    if ((last != 0 && now - last < DSV4_CACHE_LOG_EVERY_MS)
        || !atomic_compare_exchange_strong(&ctr->last_log_ms[e], &last, now ? now : 1)) {
        atomic_fetch_add(&ctr->unlogged[e], 1);
        return;
    }
    if (ctr->log == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    unlogged = atomic_exchange(&ctr->unlogged[e], 0);
    if (unlogged > 0) {
        snprintf(line, sizeof(line), "%s (%llu more like this in the last %lld s not logged)",
                 msg, (unsigned long long) unlogged, (long long) (now - last + 500) / 1000);
    }
    ctr->log(ctr->log_data, DSV4_CACHE_LOG_WARN, unlogged > 0 ? line : msg);
}

void
dsv4_cache_info(dsv4_cache_ctr *ctr, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    dsv4_cache_vlog(ctr, DSV4_CACHE_LOG_INFO, fmt, ap);
    va_end(ap);
}

const char *
dsv4_cache_tier_name(int tier)
{
    static const char *names[DSV4_CACHE_NTIERS] = { "memory", "disk", "redis" };

    return tier >= 0 && tier < DSV4_CACHE_NTIERS ? names[tier] : "?";
}

const char *
dsv4_cache_error_name(int err)
{
    static const char *names[DSV4_CACHE_NERRORS] = {
        "connect", "timeout", "io", "oom", "reply", "skipped", "corrupt", "foreign", "too_big",
        "disk", "dropped", "nomem"
    };

    return err >= 0 && err < DSV4_CACHE_NERRORS ? names[err] : "?";
}

/* ---- writing ----------------------------------------------------------- */

static void
dsv4_job_free(dsv4_cache_job *j)
{
    if (j == NULL) {
        return;
    }
    dsv4_cache_blob_unref(j->blob);
    free(j->keys);
    free(j->secs);
    free(j->sec0);
    free(j->buf);
    free(j);
}

/* Stores one encoded value in the tiers of mask. */
static void
dsv4_cache_store(dsv4_cache *c, const dsv4_cache_id *id, dsv4_cache_blob *b, int mask)
{
    if ((mask & DSV4_CACHE_WRITE_MEM) && c->mem != NULL) {
        if (dsv4_cache_mem_put(c->mem, id, b) == 0) {
            atomic_fetch_add(&c->ctr.written_bytes[DSV4_CACHE_TIER_MEM], b->len);
            atomic_fetch_add(&c->ctr.written_values[DSV4_CACHE_TIER_MEM], 1);
        }
    }
    if ((mask & DSV4_CACHE_WRITE_DISK) && c->disk != NULL) {
        if (b->len > c->max_value) {
            atomic_fetch_add(&c->ctr.errors[DSV4_CACHE_ERR_TOO_BIG], 1);
        } else if (dsv4_cache_disk_put(c->disk, id, b) == 0) {
            atomic_fetch_add(&c->ctr.written_bytes[DSV4_CACHE_TIER_DISK], b->len);
            atomic_fetch_add(&c->ctr.written_values[DSV4_CACHE_TIER_DISK], 1);
        }
    }
    if ((mask & DSV4_CACHE_WRITE_REDIS) && c->redis != NULL) {
        dsv4_cache_redis_set(c->redis, id, b);      /* counts its own bytes and errors */
    }
}

/* Packs sections sec[n] into a value of the given identity and stores it. */
static void
dsv4_cache_write_value(dsv4_cache *c, const dsv4_cache_id *id, int block, int pos, int mtp_pos,
                       const dsv4_ss_section *sec, int n)
{
    size_t           bound = dsv4_cache_pack_bound(sec, n);
    uint8_t         *payload = malloc(bound ? bound : 1);
    dsv4_cache_value v;
    dsv4_cache_blob *b;

    if (payload == NULL) {
        dsv4_cache_fail(&c->ctr, DSV4_CACHE_ERR_NOMEM, "cache: out of memory packing a value");
        return;
    }
    memset(&v, 0, sizeof(v));
    v.kind = id->kind;
    memcpy(v.fp, c->fp, 32);
    memcpy(v.key, id->key, 32);
    v.block = (uint32_t) block;
    v.block_tokens = (uint32_t) c->B;
    v.pos = (uint32_t) pos;
    v.mtp_pos = (uint32_t) mtp_pos;
    v.payload = payload;
    v.payload_len = dsv4_cache_pack(sec, n, payload);
    b = dsv4_cache_value_encode(&v);
    free(payload);
    if (b == NULL) {
        dsv4_cache_fail(&c->ctr, DSV4_CACHE_ERR_NOMEM, "cache: out of memory encoding a value");
        return;
    }
    dsv4_cache_store(c, id, b, c->write);
    dsv4_cache_blob_unref(b);
}

static void
dsv4_cache_run_job(dsv4_cache *c, dsv4_cache_job *j)
{
    if (j->blob != NULL) {
        dsv4_cache_store(c, &j->id, j->blob, j->tiers);
        return;
    }
    int nb = j->b1 - j->b0;
    for (int k = 0; k <= nb; k++) {
        dsv4_cache_id id;
        int           block = k < nb ? j->b0 + k : j->b1 - 1;

        memcpy(id.key, j->keys[k < nb ? k : nb - 1], 32);
        id.kind = k < nb ? DSV4_CACHE_HIST : DSV4_CACHE_TAIL;
        dsv4_cache_write_value(c, &id, block, k < nb ? (block + 1) * c->B : j->pos,
                               k < nb ? 0 : j->mtp_pos, j->secs + j->sec0[k],
                               j->sec0[k + 1] - j->sec0[k]);
    }
}

static void *
dsv4_cache_writer(void *arg)
{
    dsv4_cache *c = arg;

    if (c->disk != NULL) {
        dsv4_cache_disk_maintain(c->disk, 1);
    }
    pthread_mutex_lock(&c->mu);
    for ( ;; ) {
        while (!c->stop && c->head == NULL) {
            pthread_cond_wait(&c->cv, &c->mu);
        }
        if (c->stop) {
            break;
        }
        dsv4_cache_job *j = c->head;
        c->head = j->next;
        if (c->head == NULL) {
            c->tail = NULL;
        }
        c->busy = 1;
        pthread_mutex_unlock(&c->mu);

        dsv4_cache_run_job(c, j);
        if (c->disk != NULL) {
            dsv4_cache_disk_maintain(c->disk, 0);
        }

        pthread_mutex_lock(&c->mu);
        c->busy = 0;
        c->njobs--;
        c->queue_bytes -= j->bytes;
        dsv4_job_free(j);
        if (c->head == NULL) {
            pthread_cond_broadcast(&c->idle);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Queues j (ownership passes) or drops it when the queue is full. */
static int
dsv4_cache_enqueue(dsv4_cache *c, dsv4_cache_job *j)
{
    pthread_mutex_lock(&c->mu);
    if (c->stop || c->queue_bytes + j->bytes > c->queue_cap) {
        pthread_mutex_unlock(&c->mu);
        dsv4_cache_fail(&c->ctr, DSV4_CACHE_ERR_DROPPED, "cache: write-back queue full"
                        " (%zu bytes): snapshot dropped", c->queue_cap);
        dsv4_job_free(j);
        return -1;
    }
    j->next = NULL;
    if (c->tail) {
        c->tail->next = j;
    } else {
        c->head = j;
    }
    c->tail = j;
    c->njobs++;
    c->queue_bytes += j->bytes;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Queues a copy of a value read from a slower tier for the tiers of mask. */
static void
dsv4_cache_promote(dsv4_cache *c, const dsv4_cache_id *id, dsv4_cache_blob *b, int mask)
{
    dsv4_cache_job *j;

    if ((mask & DSV4_CACHE_WRITE_MEM) && c->mem != NULL) {      /* cheap: at once */
        dsv4_cache_store(c, id, b, DSV4_CACHE_WRITE_MEM);
    }
    mask &= ~DSV4_CACHE_WRITE_MEM;
    if (mask == 0 || (j = calloc(1, sizeof(*j))) == NULL) {
        return;
    }
    j->id = *id;
    j->blob = b;
    dsv4_cache_blob_ref(b);
    j->tiers = mask;
    j->bytes = b->len;
    dsv4_cache_enqueue(c, j);
}

/* ---- lifecycle --------------------------------------------------------- */

int
dsv4_cache_new(dsv4_cache **out, const dsv4_model *m, const dsv4_cache_conf *conf, char *err,
               size_t errlen)
{
    dsv4_cache *c;
    int         align = dsv4_seq_state_align(m);
    sigset_t    all, old;

    *out = NULL;
    if (align <= 0) {
        snprintf(err, errlen, "cache: the model's MTP block is compressed; its state layout"
                 " is not supported");
        return -1;
    }
    if (conf->block_tokens < 0 || (conf->block_tokens > 0 && conf->block_tokens % align != 0)
        || conf->checkpoint_blocks < 0) {
        snprintf(err, errlen, "cache: block size %d must be a positive multiple of %d (4 and"
                 " every compress ratio)", conf->block_tokens, align);
        return -1;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "cache: out of memory");
        return -1;
    }
    c->m = m;
    c->B = conf->block_tokens > 0 ? conf->block_tokens : (128 + align - 1) / align * align;
    c->ckpt = conf->checkpoint_blocks > 0 ? conf->checkpoint_blocks : 16;
    c->max_secs = dsv4_seq_state_max_sections(m);
    c->max_value = conf->redis_max_value > 0 ? conf->redis_max_value : (size_t) 32 << 20;
    c->queue_cap = conf->queue_bytes > 0 ? conf->queue_bytes : (size_t) 256 << 20;
    c->ctr.log = conf->log;
    c->ctr.log_data = conf->log_data;
    dsv4_cache_model_fingerprint(m, conf->model_id, conf->chat_version, c->fp);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_cond_init(&c->idle, NULL);

    if (conf->mem_bytes > 0 && (c->mem = dsv4_cache_mem_new(conf->mem_bytes)) == NULL) {
        snprintf(err, errlen, "cache: out of memory");
        goto fail;
    }
    if (conf->disk_dir != NULL && conf->disk_dir[0] != '\0') {
        c->disk = dsv4_cache_disk_new(conf->disk_dir,
                                      conf->disk_bytes > 0 ? conf->disk_bytes : (size_t) 1 << 30,
                                      c->max_value, &c->ctr, err, errlen);
        if (c->disk == NULL) {
            goto fail;
        }
    }
    if ((conf->redis_host != NULL && conf->redis_host[0] != '\0')
        || (conf->redis_unix != NULL && conf->redis_unix[0] != '\0')) {
        if ((c->redis = dsv4_cache_redis_new(conf, &c->ctr)) == NULL) {
            snprintf(err, errlen, "cache: out of memory");
            goto fail;
        }
    }
    c->write = conf->write & ((c->mem ? DSV4_CACHE_WRITE_MEM : 0)
                              | (c->disk ? DSV4_CACHE_WRITE_DISK : 0)
                              | (c->redis ? DSV4_CACHE_WRITE_REDIS : 0));
    /* the writer takes no signals: they belong to the host's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&c->thread, NULL, dsv4_cache_writer, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cache: cannot start the writer thread: %s", strerror(rc));
        goto fail;
    }
    c->started = 1;
    *out = c;
    return 0;
fail:
    dsv4_cache_free(c);
    return -1;
}

void
dsv4_cache_free(dsv4_cache *c)
{
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->started) {
        pthread_join(c->thread, NULL);
    }
    while (c->head != NULL) {
        dsv4_cache_job *j = c->head;
        c->head = j->next;
        dsv4_job_free(j);
    }
    dsv4_cache_mem_free(c->mem);
    dsv4_cache_disk_free(c->disk);
    dsv4_cache_redis_free(c->redis);
    pthread_cond_destroy(&c->idle);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int
dsv4_cache_flush(dsv4_cache *c, int timeout_ms)
{
    struct timespec dl;
    int             rc = 0;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long) (timeout_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->mu);
    while ((c->head != NULL || c->busy) && rc == 0) {
        if (pthread_cond_timedwait(&c->idle, &c->mu, &dl) == ETIMEDOUT) {
            rc = c->head != NULL || c->busy ? -1 : 0;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int
dsv4_cache_block_tokens(const dsv4_cache *c)
{
    return c->B;
}

const uint8_t *
dsv4_cache_fingerprint(const dsv4_cache *c)
{
    return c->fp;
}

void
dsv4_cache_get_stats(dsv4_cache *c, dsv4_cache_stats *st)
{
    const dsv4_cache_ctr *t = &c->ctr;

    memset(st, 0, sizeof(*st));
    st->lookups = atomic_load(&t->lookups);
    st->lookup_hits = atomic_load(&t->lookup_hits);
    st->lookup_tokens = atomic_load(&t->lookup_tokens);
    st->captures = atomic_load(&t->captures);
    for (int k = 0; k < DSV4_CACHE_NTIERS; k++) {
        st->hit_tokens[k] = atomic_load(&t->hit_tokens[k]);
        st->read_bytes[k] = atomic_load(&t->read_bytes[k]);
        st->written_bytes[k] = atomic_load(&t->written_bytes[k]);
        st->written_values[k] = atomic_load(&t->written_values[k]);
    }
    for (int k = 0; k < DSV4_CACHE_NERRORS; k++) {
        st->errors[k] = atomic_load(&t->errors[k]);
    }
    st->redis_calls = atomic_load(&t->redis_calls);
    st->redis_usec_sum = atomic_load(&t->redis_usec_sum);
    st->redis_usec_max = atomic_load(&t->redis_usec_max);
    for (int k = 0; k < DSV4_CACHE_NLAT; k++) {
        st->redis_latency[k] = atomic_load(&t->redis_latency[k]);
    }
    if (c->mem != NULL) {
        dsv4_cache_mem_usage(c->mem, &st->mem_bytes, &st->mem_values);
    }
    if (c->disk != NULL) {
        st->disk_bytes = dsv4_cache_disk_usage(c->disk);
    }
    pthread_mutex_lock(&c->mu);
    st->queue_bytes = c->queue_bytes;
    st->queue_jobs = (uint64_t) c->njobs;
    pthread_mutex_unlock(&c->mu);
    st->redis_up = c->redis != NULL && dsv4_cache_redis_up(c->redis);
}

/* ---- requests ---------------------------------------------------------- */

dsv4_cache_req *
dsv4_cache_req_new(dsv4_cache *c, const int32_t *tokens, int n, const void *salt,
                   size_t salt_len)
{
    dsv4_cache_req *q = calloc(1, sizeof(*q));

    if (q == NULL || n < 0) {
        free(q);
        atomic_fetch_add(&c->ctr.errors[DSV4_CACHE_ERR_NOMEM], 1);
        return NULL;
    }
    q->c = c;
    q->n = n;
    q->nkeys = n / c->B;
    q->keys = malloc((size_t) (q->nkeys > 0 ? q->nkeys : 1) * 32);
    if (q->keys == NULL) {
        free(q);
        atomic_fetch_add(&c->ctr.errors[DSV4_CACHE_ERR_NOMEM], 1);
        return NULL;
    }
    dsv4_cache_chain(c->fp, salt, salt_len, c->B, tokens, q->nkeys, q->keys);
    return q;
}

void
dsv4_cache_req_free(dsv4_cache_req *q)
{
    if (q != NULL) {
        free(q->keys);
        free(q);
    }
}

void
dsv4_cache_req_hits(const dsv4_cache_req *q, int *tokens_per_tier)
{
    memcpy(tokens_per_tier, q->hits, sizeof(q->hits));
}

/* Where a value is: 0 nowhere, else tier + 1. */
static int
dsv4_cache_where_local(dsv4_cache *c, const dsv4_cache_id *id)
{
    if (c->mem != NULL && dsv4_cache_mem_has(c->mem, id)) {
        return DSV4_CACHE_TIER_MEM + 1;
    }
    if (c->disk != NULL && dsv4_cache_disk_has(c->disk, id)) {
        return DSV4_CACHE_TIER_DISK + 1;
    }
    return 0;
}

/* Drops a bad value from the tier it came from. */
static void
dsv4_cache_forget(dsv4_cache *c, const dsv4_cache_id *id, int tier)
{
    if (tier == DSV4_CACHE_TIER_MEM && c->mem != NULL) {
        dsv4_cache_mem_del(c->mem, id);
    } else if (tier == DSV4_CACHE_TIER_DISK && c->disk != NULL) {
        dsv4_cache_disk_del(c->disk, id);
    } else if (tier == DSV4_CACHE_TIER_REDIS && c->redis != NULL) {
        dsv4_cache_redis_del(c->redis, id);
    }
}

/* Restore state: the availability map and a batch of prefetched values. */
typedef struct {
    dsv4_cache_req  *q;
    dsv4_seq        *s;
    int              N;          /* usable blocks */
    uint8_t         *hw, *tw;    /* [N] where h(j) / t(j) is (0 = nowhere, tier + 1) */
    uint8_t         *src;        /* [N] tier the imported h(j) came from */
    dsv4_ss_section *secs;       /* [max_secs] */
    dsv4_cache_blob *batch[DSV4_CACHE_GET_BATCH]; /* Redis values of blocks batch0.. */
    int              batch0, nbatch;
} dsv4_restore;

/* The value of id (block j) from tier where-1, or NULL.  For Redis history
 * blocks a batch of following Redis blocks is fetched in the same trip. */
static dsv4_cache_blob *
dsv4_restore_fetch(dsv4_restore *r, const dsv4_cache_id *id, int j, int where, int last)
{
    dsv4_cache *c = r->q->c;

    if (where == DSV4_CACHE_TIER_MEM + 1) {
        dsv4_cache_blob *b = dsv4_cache_mem_get(c->mem, id);
        if (b != NULL) {
            atomic_fetch_add(&c->ctr.read_bytes[DSV4_CACHE_TIER_MEM], b->len);
        }
        return b;
    }
    if (where == DSV4_CACHE_TIER_DISK + 1) {
        dsv4_cache_blob *b = dsv4_cache_disk_get(c->disk, id);
        if (b != NULL) {
            atomic_fetch_add(&c->ctr.read_bytes[DSV4_CACHE_TIER_DISK], b->len);
        }
        return b;
    }
    if (where != DSV4_CACHE_TIER_REDIS + 1) {
        return NULL;
    }
    if (id->kind == DSV4_CACHE_HIST && j >= r->batch0 && j < r->batch0 + r->nbatch) {
        dsv4_cache_blob *b = r->batch[j - r->batch0];
        r->batch[j - r->batch0] = NULL;
        return b;
    }
    dsv4_cache_id ids[DSV4_CACHE_GET_BATCH];
    int           n = 0;

    for (int k = 0; k < r->nbatch; k++) {
        dsv4_cache_blob_unref(r->batch[k]);
        r->batch[k] = NULL;
    }
    r->nbatch = 0;
    if (id->kind == DSV4_CACHE_TAIL) {
        dsv4_cache_blob *b = NULL;
        dsv4_cache_redis_get(c->redis, id, 1, &b);
        return b;
    }
    /* this block and the next Redis-held ones up to the target */
    for (int k = j; k <= last && n < DSV4_CACHE_GET_BATCH && r->hw[k] == where; k++) {
        memcpy(ids[n].key, r->q->keys[k], 32);
        ids[n++].kind = DSV4_CACHE_HIST;
    }
    r->batch0 = j;
    r->nbatch = n;
    dsv4_cache_redis_get(c->redis, ids, n, r->batch);
    dsv4_cache_blob *b = r->batch[0];
    r->batch[0] = NULL;
    return b;
}

/* Decodes and unpacks value b of id (block j) into the sequence.  Returns 0
 * or an error code (counted by the caller). */
static int
dsv4_restore_apply(dsv4_restore *r, const dsv4_cache_id *id, int j, const dsv4_cache_blob *b,
                   int *mtp_pos)
{
    dsv4_cache      *c = r->q->c;
    dsv4_cache_value v;
    int              e, ns, B = c->B;

    e = dsv4_cache_value_decode(b->data, b->len, c->fp, id, (uint32_t) j, (uint32_t) B, &v);
    if (e != 0) {
        return e;
    }
    if (id->kind == DSV4_CACHE_HIST) {
        ns = dsv4_seq_history_sections(r->s, j * B, (j + 1) * B, r->secs, c->max_secs, NULL, 0);
    } else {
        ns = dsv4_seq_tail_sections(r->s, (int) v.pos, (int) v.mtp_pos, r->secs, c->max_secs,
                                    NULL, 0);
        *mtp_pos = (int) v.mtp_pos;
    }
    if (ns < 0 || dsv4_cache_unpack(r->secs, ns, v.payload, v.payload_len) != 0) {
        return DSV4_CACHE_ERR_CORRUPT;
    }
    return 0;
}

/* Fetches, checks and applies one value; on failure counts it, drops a bad
 * value from its tier and returns -1. */
static int
dsv4_restore_one(dsv4_restore *r, int kind, int j, int last, int *mtp_pos)
{
    dsv4_cache   *c = r->q->c;
    dsv4_cache_id id;
    int           where = kind == DSV4_CACHE_HIST ? r->hw[j] : r->tw[j], e;

    memcpy(id.key, r->q->keys[j], 32);
    id.kind = kind;
    dsv4_cache_blob *b = dsv4_restore_fetch(r, &id, j, where, last);
    if (b == NULL) {
        return -1;          /* gone since the probe, or the tier failed (counted there) */
    }
    e = dsv4_restore_apply(r, &id, j, b, mtp_pos);
    if (e != 0) {
        char hex[17];
        dsv4_cache_hex(id.key, 8, hex);
        dsv4_cache_fail(&c->ctr, e, "cache: %s value %c:%s... of block %d is %s; dropped,"
                        " recomputing", dsv4_cache_tier_name(where - 1), kind, hex, j,
                        e == DSV4_CACHE_ERR_FOREIGN ? "foreign" : "corrupt");
        dsv4_cache_forget(c, &id, where - 1);
        dsv4_cache_blob_unref(b);
        return -1;
    }
    if (kind == DSV4_CACHE_HIST) {
        r->src[j] = (uint8_t) (where - 1);
    }
    if (where - 1 > DSV4_CACHE_TIER_MEM) {        /* copy to the faster tiers */
        int mask = DSV4_CACHE_WRITE_MEM | (where - 1 == DSV4_CACHE_TIER_REDIS
                                           ? DSV4_CACHE_WRITE_DISK : 0);
        dsv4_cache_promote(c, &id, (dsv4_cache_blob *) b, mask & c->write);
    }
    dsv4_cache_blob_unref(b);
    return 0;
}

/* The largest checkpoint j < limit whose tail exists, or -1. */
static int
dsv4_restore_target(const dsv4_restore *r, int limit)
{
    for (int j = limit - 1; j >= 0; j--) {
        if (r->tw[j]) {
            return j;
        }
    }
    return -1;
}

int
dsv4_cache_restore(dsv4_cache_req *q, dsv4_seq *s)
{
    dsv4_cache   *c = q->c;
    dsv4_restore  r;
    int           N = q->n > 0 ? (q->n - 1) / c->B : 0, run, target, P = 0, mtp_pos = 0;
    int           room = dsv4_seq_capacity(s) / c->B;
    int           imported = 0;

    memset(q->hits, 0, sizeof(q->hits));
    q->restored = q->captured = 0;
    atomic_fetch_add(&c->ctr.lookups, 1);
    atomic_fetch_add(&c->ctr.lookup_tokens, (uint64_t) q->n);
    dsv4_seq_restore_begin(s);
    N = N < room ? N : room;        /* a short sequence takes a shorter prefix */
    if (N <= 0 || dsv4_seq_model(s) != c->m || (!c->mem && !c->disk && !c->redis)) {
        return 0;
    }
    memset(&r, 0, sizeof(r));
    r.q = q;
    r.s = s;
    r.N = N;
    r.hw = calloc((size_t) N * 3, 1);
    r.secs = calloc((size_t) c->max_secs, sizeof(*r.secs));
    if (r.hw == NULL || r.secs == NULL) {
        atomic_fetch_add(&c->ctr.errors[DSV4_CACHE_ERR_NOMEM], 1);
        goto done;
    }
    r.tw = r.hw + N;
    r.src = r.tw + N;

    /* where is everything: local tiers, then one Redis round trip for the rest */
    for (int j = 0; j < N; j++) {
        dsv4_cache_id id;
        memcpy(id.key, q->keys[j], 32);
        id.kind = DSV4_CACHE_HIST;
        r.hw[j] = (uint8_t) dsv4_cache_where_local(c, &id);
        id.kind = DSV4_CACHE_TAIL;
        r.tw[j] = (uint8_t) dsv4_cache_where_local(c, &id);
    }
    if (c->redis != NULL) {
        dsv4_cache_id *ids = malloc((size_t) N * 2 * sizeof(*ids));
        int           *which = malloc((size_t) N * 2 * sizeof(*which));
        uint8_t       *present = malloc((size_t) N * 2);
        int            n = 0;

        if (ids && which && present) {
            for (int j = 0; j < N; j++) {
                for (int t = 0; t < 2; t++) {
                    if ((t ? r.tw[j] : r.hw[j]) == 0) {
                        memcpy(ids[n].key, q->keys[j], 32);
                        ids[n].kind = t ? DSV4_CACHE_TAIL : DSV4_CACHE_HIST;
                        which[n++] = t ? N + j : j;
                    }
                }
            }
            if (n > 0 && dsv4_cache_redis_exists(c->redis, ids, n, present) == 0) {
                for (int k = 0; k < n; k++) {
                    if (present[k]) {
                        r.hw[which[k]] = DSV4_CACHE_TIER_REDIS + 1;   /* hw and tw are one array */
                    }
                }
            }
        } else {
            atomic_fetch_add(&c->ctr.errors[DSV4_CACHE_ERR_NOMEM], 1);
        }
        free(ids);
        free(which);
        free(present);
    }
    for (run = 0; run < N && r.hw[run]; run++) {
    }
    target = dsv4_restore_target(&r, run);

    /* history h(0..target), then the tail t(target); a failure moves the
     * target back */
    while (target >= 0) {
        while (imported <= target) {
            if (dsv4_restore_one(&r, DSV4_CACHE_HIST, imported, target, &mtp_pos) != 0) {
                target = dsv4_restore_target(&r, imported);
                break;
            }
            imported++;
        }
        if (target < 0) {
            break;
        }
        if (imported > target) {
            if (dsv4_restore_one(&r, DSV4_CACHE_TAIL, target, target, &mtp_pos) == 0) {
                P = (target + 1) * c->B;
                break;
            }
            r.tw[target] = 0;
            target = dsv4_restore_target(&r, target);
        }
    }
    if (P > 0 && dsv4_seq_restore_end(s, P, mtp_pos, NULL, 0) != 0) {
        P = 0;
    }
done:
    for (int k = 0; k < r.nbatch; k++) {
        dsv4_cache_blob_unref(r.batch[k]);
    }
    if (P == 0) {
        dsv4_seq_restore_begin(s);
    } else {
        atomic_fetch_add(&c->ctr.lookup_hits, 1);
        for (int j = 0; j < P / c->B; j++) {
            q->hits[r.src[j]] += c->B;
        }
        for (int k = 0; k < DSV4_CACHE_NTIERS; k++) {
            atomic_fetch_add(&c->ctr.hit_tokens[k], (uint64_t) q->hits[k]);
        }
    }
    free(r.hw);
    free(r.secs);
    q->restored = q->captured = P;
    return P;
}

/* ---- capture ----------------------------------------------------------- */

int
dsv4_cache_next_capture(const dsv4_cache_req *q, int pos)
{
    const dsv4_cache *c = q->c;
    int               last = q->nkeys * c->B, step = c->ckpt * c->B, next;

    if (c->write == 0 || last <= pos || last <= q->captured) {
        return 0;
    }
    next = (pos / step + 1) * step;
    return next < last ? next : last;
}

int
dsv4_cache_capture(dsv4_cache_req *q, const dsv4_seq *s)
{
    dsv4_cache     *c = q->c;
    int             pos = dsv4_seq_pos(s), B = c->B, b0 = q->captured / B, b1 = pos / B;
    int             nb = b1 - b0, ns = 0, cap, mtp_pos = dsv4_seq_mtp_pos(s);
    size_t          floats = 0;
    dsv4_cache_job *j;

    if (c->write == 0 || pos % B != 0 || nb <= 0 || b1 > q->nkeys || dsv4_seq_model(s) != c->m
        || mtp_pos > pos) {
        return -1;
    }
    j = calloc(1, sizeof(*j));
    cap = (nb + 1) * c->max_secs;
    if (j == NULL || (j->keys = malloc((size_t) nb * 32)) == NULL
        || (j->secs = calloc((size_t) cap, sizeof(*j->secs))) == NULL
        || (j->sec0 = calloc((size_t) nb + 2, sizeof(*j->sec0))) == NULL) {
        goto nomem;
    }
    j->b0 = b0;
    j->b1 = b1;
    j->pos = pos;
    j->mtp_pos = mtp_pos;
    memcpy(j->keys, q->keys + b0, (size_t) nb * 32);
    /* the sections (pointing into s for now): blocks, then the tail */
    for (int k = 0; k <= nb; k++) {
        int n = k < nb ? dsv4_seq_history_sections(s, (b0 + k) * B, (b0 + k + 1) * B,
                                                   j->secs + ns, cap - ns, NULL, 0)
                       : dsv4_seq_tail_sections(s, pos, mtp_pos, j->secs + ns, cap - ns,
                                                NULL, 0);
        if (n < 0) {
            dsv4_job_free(j);
            return -1;
        }
        j->sec0[k] = ns;
        ns += n;
    }
    j->sec0[nb + 1] = ns;
    for (int k = 0; k < ns; k++) {
        floats += (size_t) j->secs[k].rows * j->secs[k].width;
    }
    j->bytes = floats * sizeof(float);
    /* the snapshot: copy each section's rows, then point it at the copy */
    if (j->bytes > c->queue_cap) {
        dsv4_job_free(j);
        dsv4_cache_fail(&c->ctr, DSV4_CACHE_ERR_DROPPED, "cache: a snapshot of %zu bytes"
                        " exceeds the write-back queue", floats * sizeof(float));
        return -1;
    }
    if ((j->buf = malloc(floats ? j->bytes : sizeof(float))) == NULL) {
        goto nomem;
    }
    float *p = j->buf;
    for (int k = 0; k < ns; k++) {
        dsv4_ss_section *sec = &j->secs[k];
        for (int row = 0; row < sec->rows; row++) {
            memcpy(p + (size_t) row * sec->width, sec->data + (size_t) row * sec->stride,
                   (size_t) sec->width * sizeof(float));
        }
        sec->data = p;
        sec->stride = sec->width;
        p += (size_t) sec->rows * sec->width;
    }
    q->captured = pos;
    atomic_fetch_add(&c->ctr.captures, 1);
    return dsv4_cache_enqueue(c, j);
nomem:
    dsv4_job_free(j);
    dsv4_cache_fail(&c->ctr, DSV4_CACHE_ERR_NOMEM, "cache: out of memory for a snapshot");
    return -1;
}
