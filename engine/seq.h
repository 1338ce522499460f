/*
 * Per-sequence KV state (V4-MODEL.md §5.1), internal to the engine.
 */
#ifndef DSV4_SEQ_H
#define DSV4_SEQ_H

#include "model.h"

/* Compressor state: the layer inputs of the block being pooled (and, for the
 * overlapping ratio-4 compressor, of the previous block). */
typedef struct {
    float *kv;      /* [rows, c*d]: rows = 2m (overlap: previous block rows 0..m-1,
                       current block rows m..2m-1) or m */
    float *score;   /* [rows, c*d], ape already added; -inf = empty slot */
    int    rows;
} dsv4_cmp_state;

typedef struct {
    float         *ring;        /* [W, hd]: window K=V vectors, slot = pos mod W */
    float         *entries;     /* [max_ctx/m, hd]: compressed entries c_j */
    int            n_entries;
    dsv4_cmp_state cmp;
    float         *idx_keys;    /* [max_ctx/4, di]: indexer keys (ratio 4 only) */
    int            n_idx_keys;
    dsv4_cmp_state idx_cmp;
} dsv4_layer_state;

struct dsv4_seq {
    const dsv4_model *m;
    int               max_ctx;
    int               pos;        /* positions processed by the main model */
    int               mtp_pos;    /* positions processed by the MTP block */
    dsv4_layer_state *layers;     /* [n_layers + n_mtp_layers] */
};

#endif
