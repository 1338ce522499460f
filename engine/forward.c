/*
 * The DeepSeek-V4 forward pass (V4-MODEL.md §4), FP32 activations.
 *
 * Layer-major over a chunk of n tokens: each projection runs once over the
 * whole chunk (the shape batched kernels want), while everything with a
 * causal dependency (window ring, compressor states, attention) walks the
 * chunk token by token.  Every output element is computed the same way
 * whatever n is, so chunked prefill, whole prefill and decode agree.
 *
 * Quantisers emulated exactly (§4.11b): FP8 e4m3 fake-quant of the window and
 * compressed KV on the non-rope dims (64-blocks); Hadamard + FP4 e2m1
 * fake-quant (32-blocks) of the indexer queries and keys.  Activations are
 * not quantised before the matmuls; weights are dequantised inside them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "seq.h"
#include "util.h"

/* Rows whose routed experts are computed together (bounds the expert
 * buffers: moe_chunk * k rows of D and I floats). */
#define DSV4_MOE_CHUNK 512

/* Sequences whose logits share one pass over the head matrix. */
#define DSV4_HEAD_ROWS 16

/* The rows of one sequence inside a step: rows row0 .. row0+n-1 of every
 * activation buffer, at positions pos0 .. pos0+n-1 of seq. */
typedef struct {
    dsv4_seq *seq;
    int       row0;
    int       n;
    int       pos0;
} dsv4_seg;

struct dsv4_ctx {
    const dsv4_model   *m;
    const dsv4_backend *be;
    int                 max_chunk;  /* rows per step, all sequences together */
    int                 max_ctx;
    /* the current step: nseg sequences, nrows rows */
    dsv4_seg           *segs;       /* [max_chunk] */
    int                 nseg;
    int                 nrows;
    const int32_t     **row_tok;    /* [max_chunk] pointer to each row's token */
    int                *row_pos;    /* [max_chunk] position of each row in its sequence */
    int                *row_seg;    /* [max_chunk] segment of each row */
    /* activations; n = chunk length */
    float *x;          /* [n, hc*D] residual streams */
    float *post;       /* [n, hc] mHC post weights */
    float *comb;       /* [n, hc*hc] mHC combination matrices */
    float *mix;        /* [n, (2+hc)*hc] mHC mixes */
    float *a;          /* [n, D] block input after the norm */
    float *qr;         /* [n, R_q] query latent */
    float *q;          /* [n, H*hd] queries */
    float *kv;         /* [n, hd] window K=V */
    float *o;          /* [n, H*hd] attention output */
    float *olow;       /* [n, G*R_o] grouped low-rank output */
    float *y;          /* [n, D] attention / FFN output */
    float *ck, *cz;    /* [n, 2*hd] compressor kv / score inputs */
    float *ik, *iz;    /* [n, 2*di] indexer compressor inputs */
    float *iq;         /* [n, Hi*di] indexer queries */
    float *iw;         /* [n, Hi] indexer head weights */
    float *glog;       /* [n, E] gate logits */
    float *h1, *h3;    /* [n, I] expert hidden */
    float *head_in;    /* [DSV4_HEAD_ROWS, D] final-norm outputs */
    float *head_out;   /* [min(max_chunk, DSV4_HEAD_ROWS), vocab] logits of a batch */
    float *mtp_x;      /* [hc*D] MTP block streams */
    float *mtp_e;      /* [D] */
    float *mtp_h;      /* [hc*D] */
    const float **keys;       /* [W + max entries] attention key pointers */
    float        *scores;     /* [W + max entries, or max_ctx/4] */
    int          *topk;       /* [index_topk] */
    const float **pool_kv;    /* [2*max ratio] compressor slots */
    const float **pool_sc;
    /* MoE grouped by expert: rows of up to moe_chunk tokens at a time, each
     * (row, slot) assignment gets a place in the expert-sorted buffers */
    int           moe_chunk;
    int          *route_sel;  /* [max_chunk * k] selected experts of each row */
    float        *route_w;    /* [max_chunk * k] their routing weights */
    int          *route_pos;  /* [moe_chunk * k] place of assignment (row, slot) */
    int          *exp_start;  /* [E + 1] first place of each expert */
    float        *xa;         /* [moe_chunk * k, D] gathered expert inputs */
    float        *eh1, *eh3;  /* [moe_chunk * k, I] expert hidden */
    float        *eyb;        /* [moe_chunk * k, D] expert outputs */
    dsv4_matmul_job *jobs;    /* [2E + 8 + G]: experts w1+w3 (+ shared w2), projections, groups */
};

/* ---- mHC (§4.3) -------------------------------------------------------- */

static float
dsv4_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* 1/RMS over the hc*D values of each token's streams, applied to mix rows. */
static void
dsv4_hc_mix(dsv4_ctx *c, const dsv4_mat *fn, const float *x, int n, float *mix)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                hcd = cfg->hc_mult * cfg->dim;

    c->be->matmul(c->be, fn, 0, fn->rows, x, hcd, n, mix, fn->rows);
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t) i * hcd;
        float        ss = 0.0f;
        for (int k = 0; k < hcd; k++) {
            ss += xi[k] * xi[k];
        }
        float r = 1.0f / sqrtf(ss / (float) hcd + cfg->norm_eps);
        for (int k = 0; k < fn->rows; k++) {
            mix[(size_t) i * fn->rows + k] *= r;
        }
    }
}

