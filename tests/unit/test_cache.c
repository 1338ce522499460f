/*
 * test_cache: the parts of cache/ that need neither a model nor Redis.
 *
 *   SHA-256 against the FIPS 180-2 vectors; the block chain (prefix property,
 *   salts, block size); the payload checksum (every single-bit flip caught);
 *   lossless packing of FP8 KV rows, FP4 indexer rows and raw rows (bit for
 *   bit, sizes, fallback for unquantised data, every truncation and trailing
 *   byte refused); the value format (round trip, corruption at every byte
 *   and every truncation refused without a crash, foreign fingerprints,
 *   keys, kinds and blocks told apart); the memory tier (LRU order, budget,
 *   threads); the disk tier (atomic files, restart, eviction, stale
 *   temporaries).
 */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/internal.h"
#include "kernels.h"
#include "tests/test.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t
next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Uniform in [-1, 1). */
static float
next_f(void)
{
    return (float) ((double) (next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void
hex_of(const uint8_t *b, size_t n, char *out)
{
    dsv4_cache_hex(b, n, out);
}

/* ---- SHA-256 ----------------------------------------------------------- */

static void
test_sha256(void)
{
    static const struct { const char *msg; const char *hex; } v[] = {
        { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    };
    uint8_t     out[32];
    char        hex[65];
    dsv4_sha256 s;

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        dsv4_sha256_once(v[i].msg, strlen(v[i].msg), out);
        hex_of(out, 32, hex);
        TEST_CHECK(strcmp(hex, v[i].hex) == 0, "sha256(\"%s\") = %s", v[i].msg, hex);
    }
    /* a million 'a', fed in uneven pieces */
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    dsv4_sha256_init(&s);
    for (size_t off = 0, step = 1; off < 1000000; off += step, step = step * 3 % 997 + 1) {
        dsv4_sha256_update(&s, a + off, off + step > 1000000 ? 1000000 - off : step);
    }
    dsv4_sha256_final(&s, out);
    hex_of(out, 32, hex);
    TEST_CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
               == 0, "sha256(a x 1e6) = %s", hex);
    free(a);
}

/* ---- chain keys, checksum ---------------------------------------------- */

static void
test_chain(void)
{
    enum { B = 16, NB = 6 };
    int32_t toks[NB * B];
    uint8_t fp[32], fp2[32], k1[NB][32], k2[NB][32], k3[NB][32];
    int     same;

    for (int i = 0; i < NB * B; i++) {
        toks[i] = (int32_t) (next_u64() % 129280);
    }
    memset(fp, 7, 32);
    memcpy(fp2, fp, 32);
    fp2[31] ^= 1;
    dsv4_cache_chain(fp, NULL, 0, B, toks, NB, k1);
    dsv4_cache_chain(fp, NULL, 0, B, toks, NB, k2);
    TEST_CHECK(memcmp(k1, k2, sizeof(k1)) == 0, "chain is not deterministic");
    dsv4_cache_chain(fp, NULL, 0, B, toks, 3, k2);
    TEST_CHECK(memcmp(k1, k2, 3 * 32) == 0, "a prefix's keys differ from the full prompt's");

    /* one token changed in block 3: blocks 0..2 keep their keys, 3.. change */
    toks[3 * B + 5] ^= 1;
    dsv4_cache_chain(fp, NULL, 0, B, toks, NB, k2);
    toks[3 * B + 5] ^= 1;
    same = 0;
    for (int i = 0; i < NB; i++) {
        same += memcmp(k1[i], k2[i], 32) == 0;
    }
    TEST_CHECK(same == 3 && memcmp(k1[2], k2[2], 32) == 0 && memcmp(k1[3], k2[3], 32) != 0,
               "a change in block 3 kept %d keys", same);

    /* salt, fingerprint and block size each change every key */
    dsv4_cache_chain(fp, "tenant-a", 8, B, toks, NB, k2);
    dsv4_cache_chain(fp, "tenant-b", 8, B, toks, NB, k3);
    same = 0;
    for (int i = 0; i < NB; i++) {
        same += memcmp(k1[i], k2[i], 32) == 0 || memcmp(k2[i], k3[i], 32) == 0;
    }
    TEST_CHECK(same == 0, "salted keys collide with unsalted or other tenants' (%d)", same);
    dsv4_cache_chain(fp2, NULL, 0, B, toks, NB, k2);
    TEST_CHECK(memcmp(k1[0], k2[0], 32) != 0 && memcmp(k1[NB - 1], k2[NB - 1], 32) != 0,
               "fingerprint does not seed the chain");
    dsv4_cache_chain(fp, NULL, 0, 2 * B, toks, NB / 2, k2);
    TEST_CHECK(memcmp(k1[1], k2[0], 32) != 0, "block size is not part of the key");

    /* the first key is pinned: every build and host must derive it */
    uint8_t zero[32] = { 0 };
    int32_t seq[4] = { 0, 1, 2, 3 };
    uint8_t kk[1][32];
    char    hex[65];
    dsv4_cache_chain(zero, NULL, 0, 4, seq, 1, kk);
    hex_of(kk[0], 32, hex);
    uint8_t     expect[32], buf[200];
    size_t      n = 0;
    dsv4_sha256 s;
    memcpy(buf, "dsv4-kv-root", 13);
    n = 13;
    memset(buf + n, 0, 32 + 8);
    n += 40;
    dsv4_sha256_once(buf, n, expect);                 /* root */
    memcpy(buf, "dsv4-kv-block", 14);
    memcpy(buf + 14, expect, 32);
    n = 46;
    buf[n++] = 4; buf[n++] = 0; buf[n++] = 0; buf[n++] = 0;
    for (int t = 0; t < 4; t++) {
        buf[n++] = (uint8_t) t; buf[n++] = 0; buf[n++] = 0; buf[n++] = 0;
    }
    dsv4_sha256_init(&s);
    dsv4_sha256_update(&s, buf, n);
    dsv4_sha256_final(&s, expect);
    TEST_CHECK(memcmp(expect, kk[0], 32) == 0, "chain key layout changed: %s", hex);
}

static void
test_sum64(void)
{
    uint8_t  buf[77];
    uint64_t base;
    int      missed = 0;

    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (uint8_t) next_u64();
    }
    base = dsv4_cache_sum64(buf, sizeof(buf));
    for (size_t bit = 0; bit < sizeof(buf) * 8; bit++) {
        buf[bit / 8] ^= (uint8_t) (1u << (bit % 8));
        missed += dsv4_cache_sum64(buf, sizeof(buf)) == base;
        buf[bit / 8] ^= (uint8_t) (1u << (bit % 8));
    }
    TEST_CHECK(missed == 0, "checksum missed %d single-bit flips", missed);
    TEST_CHECK(dsv4_cache_sum64(buf, sizeof(buf) - 1) != base, "checksum ignores the length");
    TEST_CHECK(dsv4_cache_sum64(buf, sizeof(buf)) == base, "checksum not deterministic");
}

/* ---- packing ----------------------------------------------------------- */

/* Rows like the engine's: KV rows [rows, width] with the first width-rd dims
 * FP8 fake-quantised, the rest raw; scale picks magnitudes per row. */
static void
make_kv_rows(float *v, int rows, int stride, int width, int rd, int quant)
{
    const dsv4_backend *be = dsv4_backend_cpu_scalar();

    for (int r = 0; r < rows; r++) {
        float *row = v + (size_t) r * stride;
        float  mag = r % 5 == 0 ? 1e-7f : r % 5 == 1 ? 3.0f : r % 5 == 2 ? 1000.0f : 0.25f;
        for (int i = 0; i < width; i++) {
            row[i] = next_f() * mag;
        }
        if (r % 7 == 3) {
            memset(row, 0, (size_t) (width - rd) * sizeof(float));  /* a zero block */
            row[1] = -0.0f;
        }
        if (quant) {
            be->fake_quant_fp8(be, row, width - rd, DSV4_SS_KV_BLOCK);
        }
    }
}

static void
make_idx_rows(float *v, int rows, int width, int quant)
{
    const dsv4_backend *be = dsv4_backend_cpu_scalar();

    for (int r = 0; r < rows; r++) {
        float *row = v + (size_t) r * width;
        for (int i = 0; i < width; i++) {
            row[i] = next_f() * (r % 3 == 0 ? 0.01f : 5.0f);
        }
        if (quant) {
            be->hadamard(be, row, width);
            be->fake_quant_fp4(be, row, width, DSV4_SS_IDX_BLOCK);
        }
    }
}

static int
same_bits(const dsv4_ss_section *a, const dsv4_ss_section *b)
{
    for (int r = 0; r < a->rows; r++) {
        if (memcmp(a->data + (size_t) r * a->stride, b->data + (size_t) r * b->stride,
                   (size_t) a->width * sizeof(float)) != 0) {
            return 0;
        }
    }
    return 1;
}

static void
test_pack(void)
{
    enum { ROWS = 40, HD = 160, RD = 32, DI = 64, STRIDE = 2 * HD };
    float          *kv = calloc((size_t) ROWS * STRIDE, sizeof(float));
    float          *idx = calloc((size_t) ROWS * DI, sizeof(float));
    float          *raw = calloc((size_t) 4 * HD, sizeof(float));
    float          *back = calloc((size_t) ROWS * STRIDE * 3, sizeof(float));
    dsv4_ss_section sec[3], out[3];

    make_kv_rows(kv, ROWS, STRIDE, HD, RD, 1);
    make_idx_rows(idx, ROWS, DI, 1);
    for (int i = 0; i < 4 * HD; i++) {
        raw[i] = next_f() * 1e6f;
    }
    raw[3] = -INFINITY;
    raw[4] = -0.0f;
    sec[0] = (dsv4_ss_section) { DSV4_SS_KV, 0, ROWS, HD, STRIDE, RD, kv };   /* strided */
    sec[1] = (dsv4_ss_section) { DSV4_SS_IDX, 0, ROWS, DI, DI, 0, idx };
    sec[2] = (dsv4_ss_section) { DSV4_SS_RAW, 0, 4, HD, HD, 0, raw };
    for (int k = 0; k < 3; k++) {
        out[k] = sec[k];
        out[k].data = back + (size_t) k * ROWS * STRIDE;
        out[k].stride = sec[k].width;
    }
    size_t   bound = dsv4_cache_pack_bound(sec, 3);
    uint8_t *buf = malloc(bound + 16);
    size_t   n = dsv4_cache_pack(sec, 3, buf);
    TEST_CHECK(n <= bound, "packed %zu > bound %zu", n, bound);
    size_t kv_expect = (size_t) ROWS * ((HD - RD) + (HD - RD + 63) / 64 + RD * 4);
    size_t idx_expect = (size_t) ROWS * (DI / 2 + DI / 32);
    size_t expect = 3 * 16 + kv_expect + idx_expect + (size_t) 4 * HD * 4;
    TEST_CHECK(n == expect, "packed %zu bytes, expected %zu (every block quantised)", n, expect);
    TEST_CHECK(dsv4_cache_unpack(out, 3, buf, n) == 0, "unpack failed");
    int ok = 1;
    for (int k = 0; k < 3; k++) {
        ok &= same_bits(&sec[k], &out[k]);
    }
    TEST_CHECK(ok, "round trip is not bit-exact");
    printf("pack: KV row of %d dims: %zu bytes packed vs %d raw; indexer row of %d: %zu vs %d\n",
           HD, kv_expect / ROWS, HD * 4, DI, idx_expect / ROWS, DI * 4);

    /* every truncation and a trailing byte are refused */
    int accepted = 0;
    for (size_t cut = 0; cut < n; cut += (cut < 64 || n - cut < 64) ? 1 : 37) {
        accepted += dsv4_cache_unpack(out, 3, buf, cut) == 0;
    }
    buf[n] = 0;
    accepted += dsv4_cache_unpack(out, 3, buf, n + 1) == 0;
    TEST_CHECK(accepted == 0, "%d truncated/extended payloads accepted", accepted);
    /* a payload for another shape is refused by the section headers */
    out[0].rows--;
    TEST_CHECK(dsv4_cache_unpack(out, 3, buf, n) != 0, "shape mismatch accepted");
    out[0].rows++;

    /* values that are not quantised: raw fallback, still exact */
    make_kv_rows(kv, ROWS, STRIDE, HD, RD, 0);
    make_idx_rows(idx, ROWS, DI, 0);
    idx[5] = NAN;
    n = dsv4_cache_pack(sec, 3, buf);
    TEST_CHECK(n <= bound, "fallback packed %zu > bound %zu", n, bound);
    TEST_CHECK(dsv4_cache_unpack(out, 3, buf, n) == 0, "fallback unpack failed");
    ok = 1;
    for (int k = 0; k < 3; k++) {
        ok &= same_bits(&sec[k], &out[k]);
    }
    TEST_CHECK(ok, "fallback round trip is not bit-exact");
    free(buf);
    free(kv);
    free(idx);
    free(raw);
    free(back);
}

/* ---- value format ------------------------------------------------------ */

static dsv4_cache_blob *
make_value(const uint8_t *fp, const dsv4_cache_id *id, uint32_t block, uint32_t B,
           const uint8_t *payload, size_t n)
{
    dsv4_cache_value v;

    memset(&v, 0, sizeof(v));
    v.kind = id->kind;
    memcpy(v.fp, fp, 32);
    memcpy(v.key, id->key, 32);
    v.block = block;
    v.block_tokens = B;
    v.pos = (block + 1) * B;
    v.mtp_pos = id->kind == DSV4_CACHE_TAIL ? v.pos - 1 : 0;
    v.payload = payload;
    v.payload_len = n;
    return dsv4_cache_value_encode(&v);
}

static void
test_serial(void)
{
    uint8_t          fp[32], fp2[32], payload[3000];
    dsv4_cache_id    id, other;
    dsv4_cache_value v;
    dsv4_cache_blob *b;
    int              e;

    for (int i = 0; i < 32; i++) {
        fp[i] = (uint8_t) i;
        id.key[i] = (uint8_t) (200 - i);
    }
    memcpy(fp2, fp, 32);
    fp2[0] ^= 0x80;
    id.kind = DSV4_CACHE_HIST;
    for (size_t i = 0; i < sizeof(payload); i++) {
        payload[i] = (uint8_t) next_u64();
    }
    b = make_value(fp, &id, 5, 32, payload, sizeof(payload));
    TEST_CHECK(b != NULL, "encode failed");
    e = dsv4_cache_value_decode(b->data, b->len, fp, &id, 5, 32, &v);
    TEST_CHECK(e == 0 && v.payload_len == sizeof(payload)
               && memcmp(v.payload, payload, sizeof(payload)) == 0 && v.pos == 192,
               "round trip failed (%d)", e);
    TEST_CHECK(b->len < sizeof(payload) + 120, "header is %zu bytes", b->len - sizeof(payload));

    /* every single-byte corruption and every truncation is refused */
    int accepted = 0, crashed_never = 1;
    for (size_t i = 0; i < b->len; i++) {
        uint8_t old = b->data[i];
        b->data[i] ^= (uint8_t) (1 + next_u64() % 255);
        accepted += dsv4_cache_value_decode(b->data, b->len, fp, &id, 5, 32, &v) == 0;
        b->data[i] = old;
    }
    TEST_CHECK(accepted == 0, "%d corrupted values accepted", accepted);
    accepted = 0;
    for (size_t cut = 0; cut < b->len; cut++) {
        accepted += dsv4_cache_value_decode(b->data, cut, fp, &id, 5, 32, &v) == 0;
    }
    TEST_CHECK(accepted == 0 && crashed_never, "%d truncated values accepted", accepted);
    /* garbage, empty, other msgpack */
    uint8_t garbage[512];
    for (size_t i = 0; i < sizeof(garbage); i++) {
        garbage[i] = (uint8_t) next_u64();
    }
    TEST_CHECK(dsv4_cache_value_decode(garbage, sizeof(garbage), fp, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_CORRUPT, "garbage not corrupt");
    TEST_CHECK(dsv4_cache_value_decode((const uint8_t *) "OK", 2, fp, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_CORRUPT, "short string not corrupt");
    uint8_t fixarray[] = { 0x9b, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0,
                           0xc0 };
    TEST_CHECK(dsv4_cache_value_decode(fixarray, sizeof(fixarray), fp, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_CORRUPT, "array of nils not corrupt");
    /* a container header claiming 2^32 elements must not reach msgpack-c's
     * allocator (it would ask for ~100 GB) */
    uint8_t huge[] = { 0x9b, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02 };
    TEST_CHECK(dsv4_cache_value_decode(huge, sizeof(huge), fp, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_CORRUPT, "huge nested array not refused");
    uint8_t huge_top[] = { 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01 };
    TEST_CHECK(dsv4_cache_value_decode(huge_top, sizeof(huge_top), fp, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_CORRUPT, "huge top-level array not refused");

    /* valid values that are not the one asked for are foreign */
    TEST_CHECK(dsv4_cache_value_decode(b->data, b->len, fp2, &id, 5, 32, &v)
               == DSV4_CACHE_ERR_FOREIGN, "another fingerprint accepted");
    other = id;
    other.key[3] ^= 1;
    TEST_CHECK(dsv4_cache_value_decode(b->data, b->len, fp, &other, 5, 32, &v)
               == DSV4_CACHE_ERR_FOREIGN, "another key accepted");
    other = id;
    other.kind = DSV4_CACHE_TAIL;
    TEST_CHECK(dsv4_cache_value_decode(b->data, b->len, fp, &other, 5, 32, &v)
               == DSV4_CACHE_ERR_FOREIGN, "another kind accepted");
    TEST_CHECK(dsv4_cache_value_decode(b->data, b->len, fp, &id, 6, 32, &v)
               == DSV4_CACHE_ERR_FOREIGN, "another block accepted");
    TEST_CHECK(dsv4_cache_value_decode(b->data, b->len, fp, &id, 5, 16, &v)
               == DSV4_CACHE_ERR_FOREIGN, "another block size accepted");
    dsv4_cache_blob_unref(b);

    /* a tail round trip keeps the MTP position; an empty payload is fine */
    id.kind = DSV4_CACHE_TAIL;
    b = make_value(fp, &id, 0, 8, payload, 0);
    e = dsv4_cache_value_decode(b->data, b->len, fp, &id, 0, 8, &v);
    TEST_CHECK(e == 0 && v.mtp_pos == 7 && v.payload_len == 0, "tail round trip (%d)", e);
    dsv4_cache_blob_unref(b);
}

/* ---- memory tier ------------------------------------------------------- */

static dsv4_cache_blob *
blob_of(size_t len, uint8_t fill)
{
    dsv4_cache_blob *b = dsv4_cache_blob_new(len);
    memset(b->data, fill, len);
    return b;
}

static dsv4_cache_id
id_of(int i)
{
    dsv4_cache_id id;
    uint8_t       buf[4] = { (uint8_t) i, (uint8_t) (i >> 8), (uint8_t) (i >> 16), 0 };

    dsv4_sha256_once(buf, 4, id.key);
    id.kind = i % 2 ? DSV4_CACHE_TAIL : DSV4_CACHE_HIST;
    return id;
}

typedef struct {
    dsv4_cache_mem *m;
    int             seed;
    int             bad;
} mem_thread_arg;

static void *
mem_thread(void *arg)
{
    mem_thread_arg *a = arg;
    uint64_t        x = (uint64_t) a->seed * 2654435761u + 1;

    for (int it = 0; it < 20000; it++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int           k = (int) (x % 300);
        dsv4_cache_id id = id_of(k);
        if (x & 1) {
            dsv4_cache_blob *b = blob_of(100 + (size_t) k, (uint8_t) k);
            dsv4_cache_mem_put(a->m, &id, b);
            dsv4_cache_blob_unref(b);
        } else {
            dsv4_cache_blob *b = dsv4_cache_mem_get(a->m, &id);
            if (b != NULL) {
                a->bad += b->len != 100 + (size_t) k || b->data[b->len - 1] != (uint8_t) k;
                dsv4_cache_blob_unref(b);
            }
        }
    }
    return NULL;
}

static void
test_mem(void)
{
    dsv4_cache_mem  *m = dsv4_cache_mem_new(1000);
    uint64_t         bytes, count;
    dsv4_cache_id    ids[8];
    dsv4_cache_blob *b;

    for (int i = 0; i < 8; i++) {
        ids[i] = id_of(i);
    }
    for (int i = 0; i < 4; i++) {
        b = blob_of(200, (uint8_t) i);
        TEST_CHECK(dsv4_cache_mem_put(m, &ids[i], b) == 0, "put %d", i);
        dsv4_cache_blob_unref(b);
    }
    dsv4_cache_blob_unref(dsv4_cache_mem_get(m, &ids[0]));   /* 0 becomes most recent */
    b = blob_of(200, 4);
    dsv4_cache_mem_put(m, &ids[4], b);
    dsv4_cache_blob_unref(b);
    dsv4_cache_mem_usage(m, &bytes, &count);
    TEST_CHECK(bytes == 1000 && count == 5, "usage %llu bytes %llu values",
               (unsigned long long) bytes, (unsigned long long) count);
    b = blob_of(200, 5);
    dsv4_cache_mem_put(m, &ids[5], b);                   /* evicts 1, the LRU */
    dsv4_cache_blob_unref(b);
    TEST_CHECK(!dsv4_cache_mem_has(m, &ids[1]) && dsv4_cache_mem_has(m, &ids[0])
               && dsv4_cache_mem_has(m, &ids[5]), "LRU order not respected");
    /* a reader keeps its bytes after eviction */
    b = dsv4_cache_mem_get(m, &ids[2]);
    for (int i = 6; i < 8; i++) {
        dsv4_cache_blob *x = blob_of(240, (uint8_t) i);
        dsv4_cache_mem_put(m, &ids[i], x);
        dsv4_cache_blob_unref(x);
    }
    TEST_CHECK(b != NULL && b->len == 200 && b->data[199] == 2, "evicted value changed under"
               " its reader");
    dsv4_cache_blob_unref(b);
    dsv4_cache_mem_usage(m, &bytes, &count);
    TEST_CHECK(bytes <= 1000, "over budget: %llu", (unsigned long long) bytes);
    b = blob_of(251, 9);                                  /* > budget / 4 */
    TEST_CHECK(dsv4_cache_mem_put(m, &ids[1], b) != 0, "oversized value stored");
    dsv4_cache_blob_unref(b);
    dsv4_cache_mem_del(m, &ids[0]);
    TEST_CHECK(!dsv4_cache_mem_has(m, &ids[0]), "del");
    dsv4_cache_mem_free(m);

    /* four threads putting and getting 300 keys in a 20 KB budget */
    m = dsv4_cache_mem_new(20000);
    pthread_t      th[4];
    mem_thread_arg args[4];
    for (int t = 0; t < 4; t++) {
        args[t] = (mem_thread_arg) { m, t + 1, 0 };
        pthread_create(&th[t], NULL, mem_thread, &args[t]);
    }
    int bad = 0;
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        bad += args[t].bad;
    }
    dsv4_cache_mem_usage(m, &bytes, &count);
    TEST_CHECK(bad == 0 && bytes <= 20000 && count > 0, "threads: %d bad reads, %llu bytes",
               bad, (unsigned long long) bytes);
    dsv4_cache_mem_free(m);
}

/* ---- disk tier --------------------------------------------------------- */

static int
count_files(const char *dir, const char *prefix)
{
    DIR           *d = opendir(dir);
    struct dirent *e;
    int            n = 0;

    while (d && (e = readdir(d)) != NULL) {
        char sub[4096];
        if (e->d_name[0] == '.') {
            continue;
        }
        snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        DIR *s = opendir(sub);
        struct dirent *f;
        while (s && (f = readdir(s)) != NULL) {
            n += strncmp(f->d_name, prefix, strlen(prefix)) == 0 && strcmp(f->d_name, ".")
                 && strcmp(f->d_name, "..");
        }
        if (s) {
            closedir(s);
        }
    }
    if (d) {
        closedir(d);
    }
    return n;
}

static void
test_disk(void)
{
    char             dir[256], cmd[8192], path[4096], hex[65];
    dsv4_cache_ctr   ctr;
    dsv4_cache_disk *d;
    char             err[256];

    memset(&ctr, 0, sizeof(ctr));
    snprintf(dir, sizeof(dir), "%s/test_cache_disk.%d",
             getenv("DSV4_TEST_TMP") ? getenv("DSV4_TEST_TMP") : "/tmp", (int) getpid());
    snprintf(path, sizeof(path), "%s/a/b", dir);
    d = dsv4_cache_disk_new(path, 10000, 1 << 20, &ctr, err, sizeof(err));
    TEST_CHECK(d != NULL, "disk tier in a new nested directory: %s", err);
    if (d == NULL) {
        return;
    }
    for (int i = 0; i < 8; i++) {
        dsv4_cache_id    id = id_of(i);
        dsv4_cache_blob *b = blob_of(1000 + (size_t) i, (uint8_t) i);
        TEST_CHECK(dsv4_cache_disk_put(d, &id, b) == 0, "put %d", i);
        dsv4_cache_blob_unref(b);
    }
    TEST_CHECK(count_files(path, ".tmp.") == 0, "temporary files left behind");
    dsv4_cache_id id3 = id_of(3);
    dsv4_cache_blob *b = dsv4_cache_disk_get(d, &id3);
    TEST_CHECK(b && b->len == 1003 && b->data[1002] == 3, "get after put");
    dsv4_cache_blob_unref(b);
    dsv4_cache_disk_free(d);

    /* a new instance (a restart) sees the files; usage comes from a scan */
    d = dsv4_cache_disk_new(path, 10000, 1 << 20, &ctr, err, sizeof(err));
    dsv4_cache_disk_maintain(d, 1);
    TEST_CHECK(dsv4_cache_disk_usage(d) == 8 * 1000 + 28, "usage after restart %llu",
               (unsigned long long) dsv4_cache_disk_usage(d));
    TEST_CHECK(dsv4_cache_disk_has(d, &id3), "value lost across a restart");

    /* age the files so 0 is oldest; a stale temporary; then go over budget */
    for (int i = 0; i < 8; i++) {
        dsv4_cache_id  id = id_of(i);
        struct timespec ts[2] = { { 1000000 + i * 100, 0 }, { 1000000 + i * 100, 0 } };
        dsv4_cache_hex(id.key, 32, hex);
        snprintf(cmd, sizeof(cmd), "%s/%.2s/%s.%c", path, hex, hex, id.kind);
        utimensat(AT_FDCWD, cmd, ts, 0);
    }
    dsv4_cache_hex(id3.key, 32, hex);
    snprintf(cmd, sizeof(cmd), "%s/%.2s/.tmp.1.1", path, hex);
    FILE *f = fopen(cmd, "w");
    fputs("partial", f);
    fclose(f);
    struct timespec old[2] = { { 1000, 0 }, { 1000, 0 } };
    utimensat(AT_FDCWD, cmd, old, 0);
    for (int i = 8; i < 11; i++) {
        dsv4_cache_id    id = id_of(i);
        dsv4_cache_blob *x = blob_of(1000, (uint8_t) i);
        dsv4_cache_disk_put(d, &id, x);
        dsv4_cache_blob_unref(x);
    }
    dsv4_cache_disk_maintain(d, 0);
    int kept = 0, oldest_gone = 1;
    for (int i = 0; i < 11; i++) {
        dsv4_cache_id id = id_of(i);
        kept += dsv4_cache_disk_has(d, &id);
        if (i < 3) {
            oldest_gone &= !dsv4_cache_disk_has(d, &id);
        }
    }
    /* 11028 bytes over a 10000 budget: the three oldest go (to <= 9000) */
    TEST_CHECK(dsv4_cache_disk_usage(d) == 8025 && kept == 8 && oldest_gone,
               "eviction: usage %llu, %d kept", (unsigned long long) dsv4_cache_disk_usage(d),
               kept);
    TEST_CHECK(count_files(path, ".tmp.") == 0, "stale temporary not removed");
    dsv4_cache_disk_del(d, &id3);
    TEST_CHECK(!dsv4_cache_disk_has(d, &id3), "del");
    /* a truncated file is read as what it is; the value layer refuses it */
    dsv4_cache_id    id9 = id_of(9);
    dsv4_cache_hex(id9.key, 32, hex);
    snprintf(cmd, sizeof(cmd), "%s/%.2s/%s.%c", path, hex, hex, id9.kind);
    TEST_CHECK(truncate(cmd, 10) == 0, "truncate");
    b = dsv4_cache_disk_get(d, &id9);
    TEST_CHECK(b != NULL && b->len == 10, "truncated file read");
    dsv4_cache_blob_unref(b);
    dsv4_cache_disk_free(d);

    /* an unusable directory is refused at creation */
    TEST_CHECK(dsv4_cache_disk_new("/proc/version/x", 100, 100, &ctr, err, sizeof(err)) == NULL,
               "unusable directory accepted");
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    TEST_CHECK(system(cmd) == 0, "cleanup");
}

int
main(void)
{
    test_sha256();
    test_chain();
    test_sum64();
    test_pack();
    test_serial();
    test_mem();
    test_disk();
    return TEST_REPORT();
}
