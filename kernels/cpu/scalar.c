/*
 * Scalar reference backend: the plainest correct expression of every op.
 * It is the oracle for SIMD/CUDA backends, so clarity beats speed here.
 */
#include <math.h>

#include "formats.h"
#include "kernels.h"

/* One output element W[r, :] · x, dequantising the weight row on the fly. */
static float
dsv4_scalar_row_dot(const dsv4_mat *w, int r, const float *x)
{
    int     cols = w->cols;
    float   acc = 0.0f;

    switch (w->type) {
    case DSV4_MAT_F32: {
        const float *row = (const float *) w->data + (size_t) r * cols;
        for (int k = 0; k < cols; k++) {
            acc += row[k] * x[k];
        }
        break;
    }
    case DSV4_MAT_BF16: {
        const uint16_t *row = (const uint16_t *) w->data + (size_t) r * cols;
        for (int k = 0; k < cols; k++) {
            acc += dsv4_bf16_to_f32(row[k]) * x[k];
        }
        break;
    }
    case DSV4_MAT_FP8: {
        const uint8_t *row = (const uint8_t *) w->data + (size_t) r * cols;
        const uint8_t *srow = w->scale + (size_t) (r / 128) * ((cols + 127) / 128);
        for (int k0 = 0; k0 < cols; k0 += 128) {
            int   k1 = k0 + 128 < cols ? k0 + 128 : cols;
            float part = 0.0f;
            for (int k = k0; k < k1; k++) {
                part += dsv4_e4m3_table[row[k]] * x[k];
            }
            acc += part * dsv4_e8m0_table[srow[k0 / 128]];
        }
        break;
    }
    case DSV4_MAT_FP4: {
        const uint8_t *row = (const uint8_t *) w->data + (size_t) r * (cols / 2);
        const uint8_t *srow = w->scale + (size_t) r * (cols / 32);
        for (int k0 = 0; k0 < cols; k0 += 32) {
            float part = 0.0f;
            for (int k = k0; k < k0 + 32; k += 2) {
                uint8_t b = row[k / 2];
                part += dsv4_e2m1_table[b & 0xF] * x[k]
                        + dsv4_e2m1_table[b >> 4] * x[k + 1];
            }
            acc += part * dsv4_e8m0_table[srow[k0 / 32]];
        }
        break;
    }
    }
    return acc;
}

static void
dsv4_scalar_matmul(const dsv4_backend *be, const dsv4_mat *w, int row_begin, int row_end,
                   const float *x, int ldx, int n, float *y, int ldy)
{
    for (int i = 0; i < n; i++) {
        for (int r = row_begin; r < row_end; r++) {
            y[(size_t) i * ldy + (r - row_begin)] =
                dsv4_scalar_row_dot(w, r, x + (size_t) i * ldx);
        }
    }
}

static void
dsv4_scalar_matmul_batch(const dsv4_backend *be, const dsv4_matmul_job *jobs, int njobs)
{
    for (int j = 0; j < njobs; j++) {
        dsv4_scalar_matmul(be, jobs[j].w, jobs[j].row_begin, jobs[j].row_end, jobs[j].x,
                           jobs[j].ldx, jobs[j].n, jobs[j].y, jobs[j].ldy);
    }
}

static void
dsv4_scalar_rmsnorm(const dsv4_backend *be, float *y, const float *x, const float *w, int d, float eps)
{
    float ss = 0.0f;

    for (int i = 0; i < d; i++) {
        ss += x[i] * x[i];
    }
    float r = 1.0f / sqrtf(ss / (float) d + eps);
    for (int i = 0; i < d; i++) {
        y[i] = x[i] * r * (w ? w[i] : 1.0f);
    }
}

static void
dsv4_scalar_swiglu(const dsv4_backend *be, float *g, const float *u, int n, float limit, float w)
{
    for (int k = 0; k < n; k++) {
        float gk = g[k], uk = u[k];
        if (limit > 0) {
            gk = fminf(gk, limit);
            uk = fminf(fmaxf(uk, -limit), limit);
        }
        g[k] = gk * (1.0f / (1.0f + expf(-gk))) * uk * w;
    }
}

static void
dsv4_scalar_hc_post(const dsv4_backend *be, float *x, const float *o, const float *post,
                    const float *comb, int hc, int d)
{
    for (int e = 0; e < d; e++) {
        float old[16];                          /* x[j][e] before the update */
        for (int j = 0; j < hc; j++) {
            old[j] = x[(size_t) j * d + e];
        }
        for (int k = 0; k < hc; k++) {
            float acc = post[k] * o[e];
            for (int j = 0; j < hc; j++) {
                acc += comb[j * hc + k] * old[j];
            }
            x[(size_t) k * d + e] = acc;
        }
    }
}

static void
dsv4_scalar_rope(const dsv4_backend *be, float *v, int npairs, int pos, const float *freqs, int sign)
{
    for (int i = 0; i < npairs; i++) {
        float th = (float) pos * freqs[i];
        float c = cosf(th), s = sign * sinf(th);
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
    }
}

static void
dsv4_scalar_fake_quant(float *v, int n, int block, const dsv4_qfmt *f, float (*round)(float))
{
    for (int b0 = 0; b0 < n; b0 += block) {
        int   b1 = b0 + block < n ? b0 + block : n;
        float amax = f->floor_amax;
        for (int i = b0; i < b1; i++) {
            amax = fmaxf(amax, fabsf(v[i]));
        }
        float s = dsv4_pow2_ceil(amax / f->qmax);
        for (int i = b0; i < b1; i++) {
            v[i] = round(v[i] / s) * s;     /* round() saturates at ±qmax */
        }
    }
}