/* out [D] = sum_s pre[s] X[s], pre[s] = sigmoid(mix[s] * scale0 + base[s]) +
 * eps: one token's streams xi [hc, D] collapsed (HC_PRE, HC_HEAD). */
static void
dsv4_hc_collapse(const dsv4_config *cfg, const float *mix, float scale0, const float *base,
                 const float *xi, float *out)
{
    int D = cfg->dim;

    memset(out, 0, (size_t) D * sizeof(float));
    for (int s = 0; s < cfg->hc_mult; s++) {
        float pre = dsv4_sigmoid(mix[s] * scale0 + base[s]) + cfg->hc_eps;
        for (int d = 0; d < D; d++) {
            out[d] += pre * xi[(size_t) s * D + d];
        }
    }
}

/* HC_PRE for n tokens: a = sum_s pre[s] X[s]; post and Sinkhorn'd comb saved. */
static void
dsv4_hc_pre(dsv4_ctx *c, const dsv4_mat *fn, const float *scale, const float *base,
            const float *x, int n)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                hc = cfg->hc_mult, D = cfg->dim, nmix = (2 + hc) * hc;

    dsv4_hc_mix(c, fn, x, n, c->mix);
    for (int i = 0; i < n; i++) {
        const float *mix = c->mix + (size_t) i * nmix, *xi = x + (size_t) i * hc * D;
        float       *post = c->post + (size_t) i * hc, *comb = c->comb + (size_t) i * hc * hc;
        float       *ai = c->a + (size_t) i * D;

        dsv4_hc_collapse(cfg, mix, scale[0], base, xi, ai);
        for (int s = 0; s < hc; s++) {
            post[s] = 2.0f * dsv4_sigmoid(mix[hc + s] * scale[1] + base[hc + s]);
        }
        for (int k = 0; k < hc * hc; k++) {
            comb[k] = mix[2 * hc + k] * scale[2] + base[2 * hc + k];
        }
        c->be->sinkhorn(c->be, comb, hc, cfg->hc_sinkhorn_iters, cfg->hc_eps);
    }
}

/* HC_POST: X[k] = post[k] o + sum_j comb[j][k] X_old[j] (sum over the FIRST index). */
static void
dsv4_hc_post(dsv4_ctx *c, float *x, const float *o, int n)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                hc = cfg->hc_mult, D = cfg->dim;

    for (int i = 0; i < n; i++) {
        float       *xi = x + (size_t) i * hc * D;
        const float *oi = o + (size_t) i * D;
        const float *post = c->post + (size_t) i * hc, *comb = c->comb + (size_t) i * hc * hc;

        c->be->hc_post(c->be, xi, oi, post, comb, hc, D);
    }
}

/* HC_HEAD + final norm + head for n <= DSV4_HEAD_ROWS tokens: xs[i] points
 * to token i's streams [hc*D]; logits [n, vocab].  The head matrix, the
 * largest single read of a decode step, is read once for all n. */
static void
dsv4_head(dsv4_ctx *c, const float *const *xs, int n, const dsv4_mat *fn, const float *scale,
          const float *base, const float *norm, float *logits)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                D = cfg->dim;

    for (int i = 0; i < n; i++) {
        float *hi = c->head_in + (size_t) i * D;

        dsv4_hc_mix(c, fn, xs[i], 1, c->mix);
        dsv4_hc_collapse(cfg, c->mix, scale[0], base, xs[i], hi);
        c->be->rmsnorm(c->be, hi, hi, norm, D, cfg->norm_eps);
    }
    c->be->matmul(c->be, &c->m->head, 0, cfg->vocab_size, c->head_in, D, n, logits,
                  cfg->vocab_size);
}

/* ---- compressor (§4.6) ------------------------------------------------- */

/* Pushes token t's kv/score rows [c*d] into the state; when t closes a block,
 * pools entry j = t / m into out[d] and returns 1. */
static int
dsv4_cmp_push(dsv4_ctx *c, dsv4_cmp_state *cs, int ratio, int d, int t,
              const float *kv, const float *score, float *out)
{
    int    overlap = ratio == 4, w = (overlap ? 2 : 1) * d;
    int    row = (overlap ? ratio : 0) + t % ratio, nslots = 0;
    size_t rowbytes = (size_t) w * sizeof(float);

    memcpy(cs->kv + (size_t) row * w, kv, rowbytes);
    memcpy(cs->score + (size_t) row * w, score, rowbytes);
    if ((t + 1) % ratio != 0) {
        return 0;
    }
    if (overlap) {
        /* previous block's first half, then this block's second half */
        for (int r = 0; r < ratio; r++, nslots++) {
            c->pool_kv[nslots] = cs->kv + (size_t) r * w;
            c->pool_sc[nslots] = cs->score + (size_t) r * w;
        }
        for (int r = ratio; r < 2 * ratio; r++, nslots++) {
            c->pool_kv[nslots] = cs->kv + (size_t) r * w + d;
            c->pool_sc[nslots] = cs->score + (size_t) r * w + d;
        }
    } else {
        for (int r = 0; r < ratio; r++, nslots++) {
            c->pool_kv[nslots] = cs->kv + (size_t) r * w;
            c->pool_sc[nslots] = cs->score + (size_t) r * w;
        }
    }
    c->be->compress_pool(c->be, c->pool_kv, c->pool_sc, nslots, d, out);
    if (overlap) {
        memcpy(cs->kv, cs->kv + (size_t) ratio * w, (size_t) ratio * rowbytes);
        memcpy(cs->score, cs->score + (size_t) ratio * w, (size_t) ratio * rowbytes);
    }
    return 1;
}

