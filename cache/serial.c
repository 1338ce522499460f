/*
 * The value format shared by every tier (memory, disk files, Redis values):
 * one msgpack array
 *
 *   [ "dsv4kv", format, kind, fingerprint bin32, key bin32, block, block_tokens,
 *     pos, mtp_pos, checksum, payload bin ]
 *
 * kind is 'h' (history) or 't' (tail); pos is (block+1) * block_tokens;
 * checksum = dsv4_cache_sum64 over the payload mixed with the header
 * integers, so a reader detects a truncated, flipped or spliced value.  The
 * array must span the whole blob: trailing bytes are corruption too.
 */
#include <msgpack.h>
#include <string.h>

#include "internal.h"

static const char dsv4_value_magic[] = "dsv4kv";

static uint64_t
dsv4_value_sum(const dsv4_cache_value *v)
{
    uint8_t meta[20];
    uint32_t f[5] = { (uint32_t) v->kind, v->block, v->block_tokens, v->pos, v->mtp_pos };

    for (int i = 0; i < 5; i++) {
        for (int k = 0; k < 4; k++) {
            meta[4 * i + k] = (uint8_t) (f[i] >> (8 * k));
        }
    }
    return dsv4_cache_sum64(v->payload, v->payload_len)
           ^ dsv4_cache_sum64(meta, sizeof(meta)) * 0xD6E8FEB86659FD93ull;
}

/* msgpack writer into a preallocated blob: {blob, used}. */
typedef struct {
    dsv4_cache_blob *b;
    size_t           used;
} dsv4_value_out;

static int
dsv4_value_write(void *data, const char *buf, size_t len)
{
    dsv4_value_out *o = data;

    if (len > o->b->len - o->used) {
        return -1;
    }
    memcpy(o->b->data + o->used, buf, len);
    o->used += len;
    return 0;
}

dsv4_cache_blob *
dsv4_cache_value_encode(const dsv4_cache_value *v)
{
    dsv4_value_out o = { dsv4_cache_blob_new(v->payload_len + 256), 0 };
    msgpack_packer pk;
    int            rc = 0;

    if (o.b == NULL) {
        return NULL;
    }
    msgpack_packer_init(&pk, &o, dsv4_value_write);
    rc |= msgpack_pack_array(&pk, 11);
    rc |= msgpack_pack_str_with_body(&pk, dsv4_value_magic, sizeof(dsv4_value_magic) - 1);
    rc |= msgpack_pack_uint32(&pk, DSV4_CACHE_FORMAT_VERSION);
    rc |= msgpack_pack_uint32(&pk, (uint32_t) v->kind);
    rc |= msgpack_pack_bin_with_body(&pk, v->fp, 32);
    rc |= msgpack_pack_bin_with_body(&pk, v->key, 32);
    rc |= msgpack_pack_uint32(&pk, v->block);
    rc |= msgpack_pack_uint32(&pk, v->block_tokens);
    rc |= msgpack_pack_uint32(&pk, v->pos);
    rc |= msgpack_pack_uint32(&pk, v->mtp_pos);
    rc |= msgpack_pack_uint64(&pk, dsv4_value_sum(v));
    rc |= msgpack_pack_bin_with_body(&pk, v->payload, v->payload_len);
    if (rc != 0) {
        dsv4_cache_blob_unref(o.b);
        return NULL;
    }
    o.b->len = o.used;      /* the allocation stays; only the length shrinks */
    return o.b;
}

/*
 * The shape guard, run before msgpack-c sees untrusted bytes: msgpack-c
 * allocates a container's objects as soon as it reads its header, so one
 * flipped byte claiming an array of 2^32 elements would ask for ~100 GB.
 * A value is one fixarray of 11 scalars (strings, unsigned integers, bins);
 * this walks exactly that, bounds-checked, and refuses anything else.
 */
