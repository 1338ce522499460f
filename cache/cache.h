/*
 * dsv4 prefix/KV cache (DESIGN.md §7, V4-MODEL.md §5.3): no nginx here.
 *
 * Keys.  A prompt is cut into blocks of B tokens (B a multiple of 4 and of
 * every compress ratio, so a block's compressed entries are whole).  Block i
 * has the chain key
 *
 *     K(-1) = SHA-256("dsv4-kv-root" | fingerprint | salt)
 *     K(i)  = SHA-256("dsv4-kv-block" | K(i-1) | B | tokens[iB .. iB+B))
 *
 * where the fingerprint hashes the model (config, tensor inventory with
 * sampled bytes, quantisation), the KV layout version, the chat-encoding
 * version and an optional operator model id; the salt is an optional
 * per-tenant secret.  Every worker on every server derives the same keys.
 *
 * Values.  Under each K(i): "h" = the compressed history block i adds (CSA/HCA
 * entries, indexer keys, per layer) and, at checkpoints, "t" = the tail state
 * at position (i+1)B (window rings, the overlapping compressors' previous
 * block, the MTP window).  Resuming needs h(0..i) and t(i).  Values are
 * msgpack with a header (format version, fingerprint, chain key, block
 * index, block size, payload checksum); KV rows are packed losslessly (FP8
 * e4m3 codes + power-of-two scales, FP4 e2m1 indexer keys, raw RoPE dims).
 *
 * Tiers.  Memory (LRU, byte-bounded, shared by every engine thread), a disk
 * directory (bounded, atomic renames, survives restarts, shareable by the
 * workers of one host) and Redis (hiredis, synchronous calls on the caller's
 * thread with timeouts; TTL; size limit).  A lookup takes the longest prefix
 * available across tiers.  Writes go through a bounded queue to a
 * background thread: capture copies the state, nothing else waits.
 *
 * Failures.  Any tier failing, timing out, full, or returning garbage or
 * foreign data makes that value a miss: the caller recomputes.  Errors are
 * counted (dsv4_cache_stats) and logged at most once per second per kind.
 * Nothing here aborts; every function is safe to call from several threads.
 *
 * Use (one request):
 *
 *     q = dsv4_cache_req_new(cache, prompt, n, salt, salt_len);
 *     P = dsv4_cache_restore(q, seq);          // seq now at position P
 *     while prefilling:                        // chunks end at capture points
 *         chunk end <= dsv4_cache_next_capture(q, pos) when that is > 0
 *         after the forward, if pos == that point: dsv4_cache_capture(q, seq)
 *     dsv4_cache_req_free(q);
 */
#ifndef DSV4_CACHE_H
#define DSV4_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "dsv4.h"

typedef struct dsv4_cache     dsv4_cache;
typedef struct dsv4_cache_req dsv4_cache_req;

/* Format of the values; part of the fingerprint (a new layout never reads
 * an old value). */
#define DSV4_CACHE_FORMAT_VERSION 1

enum {
    DSV4_CACHE_TIER_MEM = 0,
    DSV4_CACHE_TIER_DISK,
    DSV4_CACHE_TIER_REDIS,
    DSV4_CACHE_NTIERS
};

/* dsv4_cache_conf.write: tiers that receive newly computed values. */
#define DSV4_CACHE_WRITE_MEM   (1 << DSV4_CACHE_TIER_MEM)
#define DSV4_CACHE_WRITE_DISK  (1 << DSV4_CACHE_TIER_DISK)
#define DSV4_CACHE_WRITE_REDIS (1 << DSV4_CACHE_TIER_REDIS)
#define DSV4_CACHE_WRITE_ALL   7

typedef enum {
    DSV4_CACHE_ERR_CONNECT = 0,  /* Redis: connect failed */
    DSV4_CACHE_ERR_TIMEOUT,      /* Redis: no answer within the timeout */
    DSV4_CACHE_ERR_IO,           /* Redis: connection lost or protocol error */
    DSV4_CACHE_ERR_OOM,          /* Redis: write refused by maxmemory */
    DSV4_CACHE_ERR_REPLY,        /* Redis: other error reply or unexpected type */
    DSV4_CACHE_ERR_SKIPPED,      /* Redis: not tried (backing off, or no free connection) */
    DSV4_CACHE_ERR_CORRUPT,      /* value failed its format, checksum or shape checks */
    DSV4_CACHE_ERR_FOREIGN,      /* value of another fingerprint, key, block or size */
    DSV4_CACHE_ERR_TOO_BIG,      /* value over the size limit */
    DSV4_CACHE_ERR_DISK,         /* disk tier I/O error */
    DSV4_CACHE_ERR_DROPPED,      /* write-back dropped (queue full) */
    DSV4_CACHE_ERR_NOMEM,        /* allocation failed */
    DSV4_CACHE_NERRORS
} dsv4_cache_error;

/* Redis round-trip latency histogram: bucket k counts calls taking at most
 * dsv4_cache_latency_le_us[k] microseconds (the last bucket is +Inf). */
#define DSV4_CACHE_NLAT 12
extern const uint64_t dsv4_cache_latency_le_us[DSV4_CACHE_NLAT];