/* Appends the compressor projections of every row of the step (kbuf, zbuf
 * [nrows, c*d]) to a batch of matmul jobs; returns the new job count. */
static int
dsv4_compress_jobs(dsv4_ctx *c, const dsv4_compressor_w *cw, float *kbuf, float *zbuf,
                   dsv4_matmul_job *jobs, int nj)
{
    int w = cw->c * cw->d, D = c->m->cfg.dim;

    jobs[nj++] = (dsv4_matmul_job) { &cw->wkv, 0, w, c->a, D, c->nrows, kbuf, w };
    jobs[nj++] = (dsv4_matmul_job) { &cw->wgate, 0, w, c->a, D, c->nrows, zbuf, w };
    return nj;
}

/* Feeds one sequence's rows (kbuf/zbuf already offset to its first row) to
 * its compressor state; appends finished entries (normalised, rotated to
 * their block start, then quantised) to dst. */
static void
dsv4_compress_seg(dsv4_ctx *c, const dsv4_compressor_w *cw, dsv4_cmp_state *cs, int ratio,
                  int pos0, int n, float *kbuf, float *zbuf, float *dst, int *ndst, int indexer)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                d = cw->d, w = cw->c * d, rd = cfg->rope_dim;

    for (int i = 0; i < n; i++) {
        int    t = pos0 + i;
        float *zi = zbuf + (size_t) i * w, *out = dst + (size_t) *ndst * d;
        const float *ape = cw->ape + (size_t) (t % ratio) * w;

        for (int k = 0; k < w; k++) {
            zi[k] += ape[k];
        }
        if (!dsv4_cmp_push(c, cs, ratio, d, t, kbuf + (size_t) i * w, zi, out)) {
            continue;
        }
        c->be->rmsnorm(c->be, out, out, cw->norm, d, cfg->norm_eps);
        c->be->rope(c->be, out + d - rd, rd / 2, *ndst * ratio, c->m->freqs_comp, 1);
        if (indexer) {
            c->be->hadamard(c->be, out, d);
            c->be->fake_quant_fp4(c->be, out, d, 32);
        } else {
            c->be->fake_quant_fp8(c->be, out, d - rd, 64);
        }
        (*ndst)++;
    }
}

/* ---- attention (§4.5, §4.7) -------------------------------------------- */

/* Indices of the k largest scores[0..n) (ties: lower index first) into out. */
static int
dsv4_topk(const float *scores, int n, int k, int *out)
{
    int m = 0;

    for (int j = 0; j < n; j++) {
        if (m == k && !(scores[j] > scores[out[m - 1]])) {
            continue;
        }
        int p = m < k ? m++ : m - 1;
        while (p > 0 && scores[j] > scores[out[p - 1]]) {
            out[p] = out[p - 1];
            p--;
        }
        out[p] = j;
    }
    return m;
}

