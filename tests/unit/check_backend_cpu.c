/*
 * check_backend_cpu MODEL_DIR ID,ID,...: the whole model on the fast CPU
 * backend (every kernel set this CPU runs, 2 threads) against the scalar
 * reference backend, and the fast backend against itself.
 *
 *   1. logits at every position, token-by-token decoding, fast vs scalar:
 *      max |diff| <= 1e-4 * max(1, max |logit|) per position (the tolerance
 *      of tests/scripts/test_reference) and the same argmax;
 *   2. on the fast backend, whole-prompt prefill, chunked prefill (chunks of
 *      3 and 16) and a batched step shared with two other sequences give
 *      bit-identical logits to its own token-by-token run (the canonical
 *      summation order of kernels/cpu/cpu.h), and so does a 1-thread backend.
 *
 * FP8/FP4 rounding and top-k are discontinuous: a prompt where some value
 * lands within float32 noise of a tie diverges by a quantum between any two
 * summation orders, so the prompts come from tests/scripts/test_backend_cpu,
 * verified stable with tests/reference/compare.py --stability-only.
 *
 * Prints one line per kernel set; exits non-zero on any failure.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsv4.h"
#include "tests/test.h"

static int
argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) {
        if (v[i] > v[b]) {
            b = i;
        }
    }
    return b;
}

/* Token-by-token logits [len, V] of toks on backend be. */
static int
decode_all(dsv4_model *m, const dsv4_backend *be, const int32_t *toks, int len, float *out)
{
    char      err[256];
    int       V = dsv4_model_config(m)->vocab_size;
    dsv4_seq *s = dsv4_seq_new(m, len, err, sizeof(err));
    dsv4_ctx *c = dsv4_ctx_new(m, be, 16, len, err, sizeof(err));
    int       rc = s != NULL && c != NULL ? 0 : -1;

    for (int p = 0; rc == 0 && p < len; p++) {
        rc = dsv4_forward(c, s, &toks[p], 1, out + (size_t) p * V, err, sizeof(err));
    }
    if (rc != 0) {
        fprintf(stderr, "decode on %s: %s\n", be->name, err);
    }
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
    return rc;
}

/* Chunked prefill of toks in chunks of `chunk`: the logits of each chunk's
 * last position must equal base exactly.  Returns 1 if all did. */
static int
chunks_exact(dsv4_model *m, const dsv4_backend *be, const int32_t *toks, int len, int chunk,
             const float *base)
{
    char      err[256];
    int       V = dsv4_model_config(m)->vocab_size, same = 1;
    dsv4_seq *s = dsv4_seq_new(m, len, err, sizeof(err));
    dsv4_ctx *c = dsv4_ctx_new(m, be, chunk, len, err, sizeof(err));
    float    *out = malloc((size_t) V * sizeof(float));

    for (int off = 0; s != NULL && c != NULL && off < len; off += chunk) {
        int n = len - off < chunk ? len - off : chunk;
        if (dsv4_forward(c, s, toks + off, n, out, err, sizeof(err)) != 0) {
            fprintf(stderr, "chunk %d: %s\n", chunk, err);
            same = 0;
            break;
        }
        same &= memcmp(out, base + (size_t) (off + n - 1) * V, (size_t) V * sizeof(float)) == 0;
    }
    free(out);
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
    return same && s != NULL && c != NULL;
}

/* NB sequences in each step (the checked one decodes token by token while
 * the others prefill in chunks of 5 beside it): more sequences than share
 * one pass over the head (16), every third without logits. */
static int
batch_exact(dsv4_model *m, const dsv4_backend *be, const int32_t *toks, int len,
            const float *base)
{
    enum { NB = 19 };
    char      err[256];
    int       V = dsv4_model_config(m)->vocab_size, same = 1, done[NB] = { 0 };
    dsv4_ctx *c = dsv4_ctx_new(m, be, 1 + 5 * (NB - 1), len, err, sizeof(err));
    dsv4_seq *s[NB];
    float    *out = malloc((size_t) NB * V * sizeof(float));

    for (int b = 0; b < NB; b++) {
        s[b] = dsv4_seq_new(m, len, err, sizeof(err));
    }
    while (c != NULL && done[0] < len) {
        dsv4_batch_item it[NB];
        int             ni = 0, who[NB];
        for (int b = 0; b < NB; b++) {
            int n = b == 0 ? 1 : 5;
            if (done[b] + n > len) {
                n = len - done[b];
            }
            if (n > 0) {
                who[ni] = b;
                it[ni++] = (dsv4_batch_item) { s[b], toks + done[b], n,
                                               b % 3 == 2 ? NULL : out + (size_t) b * V };
            }
        }
        if (dsv4_forward_batch(c, it, ni, err, sizeof(err)) != 0) {
            fprintf(stderr, "batch: %s\n", err);
            same = 0;
            break;
        }
        for (int k = 0; k < ni; k++) {
            done[who[k]] += it[k].n;
            if (it[k].logits != NULL) {
                same &= memcmp(it[k].logits, base + (size_t) (done[who[k]] - 1) * V,
                               (size_t) V * sizeof(float)) == 0;
            }
        }
    }
    for (int b = 0; b < NB; b++) {
        dsv4_seq_free(s[b]);
    }
    free(out);
    dsv4_ctx_free(c);
    return same && c != NULL;
}

