/*
 * Cache keys: the model fingerprint, the block hash chain and the payload
 * checksum.  All byte orders are fixed (little-endian integers, %a floats)
 * so every machine derives the same keys.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "model.h"

/* Bumped whenever what a value holds or how seq_state lays it out changes. */
#define DSV4_CACHE_KV_LAYOUT \
    "kv-layout 1: history = entries (fp8 e4m3 /64, raw rope) + indexer keys (fp4 e2m1 /32);" \
    " tail = ring rows by position, ratio-4 compressor rows 0..3 cols 0..d-1 (kv, score)," \
    " MTP ring"

static void
dsv4_fp_u64(dsv4_sha256 *s, uint64_t v)
{
    uint8_t b[8];

    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t) (v >> (8 * i));
    }
    dsv4_sha256_update(s, b, 8);
}

/* A length-prefixed string (NULL = ""). */
static void
dsv4_fp_str(dsv4_sha256 *s, const char *str)
{
    size_t n = str ? strlen(str) : 0;

    dsv4_fp_u64(s, n);
    dsv4_sha256_update(s, str ? str : "", n);
}

static void
dsv4_fp_config(dsv4_sha256 *s, const dsv4_config *c)
{
    char buf[4096];
    int  n;

    /* every field, as text: %a prints floats exactly */
    n = snprintf(buf, sizeof(buf),
                 "vocab %d dim %d layers %d mtp %d heads %d hd %d rd %d qr %d og %d or %d"
                 " win %d theta %a ctheta %a rf %a osl %d bf %a bs %a maxpos %d ih %d id %d"
                 " itopk %d E %d shared %d k %d I %d hash %d rscale %a swl %a hc %d sk %d"
                 " hceps %a eps %a bos %d eos %d fp4 %d ratios",
                 c->vocab_size, c->dim, c->n_layers, c->n_mtp_layers, c->n_heads, c->head_dim,
                 c->rope_dim, c->q_lora_rank, c->o_groups, c->o_lora_rank, c->window,
                 c->rope_theta, c->compress_rope_theta, c->rope_factor, c->original_seq_len,
                 c->beta_fast, c->beta_slow, c->max_position, c->index_n_heads,
                 c->index_head_dim, c->index_topk, c->n_routed_experts, c->n_shared_experts,
                 c->n_active_experts, c->moe_inter_dim, c->n_hash_layers, c->route_scale,
                 c->swiglu_limit, c->hc_mult, c->hc_sinkhorn_iters, c->hc_eps, c->norm_eps,
                 c->bos_token_id, c->eos_token_id, c->expert_fp4);
    for (int l = 0; l < c->n_layers + c->n_mtp_layers && n > 0 && (size_t) n < sizeof(buf);
         l++) {
        n += snprintf(buf + n, sizeof(buf) - (size_t) n, " %d", c->compress_ratios[l]);
    }
    dsv4_fp_str(s, buf);
}

/* Up to 64 bytes at the start, middle and end of a tensor.  Routed experts
 * other than expert 0 of each layer are skipped: touching every one of them
 * would page in tens of thousands of pages of a real checkpoint. */
static void
dsv4_fp_sample(dsv4_sha256 *s, const dsv4_st_tensor *t)
{
    size_t n = t->nbytes < 64 ? t->nbytes : 64;
    size_t at[3] = { 0, (t->nbytes - n) / 2, t->nbytes - n };

    if (strstr(t->name, ".experts.") != NULL && strstr(t->name, ".experts.0.") == NULL) {
        return;
    }
    for (int k = 0; k < 3 && t->data != NULL; k++) {
        dsv4_sha256_update(s, t->data + at[k], n);
    }
}

