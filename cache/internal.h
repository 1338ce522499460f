/*
 * Internals shared by the files of cache/ (not part of the API).
 *
 *   sha256.c  the key hash          key.c     fingerprint, chain keys, checksum
 *   pack.c    lossless KV packing   serial.c  msgpack value format
 *   mem.c     memory tier           disk.c    disk tier
 *   redis.c   Redis tier            cache.c   lookup, capture, write-back thread
 */
#ifndef DSV4_CACHE_INTERNAL_H
#define DSV4_CACHE_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "seq_state.h"

/* ---- hashing (sha256.c, key.c) ----------------------------------------- */

typedef struct {
    uint32_t h[8];
    uint64_t len;          /* message bytes so far */
    uint8_t  buf[64];      /* partial block */
    size_t   nbuf;
} dsv4_sha256;

void dsv4_sha256_init(dsv4_sha256 *s);
void dsv4_sha256_update(dsv4_sha256 *s, const void *data, size_t n);
void dsv4_sha256_final(dsv4_sha256 *s, uint8_t out[32]);
void dsv4_sha256_once(const void *data, size_t n, uint8_t out[32]);

/* Fingerprint of model m: config, tensor inventory (names, dtypes, shapes,
 * sizes, sampled bytes of the non-expert tensors), the KV layout and value
 * format versions, and the given texts (NULL = ""). */
void dsv4_cache_model_fingerprint(const dsv4_model *m, const char *model_id,
                                  const char *chat_version, uint8_t out[32]);
/* Chain keys of the first nblocks blocks of tokens: keys [nblocks][32]. */
void dsv4_cache_chain(const uint8_t fp[32], const void *salt, size_t salt_len, int block_tokens,
                      const int32_t *tokens, int nblocks, uint8_t (*keys)[32]);
/* Payload checksum: a fixed 64-bit hash (not cryptographic; catches corruption). */
uint64_t dsv4_cache_sum64(const void *data, size_t n);
/* Lower-case hex of bytes [n] into out[2n + 1]. */
void dsv4_cache_hex(const uint8_t *bytes, size_t n, char *out);

/* ---- values ------------------------------------------------------------ */

/* Kinds of value stored under a chain key (also the key suffix). */
#define DSV4_CACHE_HIST 'h'
#define DSV4_CACHE_TAIL 't'

typedef struct {
    uint8_t key[32];    /* chain key K(i) */
    int     kind;       /* DSV4_CACHE_HIST or DSV4_CACHE_TAIL */
} dsv4_cache_id;

/* Immutable bytes shared by reference between tiers and readers. */
typedef struct {
    atomic_int refs;
    size_t     len;
    uint8_t    data[];  /* [len] */
} dsv4_cache_blob;

dsv4_cache_blob *dsv4_cache_blob_new(size_t len);     /* refs = 1; NULL on OOM */
void             dsv4_cache_blob_ref(dsv4_cache_blob *b);
void             dsv4_cache_blob_unref(dsv4_cache_blob *b);

/* ---- packing (pack.c) -------------------------------------------------- */

/* Largest packed size of sections sec[n]. */
size_t dsv4_cache_pack_bound(const dsv4_ss_section *sec, int n);
/* Packs the rows of sec[n] (read through the sections) into out; returns the
 * bytes written (<= the bound).  Lossless: rows that are not exactly
 * representable in their kind's format fall back to raw float32 per block. */
size_t dsv4_cache_pack(const dsv4_ss_section *sec, int n, uint8_t *out);
/* Unpacks in[len] through sec[n] (writing into them).  Returns 0, or -1 when
 * in is malformed or its length does not match the sections exactly. */
int    dsv4_cache_unpack(const dsv4_ss_section *sec, int n, const uint8_t *in, size_t len);

/* ---- value format (serial.c) ------------------------------------------- */

typedef struct {
    int            kind;          /* DSV4_CACHE_HIST / DSV4_CACHE_TAIL */
    uint8_t        fp[32];        /* model fingerprint */
    uint8_t        key[32];       /* chain key */
    uint32_t       block;         /* block index i */
    uint32_t       block_tokens;  /* B */
    uint32_t       pos;           /* tail: main position; history: end position (i+1)B */
    uint32_t       mtp_pos;       /* tail: MTP position; history: 0 */
    const uint8_t *payload;       /* packed sections (points into the blob) */
    size_t         payload_len;
} dsv4_cache_value;

/* Encodes v (payload copied) into a new blob; NULL on OOM. */
dsv4_cache_blob *dsv4_cache_value_encode(const dsv4_cache_value *v);
/* Decodes blob[len] into v (v->payload points into blob).  Returns 0, or a
 * DSV4_CACHE_ERR_CORRUPT (format, checksum) / DSV4_CACHE_ERR_FOREIGN
 * (fingerprint, key, kind, block or block size other than expected) code.
 * expect: the identity the caller looked up. */
int dsv4_cache_value_decode(const uint8_t *blob, size_t len, const uint8_t fp[32],
                            const dsv4_cache_id *expect, uint32_t block, uint32_t block_tokens,
                            dsv4_cache_value *v);

/* ---- counters and logging ---------------------------------------------- */

