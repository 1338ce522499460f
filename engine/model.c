/*
 * Model loading: config + safetensors inventory -> dsv4_model.  Every tensor
 * of V4-MODEL.md §3.3 is looked up by name and checked for dtype and shape
 * before anything uses it; a failure names the tensor and the expected vs
 * found value.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "model.h"
#include "util.h"

typedef struct {
    dsv4_model *m;
    char       *err;
    size_t      errlen;
    uint64_t   *params;    /* counter the bound tensors are added to */
} dsv4_binder;

/* Keeps p alive until dsv4_model_free. */
static void *
dsv4_model_own(dsv4_model *m, void *p)
{
    if (p == NULL) {
        return NULL;
    }
    if (m->n_owned == m->cap_owned) {
        int    ncap = m->cap_owned ? m->cap_owned * 2 : 256;
        void **no = realloc(m->owned, (size_t) ncap * sizeof(*no));
        if (no == NULL) {
            free(p);
            return NULL;
        }
        m->owned = no;
        m->cap_owned = ncap;
    }
    m->owned[m->n_owned++] = p;
    return p;
}

static void
dsv4_shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t off = (size_t) snprintf(buf, n, "[");
    for (int i = 0; i < ndim && off < n; i++) {
        off += (size_t) snprintf(buf + off, n - off, "%s%lld", i ? ", " : "", (long long) shape[i]);
    }
    if (off < n) {
        snprintf(buf + off, n - off, "]");
    }
}

/* Finds `name` and checks its dtype and shape (ndim values from varargs).
 * Logical parameters (FP4 bytes count twice; scales and index tables don't
 * count) are added to b->params. */
static const dsv4_st_tensor *
dsv4_bind(dsv4_binder *b, const char *name, dsv4_dtype dt, int ndim, ...)
{
    const dsv4_st_tensor *t = dsv4_st_find(&b->m->st, name);
    int64_t               want[DSV4_ST_MAX_DIMS];
    va_list               ap;
    int                   ok;

    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++) {
        want[i] = va_arg(ap, int64_t);
    }
    va_end(ap);
    if (t == NULL) {
        dsv4_error(b->err, b->errlen, "missing tensor %s", name);
        return NULL;
    }
    if (t->dtype != dt) {
        dsv4_error(b->err, b->errlen, "tensor %s: dtype %s, expected %s", name, t->dtype_name,
                   dsv4_dtype_name(dt));
        return NULL;
    }
    ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) {
        ok = t->shape[i] == want[i];
    }
    if (!ok) {
        char found[96], expect[96];
        dsv4_shape_str(found, sizeof(found), t->ndim, t->shape);
        dsv4_shape_str(expect, sizeof(expect), ndim, want);
        dsv4_error(b->err, b->errlen, "tensor %s: shape %s, expected %s", name, found, expect);
        return NULL;
    }
    if (dt != DSV4_DT_F8_E8M0 && dt != DSV4_DT_I64) {
        *b->params += dt == DSV4_DT_I8 ? 2 * t->nbytes : t->nbytes / dsv4_dtype_size(dt);
    }
    return t;
}

#define I64(x) ((int64_t) (x))

/* Binds prefix.weight (+ prefix.scale) as a matrix [rows, cols] of type. */
static int
dsv4_bind_mat(dsv4_binder *b, dsv4_mat *w, const char *prefix, dsv4_mat_type type,
              int rows, int cols)
{
    char                  name[256], sname[256];
    const dsv4_st_tensor *t, *s = NULL;

    snprintf(name, sizeof(name), "%s.weight", prefix);
    snprintf(sname, sizeof(sname), "%s.scale", prefix);
    switch (type) {
    case DSV4_MAT_F32:
        t = dsv4_bind(b, prefix, DSV4_DT_F32, 2, I64(rows), I64(cols));
        break;
    case DSV4_MAT_BF16:
        t = dsv4_bind(b, name, DSV4_DT_BF16, 2, I64(rows), I64(cols));
        break;
    case DSV4_MAT_FP8:
        t = dsv4_bind(b, name, DSV4_DT_F8_E4M3, 2, I64(rows), I64(cols));
        s = t ? dsv4_bind(b, sname, DSV4_DT_F8_E8M0, 2, I64((rows + 127) / 128),
                          I64((cols + 127) / 128)) : NULL;
        break;
    case DSV4_MAT_FP4:
        t = dsv4_bind(b, name, DSV4_DT_I8, 2, I64(rows), I64(cols / 2));
        s = t ? dsv4_bind(b, sname, DSV4_DT_F8_E8M0, 2, I64(rows), I64(cols / 32)) : NULL;
        break;
    default:
        t = NULL;
    }
    if (t == NULL || (type >= DSV4_MAT_FP8 && s == NULL)) {
        return -1;
    }
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    w->scale = s ? s->data : NULL;
    if (type == DSV4_MAT_F32 && ((uintptr_t) t->data & 3) != 0) {
        /* unaligned F32 data (legal in safetensors): use an aligned copy */
        float *copy = dsv4_model_own(b->m, malloc(t->nbytes));
        if (copy == NULL) {
            return dsv4_error(b->err, b->errlen, "out of memory");
        }
        memcpy(copy, t->data, t->nbytes);
        w->data = copy;
    }
    return 0;
}

