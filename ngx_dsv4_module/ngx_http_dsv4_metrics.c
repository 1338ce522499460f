
/*
 * Metrics in a shared memory zone, so that GET /metrics answers for every
 * worker whichever one serves the scrape.  Counters and histogram buckets
 * are atomic adds; the running / waiting gauges are per-worker slots that
 * each worker refreshes from its schedulers whenever it handles engine news
 * (and right before it answers a scrape).
 *
 * Names and semantics follow vLLM's (vllm:num_requests_running,
 * vllm:time_to_first_token_seconds, ...), with the "dsv4:" prefix, so that
 * dashboards port by renaming the prefix.
 */


#include "ngx_http_dsv4_module.h"


#define NGX_HTTP_DSV4_HIST_MAX   32
#define NGX_HTTP_DSV4_CODES      9


typedef struct {
    const char                 *name;
    const char                 *help;
    const double               *le;         /* upper bounds, seconds */
    ngx_uint_t                  n;
} ngx_http_dsv4_hist_def_t;


typedef struct {
    ngx_atomic_t                count;
    ngx_atomic_t                sum_us;
    ngx_atomic_t                buckets[NGX_HTTP_DSV4_HIST_MAX];
} ngx_http_dsv4_hist_t;


#define NGX_HTTP_DSV4_H_TTFT     0
#define NGX_HTTP_DSV4_H_ITL      1
#define NGX_HTTP_DSV4_H_E2E      2
#define NGX_HTTP_DSV4_H_QUEUE    3
#define NGX_HTTP_DSV4_H_N        4


typedef struct {
    ngx_atomic_t                requests;
    ngx_atomic_t                prompt_tokens;
    ngx_atomic_t                generation_tokens;
    ngx_atomic_t                handler_ns;   /* time in the engine-news handler */
    ngx_atomic_t                finished[NGX_HTTP_DSV4_FINISH_N];
    ngx_atomic_t                rejected;
    ngx_http_dsv4_hist_t        hist[NGX_HTTP_DSV4_H_N];
    ngx_atomic_t                running[NGX_HTTP_DSV4_MAX_WORKERS];
    /* the schedulers' cumulative step counters, per worker */
    ngx_atomic_t                steps[NGX_HTTP_DSV4_MAX_WORKERS];
    ngx_atomic_t                step_rows[NGX_HTTP_DSV4_MAX_WORKERS];
    ngx_atomic_t                step_seqs[NGX_HTTP_DSV4_MAX_WORKERS];
    ngx_atomic_t                waiting[NGX_HTTP_DSV4_MAX_WORKERS];
    ngx_atomic_t                loaded[NGX_HTTP_DSV4_MAX_WORKERS];
    /* each worker's prefix-cache statistics, copied from dsv4_cache */
    dsv4_cache_stats            cache[NGX_HTTP_DSV4_MAX_WORKERS];
} ngx_http_dsv4_stats_t;


typedef struct {
    ngx_uint_t                  nmodels;
    ngx_atomic_t                errors[NGX_HTTP_DSV4_API_N]
                                      [NGX_HTTP_DSV4_CODES];
    ngx_http_dsv4_stats_t       models[1];
} ngx_http_dsv4_shm_t;


static ngx_int_t ngx_http_dsv4_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


static const double  ngx_http_dsv4_le_ttft[] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0
};

static const double  ngx_http_dsv4_le_itl[] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0
};

static const double  ngx_http_dsv4_le_e2e[] = {
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0
};

static const ngx_http_dsv4_hist_def_t  ngx_http_dsv4_hists[] = {
    { "time_to_first_token_seconds",
      "Histogram of time to first token in seconds.",
      ngx_http_dsv4_le_ttft,
      sizeof(ngx_http_dsv4_le_ttft) / sizeof(double) },
    { "inter_token_latency_seconds",
      "Histogram of inter-token latency in seconds.",
      ngx_http_dsv4_le_itl,
      sizeof(ngx_http_dsv4_le_itl) / sizeof(double) },
    { "e2e_request_latency_seconds",
      "Histogram of end to end request latency in seconds.",
      ngx_http_dsv4_le_e2e,
      sizeof(ngx_http_dsv4_le_e2e) / sizeof(double) },
    { "request_queue_time_seconds",
      "Histogram of time spent waiting in the queue in seconds.",
      ngx_http_dsv4_le_e2e,
      sizeof(ngx_http_dsv4_le_e2e) / sizeof(double) }
};