/* Counters since dsv4_cache_new (monotonic) and gauges (now). */
typedef struct {
    uint64_t lookups;                             /* dsv4_cache_restore calls */
    uint64_t lookup_hits;                         /* restores of at least one block */
    uint64_t lookup_tokens;                       /* prompt tokens of all lookups */
    uint64_t hit_tokens[DSV4_CACHE_NTIERS];       /* restored tokens, by the tier each
                                                     history block came from */
    uint64_t read_bytes[DSV4_CACHE_NTIERS];       /* value bytes read */
    uint64_t written_bytes[DSV4_CACHE_NTIERS];    /* value bytes written */
    uint64_t written_values[DSV4_CACHE_NTIERS];
    uint64_t errors[DSV4_CACHE_NERRORS];
    uint64_t captures;                            /* snapshots queued for write-back */
    uint64_t redis_calls;                         /* round trips (pipelines count once) */
    uint64_t redis_usec_sum;
    uint64_t redis_usec_max;
    uint64_t redis_latency[DSV4_CACHE_NLAT];      /* non-cumulative buckets */
    /* gauges */
    uint64_t mem_bytes;
    uint64_t mem_values;
    uint64_t disk_bytes;                          /* this process's estimate */
    uint64_t queue_bytes;
    uint64_t queue_jobs;
    int      redis_up;                            /* 0 while backing off after a failure */
} dsv4_cache_stats;

#define DSV4_CACHE_LOG_WARN 1
#define DSV4_CACHE_LOG_INFO 2
/* failures are logged once per kind per interval, with a count of the rest */
#define DSV4_CACHE_LOG_EVERY_MS 10000

typedef struct {
    /* keys */
    int         block_tokens;       /* B; 0 = the smallest multiple of the
                                       alignment >= 128 (128 for V4) */
    int         checkpoint_blocks;  /* tail every this many blocks, and at the last
                                       full block of each prompt; 0 = 16 */
    const char *model_id;           /* extra fingerprint text (e.g. a revision); NULL */
    const char *chat_version;       /* chat-encoding version; NULL = "" */
    int         write;              /* DSV4_CACHE_WRITE_* of tiers to fill; 0 = none */
    /* memory tier */
    size_t      mem_bytes;          /* 0 = off */
    /* disk tier */
    const char *disk_dir;           /* NULL = off; created if missing */
    size_t      disk_bytes;         /* budget; 0 = 1 GiB */
    /* Redis tier: host (IP literal preferred: names resolve blocking) or unix */
    const char *redis_host;         /* NULL and redis_unix NULL = off */
    int         redis_port;         /* 0 = 6379 */
    const char *redis_unix;
    const char *redis_prefix;       /* key prefix; NULL = "dsv4:" */
    int         redis_timeout_ms;   /* connect and every read/write; 0 = 100 */
    int         redis_retry_ms;     /* skip Redis this long after a connection
                                       failure or timeout; 0 = 2000 */
    int         redis_ttl_s;        /* expiry of written values; 0 = none */
    size_t      redis_max_value;    /* larger values are neither written nor read;
                                       0 = 32 MiB */
    int         redis_conns;        /* connections (one per concurrent caller); 0 = 4 */
    /* write-back */
    size_t      queue_bytes;        /* queued snapshot bytes before dropping; 0 = 256 MiB */
    /* logging (any thread; rate-limited): level DSV4_CACHE_LOG_* */
    void      (*log)(void *data, int level, const char *msg);
    void       *log_data;
} dsv4_cache_conf;

/* Creates the cache for model m (borrowed; outlives the cache) and starts its
 * writer thread.  Fails only on invalid configuration or a disk directory it
 * cannot create; an unreachable Redis is not an error (it is retried). */
int  dsv4_cache_new(dsv4_cache **out, const dsv4_model *m, const dsv4_cache_conf *conf,
                    char *err, size_t errlen);
/* Stops the writer (queued writes not yet started are dropped) and frees. */
void dsv4_cache_free(dsv4_cache *c);

/* Waits until the write-back queue is empty, at most timeout_ms.  Returns 0
 * when empty, -1 on timeout. */
int  dsv4_cache_flush(dsv4_cache *c, int timeout_ms);

int  dsv4_cache_block_tokens(const dsv4_cache *c);
/* The model fingerprint [32] every key is seeded with. */
const uint8_t *dsv4_cache_fingerprint(const dsv4_cache *c);
void dsv4_cache_get_stats(dsv4_cache *c, dsv4_cache_stats *st);
const char *dsv4_cache_tier_name(int tier);
const char *dsv4_cache_error_name(int err);

/* A request's view of the cache: the chain keys of tokens[0..n) (copied;
 * salt[salt_len] mixed into the root, may be NULL/0).  NULL when out of
 * memory (the caller proceeds uncached). */
dsv4_cache_req *dsv4_cache_req_new(dsv4_cache *c, const int32_t *tokens, int n,
                                   const void *salt, size_t salt_len);
void dsv4_cache_req_free(dsv4_cache_req *q);

/* Restores into s (a fresh or reset sequence) the longest cached prefix P of
 * the request's tokens, with P a multiple of B and P < n (at least one token
 * is left to compute the logits from).  Returns P, 0 on a miss; never fails
 * (a broken value is a miss, s is then reset).  Blocks found only in slower
 * tiers are copied to the faster ones.  May block on Redis up to its
 * timeout per round trip: call from an engine thread. */
int  dsv4_cache_restore(dsv4_cache_req *q, dsv4_seq *s);

/* Tokens of the last restore that came from each tier ([DSV4_CACHE_NTIERS]). */
void dsv4_cache_req_hits(const dsv4_cache_req *q, int *tokens_per_tier);

/* The first capture position > pos: a checkpoint (every checkpoint_blocks
 * blocks, and the last block boundary <= n) where the caller must stop a
 * prefill chunk and call dsv4_cache_capture.  0 when none remains or the
 * cache writes nowhere. */
int  dsv4_cache_next_capture(const dsv4_cache_req *q, int pos);

/* s is at a capture position: copies the history computed since the last
 * capture (or restore) and the tail state, and queues them for write-back.
 * Returns 0, or -1 when the snapshot was not queued (counted; harmless). */
int  dsv4_cache_capture(dsv4_cache_req *q, const dsv4_seq *s);

#endif