typedef struct {
    atomic_uint_fast64_t lookups, lookup_hits, lookup_tokens, captures;
    atomic_uint_fast64_t hit_tokens[DSV4_CACHE_NTIERS];
    atomic_uint_fast64_t read_bytes[DSV4_CACHE_NTIERS];
    atomic_uint_fast64_t written_bytes[DSV4_CACHE_NTIERS];
    atomic_uint_fast64_t written_values[DSV4_CACHE_NTIERS];
    atomic_uint_fast64_t errors[DSV4_CACHE_NERRORS];
    atomic_uint_fast64_t redis_calls, redis_usec_sum, redis_usec_max;
    atomic_uint_fast64_t redis_latency[DSV4_CACHE_NLAT];
    atomic_int_fast64_t  last_log_ms[DSV4_CACHE_NERRORS];  /* rate limit per kind */
    atomic_uint_fast64_t unlogged[DSV4_CACHE_NERRORS];     /* since that line */
    void               (*log)(void *data, int level, const char *msg);
    void                *log_data;
} dsv4_cache_ctr;

/* Counts one error of kind e and logs fmt (once per kind per DSV4_CACHE_LOG_EVERY_MS). */
void dsv4_cache_fail(dsv4_cache_ctr *ctr, int e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void dsv4_cache_info(dsv4_cache_ctr *ctr, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int64_t dsv4_cache_now_ms(void);

/* ---- memory tier (mem.c) ----------------------------------------------- */

typedef struct dsv4_cache_mem dsv4_cache_mem;

dsv4_cache_mem  *dsv4_cache_mem_new(size_t budget);
void             dsv4_cache_mem_free(dsv4_cache_mem *m);
/* The value (a new reference; the caller unrefs) or NULL; a hit becomes the
 * most recently used. */
dsv4_cache_blob *dsv4_cache_mem_get(dsv4_cache_mem *m, const dsv4_cache_id *id);
int              dsv4_cache_mem_has(dsv4_cache_mem *m, const dsv4_cache_id *id);
/* Stores b (takes its own reference), replacing any value under id and
 * evicting least recently used values to stay within the budget.  A value
 * larger than a quarter of the budget is not stored.  Returns 0 or -1. */
int              dsv4_cache_mem_put(dsv4_cache_mem *m, const dsv4_cache_id *id,
                                    dsv4_cache_blob *b);
void             dsv4_cache_mem_del(dsv4_cache_mem *m, const dsv4_cache_id *id);
void             dsv4_cache_mem_usage(dsv4_cache_mem *m, uint64_t *bytes, uint64_t *values);

/* ---- disk tier (disk.c) ------------------------------------------------ */

typedef struct dsv4_cache_disk dsv4_cache_disk;

dsv4_cache_disk *dsv4_cache_disk_new(const char *dir, size_t budget, size_t max_value,
                                      dsv4_cache_ctr *ctr, char *err, size_t errlen);
void             dsv4_cache_disk_free(dsv4_cache_disk *d);
int              dsv4_cache_disk_has(dsv4_cache_disk *d, const dsv4_cache_id *id);
/* The value or NULL (absent, unreadable: counted). */
dsv4_cache_blob *dsv4_cache_disk_get(dsv4_cache_disk *d, const dsv4_cache_id *id);
/* Writes b atomically (temporary file + rename).  Returns 0 or -1 (counted). */
int              dsv4_cache_disk_put(dsv4_cache_disk *d, const dsv4_cache_id *id,
                                     const dsv4_cache_blob *b);
void             dsv4_cache_disk_del(dsv4_cache_disk *d, const dsv4_cache_id *id);
/* Rescans the directory when due (first call, over budget, or every few
 * minutes): sums sizes, removes stale temporaries and evicts the oldest
 * values to 90% of the budget.  Writer thread only. */
void             dsv4_cache_disk_maintain(dsv4_cache_disk *d, int force);
uint64_t         dsv4_cache_disk_usage(dsv4_cache_disk *d);

/* ---- Redis tier (redis.c) ---------------------------------------------- */

typedef struct dsv4_cache_redis dsv4_cache_redis;

dsv4_cache_redis *dsv4_cache_redis_new(const dsv4_cache_conf *conf, dsv4_cache_ctr *ctr);
void              dsv4_cache_redis_free(dsv4_cache_redis *r);
int               dsv4_cache_redis_up(dsv4_cache_redis *r);
/* present[k] = 1 when ids[k] exists.  One round trip.  Returns 0, or -1 when
 * Redis was not usable (present[] all 0; counted). */
int dsv4_cache_redis_exists(dsv4_cache_redis *r, const dsv4_cache_id *ids, int n,
                            uint8_t *present);
/* out[k] = the value of ids[k] or NULL.  One round trip. Returns 0 or -1. */
int dsv4_cache_redis_get(dsv4_cache_redis *r, const dsv4_cache_id *ids, int n,
                         dsv4_cache_blob **out);
/* SET with the TTL.  Returns 0 or -1 (counted: OOM, too big, I/O...). */
int dsv4_cache_redis_set(dsv4_cache_redis *r, const dsv4_cache_id *id,
                         const dsv4_cache_blob *b);
int dsv4_cache_redis_del(dsv4_cache_redis *r, const dsv4_cache_id *id);
/* The Redis key of id into out[cap] (prefix + kind + ':' + hex). */
void dsv4_cache_redis_key(const char *prefix, const dsv4_cache_id *id, char *out, size_t cap);

#endif
