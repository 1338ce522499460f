/*
 * Model weights (internal).  Matrices stay in checkpoint format inside the
 * mmapped shards; only small vectors (norm weights, biases, mHC parameters)
 * are converted to owned float32 arrays at load.
 */
#ifndef DSV4_MODEL_H
#define DSV4_MODEL_H

#include "dsv4.h"
#include "safetensors.h"

typedef struct {
    dsv4_mat     wkv;       /* [c*d, D] */
    dsv4_mat     wgate;     /* [c*d, D] */
    const float *ape;       /* [m, c*d] */
    const float *norm;      /* [d] */
    int          d;         /* output entry size */
    int          c;         /* 2 (overlapping, ratio 4) or 1 */
} dsv4_compressor_w;

typedef struct {
    dsv4_mat          wq_a;       /* [R_q, D] fp8 */
    const float      *q_norm;     /* [R_q] */
    dsv4_mat          wq_b;       /* [H*hd, R_q] fp8 */
    dsv4_mat          wkv;        /* [hd, D] fp8 */
    const float      *kv_norm;    /* [hd] */
    dsv4_mat          wo_a;       /* [G*R_o, H*hd/G] fp8, block-diagonal over groups */
    dsv4_mat          wo_b;       /* [D, G*R_o] fp8 */
    const float      *attn_sink;  /* [H] */
    dsv4_compressor_w cmp;        /* ratio > 0: d = hd */
    dsv4_mat          idx_wq_b;   /* ratio 4: [Hi*di, R_q] fp8 */
    dsv4_mat          idx_wproj;  /* ratio 4: [Hi, D] bf16 */
    dsv4_compressor_w idx_cmp;    /* ratio 4: d = di */
} dsv4_attn_w;

typedef struct {
    dsv4_mat w1;    /* [I, D] gate */
    dsv4_mat w3;    /* [I, D] up */
    dsv4_mat w2;    /* [D, I] down */
} dsv4_expert_w;

typedef struct {
    dsv4_mat       gate;       /* [E, D] bf16 */
    const float   *gate_bias;  /* [E], NULL on hash layers */
    const int32_t *tid2eid;    /* [vocab, k], hash layers only */
    dsv4_expert_w *experts;    /* [E] */
    dsv4_expert_w  shared;
} dsv4_moe_w;

typedef struct {
    int          ratio;        /* compress ratio: 0 SWA, 4 CSA, other HCA */
    int          hash;         /* routed by tid2eid */
    dsv4_mat     hc_attn_fn;   /* [(2+hc)*hc, hc*D] f32 */
    const float *hc_attn_base; /* [(2+hc)*hc] */
    const float *hc_attn_scale;/* [3] */
    dsv4_mat     hc_ffn_fn;
    const float *hc_ffn_base;
    const float *hc_ffn_scale;
    const float *attn_norm;    /* [D] */
    const float *ffn_norm;     /* [D] */
    dsv4_attn_w  attn;
    dsv4_moe_w   ffn;
} dsv4_layer_w;

typedef struct {
    dsv4_mat     e_proj;       /* [D, D] fp8 */
    dsv4_mat     h_proj;       /* [D, D] fp8 */
    const float *enorm;        /* [D] */
    const float *hnorm;        /* [D] */
    const float *norm;         /* [D] */
    dsv4_mat     hc_head_fn;   /* [hc, hc*D] */
    const float *hc_head_base; /* [hc] */
    const float *hc_head_scale;/* [1] */
} dsv4_mtp_w;

struct dsv4_model {
    dsv4_config      cfg;
    dsv4_st          st;
    int              flags;
    dsv4_mat         embed;         /* [vocab, D] bf16 */
    dsv4_mat         head;          /* [vocab, D] bf16 */
    const float     *norm;          /* [D] */
    dsv4_mat         hc_head_fn;    /* [hc, hc*D] */
    const float     *hc_head_base;  /* [hc] */
    const float     *hc_head_scale; /* [1] */
    dsv4_layer_w    *layers;        /* [n_layers + n_mtp_layers]; MTP block last */
    dsv4_mtp_w       mtp;
    float           *freqs_main;    /* [rd/2] plain RoPE table (ratio-0 layers, MTP) */
    float           *freqs_comp;    /* [rd/2] YaRN table (compressed layers) */
    void           **owned;         /* converted arrays freed with the model */
    int              n_owned;
    int              cap_owned;
    dsv4_model_stats stats;
};

#endif