static int
dsv4_value_shape_ok(const uint8_t *p, size_t len)
{
    size_t off = 1;

    if (len < 1 || p[0] != 0x9b) {
        return 0;
    }
    for (int i = 0; i < 11; i++) {
        size_t   hdr, body = 0;
        uint8_t  t;

        if (off >= len) {
            return 0;
        }
        t = p[off];
        if (t <= 0x7f) {                                /* positive fixint */
            hdr = 1;
        } else if (t >= 0xa0 && t <= 0xbf) {            /* fixstr */
            hdr = 1;
            body = t & 0x1f;
        } else if (t == 0xcc || t == 0xcd || t == 0xce || t == 0xcf) {   /* uint 8..64 */
            hdr = 1 + ((size_t) 1 << (t - 0xcc));
        } else if (t == 0xc4 || t == 0xd9) {            /* bin8, str8 */
            hdr = 2;
        } else if (t == 0xc5 || t == 0xda) {            /* bin16, str16 */
            hdr = 3;
        } else if (t == 0xc6 || t == 0xdb) {            /* bin32, str32 */
            hdr = 5;
        } else {
            return 0;
        }
        if (len - off < hdr) {
            return 0;
        }
        if (hdr > 1 && t != 0xcc && t != 0xcd && t != 0xce && t != 0xcf) {
            for (size_t k = 1; k < hdr; k++) {
                body = body << 8 | p[off + k];
            }
        }
        off += hdr;
        if (len - off < body) {
            return 0;
        }
        off += body;
    }
    return off == len;
}

static int
dsv4_obj_u32(const msgpack_object *o, uint32_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX) {
        return -1;
    }
    *out = (uint32_t) o->via.u64;
    return 0;
}

int
dsv4_cache_value_decode(const uint8_t *blob, size_t len, const uint8_t fp[32],
                        const dsv4_cache_id *expect, uint32_t block, uint32_t block_tokens,
                        dsv4_cache_value *v)
{
    msgpack_unpacked   und;
    size_t             off = 0;
    const msgpack_object *a;
    uint32_t           version, kind;
    int                rc = DSV4_CACHE_ERR_CORRUPT;

    memset(v, 0, sizeof(*v));
    msgpack_unpacked_init(&und);
    if (!dsv4_value_shape_ok(blob, len)
        || msgpack_unpack_next(&und, (const char *) blob, len, &off) != MSGPACK_UNPACK_SUCCESS
        || off != len || und.data.type != MSGPACK_OBJECT_ARRAY
        || und.data.via.array.size != 11) {
        goto done;
    }
    a = und.data.via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_STR || a[0].via.str.size != sizeof(dsv4_value_magic) - 1
        || memcmp(a[0].via.str.ptr, dsv4_value_magic, sizeof(dsv4_value_magic) - 1) != 0
        || dsv4_obj_u32(&a[1], &version) != 0 || dsv4_obj_u32(&a[2], &kind) != 0
        || a[3].type != MSGPACK_OBJECT_BIN || a[3].via.bin.size != 32
        || a[4].type != MSGPACK_OBJECT_BIN || a[4].via.bin.size != 32
        || dsv4_obj_u32(&a[5], &v->block) != 0 || dsv4_obj_u32(&a[6], &v->block_tokens) != 0
        || dsv4_obj_u32(&a[7], &v->pos) != 0 || dsv4_obj_u32(&a[8], &v->mtp_pos) != 0
        || a[9].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[10].type != MSGPACK_OBJECT_BIN) {
        goto done;
    }
    /* the payload must be a view into blob (msgpack-c references bin data) */
    if ((const uint8_t *) a[10].via.bin.ptr < blob
        || (const uint8_t *) a[10].via.bin.ptr + a[10].via.bin.size > blob + len) {
        goto done;
    }
    v->kind = (int) kind;
    memcpy(v->fp, a[3].via.bin.ptr, 32);
    memcpy(v->key, a[4].via.bin.ptr, 32);
    v->payload = (const uint8_t *) a[10].via.bin.ptr;
    v->payload_len = a[10].via.bin.size;
    /* another format or model is foreign, not corrupt: it is a valid value
     * that is not ours (checked before the checksum, which a foreign format
     * may compute differently) */
    if (version != DSV4_CACHE_FORMAT_VERSION || memcmp(v->fp, fp, 32) != 0) {
        rc = DSV4_CACHE_ERR_FOREIGN;
        goto done;
    }
    if (dsv4_value_sum(v) != a[9].via.u64) {
        goto done;
    }
    if (v->kind != expect->kind || memcmp(v->key, expect->key, 32) != 0 || v->block != block
        || v->block_tokens != block_tokens
        || (uint64_t) v->pos != ((uint64_t) block + 1) * block_tokens || v->mtp_pos > v->pos
        || (v->kind == DSV4_CACHE_HIST && v->mtp_pos != 0)) {
        rc = DSV4_CACHE_ERR_FOREIGN;
        goto done;
    }
    rc = 0;
done:
    msgpack_unpacked_destroy(&und);
    if (rc != 0) {
        memset(v, 0, sizeof(*v));
    }
    return rc;
}
