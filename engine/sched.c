/*
 * Continuous-batching scheduler (see sched.h for the contract).
 *
 * Each engine thread owns a dsv4_ctx and a running batch of up to max_seqs
 * sequences.  A step: admit waiting requests, drop cancelled ones, then build
 * one batch — every decoding sequence feeds its last token first (streams
 * keep their pace), then prefilling sequences feed prompt chunks of at most
 * prefill_chunk tokens until max_batch_tokens rows are used — run it with
 * dsv4_forward_batch, sample, and post the new tokens.
 *
 * With a prefix cache, a submitted request first goes through the restore
 * queue: the scheduler's restore thread allocates its sequence and restores
 * the cached prefix into it (which may wait on Redis), then queues it for
 * admission, so no engine step ever waits on the cache's I/O.
 *
 * Locking: sched->mu guards both queues, the ready list and the counters;
 * each request's mu guards its mailbox.  Engine threads never hold a lock
 * during a forward pass, the restore thread none during a restore.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "constrain.h"
#include "sched.h"
#include "util.h"

struct dsv4_request {
    pthread_mutex_t     mu;
    atomic_int          refs;
    atomic_int          cancelled;
    dsv4_sched         *sched;         /* set at submit */
    dsv4_request_params p;             /* arrays below are owned copies */
    int32_t            *prompt;        /* [n_prompt] */
    int32_t            *stop_ids;      /* [n_stop] */
    int32_t            *bias_ids;      /* [n_bias] */
    float              *bias_values;   /* [n_bias] */
    /* mailbox (mu) */
    dsv4_token         *toks;          /* [cap] every token produced */
    int32_t            *top_ids;       /* [cap, logprobs] */
    float              *top_lps;       /* [cap, logprobs] */
    int                 ntoks;
    int                 cap;
    int                 taken;
    dsv4_finish         finish;
    char                err[256];
    double              t_submit, t_start, t_first;
    void               *data;
    /* sched->mu */
    dsv4_request       *next_wait;     /* on the waiting or the restore queue */
    dsv4_request       *next_ready;
    int                 in_ready;
    int                 queued;        /* DSV4_QUEUED_* */
    /* engine thread only */
    dsv4_seq           *seq;
    dsv4_sampler       *sampler;
    int                 fed;           /* prompt tokens fed */
    int32_t             last;          /* last sampled token, fed next step */
    /* prefix cache (end of file) */
    dsv4_cache_req     *cache_req;     /* engine thread; NULL without a cache */
    uint8_t            *cache_salt;    /* [cache_salt_len], set before submit */
    size_t              cache_salt_len;
    int                 cached;        /* prompt tokens restored (mu) */
};

typedef struct {
    dsv4_sched      *s;
    pthread_t        thread;
    int              started;
    dsv4_ctx        *ctx;
    dsv4_request   **running;          /* [max_seqs] */
    int              nrunning;
    dsv4_batch_item *items;            /* [max_seqs] */
    dsv4_request   **item_req;         /* [max_seqs] */
    float           *logits;           /* [max_seqs, vocab] */
    dsv4_token_logprob *top;           /* [20] top logprobs of the token being sampled */
} dsv4_engine;

/* where a request waits (dsv4_request.queued) */
#define DSV4_QUEUED_NO      0
#define DSV4_QUEUED_WAIT    1     /* for an engine slot */
#define DSV4_QUEUED_RESTORE 2     /* for the restore thread */

struct dsv4_sched {
    const dsv4_model *m;
    dsv4_sched_conf   conf;
    pthread_mutex_t   mu;
    pthread_cond_t    cv;
    dsv4_request     *wait_head, *wait_tail;
    dsv4_request     *restore_head, *restore_tail;   /* conf.cache only */
    pthread_cond_t    restore_cv;
    pthread_t         restorer;
    int               restorer_started;
    int               nwaiting;        /* on either queue, or being restored */
    int               nrunning;
    dsv4_request     *ready_head, *ready_tail;
    int               efd;
    int               wake;            /* ready list grew since the last eventfd write */
    int               stop;
    dsv4_engine      *engines;
    dsv4_sched_stats  stats;
};

static double
dsv4_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* ---- requests ---------------------------------------------------------- */

