/*
 * Engine scheduler: continuous batching of many requests over one model, on
 * engine threads that never touch the caller's event loop.
 *
 * The caller (the nginx module, or a CLI) submits requests from its own
 * thread; engine threads run steps in which waiting requests join the running
 * batch, long prompts are prefilled in chunks so other sequences keep
 * decoding, and each request's new tokens are handed back through its
 * mailbox.  Whenever any request has something new, the scheduler makes its
 * eventfd readable (dsv4_sched_fd); the caller then drains
 * dsv4_sched_next_ready().  Nothing here blocks the caller except short
 * mutex sections.
 *
 * Ownership: a request is reference-counted between the caller and the
 * scheduler.  The caller creates it (1 ref), submit adds the scheduler's ref,
 * the scheduler drops its ref when the request finishes (done, error or
 * cancelled), and the caller drops its own with dsv4_request_release().  A
 * cancelled request's sequence is freed at the next step boundary.
 */
#ifndef DSV4_SCHED_H
#define DSV4_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "dsv4.h"
#include "sample.h"

typedef struct dsv4_sched   dsv4_sched;
typedef struct dsv4_request dsv4_request;

typedef struct {
    int n_engines;         /* engine threads (each runs its own batch); >= 1 */
    int max_seqs;          /* sequences in one engine's running batch */
    int max_batch_tokens;  /* rows per step (decode tokens + prefill chunk tokens) */
    int prefill_chunk;     /* most prompt tokens one sequence feeds per step */
    int max_queue;         /* waiting requests before submit refuses (backpressure) */
    int max_ctx;           /* positions per sequence (prompt + completion) */
    int n_logprobs;        /* top logprobs to keep per token (0..20) */
    const dsv4_backend *backend;   /* borrowed; e.g. dsv4_backend_cpu_scalar() */
    struct dsv4_cache  *cache;     /* prefix cache (cache/cache.h), borrowed; NULL = none */
} dsv4_sched_conf;

typedef enum {
    DSV4_FINISH_NONE = 0,
    DSV4_FINISH_STOP,       /* a stop token */
    DSV4_FINISH_LENGTH,     /* max_tokens or the context limit */
    DSV4_FINISH_CANCELLED,  /* dsv4_request_cancel() */
    DSV4_FINISH_ERROR       /* engine error (message in dsv4_request_error) */
} dsv4_finish;

typedef struct {
    const int32_t      *prompt;      /* [n_prompt], copied at creation */
    int                 n_prompt;
    int                 max_tokens;  /* completion tokens, >= 1 */
    dsv4_sample_params  sample;      /* bias arrays are copied at creation */
    const int32_t      *stop_ids;    /* [n_stop] tokens that end the completion (copied) */
    int                 n_stop;
    int                 logprobs;    /* top logprobs per token wanted (0 = none) */
    /* output grammar (engine/constrain.h) masking every sampling step, or
     * NULL; the request owns it once dsv4_request_new() succeeds */
    struct dsv4_constraint *constraint;
} dsv4_request_params;

/* One produced token. */
typedef struct {
    int32_t id;
    float   logprob;                 /* log-softmax of the raw logits (vLLM "raw_logprobs") */
} dsv4_token;

/* Starts the engine threads.  Returns NULL with err set on failure. */
dsv4_sched *dsv4_sched_new(const dsv4_model *m, const dsv4_sched_conf *conf, char *err,
                           size_t errlen);

/* Stops the engine threads (running requests finish as CANCELLED), joins
 * them and frees the scheduler.  Requests still referenced by the caller stay
 * valid until released. */
void dsv4_sched_free(dsv4_sched *s);

/* An eventfd (non-blocking, close-on-exec) readable whenever some request
 * has new tokens or finished.  Owned by the scheduler. */
int dsv4_sched_fd(const dsv4_sched *s);

/* Clears the eventfd and returns the next request with news (with a new ref
 * the caller must release), or NULL when there is none.  Call until NULL. */
dsv4_request *dsv4_sched_next_ready(dsv4_sched *s);

/* Requests waiting / running, for metrics and admission. */
void dsv4_sched_load(dsv4_sched *s, int *waiting, int *running);

/* Cumulative counters since start, for metrics (batch size = rows / steps). */
typedef struct {
    uint64_t steps;      /* forward steps run */
    uint64_t rows;       /* token rows fed, all sequences */
    uint64_t seqs;       /* sequences fed, summed over steps */
    uint64_t prefill_rows;
} dsv4_sched_stats;

void dsv4_sched_get_stats(dsv4_sched *s, dsv4_sched_stats *st);

/* Creates a request (caller holds one ref).  NULL with err on invalid params. */
dsv4_request *dsv4_request_new(const dsv4_request_params *p, char *err, size_t errlen);

#define DSV4_SCHED_EINVAL  -1   /* the request cannot run (too long, bad ids or params) */
#define DSV4_SCHED_EFULL   -2   /* the queue is full: backpressure, answer 503 */

/* Queues r.  Returns 0, DSV4_SCHED_EINVAL or DSV4_SCHED_EFULL (err says why). */
int dsv4_sched_submit(dsv4_sched *s, dsv4_request *r, char *err, size_t errlen);

/* Asks the engine to stop r (client gone); safe from any thread, any time.
 * A request still waiting leaves the queue at once and finishes CANCELLED;
 * a running one stops at the next step boundary. */
void dsv4_request_cancel(dsv4_request *r);

/* Copies up to cap tokens produced since the last call into out; returns how
 * many.  *finish is set once the request has finished and every token has
 * been taken. */
int dsv4_request_take(dsv4_request *r, dsv4_token *out, int cap, dsv4_finish *finish);

/* Top logprobs of the k-th token returned so far (index into all tokens
 * taken): ids/logprobs [n_logprobs]; returns the count (0 if not kept). */
int dsv4_request_top_logprobs(dsv4_request *r, int k, int32_t *ids, float *logprobs);

/* Timings in seconds since submit: queue wait, first token; 0 if not yet. */
void dsv4_request_times(dsv4_request *r, double *queued, double *first_token);

const char *dsv4_request_error(dsv4_request *r);
void        dsv4_request_release(dsv4_request *r);

/* Opaque per-request pointer for the caller (e.g. the nginx request). */
void  dsv4_request_set_data(dsv4_request *r, void *data);
void *dsv4_request_data(dsv4_request *r);

/* ---- prefix cache (dsv4_sched_conf.cache; see the end of sched.c) ------- */

/* Salt mixed into r's cache keys: requests with different salts never share
 * a cached prefix (per-tenant isolation).  Copied; call before submit.
 * Returns 0, or -1 when out of memory. */
int dsv4_request_set_cache_salt(dsv4_request *r, const void *salt, size_t len);

/* Prompt tokens restored from the prefix cache instead of computed
 * (usage.prompt_tokens_details.cached_tokens).  Final once the first token
 * has been posted; 0 without a cache. */
int dsv4_request_cached_tokens(dsv4_request *r);

#endif