/* Attention of layer l for every row of the step: c->a -> c->y. */
static void
dsv4_attention(dsv4_ctx *c, const dsv4_layer_w *lw, int l)
{
    const dsv4_config *cfg = &c->m->cfg;
    const dsv4_attn_w *aw = &lw->attn;
    int   D = cfg->dim, H = cfg->n_heads, hd = cfg->head_dim, rd = cfg->rope_dim;
    int   Rq = cfg->q_lora_rank, G = cfg->o_groups, Ro = cfg->o_lora_rank, W = cfg->window;
    int   Hi = cfg->index_n_heads, di = cfg->index_head_dim, ratio = lw->ratio;
    const float *freqs = ratio > 0 ? c->m->freqs_comp : c->m->freqs_main;
    const dsv4_backend *be = c->be;
    int                 n = c->nrows;

    /* every projection of the block input in one parallel job: query
     * latent, window K=V, compressor and indexer inputs */
    dsv4_matmul_job *jobs = c->jobs;
    int              nj = 0;
    jobs[nj++] = (dsv4_matmul_job) { &aw->wq_a, 0, Rq, c->a, D, n, c->qr, Rq };
    jobs[nj++] = (dsv4_matmul_job) { &aw->wkv, 0, hd, c->a, D, n, c->kv, hd };
    if (ratio > 0) {
        nj = dsv4_compress_jobs(c, &aw->cmp, c->ck, c->cz, jobs, nj);
    }
    if (ratio == 4) {
        jobs[nj++] = (dsv4_matmul_job) { &aw->idx_wproj, 0, Hi, c->a, D, n, c->iw, Hi };
        nj = dsv4_compress_jobs(c, &aw->idx_cmp, c->ik, c->iz, jobs, nj);
    }
    be->matmul_batch(be, jobs, nj);

    /* queries (and the indexer's, from the same normalised latent) */
    for (int i = 0; i < n; i++) {
        float *qri = c->qr + (size_t) i * Rq;
        be->rmsnorm(be, qri, qri, aw->q_norm, Rq, cfg->norm_eps);
    }
    nj = 0;
    jobs[nj++] = (dsv4_matmul_job) { &aw->wq_b, 0, H * hd, c->qr, Rq, n, c->q, H * hd };
    if (ratio == 4) {
        jobs[nj++] = (dsv4_matmul_job) { &aw->idx_wq_b, 0, Hi * di, c->qr, Rq, n, c->iq,
                                         Hi * di };
    }
    be->matmul_batch(be, jobs, nj);
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < H; h++) {
            float *qh = c->q + ((size_t) i * H + h) * hd;
            be->rmsnorm(be, qh, qh, NULL, hd, cfg->norm_eps);
            be->rope(be, qh + hd - rd, rd / 2, c->row_pos[i], freqs, 1);
        }
    }
    /* window K=V */
    for (int i = 0; i < n; i++) {
        float *kvi = c->kv + (size_t) i * hd;
        be->rmsnorm(be, kvi, kvi, aw->kv_norm, hd, cfg->norm_eps);
        be->rope(be, kvi + hd - rd, rd / 2, c->row_pos[i], freqs, 1);
        be->fake_quant_fp8(be, kvi, hd - rd, 64);
    }
    /* compressed history */
    if (ratio > 0) {
        int w = aw->cmp.c * hd;
        for (int g = 0; g < c->nseg; g++) {
            dsv4_seg         *sg = &c->segs[g];
            dsv4_layer_state *ls = &sg->seq->layers[l];
            dsv4_compress_seg(c, &aw->cmp, &ls->cmp, ratio, sg->pos0, sg->n,
                              c->ck + (size_t) sg->row0 * w, c->cz + (size_t) sg->row0 * w,
                              ls->entries, &ls->n_entries, 0);
        }
    }
    if (ratio == 4) {
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < Hi; h++) {
                float *qh = c->iq + ((size_t) i * Hi + h) * di;
                be->rope(be, qh + di - rd, rd / 2, c->row_pos[i], freqs, 1);
                be->hadamard(be, qh, di);
                be->fake_quant_fp4(be, qh, di, 32);
            }
        }
        float wscale = 1.0f / sqrtf((float) di) / sqrtf((float) Hi);
        for (int k = 0; k < n * Hi; k++) {
            c->iw[k] *= wscale;
        }
        for (int g = 0; g < c->nseg; g++) {
            dsv4_seg         *sg = &c->segs[g];
            dsv4_layer_state *ls = &sg->seq->layers[l];
            dsv4_compress_seg(c, &aw->idx_cmp, &ls->idx_cmp, 4, sg->pos0, sg->n,
                              c->ik + (size_t) sg->row0 * 2 * di,
                              c->iz + (size_t) sg->row0 * 2 * di, ls->idx_keys,
                              &ls->n_idx_keys, 1);
        }
    }
    /* sparse attention, token by token (the ring is overwritten as we go) */
    float scale = 1.0f / sqrtf((float) hd);
    for (int i = 0; i < n; i++) {
        dsv4_layer_state *ls = &c->segs[c->row_seg[i]].seq->layers[l];
        int               p = c->row_pos[i], nk = 0;

        memcpy(ls->ring + (size_t) (p % W) * hd, c->kv + (size_t) i * hd,
               (size_t) hd * sizeof(float));
        for (int t = p - W + 1 < 0 ? 0 : p - W + 1; t <= p; t++) {
            c->keys[nk++] = ls->ring + (size_t) (t % W) * hd;
        }
        if (ratio == 4) {
            int nvalid = (p + 1) / 4;
            be->indexer_scores(be, c->iq + (size_t) i * Hi * di, c->iw + (size_t) i * Hi, Hi, di,
                               ls->idx_keys, nvalid, c->scores);
            int nsel = dsv4_topk(c->scores, nvalid, cfg->index_topk, c->topk);
            for (int s = 0; s < nsel; s++) {
                c->keys[nk++] = ls->entries + (size_t) c->topk[s] * hd;
            }
        } else if (ratio > 0) {
            for (int j = 0; j < (p + 1) / ratio; j++) {
                c->keys[nk++] = ls->entries + (size_t) j * hd;
            }
        }
        float *oi = c->o + (size_t) i * H * hd;
        be->attention(be, c->q + (size_t) i * H * hd, H, hd, c->keys, nk, scale, aw->attn_sink,
                      c->scores, oi);
        for (int h = 0; h < H; h++) {
            be->rope(be, oi + (size_t) h * hd + hd - rd, rd / 2, p, freqs, -1);
        }
    }
    /* grouped low-rank output projection: group g sees only its heads */
    int gin = H * hd / G;
    for (int g = 0; g < G; g++) {
        jobs[g] = (dsv4_matmul_job) { &aw->wo_a, g * Ro, (g + 1) * Ro, c->o + (size_t) g * gin,
                                      H * hd, n, c->olow + (size_t) g * Ro, G * Ro };
    }
    be->matmul_batch(be, jobs, G);
    be->matmul(be, &aw->wo_b, 0, D, c->olow, G * Ro, n, c->y, D);
}

/* ---- MoE (§4.8) -------------------------------------------------------- */

