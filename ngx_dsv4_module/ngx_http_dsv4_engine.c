
/*
 * The engine pool of one worker: models are loaded by a loader thread
 * started in init_process (the event loop keeps serving /health with 503
 * meanwhile), each model gets a scheduler whose engine threads run the
 * forward passes, and the scheduler's eventfd is registered in the worker's
 * event loop.  The eventfd read handler drains dsv4_sched_next_ready() and
 * hands each request's new tokens to its HTTP request.
 */


#include "ngx_http_dsv4_module.h"

#include <dlfcn.h>
#include <pthread.h>
#include <time.h>


#define NGX_HTTP_DSV4_LOAD_POLL  10     /* ms between loader checks */


static void ngx_http_dsv4_pin_module(ngx_cycle_t *cycle);
static void *ngx_http_dsv4_loader(void *data);
static int ngx_http_dsv4_cache_create(ngx_http_dsv4_main_conf_t *dmcf,
    ngx_http_dsv4_model_t *m, char *err, size_t errlen);
static void ngx_http_dsv4_cache_log(void *data, int level, const char *msg);
static void ngx_http_dsv4_load_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_dsv4_attach(ngx_cycle_t *cycle,
    ngx_http_dsv4_model_t *m);
static void ngx_http_dsv4_notify_handler(ngx_event_t *ev);


double
ngx_http_dsv4_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}


ngx_int_t
ngx_http_dsv4_engine_init(ngx_cycle_t *cycle)
{
    int                         err;
    pthread_t                  *tid;
    ngx_uint_t                  i;
    ngx_http_dsv4_model_t      *m;
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dsv4_module);

    if (dmcf == NULL || dmcf->models.nelts == 0) {
        return NGX_OK;
    }

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {
        m[i].state = NGX_HTTP_DSV4_LOADING;
        m[i].notify = NULL;
        m[i].settled = 0;
    }

    dmcf->pending = dmcf->models.nelts;
    dmcf->loader_done = 0;

    ngx_http_dsv4_pin_module(cycle);

    tid = ngx_pcalloc(cycle->pool, sizeof(pthread_t));
    if (tid == NULL) {
        return NGX_ERROR;
    }

    /*
     * Loading maps the checkpoint, binds every tensor, reads the tokenizer
     * and starts the engine threads: seconds for a real model, so it runs
     * off the event loop.  A failure is logged and leaves the model FAILED
     * (/health says 503 and why); the worker keeps running.
     */

    err = pthread_create(tid, NULL, ngx_http_dsv4_loader, dmcf);
    if (err != 0) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, err,
                      "dsv4: cannot start the model loader thread");
        return NGX_ERROR;
    }

    dmcf->loader = tid;
    dmcf->loader_started = 1;

    dmcf->load_event.handler = ngx_http_dsv4_load_handler;
    dmcf->load_event.data = dmcf;
    dmcf->load_event.log = cycle->log;
    dmcf->load_event.cancelable = 1;

    ngx_add_timer(&dmcf->load_event, NGX_HTTP_DSV4_LOAD_POLL);

    return NGX_OK;
}


/*
 * Threads of this worker that this module does not own (nginx's thread
 * pool) keep per-thread state whose destructors are code of this module,
 * and nginx ends them at exit just before it dlcloses the module: a
 * destructor still running would then run unmapped code.  The worker keeps
 * the module mapped until it exits (RTLD_NODELETE on the already loaded
 * object); the master still unloads and reloads it normally.
 */

static void
ngx_http_dsv4_pin_module(ngx_cycle_t *cycle)
{
    Dl_info  info;

    if (dladdr((void *) ngx_http_dsv4_pin_module, &info) == 0
        || info.dli_fname == NULL
        || dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE)
           == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "dsv4: cannot keep the module loaded until exit; "
                      "a worker may crash at exit");
    }
}


