/*
 * Token sampling: greedy, temperature, top-k, top-p, min-p, repetition /
 * frequency / presence penalties, logit bias, seeded RNG, logprobs.
 *
 * A sampler belongs to one sequence (it remembers the tokens seen so far for
 * the penalties and owns the RNG state), so the same seed and the same logits
 * always give the same tokens.  It allocates once, in dsv4_sampler_new(); the
 * per-token path does not allocate.  A sampler is not thread-safe; distinct
 * samplers are independent.
 *
 * Pipeline, per call (vLLM / OpenAI semantics):
 *   raw logits
 *   -> logit bias (added)
 *   -> repetition penalty, once per distinct token seen in the prompt or the
 *      output: x > 0 ? x / penalty : x * penalty
 *   -> frequency / presence penalties over generated tokens only:
 *      x -= count * frequency_penalty; x -= presence_penalty (if count > 0)
 *   -> NaN becomes -inf, +inf becomes FLT_MAX (see below)
 *   -> temperature < DSV4_SAMPLE_GREEDY_EPS: argmax, lowest id on ties
 *   -> otherwise x / temperature -> top-k -> top-p -> min-p -> draw from the
 *      renormalised distribution.
 *
 * Ties: top-k keeps exactly k tokens, ordering by (logit desc, id asc), so
 * top_k = 1 is greedy at any temperature (vLLM/HF keep every token tied with
 * the k-th, which can be more than k).
 *
 * Determinism: the RNG is xoshiro256** seeded through splitmix64, exp() is our
 * own, and the arithmetic is fixed IEEE binary32/64 with no FMA contraction,
 * so the same seed and the same logits give the same tokens on every machine
 * and with every -march.  Each call consumes exactly one 64-bit draw (greedy
 * calls included), unless it is rejected for a NULL or invalid argument.
 *
 * Non-finite logits: a NaN logit (a kernel bug, or an overflow) never wins: it
 * is treated as -inf.  +inf counts as the largest finite float, so several
 * +inf logits share the probability mass equally.  When no token is left with
 * a finite logit the sampler returns -1 (an error, not a token) and records
 * nothing, so a broken forward pass fails the request instead of emitting a
 * plausible-looking token.
 *
 * Memory: about 3.5 MiB of scratch per sampler for vocab 129,280.
 */
#ifndef DSV4_SAMPLE_H
#define DSV4_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

/* Temperatures below this are greedy (vLLM's _SAMPLING_EPS). */
#define DSV4_SAMPLE_GREEDY_EPS 1e-5f

/* Validation bounds.  Temperature goes beyond OpenAI's 2 as vLLM allows, but
 * not past 100, where the distribution is uniform to float precision and the
 * value is far more likely a client bug than a wish.  The penalty and bias
 * ranges are OpenAI's. */
#define DSV4_SAMPLE_MAX_TEMPERATURE 100.0f
#define DSV4_SAMPLE_MAX_PENALTY     2.0f   /* |frequency|, |presence| */
#define DSV4_SAMPLE_MAX_BIAS        100.0f /* |logit bias| */

typedef struct {
    float       temperature;        /* [0, 100]; < 1e-5 => greedy */
    int         top_k;              /* -1 or 0 => disabled; >= vocab => disabled */
    float       top_p;              /* (0, 1]; 1.0 => disabled */
    float       min_p;              /* [0, 1]; 0 => disabled */
    float       repetition_penalty; /* > 0; 1.0 => disabled (HF/vLLM: prompt + output) */
    float       frequency_penalty;  /* [-2, 2]; 0 => disabled (OpenAI: output tokens only) */
    float       presence_penalty;   /* [-2, 2]; 0 => disabled (OpenAI: output tokens only) */
    uint64_t    seed;               /* any value; the server picks one when the client gives none */
    /* logit bias: n_bias pairs, added to the raw logits (OpenAI semantics).
     * ids in [0, vocab), values in [-100, 100]; a repeated id adds twice. */
    const int32_t *bias_ids;        /* [n_bias], borrowed for the sampler's lifetime */
    const float   *bias_values;     /* [n_bias], borrowed */
    int            n_bias;
} dsv4_sample_params;