/* Routing of every row of the step: route_sel/route_w [n, k]. */
static void
dsv4_moe_route(dsv4_ctx *c, const dsv4_layer_w *lw)
{
    const dsv4_config *cfg = &c->m->cfg;
    const dsv4_moe_w  *f = &lw->ffn;
    int                E = cfg->n_routed_experts, k = cfg->n_active_experts;

    for (int i = 0; i < c->nrows; i++) {
        float *s = c->glog + (size_t) i * E, sum = 0.0f;
        int   *sel = c->route_sel + (size_t) i * k;
        for (int e = 0; e < E; e++) {
            float x = s[e];          /* sqrt(softplus(x)), softplus computed stably */
            s[e] = sqrtf(fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))));
        }
        if (lw->hash) {
            memcpy(sel, f->tid2eid + (size_t) *c->row_tok[i] * k, (size_t) k * sizeof(int));
        } else {
            /* the bias steers selection only; weights use the original scores */
            for (int e = 0; e < E; e++) {
                c->scores[e] = s[e] + f->gate_bias[e];
            }
            dsv4_topk(c->scores, E, k, sel);
        }
        for (int j = 0; j < k; j++) {
            sum += s[sel[j]];
        }
        for (int j = 0; j < k; j++) {
            c->route_w[(size_t) i * k + j] = s[sel[j]] / sum * cfg->route_scale;
        }
    }
}

/*
 * Routed experts of rows [i0, i1), grouped by expert: every row that chose
 * expert e is gathered into one block, so each selected expert's weights are
 * read once per step for all its rows, and all experts run as one parallel
 * job (w1 and w3 together, then w2).  Each (row, slot) output is kept apart
 * and added to y in slot order afterwards, so a row's result is the same
 * whatever else shares the step.  extra (may be NULL) joins the first job.
 */
static void
dsv4_moe_experts(dsv4_ctx *c, const dsv4_moe_w *f, int i0, int i1,
                 const dsv4_matmul_job *extra)
{
    const dsv4_config  *cfg = &c->m->cfg;
    const dsv4_backend *be = c->be;
    int D = cfg->dim, I = cfg->moe_inter_dim, E = cfg->n_routed_experts, k = cfg->n_active_experts;
    int *start = c->exp_start, nj = 0, na = (i1 - i0) * k;

    /* counting sort of the assignments by expert (rows stay in order) */
    memset(start, 0, (size_t) (E + 1) * sizeof(int));
    for (int a = 0; a < na; a++) {
        start[c->route_sel[(size_t) i0 * k + a] + 1]++;
    }
    for (int e = 0; e < E; e++) {
        start[e + 1] += start[e];
    }
    for (int a = 0; a < na; a++) {
        int p = start[c->route_sel[(size_t) i0 * k + a]]++;
        c->route_pos[a] = p;
        memcpy(c->xa + (size_t) p * D, c->a + (size_t) (i0 + a / k) * D, (size_t) D * sizeof(float));
    }
    for (int e = E; e > 0; e--) {                   /* back to first places */
        start[e] = start[e - 1];
    }
    start[0] = 0;

    if (extra != NULL) {
        c->jobs[nj++] = *extra;
    }
    for (int e = 0; e < E; e++) {
        int cnt = start[e + 1] - start[e];
        if (cnt == 0) {
            continue;
        }
        const dsv4_expert_w *x = &f->experts[e];
        c->jobs[nj++] = (dsv4_matmul_job) { &x->w1, 0, I, c->xa + (size_t) start[e] * D, D, cnt,
                                            c->eh1 + (size_t) start[e] * I, I };
        c->jobs[nj++] = (dsv4_matmul_job) { &x->w3, 0, I, c->xa + (size_t) start[e] * D, D, cnt,
                                            c->eh3 + (size_t) start[e] * I, I };
    }
    be->matmul_batch(be, c->jobs, nj);
    for (int a = 0; a < na; a++) {
        int p = c->route_pos[a];
        be->swiglu(be, c->eh1 + (size_t) p * I, c->eh3 + (size_t) p * I, I, cfg->swiglu_limit,
                   c->route_w[(size_t) i0 * k + a]);
    }
    nj = 0;
    for (int e = 0; e < E; e++) {
        int cnt = start[e + 1] - start[e];
        if (cnt > 0) {
            c->jobs[nj++] = (dsv4_matmul_job) { &f->experts[e].w2, 0, D,
                                                c->eh1 + (size_t) start[e] * I, I, cnt,
                                                c->eyb + (size_t) start[e] * D, D };
        }
    }
    be->matmul_batch(be, c->jobs, nj);
    for (int i = i0; i < i1; i++) {
        float *yi = c->y + (size_t) i * D;
        for (int j = 0; j < k; j++) {
            const float *ey = c->eyb + (size_t) c->route_pos[(i - i0) * k + j] * D;
            for (int d = 0; d < D; d++) {
                yi[d] += ey[d];
            }
        }
    }
}

static void
dsv4_moe(dsv4_ctx *c, const dsv4_layer_w *lw)
{
    const dsv4_config  *cfg = &c->m->cfg;
    const dsv4_moe_w   *f = &lw->ffn;
    const dsv4_backend *be = c->be;
    int D = cfg->dim, I = cfg->moe_inter_dim, E = cfg->n_routed_experts;
    int n = c->nrows;

    /* shared expert's w1/w3 and the gate read the same input: one job */
    dsv4_matmul_job first[3] = {
        { &f->shared.w1, 0, I, c->a, D, n, c->h1, I },
        { &f->shared.w3, 0, I, c->a, D, n, c->h3, I },
        { &f->gate, 0, E, c->a, D, n, c->glog, E },
    };
    be->matmul_batch(be, first, 3);
    for (int i = 0; i < n; i++) {
        be->swiglu(be, c->h1 + (size_t) i * I, c->h3 + (size_t) i * I, I, cfg->swiglu_limit,
                   1.0f);
    }
    dsv4_moe_route(c, lw);
    /* the shared expert's w2 writes y before any routed output is added; it
     * joins the first routed job */
    dsv4_matmul_job shared_w2 = { &f->shared.w2, 0, D, c->h1, I, n, c->y, D };
    for (int i0 = 0; i0 < n; i0 += c->moe_chunk) {
        int i1 = i0 + c->moe_chunk < n ? i0 + c->moe_chunk : n;
        dsv4_moe_experts(c, f, i0, i1, i0 == 0 ? &shared_w2 : NULL);
    }
}