static void *
dsv4_dup(const void *p, size_t n)
{
    void *q = malloc(n ? n : 1);
    if (q != NULL && n) {
        memcpy(q, p, n);
    }
    return q;
}

dsv4_request *
dsv4_request_new(const dsv4_request_params *p, char *err, size_t errlen)
{
    dsv4_request *r;

    if (p->n_prompt <= 0 || p->prompt == NULL) {
        dsv4_error(err, errlen, "empty prompt");
        return NULL;
    }
    if (p->max_tokens <= 0) {
        dsv4_error(err, errlen, "max_tokens must be >= 1, got %d", p->max_tokens);
        return NULL;
    }
    if (p->logprobs < 0 || p->logprobs > 20) {
        dsv4_error(err, errlen, "top logprobs must be in [0, 20], got %d", p->logprobs);
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        dsv4_error(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancelled, 0);
    r->p = *p;
    r->p.constraint = NULL;         /* the caller's until this succeeds */
    r->prompt = dsv4_dup(p->prompt, (size_t) p->n_prompt * sizeof(int32_t));
    r->stop_ids = dsv4_dup(p->stop_ids, (size_t) p->n_stop * sizeof(int32_t));
    r->bias_ids = dsv4_dup(p->sample.bias_ids, (size_t) p->sample.n_bias * sizeof(int32_t));
    r->bias_values = dsv4_dup(p->sample.bias_values, (size_t) p->sample.n_bias * sizeof(float));
    if (!r->prompt || !r->stop_ids || !r->bias_ids || !r->bias_values) {
        dsv4_request_release(r);
        dsv4_error(err, errlen, "out of memory");
        return NULL;
    }
    r->p.prompt = r->prompt;
    r->p.stop_ids = r->stop_ids;
    r->p.sample.bias_ids = r->bias_ids;
    r->p.sample.bias_values = r->bias_values;
    r->p.constraint = p->constraint;
    return r;
}

void
dsv4_request_release(dsv4_request *r)
{
    if (r == NULL || atomic_fetch_sub(&r->refs, 1) != 1) {
        return;
    }
    dsv4_seq_free(r->seq);
    dsv4_sampler_free(r->sampler);
    dsv4_constraint_free(r->p.constraint);
    free(r->prompt);
    free(r->stop_ids);
    free(r->bias_ids);
    free(r->bias_values);
    free(r->toks);
    free(r->top_ids);
    free(r->top_lps);
    dsv4_cache_req_free(r->cache_req);
    free(r->cache_salt);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void dsv4_sched_mark_ready(dsv4_sched *s, dsv4_request *r);
static void dsv4_sched_wake(dsv4_sched *s);

/* ---- the two queues (sched->mu held), linked through next_wait --------- */

static void
dsv4_queue_push(dsv4_request **head, dsv4_request **tail, dsv4_request *r)
{
    r->next_wait = NULL;
    if (*tail != NULL) {
        (*tail)->next_wait = r;
    } else {
        *head = r;
    }
    *tail = r;
}

static dsv4_request *
dsv4_queue_pop(dsv4_request **head, dsv4_request **tail)
{
    dsv4_request *r = *head;

    if (r != NULL) {
        *head = r->next_wait;
        if (*head == NULL) {
            *tail = NULL;
        }
    }
    return r;
}

/* r must be on the queue */
static void
dsv4_queue_remove(dsv4_request **head, dsv4_request **tail, dsv4_request *r)
{
    dsv4_request **pp = head, *prev = NULL;

    while (*pp != r) {
        prev = *pp;
        pp = &(*pp)->next_wait;
    }
    *pp = r->next_wait;
    if (*tail == r) {
        *tail = prev;
    }
}

void
dsv4_request_cancel(dsv4_request *r)
{
    dsv4_sched *s = r->sched;

    atomic_store(&r->cancelled, 1);
    if (s == NULL) {
        return;
    }
    pthread_mutex_lock(&s->mu);
    if (r->queued != DSV4_QUEUED_NO) {
        /* never started: leave the queue now rather than at admission (one
         * being restored goes on to admission, which finishes it) */
        if (r->queued == DSV4_QUEUED_WAIT) {
            dsv4_queue_remove(&s->wait_head, &s->wait_tail, r);
        } else {
            dsv4_queue_remove(&s->restore_head, &s->restore_tail, r);
        }
        r->queued = DSV4_QUEUED_NO;
        s->nwaiting--;
        pthread_mutex_lock(&r->mu);
        r->finish = DSV4_FINISH_CANCELLED;
        pthread_mutex_unlock(&r->mu);
        dsv4_sched_mark_ready(s, r);
        dsv4_sched_wake(s);
        atomic_fetch_sub(&r->refs, 1);   /* the queue's ref; the caller still holds one */
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int
dsv4_request_take(dsv4_request *r, dsv4_token *out, int cap, dsv4_finish *finish)
{
    int n;

    pthread_mutex_lock(&r->mu);
    n = r->ntoks - r->taken < cap ? r->ntoks - r->taken : cap;
    memcpy(out, r->toks + r->taken, (size_t) n * sizeof(*out));
    r->taken += n;
    *finish = r->taken == r->ntoks ? r->finish : DSV4_FINISH_NONE;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int
dsv4_request_top_logprobs(dsv4_request *r, int k, int32_t *ids, float *logprobs)
{
    int n = 0, w = r->p.logprobs;

    pthread_mutex_lock(&r->mu);
    if (w > 0 && k >= 0 && k < r->taken) {
        memcpy(ids, r->top_ids + (size_t) k * w, (size_t) w * sizeof(*ids));
        memcpy(logprobs, r->top_lps + (size_t) k * w, (size_t) w * sizeof(*logprobs));
        n = w;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

void
dsv4_request_times(dsv4_request *r, double *queued, double *first_token)
{
    pthread_mutex_lock(&r->mu);
    *queued = r->t_start > 0 ? r->t_start - r->t_submit : 0;
    *first_token = r->t_first > 0 ? r->t_first - r->t_submit : 0;
    pthread_mutex_unlock(&r->mu);
}

const char *
dsv4_request_error(dsv4_request *r)
{
    return r->err;
}

void
dsv4_request_set_data(dsv4_request *r, void *data)
{
    r->data = data;
}

void *
dsv4_request_data(dsv4_request *r)
{
    return r->data;
}

/* ---- mailbox and ready list ------------------------------------------- */

/* Queues r on the ready list (once); dsv4_sched_wake() tells the caller.
 * sched->mu held. */
static void
dsv4_sched_mark_ready(dsv4_sched *s, dsv4_request *r)
{
    if (r->in_ready) {
        return;
    }
    r->in_ready = 1;
    atomic_fetch_add(&r->refs, 1);
    r->next_ready = NULL;
    if (s->ready_tail) {
        s->ready_tail->next_ready = r;
    } else {
        s->ready_head = r;
    }
    s->ready_tail = r;
    s->wake = 1;
}

/* One eventfd write for everything marked since the last one: an engine
 * step wakes the caller once for its whole batch, not once per sequence
 * (each early wake-up would cost the caller a drain for a single token).
 * sched->mu held. */
static void
dsv4_sched_wake(dsv4_sched *s)
{
    uint64_t one = 1;

    if (!s->wake) {
        return;
    }
    s->wake = 0;
    /* a full counter (EAGAIN) still leaves the fd readable, so the result
     * needs no handling */
    ssize_t n = write(s->efd, &one, sizeof(one));
    (void) n;
}

dsv4_request *
dsv4_sched_next_ready(dsv4_sched *s)
{
    dsv4_request *r;
    uint64_t      v;

    pthread_mutex_lock(&s->mu);
    r = s->ready_head;
    if (r != NULL) {
        s->ready_head = r->next_ready;
        if (s->ready_head == NULL) {
            s->ready_tail = NULL;
        }
        r->in_ready = 0;
    } else {
        /* empty: clear the fd (EAGAIN if already clear) */
        ssize_t n = read(s->efd, &v, sizeof(v));
        (void) n;
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* Appends one token (with its top logprobs, lp->n_top_out of them) to r's
 * mailbox.  Returns -1 on allocation failure. */
static int
dsv4_post_token(dsv4_request *r, int32_t id, const dsv4_sample_logprobs *lp)
{
    int w = r->p.logprobs, rc = 0;

    pthread_mutex_lock(&r->mu);
    if (r->ntoks == r->cap) {
        int         ncap = r->cap ? r->cap * 2 : 16;
        dsv4_token *nt = realloc(r->toks, (size_t) ncap * sizeof(*nt));
        if (nt != NULL) {
            r->toks = nt;
        }
        int32_t *ni = w ? realloc(r->top_ids, (size_t) ncap * w * sizeof(*ni)) : NULL;
        if (ni != NULL) {
            r->top_ids = ni;
        }
        float *nl = w ? realloc(r->top_lps, (size_t) ncap * w * sizeof(*nl)) : NULL;
        if (nl != NULL) {
            r->top_lps = nl;
        }
        if (nt == NULL || (w && (ni == NULL || nl == NULL))) {
            rc = -1;
            goto done;
        }
        r->cap = ncap;
    }
    for (int k = 0; k < w; k++) {      /* fewer finite alternatives: pad with -inf */
        r->top_ids[(size_t) r->ntoks * w + k] = k < lp->n_top_out ? lp->top[k].id : -1;
        r->top_lps[(size_t) r->ntoks * w + k] = k < lp->n_top_out ? lp->top[k].logprob
                                                                  : -INFINITY;
    }
    r->toks[r->ntoks++] = (dsv4_token) { id, lp->logprob };
    if (r->t_first == 0) {
        r->t_first = dsv4_now();
    }
done:
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* ---- engine thread ----------------------------------------------------- */

/* prefix cache hooks (defined at the end of the file) */
static void *dsv4_restorer_main(void *arg);
static int  dsv4_engine_cache_clip(dsv4_request *r, int n);
static void dsv4_engine_cache_capture(dsv4_request *r);

static void
dsv4_engine_finish(dsv4_engine *e, int i, dsv4_finish why, const char *msg)
{
    dsv4_sched   *s = e->s;
    dsv4_request *r = e->running[i];

    /* out of the running count before the finish is visible: whoever sees
     * the request finished sees the count without it */
    e->running[i] = e->running[--e->nrunning];
    pthread_mutex_lock(&s->mu);
    s->nrunning--;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&r->mu);
    r->finish = why;
    if (msg != NULL) {
        snprintf(r->err, sizeof(r->err), "%s", msg);
    }
    pthread_mutex_unlock(&r->mu);
    dsv4_seq_free(r->seq);            /* the memory goes back now, not at release */
    r->seq = NULL;
    dsv4_sampler_free(r->sampler);
    r->sampler = NULL;
    dsv4_constraint_free(r->p.constraint);
    r->p.constraint = NULL;
    pthread_mutex_lock(&s->mu);
    dsv4_sched_mark_ready(s, r);
    pthread_mutex_unlock(&s->mu);
    dsv4_request_release(r);          /* the scheduler's ref */
}

/* The sequence of r: its prompt and completion, within max_ctx. */
static dsv4_seq *
dsv4_request_seq_new(dsv4_sched *s, dsv4_request *r, char *err, size_t errlen)
{
    int ctx = r->p.n_prompt + r->p.max_tokens;

    return dsv4_seq_new(s->m, ctx < s->conf.max_ctx ? ctx : s->conf.max_ctx, err, errlen);
}

/* Moves waiting requests into the running batch (sched->mu held on entry
 * and exit; released around the allocations). */
static void
dsv4_engine_admit(dsv4_engine *e)
{
    dsv4_sched *s = e->s;

    while (e->nrunning < s->conf.max_seqs && s->wait_head != NULL) {
        dsv4_request *r = dsv4_queue_pop(&s->wait_head, &s->wait_tail);
        char          err[256];

        r->queued = DSV4_QUEUED_NO;
        s->nwaiting--;
        s->nrunning++;
        pthread_mutex_unlock(&s->mu);

        if (atomic_load(&r->cancelled)) {     /* gone before it started: no allocation */
            e->running[e->nrunning++] = r;
            dsv4_engine_finish(e, e->nrunning - 1, DSV4_FINISH_CANCELLED, NULL);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        if (r->seq == NULL) {           /* the restore thread's may have failed */
            r->seq = dsv4_request_seq_new(s, r, err, sizeof(err));
        }
        r->sampler = dsv4_sampler_new(dsv4_model_config(s->m)->vocab_size, &r->p.sample);
        pthread_mutex_lock(&r->mu);
        r->t_start = dsv4_now();
        pthread_mutex_unlock(&r->mu);
        e->running[e->nrunning++] = r;
        if (r->seq == NULL || r->sampler == NULL) {
            dsv4_engine_finish(e, e->nrunning - 1, DSV4_FINISH_ERROR,
                               r->seq == NULL ? err : "out of memory for the sampler");
        } else {
            dsv4_sampler_accept_prompt(r->sampler, r->prompt, r->p.n_prompt);
        }
        pthread_mutex_lock(&s->mu);
    }
}

/* Samples the next token of the request whose logits are in lg. */
static void
dsv4_engine_sample(dsv4_engine *e, int i, float *lg)
{
    dsv4_request        *r = e->running[i];
    dsv4_sample_logprobs lp = { DSV4_LOGPROBS_RAW, r->p.logprobs, e->top, 0.0f, 0 };
    int32_t              tok;

    /* the mask depends on this sequence's own output only: batch invariant */
    if (r->p.constraint != NULL && dsv4_constraint_mask(r->p.constraint, lg) == 0) {
        dsv4_engine_finish(e, i, DSV4_FINISH_ERROR, "the output grammar allows no token");
        return;
    }
    tok = dsv4_sampler_sample_logprobs(r->sampler, lg, &lp);
    if (tok < 0) {
        dsv4_engine_finish(e, i, DSV4_FINISH_ERROR, "no token has a finite logit");
        return;
    }
    if (r->p.constraint != NULL && dsv4_constraint_accept(r->p.constraint, tok) != 0) {
        dsv4_engine_finish(e, i, DSV4_FINISH_ERROR, "the token breaks the output grammar");
        return;
    }
    if (dsv4_post_token(r, tok, &lp) != 0) {
        dsv4_engine_finish(e, i, DSV4_FINISH_ERROR, "out of memory for the completion");
        return;
    }
    r->last = tok;
    for (int k = 0; k < r->p.n_stop; k++) {
        if (tok == r->stop_ids[k]) {
            dsv4_engine_finish(e, i, DSV4_FINISH_STOP, NULL);
            return;
        }
    }
    /* the token just sampled is fed next step: it needs a free position */
    if (r->ntoks >= r->p.max_tokens || dsv4_seq_pos(r->seq) + 1 > e->s->conf.max_ctx) {
        dsv4_engine_finish(e, i, DSV4_FINISH_LENGTH, NULL);
        return;
    }
    pthread_mutex_lock(&e->s->mu);
    dsv4_sched_mark_ready(e->s, r);
    pthread_mutex_unlock(&e->s->mu);
}

/* One step over the running batch. */
static void
dsv4_engine_step(dsv4_engine *e)
{
    dsv4_sched *s = e->s;
    int         vocab = dsv4_model_config(s->m)->vocab_size, ni = 0, rows = 0;
    char        err[256];

    for (int i = e->nrunning - 1; i >= 0; i--) {
        if (atomic_load(&e->running[i]->cancelled)) {
            dsv4_engine_finish(e, i, DSV4_FINISH_CANCELLED, NULL);
        }
    }
    /* decoding sequences first: one row each */
    for (int i = 0; i < e->nrunning && rows < s->conf.max_batch_tokens; i++) {
        dsv4_request *r = e->running[i];
        if (r->fed == r->p.n_prompt) {
            e->item_req[ni] = r;
            e->items[ni] = (dsv4_batch_item) { r->seq, &r->last, 1,
                                               e->logits + (size_t) ni * vocab };
            ni++;
            rows++;
        }
    }
    /* then prompt chunks with the rows left */
    for (int i = 0; i < e->nrunning && rows < s->conf.max_batch_tokens; i++) {
        dsv4_request *r = e->running[i];
        if (r->fed < r->p.n_prompt) {
            int n = r->p.n_prompt - r->fed, room = s->conf.max_batch_tokens - rows;
            n = n < s->conf.prefill_chunk ? n : s->conf.prefill_chunk;
            n = n < room ? n : room;
            n = dsv4_engine_cache_clip(r, n);
            e->item_req[ni] = r;
            e->items[ni] = (dsv4_batch_item) {
                r->seq, r->prompt + r->fed, n,
                r->fed + n == r->p.n_prompt ? e->logits + (size_t) ni * vocab : NULL };
            ni++;
            rows += n;
        }
    }
    if (ni == 0) {
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->stats.steps++;
    s->stats.rows += (uint64_t) rows;
    s->stats.seqs += (uint64_t) ni;
    for (int k = 0; k < ni; k++) {
        if (e->item_req[k]->fed < e->item_req[k]->p.n_prompt) {
            s->stats.prefill_rows += (uint64_t) e->items[k].n;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (dsv4_forward_batch(e->ctx, e->items, ni, err, sizeof(err)) != 0) {
        /* a batch-level failure is a bug or exhaustion: fail its requests */
        for (int k = 0; k < ni; k++) {
            for (int i = 0; i < e->nrunning; i++) {
                if (e->running[i] == e->item_req[k]) {
                    dsv4_engine_finish(e, i, DSV4_FINISH_ERROR, err);
                    break;
                }
            }
        }
        return;
    }
    for (int k = 0; k < ni; k++) {
        dsv4_request *r = e->item_req[k];
        if (r->fed < r->p.n_prompt) {
            r->fed += e->items[k].n;
            dsv4_engine_cache_capture(r);
        }
        if (e->items[k].logits == NULL) {
            continue;
        }
        for (int i = 0; i < e->nrunning; i++) {
            if (e->running[i] == r) {
                dsv4_engine_sample(e, i, e->items[k].logits);
                break;
            }
        }
    }
}

static void *
dsv4_engine_main(void *arg)
{
    dsv4_engine *e = arg;
    dsv4_sched  *s = e->s;

    pthread_mutex_lock(&s->mu);
    for ( ;; ) {
        while (!s->stop && e->nrunning == 0 && s->wait_head == NULL) {
            pthread_cond_wait(&s->cv, &s->mu);
        }
        if (s->stop) {
            break;
        }
        dsv4_engine_admit(e);
        dsv4_sched_wake(s);             /* admissions that failed */
        pthread_mutex_unlock(&s->mu);
        dsv4_engine_step(e);
        pthread_mutex_lock(&s->mu);
        dsv4_sched_wake(s);             /* the step's tokens and finishes */
    }
    pthread_mutex_unlock(&s->mu);
    while (e->nrunning > 0) {
        dsv4_engine_finish(e, e->nrunning - 1, DSV4_FINISH_CANCELLED, NULL);
    }
    pthread_mutex_lock(&s->mu);
    dsv4_sched_wake(s);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- scheduler --------------------------------------------------------- */

dsv4_sched *
dsv4_sched_new(const dsv4_model *m, const dsv4_sched_conf *conf, char *err, size_t errlen)
{
    const dsv4_config *cfg = dsv4_model_config(m);
    dsv4_sched        *s;

    if (conf->n_engines < 1 || conf->n_engines > 64 || conf->max_seqs < 1
        || conf->max_batch_tokens < conf->max_seqs || conf->prefill_chunk < 1
        || conf->max_queue < 0 || conf->max_ctx < 2 || conf->max_ctx > cfg->max_position
        || conf->backend == NULL) {
        dsv4_error(err, errlen, "invalid scheduler limits (engines %d, seqs %d, batch tokens %d,"
                   " chunk %d, queue %d, ctx %d)", conf->n_engines, conf->max_seqs,
                   conf->max_batch_tokens, conf->prefill_chunk, conf->max_queue, conf->max_ctx);
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        dsv4_error(err, errlen, "out of memory");
        return NULL;
    }
    s->m = m;
    s->conf = *conf;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->restore_cv, NULL);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->engines = calloc((size_t) conf->n_engines, sizeof(*s->engines));
    if (s->efd < 0 || s->engines == NULL) {
        dsv4_error(err, errlen, "eventfd/alloc failed: %s", strerror(errno));
        dsv4_sched_free(s);
        return NULL;
    }
    for (int i = 0; i < conf->n_engines; i++) {
        dsv4_engine *e = &s->engines[i];
        size_t       ns = (size_t) conf->max_seqs;

        e->s = s;
        e->ctx = dsv4_ctx_new(m, conf->backend, conf->max_batch_tokens, conf->max_ctx, err,
                              errlen);
        e->running = calloc(ns, sizeof(*e->running));
        e->items = calloc(ns, sizeof(*e->items));
        e->item_req = calloc(ns, sizeof(*e->item_req));
        e->logits = malloc(ns * (size_t) cfg->vocab_size * sizeof(float));
        e->top = calloc(20, sizeof(*e->top));
        if (e->ctx == NULL || !e->running || !e->items || !e->item_req || !e->logits || !e->top) {
            if (e->ctx != NULL) {
                dsv4_error(err, errlen, "out of memory for engine %d", i);
            }
            dsv4_sched_free(s);
            return NULL;
        }
        if (pthread_create(&e->thread, NULL, dsv4_engine_main, e) != 0) {
            dsv4_error(err, errlen, "cannot start engine thread %d", i);
            dsv4_sched_free(s);
            return NULL;
        }
        e->started = 1;
    }
    if (conf->cache != NULL) {
        if (pthread_create(&s->restorer, NULL, dsv4_restorer_main, s) != 0) {
            dsv4_error(err, errlen, "cannot start the restore thread");
            dsv4_sched_free(s);
            return NULL;
        }
        s->restorer_started = 1;
    }
    return s;
}

void
dsv4_sched_free(dsv4_sched *s)
{
    if (s == NULL) {
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_cond_broadcast(&s->restore_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->restorer_started) {
        pthread_join(s->restorer, NULL);    /* after its restore in progress */
    }
    for (int i = 0; s->engines != NULL && i < s->conf.n_engines; i++) {
        dsv4_engine *e = &s->engines[i];
        if (e->started) {
            pthread_join(e->thread, NULL);
        }
        dsv4_ctx_free(e->ctx);
        free(e->running);
        free(e->items);
        free(e->item_req);
        free(e->logits);
        free(e->top);
    }
    /* waiting requests never ran: they finish cancelled; every queued
     * notification's ref is dropped since nobody will drain them */
    while (s->wait_head != NULL || s->restore_head != NULL) {
        dsv4_request *r = s->wait_head != NULL
                          ? dsv4_queue_pop(&s->wait_head, &s->wait_tail)
                          : dsv4_queue_pop(&s->restore_head, &s->restore_tail);
        pthread_mutex_lock(&r->mu);
        r->finish = DSV4_FINISH_CANCELLED;
        pthread_mutex_unlock(&r->mu);
        r->sched = NULL;
        dsv4_request_release(r);
    }
    while (s->ready_head != NULL) {
        dsv4_request *r = s->ready_head;
        s->ready_head = r->next_ready;
        r->in_ready = 0;
        r->sched = NULL;
        dsv4_request_release(r);
    }
    if (s->efd >= 0) {
        close(s->efd);
    }
    free(s->engines);
    pthread_cond_destroy(&s->restore_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int
dsv4_sched_fd(const dsv4_sched *s)
{
    return s->efd;
}

void
dsv4_sched_get_stats(dsv4_sched *s, dsv4_sched_stats *st)
{
    pthread_mutex_lock(&s->mu);
    *st = s->stats;
    pthread_mutex_unlock(&s->mu);
}

void
dsv4_sched_load(dsv4_sched *s, int *waiting, int *running)
{
    pthread_mutex_lock(&s->mu);
    *waiting = s->nwaiting;
    *running = s->nrunning;
    pthread_mutex_unlock(&s->mu);
}

int
dsv4_sched_submit(dsv4_sched *s, dsv4_request *r, char *err, size_t errlen)
{
    const dsv4_config *cfg = dsv4_model_config(s->m);

    if (r->sched != NULL) {
        return dsv4_error(err, errlen, "request already submitted");
    }
    if (r->p.n_prompt + 1 > s->conf.max_ctx) {
        return dsv4_error(err, errlen, "prompt of %d tokens exceeds the context limit of %d",
                          r->p.n_prompt, s->conf.max_ctx - 1);
    }
    for (int i = 0; i < r->p.n_prompt; i++) {
        if (r->prompt[i] < 0 || r->prompt[i] >= cfg->vocab_size) {
            return dsv4_error(err, errlen, "prompt token %d out of range [0, %d)", r->prompt[i],
                              cfg->vocab_size);
        }
    }
    if (dsv4_sample_params_check(&r->p.sample, cfg->vocab_size, err, errlen) != 0) {
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    if (s->nwaiting >= s->conf.max_queue) {
        pthread_mutex_unlock(&s->mu);
        dsv4_error(err, errlen, "queue full (%d waiting)", s->conf.max_queue);
        return DSV4_SCHED_EFULL;
    }
    r->sched = s;
    r->t_submit = dsv4_now();
    atomic_fetch_add(&r->refs, 1);      /* the queue's */
    if (s->conf.cache != NULL) {
        r->queued = DSV4_QUEUED_RESTORE;
        dsv4_queue_push(&s->restore_head, &s->restore_tail, r);
        pthread_cond_signal(&s->restore_cv);
    } else {
        r->queued = DSV4_QUEUED_WAIT;
        dsv4_queue_push(&s->wait_head, &s->wait_tail, r);
        pthread_cond_signal(&s->cv);
    }
    s->nwaiting++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* ---- prefix cache --------------------------------------------------------
 *
 * With conf.cache set, an admitted request restores the longest cached
 * prefix of its prompt into its sequence (prefill starts there), its
 * prefill chunks stop at the cache's capture points, and at each one the
 * state is handed to the cache's writer thread (a copy; nothing waits on
 * the tiers).  The restore runs on the restore thread before admission and
 * may wait on Redis up to the cache's timeout per round trip: that request
 * waits, and the requests behind it in the restore queue; running batches
 * do not.
 */

int
dsv4_request_set_cache_salt(dsv4_request *r, const void *salt, size_t len)
{
    uint8_t *copy = len > 0 ? malloc(len) : NULL;

    if (len > 0 && copy == NULL) {
        return -1;
    }
    if (len > 0) {
        memcpy(copy, salt, len);
    }
    free(r->cache_salt);
    r->cache_salt = copy;
    r->cache_salt_len = len;
    return 0;
}

int
dsv4_request_cached_tokens(dsv4_request *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->cached;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Allocates r's sequence and restores its cached prefix into it (restore
 * thread; r is on no queue meanwhile).  Trouble means fewer cached tokens:
 * no sequence leaves it to admission, which allocates again or fails it. */
static void
dsv4_restore(dsv4_sched *s, dsv4_request *r)
{
    char err[256];
    int  P;

    r->seq = dsv4_request_seq_new(s, r, err, sizeof(err));
    r->cache_req = dsv4_cache_req_new(s->conf.cache, r->prompt, r->p.n_prompt, r->cache_salt,
                                      r->cache_salt_len);
    if (r->seq == NULL || r->cache_req == NULL) {
        return;                         /* out of memory: uncached (counted) */
    }
    P = dsv4_cache_restore(r->cache_req, r->seq);
    r->fed = P;
    pthread_mutex_lock(&r->mu);
    r->cached = P;
    pthread_mutex_unlock(&r->mu);
}

/* The restore thread: one request at a time from the restore queue to the
 * waiting queue.  A request cancelled meanwhile skips its restore;
 * admission finishes it. */
static void *
dsv4_restorer_main(void *arg)
{
    dsv4_sched *s = arg;

    pthread_mutex_lock(&s->mu);
    for ( ;; ) {
        while (!s->stop && s->restore_head == NULL) {
            pthread_cond_wait(&s->restore_cv, &s->mu);
        }
        if (s->stop) {
            break;
        }
        dsv4_request *r = dsv4_queue_pop(&s->restore_head, &s->restore_tail);
        r->queued = DSV4_QUEUED_NO;
        pthread_mutex_unlock(&s->mu);
        if (!atomic_load(&r->cancelled)) {
            dsv4_restore(s, r);
        }
        pthread_mutex_lock(&s->mu);
        r->queued = DSV4_QUEUED_WAIT;
        dsv4_queue_push(&s->wait_head, &s->wait_tail, r);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* A prefill chunk of n tokens at r->fed, shortened to end at the next
 * capture point. */
static int
dsv4_engine_cache_clip(dsv4_request *r, int n)
{
    int cap = r->cache_req ? dsv4_cache_next_capture(r->cache_req, r->fed) : 0;

    return cap > 0 && r->fed + n > cap ? cap - r->fed : n;
}

/* After a prefill chunk: snapshot the state when it ended on a capture point. */
static void
dsv4_engine_cache_capture(dsv4_request *r)
{
    if (r->cache_req != NULL && r->fed > 0
        && dsv4_cache_next_capture(r->cache_req, r->fed - 1) == r->fed) {
        dsv4_cache_capture(r->cache_req, r->seq);
    }
}