static void
ngx_http_dsv4_load_one(ngx_http_dsv4_main_conf_t *dmcf,
    ngx_http_dsv4_model_t *m)
{
    int                 ctx;
    char                err[256];
    double              t0;
    int32_t             id;
    ngx_uint_t          i;
    dsv4_sched_conf     sc;
    const dsv4_config  *cfg;

    static const char  *stops[] = { DSV4_USER, DSV4_ASSISTANT, DSV4_REMINDER };

    t0 = ngx_http_dsv4_now();

    /* paths from the configuration are NUL-terminated */

    if (dsv4_model_load(&m->model, (char *) m->path.data, 0, err, sizeof(err))
        != 0)
    {
        ngx_snprintf((u_char *) m->error, sizeof(m->error) - 1,
                     "model \"%V\": %s%Z", &m->name, err);
        goto failed;
    }

    cfg = dsv4_model_config(m->model);
    m->vocab = cfg->vocab_size;

    ctx = m->max_ctx ? (int) m->max_ctx : 8192;
    if (ctx > cfg->max_position) {
        ctx = cfg->max_position;
    }

    m->ctx_len = ctx;

    if (m->tokenizer.len) {
        if (dsv4_tokenizer_load((char *) m->tokenizer.data, &m->tok,
                                err, sizeof(err))
            != 0)
        {
            ngx_snprintf((u_char *) m->error, sizeof(m->error) - 1,
                         "model \"%V\": tokenizer: %s%Z", &m->name, err);
            goto failed;
        }
    }

    m->n_stop_ids = 0;

    if (m->tok != NULL) {
        m->vocab_index = dsv4_vocab_index_new(m->tok, (int) m->vocab);
        if (m->vocab_index == NULL) {
            ngx_snprintf((u_char *) m->error, sizeof(m->error) - 1,
                         "model \"%V\": out of memory for the vocabulary "
                         "index%Z", &m->name);
            goto failed;
        }

        id = dsv4_tokenizer_eos_id(m->tok);
        if (id >= 0) {
            m->stop_ids[m->n_stop_ids++] = id;
        }

        for (i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
            id = dsv4_tokenizer_token_id(m->tok, stops[i],
                                         ngx_strlen(stops[i]));
            if (id >= 0) {
                m->stop_ids[m->n_stop_ids++] = id;
            }
        }

    } else if (cfg->eos_token_id >= 0 && cfg->eos_token_id < m->vocab) {
        m->stop_ids[m->n_stop_ids++] = cfg->eos_token_id;
    }

    ngx_memzero(&sc, sizeof(dsv4_sched_conf));

    sc.n_engines = (int) dmcf->engines;
    sc.max_seqs = (int) dmcf->max_seqs;
    sc.max_batch_tokens = (int) dmcf->max_batch_tokens;
    sc.prefill_chunk = (int) dmcf->prefill_chunk;
    sc.max_queue = (int) dmcf->max_queue;
    sc.max_ctx = ctx;
    sc.n_logprobs = NGX_HTTP_DSV4_MAX_LOGPROBS;
    sc.backend = dmcf->be;

    /* the cache's writer thread starts here, in the worker (after fork) */

    if (ngx_http_dsv4_cache_create(dmcf, m, err, sizeof(err)) != 0) {
        ngx_snprintf((u_char *) m->error, sizeof(m->error) - 1,
                     "model \"%V\": %s%Z", &m->name, err);
        goto failed;
    }

    sc.cache = m->cache;

    m->sched = dsv4_sched_new(m->model, &sc, err, sizeof(err));
    if (m->sched == NULL) {
        ngx_snprintf((u_char *) m->error, sizeof(m->error) - 1,
                     "model \"%V\": scheduler: %s%Z", &m->name, err);
        goto failed;
    }

    m->load_seconds = ngx_http_dsv4_now() - t0;

    ngx_atomic_cmp_set(&m->state, NGX_HTTP_DSV4_LOADING, NGX_HTTP_DSV4_READY);

    return;

failed:

    dsv4_vocab_index_free(m->vocab_index);
    m->vocab_index = NULL;

    if (m->cache) {
        dsv4_cache_free(m->cache);
        m->cache = NULL;
    }

    if (m->tok) {
        dsv4_tokenizer_free(m->tok);
        m->tok = NULL;
    }

    if (m->model) {
        dsv4_model_free(m->model);
        m->model = NULL;
    }

    ngx_atomic_cmp_set(&m->state, NGX_HTTP_DSV4_LOADING, NGX_HTTP_DSV4_FAILED);
}


/*
 * The model's prefix cache (cache/cache.h), per worker: its memory tier is
 * shared by the worker's engine threads, the disk and Redis tiers by every
 * worker and server.  Loader thread.
 */

