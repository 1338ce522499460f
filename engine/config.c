/*
 * config.json / inference/config.json reader.  One table maps each field to
 * its key in both dialects, so the two cannot drift apart.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "util.h"

typedef enum { FIELD_INT, FIELD_FLOAT } dsv4_field_type;

typedef struct {
    const char     *hf;        /* key in config.json ("a.b" = nested) */
    const char     *inference; /* key in inference/config.json */
    size_t          offset;
    dsv4_field_type type;
    int             required;
    double          dflt;
} dsv4_config_field;

#define F(hf, inf, field, type, req, dflt) \
    { hf, inf, offsetof(dsv4_config, field), type, req, dflt }

static const dsv4_config_field dsv4_config_fields[] = {
    F("vocab_size", "vocab_size", vocab_size, FIELD_INT, 1, 0),
    F("hidden_size", "dim", dim, FIELD_INT, 1, 0),
    F("num_hidden_layers", "n_layers", n_layers, FIELD_INT, 1, 0),
    F("num_nextn_predict_layers", "n_mtp_layers", n_mtp_layers, FIELD_INT, 0, 1),
    F("num_attention_heads", "n_heads", n_heads, FIELD_INT, 1, 0),
    F("head_dim", "head_dim", head_dim, FIELD_INT, 1, 0),
    F("qk_rope_head_dim", "rope_head_dim", rope_dim, FIELD_INT, 1, 0),
    F("q_lora_rank", "q_lora_rank", q_lora_rank, FIELD_INT, 1, 0),
    F("o_groups", "o_groups", o_groups, FIELD_INT, 1, 0),
    F("o_lora_rank", "o_lora_rank", o_lora_rank, FIELD_INT, 1, 0),
    F("sliding_window", "window_size", window, FIELD_INT, 1, 0),
    F("rope_theta", "rope_theta", rope_theta, FIELD_FLOAT, 1, 0),
    F("compress_rope_theta", "compress_rope_theta", compress_rope_theta, FIELD_FLOAT, 1, 0),
    F("rope_scaling.factor", "rope_factor", rope_factor, FIELD_FLOAT, 0, 1),
    F("rope_scaling.original_max_position_embeddings", "original_seq_len",
      original_seq_len, FIELD_INT, 0, 0),
    F("rope_scaling.beta_fast", "beta_fast", beta_fast, FIELD_FLOAT, 0, 32),
    F("rope_scaling.beta_slow", "beta_slow", beta_slow, FIELD_FLOAT, 0, 1),
    F("max_position_embeddings", "max_seq_len", max_position, FIELD_INT, 0, 1048576),
    F("index_n_heads", "index_n_heads", index_n_heads, FIELD_INT, 1, 0),
    F("index_head_dim", "index_head_dim", index_head_dim, FIELD_INT, 1, 0),
    F("index_topk", "index_topk", index_topk, FIELD_INT, 1, 0),
    F("n_routed_experts", "n_routed_experts", n_routed_experts, FIELD_INT, 1, 0),
    F("n_shared_experts", "n_shared_experts", n_shared_experts, FIELD_INT, 0, 1),
    F("num_experts_per_tok", "n_activated_experts", n_active_experts, FIELD_INT, 1, 0),
    F("moe_intermediate_size", "moe_inter_dim", moe_inter_dim, FIELD_INT, 1, 0),
    F("num_hash_layers", "n_hash_layers", n_hash_layers, FIELD_INT, 0, 0),
    F("routed_scaling_factor", "route_scale", route_scale, FIELD_FLOAT, 1, 0),
    F("swiglu_limit", "swiglu_limit", swiglu_limit, FIELD_FLOAT, 0, 0),
    F("hc_mult", "hc_mult", hc_mult, FIELD_INT, 1, 0),
    F("hc_sinkhorn_iters", "hc_sinkhorn_iters", hc_sinkhorn_iters, FIELD_INT, 1, 0),
    F("hc_eps", "hc_eps", hc_eps, FIELD_FLOAT, 0, 1e-6),
    F("rms_norm_eps", "norm_eps", norm_eps, FIELD_FLOAT, 0, 1e-6),
    F("bos_token_id", NULL, bos_token_id, FIELD_INT, 0, 0),
    F("eos_token_id", NULL, eos_token_id, FIELD_INT, 0, 1),
};

