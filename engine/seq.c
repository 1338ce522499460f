/*
 * Sequence state allocation.  Everything is sized from max_ctx up front so
 * the forward pass never allocates.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "seq.h"
#include "util.h"

static int
dsv4_cmp_state_alloc(dsv4_cmp_state *cs, int ratio, int d)
{
    int c = ratio == 4 ? 2 : 1;

    cs->rows = c == 2 ? 2 * ratio : ratio;
    cs->kv = malloc((size_t) cs->rows * c * d * sizeof(float));
    cs->score = malloc((size_t) cs->rows * c * d * sizeof(float));
    return cs->kv && cs->score ? 0 : -1;
}

static void
dsv4_cmp_state_reset(dsv4_cmp_state *cs, int ratio, int d)
{
    size_t n = (size_t) cs->rows * (ratio == 4 ? 2 : 1) * d;

    if (cs->kv == NULL) {
        return;
    }
    memset(cs->kv, 0, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        cs->score[i] = -INFINITY;
    }
}

dsv4_seq *
dsv4_seq_new(const dsv4_model *m, int max_ctx, char *err, size_t errlen)
{
    const dsv4_config *c = &m->cfg;
    int                nb = c->n_layers + c->n_mtp_layers;
    dsv4_seq          *s;

    if (max_ctx <= 0 || max_ctx > c->max_position) {
        dsv4_error(err, errlen, "context size %d out of range [1, %d]", max_ctx, c->max_position);
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->layers = calloc((size_t) nb, sizeof(*s->layers))) == NULL) {
        free(s);
        dsv4_error(err, errlen, "out of memory");
        return NULL;
    }
    s->m = m;
    s->max_ctx = max_ctx;
    for (int l = 0; l < nb; l++) {
        dsv4_layer_state *ls = &s->layers[l];
        int               ratio = c->compress_ratios[l];

        ls->ring = malloc((size_t) c->window * c->head_dim * sizeof(float));
        if (ls->ring == NULL) {
            goto oom;
        }
        if (ratio > 0) {
            ls->entries = malloc(((size_t) max_ctx / ratio + 1) * c->head_dim * sizeof(float));
            if (ls->entries == NULL || dsv4_cmp_state_alloc(&ls->cmp, ratio, c->head_dim) != 0) {
                goto oom;
            }
        }
        if (ratio == 4) {
            ls->idx_keys = malloc(((size_t) max_ctx / 4 + 1) * c->index_head_dim * sizeof(float));
            if (ls->idx_keys == NULL
                || dsv4_cmp_state_alloc(&ls->idx_cmp, 4, c->index_head_dim) != 0) {
                goto oom;
            }
        }
    }
    dsv4_seq_reset(s);
    return s;
oom:
    dsv4_seq_free(s);
    dsv4_error(err, errlen, "out of memory for a %d-token sequence", max_ctx);
    return NULL;
}

void
dsv4_seq_reset(dsv4_seq *s)
{
    const dsv4_config *c = &s->m->cfg;

    s->pos = 0;
    s->mtp_pos = 0;
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) {
        dsv4_layer_state *ls = &s->layers[l];
        ls->n_entries = 0;
        ls->n_idx_keys = 0;
        dsv4_cmp_state_reset(&ls->cmp, c->compress_ratios[l], c->head_dim);
        dsv4_cmp_state_reset(&ls->idx_cmp, 4, c->index_head_dim);
    }
}

void
dsv4_seq_free(dsv4_seq *s)
{
    if (s == NULL) {
        return;
    }
    if (s->layers != NULL) {
        for (int l = 0; l < s->m->cfg.n_layers + s->m->cfg.n_mtp_layers; l++) {
            dsv4_layer_state *ls = &s->layers[l];
            free(ls->ring);
            free(ls->entries);
            free(ls->cmp.kv);
            free(ls->cmp.score);
            free(ls->idx_keys);
            free(ls->idx_cmp.kv);
            free(ls->idx_cmp.score);
        }
    }
    free(s->layers);
    free(s);
}

int
dsv4_seq_pos(const dsv4_seq *s)
{
    return s->pos;
}