static int
ngx_http_dsv4_cache_create(ngx_http_dsv4_main_conf_t *dmcf,
    ngx_http_dsv4_model_t *m, char *err, size_t errlen)
{
    dsv4_cache_conf  cc;

    m->cache = NULL;

    if (m->cache_enable == 0 || (m->cache_enable == -1 && !dmcf->cache)) {
        return 0;
    }

    ngx_memzero(&cc, sizeof(dsv4_cache_conf));

    cc.block_tokens = (int) dmcf->cache_block;
    cc.write = (int) dmcf->cache_write;
    cc.mem_bytes = dmcf->cache_memory;

    if (dmcf->cache_disk.len) {
        cc.disk_dir = (char *) dmcf->cache_disk.data;
        cc.disk_bytes = dmcf->cache_disk_max;
    }

    if (dmcf->cache_redis_unix.len) {
        cc.redis_unix = (char *) dmcf->cache_redis_unix.data;

    } else if (dmcf->cache_redis_host.len) {
        cc.redis_host = (char *) dmcf->cache_redis_host.data;
        cc.redis_port = (int) dmcf->cache_redis_port;
    }

    /* configuration strings are NUL-terminated */

    cc.redis_prefix = (char *) dmcf->cache_key_prefix.data;
    cc.redis_timeout_ms = dmcf->cache_redis_timeout ? (int) dmcf->cache_redis_timeout
                                                    : 1;
    cc.redis_ttl_s = (int) dmcf->cache_ttl;
    cc.redis_max_value = dmcf->cache_max_value;
    cc.redis_conns = (int) dmcf->engines + 1;
    cc.log = ngx_http_dsv4_cache_log;
    cc.log_data = m;

    return dsv4_cache_new(&m->cache, m->model, &cc, err, errlen);
}


/*
 * The cache logs from engine threads and its writer thread (rate-limited):
 * ngx_log_error() is a formatted write(2) to the log's fd, as nginx's own
 * thread pools do.
 */

static void
ngx_http_dsv4_cache_log(void *data, int level, const char *msg)
{
    ngx_http_dsv4_model_t  *m = data;

    ngx_uint_t  lvl;

    lvl = (level == DSV4_CACHE_LOG_WARN) ? NGX_LOG_WARN : NGX_LOG_INFO;

    ngx_log_error(lvl, ngx_cycle->log, 0, "dsv4: model \"%V\": %s",
                  &m->name, msg);
}


static void *
ngx_http_dsv4_loader(void *data)
{
    ngx_http_dsv4_main_conf_t  *dmcf = data;

    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;

    char                    err[256];
    dsv4_cpu_opts           opts;

    m = dmcf->models.elts;

    /* one compute backend per worker, shared by its engine threads */

    if (dmcf->backend == NGX_HTTP_DSV4_BACKEND_SCALAR) {
        dmcf->be = dsv4_backend_cpu_scalar();

    } else {
        ngx_memzero(&opts, sizeof(dsv4_cpu_opts));
        opts.nthreads = (int) dmcf->backend_threads;
        opts.isa = dmcf->backend_isa.len ? (char *) dmcf->backend_isa.data
                                         : NULL;
        opts.blas = (int) dmcf->backend_blas;

        dmcf->be = dsv4_backend_cpu_new_opts(&opts, err, sizeof(err));
    }

    for (i = 0; i < dmcf->models.nelts; i++) {
        if (dmcf->be == NULL) {
            ngx_snprintf((u_char *) m[i].error, sizeof(m[i].error) - 1,
                         "model \"%V\": cpu backend: %s%Z", &m[i].name, err);
            ngx_atomic_cmp_set(&m[i].state, NGX_HTTP_DSV4_LOADING,
                               NGX_HTTP_DSV4_FAILED);
            continue;
        }

        ngx_http_dsv4_load_one(dmcf, &m[i]);
    }

    ngx_atomic_cmp_set(&dmcf->loader_done, 0, 1);

    return NULL;
}


/* Runs on the event loop while models load: picks up finished loads. */