typedef struct dsv4_sampler dsv4_sampler;

/* Which distribution the reported log-probabilities describe. */
typedef enum {
    /* log_softmax of the logits as passed in, before bias, penalties and
     * temperature (vLLM V1's default "raw_logprobs"): what the model thinks. */
    DSV4_LOGPROBS_RAW = 0,
    /* log_softmax((logits after bias and penalties) / temperature), no
     * temperature when greedy, before top-k / top-p / min-p (vLLM's
     * "processed_logprobs"). */
    DSV4_LOGPROBS_PROCESSED = 1
} dsv4_logprobs_mode;

typedef struct {
    int32_t id;
    float   logprob;
} dsv4_token_logprob;

/* Optional output of dsv4_sampler_sample_logprobs(), for an OpenAI
 * `logprobs` / `top_logprobs` response.  Logprobs of tokens whose logit is
 * -inf (or NaN) are -inf; such tokens never appear in top[]. */
typedef struct {
    /* in */
    dsv4_logprobs_mode  mode;
    int                 n_top;      /* alternatives wanted, >= 0 (OpenAI allows <= 20) */
    dsv4_token_logprob *top;        /* [n_top], caller-owned; may be NULL when n_top == 0 */
    /* out */
    float               logprob;    /* of the returned token */
    int                 n_top_out;  /* entries written to top[], best first (logprob desc, id asc) */
} dsv4_sample_logprobs;

/* Fills p with the neutral defaults (temperature 1, everything else off, seed 0). */
void dsv4_sample_params_default(dsv4_sample_params *p);

/* Validates p against vocab (ranges, non-finite values, bias ids); on failure
 * writes a one-line reason naming the parameter and the offending value to
 * err (if err != NULL and errlen > 0).  Returns 0 or -1. */
int dsv4_sample_params_check(const dsv4_sample_params *p, int vocab, char *err, size_t errlen);

/* Returns NULL on allocation failure or invalid params (check them first with
 * dsv4_sample_params_check() to get the reason).  The sampler copies p (but
 * borrows the bias arrays).  The caller owns the result and releases it with
 * dsv4_sampler_free(). */
dsv4_sampler *dsv4_sampler_new(int vocab, const dsv4_sample_params *p);
void dsv4_sampler_free(dsv4_sampler *s);   /* NULL is a no-op */

/* Records prompt tokens (they count for repetition_penalty only).  Returns 0,
 * or -1 (recording none of them) if s is NULL, n < 0, or an id is out of
 * range. */
int dsv4_sampler_accept_prompt(dsv4_sampler *s, const int32_t *ids, int n);

/* Records one generated token that the sampler did not pick itself (a forced
 * or speculatively accepted token) so the penalties see it.  Returns 0 or -1
 * (id out of range). */
int dsv4_sampler_accept(dsv4_sampler *s, int32_t id);

/* Picks the next token from logits [vocab] and records it as generated.
 * logits is borrowed and modified in place: after the call it holds the
 * logits with bias, penalties and the non-finite clean-up applied, but not
 * the temperature (it is folded into the weights, exp((x - max) / T), which
 * saves a pass over the vocabulary).  Returns the token id, or -1 if s or
 * logits is NULL or no token has a finite logit. */
int32_t dsv4_sampler_sample(dsv4_sampler *s, float *logits);

/* dsv4_sampler_sample(), also reporting log-probabilities into *lp when lp is
 * not NULL (lp->mode, lp->n_top and lp->top are inputs; lp->top is written,
 * never kept).  Returns -1, writing nothing to lp, on the errors of
 * dsv4_sampler_sample() or when lp->n_top < 0 or lp->top is NULL with
 * n_top > 0. */
int32_t dsv4_sampler_sample_logprobs(dsv4_sampler *s, float *logits, dsv4_sample_logprobs *lp);

#endif
