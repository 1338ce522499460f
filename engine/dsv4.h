/*
 * dsv4 engine: the public C API (no nginx here).
 *
 *   dsv4_model  weights of one checkpoint, mmapped read-only; immutable after
 *               load, so any number of threads may share it.
 *   dsv4_seq    the state of one sequence (KV: window ring, compressed
 *               entries, indexer keys, compressor states).  One owner at a time.
 *   dsv4_ctx    scratch activations for one engine thread, sized once for a
 *               maximum chunk and context; the forward pass allocates nothing.
 *
 * All functions return 0 / a pointer on success and -1 / NULL on failure with
 * a one-line message in err; none aborts.
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kernels.h"

typedef struct dsv4_model dsv4_model;
typedef struct dsv4_seq   dsv4_seq;
typedef struct dsv4_ctx   dsv4_ctx;

/* Validate the tensor inventory (names, dtypes, shapes, byte ranges) without
 * reading any weight data: used for real-size layouts made of holes. */
#define DSV4_LOAD_LAYOUT_ONLY 1

typedef struct {
    uint64_t params;        /* logical parameters, main model (FP4: 2 per byte) */
    uint64_t params_mtp;    /* logical parameters of the MTP block */
    uint64_t params_active; /* parameters read per token (incl. MTP, k experts) */
    size_t   mapped_bytes;  /* bytes of checkpoint mapped */
    size_t   n_tensors;
    int      n_shards;
} dsv4_model_stats;

int  dsv4_model_load(dsv4_model **out, const char *dir, int flags, char *err, size_t errlen);
void dsv4_model_free(dsv4_model *m);
const dsv4_config *dsv4_model_config(const dsv4_model *m);
void dsv4_model_get_stats(const dsv4_model *m, dsv4_model_stats *st);

/* A sequence able to hold max_ctx positions. */
dsv4_seq *dsv4_seq_new(const dsv4_model *m, int max_ctx, char *err, size_t errlen);
void      dsv4_seq_free(dsv4_seq *s);
/* Forgets every token: the next forward starts at position 0. */
void      dsv4_seq_reset(dsv4_seq *s);
/* Number of positions already processed. */
int       dsv4_seq_pos(const dsv4_seq *s);

/* Scratch for chunks of up to max_chunk tokens and sequences of up to
 * max_ctx positions.  be: the backend (borrowed; e.g. dsv4_backend_cpu_scalar()). */
dsv4_ctx *dsv4_ctx_new(const dsv4_model *m, const dsv4_backend *be, int max_chunk,
                       int max_ctx, char *err, size_t errlen);
void      dsv4_ctx_free(dsv4_ctx *c);

/* Appends tokens[n] (n <= max_chunk) to s at positions dsv4_seq_pos(s)...
 * If logits != NULL, writes the last token's logits [vocab_size] there.
 * Chunk boundaries do not change results: any split of a prompt gives the
 * same logits as token-by-token decoding. */
int dsv4_forward(dsv4_ctx *c, dsv4_seq *s, const int32_t *tokens, int n, float *logits,
                 char *err, size_t errlen);

/* Several sequences in one step: their rows share every pass over the
 * weights (the reason continuous batching pays off).  Each item appends
 * tokens[n] to its own sequence; at most one item per sequence; the rows of
 * all items together must fit max_chunk.  Results are the same as running
 * each item alone with dsv4_forward(). */
typedef struct {
    dsv4_seq      *seq;
    const int32_t *tokens;  /* [n], borrowed for the call */
    int            n;
    float         *logits;  /* [vocab_size] for the item's last token, or NULL */
} dsv4_batch_item;

int dsv4_forward_batch(dsv4_ctx *c, const dsv4_batch_item *items, int nitems, char *err,
                       size_t errlen);

/* The main model's last-layer hc streams [hc_mult, dim] of row i of the
 * last forward call (rows in item order; valid until the next call). */
const float *dsv4_ctx_hidden(const dsv4_ctx *c, int i);

/* MTP block: from the hidden streams of position t (dsv4_ctx_hidden) and the
 * token at t+1, writes logits predicting token t+2.  Calls must come in
 * position order, t = 0, 1, ...: the block keeps its own window state in s
 * (reset with the sequence). */
int dsv4_mtp_forward(dsv4_ctx *c, dsv4_seq *s, const float *hidden, int32_t next_token,
                     float *logits, char *err, size_t errlen);

#endif