#undef F

/* Looks up "a.b" style nested keys. */
static json_t *
dsv4_config_get(json_t *root, const char *key)
{
    char        part[128];
    const char *dot;

    while ((dot = strchr(key, '.')) != NULL) {
        size_t n = (size_t) (dot - key);
        if (n >= sizeof(part)) {
            return NULL;
        }
        memcpy(part, key, n);
        part[n] = '\0';
        root = json_object_get(root, part);
        if (!json_is_object(root)) {
            return NULL;
        }
        key = dot + 1;
    }
    return json_object_get(root, key);
}

static int
dsv4_config_read_fields(dsv4_config *cfg, json_t *root, int hf, const char *what,
                        char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof(dsv4_config_fields) / sizeof(dsv4_config_fields[0]); i++) {
        const dsv4_config_field *f = &dsv4_config_fields[i];
        const char *key = hf ? f->hf : f->inference;
        json_t     *v = key ? dsv4_config_get(root, key) : NULL;
        double      d = f->dflt;

        if (v == NULL || json_is_null(v)) {
            if (f->required) {
                return dsv4_error(err, errlen, "%s: missing required field \"%s\"", what, key);
            }
        } else if (f->type == FIELD_INT) {
            if (!json_is_integer(v) || json_integer_value(v) < 0
                || json_integer_value(v) > 0x7fffffff) {
                return dsv4_error(err, errlen,
                                  "%s: field \"%s\" must be a non-negative integer", what, key);
            }
            d = (double) json_integer_value(v);
        } else {
            if (!json_is_number(v) || !isfinite(json_number_value(v))) {
                return dsv4_error(err, errlen, "%s: field \"%s\" must be a number", what, key);
            }
            d = json_number_value(v);
        }
        if (f->type == FIELD_INT) {
            *(int *) ((char *) cfg + f->offset) = (int) d;
        } else {
            *(float *) ((char *) cfg + f->offset) = (float) d;
        }
    }
    return 0;
}

/* Rejects the configs of neighbouring model families by name. */
static int
dsv4_config_check_family(json_t *root, int hf, const char *what, char *err, size_t errlen)
{
    const char *key;
    json_t     *v;

    json_object_foreach(root, key, v) {
        if (strncmp(key, "dspark", 6) == 0) {
            return dsv4_error(err, errlen,
                              "%s: unsupported model: DSpark MTP checkpoint (field \"%s\");"
                              " only DeepSeek-V4 with the standard MTP block is supported",
                              what, key);
        }
        if (strcmp(key, "text_config") == 0 || strcmp(key, "vision_config") == 0) {
            return dsv4_error(err, errlen, "%s: unsupported model: field \"%s\""
                              " (multimodal / DeepSeek-V4.1 layout)", what, key);
        }
    }
    if (!hf) {
        return 0;
    }
    v = json_object_get(root, "model_type");
    if (!json_is_string(v)) {
        return dsv4_error(err, errlen, "%s: missing required field \"model_type\"", what);
    }
    if (strcmp(json_string_value(v), "deepseek_v4") != 0) {
        return dsv4_error(err, errlen, "%s: unsupported model_type \"%s\" (expected \"deepseek_v4\")%s",
                          what, json_string_value(v),
                          strcmp(json_string_value(v), "deepseek_v41") == 0
                              ? ": DeepSeek-V4.1 is a different architecture" : "");
    }
    v = json_object_get(root, "scoring_func");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "sqrtsoftplus") != 0)) {
        return dsv4_error(err, errlen, "%s: unsupported scoring_func (expected \"sqrtsoftplus\")", what);
    }
    v = json_object_get(root, "hidden_act");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)) {
        return dsv4_error(err, errlen, "%s: unsupported hidden_act (expected \"silu\")", what);
    }
    v = json_object_get(root, "num_key_value_heads");
    if (v && (!json_is_integer(v) || json_integer_value(v) != 1)) {
        return dsv4_error(err, errlen, "%s: unsupported num_key_value_heads (expected 1)", what);
    }
    v = json_object_get(root, "tie_word_embeddings");
    if (json_is_true(v)) {
        return dsv4_error(err, errlen, "%s: unsupported tie_word_embeddings true (expected false)", what);
    }
    v = dsv4_config_get(root, "quantization_config.weight_block_size");
    if (v && !(json_is_array(v) && json_array_size(v) == 2
               && json_integer_value(json_array_get(v, 0)) == 128
               && json_integer_value(json_array_get(v, 1)) == 128)) {
        return dsv4_error(err, errlen,
                          "%s: unsupported quantization_config.weight_block_size (expected [128, 128])",
                          what);
    }
    return 0;
}

