/*
 * check_consistency MODEL_DIR PROMPT_LEN: the logits at every position must
 * not depend on how the prompt is split.  Token-by-token decoding is the
 * baseline; whole-prompt prefill and chunked prefill (several chunk sizes)
 * must reproduce its logits at each chunk's last position, and decoding after
 * a chunked prefill must continue identically.  Also checks that a reset
 * sequence replays identically.
 *
 * Tolerance: max |diff| <= 1e-5 * max(1, max |logit|).  The engine computes
 * every output element the same way whatever the chunk size, so on the
 * scalar backend the results are bit-identical; the tolerance leaves room
 * for batched kernels that reorder sums (float32 epsilon ~1.2e-7 times
 * accumulation depth).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsv4.h"
#include "tests/test.h"

static float
max_abs_diff(const float *a, const float *b, int n, float *amax)
{
    float d = 0.0f;

    *amax = 1.0f;
    for (int i = 0; i < n; i++) {
        d = fmaxf(d, fabsf(a[i] - b[i]));
        *amax = fmaxf(*amax, fabsf(a[i]));
    }
    return d;
}

/*
 * Continuous batching: three sequences at different phases share each step
 * (one still prefilling in chunks of 5 while the others decode, then all
 * decode); every sequence's logits must equal its solo token-by-token run.
 * All three feed the baseline's tokens, so each step is checked against the
 * baseline row of the position it reached.
 */
static void
check_batch(dsv4_model *m, dsv4_ctx *c, const int32_t *toks, int total, const float *base)
{
    enum { NB = 3 };
    const dsv4_config *cfg = dsv4_model_config(m);
    int                V = cfg->vocab_size, start[NB] = { 0, 7, 19 }, done[NB] = { 0 };
    dsv4_seq          *seqs[NB];
    float             *out = malloc((size_t) NB * V * sizeof(float));
    char               err[256];
    float              worst = 0.0f, amax;

    for (int b = 0; b < NB; b++) {
        seqs[b] = dsv4_seq_new(m, total, err, sizeof(err));
    }
    /* sequence b starts `start[b]` steps late and prefills in chunks of 5 */
    for (int step = 0; ; step++) {
        dsv4_batch_item items[NB];
        int             ni = 0;
        for (int b = 0; b < NB; b++) {
            if (step < start[b] || done[b] == total) {
                continue;
            }
            int n = done[b] < 20 ? 5 : 1;
            if (done[b] + n > total) {
                n = total - done[b];
            }
            items[ni++] = (dsv4_batch_item) { seqs[b], toks + done[b], n, out + (size_t) b * V };
        }
        if (ni == 0) {
            break;
        }
        TEST_CHECK(dsv4_forward_batch(c, items, ni, err, sizeof(err)) == 0, "batch step %d: %s",
                   step, err);
        for (int k = 0; k < ni; k++) {
            int b = (int) (items[k].logits - out) / V;
            done[b] += items[k].n;
            float d = max_abs_diff(base + (size_t) (done[b] - 1) * V, items[k].logits, V, &amax);
            worst = fmaxf(worst, d / amax);
        }
    }
    printf("batched sequences: max relative |diff| %.3g\n", worst);
    TEST_CHECK(worst <= 1e-5f, "batched logits differ from solo runs by %g", worst);
    /* one sequence twice in a step is refused, not miscomputed */
    dsv4_batch_item dup[2] = { { seqs[0], toks, 1, NULL }, { seqs[0], toks, 1, NULL } };
    dsv4_seq_reset(seqs[0]);
    TEST_CHECK(dsv4_forward_batch(c, dup, 2, err, sizeof(err)) != 0, "duplicate sequence accepted");
    TEST_CHECK(dsv4_seq_pos(seqs[0]) == 0, "refused step changed the sequence");
    for (int b = 0; b < NB; b++) {
        dsv4_seq_free(seqs[b]);
    }
    free(out);
}

int
main(int argc, char **argv)
{
    char        err[512];
    dsv4_model *m;
    int         len = argc > 2 ? atoi(argv[2]) : 60;

    if (argc < 2 || len < 2) {
        fprintf(stderr, "usage: check_consistency MODEL_DIR [PROMPT_LEN]\n");
        return 2;
    }
    if (dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "load: %s\n", err);
        return 2;
    }
    const dsv4_config *cfg = dsv4_model_config(m);
    int      V = cfg->vocab_size, extra = 4;
    int32_t *toks = malloc((size_t) (len + extra) * sizeof(*toks));
    float   *base = malloc((size_t) (len + extra) * V * sizeof(float));   /* [pos, V] */
    float   *out = malloc((size_t) V * sizeof(float));
    uint64_t x = 88172645463325252ull;

    for (int i = 0; i < len + extra; i++) {            /* xorshift: fixed pseudo-random prompt */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        toks[i] = (int32_t) (x % (uint64_t) V);
    }
    dsv4_seq *s = dsv4_seq_new(m, len + extra, err, sizeof(err));
    dsv4_ctx *c = dsv4_ctx_new(m, dsv4_backend_cpu_scalar(), len + extra, len + extra, err,
                               sizeof(err));
    if (s == NULL || c == NULL || toks == NULL || base == NULL || out == NULL) {
        fprintf(stderr, "setup: %s\n", err);
        return 2;
    }
    for (int p = 0; p < len + extra; p++) {
        TEST_CHECK(dsv4_forward(c, s, &toks[p], 1, base + (size_t) p * V, err, sizeof(err)) == 0,
                   "decode at %d: %s", p, err);
    }

    static const int chunks[] = { 0, 1, 3, 4, 7, 16, 33 };   /* 0 = whole prompt */
    for (size_t ci = 0; ci < sizeof(chunks) / sizeof(chunks[0]); ci++) {
        int   chunk = chunks[ci] ? chunks[ci] : len;
        float worst = 0.0f, amax;
        int   exact = 1;

        dsv4_seq_reset(s);
        for (int off = 0; off < len; off += chunk) {
            int n = len - off < chunk ? len - off : chunk;
            TEST_CHECK(dsv4_forward(c, s, toks + off, n, out, err, sizeof(err)) == 0,
                       "chunk %d at %d: %s", chunk, off, err);
            const float *ref = base + (size_t) (off + n - 1) * V;
            float        d = max_abs_diff(ref, out, V, &amax);
            worst = fmaxf(worst, d / amax);
            exact &= memcmp(ref, out, (size_t) V * sizeof(float)) == 0;
        }
        for (int p = len; p < len + extra; p++) {          /* decode continues identically */
            TEST_CHECK(dsv4_forward(c, s, &toks[p], 1, out, err, sizeof(err)) == 0, "%s", err);
            float d = max_abs_diff(base + (size_t) p * V, out, V, &amax);
            worst = fmaxf(worst, d / amax);
            exact &= memcmp(base + (size_t) p * V, out, (size_t) V * sizeof(float)) == 0;
        }
        printf("chunk %3d: max relative |diff| %.3g%s\n", chunk, worst,
               exact ? " (bit-identical)" : "");
        TEST_CHECK(worst <= 1e-5f, "chunk %d: logits differ from token-by-token by %g", chunk,
                   worst);
    }
    check_batch(m, c, toks, len + extra, base);
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
    dsv4_model_free(m);
    free(toks);
    free(base);
    free(out);
    return TEST_REPORT();
}
