/*
 * libFuzzer target: a prefix-cache value from an untrusted store (Redis,
 * disk), through the decoder every read runs (cache/serial.c) and the
 * unpacker of the state it carries (cache/pack.c).
 *
 * The first input byte picks the path:
 *   even  the rest is a whole value: dsv4_cache_value_decode() against a
 *         fixed model fingerprint and identity; a value it accepts must
 *         re-encode to a value it accepts again, with the same fields, and
 *         its payload is unpacked into the sections below;
 *   odd   the rest is a payload: dsv4_cache_unpack() into the sections; a
 *         payload it accepts must survive pack -> unpack bit for bit.
 * A value or payload is refused or accepted, never read out of bounds
 * (ASan), never with undefined behaviour (UBSan).  abort() = a finding.
 *
 * With DSV4_FUZZ_SEEDS=DIR, LLVMFuzzerInitialize writes valid inputs of
 * both kinds there first (the suite seeds the corpus with them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"

#define FUZZ_BLOCK        3        /* the block index the reader expects */
#define FUZZ_BLOCK_TOKENS 32

/* three sections of the kinds the engine stores: shapes below */
enum { FUZZ_RAW_ROWS = 2, FUZZ_RAW_W = 8, FUZZ_KV_ROWS = 3, FUZZ_KV_W = 80, FUZZ_KV_STRIDE = 96,
       FUZZ_KV_TAIL = 16, FUZZ_IDX_ROWS = 2, FUZZ_IDX_W = 64 };

static float raw_data[FUZZ_RAW_ROWS * FUZZ_RAW_W];        /* [2, 8] */
static float kv_data[FUZZ_KV_ROWS * FUZZ_KV_STRIDE];      /* [3, 96], 80 used */
static float idx_data[FUZZ_IDX_ROWS * FUZZ_IDX_W];        /* [2, 64] */

static dsv4_ss_section secs[3] = {
    { DSV4_SS_RAW, 0, FUZZ_RAW_ROWS, FUZZ_RAW_W, FUZZ_RAW_W, 0, raw_data },
    { DSV4_SS_KV, 1, FUZZ_KV_ROWS, FUZZ_KV_W, FUZZ_KV_STRIDE, FUZZ_KV_TAIL, kv_data },
    { DSV4_SS_IDX, 1, FUZZ_IDX_ROWS, FUZZ_IDX_W, FUZZ_IDX_W, 0, idx_data },
};

static const uint8_t fuzz_fp[32] = { 0xf9, 1, 2, 3 };
static const uint8_t fuzz_key[32] = { 0x4b, 5, 6, 7 };

static void
fuzz_check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_cache_value: %s\n", what);
        abort();
    }
}

/* the sections' floats, as bits, into out[] (the sections' used cells) */
static size_t
fuzz_snapshot(uint32_t *out)
{
    size_t n = 0;

    for (int i = 0; i < 3; i++) {
        for (int r = 0; r < secs[i].rows; r++) {
            memcpy(out + n, secs[i].data + (size_t) r * secs[i].stride,
                   (size_t) secs[i].width * 4);
            n += (size_t) secs[i].width;
        }
    }
    return n;
}

/* pack the sections as they are, unpack the result: the same bits back */
static void
fuzz_roundtrip(void)
{
    static uint32_t before[FUZZ_RAW_ROWS * FUZZ_RAW_W + FUZZ_KV_ROWS * FUZZ_KV_W
                           + FUZZ_IDX_ROWS * FUZZ_IDX_W];
    static uint32_t after[sizeof(before) / sizeof(before[0])];
    size_t          bound = dsv4_cache_pack_bound(secs, 3), n, len;
    uint8_t        *buf = malloc(bound);

    fuzz_check(buf != NULL, "out of memory");
    n = fuzz_snapshot(before);
    len = dsv4_cache_pack(secs, 3, buf);
    fuzz_check(len <= bound, "pack wrote past its bound");
    fuzz_check(dsv4_cache_unpack(secs, 3, buf, len) == 0, "unpack refused what pack wrote");
    fuzz_check(fuzz_snapshot(after) == n && memcmp(before, after, n * 4) == 0,
               "pack -> unpack changed a float");
    free(buf);
}

