/*
 * Token sampling (see sample.h for the pipeline and its semantics).
 *
 * Cost per call for vocab V (numbers: V = 129,280, one core, AVX2):
 *   - penalties: O(distinct tokens seen so far);
 *   - one vectorised scan: NaN/+inf clean-up, maximum, per-block maxima.
 *     Greedy stops there (~15 us);
 *   - the temperature is never applied to the logits: it is folded into the
 *     weights exp((x - max) / T), and the order of the tokens ignores it;
 *   - top_k <= DSV4_HEAP_TOPK_MAX: a k-heap fed only from the blocks and
 *     16-token chunks that can still beat it, then k candidates only, with no
 *     exp over the vocabulary (top_k 50: ~25 us);
 *   - otherwise one vectorised weight pass with per-block sums (~80 us), then
 *     a two-level walk (no top-k/top-p: ~95 us in all), or a bucket histogram
 *     that finds the top-k / top-p cut in two streaming passes and selects
 *     only inside the bucket the cut falls in (top_p 0.9 on a peaked
 *     distribution: ~110 us; on a flat one whose nucleus is half the
 *     vocabulary: ~0.7 ms);
 *   - top-p after a top-k heap: a quickselect weighted by mass, no sort.
 * Nothing allocates; nothing sorts the vocabulary, except as the fallback of
 * a quickselect whose pivots degenerate.
 */

/* Bit-for-bit reproducibility across machines and -march levels: a fused
 * multiply-add rounds once where a*b+c rounds twice, so letting the compiler
 * contract (GNU C's default) would make the probabilities, and with them the
 * tokens, depend on the target CPU. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "sample.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The two full-vocabulary passes (scan, weights) are compiled twice on
 * x86-64: baseline SSE2 and AVX2, picked at run time.  Both compute the same
 * bits, lane by lane the same IEEE operations (AVX2 does not bring FMA, and
 * contraction is off anyway), so the choice changes the speed only.
 * -DDSV4_SAMPLE_NO_DISPATCH builds the baseline alone (to test it). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DSV4_SAMPLE_NO_DISPATCH)
#define DSV4_SAMPLE_AVX2 1
#endif
#define DSV4_INLINE static inline __attribute__((always_inline))

/* Above this k, the bucket histogram (dsv4_hist_select) beats a heap whose
 * insertions cost log k each. */
#define DSV4_HEAP_TOPK_MAX 2048

/* Block length for the scan and weight passes: a compile-time trip count lets
 * the compiler vectorise them at -O2, the per-block maxima let greedy find the
 * first maximum without a second full pass, and the per-block sums make the
 * final walk O(V / BLOCK + BLOCK) instead of O(V). */
#define DSV4_SAMPLE_BLOCK 1024

/* dsv4_hist_select buckets the candidates by (max - x) / T over at most 88
 * nats (weights below e^-87 are 0, see dsv4_exp_nonpos), or less when the
 * candidates' weight threshold allows; the last bucket catches the rest. */
#define DSV4_NBUCKET     2048
#define DSV4_BUCKET_SPAN 88.0f

#define DSV4_PROMPT_BIT  0x80000000u
#define DSV4_COUNT_MASK  0x7fffffffu

typedef struct {
    float   x;    /* logit: the order */
    int32_t id;
    float   w;    /* weight exp((x - max) / T), carried so the mass sums read
                   * candidates sequentially instead of gathering by id */
} dsv4_cand;

struct dsv4_sampler {
    int                vocab;
    dsv4_sample_params p;
    uint64_t           rng[4];     /* xoshiro256** state, never all zero */
    /* count[id]: DSV4_PROMPT_BIT if seen in the prompt, low bits the number of
     * times generated.  touched[] lists the ids with count != 0 so the
     * penalties cost O(distinct tokens seen), not O(vocab). */
    uint32_t          *count;
    int32_t           *touched;
    int                n_touched;
    float             *e;          /* [vocab] weights exp((x - max) / T) */
    float             *raw;        /* [vocab] copy of the raw logits, for raw logprobs */
    dsv4_cand         *cand;       /* [vocab + 1] candidates / heap scratch (+1: dsv4_visit's spare slot) */
    dsv4_cand         *bcand;      /* [nblock] block maxima, to bound top-k */
    double            *hmass;      /* [DSV4_NBUCKET] top-p histogram: mass */
    int32_t           *hcount;     /*                 and token count per bucket */
    double            *block;      /* [nblock] sums of e[] per block */
    float             *bmax;       /* [nblock] maximum logit per block */
    int                nblock;
};

/* ---------------------------------------------------------------- RNG ---- */

/* splitmix64 spreads any seed (0 included) over the whole state, so nearby
 * seeds give unrelated streams and the xoshiro state is never all zero. */