/* ---- block and model --------------------------------------------------- */

/* Block l (a main layer, or the MTP block) over every row of the step. */
static void
dsv4_block(dsv4_ctx *c, int l, float *x)
{
    const dsv4_config  *cfg = &c->m->cfg;
    const dsv4_layer_w *lw = &c->m->layers[l];
    int                 D = cfg->dim, n = c->nrows;

    dsv4_hc_pre(c, &lw->hc_attn_fn, lw->hc_attn_scale, lw->hc_attn_base, x, n);
    for (int i = 0; i < n; i++) {
        c->be->rmsnorm(c->be, c->a + (size_t) i * D, c->a + (size_t) i * D, lw->attn_norm, D,
                       cfg->norm_eps);
    }
    dsv4_attention(c, lw, l);
    dsv4_hc_post(c, x, c->y, n);

    dsv4_hc_pre(c, &lw->hc_ffn_fn, lw->hc_ffn_scale, lw->hc_ffn_base, x, n);
    for (int i = 0; i < n; i++) {
        c->be->rmsnorm(c->be, c->a + (size_t) i * D, c->a + (size_t) i * D, lw->ffn_norm, D,
                       cfg->norm_eps);
    }
    dsv4_moe(c, lw);
    dsv4_hc_post(c, x, c->y, n);
}



/* Lays out the step's rows (segments, per-row token/position) after checking
 * every item.  Returns 0 or -1 with err set; nothing is modified on error. */
static int
dsv4_step_begin(dsv4_ctx *c, const dsv4_batch_item *items, int nitems, char *err,
                size_t errlen)
{
    const dsv4_config *cfg = &c->m->cfg;
    int                rows = 0;

    if (nitems <= 0 || nitems > c->max_chunk) {
        return dsv4_error(err, errlen, "batch of %d sequences, expected 1..%d", nitems,
                          c->max_chunk);
    }
    for (int b = 0; b < nitems; b++) {
        const dsv4_batch_item *it = &items[b];
        dsv4_seq              *s = it->seq;

        if (s == NULL || s->m != c->m) {
            return dsv4_error(err, errlen, "batch item %d: sequence missing or of another model",
                              b);
        }
        if (it->n <= 0 || it->n > c->max_chunk - rows) {
            return dsv4_error(err, errlen, "batch of %d+ tokens exceeds the step size %d",
                              rows + (it->n > 0 ? it->n : 0), c->max_chunk);
        }
        if (s->pos + it->n > s->max_ctx || s->pos + it->n > c->max_ctx) {
            return dsv4_error(err, errlen, "context full: %d + %d tokens exceed %d", s->pos,
                              it->n, s->max_ctx < c->max_ctx ? s->max_ctx : c->max_ctx);
        }
        for (int a = 0; a < b; a++) {
            if (items[a].seq == s) {     /* one segment per sequence keeps causality */
                return dsv4_error(err, errlen, "batch items %d and %d share a sequence", a, b);
            }
        }
        for (int i = 0; i < it->n; i++) {
            if (it->tokens[i] < 0 || it->tokens[i] >= cfg->vocab_size) {
                return dsv4_error(err, errlen, "token id %d out of range [0, %d)", it->tokens[i],
                                  cfg->vocab_size);
            }
        }
        rows += it->n;
    }
    c->nseg = nitems;
    c->nrows = rows;
    rows = 0;
    for (int b = 0; b < nitems; b++) {
        c->segs[b] = (dsv4_seg) { items[b].seq, rows, items[b].n, items[b].seq->pos };
        for (int i = 0; i < items[b].n; i++, rows++) {
            c->row_tok[rows] = &items[b].tokens[i];
            c->row_pos[rows] = items[b].seq->pos + i;
            c->row_seg[rows] = b;
        }
    }
    return 0;
}

/* Embedding row of token t into out[D]. */
static void
dsv4_embed(const dsv4_model *m, int32_t t, float *out)
{
    const uint16_t *row = (const uint16_t *) m->embed.data + (size_t) t * m->cfg.dim;

    for (int d = 0; d < m->cfg.dim; d++) {
        out[d] = dsv4_bf16_to_f32(row[d]);
    }
}

