
/*
 * Request plumbing shared by every API: the content handler, the request
 * body, errors in the API's shape, streaming output with flow control, the
 * hand-over to the scheduler and back, and the cleanup that cancels the
 * engine's work when the client goes away.
 *
 * Lifetime: the body handler keeps the reference that reading the body
 * took (r->main->count) until ngx_http_dsv4_finalize().  A client that
 * disconnects is noticed by ngx_http_test_reading() (the request's read
 * handler while it waits), which terminates the request; the pool cleanup
 * then cancels every dsv4_request and forgets it, so notifications that are
 * still queued find no data and are simply released.
 */


#include "ngx_http_dsv4_module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static ngx_int_t ngx_http_dsv4_simple(ngx_http_request_t *r,
    ngx_http_dsv4_loc_conf_t *dlcf);
static void ngx_http_dsv4_body_handler(ngx_http_request_t *r);
#if (NGX_THREADS)
static void ngx_http_dsv4_prepare_thread(void *data, ngx_log_t *log);
static void ngx_http_dsv4_prepare_done(ngx_event_t *ev);
#endif
static ngx_http_dsv4_ctx_t *ngx_http_dsv4_ctx_new(ngx_http_request_t *r,
    ngx_http_dsv4_loc_conf_t *dlcf);
static ngx_int_t ngx_http_dsv4_submit(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx);
static void ngx_http_dsv4_cleanup(void *data);
static void ngx_http_dsv4_writer(ngx_http_request_t *r);
static void ngx_http_dsv4_timeout(ngx_event_t *ev);
static void ngx_http_dsv4_choice_finish(ngx_http_dsv4_choice_t *ch,
    dsv4_finish fin);


static ngx_str_t  ngx_http_dsv4_json_type = ngx_string("application/json");
static ngx_str_t  ngx_http_dsv4_sse_type = ngx_string("text/event-stream");


ngx_int_t
ngx_http_dsv4_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_dsv4_ctx_t       *ctx;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    switch (dlcf->api) {

    case NGX_HTTP_DSV4_API_HEALTH:
    case NGX_HTTP_DSV4_API_METRICS:
        return ngx_http_dsv4_simple(r, dlcf);

    case NGX_HTTP_DSV4_API_USAGE:
    case NGX_HTTP_DSV4_API_USAGE_ADMIN:
        break;

    default:
        if (dlcf->keys == NULL && dlcf->limit_zone == NULL) {
            return ngx_http_dsv4_start(r);
        }
    }

    /* keys, limits or usage: the tenant is known before anything else */

    ctx = ngx_http_dsv4_ctx_new(r, dlcf);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->lim = ngx_http_dsv4_lim_new(r, ctx);
    if (ctx->lim == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_dsv4_auth(r, ctx);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    return ngx_http_dsv4_start(r);
}


/*
 * The request's context, with the cleanup that frees what it holds however
 * the request ends.
 */

static ngx_http_dsv4_ctx_t *
ngx_http_dsv4_ctx_new(ngx_http_request_t *r, ngx_http_dsv4_loc_conf_t *dlcf)
{
    ngx_pool_cleanup_t   *cln;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_dsv4_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    ctx->request = r;
    ctx->dlcf = dlcf;
    ctx->api = dlcf->api;
    ctx->t_start = ngx_http_dsv4_now();
    ctx->created = ngx_time();

    cln->handler = ngx_http_dsv4_cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_dsv4_module);

    return ctx;
}


/* The API itself, once the caller is known. */

ngx_int_t
ngx_http_dsv4_start(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_dsv4_ctx_t       *ctx;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    switch (dlcf->api) {

    case NGX_HTTP_DSV4_API_MODELS:
    case NGX_HTTP_DSV4_API_USAGE:
    case NGX_HTTP_DSV4_API_USAGE_ADMIN:
        return ngx_http_dsv4_simple(r, dlcf);

    default:
        break;
    }

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_dsv4_send_error(r, dlcf->api, NGX_HTTP_NOT_ALLOWED,
                                        "only POST is allowed here", NULL,
                                        "method_not_allowed");
    }

    if (r->headers_in.content_length_n > (off_t) dlcf->max_body_size) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_dsv4_send_error(r, dlcf->api,
                                        NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                        "the request body is larger than "
                                        "the limit", NULL,
                                        "request_too_large");
    }

    r->request_body_in_single_buf = 1;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);

    if (ctx == NULL) {
        ctx = ngx_http_dsv4_ctx_new(r, dlcf);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_dsv4_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        if (r->connection->error) {
            return rc;
        }

        r->keepalive = 0;

        return ngx_http_dsv4_send_error(r, dlcf->api, rc,
                                        rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                        ? "the request body is larger than "
                                          "the limit"
                                        : "cannot read the request body",
                                        NULL,
                                        rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                        ? "request_too_large" : NULL);
    }

    if (!ctx->body_read) {
        ngx_http_dsv4_watch_body_timeout(r, ctx);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_dsv4_simple(ngx_http_request_t *r, ngx_http_dsv4_loc_conf_t *dlcf)
{
    ngx_int_t  rc;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_dsv4_send_error(r, dlcf->api, NGX_HTTP_NOT_ALLOWED,
                                        "only GET is allowed here", NULL,
                                        "method_not_allowed");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    switch (dlcf->api) {

    case NGX_HTTP_DSV4_API_MODELS:
        return ngx_http_dsv4_models_handler(r);

    case NGX_HTTP_DSV4_API_HEALTH:
        return ngx_http_dsv4_health_handler(r);

    case NGX_HTTP_DSV4_API_USAGE:
    case NGX_HTTP_DSV4_API_USAGE_ADMIN:
        return ngx_http_dsv4_usage_handler(r,
                   ngx_http_get_module_ctx(r, ngx_http_dsv4_module));

    default: /* NGX_HTTP_DSV4_API_METRICS */
        return ngx_http_dsv4_metrics_handler(r);
    }
}


/* The body as one contiguous buffer (copied only when it is split). */

static ngx_int_t
ngx_http_dsv4_body(ngx_http_request_t *r, u_char **data, size_t *len)
{
    u_char       *p;
    off_t         size;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    *data = NULL;
    *len = 0;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        *data = cl->buf->pos;
        *len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    p = ngx_pnalloc(r->pool, (size_t) size + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;

        } else {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }
    }

    *len = p - *data;

    return NGX_OK;
}