/* Consistency of the sizes: everything the kernels rely on. */
static int
dsv4_config_validate(dsv4_config *c, const char *what, char *err, size_t errlen)
{
#define NEED(cond, ...) \
    do { if (!(cond)) { char m_[256]; snprintf(m_, sizeof(m_), __VA_ARGS__); \
         return dsv4_error(err, errlen, "%s: %s", what, m_); } } while (0)

    NEED(c->vocab_size > 0, "vocab_size must be > 0");
    NEED(c->dim > 0 && c->dim % 32 == 0, "hidden_size %d must be a positive multiple of 32", c->dim);
    NEED(c->n_layers > 0, "num_hidden_layers must be > 0");
    NEED(c->n_mtp_layers == 0 || c->n_mtp_layers == 1,
         "num_nextn_predict_layers %d not supported (expected 0 or 1)", c->n_mtp_layers);
    NEED(c->n_layers + c->n_mtp_layers <= DSV4_MAX_LAYERS, "too many layers (%d, max %d)",
         c->n_layers + c->n_mtp_layers, DSV4_MAX_LAYERS);
    NEED(c->n_heads > 0, "num_attention_heads must be > 0");
    NEED(c->rope_dim > 0 && c->rope_dim % 2 == 0, "qk_rope_head_dim %d must be even and > 0",
         c->rope_dim);
    NEED(c->head_dim > c->rope_dim && (c->head_dim - c->rope_dim) % 64 == 0,
         "head_dim %d minus qk_rope_head_dim %d must be a positive multiple of 64 (FP8 KV blocks)",
         c->head_dim, c->rope_dim);
    NEED(c->q_lora_rank > 0, "q_lora_rank must be > 0");
    NEED(c->o_groups > 0 && c->n_heads % c->o_groups == 0,
         "o_groups %d must divide num_attention_heads %d", c->o_groups, c->n_heads);
    NEED(c->o_lora_rank > 0, "o_lora_rank must be > 0");
    NEED(c->window > 0, "sliding_window must be > 0");
    NEED(c->index_n_heads > 0, "index_n_heads must be > 0");
    NEED(c->index_head_dim > c->rope_dim && (c->index_head_dim & (c->index_head_dim - 1)) == 0
         && c->index_head_dim % 32 == 0,
         "index_head_dim %d must be a power of two, a multiple of 32 and > qk_rope_head_dim",
         c->index_head_dim);
    NEED(c->index_topk > 0, "index_topk must be > 0");
    NEED(c->n_routed_experts > 0, "n_routed_experts must be > 0");
    NEED(c->n_active_experts > 0 && c->n_active_experts <= c->n_routed_experts,
         "num_experts_per_tok %d must be in [1, n_routed_experts %d]",
         c->n_active_experts, c->n_routed_experts);
    NEED(c->n_shared_experts == 1, "n_shared_experts %d not supported (expected 1)",
         c->n_shared_experts);
    NEED(c->moe_inter_dim > 0 && c->moe_inter_dim % 32 == 0,
         "moe_intermediate_size %d must be a positive multiple of 32", c->moe_inter_dim);
    NEED(c->n_hash_layers <= c->n_layers, "num_hash_layers %d exceeds num_hidden_layers %d",
         c->n_hash_layers, c->n_layers);
    NEED(c->hc_mult > 0 && c->hc_mult <= 16, "hc_mult %d must be in [1, 16]", c->hc_mult);
    NEED(c->hc_sinkhorn_iters > 0, "hc_sinkhorn_iters must be > 0");
    NEED(c->rope_theta > 0 && c->compress_rope_theta > 0, "rope thetas must be > 0");
    NEED(c->rope_factor >= 1, "rope factor %g must be >= 1", c->rope_factor);
    NEED(c->norm_eps > 0 && c->hc_eps >= 0, "eps values must be positive");
    NEED(c->max_position > 0, "max_position_embeddings must be > 0");
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) {
        NEED(c->compress_ratios[l] >= 0, "compress_ratios[%d] = %d is negative", l,
             c->compress_ratios[l]);
    }
    NEED(c->n_mtp_layers == 0 || c->compress_ratios[c->n_layers] == 0,
         "compress_ratios[%d] (the MTP block) = %d, expected 0", c->n_layers,
         c->compress_ratios[c->n_layers]);