static const char  *ngx_http_dsv4_finish_label[] = {
    "stop", "length", "tool_calls", "abort", "error"
};

static const char  *ngx_http_dsv4_api_label[] = {
    "none", "chat_completions", "completions", "messages", "models",
    "tokenize", "detokenize", "health", "metrics", "usage", "usage_admin"
};

static const ngx_uint_t  ngx_http_dsv4_codes[NGX_HTTP_DSV4_CODES] = {
    400, 401, 404, 405, 413, 429, 500, 503, 0
};


static ngx_http_dsv4_shm_t  *ngx_http_dsv4_shm;


ngx_int_t
ngx_http_dsv4_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_dsv4_main_conf_t *dmcf)
{
    size_t      size;
    ngx_str_t   name = ngx_string("dsv4_metrics");

    size = sizeof(ngx_http_dsv4_shm_t)
           + dmcf->models.nelts * sizeof(ngx_http_dsv4_stats_t);

    /* room for the slab pool's own bookkeeping */

    size = ngx_align(2 * size + 8 * ngx_pagesize, ngx_pagesize);

    dmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_dsv4_module);
    if (dmcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    dmcf->shm_zone->init = ngx_http_dsv4_metrics_init_zone;
    dmcf->shm_zone->data = dmcf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_dsv4_main_conf_t  *dmcf = shm_zone->data;

    size_t                size;
    ngx_slab_pool_t      *shpool;
    ngx_http_dsv4_shm_t  *shm;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    /* after a reload the counters go on if the models are the same */

    if (data != NULL) {
        shm = shpool->data;

        if (shm != NULL && shm->nmodels == dmcf->models.nelts) {
            ngx_http_dsv4_shm = shm;
            return NGX_OK;
        }
    }

    size = sizeof(ngx_http_dsv4_shm_t)
           + dmcf->models.nelts * sizeof(ngx_http_dsv4_stats_t);

    shm = ngx_slab_calloc(shpool, size);
    if (shm == NULL) {
        return NGX_ERROR;
    }

    shm->nmodels = dmcf->models.nelts;
    shpool->data = shm;

    ngx_http_dsv4_shm = shm;

    return NGX_OK;
}


static ngx_http_dsv4_stats_t *
ngx_http_dsv4_stats(ngx_http_dsv4_model_t *m)
{
    if (ngx_http_dsv4_shm == NULL || m == NULL
        || m->index >= ngx_http_dsv4_shm->nmodels)
    {
        return NULL;
    }

    return &ngx_http_dsv4_shm->models[m->index];
}


static void
ngx_http_dsv4_observe(ngx_http_dsv4_hist_t *h, ngx_uint_t which, double v)
{
    ngx_uint_t                       i;
    const ngx_http_dsv4_hist_def_t  *def;

    def = &ngx_http_dsv4_hists[which];

    if (v < 0) {
        v = 0;
    }

    for (i = 0; i < def->n; i++) {
        if (v <= def->le[i]) {
            break;
        }
    }

    /* i == def->n: only the +Inf bucket */

    (void) ngx_atomic_fetch_add(&h->buckets[i], 1);
    (void) ngx_atomic_fetch_add(&h->count, 1);
    (void) ngx_atomic_fetch_add(&h->sum_us, (ngx_atomic_int_t) (v * 1e6));
}


/* This worker's running / waiting counts, into its slots. */