void
dsv4_cache_model_fingerprint(const dsv4_model *m, const char *model_id,
                             const char *chat_version, uint8_t out[32])
{
    dsv4_sha256 s;

    dsv4_sha256_init(&s);
    dsv4_fp_str(&s, "dsv4-kv-fingerprint");
    dsv4_fp_u64(&s, DSV4_CACHE_FORMAT_VERSION);
    dsv4_fp_str(&s, DSV4_CACHE_KV_LAYOUT);
    dsv4_fp_config(&s, &m->cfg);
    dsv4_fp_u64(&s, m->st.n_tensors);
    for (size_t i = 0; i < m->st.n_tensors; i++) {
        const dsv4_st_tensor *t = &m->st.tensors[i];

        dsv4_fp_str(&s, t->name);
        dsv4_fp_str(&s, t->dtype_name);
        dsv4_fp_u64(&s, (uint64_t) t->ndim);
        for (int d = 0; d < t->ndim; d++) {
            dsv4_fp_u64(&s, (uint64_t) t->shape[d]);
        }
        dsv4_fp_u64(&s, t->nbytes);
        dsv4_fp_sample(&s, t);
    }
    dsv4_fp_str(&s, model_id);
    dsv4_fp_str(&s, chat_version);
    dsv4_sha256_final(&s, out);
}

void
dsv4_cache_chain(const uint8_t fp[32], const void *salt, size_t salt_len, int block_tokens,
                 const int32_t *tokens, int nblocks, uint8_t (*keys)[32])
{
    static const char root[] = "dsv4-kv-root", block[] = "dsv4-kv-block";
    uint8_t           prev[32], b[4];
    dsv4_sha256       s;

    dsv4_sha256_init(&s);
    dsv4_sha256_update(&s, root, sizeof(root));
    dsv4_sha256_update(&s, fp, 32);
    dsv4_fp_u64(&s, salt_len);
    if (salt_len > 0) {
        dsv4_sha256_update(&s, salt, salt_len);
    }
    dsv4_sha256_final(&s, prev);
    for (int i = 0; i < nblocks; i++) {
        dsv4_sha256_init(&s);
        dsv4_sha256_update(&s, block, sizeof(block));
        dsv4_sha256_update(&s, prev, 32);
        for (int k = 0; k < 4; k++) {
            b[k] = (uint8_t) ((uint32_t) block_tokens >> (8 * k));
        }
        dsv4_sha256_update(&s, b, 4);
        for (int t = 0; t < block_tokens; t++) {
            uint32_t v = (uint32_t) tokens[(size_t) i * block_tokens + t];
            for (int k = 0; k < 4; k++) {
                b[k] = (uint8_t) (v >> (8 * k));
            }
            dsv4_sha256_update(&s, b, 4);
        }
        dsv4_sha256_final(&s, keys[i]);
        memcpy(prev, keys[i], 32);
    }
}

static inline uint64_t
dsv4_rd64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++) {
        v |= (uint64_t) p[i] << (8 * i);
    }
    return v;
}

static inline uint64_t
dsv4_lane(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h << 31 | h >> 33;
}

/* Four independent lanes over 32-byte strides (so the multiplies overlap),
 * then the tail and the length.  Each step is a bijection of the lane for a
 * fixed input word, so any change confined to one word always changes the
 * result. */
uint64_t
dsv4_cache_sum64(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t       l[4] = { 0x243F6A8885A308D3ull, 0x13198A2E03707344ull,
                            0xA4093822299F31D0ull, 0x082EFA98EC4E6C89ull };
    size_t         i = 0;

    for (; i + 32 <= n; i += 32) {
        l[0] = dsv4_lane(l[0], dsv4_rd64(p + i));
        l[1] = dsv4_lane(l[1], dsv4_rd64(p + i + 8));
        l[2] = dsv4_lane(l[2], dsv4_rd64(p + i + 16));
        l[3] = dsv4_lane(l[3], dsv4_rd64(p + i + 24));
    }
    for (; i + 8 <= n; i += 8) {
        l[0] = dsv4_lane(l[0], dsv4_rd64(p + i));
    }
    if (i < n) {
        uint8_t last[8] = { 0 };
        memcpy(last, p + i, n - i);
        l[1] = dsv4_lane(l[1], dsv4_rd64(last));
    }
    uint64_t h = dsv4_lane(n, l[0]);
    for (int k = 1; k < 4; k++) {
        h = dsv4_lane(h, l[k]);
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

void
dsv4_cache_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}