/* Binds a 1-D (or [1, n]-free) vector of n values stored as dt and returns an
 * owned float32 copy (NULL with err set on failure; in layout-only mode a
 * shared dummy is returned without reading data). */
static const float *
dsv4_bind_vec(dsv4_binder *b, const char *name, dsv4_dtype dt, int n)
{
    const dsv4_st_tensor *t = dsv4_bind(b, name, dt, 1, I64(n));
    float                *v;

    if (t == NULL) {
        return NULL;
    }
    if (b->m->flags & DSV4_LOAD_LAYOUT_ONLY) {
        static const float dummy;
        return &dummy;
    }
    v = dsv4_model_own(b->m, malloc((size_t) n * sizeof(float)));
    if (v == NULL) {
        dsv4_error(b->err, b->errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (dt == DSV4_DT_BF16) {
            uint16_t h;
            memcpy(&h, t->data + 2 * (size_t) i, 2);
            v[i] = dsv4_bf16_to_f32(h);
        } else {
            memcpy(&v[i], t->data + 4 * (size_t) i, 4);
        }
    }
    return v;
}

static int
dsv4_bind_compressor(dsv4_binder *b, dsv4_compressor_w *cw, const char *prefix, int ratio, int d)
{
    const dsv4_config *c = &b->m->cfg;
    char               name[256];

    cw->d = d;
    cw->c = ratio == 4 ? 2 : 1;
    snprintf(name, sizeof(name), "%s.wkv", prefix);
    if (dsv4_bind_mat(b, &cw->wkv, name, DSV4_MAT_BF16, cw->c * d, c->dim) != 0) {
        return -1;
    }
    snprintf(name, sizeof(name), "%s.wgate", prefix);
    if (dsv4_bind_mat(b, &cw->wgate, name, DSV4_MAT_BF16, cw->c * d, c->dim) != 0) {
        return -1;
    }
    snprintf(name, sizeof(name), "%s.ape", prefix);
    const dsv4_st_tensor *t = dsv4_bind(b, name, DSV4_DT_F32, 2, I64(ratio), I64(cw->c * d));
    if (t == NULL) {
        return -1;
    }
    if (b->m->flags & DSV4_LOAD_LAYOUT_ONLY) {
        cw->ape = NULL;
    } else {
        float *ape = dsv4_model_own(b->m, malloc(t->nbytes));
        if (ape == NULL) {
            return dsv4_error(b->err, b->errlen, "out of memory");
        }
        memcpy(ape, t->data, t->nbytes);
        cw->ape = ape;
    }
    snprintf(name, sizeof(name), "%s.norm.weight", prefix);
    cw->norm = dsv4_bind_vec(b, name, DSV4_DT_BF16, d);
    return cw->norm ? 0 : -1;
}

/* tid2eid [vocab, k] int64 -> owned int32, every id checked. */
static int
dsv4_bind_tid2eid(dsv4_binder *b, dsv4_moe_w *f, const char *name)
{
    const dsv4_config    *c = &b->m->cfg;
    const dsv4_st_tensor *t = dsv4_bind(b, name, DSV4_DT_I64, 2, I64(c->vocab_size),
                                        I64(c->n_active_experts));
    int32_t              *ids;
    size_t                n = (size_t) c->vocab_size * (size_t) c->n_active_experts;

    if (t == NULL) {
        return -1;
    }
    if (b->m->flags & DSV4_LOAD_LAYOUT_ONLY) {
        return 0;
    }
    ids = dsv4_model_own(b->m, malloc(n * sizeof(*ids)));
    if (ids == NULL) {
        return dsv4_error(b->err, b->errlen, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        int64_t e;
        memcpy(&e, t->data + 8 * i, 8);
        if (e < 0 || e >= c->n_routed_experts) {
            return dsv4_error(b->err, b->errlen,
                              "tensor %s: token %zu maps to expert %lld, expected [0, %d)",
                              name, i / (size_t) c->n_active_experts, (long long) e,
                              c->n_routed_experts);
        }
        ids[i] = (int32_t) e;
        /* a repeated expert in one row would silently drop a contribution */
        for (size_t j = i - i % (size_t) c->n_active_experts; j < i; j++) {
            if (ids[j] == ids[i]) {
                return dsv4_error(b->err, b->errlen, "tensor %s: token %zu lists expert %d twice",
                                  name, i / (size_t) c->n_active_experts, ids[i]);
            }
        }
    }
    f->tid2eid = ids;
    return 0;
}

/* Binds block `l` (main layer or, for l == n_layers, the MTP block). */
static int
dsv4_bind_layer(dsv4_binder *b, int l, const char *pfx)
{
    dsv4_model        *m = b->m;
    const dsv4_config *c = &m->cfg;
    dsv4_layer_w      *lw = &m->layers[l];
    int                hc = c->hc_mult, mix = (2 + hc) * hc, D = c->dim;
    int                hd = c->head_dim, H = c->n_heads, G = c->o_groups;
    char               n[256];

    lw->ratio = c->compress_ratios[l];
    lw->hash = l < c->n_hash_layers;

#define NAME(...) (snprintf(n, sizeof(n), __VA_ARGS__), n)
    if (dsv4_bind_mat(b, &lw->hc_attn_fn, NAME("%shc_attn_fn", pfx), DSV4_MAT_F32, mix, hc * D)
        || !(lw->hc_attn_base = dsv4_bind_vec(b, NAME("%shc_attn_base", pfx), DSV4_DT_F32, mix))
        || !(lw->hc_attn_scale = dsv4_bind_vec(b, NAME("%shc_attn_scale", pfx), DSV4_DT_F32, 3))
        || dsv4_bind_mat(b, &lw->hc_ffn_fn, NAME("%shc_ffn_fn", pfx), DSV4_MAT_F32, mix, hc * D)
        || !(lw->hc_ffn_base = dsv4_bind_vec(b, NAME("%shc_ffn_base", pfx), DSV4_DT_F32, mix))
        || !(lw->hc_ffn_scale = dsv4_bind_vec(b, NAME("%shc_ffn_scale", pfx), DSV4_DT_F32, 3))
        || !(lw->attn_norm = dsv4_bind_vec(b, NAME("%sattn_norm.weight", pfx), DSV4_DT_BF16, D))
        || !(lw->ffn_norm = dsv4_bind_vec(b, NAME("%sffn_norm.weight", pfx), DSV4_DT_BF16, D))) {
        return -1;
    }

    dsv4_attn_w *a = &lw->attn;
    if (!(a->attn_sink = dsv4_bind_vec(b, NAME("%sattn.attn_sink", pfx), DSV4_DT_F32, H))
        || dsv4_bind_mat(b, &a->wq_a, NAME("%sattn.wq_a", pfx), DSV4_MAT_FP8, c->q_lora_rank, D)
        || !(a->q_norm = dsv4_bind_vec(b, NAME("%sattn.q_norm.weight", pfx), DSV4_DT_BF16,
                                       c->q_lora_rank))
        || dsv4_bind_mat(b, &a->wq_b, NAME("%sattn.wq_b", pfx), DSV4_MAT_FP8, H * hd,
                         c->q_lora_rank)
        || dsv4_bind_mat(b, &a->wkv, NAME("%sattn.wkv", pfx), DSV4_MAT_FP8, hd, D)
        || !(a->kv_norm = dsv4_bind_vec(b, NAME("%sattn.kv_norm.weight", pfx), DSV4_DT_BF16, hd))
        || dsv4_bind_mat(b, &a->wo_a, NAME("%sattn.wo_a", pfx), DSV4_MAT_FP8,
                         G * c->o_lora_rank, H * hd / G)
        || dsv4_bind_mat(b, &a->wo_b, NAME("%sattn.wo_b", pfx), DSV4_MAT_FP8, D,
                         G * c->o_lora_rank)) {
        return -1;
    }
    if (lw->ratio > 0
        && dsv4_bind_compressor(b, &a->cmp, NAME("%sattn.compressor", pfx), lw->ratio, hd) != 0) {
        return -1;
    }
    if (lw->ratio == 4) {
        if (dsv4_bind_mat(b, &a->idx_wq_b, NAME("%sattn.indexer.wq_b", pfx), DSV4_MAT_FP8,
                          c->index_n_heads * c->index_head_dim, c->q_lora_rank)
            || dsv4_bind_mat(b, &a->idx_wproj, NAME("%sattn.indexer.weights_proj", pfx),
                             DSV4_MAT_BF16, c->index_n_heads, D)
            || dsv4_bind_compressor(b, &a->idx_cmp, NAME("%sattn.indexer.compressor", pfx), 4,
                                    c->index_head_dim)) {
            return -1;
        }
    }

    dsv4_moe_w *f = &lw->ffn;
    if (dsv4_bind_mat(b, &f->gate, NAME("%sffn.gate", pfx), DSV4_MAT_BF16, c->n_routed_experts, D)) {
        return -1;
    }
    if (lw->hash) {
        if (dsv4_bind_tid2eid(b, f, NAME("%sffn.gate.tid2eid", pfx)) != 0) {
            return -1;
        }
    } else if (!(f->gate_bias = dsv4_bind_vec(b, NAME("%sffn.gate.bias", pfx), DSV4_DT_F32,
                                              c->n_routed_experts))) {
        return -1;
    }
    f->experts = dsv4_model_own(m, calloc((size_t) c->n_routed_experts, sizeof(*f->experts)));
    if (f->experts == NULL) {
        return dsv4_error(b->err, b->errlen, "out of memory");
    }
    dsv4_mat_type et = c->expert_fp4 ? DSV4_MAT_FP4 : DSV4_MAT_FP8;
    int           I = c->moe_inter_dim;
    for (int e = 0; e < c->n_routed_experts; e++) {
        dsv4_expert_w *x = &f->experts[e];
        if (dsv4_bind_mat(b, &x->w1, NAME("%sffn.experts.%d.w1", pfx, e), et, I, D)
            || dsv4_bind_mat(b, &x->w3, NAME("%sffn.experts.%d.w3", pfx, e), et, I, D)
            || dsv4_bind_mat(b, &x->w2, NAME("%sffn.experts.%d.w2", pfx, e), et, D, I)) {
            return -1;
        }
    }
    if (dsv4_bind_mat(b, &f->shared.w1, NAME("%sffn.shared_experts.w1", pfx), DSV4_MAT_FP8, I, D)
        || dsv4_bind_mat(b, &f->shared.w3, NAME("%sffn.shared_experts.w3", pfx), DSV4_MAT_FP8, I, D)
        || dsv4_bind_mat(b, &f->shared.w2, NAME("%sffn.shared_experts.w2", pfx), DSV4_MAT_FP8, D, I)) {
        return -1;
    }
#undef NAME
    return 0;
}

static int
dsv4_bind_head(dsv4_binder *b, dsv4_mat *fn, const float **base, const float **scale,
               const char *pfx)
{
    const dsv4_config *c = &b->m->cfg;
    char               n[256];

    snprintf(n, sizeof(n), "%shc_head_fn", pfx);
    if (dsv4_bind_mat(b, fn, n, DSV4_MAT_F32, c->hc_mult, c->hc_mult * c->dim) != 0) {
        return -1;
    }
    snprintf(n, sizeof(n), "%shc_head_base", pfx);
    if (!(*base = dsv4_bind_vec(b, n, DSV4_DT_F32, c->hc_mult))) {
        return -1;
    }
    snprintf(n, sizeof(n), "%shc_head_scale", pfx);
    return (*scale = dsv4_bind_vec(b, n, DSV4_DT_F32, 1)) ? 0 : -1;
}

/* RoPE frequency tables (V4-MODEL.md §4.0): plain, and YaRN-blended for the
 * compressed layers (no mscale anywhere). */
static void
dsv4_rope_tables(dsv4_model *m)
{
    const dsv4_config *c = &m->cfg;
    int                half = c->rope_dim / 2;
    double             base = c->compress_rope_theta, low = 0, high = 0;

    if (c->original_seq_len > 0) {
        double lo = floor(c->rope_dim * log(c->original_seq_len / (c->beta_fast * 2 * M_PI))
                          / (2 * log(base)));
        double hi = ceil(c->rope_dim * log(c->original_seq_len / (c->beta_slow * 2 * M_PI))
                         / (2 * log(base)));
        low = lo > 0 ? lo : 0;
        high = hi < c->rope_dim - 1 ? hi : c->rope_dim - 1;
        if (low == high) {
            high += 0.001;
        }
    }
    for (int i = 0; i < half; i++) {
        double f0 = pow(base, -2.0 * i / c->rope_dim);
        m->freqs_main[i] = (float) pow(c->rope_theta, -2.0 * i / c->rope_dim);
        if (c->original_seq_len > 0) {
            double ramp = (i - low) / (high - low);
            double smooth = 1.0 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
            f0 = f0 / c->rope_factor * (1.0 - smooth) + f0 * smooth;
        }
        m->freqs_comp[i] = (float) f0;
    }
}

int
dsv4_model_load(dsv4_model **out, const char *dir, int flags, char *err, size_t errlen)
{
    dsv4_model  *m;
    dsv4_binder  b;
    dsv4_config *c;
    int          nblocks;

    *out = NULL;
    dsv4_formats_init();
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return dsv4_error(err, errlen, "out of memory");
    }
    m->flags = flags;
    c = &m->cfg;
    if (dsv4_config_load(c, dir, err, errlen) != 0 || dsv4_st_open(&m->st, dir, err, errlen) != 0) {
        goto fail;
    }
    nblocks = c->n_layers + c->n_mtp_layers;
    m->layers = dsv4_model_own(m, calloc((size_t) nblocks, sizeof(*m->layers)));
    m->freqs_main = dsv4_model_own(m, calloc((size_t) c->rope_dim / 2, sizeof(float)));
    m->freqs_comp = dsv4_model_own(m, calloc((size_t) c->rope_dim / 2, sizeof(float)));
    if (m->layers == NULL || m->freqs_main == NULL || m->freqs_comp == NULL) {
        dsv4_error(err, errlen, "out of memory");
        goto fail;
    }
    b.m = m;
    b.err = err;
    b.errlen = errlen;
    b.params = &m->stats.params;

    if (dsv4_bind_mat(&b, &m->embed, "embed", DSV4_MAT_BF16, c->vocab_size, c->dim)
        || dsv4_bind_mat(&b, &m->head, "head", DSV4_MAT_BF16, c->vocab_size, c->dim)
        || !(m->norm = dsv4_bind_vec(&b, "norm.weight", DSV4_DT_BF16, c->dim))
        || dsv4_bind_head(&b, &m->hc_head_fn, &m->hc_head_base, &m->hc_head_scale, "")) {
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        char pfx[32];
        snprintf(pfx, sizeof(pfx), "layers.%d.", l);
        if (dsv4_bind_layer(&b, l, pfx) != 0) {
            goto fail;
        }
    }
    if (c->n_mtp_layers > 0) {
        dsv4_mtp_w *t = &m->mtp;
        b.params = &m->stats.params_mtp;
        if (dsv4_bind_layer(&b, c->n_layers, "mtp.0.") != 0
            || dsv4_bind_mat(&b, &t->e_proj, "mtp.0.e_proj", DSV4_MAT_FP8, c->dim, c->dim)
            || dsv4_bind_mat(&b, &t->h_proj, "mtp.0.h_proj", DSV4_MAT_FP8, c->dim, c->dim)
            || !(t->enorm = dsv4_bind_vec(&b, "mtp.0.enorm.weight", DSV4_DT_BF16, c->dim))
            || !(t->hnorm = dsv4_bind_vec(&b, "mtp.0.hnorm.weight", DSV4_DT_BF16, c->dim))
            || !(t->norm = dsv4_bind_vec(&b, "mtp.0.norm.weight", DSV4_DT_BF16, c->dim))
            || dsv4_bind_head(&b, &t->hc_head_fn, &t->hc_head_base, &t->hc_head_scale, "mtp.0.")) {
            goto fail;
        }
    }
    dsv4_rope_tables(m);

    /* Active parameters: everything but the routed experts not selected. */
    uint64_t per_expert = 3ull * (uint64_t) c->dim * (uint64_t) c->moe_inter_dim;
    m->stats.params_active = m->stats.params + m->stats.params_mtp
        - (uint64_t) nblocks * (uint64_t) (c->n_routed_experts - c->n_active_experts) * per_expert;
    m->stats.mapped_bytes = m->st.mapped_bytes;
    m->stats.n_tensors = m->st.n_tensors;
    m->stats.n_shards = m->st.n_shards;
    *out = m;
    return 0;
fail:
    dsv4_model_free(m);
    return -1;
}

void
dsv4_model_free(dsv4_model *m)
{
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < m->n_owned; i++) {
        free(m->owned[i]);
    }
    free(m->owned);
    dsv4_st_close(&m->st);
    free(m);
}

const dsv4_config *
dsv4_model_config(const dsv4_model *m)
{
    return &m->cfg;
}

void
dsv4_model_get_stats(const dsv4_model *m, dsv4_model_stats *st)
{
    *st = m->stats;
}