static void
dsv4_scalar_fake_quant_fp8(const dsv4_backend *be, float *v, int n, int block)
{
    dsv4_scalar_fake_quant(v, n, block, &dsv4_qfmt_e4m3, dsv4_round_e4m3);
}

static void
dsv4_scalar_fake_quant_fp4(const dsv4_backend *be, float *v, int n, int block)
{
    dsv4_scalar_fake_quant(v, n, block, &dsv4_qfmt_e2m1, dsv4_round_e2m1);
}

static void
dsv4_scalar_hadamard(const dsv4_backend *be, float *v, int n)
{
    for (int h = 1; h < n; h *= 2) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
    }
    float s = 1.0f / sqrtf((float) n);
    for (int i = 0; i < n; i++) {
        v[i] *= s;
    }
}

static void
dsv4_scalar_sinkhorn(const dsv4_backend *be, float *c, int n, int iters, float eps)
{
    for (int j = 0; j < n; j++) {                   /* row softmax + eps */
        float *row = c + j * n, mx = row[0], sum = 0.0f;
        for (int k = 1; k < n; k++) {
            mx = fmaxf(mx, row[k]);
        }
        for (int k = 0; k < n; k++) {
            row[k] = expf(row[k] - mx);
            sum += row[k];
        }
        for (int k = 0; k < n; k++) {
            row[k] = row[k] / sum + eps;
        }
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) {                               /* row pass */
            for (int j = 0; j < n; j++) {
                float sum = 0.0f;
                for (int k = 0; k < n; k++) {
                    sum += c[j * n + k];
                }
                for (int k = 0; k < n; k++) {
                    c[j * n + k] /= sum + eps;
                }
            }
        }
        for (int k = 0; k < n; k++) {               /* column pass */
            float sum = 0.0f;
            for (int j = 0; j < n; j++) {
                sum += c[j * n + k];
            }
            for (int j = 0; j < n; j++) {
                c[j * n + k] /= sum + eps;
            }
        }
    }
}

static void
dsv4_scalar_attention(const dsv4_backend *be, const float *q, int nheads, int dim,
                      const float *const *keys, int nkeys, float scale,
                      const float *sink, float *scores, float *out)
{
    for (int h = 0; h < nheads; h++) {
        const float *qh = q + (size_t) h * dim;
        float       *oh = out + (size_t) h * dim;
        float        mx = -INFINITY, den;

        for (int u = 0; u < nkeys; u++) {
            float d = 0.0f;
            for (int i = 0; i < dim; i++) {
                d += qh[i] * keys[u][i];
            }
            scores[u] = d * scale;
            mx = fmaxf(mx, scores[u]);
        }
        den = expf(sink[h] - mx);
        for (int u = 0; u < nkeys; u++) {
            scores[u] = expf(scores[u] - mx);
            den += scores[u];
        }
        for (int i = 0; i < dim; i++) {
            oh[i] = 0.0f;
        }
        for (int u = 0; u < nkeys; u++) {
            float p = scores[u] / den;
            for (int i = 0; i < dim; i++) {
                oh[i] += p * keys[u][i];
            }
        }
    }
}

static void
dsv4_scalar_compress_pool(const dsv4_backend *be, const float *const *kv, const float *const *score,
                          int nslots, int d, float *out)
{
    for (int e = 0; e < d; e++) {
        float mx = -INFINITY, den = 0.0f, acc = 0.0f;
        for (int s = 0; s < nslots; s++) {
            mx = fmaxf(mx, score[s][e]);
        }
        for (int s = 0; s < nslots; s++) {
            float w = expf(score[s][e] - mx);    /* -inf slots give 0 */
            den += w;
            acc += w * kv[s][e];
        }
        out[e] = acc / den;
    }
}

static void
dsv4_scalar_indexer_scores(const dsv4_backend *be, const float *q, const float *w, int nheads, int dim,
                           const float *keys, int nkeys, float *out)
{
    for (int j = 0; j < nkeys; j++) {
        const float *kj = keys + (size_t) j * dim;
        float        s = 0.0f;
        for (int h = 0; h < nheads; h++) {
            float d = 0.0f;
            for (int i = 0; i < dim; i++) {
                d += q[(size_t) h * dim + i] * kj[i];
            }
            s += w[h] * fmaxf(d, 0.0f);
        }
        out[j] = s;
    }
}

static const dsv4_backend dsv4_cpu_scalar = {
    .name = "cpu-scalar",
    .matmul = dsv4_scalar_matmul,
    .matmul_batch = dsv4_scalar_matmul_batch,
    .rmsnorm = dsv4_scalar_rmsnorm,
    .swiglu = dsv4_scalar_swiglu,
    .hc_post = dsv4_scalar_hc_post,
    .rope = dsv4_scalar_rope,
    .fake_quant_fp8 = dsv4_scalar_fake_quant_fp8,
    .fake_quant_fp4 = dsv4_scalar_fake_quant_fp4,
    .hadamard = dsv4_scalar_hadamard,
    .sinkhorn = dsv4_scalar_sinkhorn,
    .attention = dsv4_scalar_attention,
    .compress_pool = dsv4_scalar_compress_pool,
    .indexer_scores = dsv4_scalar_indexer_scores,
};

const dsv4_backend *
dsv4_backend_cpu_scalar(void)
{
    dsv4_formats_init();
    return &dsv4_cpu_scalar;
}