static uint64_t dsv4_splitmix64(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t dsv4_rotl(uint64_t v, int k)
{
    return (v << k) | (v >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna, 2018): 256-bit state, period 2^256 - 1,
 * passes BigCrush; integer-only, so identical everywhere. */
static uint64_t dsv4_rng_next(uint64_t s[4])
{
    uint64_t out = dsv4_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = dsv4_rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1) with 53 random bits: exactly representable, never 1, so
 * u * Z < Z up to one rounding (handled by the walks' fallbacks). */
static double dsv4_rng_uniform(uint64_t s[4])
{
    return (double)(dsv4_rng_next(s) >> 11) * 0x1.0p-53;
}

/* ---------------------------------------------------------------- exp ---- */

/* e^x for x <= 0 (x = logit - max), our own so the result does not depend on
 * the libm: round x/ln2 to n, reduce r = x - n*ln2 with a two-part ln2 (the
 * high part has 15 significant bits, so n*hi is exact for |n| <= 127), take
 * the degree-7 Taylor polynomial (truncation error < 1e-8 relative on
 * |r| <= ln2/2), scale by 2^n through the exponent bits.  Below -87 the
 * result is 0, which keeps every output normal (no denormals, so flush-to-zero
 * modes cannot change it) and costs nothing: e^-87 is 1.6e-38 of the top token.
 * Branch-free so the block loop vectorises. */
DSV4_INLINE float dsv4_exp_nonpos(float x)
{
    const float magic = 0x1.8p23f;      /* adding it rounds to an integer */
    const float log2e = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f;
    const float ln2_lo = 0x1.7f7d1cp-20f;
    /* the clamp and the final zeroing are bit masks, not ?:, because GCC
     * will not if-convert float selects (NaN rules) and so would not
     * vectorise the caller's loop */
    union { float f; uint32_t u; } xb = { x }, lim = { -87.0f }, xc, kb, sc, y;
    uint32_t keep = -(uint32_t)(x >= -87.0f);
    xc.u = (xb.u & keep) | (lim.u & ~keep);
    kb.f = xc.f * log2e + magic;
    float n = kb.f - magic;
    float r = xc.f - n * ln2_hi;
    r = r - n * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* the low mantissa bits of kb hold n + 2^22; n + 127 is the biased exponent */
    sc.u = (kb.u - 0x4b400000u + 127u) << 23;
    y.f = p * sc.f;
    y.u &= keep;
    return y.f;
}

/* v if v >= cut, else 0; a mask for the same reason as above */
DSV4_INLINE float dsv4_keep_ge(float v, float cut)
{
    union { float f; uint32_t u; } b = { v };
    b.u &= -(uint32_t)(v >= cut);
    return b.f;
}

/* --------------------------------------------------------- params -------- */

void dsv4_sample_params_default(dsv4_sample_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

__attribute__((format(printf, 3, 4)))
static int dsv4_sample_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* The comparisons are written so that NaN fails them: !(lo <= v && v <= hi). */
int dsv4_sample_params_check(const dsv4_sample_params *p, int vocab, char *err, size_t errlen)
{
    if (!p)
        return dsv4_sample_fail(err, errlen, "sampling parameters: NULL");
    if (vocab <= 0)
        return dsv4_sample_fail(err, errlen, "vocab: %d is not positive", vocab);
    if (!(p->temperature >= 0.0f && p->temperature <= DSV4_SAMPLE_MAX_TEMPERATURE))
        return dsv4_sample_fail(err, errlen, "temperature: %g is outside [0, %g]",
                                (double)p->temperature, (double)DSV4_SAMPLE_MAX_TEMPERATURE);
    if (p->top_k < -1)
        return dsv4_sample_fail(err, errlen, "top_k: %d is below -1 (-1 or 0 disable it)",
                                p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return dsv4_sample_fail(err, errlen, "top_p: %g is outside (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return dsv4_sample_fail(err, errlen, "min_p: %g is outside [0, 1]", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= FLT_MAX))
        return dsv4_sample_fail(err, errlen, "repetition_penalty: %g is not a finite number > 0",
                                (double)p->repetition_penalty);
    if (!(fabsf(p->frequency_penalty) <= DSV4_SAMPLE_MAX_PENALTY))
        return dsv4_sample_fail(err, errlen, "frequency_penalty: %g is outside [-%g, %g]",
                                (double)p->frequency_penalty, (double)DSV4_SAMPLE_MAX_PENALTY,
                                (double)DSV4_SAMPLE_MAX_PENALTY);
    if (!(fabsf(p->presence_penalty) <= DSV4_SAMPLE_MAX_PENALTY))
        return dsv4_sample_fail(err, errlen, "presence_penalty: %g is outside [-%g, %g]",
                                (double)p->presence_penalty, (double)DSV4_SAMPLE_MAX_PENALTY,
                                (double)DSV4_SAMPLE_MAX_PENALTY);
    if (p->n_bias < 0)
        return dsv4_sample_fail(err, errlen, "logit_bias: entry count %d is negative", p->n_bias);
    if (p->n_bias > 0 && (!p->bias_ids || !p->bias_values))
        return dsv4_sample_fail(err, errlen, "logit_bias: %d entries but no id/value arrays",
                                p->n_bias);
    for (int i = 0; i < p->n_bias; i++) {
        int32_t id = p->bias_ids[i];
        float v = p->bias_values[i];
        if (id < 0 || id >= vocab)
            return dsv4_sample_fail(err, errlen,
                                    "logit_bias: token id %ld (entry %d) is outside [0, %d)",
                                    (long)id, i, vocab);
        if (!(fabsf(v) <= DSV4_SAMPLE_MAX_BIAS))
            return dsv4_sample_fail(err, errlen,
                                    "logit_bias: value %g for token %ld is outside [-%g, %g]",
                                    (double)v, (long)id, (double)DSV4_SAMPLE_MAX_BIAS,
                                    (double)DSV4_SAMPLE_MAX_BIAS);
    }
    return 0;
}

/* -------------------------------------------------------- lifetime ------- */

dsv4_sampler *dsv4_sampler_new(int vocab, const dsv4_sample_params *p)
{
    if (dsv4_sample_params_check(p, vocab, NULL, 0) != 0)
        return NULL;
    dsv4_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    size_t v = (size_t)vocab;
    s->vocab = vocab;
    s->p = *p;
    s->nblock = (vocab + DSV4_SAMPLE_BLOCK - 1) / DSV4_SAMPLE_BLOCK;
    s->count = calloc(v, sizeof *s->count);
    s->touched = malloc(v * sizeof *s->touched);
    s->e = malloc(v * sizeof *s->e);
    s->raw = malloc(v * sizeof *s->raw);
    s->cand = malloc((v + 1) * sizeof *s->cand);
    s->block = malloc((size_t)s->nblock * sizeof *s->block);
    s->bmax = malloc((size_t)s->nblock * sizeof *s->bmax);
    s->bcand = malloc((size_t)s->nblock * sizeof *s->bcand);
    s->hmass = malloc(DSV4_NBUCKET * sizeof *s->hmass);
    s->hcount = malloc(DSV4_NBUCKET * sizeof *s->hcount);
    if (!s->count || !s->touched || !s->e || !s->raw || !s->cand || !s->block || !s->bmax ||
        !s->bcand || !s->hmass || !s->hcount) {
        dsv4_sampler_free(s);
        return NULL;
    }
    uint64_t sm = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = dsv4_splitmix64(&sm);
    return s;
}

void dsv4_sampler_free(dsv4_sampler *s)
{
    if (!s)
        return;
    free(s->count);
    free(s->touched);
    free(s->e);
    free(s->raw);
    free(s->cand);
    free(s->block);
    free(s->bmax);
    free(s->bcand);
    free(s->hmass);
    free(s->hcount);
    free(s);
}

/* ------------------------------------------------------------ history ---- */

static void dsv4_record(dsv4_sampler *s, int32_t id, int prompt)
{
    uint32_t c = s->count[id];
    if (c == 0)
        s->touched[s->n_touched++] = id;   /* at most once per id: fits in vocab */
    if (prompt)
        c |= DSV4_PROMPT_BIT;
    else if ((c & DSV4_COUNT_MASK) != DSV4_COUNT_MASK)
        c++;
    s->count[id] = c;
}

int dsv4_sampler_accept_prompt(dsv4_sampler *s, const int32_t *ids, int n)
{
    if (!s || n < 0 || (n > 0 && !ids))
        return -1;
    /* validate first so a bad prompt leaves the history as it was */
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->vocab)
            return -1;
    for (int i = 0; i < n; i++)
        dsv4_record(s, ids[i], 1);
    return 0;
}

int dsv4_sampler_accept(dsv4_sampler *s, int32_t id)
{
    if (!s || id < 0 || id >= s->vocab)
        return -1;
    dsv4_record(s, id, 0);
    return 0;
}

/* Bias, then the penalties, in the order vLLM applies them; written as
 * separate roundings so the result is the documented formula exactly. */
static void dsv4_apply_penalties(const dsv4_sampler *s, float *logits)
{
    const dsv4_sample_params *p = &s->p;
    for (int i = 0; i < p->n_bias; i++)
        logits[p->bias_ids[i]] += p->bias_values[i];

    float rep = p->repetition_penalty;
    float freq = p->frequency_penalty;
    float pres = p->presence_penalty;
    if (rep == 1.0f && freq == 0.0f && pres == 0.0f)
        return;
    for (int j = 0; j < s->n_touched; j++) {
        int32_t id = s->touched[j];
        uint32_t n = s->count[id] & DSV4_COUNT_MASK;
        float x = logits[id];
        if (rep != 1.0f)
            x = x > 0.0f ? x / rep : x * rep;
        if (n > 0) {
            x -= (float)n * freq;
            x -= pres;
        }
        logits[id] = x;
    }
}

/* ---------------------------------------------------------- ordering ----- */

/* The candidate order: larger logit first, lower id first on ties.  A strict
 * total order (ids are unique), so every selection below is deterministic and
 * top-k keeps exactly k. */
static inline int dsv4_better(dsv4_cand a, dsv4_cand b)
{
    return (a.x > b.x) | ((a.x == b.x) & (a.id < b.id));
}

static inline void dsv4_cand_swap(dsv4_cand *a, dsv4_cand *b)
{
    dsv4_cand t = *a;
    *a = *b;
    *b = t;
}

/* Heap whose root is the worst element: the top-k filter compares each new
 * token with the root only, and heapsort pops the worst to the back. */
static void dsv4_sift_down(dsv4_cand *h, int n, int i)
{
    dsv4_cand v = h[i];
    for (;;) {
        int l = 2 * i + 1;
        if (l >= n)
            break;
        int w = l;
        if (l + 1 < n && dsv4_better(h[l], h[l + 1]))
            w = l + 1;
        if (dsv4_better(h[w], v))
            break;
        h[i] = h[w];
        i = w;
    }
    h[i] = v;
}

static void dsv4_heapsort(dsv4_cand *a, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        dsv4_sift_down(a, n, i);
    for (int end = n - 1; end > 0; end--) {
        dsv4_cand_swap(&a[0], &a[end]);
        dsv4_sift_down(a, end, 0);
    }
}

static void dsv4_insertion_sort(dsv4_cand *a, int n)
{
    for (int i = 1; i < n; i++) {
        dsv4_cand v = a[i];
        int j = i;
        while (j > 0 && dsv4_better(v, a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

/* Median-of-three pivot, then a branch-free Lomuto pass (the swap is
 * unconditional and only the boundary moves, so there is no mispredicted
 * branch per element).  Returns p: a[0..p) better than a[p], a(p..n) worse.
 * n >= 3. */
static int dsv4_partition(dsv4_cand *a, int n)
{
    int i0 = 0, i1 = n / 2, i2 = n - 1;
    if (dsv4_better(a[i1], a[i0]))
        dsv4_cand_swap(&a[i0], &a[i1]);
    if (dsv4_better(a[i2], a[i1])) {
        dsv4_cand_swap(&a[i1], &a[i2]);
        if (dsv4_better(a[i1], a[i0]))
            dsv4_cand_swap(&a[i0], &a[i1]);
    }
    dsv4_cand_swap(&a[i1], &a[n - 1]);
    dsv4_cand pv = a[n - 1];
    int st = 0;
    for (int i = 0; i < n - 1; i++) {
        dsv4_cand t = a[i];
        int c = dsv4_better(t, pv);
        a[i] = a[st];
        a[st] = t;
        st += c;
    }
    dsv4_cand_swap(&a[st], &a[n - 1]);
    return st;
}

static int dsv4_depth_limit(int n)
{
    int d = 0;
    while (n > 1) {
        n >>= 1;
        d++;
    }
    return 2 * d + 4;
}

/* Introsort: quicksort, heapsort when the recursion degenerates, insertion
 * sort for short runs.  Sorts best first.  No allocation (unlike qsort). */
static void dsv4_sort_rec(dsv4_cand *a, int n, int depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            dsv4_heapsort(a, n);
            return;
        }
        int p = dsv4_partition(a, n);
        if (p < n - 1 - p) {
            dsv4_sort_rec(a, p, depth);
            a += p + 1;
            n -= p + 1;
        } else {
            dsv4_sort_rec(a + p + 1, n - p - 1, depth);
            n = p;
        }
    }
    dsv4_insertion_sort(a, n);
}

static void dsv4_sort(dsv4_cand *a, int n)
{
    dsv4_sort_rec(a, n, dsv4_depth_limit(n));
}

/* Moves the k best of a[0..n) to a[0..k), in no particular order (expected
 * O(n); falls back to a full sort if the pivots keep failing). */
static void dsv4_select(dsv4_cand *a, int n, int k)
{
    if (k <= 0 || k >= n)
        return;
    int depth = dsv4_depth_limit(n);
    while (n > 16) {
        if (depth-- == 0) {
            dsv4_sort(a, n);
            return;
        }
        int p = dsv4_partition(a, n);
        if (p == k || p + 1 == k)
            return;
        if (k < p) {
            n = p;
        } else {
            a += p + 1;
            n -= p + 1;
            k -= p + 1;
        }
    }
    dsv4_insertion_sort(a, n);
}

/* The k best finite tokens of x into h[0..n), n = min(k, #finite), in heap
 * order (weights not set).  x must be clean and bmax[] its block maxima (from
 * dsv4_scan).
 *
 * The k largest block maxima are k distinct tokens, so nothing below the k-th
 * of them (lower) can make the top k: whole blocks whose maximum is below it,
 * or below the heap's root once the heap is full, are skipped, and inside a
 * block 16-token chunks are screened with a vectorisable compare before the
 * scalar heap test.  Blocks are visited in id order, so a token tied with the
 * root has a larger id, hence is worse: only a strictly larger logit enters. */
static int dsv4_heap_topk(dsv4_sampler *s, const float *x, int k, dsv4_cand *h)
{
    int vocab = s->vocab, nb = s->nblock;
    float lower = -INFINITY;
    if (k <= nb) {
        dsv4_cand *bc = s->bcand;
        for (int b = 0; b < nb; b++)
            bc[b] = (dsv4_cand){ s->bmax[b], b, 0.0f };
        dsv4_select(bc, nb, k);
        lower = bc[0].x;
        for (int j = 1; j < k; j++)
            lower = bc[j].x < lower ? bc[j].x : lower;
    }
    int n = 0;
    for (int lo = 0, b = 0; lo < vocab; lo += DSV4_SAMPLE_BLOCK, b++) {
        float bm = s->bmax[b];
        if (bm < lower || bm == -INFINITY || (n == k && bm <= h[0].x))
            continue;
        int hi = lo + DSV4_SAMPLE_BLOCK < vocab ? lo + DSV4_SAMPLE_BLOCK : vocab;
        for (int c = lo; c < hi; c += 16) {
            int ce = c + 16 < hi ? c + 16 : hi;
            if (ce - c == 16) {
                float thr = n < k ? lower : h[0].x;
                int hit = 0;
                for (int l = 0; l < 16; l++)
                    hit |= x[c + l] >= thr;
                if (!hit)
                    continue;
            }
            for (int i = c; i < ce; i++) {
                float v = x[i];
                if (n < k) {
                    if (v < lower || v == -INFINITY)
                        continue;
                    dsv4_cand t = { v, i, 0.0f };
                    int j = n++;
                    while (j > 0) {
                        int parent = (j - 1) / 2;
                        if (!dsv4_better(h[parent], t))
                            break;
                        h[j] = h[parent];
                        j = parent;
                    }
                    h[j] = t;
                } else if (v > h[0].x) {
                    h[0] = (dsv4_cand){ v, i, 0.0f };
                    dsv4_sift_down(h, k, 0);
                }
            }
        }
    }
    return n;
}

/* ----------------------------------------------------------- passes ------ */

DSV4_INLINE float dsv4_clean(float v)
{
    if (v != v)
        return -INFINITY;
    return v > FLT_MAX ? FLT_MAX : v;
}

/* Float bits -> int32 with the same order (for non-NaN): integer max
 * reductions vectorise where float ones do not (NaN rules). */
DSV4_INLINE int32_t dsv4_order_key(float v)
{
    union { float f; int32_t i; } b = { v };
    return b.i ^ ((b.i >> 31) & 0x7fffffff);
}

DSV4_INLINE float dsv4_from_key(int32_t k)
{
    union { float f; int32_t i; } b;
    b.i = k ^ ((k >> 31) & 0x7fffffff);
    return b.f;
}

/* Block x[0..len): rewrites NaN to -inf and +inf to FLT_MAX (only when the
 * block has any, so the common case stays read-only) and returns the block's
 * maximum.  One loop over order keys does both jobs: +inf and positive NaNs
 * have keys above FLT_MAX's, negative NaNs below -inf's.  Eight explicit
 * lanes give the vectoriser independent max chains (one chain is
 * latency-bound). */
DSV4_INLINE float dsv4_scan_block(float *x, int len)
{
    const int32_t kmax = 0x7f7fffff;             /* key of FLT_MAX */
    const int32_t kninf = (int32_t)0x807fffff;   /* key of -inf */
    int32_t mk[8], sp[8];
    for (int l = 0; l < 8; l++) {
        mk[l] = INT32_MIN;
        sp[l] = 0;
    }
    int full = len - len % 8;
    for (int g = 0; g < full; g += 8) {
        for (int l = 0; l < 8; l++) {
            int32_t k = dsv4_order_key(x[g + l]);
            mk[l] = k > mk[l] ? k : mk[l];
            sp[l] |= (k > kmax) | (k < kninf);
        }
    }
    for (int j = full; j < len; j++) {
        int32_t k = dsv4_order_key(x[j]);
        mk[0] = k > mk[0] ? k : mk[0];
        sp[0] |= (k > kmax) | (k < kninf);
    }
    int special = 0;
    int32_t m = INT32_MIN;
    for (int l = 0; l < 8; l++) {
        special |= sp[l];
        m = mk[l] > m ? mk[l] : m;
    }
    if (special) {
        m = INT32_MIN;
        for (int j = 0; j < len; j++) {
            x[j] = dsv4_clean(x[j]);
            int32_t k = dsv4_order_key(x[j]);
            m = k > m ? k : m;
        }
    }
    return dsv4_from_key(m);
}

DSV4_INLINE float dsv4_scan_body(float *x, int vocab, float *bmax)
{
    float m = -INFINITY;
    for (int lo = 0, b = 0; lo < vocab; lo += DSV4_SAMPLE_BLOCK, b++) {
        int len = vocab - lo < DSV4_SAMPLE_BLOCK ? vocab - lo : DSV4_SAMPLE_BLOCK;
        float bm = dsv4_scan_block(x + lo, len);
        bmax[b] = bm;
        m = bm > m ? bm : m;
    }
    return m;
}

static float dsv4_scan_base(float *x, int vocab, float *bmax)
{
    return dsv4_scan_body(x, vocab, bmax);
}

#ifdef DSV4_SAMPLE_AVX2
__attribute__((target("avx2")))
static float dsv4_scan_avx2(float *x, int vocab, float *bmax)
{
    return dsv4_scan_body(x, vocab, bmax);
}
#endif

/* Cleans x in place and returns its maximum (-inf if nothing is finite);
 * s->bmax[b] gets each block's maximum, so the first maximum can be found
 * without a second full pass. */
static float dsv4_scan(dsv4_sampler *s, float *x)
{
#ifdef DSV4_SAMPLE_AVX2
    if (__builtin_cpu_supports("avx2"))
        return dsv4_scan_avx2(x, s->vocab, s->bmax);
#endif
    return dsv4_scan_base(x, s->vocab, s->bmax);
}

/* The lowest id holding the maximum m (found by dsv4_scan on x). */
static int32_t dsv4_first_max(const dsv4_sampler *s, const float *x, float m)
{
    for (int b = 0; b < s->nblock; b++) {
        if (s->bmax[b] != m)
            continue;
        int lo = b * DSV4_SAMPLE_BLOCK;
        int hi = lo + DSV4_SAMPLE_BLOCK < s->vocab ? lo + DSV4_SAMPLE_BLOCK : s->vocab;
        for (int i = lo; i < hi; i++)
            if (x[i] == m)
                return i;
    }
    return -1;   /* unreachable for finite m */
}

/* Weight of logit v: exp((v - m) / T), as (v - m) * (1/T).  The temperature
 * lives here rather than in a pass over the logits: the order of the tokens
 * does not depend on it, and only the weights need it. */
DSV4_INLINE float dsv4_weight(float v, float m, float inv_t)
{
    return dsv4_exp_nonpos((v - m) * inv_t);
}

/* Weights of a full block, those below cut zeroed (cut = min_p when min-p can
 * be applied up front, else 0); returns their sum.  Fixed trip count and
 * eight explicit float lanes so that it vectorises; the lanes (128 terms
 * each) are combined in double. */
DSV4_INLINE double dsv4_weight_block(const float *restrict x, float *restrict e, float m,
                                     float inv_t, float cut)
{
    float acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    for (int g = 0; g < DSV4_SAMPLE_BLOCK; g += 8) {
        for (int l = 0; l < 8; l++) {
            float v = dsv4_keep_ge(dsv4_weight(x[g + l], m, inv_t), cut);
            e[g + l] = v;
            acc[l] += v;
        }
    }
    return (((double)acc[0] + acc[1]) + ((double)acc[2] + acc[3])) +
           (((double)acc[4] + acc[5]) + ((double)acc[6] + acc[7]));
}

DSV4_INLINE double dsv4_weight_body(const float *x, float *e, double *block, int vocab,
                                   float m, float inv_t, float cut)
{
    double z = 0.0;
    for (int lo = 0, b = 0; lo < vocab; lo += DSV4_SAMPLE_BLOCK, b++) {
        int len = vocab - lo < DSV4_SAMPLE_BLOCK ? vocab - lo : DSV4_SAMPLE_BLOCK;
        double sum;
        if (len == DSV4_SAMPLE_BLOCK) {
            sum = dsv4_weight_block(x + lo, e + lo, m, inv_t, cut);
        } else {
            sum = 0.0;
            for (int j = 0; j < len; j++) {
                float v = dsv4_keep_ge(dsv4_weight(x[lo + j], m, inv_t), cut);
                e[lo + j] = v;
                sum += v;
            }
        }
        block[b] = sum;
        z += sum;
    }
    return z;
}

static double dsv4_weight_base(const float *x, float *e, double *block, int vocab,
                               float m, float inv_t, float cut)
{
    return dsv4_weight_body(x, e, block, vocab, m, inv_t, cut);
}

#ifdef DSV4_SAMPLE_AVX2
__attribute__((target("avx2")))
static double dsv4_weight_avx2(const float *x, float *e, double *block, int vocab,
                               float m, float inv_t, float cut)
{
    return dsv4_weight_body(x, e, block, vocab, m, inv_t, cut);
}
#endif

/* e[i] = weight of x[i] (0 below cut) and the per-block sums; returns their
 * total, accumulated in the same order as dsv4_walk_blocks() re-adds them. */
static double dsv4_weight_pass(dsv4_sampler *s, const float *x, float m, float inv_t, float cut)
{
#ifdef DSV4_SAMPLE_AVX2
    if (__builtin_cpu_supports("avx2"))
        return dsv4_weight_avx2(x, s->e, s->block, s->vocab, m, inv_t, cut);
#endif
    return dsv4_weight_base(x, s->e, s->block, s->vocab, m, inv_t, cut);
}

/* Inverse-CDF draw over e[0..vocab) in id order, r in [0, total): find the
 * block, then the token.  Rounding can leave r just past the last partial sum;
 * then the last token with weight in that block (or overall) is taken. */
static int32_t dsv4_walk_blocks(const dsv4_sampler *s, double r)
{
    const float *e = s->e;
    double base = 0.0;
    for (int b = 0; b < s->nblock; b++) {
        double next = base + s->block[b];
        if (r < next) {
            int lo = b * DSV4_SAMPLE_BLOCK;
            int hi = lo + DSV4_SAMPLE_BLOCK < s->vocab ? lo + DSV4_SAMPLE_BLOCK : s->vocab;
            double cum = base;
            int32_t last = -1;
            for (int i = lo; i < hi; i++) {
                if (e[i] > 0.0f) {
                    cum += e[i];
                    last = i;
                    if (r < cum)
                        return i;
                }
            }
            if (last >= 0)
                return last;
        }
        base = next;
    }
    for (int i = s->vocab - 1; i >= 0; i--)
        if (e[i] > 0.0f)
            return i;
    return -1;   /* unreachable: the maximum has weight 1 */
}

/* Top-p: moves the nucleus to a[0..L) and returns L, where the nucleus is the
 * shortest run of best candidates (dsv4_better order) whose mass reaches
 * target = top_p * z, so a token is kept iff the mass before it is < target
 * (vLLM's rule; at least one token is kept).
 *
 * No sort: a quickselect weighted by mass.  After each partition the mass of
 * the better side says which side holds the crossing token, so expected cost
 * is O(n) however large the nucleus.  If the pivots keep failing, the rest is
 * sorted and walked (O(n log n) worst case). */
static int dsv4_nucleus(dsv4_cand *a, int n, double target)
{
    int lo = 0, hi = n;      /* a[0..lo) are in, with mass acc; the crossing is in [lo, hi) */
    double acc = 0.0;
    int depth = dsv4_depth_limit(n);
    while (hi - lo > 16 && depth-- > 0) {
        int p = lo + dsv4_partition(a + lo, hi - lo);
        double better = 0.0;
        for (int j = lo; j < p; j++)
            better += a[j].w;
        if (acc + better >= target) {
            hi = p;
            continue;
        }
        acc += better;
        double w = a[p].w;
        if (acc + w >= target)
            return p + 1;
        acc += w;
        lo = p + 1;
    }
    dsv4_sort(a + lo, hi - lo);
    for (int j = lo; j < hi; j++) {
        acc += a[j].w;
        if (acc >= target)
            return j + 1;
    }
    /* rounding left the sum just short: keep everything still in play */
    return hi > 0 ? hi : 1;
}

/* Inverse-CDF draw over the candidates in their current order. */
static int32_t dsv4_walk_cand(const dsv4_cand *a, int n, double u)
{
    double z = 0.0;
    for (int j = 0; j < n; j++)
        z += a[j].w;
    double r = u * z, cum = 0.0;
    int last = -1;
    for (int j = 0; j < n; j++) {
        if (a[j].w > 0.0f) {
            cum += a[j].w;
            last = j;
            if (r < cum)
                return a[j].id;
        }
    }
    return last >= 0 ? a[last].id : -1;
}

/* Bucket of logit v: (m - v) / T on a fixed grid.  One rounding chain of
 * monotone operations, so a lower bucket always means a strictly larger
 * logit and the buckets never contradict the candidate order. */
DSV4_INLINE int dsv4_bucket(float v, float m, float scale)
{
    float f = (m - v) * scale;
    return f < (float)(DSV4_NBUCKET - 1) ? (int)f : DSV4_NBUCKET - 1;
}

/* Visits the tokens with weight > thr, skipping whole blocks whose best logit
 * weighs <= thr (the top-p pre-filter bound has a 2x margin, so exp's
 * last-ulp wobble cannot matter) and 16-token chunks that a vectorisable
 * compare finds empty.
 *   hist:  adds each to the bucket histogram (s->hmass, s->hcount);
 *   else:  gathers those of bucket < c to a[0..), those of bucket c to
 *          a[n_in..), and returns the count (c = DSV4_NBUCKET, n_in = 0
 *          gathers everything).  a[] needs vocab + 1 slots. */
static int dsv4_visit(dsv4_sampler *s, const float *x, float m, float inv_t, float thr,
                      float scale, int hist, int c, int n_in, dsv4_cand *a)
{
    const float *e = s->e;
    double *hmass = s->hmass;
    int32_t *hcount = s->hcount;
    int vocab = s->vocab, in = 0, tail = n_in;
    for (int lo = 0, b = 0; lo < vocab; lo += DSV4_SAMPLE_BLOCK, b++) {
        if (s->bmax[b] == -INFINITY || dsv4_weight(s->bmax[b], m, inv_t) <= thr)
            continue;
        int hi = lo + DSV4_SAMPLE_BLOCK < vocab ? lo + DSV4_SAMPLE_BLOCK : vocab;
        for (int ch = lo; ch < hi; ch += 16) {
            int ce = ch + 16 < hi ? ch + 16 : hi;
            if (ce - ch == 16) {
                int hit = 0;
                for (int l = 0; l < 16; l++)
                    hit |= e[ch + l] > thr;
                if (!hit)
                    continue;
            }
            /* branch-free: in a flat distribution whether a token passes
             * and where it goes are coin flips, and mispredictions would
             * dominate */
            if (hist) {
                for (int i = ch; i < ce; i++) {
                    int pass = e[i] > thr;
                    int bk = dsv4_bucket(x[i], m, scale);
                    hmass[bk] += pass ? (double)e[i] : 0.0;
                    hcount[bk] += pass;
                }
            } else {
                for (int i = ch; i < ce; i++) {
                    int bk = dsv4_bucket(x[i], m, scale);
                    int pass = e[i] > thr;
                    int to_in = pass & (bk < c), to_tail = pass & (bk == c);
                    /* slot by masks (compilers turn a ?: chain back into
                     * branches); a[vocab] is the spare slot for the rest */
                    int dst = (in & -to_in) | (tail & -to_tail) | (vocab & -(1 - to_in - to_tail));
                    a[dst] = (dsv4_cand){ x[i], i, e[i] };
                    in += to_in;
                    tail += to_tail;
                }
            }
        }
    }
    return c >= DSV4_NBUCKET ? in : tail;
}

/* Span of the bucket grid for candidates of weight > thr: they have
 * (max - x) / T < -ln(thr), bounded here from thr's exponent bits (no libm,
 * so the same everywhere).  A narrower grid keeps a high temperature from
 * piling the whole vocabulary into a few buckets; the grid only affects
 * speed, as any monotone grid gives the same cut. */
static float dsv4_bucket_span(float thr)
{
    if (!(thr > 0.0f))
        return DSV4_BUCKET_SPAN;
    union { float f; uint32_t u; } b = { thr };
    int ex = (int)((b.u >> 23) & 0xff) - 127;    /* thr >= 2^ex */
    float span = (float)(1 - ex) * 0.6931472f;   /* -ex ln2, plus one ln2 of room */
    return span < DSV4_BUCKET_SPAN ? span : DSV4_BUCKET_SPAN;
}

/* Top-k or top-p over the whole vocabulary, from the weights in s->e:
 * writes the k best (k > 0) or the nucleus of mass target (k == 0) among the
 * tokens with weight > thr to a[] and returns their number (the same sets as
 * dsv4_select() / dsv4_nucleus() over all of them would give).  A histogram
 * by bucket finds the bucket where the cumulative count or mass crosses k or
 * target; the buckets before it are in whole, and the cut inside the
 * crossing bucket is a (mass-weighted) quickselect over it alone.  Two
 * streaming passes whatever k and however flat the distribution, where a
 * selection over 100k candidates costs milliseconds. */
static int dsv4_hist_select(dsv4_sampler *s, const float *x, float m, float inv_t, float thr,
                            int k, double target, dsv4_cand *a)
{
    float scale = inv_t * ((float)DSV4_NBUCKET / dsv4_bucket_span(thr));
    memset(s->hmass, 0, DSV4_NBUCKET * sizeof *s->hmass);
    memset(s->hcount, 0, DSV4_NBUCKET * sizeof *s->hcount);
    dsv4_visit(s, x, m, inv_t, thr, scale, 1, 0, 0, a);
    double before = 0.0;
    int n_in = 0, c = -1, last = -1;
    for (int b = 0; b < DSV4_NBUCKET; b++) {
        if (s->hcount[b] == 0)
            continue;
        last = b;
        if (k > 0 ? n_in + s->hcount[b] >= k : before + s->hmass[b] >= target) {
            c = b;
            break;
        }
        before += s->hmass[b];
        n_in += s->hcount[b];
    }
    if (last < 0)
        return 0;   /* unreachable: the maximum weighs 1 > thr */
    if (c < 0) {
        /* fewer than k tokens, or rounding kept the total mass just short:
         * everything is in; the last bucket is taken whole below */
        c = last;
        before -= s->hmass[c];
        n_in -= s->hcount[c];
    }
    int n = dsv4_visit(s, x, m, inv_t, thr, scale, 0, c, n_in, a);
    if (k > 0) {
        dsv4_select(a + n_in, n - n_in, k - n_in);
        return n < k ? n : k;
    }
    /* the crossing bucket can hold most of the vocabulary (equal logits, or
     * a high temperature squeezing every logit into a few buckets): select
     * in it by mass rather than sort it */
    return n_in + dsv4_nucleus(a + n_in, n - n_in, target - before);
}

/* Sampling proper, on clean logits x with finite maximum m.
 *
 * min-p keeps the tokens with p >= min_p * p_max, i.e. weight >= min_p: a
 * test on the weights that renormalisation does not change, so it can run
 * after top-k/top-p on the survivors, or up front when neither is active. */
static int32_t dsv4_draw(dsv4_sampler *s, const float *x, float m, double u)
{
    const dsv4_sample_params *p = &s->p;
    int vocab = s->vocab;
    int k = p->top_k > 0 && p->top_k < vocab ? p->top_k : 0;
    int use_p = p->top_p < 1.0f;
    float min_p = p->min_p;
    float inv_t = 1.0f / p->temperature;
    dsv4_cand *a = s->cand;
    int n;
    double z;

    if (k > 0 && k <= DSV4_HEAP_TOPK_MAX) {
        n = dsv4_heap_topk(s, x, k, a);
        z = 0.0;
        for (int j = 0; j < n; j++) {
            a[j].w = dsv4_weight(a[j].x, m, inv_t);
            z += a[j].w;
        }
    } else if (!k && !use_p) {
        /* no truncation but min-p: no candidates, no order, just the walk */
        z = dsv4_weight_pass(s, x, m, inv_t, min_p);
        return dsv4_walk_blocks(s, u * z);
    } else if (!k) {
        z = dsv4_weight_pass(s, x, m, inv_t, 0.0f);
        /* A token with weight w can be in the nucleus only if w + (mass
         * ranked after it) > (1 - top_p) z, and that mass is at most
         * (vocab - 1) w; so w <= (1 - top_p) z / vocab rules it out.  Half of
         * that bound leaves room for rounding. */
        float thr = (float)(0.5 * (1.0 - (double)p->top_p) * z / vocab);
        n = dsv4_hist_select(s, x, m, inv_t, thr, 0, (double)p->top_p * z, a);
        use_p = 0;
    } else {
        /* large k: tokens of weight 0 are left out (never drawn, no mass) */
        dsv4_weight_pass(s, x, m, inv_t, 0.0f);
        n = dsv4_hist_select(s, x, m, inv_t, 0.0f, k, 0.0, a);
        z = 0.0;
        for (int j = 0; j < n; j++)
            z += a[j].w;
    }
    if (use_p)
        n = dsv4_nucleus(a, n, (double)p->top_p * z);
    if (min_p > 0.0f) {
        int w = 0;
        for (int j = 0; j < n; j++)
            if (a[j].w >= min_p)
                a[w++] = a[j];
        n = w;   /* the maximum has weight 1 >= min_p: n stays >= 1 */
    }
    return dsv4_walk_cand(a, n, u);
}

/* log_softmax(x / T) of clean logits x (inv_t = 1/T) for the chosen token and
 * the n_top best.  Uses the scratch buffers: call after sampling. */
static void dsv4_fill_logprobs(dsv4_sampler *s, float *x, float inv_t, int32_t tok,
                               dsv4_sample_logprobs *lp)
{
    int vocab = s->vocab;
    float m = dsv4_scan(s, x);
    lp->n_top_out = 0;
    if (m == -INFINITY) {
        /* raw logits all -inf and a biased token chosen: no distribution */
        lp->logprob = -INFINITY;
        return;
    }
    double logz = log(dsv4_weight_pass(s, x, m, inv_t, 0.0f));
    /* same rounding as the weights: (x - m) in float, then the scale */
    lp->logprob = x[tok] == -INFINITY ? -INFINITY
                                      : (float)((double)((x[tok] - m) * inv_t) - logz);
    int want = lp->n_top < vocab ? lp->n_top : vocab;
    if (want <= 0)
        return;
    int n = dsv4_heap_topk(s, x, want, s->cand);
    dsv4_sort(s->cand, n);
    for (int j = 0; j < n; j++) {
        lp->top[j].id = s->cand[j].id;
        lp->top[j].logprob = (float)((double)((s->cand[j].x - m) * inv_t) - logz);
    }
    lp->n_top_out = n;
}

/* ------------------------------------------------------------- public ---- */

int32_t dsv4_sampler_sample_logprobs(dsv4_sampler *s, float *logits, dsv4_sample_logprobs *lp)
{
    if (!s || !logits)
        return -1;
    if (lp && (lp->n_top < 0 || (lp->n_top > 0 && !lp->top)))
        return -1;
    if (lp && lp->mode == DSV4_LOGPROBS_RAW)
        memcpy(s->raw, logits, (size_t)s->vocab * sizeof *s->raw);

    /* drawn up front so every call advances the stream by exactly one */
    double u = dsv4_rng_uniform(s->rng);

    dsv4_apply_penalties(s, logits);
    float m = dsv4_scan(s, logits);
    int greedy = !(s->p.temperature >= DSV4_SAMPLE_GREEDY_EPS);
    int32_t tok;
    if (m == -INFINITY)
        tok = -1;
    else if (greedy)
        tok = dsv4_first_max(s, logits, m);
    else
        tok = dsv4_draw(s, logits, m, u);
    if (tok < 0)
        return -1;
    dsv4_record(s, tok, 0);
    if (lp) {
        if (lp->mode == DSV4_LOGPROBS_RAW)
            dsv4_fill_logprobs(s, s->raw, 1.0f, tok, lp);
        else
            dsv4_fill_logprobs(s, logits, greedy ? 1.0f : 1.0f / s->p.temperature, tok, lp);
    }
    return tok;
}

int32_t dsv4_sampler_sample(dsv4_sampler *s, float *logits)
{
    return dsv4_sampler_sample_logprobs(s, logits, NULL);
}