void
ngx_http_dsv4_metrics_refresh(ngx_http_dsv4_model_t *m)
{
    int                     waiting, running;
    ngx_uint_t              w;
    dsv4_sched_stats        ss;
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st == NULL || m->sched == NULL || m->notify == NULL) {
        return;
    }

    dsv4_sched_load(m->sched, &waiting, &running);
    dsv4_sched_get_stats(m->sched, &ss);

    w = ngx_worker % NGX_HTTP_DSV4_MAX_WORKERS;

    st->running[w] = (ngx_atomic_uint_t) running;
    st->waiting[w] = (ngx_atomic_uint_t) waiting;
    st->steps[w] = (ngx_atomic_uint_t) ss.steps;
    st->step_rows[w] = (ngx_atomic_uint_t) ss.rows;
    st->step_seqs[w] = (ngx_atomic_uint_t) ss.seqs;

    /* the cache's counters take its lock: at most every 100 ms here, and
     * on every scrape (ngx_http_dsv4_metrics_refresh_all) */

    if (m->cache != NULL
        && (ngx_current_msec - m->cache_stats_time > 100
            || m->cache_stats_time == 0))
    {
        dsv4_cache_get_stats(m->cache, &st->cache[w]);
        m->cache_stats_time = ngx_current_msec;
    }
}


void
ngx_http_dsv4_metrics_handler_time(ngx_http_dsv4_model_t *m, long long ns)
{
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st != NULL && ns > 0) {
        (void) ngx_atomic_fetch_add(&st->handler_ns, (ngx_atomic_int_t) ns);
    }
}


void
ngx_http_dsv4_metrics_load(ngx_http_dsv4_model_t *m, ngx_uint_t loaded)
{
    ngx_uint_t              w;
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st != NULL) {
        w = ngx_worker % NGX_HTTP_DSV4_MAX_WORKERS;

        st->loaded[w] = loaded;

        if (!loaded) {
            st->running[w] = 0;
            st->waiting[w] = 0;
        }
    }
}


void
ngx_http_dsv4_metrics_request(ngx_http_dsv4_model_t *m,
    ngx_uint_t prompt_tokens)
{
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->requests, 1);
    (void) ngx_atomic_fetch_add(&st->prompt_tokens, prompt_tokens);

    ngx_http_dsv4_metrics_refresh(m);
}


void
ngx_http_dsv4_metrics_token(ngx_http_dsv4_model_t *m, double itl,
    ngx_uint_t n)
{
    ngx_uint_t              i;
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->generation_tokens, n);

    /* tokens that arrive together share the interval; itl < 0: none */

    for (i = 0; itl >= 0 && i < n && i < 8; i++) {
        ngx_http_dsv4_observe(&st->hist[NGX_HTTP_DSV4_H_ITL],
                              NGX_HTTP_DSV4_H_ITL, itl / n);
    }

    /* the gauges (which take the scheduler's lock) are refreshed once per
     * eventfd wake-up by ngx_http_dsv4_notify_handler(), not per request */
}


void
ngx_http_dsv4_metrics_finish(ngx_http_dsv4_model_t *m, ngx_uint_t finish,
    double e2e, double queued, double ttft)
{
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->finished[finish], 1);

    ngx_http_dsv4_observe(&st->hist[NGX_HTTP_DSV4_H_E2E],
                          NGX_HTTP_DSV4_H_E2E, e2e);

    if (queued > 0) {
        ngx_http_dsv4_observe(&st->hist[NGX_HTTP_DSV4_H_QUEUE],
                              NGX_HTTP_DSV4_H_QUEUE, queued);
    }

    if (ttft > 0) {
        ngx_http_dsv4_observe(&st->hist[NGX_HTTP_DSV4_H_TTFT],
                              NGX_HTTP_DSV4_H_TTFT, ttft);
    }

    ngx_http_dsv4_metrics_refresh(m);
}


void
ngx_http_dsv4_metrics_rejected(ngx_http_dsv4_model_t *m)
{
    ngx_http_dsv4_stats_t  *st;

    st = ngx_http_dsv4_stats(m);

    if (st != NULL) {
        (void) ngx_atomic_fetch_add(&st->rejected, 1);
    }
}