int
dsv4_forward_batch(dsv4_ctx *c, const dsv4_batch_item *items, int nitems, char *err,
                   size_t errlen)
{
    const dsv4_model  *m = c->m;
    const dsv4_config *cfg = &m->cfg;
    int                hc = cfg->hc_mult, D = cfg->dim;

    if (dsv4_step_begin(c, items, nitems, err, errlen) != 0) {
        return -1;
    }
    for (int i = 0; i < c->nrows; i++) {
        float *xi = c->x + (size_t) i * hc * D;
        dsv4_embed(m, *c->row_tok[i], xi);
        for (int st = 1; st < hc; st++) {
            memcpy(xi + (size_t) st * D, xi, (size_t) D * sizeof(float));
        }
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        dsv4_block(c, l, c->x);
    }
    /* logits of every item that wants them, DSV4_HEAD_ROWS at a time; one
     * item writes its own buffer, several go through head_out */
    const float *xs[DSV4_HEAD_ROWS];
    int          want[DSV4_HEAD_ROWS], nw = 0;
    for (int b = 0; b < nitems; b++) {
        const dsv4_seg *sg = &c->segs[b];
        sg->seq->pos += sg->n;
        if (items[b].logits != NULL) {
            xs[nw] = c->x + (size_t) (sg->row0 + sg->n - 1) * hc * D;
            want[nw++] = b;
        }
        if (nw == DSV4_HEAD_ROWS || (b == nitems - 1 && nw > 0)) {
            float *out = nw == 1 ? items[want[0]].logits : c->head_out;
            dsv4_head(c, xs, nw, &m->hc_head_fn, m->hc_head_scale, m->hc_head_base, m->norm,
                      out);
            for (int i = 0; nw > 1 && i < nw; i++) {
                memcpy(items[want[i]].logits, out + (size_t) i * cfg->vocab_size,
                       (size_t) cfg->vocab_size * sizeof(float));
            }
            nw = 0;
        }
    }
    return 0;
}

int
dsv4_forward(dsv4_ctx *c, dsv4_seq *s, const int32_t *tokens, int n, float *logits,
             char *err, size_t errlen)
{
    dsv4_batch_item it = { s, tokens, n, logits };

    return dsv4_forward_batch(c, &it, 1, err, errlen);
}

const float *
dsv4_ctx_hidden(const dsv4_ctx *c, int i)
{
    return c->x + (size_t) i * c->m->cfg.hc_mult * c->m->cfg.dim;
}

int
dsv4_mtp_forward(dsv4_ctx *c, dsv4_seq *s, const float *hidden, int32_t next_token,
                 float *logits, char *err, size_t errlen)
{
    const dsv4_model  *m = c->m;
    const dsv4_config *cfg = &m->cfg;
    const dsv4_mtp_w  *t = &m->mtp;
    int                hc = cfg->hc_mult, D = cfg->dim, mtp_pos = s->mtp_pos;

    if (cfg->n_mtp_layers == 0) {
        return dsv4_error(err, errlen, "model has no MTP block");
    }
    if (s->mtp_pos >= s->max_ctx || s->mtp_pos >= c->max_ctx) {
        return dsv4_error(err, errlen, "MTP context full at %d", s->mtp_pos);
    }
    /* the MTP block is one row at the MTP position of s */
    dsv4_batch_item it = { s, &next_token, 1, NULL };
    int             main_pos = s->pos;
    s->pos = mtp_pos;
    int rc = dsv4_step_begin(c, &it, 1, err, errlen);
    s->pos = main_pos;
    if (rc != 0) {
        return -1;
    }
    dsv4_embed(m, next_token, c->mtp_e);
    c->be->rmsnorm(c->be, c->mtp_e, c->mtp_e, t->enorm, D, cfg->norm_eps);
    for (int st = 0; st < hc; st++) {
        c->be->rmsnorm(c->be, c->mtp_h + (size_t) st * D, hidden + (size_t) st * D, t->hnorm, D,
                       cfg->norm_eps);
    }
    c->be->matmul(c->be, &t->h_proj, 0, D, c->mtp_h, D, hc, c->mtp_x, D);
    c->be->matmul(c->be, &t->e_proj, 0, D, c->mtp_e, D, 1, c->head_in, D);
    for (int st = 0; st < hc; st++) {
        for (int d = 0; d < D; d++) {
            c->mtp_x[(size_t) st * D + d] += c->head_in[d];
        }
    }
    dsv4_block(c, cfg->n_layers, c->mtp_x);
    s->mtp_pos++;
    const float *xs = c->mtp_x;
    dsv4_head(c, &xs, 1, &t->hc_head_fn, t->hc_head_scale, t->hc_head_base, t->norm, logits);
    return 0;
}

/* ---- context allocation ------------------------------------------------ */