#undef NEED
    return 0;
}

int
dsv4_config_parse(dsv4_config *cfg, const char *json, size_t len, const char *what,
                  char *err, size_t errlen)
{
    json_error_t jerr;
    json_t      *root, *v;
    int          hf, rc = -1;
    size_t       nlayers;

    memset(cfg, 0, sizeof(*cfg));
    root = json_loadb(json, len, 0, &jerr);
    if (root == NULL) {
        return dsv4_error(err, errlen, "%s: invalid JSON at line %d: %s", what, jerr.line,
                          jerr.text);
    }
    if (!json_is_object(root)) {
        dsv4_error(err, errlen, "%s: expected a JSON object", what);
        goto done;
    }
    /* The HF dialect names the hidden size hidden_size, ModelArgs names it dim. */
    hf = json_object_get(root, "dim") == NULL || json_object_get(root, "model_type") != NULL;
    if (dsv4_config_check_family(root, hf, what, err, errlen) != 0
        || dsv4_config_read_fields(cfg, root, hf, what, err, errlen) != 0) {
        goto done;
    }
    v = json_object_get(root, "expert_dtype");
    cfg->expert_fp4 = 1;
    if (v != NULL) {
        if (json_is_string(v) && strcmp(json_string_value(v), "fp4") == 0) {
            cfg->expert_fp4 = 1;
        } else if (json_is_string(v) && strcmp(json_string_value(v), "fp8") == 0) {
            cfg->expert_fp4 = 0;
        } else {
            dsv4_error(err, errlen, "%s: unsupported expert_dtype (expected \"fp4\" or \"fp8\")", what);
            goto done;
        }
    }
    v = json_object_get(root, "compress_ratios");
    nlayers = (size_t) cfg->n_layers + (size_t) cfg->n_mtp_layers;
    if (!json_is_array(v)) {
        dsv4_error(err, errlen, "%s: missing required field \"compress_ratios\"", what);
        goto done;
    }
    if (json_array_size(v) != nlayers || nlayers > DSV4_MAX_LAYERS) {
        dsv4_error(err, errlen,
                   "%s: compress_ratios has %zu entries, expected %zu (layers + MTP layers)",
                   what, json_array_size(v), nlayers);
        goto done;
    }
    for (size_t i = 0; i < nlayers; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 1 << 20) {
            dsv4_error(err, errlen, "%s: compress_ratios[%zu] is not a valid ratio", what, i);
            goto done;
        }
        cfg->compress_ratios[i] = (int) json_integer_value(e);
    }
    rc = dsv4_config_validate(cfg, what, err, errlen);
done:
    json_decref(root);
    return rc;
}

static char *
dsv4_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long  n;

    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1L << 26)
        && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t) n + 1)) != NULL) {
        if (fread(buf, 1, (size_t) n, f) != (size_t) n) {
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
            *len = (size_t) n;
        }
    }
    fclose(f);
    return buf;
}

int
dsv4_config_load(dsv4_config *cfg, const char *dir, char *err, size_t errlen)
{
    char   path[4096];
    char  *text;
    size_t len = 0;
    int    rc;

    snprintf(path, sizeof(path), "%s/config.json", dir);
    text = dsv4_read_file(path, &len);
    if (text == NULL && errno == ENOENT) {
        snprintf(path, sizeof(path), "%s/inference/config.json", dir);
        text = dsv4_read_file(path, &len);
    }
    if (text == NULL) {
        return dsv4_error(err, errlen, "%s/config.json: cannot read (nor inference/config.json)",
                          dir);
    }
    rc = dsv4_config_parse(cfg, text, len, path, err, errlen);
    free(text);
    return rc;
}