void
ngx_http_dsv4_metrics_status(ngx_uint_t api, ngx_uint_t status)
{
    ngx_uint_t  i;

    if (ngx_http_dsv4_shm == NULL || api >= NGX_HTTP_DSV4_API_N) {
        return;
    }

    for (i = 0; i < NGX_HTTP_DSV4_CODES - 1; i++) {
        if (ngx_http_dsv4_codes[i] == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&ngx_http_dsv4_shm->errors[api][i], 1);
}


/* Refreshes this worker's gauges (the eventfd handler calls it too). */

void
ngx_http_dsv4_metrics_refresh_all(ngx_http_dsv4_main_conf_t *dmcf)
{
    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {
        m[i].cache_stats_time = 0;
        ngx_http_dsv4_metrics_refresh(&m[i]);
    }
}


/* ---------------------------------------------------------------------- */


#define ngx_http_dsv4_emit(b, ...)                                            \
    if (ngx_http_dsv4_strbuf_printf(b, __VA_ARGS__) != 0) goto failed


static ngx_uint_t
ngx_http_dsv4_sum(ngx_atomic_t *slots)
{
    ngx_uint_t  i, s;

    s = 0;

    for (i = 0; i < NGX_HTTP_DSV4_MAX_WORKERS; i++) {
        s += slots[i];
    }

    return s;
}


/*
 * The prefix cache's metrics (docs/cache.md), summed over the workers'
 * slots, for the models that have a cache configured.
 */

#define NGX_HTTP_DSV4_CACHE_SUM(field)                                        \
    total = 0;                                                                \
    for (w = 0; w < NGX_HTTP_DSV4_MAX_WORKERS; w++) {                         \
        total += st->cache[w].field;                                          \
    }

static ngx_uint_t
ngx_http_dsv4_cache_on(ngx_http_dsv4_main_conf_t *dmcf,
    ngx_http_dsv4_model_t *m)
{
    return m->cache_enable == 1 || (m->cache_enable == -1 && dmcf->cache);
}


static int
ngx_http_dsv4_metrics_cache(dsv4_strbuf *b, ngx_http_dsv4_main_conf_t *dmcf)
{
    uint64_t                total, cum;
    ngx_uint_t              i, k, w, any;
    ngx_http_dsv4_stats_t  *st;
    ngx_http_dsv4_model_t  *m;

    static const struct {
        const char  *name;
        const char  *help;
        size_t       off;
    }  counters[] = {
        { "cache_lookups_total", "Prefix cache lookups (one per admitted "
          "request).", offsetof(dsv4_cache_stats, lookups) },
        { "cache_lookup_hits_total", "Lookups that restored at least one "
          "block.", offsetof(dsv4_cache_stats, lookup_hits) },
        { "cache_lookup_tokens_total", "Prompt tokens of all lookups.",
          offsetof(dsv4_cache_stats, lookup_tokens) },
        { "cache_captures_total", "Snapshots queued for write-back.",
          offsetof(dsv4_cache_stats, captures) }
    };

    static const struct {
        const char  *name;
        const char  *help;
        size_t       off;
    }  tiers[] = {
        { "cache_hit_tokens_total", "Prompt tokens restored from the cache, "
          "by the tier each block came from.",
          offsetof(dsv4_cache_stats, hit_tokens) },
        { "cache_read_bytes_total", "Value bytes read, by tier.",
          offsetof(dsv4_cache_stats, read_bytes) },
        { "cache_written_bytes_total", "Value bytes written, by tier.",
          offsetof(dsv4_cache_stats, written_bytes) },
        { "cache_written_values_total", "Values written, by tier.",
          offsetof(dsv4_cache_stats, written_values) }
    };

    static const struct {
        const char  *name;
        const char  *help;
        size_t       off;
    }  gauges[] = {
        { "cache_memory_bytes", "Bytes held by the memory tiers.",
          offsetof(dsv4_cache_stats, mem_bytes) },
        { "cache_memory_values", "Values held by the memory tiers.",
          offsetof(dsv4_cache_stats, mem_values) },
        { "cache_disk_bytes", "Disk tier bytes (each worker's estimate, "
          "summed).", offsetof(dsv4_cache_stats, disk_bytes) },
        { "cache_queue_bytes", "Snapshot bytes waiting for write-back.",
          offsetof(dsv4_cache_stats, queue_bytes) }
    };

    m = dmcf->models.elts;
    any = 0;

    for (i = 0; i < dmcf->models.nelts; i++) {
        any |= ngx_http_dsv4_cache_on(dmcf, &m[i]);
    }

    if (!any || ngx_http_dsv4_shm == NULL) {
        return 0;
    }

#define ngx_http_dsv4_cemit(...)                                              \
    if (ngx_http_dsv4_strbuf_printf(b, __VA_ARGS__) != 0) return -1

#define ngx_http_dsv4_each_model                                              \
    for (i = 0; i < dmcf->models.nelts; i++)                                  \
        if (ngx_http_dsv4_cache_on(dmcf, &m[i])                               \
            && (st = ngx_http_dsv4_stats(&m[i])) != NULL)

#define ngx_http_dsv4_field(ws, off, idx)                                     \
    (((const uint64_t *) ((const char *) (ws) + (off)))[idx])

    for (k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
        ngx_http_dsv4_cemit("# HELP dsv4:%s %s\n# TYPE dsv4:%s counter\n",
                            counters[k].name, counters[k].help,
                            counters[k].name);

        ngx_http_dsv4_each_model {
            total = 0;
            for (w = 0; w < NGX_HTTP_DSV4_MAX_WORKERS; w++) {
                total += ngx_http_dsv4_field(&st->cache[w], counters[k].off, 0);
            }

            ngx_http_dsv4_cemit("dsv4:%s{model_name=\"%.*s\"} %llu\n",
                                counters[k].name, (int) m[i].name.len,
                                m[i].name.data, (unsigned long long) total);
        }
    }

    for (k = 0; k < sizeof(tiers) / sizeof(tiers[0]); k++) {
        ngx_http_dsv4_cemit("# HELP dsv4:%s %s\n# TYPE dsv4:%s counter\n",
                            tiers[k].name, tiers[k].help, tiers[k].name);

        ngx_http_dsv4_each_model {
            ngx_uint_t  t;

            for (t = 0; t < DSV4_CACHE_NTIERS; t++) {
                total = 0;
                for (w = 0; w < NGX_HTTP_DSV4_MAX_WORKERS; w++) {
                    total += ngx_http_dsv4_field(&st->cache[w], tiers[k].off,
                                                 t);
                }

                ngx_http_dsv4_cemit(
                    "dsv4:%s{model_name=\"%.*s\",tier=\"%s\"} %llu\n",
                    tiers[k].name, (int) m[i].name.len, m[i].name.data,
                    dsv4_cache_tier_name((int) t), (unsigned long long) total);
            }
        }
    }

    ngx_http_dsv4_cemit(
        "# HELP dsv4:cache_errors_total Prefix cache errors by kind (each "
        "one made a value a miss or a write a no-op; the request was served "
        "by recomputing).\n"
        "# TYPE dsv4:cache_errors_total counter\n");

    ngx_http_dsv4_each_model {
        ngx_uint_t  e;

        for (e = 0; e < DSV4_CACHE_NERRORS; e++) {
            NGX_HTTP_DSV4_CACHE_SUM(errors[e]);

            ngx_http_dsv4_cemit(
                "dsv4:cache_errors_total{model_name=\"%.*s\",kind=\"%s\"} "
                "%llu\n", (int) m[i].name.len, m[i].name.data,
                dsv4_cache_error_name((int) e), (unsigned long long) total);
        }
    }

    for (k = 0; k < sizeof(gauges) / sizeof(gauges[0]); k++) {
        ngx_http_dsv4_cemit("# HELP dsv4:%s %s\n# TYPE dsv4:%s gauge\n",
                            gauges[k].name, gauges[k].help, gauges[k].name);

        ngx_http_dsv4_each_model {
            total = 0;
            for (w = 0; w < NGX_HTTP_DSV4_MAX_WORKERS; w++) {
                if (st->loaded[w]) {
                    total += ngx_http_dsv4_field(&st->cache[w],
                                                 gauges[k].off, 0);
                }
            }

            ngx_http_dsv4_cemit("dsv4:%s{model_name=\"%.*s\"} %llu\n",
                                gauges[k].name, (int) m[i].name.len,
                                m[i].name.data, (unsigned long long) total);
        }
    }

    if (dmcf->cache_redis_host.len == 0 && dmcf->cache_redis_unix.len == 0) {
        return 0;
    }

    ngx_http_dsv4_cemit(
        "# HELP dsv4:cache_redis_up Worker processes whose Redis tier is "
        "not backing off after a failure.\n"
        "# TYPE dsv4:cache_redis_up gauge\n");

    ngx_http_dsv4_each_model {
        total = 0;
        for (w = 0; w < NGX_HTTP_DSV4_MAX_WORKERS; w++) {
            if (st->loaded[w] && st->cache[w].redis_up) {
                total++;
            }
        }

        ngx_http_dsv4_cemit("dsv4:cache_redis_up{model_name=\"%.*s\"} %llu\n",
                            (int) m[i].name.len, m[i].name.data,
                            (unsigned long long) total);
    }

    ngx_http_dsv4_cemit(
        "# HELP dsv4:cache_redis_latency_seconds Redis round trips "
        "(pipelines count once) in seconds.\n"
        "# TYPE dsv4:cache_redis_latency_seconds histogram\n");

    ngx_http_dsv4_each_model {
        cum = 0;

        for (k = 0; k < DSV4_CACHE_NLAT; k++) {
            NGX_HTTP_DSV4_CACHE_SUM(redis_latency[k]);
            cum += total;

            if (k + 1 < DSV4_CACHE_NLAT) {
                ngx_http_dsv4_cemit(
                    "dsv4:cache_redis_latency_seconds_bucket{model_name="
                    "\"%.*s\",le=\"%g\"} %llu\n",
                    (int) m[i].name.len, m[i].name.data,
                    (double) dsv4_cache_latency_le_us[k] / 1e6,
                    (unsigned long long) cum);

            } else {
                ngx_http_dsv4_cemit(
                    "dsv4:cache_redis_latency_seconds_bucket{model_name="
                    "\"%.*s\",le=\"+Inf\"} %llu\n",
                    (int) m[i].name.len, m[i].name.data,
                    (unsigned long long) cum);
            }
        }

        NGX_HTTP_DSV4_CACHE_SUM(redis_usec_sum);

        ngx_http_dsv4_cemit(
            "dsv4:cache_redis_latency_seconds_sum{model_name=\"%.*s\"} %.6f\n",
            (int) m[i].name.len, m[i].name.data, (double) total / 1e6);

        NGX_HTTP_DSV4_CACHE_SUM(redis_calls);

        ngx_http_dsv4_cemit(
            "dsv4:cache_redis_latency_seconds_count{model_name=\"%.*s\"} "
            "%llu\n", (int) m[i].name.len, m[i].name.data,
            (unsigned long long) total);
    }

#undef ngx_http_dsv4_cemit
#undef ngx_http_dsv4_each_model
#undef ngx_http_dsv4_field

    return 0;
}


/* One metric whose value is a per-worker slot array in the stats (at
 * byte offset `slots`), summed over the workers, for every model. */
static int
ngx_http_dsv4_emit_slots(dsv4_strbuf *b, ngx_http_dsv4_main_conf_t *dmcf,
    const char *name, const char *type, const char *help, size_t slots)
{
    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;
    ngx_http_dsv4_stats_t  *st;

    if (ngx_http_dsv4_strbuf_printf(b, "# HELP dsv4:%s %s\n# TYPE dsv4:%s %s\n",
                                    name, help, name, type) != 0)
    {
        return -1;
    }

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);

        if (ngx_http_dsv4_strbuf_printf(b, "dsv4:%s{model_name=\"%.*s\"} %lu\n",
                name, (int) m[i].name.len, m[i].name.data,
                st ? (unsigned long) ngx_http_dsv4_sum(
                         (ngx_atomic_t *) ((u_char *) st + slots))
                   : 0UL)
            != 0)
        {
            return -1;
        }
    }

    return 0;
}