int
main(int argc, char **argv)
{
    static const char *isas[] = { "generic", "avx2", "avx512" };
    char                err[512];
    dsv4_model         *m;
    int                 len = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: check_backend_cpu MODEL_DIR ID,ID,...\n");
        return 2;
    }
    for (const char *p = argv[2]; *p; p++) {
        len += *p == ',';
    }
    len++;
    if (dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "load: %s\n", err);
        return 2;
    }
    int      V = dsv4_model_config(m)->vocab_size;
    int32_t *toks = malloc((size_t) len * sizeof(*toks));
    float   *ref = malloc((size_t) len * V * sizeof(float));
    float   *fast = malloc((size_t) len * V * sizeof(float));
    float   *one = malloc((size_t) len * V * sizeof(float));
    char    *p = argv[2];

    for (int i = 0; i < len; i++) {
        long t = strtol(p, &p, 10);
        if (t < 0 || t >= V || (*p != ',' && *p != '\0')) {
            fprintf(stderr, "bad prompt id list\n");
            return 2;
        }
        toks[i] = (int32_t) t;
        p += *p == ',';
    }
    if (decode_all(m, dsv4_backend_cpu_scalar(), toks, len, ref) != 0) {
        return 2;
    }
    for (size_t k = 0; k < sizeof(isas) / sizeof(isas[0]); k++) {
        dsv4_cpu_opts       o2 = { 2, isas[k], 0 }, o1 = { 1, isas[k], 0 };
        const dsv4_backend *be = dsv4_backend_cpu_new_opts(&o2, err, sizeof(err));
        if (be == NULL) {
            printf("%s: skipped (%s)\n", isas[k], err);
            continue;
        }
        TEST_CHECK(decode_all(m, be, toks, len, fast) == 0, "%s decode", be->name);
        float worst = 0.0f;
        int   same_tok = 1;
        for (int p = 0; p < len; p++) {
            const float *a = ref + (size_t) p * V, *b = fast + (size_t) p * V;
            float        d = 0.0f, amax = 1.0f;
            for (int i = 0; i < V; i++) {
                d = fmaxf(d, fabsf(a[i] - b[i]));
                amax = fmaxf(amax, fabsf(a[i]));
            }
            worst = fmaxf(worst, d / amax);
            same_tok &= argmax(a, V) == argmax(b, V);
        }
        TEST_CHECK(worst <= 1e-4f, "%s vs scalar: max |diff| / max(1, |logit|) = %g > 1e-4",
                   be->name, worst);
        TEST_CHECK(same_tok, "%s vs scalar: greedy token differs", be->name);
        int c3 = chunks_exact(m, be, toks, len, 3, fast);
        int c16 = chunks_exact(m, be, toks, len, 16, fast);
        int cw = chunks_exact(m, be, toks, len, len, fast);
        int bt = batch_exact(m, be, toks, len, fast);
        TEST_CHECK(c3 && c16 && cw, "%s: chunked prefill not bit-identical to decode "
                   "(3: %d, 16: %d, whole: %d)", be->name, c3, c16, cw);
        TEST_CHECK(bt, "%s: batched step not bit-identical to a solo run", be->name);
        const dsv4_backend *b1 = dsv4_backend_cpu_new_opts(&o1, err, sizeof(err));
        TEST_CHECK(b1 != NULL && decode_all(m, b1, toks, len, one) == 0
                   && memcmp(one, fast, (size_t) len * V * sizeof(float)) == 0,
                   "%s: 1 thread differs from 2 threads", be->name);
        printf("%s: vs scalar max rel |diff| %.3g, same greedy tokens %s; prefill/chunks/batch/"
               "threads bit-identical %s\n", be->name, worst, same_tok ? "yes" : "NO",
               c3 && c16 && cw && bt ? "yes" : "NO");
        dsv4_backend_cpu_free(b1);
        dsv4_backend_cpu_free(be);
    }
    free(toks); free(ref); free(fast); free(one);
    dsv4_model_free(m);
    return TEST_REPORT();
}
