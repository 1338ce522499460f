/*
 * Model configuration: every architectural size comes from here (nothing in
 * the engine assumes Flash's dimensions).  Read from a model directory's
 * config.json (HF dialect) or, failing that, inference/config.json (the
 * reference code's ModelArgs dialect) — V4-MODEL.md §2.
 */
#ifndef DSV4_CONFIG_H
#define DSV4_CONFIG_H

#include <stddef.h>

#define DSV4_MAX_LAYERS 256

typedef struct {
    int   vocab_size;
    int   dim;                  /* D, hidden size */
    int   n_layers;             /* main layers */
    int   n_mtp_layers;         /* 0 or 1 */
    int   n_heads;              /* H */
    int   head_dim;             /* hd: shared K=V vector size */
    int   rope_dim;             /* rd: rotary dims at the END of each vector */
    int   q_lora_rank;          /* R_q */
    int   o_groups;             /* G */
    int   o_lora_rank;          /* R_o */
    int   window;               /* W, sliding window incl. the current token */
    int   compress_ratios[DSV4_MAX_LAYERS]; /* [n_layers + n_mtp_layers]: 0 SWA, 4 CSA, else HCA */
    float rope_theta;           /* base for ratio-0 layers and MTP */
    float compress_rope_theta;  /* base (+YaRN) for compressed layers */
    float rope_factor;          /* YaRN factor */
    int   original_seq_len;     /* YaRN original length; 0 disables YaRN */
    float beta_fast;
    float beta_slow;
    int   max_position;         /* max_position_embeddings */
    int   index_n_heads;        /* Hi */
    int   index_head_dim;       /* di */
    int   index_topk;
    int   n_routed_experts;     /* E */
    int   n_shared_experts;     /* only 1 is supported (the released models) */
    int   n_active_experts;     /* k */
    int   moe_inter_dim;        /* I */
    int   n_hash_layers;
    float route_scale;
    float swiglu_limit;         /* 0 = no clamp */
    int   hc_mult;              /* mHC streams */
    int   hc_sinkhorn_iters;
    float hc_eps;
    float norm_eps;
    int   bos_token_id;
    int   eos_token_id;
    int   expert_fp4;           /* routed experts stored FP4 (1) or FP8 (0) */
} dsv4_config;

/* Loads and validates the config of the model in dir.  Errors name the file
 * and field with expected vs found value.  Returns 0 or -1. */
int dsv4_config_load(dsv4_config *cfg, const char *dir, char *err, size_t errlen);

/* Parses a config from a JSON text (dialect detected by its keys). */
int dsv4_config_parse(dsv4_config *cfg, const char *json, size_t len,
                      const char *what, char *err, size_t errlen);

#endif
