/*
 * Sequence state as sections (see seq_state.h): the views the prefix cache
 * exports a sequence through and restores it through.  Everything here is
 * pointer arithmetic over the arrays dsv4_seq_new allocated; the layout it
 * describes is the one forward.c reads and writes.
 */
#include "seq.h"
#include "seq_state.h"
#include "util.h"

int
dsv4_seq_state_max_sections(const dsv4_model *m)
{
    /* per layer: history entries + indexer keys, a ring split in two, the
     * attention and indexer compressors' kv and score */
    return 8 * (m->cfg.n_layers + m->cfg.n_mtp_layers);
}

static int
dsv4_gcd(int a, int b)
{
    while (b != 0) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int
dsv4_seq_state_align(const dsv4_model *m)
{
    const dsv4_config *c = &m->cfg;
    int                a = 4;

    for (int l = 0; l < c->n_layers; l++) {
        int r = c->compress_ratios[l];
        if (r > 0) {
            a = a / dsv4_gcd(a, r) * r;
        }
    }
    for (int l = c->n_layers; l < c->n_layers + c->n_mtp_layers; l++) {
        if (c->compress_ratios[l] != 0) {
            return -1;
        }
    }
    return a;
}

static int
dsv4_ss_add(dsv4_ss_section *out, int *n, int cap, dsv4_ss_section sec)
{
    if (sec.rows <= 0) {
        return 0;
    }
    if (*n >= cap) {
        return -1;
    }
    out[(*n)++] = sec;
    return 0;
}

int
dsv4_seq_history_sections(const dsv4_seq *s, int p0, int p1, dsv4_ss_section *out, int cap,
                          char *err, size_t errlen)
{
    const dsv4_config *c = &s->m->cfg;
    int                align = dsv4_seq_state_align(s->m), n = 0;

    if (align <= 0 || p0 < 0 || p1 < p0 || p1 > s->max_ctx || p0 % align || p1 % align) {
        return dsv4_error(err, errlen, "history range [%d, %d) not aligned to %d or outside"
                          " the context %d", p0, p1, align, s->max_ctx);
    }
    for (int l = 0; l < c->n_layers; l++) {
        dsv4_layer_state *ls = &s->layers[l];
        int               m = c->compress_ratios[l], rc = 0;

        if (m == 0) {
            continue;
        }
        rc |= dsv4_ss_add(out, &n, cap, (dsv4_ss_section) {
            DSV4_SS_KV, l, (p1 - p0) / m, c->head_dim, c->head_dim, c->rope_dim,
            ls->entries + (size_t) (p0 / m) * c->head_dim });
        if (m == 4) {
            rc |= dsv4_ss_add(out, &n, cap, (dsv4_ss_section) {
                DSV4_SS_IDX, l, (p1 - p0) / 4, c->index_head_dim, c->index_head_dim, 0,
                ls->idx_keys + (size_t) (p0 / 4) * c->index_head_dim });
        }
        if (rc != 0) {
            return dsv4_error(err, errlen, "more than %d state sections", cap);
        }
    }
    return n;
}

/* The overlapping compressor's pooled half of the previous block: rows
 * 0..3, columns 0..d-1 of kv and score (rows are 2d wide). */
static int
dsv4_ss_add_cmp(dsv4_ss_section *out, int *n, int cap, int l, dsv4_cmp_state *cs, int d)
{
    int rc = 0;

    rc |= dsv4_ss_add(out, n, cap, (dsv4_ss_section) { DSV4_SS_RAW, l, 4, d, 2 * d, 0, cs->kv });
    rc |= dsv4_ss_add(out, n, cap, (dsv4_ss_section) { DSV4_SS_RAW, l, 4, d, 2 * d, 0,
                                                       cs->score });
    return rc;
}

int
dsv4_seq_tail_sections(const dsv4_seq *s, int pos, int mtp_pos, dsv4_ss_section *out, int cap,
                       char *err, size_t errlen)
{
    const dsv4_config *c = &s->m->cfg;
    int                align = dsv4_seq_state_align(s->m), n = 0, W = c->window;
    int                hd = c->head_dim;

    if (align <= 0 || pos < 0 || pos > s->max_ctx || pos % align || mtp_pos < 0
        || mtp_pos > pos) {
        return dsv4_error(err, errlen, "tail at %d (MTP %d) not aligned to %d or outside the"
                          " context %d", pos, mtp_pos, align, s->max_ctx);
    }
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) {
        dsv4_layer_state *ls = &s->layers[l];
        int               lp = l < c->n_layers ? pos : mtp_pos, rc = 0;
        int               t0 = lp > W ? lp - W : 0, slot = t0 % W, cnt = lp - t0;
        int               first = cnt < W - slot ? cnt : W - slot;

        /* ring rows of positions t0..lp-1 in position order: slots
         * slot..W-1 then 0.. when they wrap */
        rc |= dsv4_ss_add(out, &n, cap, (dsv4_ss_section) {
            DSV4_SS_KV, l, first, hd, hd, c->rope_dim, ls->ring + (size_t) slot * hd });
        rc |= dsv4_ss_add(out, &n, cap, (dsv4_ss_section) {
            DSV4_SS_KV, l, cnt - first, hd, hd, c->rope_dim, ls->ring });
        if (l < c->n_layers && c->compress_ratios[l] == 4) {
            rc |= dsv4_ss_add_cmp(out, &n, cap, l, &ls->cmp, hd);
            rc |= dsv4_ss_add_cmp(out, &n, cap, l, &ls->idx_cmp, c->index_head_dim);
        }
        if (rc != 0) {
            return dsv4_error(err, errlen, "more than %d state sections", cap);
        }
    }
    return n;
}

void
dsv4_seq_restore_begin(dsv4_seq *s)
{
    dsv4_seq_reset(s);
}

int
dsv4_seq_restore_end(dsv4_seq *s, int pos, int mtp_pos, char *err, size_t errlen)
{
    const dsv4_config *c = &s->m->cfg;
    int                align = dsv4_seq_state_align(s->m);

    if (align <= 0 || pos < 0 || pos > s->max_ctx || pos % align || mtp_pos < 0
        || mtp_pos > pos) {
        return dsv4_error(err, errlen, "restore at %d (MTP %d): not a block boundary inside"
                          " the context %d", pos, mtp_pos, s->max_ctx);
    }
    s->pos = pos;
    s->mtp_pos = mtp_pos;
    for (int l = 0; l < c->n_layers; l++) {
        int m = c->compress_ratios[l];
        s->layers[l].n_entries = m > 0 ? pos / m : 0;
        s->layers[l].n_idx_keys = m == 4 ? pos / 4 : 0;
    }
    return 0;
}

int
dsv4_seq_mtp_pos(const dsv4_seq *s)
{
    return s->mtp_pos;
}

const dsv4_model *
dsv4_seq_model(const dsv4_seq *s)
{
    return s->m;
}

int
dsv4_seq_capacity(const dsv4_seq *s)
{
    return s->max_ctx;
}