ngx_int_t
ngx_http_dsv4_metrics_handler(ngx_http_request_t *r)
{
    u_char                     *p;
    double                      usage;
    ngx_int_t                   rc;
    ngx_str_t                   type = ngx_string("text/plain; version=0.0.4");
    ngx_uint_t                  i, j, k, cum, cap;
    dsv4_strbuf                 b = DSV4_STRBUF_INIT;
    ngx_http_dsv4_hist_t       *h;
    ngx_http_dsv4_stats_t      *st;
    ngx_http_dsv4_model_t      *m;
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dsv4_module);

    ngx_http_dsv4_metrics_refresh_all(dmcf);

    m = dmcf->models.elts;

    /* gauges */

    if (ngx_http_dsv4_emit_slots(&b, dmcf, "num_requests_running", "gauge",
            "Number of requests in model execution batches.",
            offsetof(ngx_http_dsv4_stats_t, running)) != 0
        || ngx_http_dsv4_emit_slots(&b, dmcf, "num_requests_waiting", "gauge",
            "Number of requests waiting to be processed.",
            offsetof(ngx_http_dsv4_stats_t, waiting)) != 0
        || ngx_http_dsv4_emit_slots(&b, dmcf, "engine_steps_total", "counter",
            "Forward steps run by the engines.",
            offsetof(ngx_http_dsv4_stats_t, steps)) != 0
        || ngx_http_dsv4_emit_slots(&b, dmcf, "engine_step_sequences_total",
            "counter", "Sequences fed, summed over steps (divide by steps "
            "for the mean batch size).",
            offsetof(ngx_http_dsv4_stats_t, step_seqs)) != 0
        || ngx_http_dsv4_emit_slots(&b, dmcf, "engine_step_tokens_total",
            "counter", "Token rows fed (prefill and decode), summed over "
            "steps.", offsetof(ngx_http_dsv4_stats_t, step_rows)) != 0)
    {
        goto failed;
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:module_handler_seconds_total Time the workers spent "
        "delivering engine output (parsing, SSE framing, output filters), "
        "model compute excluded.\n"
        "# TYPE dsv4:module_handler_seconds_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:module_handler_seconds_total{model_name=\"%.*s\"} %.6f\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (double) st->handler_ns / 1e9 : 0.0);
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:kv_cache_usage_perc Fraction of the sequence slots "
        "(each sized for its context) in use, 0 to 1.\n"
        "# TYPE dsv4:kv_cache_usage_perc gauge\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        cap = dmcf->max_seqs * dmcf->engines;
        k = st ? ngx_http_dsv4_sum(st->loaded) : 0;
        usage = (st && k && cap)
                ? (double) ngx_http_dsv4_sum(st->running) / (double) (cap * k)
                : 0.0;
        ngx_http_dsv4_emit(&b,
            "dsv4:kv_cache_usage_perc{model_name=\"%.*s\"} %.6f\n",
            (int) m[i].name.len, m[i].name.data, usage);
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:model_loaded Number of worker processes that have the "
        "model loaded.\n"
        "# TYPE dsv4:model_loaded gauge\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:model_loaded{model_name=\"%.*s\"} %lu\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (unsigned long) ngx_http_dsv4_sum(st->loaded) : 0UL);
    }

    /* counters */

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:prompt_tokens_total Number of prefill tokens "
        "processed.\n"
        "# TYPE dsv4:prompt_tokens_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:prompt_tokens_total{model_name=\"%.*s\"} %lu\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (unsigned long) st->prompt_tokens : 0UL);
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:generation_tokens_total Number of generation tokens "
        "processed.\n"
        "# TYPE dsv4:generation_tokens_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:generation_tokens_total{model_name=\"%.*s\"} %lu\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (unsigned long) st->generation_tokens : 0UL);
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:request_success_total Count of finished requests by "
        "finish reason.\n"
        "# TYPE dsv4:request_success_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);

        for (j = 0; j < NGX_HTTP_DSV4_FINISH_N; j++) {
            ngx_http_dsv4_emit(&b,
                "dsv4:request_success_total{model_name=\"%.*s\","
                "finished_reason=\"%s\"} %lu\n",
                (int) m[i].name.len, m[i].name.data,
                ngx_http_dsv4_finish_label[j],
                st ? (unsigned long) st->finished[j] : 0UL);
        }
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:requests_total Count of requests handed to the "
        "engine.\n"
        "# TYPE dsv4:requests_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:requests_total{model_name=\"%.*s\"} %lu\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (unsigned long) st->requests : 0UL);
    }

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:requests_rejected_total Count of requests refused "
        "because the queue was full (503).\n"
        "# TYPE dsv4:requests_rejected_total counter\n");

    for (i = 0; i < dmcf->models.nelts; i++) {
        st = ngx_http_dsv4_stats(&m[i]);
        ngx_http_dsv4_emit(&b,
            "dsv4:requests_rejected_total{model_name=\"%.*s\"} %lu\n",
            (int) m[i].name.len, m[i].name.data,
            st ? (unsigned long) st->rejected : 0UL);
    }

    /* histograms */

    for (k = 0; k < NGX_HTTP_DSV4_H_N; k++) {

        ngx_http_dsv4_emit(&b, "# HELP dsv4:%s %s\n# TYPE dsv4:%s histogram\n",
                           ngx_http_dsv4_hists[k].name,
                           ngx_http_dsv4_hists[k].help,
                           ngx_http_dsv4_hists[k].name);

        for (i = 0; i < dmcf->models.nelts; i++) {
            st = ngx_http_dsv4_stats(&m[i]);
            if (st == NULL) {
                continue;
            }

            h = &st->hist[k];
            cum = 0;

            for (j = 0; j < ngx_http_dsv4_hists[k].n; j++) {
                cum += h->buckets[j];
                ngx_http_dsv4_emit(&b,
                    "dsv4:%s_bucket{model_name=\"%.*s\",le=\"%g\"} %lu\n",
                    ngx_http_dsv4_hists[k].name,
                    (int) m[i].name.len, m[i].name.data,
                    ngx_http_dsv4_hists[k].le[j], (unsigned long) cum);
            }

            cum += h->buckets[j];

            ngx_http_dsv4_emit(&b,
                "dsv4:%s_bucket{model_name=\"%.*s\",le=\"+Inf\"} %lu\n"
                "dsv4:%s_sum{model_name=\"%.*s\"} %.6f\n"
                "dsv4:%s_count{model_name=\"%.*s\"} %lu\n",
                ngx_http_dsv4_hists[k].name,
                (int) m[i].name.len, m[i].name.data, (unsigned long) cum,
                ngx_http_dsv4_hists[k].name,
                (int) m[i].name.len, m[i].name.data,
                (double) h->sum_us / 1e6,
                ngx_http_dsv4_hists[k].name,
                (int) m[i].name.len, m[i].name.data,
                (unsigned long) h->count);
        }
    }

    if (ngx_http_dsv4_metrics_cache(&b, dmcf) != 0
        || ngx_http_dsv4_limit_metrics(&b, dmcf) != 0)
    {
        goto failed;
    }

    /* errors answered, by API and status */

    ngx_http_dsv4_emit(&b,
        "# HELP dsv4:http_errors_total Count of error responses by API and "
        "status (\"other\" for the rest).\n"
        "# TYPE dsv4:http_errors_total counter\n");

    if (ngx_http_dsv4_shm) {
        for (i = 1; i < NGX_HTTP_DSV4_API_N; i++) {
            for (j = 0; j < NGX_HTTP_DSV4_CODES; j++) {

                if (ngx_http_dsv4_shm->errors[i][j] == 0) {
                    continue;
                }

                if (ngx_http_dsv4_codes[j]) {
                    ngx_http_dsv4_emit(&b,
                        "dsv4:http_errors_total{api=\"%s\",code=\"%u\"} "
                        "%lu\n", ngx_http_dsv4_api_label[i],
                        (unsigned) ngx_http_dsv4_codes[j],
                        (unsigned long) ngx_http_dsv4_shm->errors[i][j]);

                } else {
                    ngx_http_dsv4_emit(&b,
                        "dsv4:http_errors_total{api=\"%s\",code=\"other\"} "
                        "%lu\n", ngx_http_dsv4_api_label[i],
                        (unsigned long) ngx_http_dsv4_shm->errors[i][j]);
                }
            }
        }
    }

    p = ngx_pnalloc(r->pool, b.len);
    if (p == NULL) {
        goto failed;
    }

    ngx_memcpy(p, b.data, b.len);

    rc = ngx_http_dsv4_send_text(r, NGX_HTTP_OK, &type, p, b.len);

    dsv4_strbuf_free(&b);

    return rc;

failed:

    dsv4_strbuf_free(&b);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}