static void
ngx_http_dsv4_body_handler(ngx_http_request_t *r)
{
    u_char                     *body;
    size_t                      len;
    ngx_int_t                   rc;
    ngx_http_dsv4_ctx_t        *ctx;
    ngx_http_dsv4_prep_t       *prep;
    ngx_http_dsv4_loc_conf_t   *dlcf;
#if (NGX_THREADS)
    ngx_thread_task_t          *task;
#endif

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);
    ctx->body_read = 1;

    if (ngx_http_dsv4_body(r, &body, &len) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (len > dlcf->max_body_size) {
        r->keepalive = 0;
        rc = ngx_http_dsv4_send_error(r, dlcf->api,
                                      NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "the request body is larger than the "
                                      "limit", NULL, "request_too_large");
        ngx_http_finalize_request(r, rc);
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);

    prep = calloc(1, sizeof(ngx_http_dsv4_prep_t));
    if (prep == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->prep = prep;

    prep->api = dlcf->api;
    prep->body = body;
    prep->len = len;
    prep->dmcf = ngx_http_get_module_main_conf(r, ngx_http_dsv4_module);
    prep->max_prompt_tokens = dlcf->max_prompt_tokens;
    prep->max_tokens_limit = dlcf->max_tokens;
    prep->max_n = dlcf->max_n;

    /* a client that goes away from now on is noticed */

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_dsv4_writer;

#if (NGX_THREADS)

    if (dlcf->thread_pool) {
        task = ngx_thread_task_alloc(r->pool, 0);
        if (task == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        task->ctx = prep;
        task->handler = ngx_http_dsv4_prepare_thread;
        task->event.data = r;
        task->event.handler = ngx_http_dsv4_prepare_done;

        if (ngx_thread_task_post(dlcf->thread_pool, task) != NGX_OK) {
            rc = ngx_http_dsv4_send_error(r, dlcf->api,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "the tokenizer queue is full",
                                          NULL, "overloaded");
            ngx_http_finalize_request(r, rc);
            return;
        }

        /* the request cannot go away while the task uses prep */

        ctx->in_thread = 1;
        r->main->blocked++;
        r->aio = 1;

        return;
    }

#endif

    ngx_http_dsv4_prepare(prep);

    ngx_http_dsv4_run(r, ctx);
}


#if (NGX_THREADS)

static void
ngx_http_dsv4_prepare_thread(void *data, ngx_log_t *log)
{
    ngx_http_dsv4_prepare(data);
}


static void
ngx_http_dsv4_prepare_done(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dsv4_ctx_t  *ctx;

    r = ev->data;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->main->blocked--;
    r->aio = 0;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);
    ctx->in_thread = 0;

    if (c->error) {
        ngx_http_finalize_request(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);

    } else {
        ngx_http_dsv4_run(r, ctx);
    }

    ngx_http_run_posted_requests(c);
}

#endif


/*
 * After prepare: answers errors, admits the request against its tenant's
 * limits (called again when Redis has decided), then answers the utility
 * APIs or submits.
 */

void
ngx_http_dsv4_run(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    ngx_int_t              rc;
    ngx_http_dsv4_prep_t  *prep;

    prep = ctx->prep;

    if (prep->status) {
        rc = ngx_http_dsv4_send_error(r, ctx->api, prep->status, prep->err,
                                      prep->param, prep->code);
        ngx_http_dsv4_finalize(ctx, rc);
        return;
    }

    ctx->model = prep->model;

    if (!ngx_http_dsv4_key_allows(ctx, prep)) {
        rc = ngx_http_dsv4_send_error(r, ctx->api, NGX_HTTP_NOT_FOUND,
                                      "the model does not exist or you do "
                                      "not have access to it", "model",
                                      "model_not_found");
        ngx_http_dsv4_finalize(ctx, rc);
        return;
    }

    rc = ngx_http_dsv4_limit_admit(r, ctx);

    if (rc == NGX_DONE) {
        return;
    }

    if (rc != NGX_DECLINED) {
        ngx_http_dsv4_finalize(ctx, rc);
        return;
    }

    switch (ctx->api) {

    case NGX_HTTP_DSV4_API_TOKENIZE:
        ngx_http_dsv4_finalize(ctx, ngx_http_dsv4_tokenize(r, prep));
        return;

    case NGX_HTTP_DSV4_API_DETOKENIZE:
        ngx_http_dsv4_finalize(ctx, ngx_http_dsv4_detokenize(r, prep));
        return;

    default:
        break;
    }

    rc = ngx_http_dsv4_submit(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_dsv4_finalize(ctx, rc);
    }
}


/*
 * Creates one dsv4_request per choice and queues them; returns NGX_DONE
 * (the request now waits for tokens) or what finalizes it: a status, or the
 * result of sending an error response.
 */

/*
 * Prompt tokens restored from the prefix cache, counted like prompt_tokens
 * (once per prompt: the most any of its choices reused).
 */

ngx_uint_t
ngx_http_dsv4_cached_tokens(ngx_http_dsv4_ctx_t *ctx)
{
    int          n;
    ngx_uint_t   i, p, total, best;

    total = 0;

    for (p = 0; ctx->prep && p < ctx->prep->nprompts; p++) {
        best = 0;

        for (i = 0; i < ctx->nchoices; i++) {
            if (ctx->choices[i].prompt != p || ctx->choices[i].req == NULL) {
                continue;
            }

            n = dsv4_request_cached_tokens(ctx->choices[i].req);

            if (n > 0 && (ngx_uint_t) n > best) {
                best = (ngx_uint_t) n;
            }
        }

        total += best;
    }

    return total;
}


static ngx_int_t
ngx_http_dsv4_submit(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    char                     err[256];
    ngx_int_t                rc;
    ngx_uint_t               i, j, k;
    int                      waiting, running;
    dsv4_request_params      rp;
    ngx_str_t                salt;
    dsv4_parser_options      po;
    ngx_http_dsv4_prep_t    *prep;
    ngx_http_dsv4_model_t   *m;
    ngx_http_dsv4_choice_t  *ch;

    prep = ctx->prep;
    m = prep->model;

    if (m->notify == NULL) {
        return ngx_http_dsv4_send_error(r, ctx->api,
                                        NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "the model is still loading", "model",
                                        "model_loading");
    }

    ctx->nchoices = prep->nprompts * prep->n;
    ctx->stream = prep->stream;

    dsv4_sched_load(m->sched, &waiting, &running);

    if ((ngx_int_t) (waiting + ctx->nchoices) > prep->dmcf->max_queue) {
        ngx_http_dsv4_metrics_rejected(m);
        return ngx_http_dsv4_send_error(r, ctx->api,
                                        NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "the server is overloaded (queue "
                                        "full), retry later", NULL,
                                        "overloaded");
    }

    ctx->choices = ngx_pcalloc(r->pool,
                               ctx->nchoices * sizeof(ngx_http_dsv4_choice_t));
    if (ctx->choices == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!prep->seed_given) {
        prep->sample.seed = ((uint64_t) ngx_random() << 32)
                            ^ (uint64_t) ngx_random()
                            ^ ((uint64_t) ngx_pid << 16);
    }

    ngx_memzero(&po, sizeof(dsv4_parser_options));

    if (ctx->api == NGX_HTTP_DSV4_API_COMPLETIONS) {
        po.start = DSV4_PARSE_RAW;

    } else {
        po.start = prep->thinking ? DSV4_PARSE_REASONING : DSV4_PARSE_CHAT;
        po.parse_tools = prep->tools;
    }

    po.stop = (const char *const *) prep->stop;
    po.n_stop = prep->nstop;

    ctx->prompt_tokens = ngx_http_dsv4_prep_prompt_tokens(prep);

    /*
     * dsv4_cache_scope key: only requests with the same key share cached
     * prefixes.  With dsv4_keys the tenant is the scope (so that a rotated
     * key keeps its tenant's cache); else the Authorization header's
     * bearer token is.  The library hashes the salt into the chain's root
     * key (SHA-256): it is neither stored nor sent to Redis.  Requests
     * without a token share the unsalted scope.  The default (auto) is
     * per tenant wherever dsv4_keys identified one, so that no tenant can
     * time whether another's prompt is cached; global only when asked.
     */

    ngx_str_null(&salt);

    if (m->cache != NULL
        && (prep->dmcf->cache_scope == NGX_HTTP_DSV4_CACHE_SCOPE_KEY
            || (prep->dmcf->cache_scope == NGX_HTTP_DSV4_CACHE_SCOPE_AUTO
                && ctx->lim != NULL && ctx->lim->has_key)))
    {
        if (ctx->lim != NULL && ctx->lim->has_key) {
            salt.data = (u_char *) ctx->lim->key.tenant;
            salt.len = ngx_strlen(salt.data);

        } else if (ngx_http_dsv4_bearer(r, &salt) != NGX_OK
                   && r->headers_in.authorization != NULL)
        {
            salt = r->headers_in.authorization->value;
        }
    }

    k = 0;

    for (i = 0; i < prep->nprompts; i++) {
        for (j = 0; j < prep->n; j++, k++) {

            ch = &ctx->choices[k];
            ch->ctx = ctx;
            ch->index = k;
            ch->prompt = i;
            ch->stop_index = -1;
            ch->stop_token = -1;
            ch->in_reasoning = prep->thinking;
            ch->t_last = ctx->t_start;

            if (ngx_array_init(&ch->pending_lp, r->pool, 4,
                               sizeof(ngx_http_dsv4_lp_t))
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            if (m->tok != NULL) {
                ch->parser = dsv4_parser_new(m->tok, &po);
                if (ch->parser == NULL) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }

            ngx_memzero(&rp, sizeof(dsv4_request_params));

            rp.prompt = prep->prompts[i];
            rp.n_prompt = prep->nids[i];
            rp.max_tokens = (int) prep->max_tokens;
            rp.sample = prep->sample;
            rp.sample.seed = prep->sample.seed + j;
            rp.stop_ids = m->stop_ids;
            rp.n_stop = (int) m->n_stop_ids;
            rp.logprobs = prep->logprobs > 0 ? (int) prep->logprobs : 0;

            if (prep->grammar != NULL) {
                rp.constraint = dsv4_constraint_new(prep->grammar,
                                    m->vocab_index,
                                    dsv4_tokenizer_eos_id(m->tok));
                if (rp.constraint == NULL) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }

            ch->req = dsv4_request_new(&rp, err, sizeof(err));
            if (ch->req == NULL) {
                dsv4_constraint_free(rp.constraint);
                return ngx_http_dsv4_send_error(r, ctx->api,
                                                NGX_HTTP_BAD_REQUEST, err,
                                                NULL, "invalid_value");
            }

            dsv4_request_set_data(ch->req, ch);

            if (salt.len
                && dsv4_request_set_cache_salt(ch->req, salt.data, salt.len)
                   != 0)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }

    /* all created: queue them (a refusal cancels those already queued) */

    for (k = 0; k < ctx->nchoices; k++) {
        ch = &ctx->choices[k];

        rc = dsv4_sched_submit(m->sched, ch->req, err, sizeof(err));

        if (rc != 0) {

            for (i = 0; i < k; i++) {
                dsv4_request_cancel(ctx->choices[i].req);
            }

            if (rc == DSV4_SCHED_EFULL) {
                ngx_http_dsv4_metrics_rejected(m);
                return ngx_http_dsv4_send_error(r, ctx->api,
                                                NGX_HTTP_SERVICE_UNAVAILABLE,
                                                "the server is overloaded "
                                                "(queue full), retry later",
                                                NULL, "overloaded");
            }

            return ngx_http_dsv4_send_error(r, ctx->api,
                                            NGX_HTTP_BAD_REQUEST, err, NULL,
                                            "invalid_value");
        }
    }

    ctx->submitted = 1;

    ngx_http_dsv4_random_id(ctx->id,
                            ctx->api == NGX_HTTP_DSV4_API_MESSAGES ? "msg_"
                            : ctx->api == NGX_HTTP_DSV4_API_CHAT ? "chatcmpl-"
                            : "cmpl-", 24);
    ctx->id_len = ngx_strlen(ctx->id);

    ngx_http_dsv4_metrics_request(m, ctx->prompt_tokens);

    ctx->timer.handler = ngx_http_dsv4_timeout;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;

    ngx_add_timer(&ctx->timer, ctx->dlcf->timeout);

    if (!ctx->stream) {
        return NGX_DONE;
    }

    rc = ngx_http_dsv4_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    ctx->header_sent = 1;

    if (ctx->api == NGX_HTTP_DSV4_API_MESSAGES) {
        rc = ngx_http_dsv4_anthropic_start(ctx);

    } else {
        rc = ngx_http_dsv4_openai_start(ctx);
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    /* the status line goes out now, not with the first token */

    if (ctx->out.len == 0) {
        rc = ngx_http_send_special(r, NGX_HTTP_FLUSH);

    } else {
        rc = ngx_http_dsv4_stream_flush(ctx, 0);
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_DONE;
}


static void
ngx_http_dsv4_cleanup(void *data)
{
    ngx_http_dsv4_ctx_t *ctx = data;

    ngx_uint_t               i;
    ngx_http_dsv4_choice_t  *ch;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    /* first: the counts it meters still need the requests */

    ngx_http_dsv4_limit_release(ctx);

    for (i = 0; i < ctx->nchoices && ctx->choices; i++) {
        ch = &ctx->choices[i];

        if (ch->req) {
            dsv4_request_set_data(ch->req, NULL);

            if (!ch->done) {

                /* the client went away: free the sequence now */

                dsv4_request_cancel(ch->req);

                if (ctx->submitted && ctx->model) {
                    ngx_http_dsv4_metrics_finish(ctx->model,
                                                 NGX_HTTP_DSV4_FINISH_ABORT,
                                                 ngx_http_dsv4_now()
                                                 - ctx->t_start, 0, 0);
                }
            }

            dsv4_request_release(ch->req);
            ch->req = NULL;
        }

        if (ch->parser) {
            dsv4_parser_free(ch->parser);
            ch->parser = NULL;
        }

        dsv4_strbuf_free(&ch->content);
        dsv4_strbuf_free(&ch->reasoning);

        if (ch->tool_calls) {
            json_decref(ch->tool_calls);
            ch->tool_calls = NULL;
        }

        if (ch->logprobs) {
            json_decref(ch->logprobs);
            ch->logprobs = NULL;
        }
    }

    dsv4_strbuf_free(&ctx->out);

    ngx_http_dsv4_prep_free(ctx->prep);
    ctx->prep = NULL;
}


void
ngx_http_dsv4_finalize(ngx_http_dsv4_ctx_t *ctx, ngx_int_t rc)
{
    ngx_http_request_t  *r;

    if (ctx->finalized) {
        return;
    }

    ctx->finalized = 1;
    r = ctx->request;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    if (ctx->header_sent && ctx->stream && rc != NGX_ERROR) {

        /* the status line is gone: end the stream, whatever happened */

        rc = ngx_http_dsv4_stream_flush(ctx, 1);
        rc = (rc == NGX_ERROR) ? NGX_ERROR : NGX_OK;
    }

    ngx_http_finalize_request(r, rc);
}


/* ---------------------------------------------------------------------- */
/* responses                                                               */


void
ngx_http_dsv4_random_id(u_char *dst, const char *prefix, size_t n)
{
    size_t     i;
    uint32_t   v;

    static const char  hex[] = "0123456789abcdef";

    dst = ngx_cpymem(dst, prefix, ngx_strlen(prefix));
    v = 0;

    for (i = 0; i < n; i++) {
        if (i % 6 == 0) {
            v = (uint32_t) ngx_random();
        }

        *dst++ = hex[v & 0xf];
        v >>= 4;
    }

    *dst = '\0';
}


ngx_int_t
ngx_http_dsv4_send_text(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;
    r->headers_out.content_length_n = len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = len ? 1 : 0;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_dsv4_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *body)
{
    ngx_str_t  text;

    if (ngx_http_dsv4_json_text(r->pool, body, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dsv4_send_text(r, status, &ngx_http_dsv4_json_type,
                                   text.data, text.len);
}


/* body (consumed) as compact JSON and a newline, in pool memory */

ngx_int_t
ngx_http_dsv4_json_text(ngx_pool_t *pool, json_t *body, ngx_str_t *text)
{
    u_char  *p;
    size_t   len;

    len = json_dumpb(body, NULL, 0, JSON_COMPACT);
    p = len ? ngx_pnalloc(pool, len + 1) : NULL;

    if (p == NULL) {
        json_decref(body);
        return NGX_ERROR;
    }

    len = json_dumpb(body, (char *) p, len, JSON_COMPACT);
    json_decref(body);

    p[len++] = '\n';

    text->data = p;
    text->len = len;

    return NGX_OK;
}


ngx_int_t
ngx_http_dsv4_add_header(ngx_http_request_t *r, const char *key,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


ngx_int_t
ngx_http_dsv4_retry_after(ngx_http_request_t *r)
{
    u_char                    *p;
    size_t                     len;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    len = ngx_sprintf(p, "%T", dlcf->retry_after) - p;

    return ngx_http_dsv4_add_header(r, "Retry-After", p, len);
}


const char *
ngx_http_dsv4_error_type(ngx_uint_t api, ngx_uint_t status)
{
    if (api == NGX_HTTP_DSV4_API_MESSAGES) {
        switch (status) {
        case 400:
        case 405:
            return "invalid_request_error";
        case 401:
            return "authentication_error";
        case 404:
            return "not_found_error";
        case 413:
            return "request_too_large";
        case 429:
            return "rate_limit_error";
        case 503:
            return "overloaded_error";
        default:
            return status < 500 ? "invalid_request_error" : "api_error";
        }
    }

    switch (status) {
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable_error";
    default:
        return status < 500 ? "invalid_request_error" : "server_error";
    }
}


/*
 * Sends {"error": {"message", "type", "param", "code"}} (OpenAI), or
 * {"type": "error", "error": {"type", "message"}} on /v1/messages, and
 * logs it once: client errors at "info" like nginx's own, overload at
 * "warn", server faults at "error".
 */

ngx_int_t
ngx_http_dsv4_send_error(ngx_http_request_t *r, ngx_uint_t api,
    ngx_uint_t status, const char *message, const char *param,
    const char *code)
{
    return ngx_http_dsv4_send_error_typed(r, api, status, NULL, message,
                                          param, code);
}


/* type: OpenAI's error type when the status alone does not say it */

/*
 * The error body in the API's shape: OpenAI's {"error": {"message", "type",
 * "param", "code"}}, Anthropic's {"type": "error", "error": {"type",
 * "message"}} on /v1/messages, and for NGX_HTTP_DSV4_API_NONE (an error
 * before any location is known) both at once, which either SDK reads:
 * {"type": "error", "error": {"message", "type", "param", "code"}}.
 */

json_t *
ngx_http_dsv4_error_json(ngx_uint_t api, ngx_uint_t status, const char *type,
    const char *message, const char *param, const char *code)
{
    size_t   len;
    json_t  *msg, *err;

    /* messages may hold client text cut at a byte limit: keep valid UTF-8 */

    len = ngx_strlen(message);
    len = dsv4_utf8_valid_prefix(message, len);

    msg = json_stringn(message, len);
    if (msg == NULL) {
        return NULL;
    }

    if (api == NGX_HTTP_DSV4_API_MESSAGES) {
        return json_pack("{s:s,s:{s:s,s:o}}", "type", "error", "error",
                         "type", ngx_http_dsv4_error_type(api, status),
                         "message", msg);
    }

    err = json_pack("{s:o,s:s,s:s?,s:s?}", "message", msg,
                    "type", type ? type : ngx_http_dsv4_error_type(api, status),
                    "param", param, "code", code);

    if (err == NULL) {
        return NULL;
    }

    if (api == NGX_HTTP_DSV4_API_NONE) {
        return json_pack("{s:s,s:o}", "type", "error", "error", err);
    }

    return json_pack("{s:o}", "error", err);
}


ngx_int_t
ngx_http_dsv4_send_error_typed(ngx_http_request_t *r, ngx_uint_t api,
    ngx_uint_t status, const char *type, const char *message,
    const char *param, const char *code)
{
    json_t                    *body;
    const char                *allow;
    ngx_uint_t                 level;
    ngx_http_dsv4_loc_conf_t  *dlcf;
    u_char                     cause[64];

    level = status >= 500 ? (status == 503 ? NGX_LOG_WARN : NGX_LOG_ERR)
                          : NGX_LOG_INFO;

    if (api == NGX_HTTP_DSV4_API_HEALTH) {
        level = NGX_LOG_INFO;
    }

    if (level == NGX_LOG_INFO) {
        ngx_log_error(level, r->connection->log, 0, "dsv4: %ui %s%s%s",
                      status, message, param ? ", param: " : "",
                      param ? param : "");

    } else {
        /* faults come in bursts (an outage refuses every request) */
        (void) ngx_snprintf(cause, sizeof(cause) - 1, "http %ui %s%Z", status,
                            code ? code : message);
        ngx_http_dsv4_log_fault(level, r->connection->log, (char *) cause,
                                "dsv4: %ui %s", status, message);
    }

    ngx_http_dsv4_metrics_status(api, status);

    body = ngx_http_dsv4_error_json(api, status, type, message, param, code);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE
        && ngx_http_dsv4_retry_after(r) != NGX_OK)
    {
        json_decref(body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

        allow = (dlcf->api == NGX_HTTP_DSV4_API_MODELS
                 || dlcf->api == NGX_HTTP_DSV4_API_HEALTH
                 || dlcf->api == NGX_HTTP_DSV4_API_METRICS)
                ? "GET, HEAD" : "POST";

        if (ngx_http_dsv4_add_header(r, "Allow", (u_char *) allow,
                                     ngx_strlen(allow))
            != NGX_OK)
        {
            json_decref(body);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_dsv4_send_json(r, status, body);
}


ngx_int_t
ngx_http_dsv4_stream_header(ngx_http_request_t *r)
{
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type = ngx_http_dsv4_sse_type;
    r->headers_out.content_type_len = ngx_http_dsv4_sse_type.len;
    r->headers_out.content_length_n = -1;

    if (ngx_http_dsv4_add_header(r, "Cache-Control", (u_char *) "no-cache",
                                 8)
        != NGX_OK
        || ngx_http_dsv4_add_header(r, "X-Accel-Buffering", (u_char *) "no",
                                    2)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_send_header(r);
}


static ngx_int_t
ngx_http_dsv4_flow(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;
    wev = c->write;

    if (c->buffered) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    return NGX_OK;
}


/*
 * Sends what ctx->out holds as one flushed buffer (the SSE events of one
 * engine notification).  Buffers are recycled through ctx->free, so a long
 * stream does not grow the request pool per token.
 */

ngx_int_t
ngx_http_dsv4_stream_flush(ngx_http_dsv4_ctx_t *ctx, ngx_uint_t last)
{
    size_t               size;
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (ctx->out.len == 0 && !last) {
        return NGX_OK;
    }

    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    b = cl->buf;

    if (ctx->out.len) {
        if (b->start == NULL
            || (size_t) (b->end - b->start) < ctx->out.len)
        {
            size = ngx_max(ctx->out.len, 4096);

            b->start = ngx_palloc(r->pool, size);
            if (b->start == NULL) {
                return NGX_ERROR;
            }

            b->end = b->start + size;
        }

        b->pos = b->start;
        b->last = ngx_cpymem(b->start, ctx->out.data, ctx->out.len);
        b->temporary = 1;

    } else {
        b->pos = b->start;
        b->last = b->start;
        b->temporary = 0;
    }

    b->tag = (ngx_buf_tag_t) &ngx_http_dsv4_module;
    b->flush = 1;
    b->last_buf = (last && r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    ctx->out.len = 0;

    if (ctx->out.data) {
        ctx->out.data[0] = '\0';
    }

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_dsv4_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    return ngx_http_dsv4_flow(r);
}


/* The request's write handler while it streams: drains what is buffered. */

static void
ngx_http_dsv4_writer(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_event_t          *wev;
    ngx_connection_t     *c;
    ngx_http_dsv4_ctx_t  *ctx;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);

    if (ctx == NULL || ctx->finalized) {
        return;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out");
        c->timedout = 1;
        ctx->finalized = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (wev->delayed || r->aio || !ctx->header_sent) {
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, NULL,
                            (ngx_buf_tag_t) &ngx_http_dsv4_module);

    if (rc == NGX_ERROR || ngx_http_dsv4_flow(r) == NGX_ERROR) {
        ctx->finalized = 1;
        ngx_http_finalize_request(r, NGX_ERROR);
    }
}


static void
ngx_http_dsv4_timeout(ngx_event_t *ev)
{
    ngx_int_t             rc;
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ctx->error = 1;

    if (ctx->header_sent) {
        ngx_http_dsv4_log_fault(NGX_LOG_ERR, c->log, "engine timeout",
                                "dsv4: no progress from the engine for %M ms",
                                ctx->dlcf->timeout);
        ngx_http_dsv4_stream_error(ctx, "the engine made no progress in time");
        ngx_http_dsv4_finalize(ctx, NGX_OK);

    } else {
        rc = ngx_http_dsv4_send_error(r, ctx->api,
                                      NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "the engine made no progress in time",
                                      NULL, "timeout");
        ngx_http_dsv4_finalize(ctx, rc);
    }

    ngx_http_run_posted_requests(c);
}


/* ---------------------------------------------------------------------- */
/* tokens from the engine                                                  */


static void
ngx_http_dsv4_dispatch(ngx_http_dsv4_choice_t *ch, const dsv4_event *ev,
    size_t nev)
{
    size_t                i;
    ngx_uint_t            nlp;
    ngx_http_dsv4_lp_t   *lp;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;

    for (i = 0; i < nev; i++) {

        if (ev[i].type == DSV4_EV_STOP) {
            ch->stopped = 1;
            ch->stop_token = ev[i].stop_token;

            if (ev[i].stop_reason == DSV4_STOP_STRING) {
                ch->stop_index = ev[i].index;
            }

            continue;
        }

        if (ev[i].type != DSV4_EV_REASONING) {
            ch->in_reasoning = 0;
        }

        if (ev[i].type == DSV4_EV_TOOL_CALL) {
            ch->ntool_calls++;
        }

        if (ctx->api == NGX_HTTP_DSV4_API_MESSAGES) {
            ngx_http_dsv4_anthropic_event(ch, &ev[i]);
            continue;
        }

        /* the pending logprobs ride on the first text of this token */

        lp = ch->pending_lp.elts;
        nlp = ch->pending_lp.nelts;
        ch->pending_lp.nelts = 0;

        ngx_http_dsv4_openai_event(ch, &ev[i], lp, nlp);
    }
}


static void
ngx_http_dsv4_token(ngx_http_dsv4_choice_t *ch, dsv4_token *tok)
{
    size_t                 nev;
    ngx_int_t              k;
    const dsv4_event      *ev;
    ngx_http_dsv4_lp_t    *lp;
    ngx_http_dsv4_ctx_t   *ctx;

    ctx = ch->ctx;
    k = ch->ntaken++;

    if (ch->stopped) {
        return;
    }

    ch->ntokens++;
    ctx->completion_tokens++;

    if (ch->in_reasoning) {
        ch->reasoning_tokens++;
    }

    if (ctx->prep->logprobs >= 0) {
        lp = ngx_array_push(&ch->pending_lp);
        if (lp == NULL) {
            ctx->error = 1;
            return;
        }

        lp->id = tok->id;
        lp->logprob = tok->logprob;
        lp->k = k;
    }

    if (ch->parser == NULL) {
        return;
    }

    if (dsv4_parser_feed(ch->parser, tok->id, &ev, &nev) != 0) {
        ctx->error = 1;
        return;
    }

    ngx_http_dsv4_dispatch(ch, ev, nev);
}


/*
 * The eventfd handler found news for this choice: takes its tokens, feeds
 * them through the output parser into the API's events, and finishes the
 * choice (and the request) when the engine or a stop string says so.
 */

void
ngx_http_dsv4_choice_ready(ngx_http_dsv4_choice_t *ch)
{
    int                   n, i;
    double                now;
    ngx_uint_t            before;
    dsv4_token            toks[NGX_HTTP_DSV4_TAKE];
    dsv4_finish           fin;
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;
    r = ctx->request;
    c = r->connection;

    if (ch->done || ctx->finalized) {
        return;
    }

    ngx_http_set_log_request(c->log, r);

    before = ch->ntokens;
    fin = DSV4_FINISH_NONE;

    do {
        n = dsv4_request_take(ch->req, toks, NGX_HTTP_DSV4_TAKE, &fin);

        for (i = 0; i < n; i++) {
            ngx_http_dsv4_token(ch, &toks[i]);
        }

    } while (n == NGX_HTTP_DSV4_TAKE);

    if (ch->ntokens > before) {
        now = ngx_http_dsv4_now();

        /* the first token's latency is TTFT, not an inter-token gap */

        ngx_http_dsv4_metrics_token(ctx->model,
                                    before > 0 ? now - ch->t_last : -1.0,
                                    ch->ntokens - before);

        ch->t_last = now;

        if (ctx->timer.timer_set) {
            ngx_add_timer(&ctx->timer, ctx->dlcf->timeout);
        }
    }

    if (ctx->error) {
        fin = DSV4_FINISH_ERROR;
    }

    if (fin != DSV4_FINISH_NONE || ch->stopped) {
        ngx_http_dsv4_choice_finish(ch, fin);
    }

    if (ctx->finalized) {
        ngx_http_run_posted_requests(c);
        return;
    }

    if (ctx->ndone == ctx->nchoices) {
        ngx_http_dsv4_limit_finish(ctx);

        if (ctx->api == NGX_HTTP_DSV4_API_MESSAGES) {
            ngx_http_dsv4_finalize(ctx, ngx_http_dsv4_anthropic_done(ctx));

        } else {
            ngx_http_dsv4_finalize(ctx, ngx_http_dsv4_openai_done(ctx));
        }

    } else if (ctx->stream
               && ngx_http_dsv4_stream_flush(ctx, 0) == NGX_ERROR)
    {
        ngx_http_dsv4_finalize(ctx, NGX_ERROR);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_dsv4_choice_finish(ngx_http_dsv4_choice_t *ch, dsv4_finish fin)
{
    size_t                 nev;
    double                 queued, ttft;
    const dsv4_event      *ev;
    ngx_http_dsv4_lp_t    *lp;
    ngx_http_dsv4_ctx_t   *ctx;

    ctx = ch->ctx;

    if (!ch->stopped && fin != DSV4_FINISH_ERROR && ch->parser) {
        if (dsv4_parser_finish(ch->parser, &ev, &nev) == 0) {
            ngx_http_dsv4_dispatch(ch, ev, nev);
        }
    }

    if (ch->stopped) {

        /* a stop string ends the completion before the engine knows */

        if (fin == DSV4_FINISH_NONE) {
            dsv4_request_cancel(ch->req);
        }

        ch->finish = NGX_HTTP_DSV4_FINISH_STOP;

    } else {
        switch (fin) {

        case DSV4_FINISH_STOP:
            ch->finish = NGX_HTTP_DSV4_FINISH_STOP;
            break;

        case DSV4_FINISH_LENGTH:
            ch->finish = NGX_HTTP_DSV4_FINISH_LENGTH;
            break;

        case DSV4_FINISH_CANCELLED:
            ch->finish = NGX_HTTP_DSV4_FINISH_ABORT;
            break;

        default:
            ch->finish = NGX_HTTP_DSV4_FINISH_ERROR;

            if (!ctx->error) {
                ngx_http_dsv4_log_fault(NGX_LOG_ERR,
                                        ctx->request->connection->log,
                                        "engine error",
                                        "dsv4: engine error: %s",
                                        dsv4_request_error(ch->req));
            }

            ctx->error = 1;
            break;
        }
    }

    if (ch->finish == NGX_HTTP_DSV4_FINISH_STOP && ch->ntool_calls) {
        ch->finish = NGX_HTTP_DSV4_FINISH_TOOL_CALLS;
    }

    /* logprobs of tokens that produced no text */

    if (ch->pending_lp.nelts && ctx->api != NGX_HTTP_DSV4_API_MESSAGES) {
        lp = ch->pending_lp.elts;
        ngx_http_dsv4_openai_event(ch, NULL, lp, ch->pending_lp.nelts);
        ch->pending_lp.nelts = 0;
    }

    ch->done = 1;
    ctx->ndone++;

    dsv4_request_times(ch->req, &queued, &ttft);

    ngx_http_dsv4_metrics_finish(ctx->model, ch->finish,
                                 ngx_http_dsv4_now() - ctx->t_start,
                                 queued, ttft);

    if (ctx->api == NGX_HTTP_DSV4_API_MESSAGES) {
        ngx_http_dsv4_anthropic_choice_done(ch);

    } else {
        ngx_http_dsv4_openai_choice_done(ch);
    }
}