static void
ngx_http_dsv4_load_handler(ngx_event_t *ev)
{
    ngx_http_dsv4_main_conf_t  *dmcf = ev->data;

    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {

        if (m[i].settled || m[i].state == NGX_HTTP_DSV4_LOADING) {
            continue;
        }

        /* the loader's stores are visible once its state is */

        ngx_memory_barrier();

        m[i].settled = 1;
        dmcf->pending--;

        if (m[i].state == NGX_HTTP_DSV4_FAILED) {
            ngx_log_error(NGX_LOG_EMERG, ev->log, 0, "dsv4: %s", m[i].error);
            continue;
        }

        /* READY */

        if (ngx_http_dsv4_attach((ngx_cycle_t *) ngx_cycle, &m[i]) != NGX_OK) {
            ngx_atomic_cmp_set(&m[i].state, NGX_HTTP_DSV4_READY,
                               NGX_HTTP_DSV4_FAILED);
            ngx_log_error(NGX_LOG_EMERG, ev->log, 0,
                          "dsv4: model \"%V\": cannot register the "
                          "scheduler's eventfd", &m[i].name);
            ngx_snprintf((u_char *) m[i].error, sizeof(m[i].error) - 1,
                         "model \"%V\": cannot register the scheduler's "
                         "eventfd%Z", &m[i].name);
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                      "dsv4: model \"%V\" ready in %.2fs (context %i, "
                      "%s tokenizer, %s backend)", &m[i].name,
                      m[i].load_seconds, m[i].ctx_len,
                      m[i].tok ? "with" : "no", dmcf->be->name);

        ngx_http_dsv4_metrics_load(&m[i], 1);
    }

    if (dmcf->pending && !ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(ev, NGX_HTTP_DSV4_LOAD_POLL);
    }
}


static ngx_int_t
ngx_http_dsv4_attach(ngx_cycle_t *cycle, ngx_http_dsv4_model_t *m)
{
    int                fd;
    ngx_connection_t  *c;

    fd = dsv4_sched_fd(m->sched);

    c = ngx_get_connection(fd, cycle->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = m;
    c->read->handler = ngx_http_dsv4_notify_handler;
    c->read->log = cycle->log;
    c->write->log = cycle->log;

    /* level-triggered: a drain that stops early is simply called again */

    if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        c->fd = (ngx_socket_t) -1;
        ngx_free_connection(c);
        return NGX_ERROR;
    }

    m->notify = c;

    return NGX_OK;
}


static void
ngx_http_dsv4_notify_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    struct timespec          t0, t1;
    dsv4_request            *req;
    ngx_http_dsv4_model_t   *m;
    ngx_http_dsv4_choice_t  *ch;

    m = c->data;

    /* the time spent here (parsing, SSE framing, output filters) is the
     * module's own per-token cost: dsv4:module_handler_seconds_total */
    (void) clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);

    while ((req = dsv4_sched_next_ready(m->sched)) != NULL) {

        ch = dsv4_request_data(req);

        if (ch != NULL) {
            ngx_http_dsv4_choice_ready(ch);
        }

        dsv4_request_release(req);
    }

    ngx_http_dsv4_metrics_refresh(m);

    (void) clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    ngx_http_dsv4_metrics_handler_time(m,
        (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
}


ngx_uint_t
ngx_http_dsv4_all_ready(ngx_http_dsv4_main_conf_t *dmcf)
{
    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {
        if (m[i].notify == NULL) {
            return 0;
        }
    }

    return 1;
}


void
ngx_http_dsv4_engine_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_connection_t           *c;
    ngx_http_dsv4_model_t      *m;
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dsv4_module);

    if (dmcf == NULL || !dmcf->loader_started) {
        return;
    }

    if (dmcf->load_event.timer_set) {
        ngx_del_timer(&dmcf->load_event);
    }

    /* a load in progress is finished first: its thread owns the models */

    pthread_join(*(pthread_t *) dmcf->loader, NULL);
    dmcf->loader_started = 0;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {

        c = m[i].notify;

        if (c != NULL) {
            ngx_http_dsv4_metrics_load(&m[i], 0);

            if (c->read->active) {
                ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
            }

            ngx_free_connection(c);
            c->fd = (ngx_socket_t) -1;
            m[i].notify = NULL;
        }

        /* joins the engine threads and closes the eventfd */

        if (m[i].sched) {
            dsv4_sched_free(m[i].sched);
            m[i].sched = NULL;
        }

        /* after the scheduler (its engine threads use it), before the
         * model it borrows */

        if (m[i].cache) {
            dsv4_cache_free(m[i].cache);
            m[i].cache = NULL;
        }

        dsv4_vocab_index_free(m[i].vocab_index);
        m[i].vocab_index = NULL;

        if (m[i].tok) {
            dsv4_tokenizer_free(m[i].tok);
            m[i].tok = NULL;
        }

        if (m[i].model) {
            dsv4_model_free(m[i].model);
            m[i].model = NULL;
        }
    }

    if (dmcf->be != NULL && dmcf->backend == NGX_HTTP_DSV4_BACKEND_CPU) {
        dsv4_backend_cpu_free(dmcf->be);
    }

    dmcf->be = NULL;
}
