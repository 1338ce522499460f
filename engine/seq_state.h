/*
 * A sequence's KV state as sections of float rows, for the prefix cache
 * (cache/) and anything else that saves or restores a sequence
 * (V4-MODEL.md §5.3).
 *
 * Two kinds of state, both addressed by position:
 *
 *   history  what the tokens at positions [p0, p1) add to the compressed
 *            KV: CSA/HCA entries j in [p0/m, p1/m) of every main layer with
 *            ratio m, and indexer keys j in [p0/4, p1/4) of every ratio-4
 *            layer.  Append-only: once written it never changes, so it can be
 *            read while the sequence moves on.
 *   tail     what resuming at position pos needs besides the history: each
 *            layer's window ring rows for positions [pos - W, pos) (the MTP
 *            block's for [mtp_pos - W, mtp_pos)) and, for the overlapping
 *            ratio-4 compressors, the previous block's pooled half
 *            (forward.c dsv4_cmp_push reads rows 0..3, columns 0..d-1, at the
 *            next block close; every other compressor row is rewritten before
 *            it is read when pos is a multiple of every ratio).
 *
 * Both are valid only at positions that are multiples of 4 and of every
 * compress ratio (block boundaries): there no compressor holds a partial
 * block.
 *
 * A section is a strided view INTO the sequence: export reads through it,
 * import writes through it.  No copies are made here.
 */
#ifndef DSV4_SEQ_STATE_H
#define DSV4_SEQ_STATE_H

#include "dsv4.h"

/* How the values of a section may be packed losslessly. */
typedef enum {
    DSV4_SS_RAW = 0,   /* arbitrary float32 */
    DSV4_SS_KV,        /* KV rows: the first width - raw_tail dims are FP8 e4m3
                          fake-quantised in blocks of DSV4_SS_KV_BLOCK with
                          power-of-two scales; the last raw_tail (RoPE) dims raw */
    DSV4_SS_IDX        /* indexer keys: FP4 e2m1 fake-quantised in blocks of
                          DSV4_SS_IDX_BLOCK with power-of-two scales */
} dsv4_ss_kind;

#define DSV4_SS_KV_BLOCK  64
#define DSV4_SS_IDX_BLOCK 32

typedef struct {
    dsv4_ss_kind kind;
    int          layer;     /* which layer (n_layers = the MTP block) */
    int          rows;
    int          width;     /* floats per row */
    int          stride;    /* floats from one row to the next (>= width) */
    int          raw_tail;  /* DSV4_SS_KV: trailing raw dims (rope_dim) */
    float       *data;      /* [rows, stride] inside the sequence (borrowed) */
} dsv4_ss_section;

/* Upper bound on the sections one call below returns for model m. */
int dsv4_seq_state_max_sections(const dsv4_model *m);

/* Smallest positive block size every state boundary must be a multiple of:
 * lcm(4, every compress ratio of the main layers).  -1 if the MTP block is
 * compressed (not supported by the tail layout). */
int dsv4_seq_state_align(const dsv4_model *m);

/* Sections of the history added by positions [p0, p1) (both multiples of
 * dsv4_seq_state_align, p0 <= p1 <= max_ctx of s).  Returns the section count
 * (<= cap), or -1 with err set. */
int dsv4_seq_history_sections(const dsv4_seq *s, int p0, int p1, dsv4_ss_section *out,
                              int cap, char *err, size_t errlen);

/* Sections of the tail state at main position pos and MTP position mtp_pos
 * (pos a multiple of the alignment, 0 <= mtp_pos <= pos <= max_ctx).
 * Returns the section count, or -1 with err set. */
int dsv4_seq_tail_sections(const dsv4_seq *s, int pos, int mtp_pos, dsv4_ss_section *out,
                           int cap, char *err, size_t errlen);

/* Restoring: dsv4_seq_restore_begin resets s (every compressor row empty);
 * the caller then writes history [0, pos) and the tail at (pos, mtp_pos)
 * through the sections above, and dsv4_seq_restore_end sets the positions
 * and entry counts.  A sequence restored this way continues exactly as if
 * it had processed the same tokens itself. */
void dsv4_seq_restore_begin(dsv4_seq *s);
int  dsv4_seq_restore_end(dsv4_seq *s, int pos, int mtp_pos, char *err, size_t errlen);

/* Positions processed by the MTP block (see dsv4_mtp_forward). */
int dsv4_seq_mtp_pos(const dsv4_seq *s);

/* The model s was created for, and the positions it can hold. */
const dsv4_model *dsv4_seq_model(const dsv4_seq *s);
int               dsv4_seq_capacity(const dsv4_seq *s);

#endif