static void
fuzz_value(const uint8_t *data, size_t size, int kind)
{
    dsv4_cache_id     id;
    dsv4_cache_value  v, w;
    dsv4_cache_blob  *b;
    int               rc;

    memcpy(id.key, fuzz_key, 32);
    id.kind = kind;
    rc = dsv4_cache_value_decode(data, size, fuzz_fp, &id, FUZZ_BLOCK, FUZZ_BLOCK_TOKENS, &v);
    fuzz_check(rc == 0 || rc == DSV4_CACHE_ERR_CORRUPT || rc == DSV4_CACHE_ERR_FOREIGN,
               "decode returned an unknown code");
    if (rc != 0) {
        fuzz_check(v.payload == NULL && v.payload_len == 0, "a refused value left a payload");
        return;
    }
    fuzz_check(v.payload >= data && v.payload + v.payload_len <= data + size,
               "the payload is not inside the value");
    b = dsv4_cache_value_encode(&v);
    fuzz_check(b != NULL, "out of memory");
    fuzz_check(dsv4_cache_value_decode(b->data, b->len, fuzz_fp, &id, FUZZ_BLOCK,
                                       FUZZ_BLOCK_TOKENS, &w) == 0
               && w.kind == v.kind && w.pos == v.pos && w.mtp_pos == v.mtp_pos
               && w.payload_len == v.payload_len
               && memcmp(w.payload, v.payload, v.payload_len) == 0,
               "a value decoded, re-encoded, did not decode to the same fields");
    dsv4_cache_blob_unref(b);
    if (dsv4_cache_unpack(secs, 3, v.payload, v.payload_len) == 0) {
        fuzz_roundtrip();
    }
}

/* a seed is written only if the reader takes it: the corpus starts valid */
static void
fuzz_write(const char *dir, const char *name, const uint8_t *p, size_t len, uint8_t mode)
{
    dsv4_cache_id    id = { .kind = mode & 2 ? DSV4_CACHE_TAIL : DSV4_CACHE_HIST };
    dsv4_cache_value v;

    char  path[4096];
    FILE *f;

    memcpy(id.key, fuzz_key, 32);
    fuzz_check(mode & 1 ? dsv4_cache_unpack(secs, 3, p, len) == 0
                        : dsv4_cache_value_decode(p, len, fuzz_fp, &id, FUZZ_BLOCK,
                                                  FUZZ_BLOCK_TOKENS, &v) == 0,
               "a seed the reader refuses");
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    fuzz_check(f != NULL, "cannot write a seed");
    fputc(mode, f);
    fwrite(p, 1, len, f);
    fclose(f);
}

/* valid inputs: state of the engine's formats (and some raw floats) */
static void
fuzz_seeds(const char *dir)
{
    size_t            bound = dsv4_cache_pack_bound(secs, 3), len;
    uint8_t          *buf = malloc(bound);
    dsv4_cache_value  v;
    dsv4_cache_blob  *b;

    fuzz_check(buf != NULL, "out of memory");
    for (int i = 0; i < FUZZ_RAW_ROWS * FUZZ_RAW_W; i++) {
        raw_data[i] = (float) i * 0.37f - 1.0f;
    }
    for (int i = 0; i < FUZZ_KV_ROWS * FUZZ_KV_STRIDE; i++) {
        kv_data[i] = (float) ((i * 7) % 15 - 7) * 0.125f;   /* e4m3 codes x 2^-3 */
    }
    kv_data[5] = 1.0e-3f;                                   /* one block stays raw */
    for (int i = 0; i < FUZZ_IDX_ROWS * FUZZ_IDX_W; i++) {
        idx_data[i] = (float) ((i * 3) % 9 - 4) * 0.5f;      /* e2m1 codes x 2^-1 */
    }
    len = dsv4_cache_pack(secs, 3, buf);
    fuzz_write(dir, "payload", buf, len, 1);

    memset(&v, 0, sizeof(v));
    memcpy(v.fp, fuzz_fp, 32);
    memcpy(v.key, fuzz_key, 32);
    v.block = FUZZ_BLOCK;
    v.block_tokens = FUZZ_BLOCK_TOKENS;
    v.pos = (FUZZ_BLOCK + 1) * FUZZ_BLOCK_TOKENS;
    v.payload = buf;
    v.payload_len = len;
    v.kind = DSV4_CACHE_HIST;
    b = dsv4_cache_value_encode(&v);
    fuzz_check(b != NULL, "out of memory");
    fuzz_write(dir, "value-hist", b->data, b->len, 0);
    dsv4_cache_blob_unref(b);

    v.kind = DSV4_CACHE_TAIL;
    v.mtp_pos = v.pos - 1;
    b = dsv4_cache_value_encode(&v);
    fuzz_check(b != NULL, "out of memory");
    fuzz_write(dir, "value-tail", b->data, b->len, 2);
    dsv4_cache_blob_unref(b);
    free(buf);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("DSV4_FUZZ_SEEDS");

    (void) argc;
    (void) argv;
    if (dir != NULL) {
        fuzz_seeds(dir);
    }
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    if (data[0] & 1) {
        if (dsv4_cache_unpack(secs, 3, data + 1, size - 1) == 0) {
            fuzz_roundtrip();
        }
    } else {
        fuzz_value(data + 1, size - 1, data[0] & 2 ? DSV4_CACHE_TAIL : DSV4_CACHE_HIST);
    }
    return 0;
}