dsv4_ctx *
dsv4_ctx_new(const dsv4_model *m, const dsv4_backend *be, int max_chunk, int max_ctx,
             char *err, size_t errlen)
{
    const dsv4_config *cfg = &m->cfg;
    dsv4_ctx          *c;
    size_t             n = (size_t) max_chunk;
    int                hc = cfg->hc_mult, D = cfg->dim, max_ratio = 4, max_keys;
    int                wmax = cfg->head_dim > cfg->index_head_dim ? cfg->head_dim
                                                                  : cfg->index_head_dim;

    if (m->flags & DSV4_LOAD_LAYOUT_ONLY) {
        dsv4_error(err, errlen, "model was loaded layout-only (no weights to run)");
        return NULL;
    }
    if (max_chunk <= 0 || max_ctx <= 0 || max_ctx > cfg->max_position) {
        dsv4_error(err, errlen, "invalid chunk %d / context %d (max %d)", max_chunk, max_ctx,
                   cfg->max_position);
        return NULL;
    }
    /* keys per query: the window plus the most compressed entries any layer
     * can add (all of them for HCA, index_topk for CSA) */
    max_keys = cfg->window + cfg->index_topk;
    for (int l = 0; l < cfg->n_layers + cfg->n_mtp_layers; l++) {
        int r = cfg->compress_ratios[l];
        if (r > max_ratio) {
            max_ratio = r;
        }
        if (r > 0 && r != 4 && cfg->window + max_ctx / r > max_keys) {
            max_keys = cfg->window + max_ctx / r;
        }
    }
    int nscores = max_keys;
    if (max_ctx / 4 > nscores) {
        nscores = max_ctx / 4;
    }
    if (cfg->n_routed_experts > nscores) {
        nscores = cfg->n_routed_experts;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        dsv4_error(err, errlen, "out of memory");
        return NULL;
    }
    c->m = m;
    c->be = be;
    c->max_chunk = max_chunk;
    c->max_ctx = max_ctx;
    /* expert buffers hold DSV4_MOE_CHUNK rows at a time: a long prefill
     * re-reads the experts every chunk, a bounded cost (see dsv4_moe) */
    c->moe_chunk = max_chunk < DSV4_MOE_CHUNK ? max_chunk : DSV4_MOE_CHUNK;
    size_t na = (size_t) c->moe_chunk * cfg->n_active_experts;
    int    njobs = 2 * cfg->n_routed_experts + 8 + cfg->o_groups;
#define ALLOC(p, count) ((p) = calloc((count), sizeof(*(p)))) == NULL
    if (ALLOC(c->x, n * hc * D) || ALLOC(c->post, n * hc) || ALLOC(c->comb, n * hc * hc)
        || ALLOC(c->mix, n * (2 + hc) * hc) || ALLOC(c->a, n * D)
        || ALLOC(c->qr, n * cfg->q_lora_rank)
        || ALLOC(c->q, n * cfg->n_heads * cfg->head_dim) || ALLOC(c->kv, n * cfg->head_dim)
        || ALLOC(c->o, n * cfg->n_heads * cfg->head_dim)
        || ALLOC(c->olow, n * cfg->o_groups * cfg->o_lora_rank) || ALLOC(c->y, n * D)
        || ALLOC(c->ck, n * 2 * wmax) || ALLOC(c->cz, n * 2 * wmax)
        || ALLOC(c->ik, n * 2 * cfg->index_head_dim) || ALLOC(c->iz, n * 2 * cfg->index_head_dim)
        || ALLOC(c->iq, n * cfg->index_n_heads * cfg->index_head_dim)
        || ALLOC(c->iw, n * cfg->index_n_heads) || ALLOC(c->glog, n * cfg->n_routed_experts)
        || ALLOC(c->h1, n * cfg->moe_inter_dim) || ALLOC(c->h3, n * cfg->moe_inter_dim)
        || ALLOC(c->head_in, (size_t) DSV4_HEAD_ROWS * D)
        || ALLOC(c->head_out, (n < DSV4_HEAD_ROWS ? n : DSV4_HEAD_ROWS) * cfg->vocab_size)
        || ALLOC(c->mtp_x, (size_t) hc * D) || ALLOC(c->mtp_e, D) || ALLOC(c->mtp_h, (size_t) hc * D)
        || ALLOC(c->keys, max_keys) || ALLOC(c->scores, nscores)
        || ALLOC(c->topk, cfg->index_topk) || ALLOC(c->pool_kv, 2 * max_ratio)
        || ALLOC(c->pool_sc, 2 * max_ratio) || ALLOC(c->segs, n)
        || ALLOC(c->row_tok, n) || ALLOC(c->row_pos, n) || ALLOC(c->row_seg, n)
        || ALLOC(c->route_sel, n * cfg->n_active_experts)
        || ALLOC(c->route_w, n * cfg->n_active_experts) || ALLOC(c->route_pos, na)
        || ALLOC(c->exp_start, cfg->n_routed_experts + 1) || ALLOC(c->xa, na * D)
        || ALLOC(c->eh1, na * cfg->moe_inter_dim) || ALLOC(c->eh3, na * cfg->moe_inter_dim)
        || ALLOC(c->eyb, na * D) || ALLOC(c->jobs, njobs)) {
        dsv4_ctx_free(c);
        dsv4_error(err, errlen, "out of memory for the activation buffers");
        return NULL;
    }
#undef ALLOC
    return c;
}

void
dsv4_ctx_free(dsv4_ctx *c)
{
    if (c == NULL) {
        return;
    }
    float *bufs[] = { c->x, c->post, c->comb, c->mix, c->a, c->qr, c->q, c->kv, c->o, c->olow,
                      c->y, c->ck, c->cz, c->ik, c->iz, c->iq, c->iw, c->glog, c->h1, c->h3,
                      c->head_in, c->head_out, c->mtp_x, c->mtp_e, c->mtp_h, c->scores,
                      c->route_w, c->xa, c->eh1, c->eh3, c->eyb };
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        free(bufs[i]);
    }
    free(c->keys);
    free(c->topk);
    free(c->pool_kv);
    free(c->pool_sc);
    free(c->segs);
    free(c->row_tok);
    free(c->row_pos);
    free(c->row_seg);
    free(c->route_sel);
    free(c->route_pos);
    free(c->exp_start);
    free(c->jobs);
    free(c);
}
