
/*
 * Per-tenant limits and metering (docs/limits.md), the nginx side.  The
 * arithmetic is limits/ (no nginx there); this file decides when to call
 * it and where the state lives:
 *
 *   shm mode    the zone's red-black tree holds each tenant's windows,
 *               budgets and usage; every worker updates it under the
 *               zone's mutex, synchronously (a few hundred ns).
 *   redis mode  the same state in Redis, changed atomically by the Lua
 *               scripts of limits/redis.c, so limits hold across servers;
 *               the zone keeps only this host's per-tenant counters for
 *               /metrics.  Commands never block the event loop: the
 *               request waits for the answer like it waits for a body.
 *
 * A request is admitted after its prompt is tokenized (the cost is then
 * known: prompt tokens plus the completion estimate) and finished when its
 * pool goes away, whatever happened: complete, error, or client gone.
 */


#include "ngx_http_dsv4_module.h"


#define NGX_HTTP_DSV4_LEASE_HOST_MAX   24


static ngx_int_t ngx_http_dsv4_limit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_dsv4_lim_reply(redisReply *reply, void *data);


static ngx_conf_enum_t  ngx_http_dsv4_counts[] = {
    { ngx_string("total"), NGX_HTTP_DSV4_COUNT_TOTAL },
    { ngx_string("prompt"), NGX_HTTP_DSV4_COUNT_PROMPT },
    { ngx_string("completion"), NGX_HTTP_DSV4_COUNT_COMPLETION },
    { ngx_null_string, 0 }
};


int64_t
ngx_http_dsv4_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


/* ---------------------------------------------------------------------- */
/* configuration                                                           */


/* dsv4_redis ADDRESS [timeout=TIME] [prefix=STRING]; */

char *
ngx_http_dsv4_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    ngx_int_t               rc;
    ngx_str_t              *value, s;
    ngx_uint_t              i;
    ngx_http_dsv4_redis_t  *rd;

    if (dmcf->redis != NULL) {
        return "is duplicate";
    }

    rd = ngx_pcalloc(cf->pool, sizeof(ngx_http_dsv4_redis_t));
    if (rd == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    rc = ngx_http_dsv4_redis_parse(cf, &value[1], rd);

    if (rc == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid redis address \"%V\": expected IP:PORT "
                           "(an IP literal) or unix:/path", &value[1]);
        return NGX_CONF_ERROR;
    }

    rd->timeout = 200;
    ngx_str_set(&rd->prefix, "dsv4:");

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            rd->timeout = ngx_parse_time(&s, 0);
            if (rd->timeout == (ngx_msec_t) NGX_ERROR || rd->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0
            && value[i].len > 7 && value[i].len - 7 <= 64)
        {
            /* configuration tokens are NUL-terminated */
            rd->prefix.data = value[i].data + 7;
            rd->prefix.len = value[i].len - 7;
            continue;
        }

        goto invalid;
    }

    rd->scripts[NGX_HTTP_DSV4_SCRIPT_ADMIT] = dsv4_limit_lua_admit;
    rd->scripts[NGX_HTTP_DSV4_SCRIPT_FINISH] = dsv4_limit_lua_finish;
    rd->scripts[NGX_HTTP_DSV4_SCRIPT_USAGE] = dsv4_limit_lua_usage;
    rd->nscripts = NGX_HTTP_DSV4_SCRIPTS;

    dmcf->redis = rd;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * dsv4_limit_zone zone=NAME:SIZE [redis] [tokens=total|prompt|completion]
 *                 [estimate=max_tokens|N] [lease=TIME];
 */

char *
ngx_http_dsv4_limit_zone_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    u_char                       *p;
    ssize_t                       size;
    ngx_str_t                    *value, name, s;
    ngx_uint_t                    i, j;
    ngx_shm_zone_t               *shm_zone;
    ngx_http_dsv4_limit_zone_t   *z, **zp;

    value = cf->args->elts;

    z = ngx_pcalloc(cf->pool, sizeof(ngx_http_dsv4_limit_zone_t));
    if (z == NULL) {
        return NGX_CONF_ERROR;
    }

    z->estimate = -1;
    z->lease = 600000;
    size = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            name.data = value[i].data + 5;
            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL) {
                goto invalid;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (name.len == 0 || size == NGX_ERROR) {
                goto invalid;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "redis") == 0) {
            z->redis = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "tokens=", 7) == 0) {
            for (j = 0; ngx_http_dsv4_counts[j].name.len; j++) {
                if (ngx_strcmp(value[i].data + 7,
                               ngx_http_dsv4_counts[j].name.data) == 0)
                {
                    z->count = ngx_http_dsv4_counts[j].value;
                    break;
                }
            }

            if (ngx_http_dsv4_counts[j].name.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "estimate=", 9) == 0) {
            if (ngx_strcmp(value[i].data + 9, "max_tokens") == 0) {
                z->estimate = -1;
                continue;
            }

            z->estimate = ngx_atoi(value[i].data + 9, value[i].len - 9);
            if (z->estimate == NGX_ERROR
                || z->estimate > DSV4_LIMIT_COUNT_MAX)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "lease=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            z->lease = ngx_parse_time(&s, 0);
            if (z->lease == (ngx_msec_t) NGX_ERROR || z->lease < 1000) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    z->name = name;

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_dsv4_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"",
                           &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_dsv4_limit_init_zone;
    shm_zone->data = z;
    z->shm_zone = shm_zone;

    zp = ngx_array_push(&dmcf->limit_zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = z;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/* dsv4_limit zone=NAME [rpm=N] [tpm=N] [concurrency=N] [daily=N]
 *            [monthly=N] | off; */

char *
ngx_http_dsv4_limit_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_loc_conf_t *dlcf = conf;

    size_t           n;
    int64_t         *field;
    ngx_int_t        v;
    ngx_str_t       *value, name;
    ngx_uint_t       i, j;
    ngx_shm_zone_t  *shm_zone;

    static const struct {
        const char  *name;
        size_t       offset;
    } params[] = {
        { "rpm=", offsetof(dsv4_limits, rpm) },
        { "tpm=", offsetof(dsv4_limits, tpm) },
        { "concurrency=", offsetof(dsv4_limits, concurrency) },
        { "daily=", offsetof(dsv4_limits, daily) },
        { "monthly=", offsetof(dsv4_limits, monthly) }
    };

    if (dlcf->limit_zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        dlcf->limit_zone = NULL;
        return NGX_CONF_OK;
    }

    ngx_memzero(&dlcf->limits, sizeof(dsv4_limits));
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            name.data = value[i].data + 5;
            name.len = value[i].len - 5;
            continue;
        }

        for (j = 0; j < sizeof(params) / sizeof(params[0]); j++) {
            n = ngx_strlen(params[j].name);

            if (ngx_strncmp(value[i].data, params[j].name, n) != 0) {
                continue;
            }

            /* Redis keeps counts as Lua numbers: exact below 2^53 */

            v = ngx_atoi(value[i].data + n, value[i].len - n);
            if (v == NGX_ERROR || v > DSV4_LIMIT_COUNT_MAX) {
                goto invalid;
            }

            field = (int64_t *) ((char *) &dlcf->limits + params[j].offset);
            *field = v;
            break;
        }

        if (j == sizeof(params) / sizeof(params[0])) {
            goto invalid;
        }
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* the zone may be declared later in the configuration */

    shm_zone = ngx_shared_memory_add(cf, &name, 0, &ngx_http_dsv4_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    dlcf->limit_zone = shm_zone;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_dsv4_limit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_dsv4_limit_zone_t  *oz = data;

    size_t                       len;
    ngx_http_dsv4_limit_zone_t  *z;

    z = shm_zone->data;

    if (oz) {
        /* a reload: the tenants' state carries over */
        z->sh = oz->sh;
        z->shpool = oz->shpool;
        return NGX_OK;
    }

    z->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        z->sh = z->shpool->data;
        return NGX_OK;
    }

    z->sh = ngx_slab_alloc(z->shpool, sizeof(ngx_http_dsv4_limit_sh_t));
    if (z->sh == NULL) {
        return NGX_ERROR;
    }

    z->shpool->data = z->sh;

    /* a full zone is logged once per interval by us, not per allocation */
    z->shpool->log_nomem = 0;

    ngx_rbtree_init(&z->sh->rbtree, &z->sh->sentinel,
                    ngx_str_rbtree_insert_value);

    len = sizeof(" in dsv4_limit_zone \"\"") + shm_zone->shm.name.len;

    z->shpool->log_ctx = ngx_slab_alloc(z->shpool, len);
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(z->shpool->log_ctx, " in dsv4_limit_zone \"%V\"%Z",
                &shm_zone->shm.name);

    return NGX_OK;
}


/*
 * The tenant's node, created if asked and missing.  The zone's mutex must
 * be held.  NULL: missing, or the zone is full (logged by the slab).
 */

ngx_http_dsv4_tenant_t *
ngx_http_dsv4_tenant(ngx_http_dsv4_limit_zone_t *z, const char *tenant,
    ngx_uint_t create)
{
    size_t                   len;
    uint32_t                 hash;
    ngx_str_t                name;
    ngx_str_node_t          *sn;
    ngx_http_dsv4_tenant_t  *t;

    len = ngx_strlen(tenant);
    hash = ngx_crc32_short((u_char *) tenant, len);

    name.data = (u_char *) tenant;
    name.len = len;

    sn = ngx_str_rbtree_lookup(&z->sh->rbtree, &name, hash);

    if (sn != NULL || !create) {
        return (ngx_http_dsv4_tenant_t *) sn;
    }

    t = ngx_slab_calloc_locked(z->shpool, sizeof(ngx_http_dsv4_tenant_t));
    if (t == NULL) {
        return NULL;
    }

    t->sn.node.key = hash;
    ngx_memcpy(t->tenant, tenant, len);
    t->sn.str.data = t->tenant;
    t->sn.str.len = len;

    dsv4_limit_state_init(&t->state);

    ngx_rbtree_insert(&z->sh->rbtree, &t->sn.node);

    return t;
}


/* ---------------------------------------------------------------------- */
/* a request's tenant and limits                                           */


/*
 * ctx->lim for a location with keys, limits or a usage API (NULL on
 * allocation failure, which the caller reports).  Two owners may hold it:
 * the request (until ngx_http_dsv4_limit_release) and a Redis command in
 * flight (lim->pending); the last to let go frees it (ngx_http_dsv4_lim_put).
 */

ngx_http_dsv4_lim_t *
ngx_http_dsv4_lim_new(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    ngx_http_dsv4_lim_t        *lim;
    ngx_http_dsv4_loc_conf_t   *dlcf;
    ngx_http_dsv4_main_conf_t  *dmcf;

    lim = ngx_calloc(sizeof(ngx_http_dsv4_lim_t), r->connection->log);
    if (lim == NULL) {
        return NULL;
    }

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);
    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dsv4_module);

    lim->request = r;
    lim->ctx = ctx;
    lim->zone = dlcf->limit_zone ? dlcf->limit_zone->data : NULL;
    lim->redis = dmcf->redis;

    /* without keys, everyone is one tenant; with keys, none until known */

    if (dlcf->keys == NULL || dlcf->keys->source == NGX_HTTP_DSV4_KEYS_OFF) {
        ngx_cpystrn((u_char *) lim->key.tenant, (u_char *) "anonymous",
                    sizeof(lim->key.tenant));
    }

    dsv4_limits_unset(&lim->key.limits);

    return lim;
}


void
ngx_http_dsv4_lim_put(ngx_http_dsv4_lim_t *lim)
{
    if (lim->request == NULL && !lim->pending) {
        ngx_free(lim);
    }
}


/*
 * Sends lim->cmd, built for `script` (with its SHA-1 when one is loaded);
 * done runs with the answer, even if the request has gone by then.
 */

ngx_int_t
ngx_http_dsv4_lim_send(ngx_http_dsv4_lim_t *lim, ngx_uint_t script,
    void (*done)(ngx_http_dsv4_lim_t *lim, redisReply *reply))
{
    ngx_int_t  rc;

    lim->script = script;
    lim->done = done;
    lim->retried = 0;

    rc = ngx_http_dsv4_redis_send(lim->redis, lim->cmd.argc, lim->cmd.argv,
                                  lim->cmd.argvlen, ngx_http_dsv4_lim_reply,
                                  lim);
    if (rc == NGX_OK) {
        lim->pending = 1;
    }

    return rc;
}


/*
 * Someone flushed the scripts: the same command once more as EVAL (its
 * argv differs only in the first two words).
 */

static void
ngx_http_dsv4_lim_reply(redisReply *reply, void *data)
{
    ngx_http_dsv4_lim_t *lim = data;

    if (!lim->retried && ngx_http_dsv4_redis_noscript(lim->redis, reply)) {

        lim->retried = 1;
        lim->cmd.argv[0] = "EVAL";
        lim->cmd.argvlen[0] = 4;
        lim->cmd.argv[1] = lim->redis->scripts[lim->script];
        lim->cmd.argvlen[1] = ngx_strlen(lim->cmd.argv[1]);

        if (ngx_http_dsv4_redis_send(lim->redis, lim->cmd.argc,
                                     lim->cmd.argv, lim->cmd.argvlen,
                                     ngx_http_dsv4_lim_reply, lim)
            == NGX_OK)
        {
            return;
        }

        reply = NULL;
    }

    lim->pending = 0;
    lim->done(lim, reply);
}


/* ---------------------------------------------------------------------- */
/* admission                                                               */


/* What counts against tpm and the budgets: dsv4_limit_zone tokens= */

static int64_t
ngx_http_dsv4_counted(ngx_http_dsv4_limit_zone_t *z, int64_t prompt,
    int64_t completion)
{
    switch (z->count) {
    case NGX_HTTP_DSV4_COUNT_PROMPT:
        return prompt;
    case NGX_HTTP_DSV4_COUNT_COMPLETION:
        return completion;
    default:
        return prompt + completion;
    }
}


/* Tokens reserved at admission, as the zone counts them. */

static int64_t
ngx_http_dsv4_limit_cost(ngx_http_dsv4_lim_t *lim, ngx_http_dsv4_ctx_t *ctx)
{
    int64_t                completion, per;
    ngx_http_dsv4_prep_t  *prep;

    prep = ctx->prep;

    if (ctx->api != NGX_HTTP_DSV4_API_CHAT
        && ctx->api != NGX_HTTP_DSV4_API_COMPLETIONS
        && ctx->api != NGX_HTTP_DSV4_API_MESSAGES)
    {
        return 0;       /* /tokenize, /detokenize: requests only */
    }

    per = prep->max_tokens;

    if (lim->zone->estimate >= 0 && lim->zone->estimate < per) {
        per = lim->zone->estimate;
    }

    completion = per * (int64_t) (prep->nprompts * prep->n);

    return ngx_http_dsv4_counted(lim->zone,
                                 ngx_http_dsv4_prep_prompt_tokens(prep),
                                 completion);
}


static ngx_int_t
ngx_http_dsv4_ratelimit_header(ngx_http_request_t *r, const char *name,
    int64_t value, ngx_uint_t duration)
{
    u_char  *p;
    size_t   len;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 32);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (duration) {
        len = dsv4_limit_duration((char *) p, NGX_INT64_LEN + 32, value);

    } else {
        len = ngx_sprintf(p, "%L", value) - p;
    }

    return ngx_http_dsv4_add_header(r, name, p, len);
}


/* OpenAI's x-ratelimit-* headers, for whichever window is limited. */

static ngx_int_t
ngx_http_dsv4_ratelimit_headers(ngx_http_request_t *r,
    ngx_http_dsv4_lim_t *lim)
{
    int64_t              remaining;
    dsv4_limit_verdict  *v = &lim->verdict;

    if (v->limit_requests > 0) {
        remaining = ngx_max(v->remaining_requests, 0);

        if (ngx_http_dsv4_ratelimit_header(r, "x-ratelimit-limit-requests",
                                           v->limit_requests, 0) != NGX_OK
            || ngx_http_dsv4_ratelimit_header(r,
                   "x-ratelimit-remaining-requests", remaining, 0) != NGX_OK
            || ngx_http_dsv4_ratelimit_header(r, "x-ratelimit-reset-requests",
                   v->reset_requests_ms, 1) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (v->limit_tokens > 0) {
        remaining = ngx_max(v->remaining_tokens, 0);

        if (ngx_http_dsv4_ratelimit_header(r, "x-ratelimit-limit-tokens",
                                           v->limit_tokens, 0) != NGX_OK
            || ngx_http_dsv4_ratelimit_header(r,
                   "x-ratelimit-remaining-tokens", remaining, 0) != NGX_OK
            || ngx_http_dsv4_ratelimit_header(r, "x-ratelimit-reset-tokens",
                   v->reset_tokens_ms, 1) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_dsv4_limit_count_rejected(ngx_http_dsv4_limit_zone_t *z,
    const char *tenant, int reason)
{
    ngx_http_dsv4_tenant_t  *t;

    ngx_shmtx_lock(&z->shpool->mutex);

    t = ngx_http_dsv4_tenant(z, tenant, 1);

    if (t != NULL && reason > 0 && reason < DSV4_LIMIT_REASONS) {
        t->rejected[reason]++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);
}


/*
 * The verdict is in: headers, and a refusal unless it passes.  Returns
 * NGX_DECLINED to go on, else what finalizes the request.
 */

static ngx_int_t
ngx_http_dsv4_limit_decide(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    u_char                     msg[320], *p;
    int64_t                    limit, used;
    ngx_uint_t                 tokens;
    ngx_http_dsv4_lim_t       *lim;
    dsv4_limit_verdict        *v;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    lim = ctx->lim;
    v = &lim->verdict;
    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    lim->decided = 1;

    if (ngx_http_dsv4_ratelimit_headers(r, lim) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (v->allowed) {
        lim->admitted = 1;
        lim->status = NGX_HTTP_DSV4_LIMIT_PASSED;
        return NGX_DECLINED;
    }

    ngx_http_dsv4_limit_count_rejected(lim->zone, lim->key.tenant,
                                       v->reason);

    tokens = (v->reason == DSV4_LIMIT_TPM || v->reason == DSV4_LIMIT_DAILY
              || v->reason == DSV4_LIMIT_MONTHLY);

    switch (v->reason) {
    case DSV4_LIMIT_RPM:
        limit = lim->limits.rpm;
        used = limit - v->remaining_requests;
        break;
    case DSV4_LIMIT_TPM:
        limit = lim->limits.tpm;
        used = limit - v->remaining_tokens;
        break;
    case DSV4_LIMIT_CONCURRENCY:
        limit = lim->limits.concurrency;
        used = limit;
        break;
    case DSV4_LIMIT_DAILY:
        limit = lim->limits.daily;
        used = -1;
        break;
    default:
        limit = lim->limits.monthly;
        used = -1;
        break;
    }

    p = ngx_snprintf(msg, sizeof(msg) - 1,
                     "Rate limit reached for tenant %s on %s: limit %L",
                     lim->key.tenant, dsv4_limit_reason_name(v->reason),
                     limit);

    if (used >= 0) {
        p = ngx_snprintf(p, msg + sizeof(msg) - 1 - p, ", used %L", used);
    }

    if (tokens) {
        p = ngx_snprintf(p, msg + sizeof(msg) - 1 - p, ", requested %L",
                         lim->cost);
    }

    p = ngx_snprintf(p, msg + sizeof(msg) - 1 - p,
                     v->retry_after_ms < 0
                     ? ". The request is larger than the limit."
                     : ". Retry in %Lms.", v->retry_after_ms);
    *p = '\0';

    if (dlcf->limit_dry_run) {
        ngx_log_error(dlcf->limit_log_level, r->connection->log, 0,
                      "dsv4: limiting requests, dry run: %s", msg);
        lim->status = NGX_HTTP_DSV4_LIMIT_REJECTED_DRY;
        return NGX_DECLINED;
    }

    lim->status = NGX_HTTP_DSV4_LIMIT_REJECTED;

    if (v->retry_after_ms >= 0
        && ngx_http_dsv4_ratelimit_header(r, "Retry-After",
                                          ngx_max((v->retry_after_ms + 999)
                                                  / 1000, 1), 0)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(dlcf->limit_log_level, r->connection->log, 0,
                  "dsv4: limiting requests: %s", msg);

    return ngx_http_dsv4_send_error_typed(r, ctx->api, dlcf->limit_status,
                                          tokens ? "tokens" : "requests",
                                          (const char *) msg, NULL,
                                          "rate_limit_exceeded");
}


void
ngx_http_dsv4_limit_failure(ngx_http_dsv4_lim_t *lim, const char *what,
    const char *why)
{
    ngx_http_dsv4_limit_zone_t  *z = lim->zone;
    u_char                       cause[96];

    (void) ngx_atomic_fetch_add(z->redis ? &z->sh->redis_failures
                                         : &z->sh->zone_full, 1);

    /* one [warn] per interval per worker, not one per request */

    (void) ngx_snprintf(cause, sizeof(cause) - 1, "limit zone %V %s%Z",
                        &z->name, what);

    if (z->redis) {
        ngx_http_dsv4_log_fault(NGX_LOG_WARN, ngx_cycle->log, (char *) cause,
                                "dsv4: limit zone \"%V\": redis %V: %s "
                                "failed (%s)", &z->name, &lim->redis->addr,
                                what, why);

    } else {
        ngx_http_dsv4_log_fault(NGX_LOG_WARN, ngx_cycle->log, (char *) cause,
                                "dsv4: limit zone \"%V\": %s failed (%s)",
                                &z->name, what, why);
    }
}


/* Redis could not decide: dsv4_limit_fail open (NGX_DECLINED) or closed. */

static ngx_int_t
ngx_http_dsv4_limit_failed(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx,
    const char *why)
{
    ngx_http_dsv4_lim_t       *lim;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    lim = ctx->lim;
    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    ngx_http_dsv4_limit_failure(lim, "admission", why);

    lim->decided = 1;

    if (dlcf->limit_fail_closed) {
        lim->status = NGX_HTTP_DSV4_LIMIT_REJECTED;
        return ngx_http_dsv4_send_error(r, ctx->api,
                                        NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "rate limits cannot be checked now, "
                                        "retry later", NULL, "overloaded");
    }

    lim->status = NGX_HTTP_DSV4_LIMIT_FAILED_OPEN;

    return NGX_DECLINED;
}


static void ngx_http_dsv4_limit_end(ngx_http_dsv4_lim_t *lim,
    const dsv4_usage *u, int64_t used);


static void
ngx_http_dsv4_limit_admit_done(ngx_http_dsv4_lim_t *lim, redisReply *reply)
{
    char                  err[128];
    ngx_int_t             rc, ok;
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dsv4_ctx_t  *ctx;
    dsv4_usage            none;

    ok = 0;

    if (reply == NULL) {
        ngx_cpystrn((u_char *) err, (u_char *) "no answer", sizeof(err));

    } else if (dsv4_limit_reply_admit(reply, &lim->verdict, &lim->res, err,
                                      sizeof(err))
               == 0)
    {
        ok = 1;
    }

    r = lim->request;

    if (r == NULL) {

        /* the client left while Redis decided: give the lease back now */

        if (ok && lim->verdict.allowed) {
            lim->admitted = 1;
            ngx_memzero(&none, sizeof(dsv4_usage));
            ngx_http_dsv4_limit_end(lim, &none, 0);
        }

        ngx_http_dsv4_lim_put(lim);
        return;
    }

    c = r->connection;
    ctx = lim->ctx;

    rc = ok ? ngx_http_dsv4_limit_decide(r, ctx)
            : ngx_http_dsv4_limit_failed(r, ctx, err);

    if (rc == NGX_DECLINED) {
        ngx_http_dsv4_run(r, ctx);

    } else {
        ngx_http_dsv4_finalize(ctx, rc);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_dsv4_lease_id(ngx_http_dsv4_lim_t *lim)
{
    u_char  *p;
    size_t   n;

    static ngx_atomic_uint_t  seq;

    /* unique across servers: host, process, sequence, randomness */

    n = ngx_min(ngx_cycle->hostname.len, NGX_HTTP_DSV4_LEASE_HOST_MAX);

    p = ngx_snprintf((u_char *) lim->lease, sizeof(lim->lease) - 1,
                     "%*s.%P.%uA.%08xD", n, ngx_cycle->hostname.data,
                     ngx_pid, ++seq, (uint32_t) ngx_random());
    *p = '\0';
}


/*
 * Admission, once the request is tokenized.  Returns NGX_DECLINED (go on),
 * NGX_DONE (Redis decides; ngx_http_dsv4_run is called again with the
 * answer), or what finalizes the request: a refusal already sent.
 */

ngx_int_t
ngx_http_dsv4_limit_admit(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    int64_t                      now;
    ngx_int_t                    rc;
    ngx_http_dsv4_lim_t         *lim;
    ngx_http_dsv4_tenant_t      *t;
    ngx_http_dsv4_limit_zone_t  *z;
    ngx_http_dsv4_loc_conf_t    *dlcf;

    lim = ctx->lim;

    if (lim == NULL || lim->zone == NULL || lim->decided) {
        return NGX_DECLINED;
    }

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);
    z = lim->zone;

    lim->limits = lim->key.limits;
    dsv4_limits_merge(&lim->limits, &dlcf->limits);
    lim->cost = ngx_http_dsv4_limit_cost(lim, ctx);

    if (!z->redis) {
        now = ngx_http_dsv4_now_ms();

        ngx_shmtx_lock(&z->shpool->mutex);

        t = ngx_http_dsv4_tenant(z, lim->key.tenant, 1);

        if (t != NULL) {
            (void) dsv4_limit_admit(&t->state, &lim->limits, now, lim->cost,
                                    &lim->verdict, &lim->res);
        }

        ngx_shmtx_unlock(&z->shpool->mutex);

        if (t == NULL) {
            return ngx_http_dsv4_limit_failed(r, ctx,
                                              "the zone is full: "
                                              "no room for a new tenant");
        }

        return ngx_http_dsv4_limit_decide(r, ctx);
    }

    ngx_http_dsv4_lease_id(lim);

    if (dsv4_limit_cmd_admit(&lim->cmd,
                             ngx_http_dsv4_redis_sha(lim->redis,
                                                 NGX_HTTP_DSV4_SCRIPT_ADMIT),
                             (const char *) lim->redis->prefix.data,
                             lim->key.tenant, &lim->limits, lim->cost,
                             lim->lease, (int64_t) z->lease, -1)
        != 0)
    {
        return ngx_http_dsv4_limit_failed(r, ctx, "command too long");
    }

    rc = ngx_http_dsv4_lim_send(lim, NGX_HTTP_DSV4_SCRIPT_ADMIT,
                                ngx_http_dsv4_limit_admit_done);

    if (rc != NGX_OK) {
        return ngx_http_dsv4_limit_failed(r, ctx, "not connected");
    }

    return NGX_DONE;
}


/* ---------------------------------------------------------------------- */
/* the end of a request: reconciliation and metering                       */


static void
ngx_http_dsv4_limit_finish_done(ngx_http_dsv4_lim_t *lim, redisReply *reply)
{
    char  err[128];

    if (reply == NULL) {
        ngx_http_dsv4_limit_failure(lim, "metering", "no answer");

    } else if (dsv4_limit_reply_finish(reply, err, sizeof(err)) != 0) {
        ngx_http_dsv4_limit_failure(lim, "metering", err);
    }

    ngx_http_dsv4_lim_put(lim);
}


/*
 * Corrects the reservation to `used` tokens and meters *u: in the zone
 * (shm mode; this host's counters in both modes) and in Redis, without
 * waiting for its answer.
 */

static void
ngx_http_dsv4_limit_end(ngx_http_dsv4_lim_t *lim, const dsv4_usage *u,
    int64_t used)
{
    int64_t                      now;
    ngx_http_dsv4_tenant_t      *t;
    ngx_http_dsv4_limit_zone_t  *z;

    z = lim->zone;
    now = ngx_http_dsv4_now_ms();

    ngx_shmtx_lock(&z->shpool->mutex);

    t = ngx_http_dsv4_tenant(z, lim->key.tenant, u->requests > 0);

    if (t != NULL) {
        if (!z->redis && lim->admitted) {
            dsv4_limit_finish(&t->state, &lim->res, now, used);
        }

        if (u->requests > 0) {
            dsv4_meter_add(&t->meter, now, u);
        }
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    if (!z->redis || (!lim->admitted && u->requests == 0)) {
        return;
    }

    if (dsv4_limit_cmd_finish(&lim->cmd,
                              ngx_http_dsv4_redis_sha(lim->redis,
                                                NGX_HTTP_DSV4_SCRIPT_FINISH),
                              (const char *) lim->redis->prefix.data,
                              lim->key.tenant, lim->admitted, &lim->res, used,
                              lim->lease, u, -1)
            != 0
        || ngx_http_dsv4_lim_send(lim, NGX_HTTP_DSV4_SCRIPT_FINISH,
                                  ngx_http_dsv4_limit_finish_done)
           != NGX_OK)
    {
        ngx_http_dsv4_limit_failure(lim, "metering", "not connected");
        return;
    }

    /* the lease must be free before the client has the answer */

    ngx_http_dsv4_redis_flush(lim->redis);
}


/*
 * The request is over for the engine (its last choice finished) or going
 * away: correct the reservation to what was used, meter it, and end the
 * concurrency lease, once.  Called before the last byte is sent, so that a
 * client that sends its next request on the answer finds its lease free
 * (the Redis command is written first); a stream the client cut is charged
 * for the tokens generated until then.
 */

void
ngx_http_dsv4_limit_finish(ngx_http_dsv4_ctx_t *ctx)
{
    ngx_uint_t            i;
    dsv4_usage            u;
    ngx_http_dsv4_lim_t  *lim;

    lim = ctx->lim;

    if (lim == NULL || lim->zone == NULL || lim->finished || lim->pending) {
        return;         /* a pending admission's answer ends its lease */
    }

    lim->finished = 1;

    ngx_memzero(&u, sizeof(dsv4_usage));

    if (ctx->submitted) {
        u.requests = 1;
        u.prompt_tokens = ctx->prompt_tokens;
        u.cached_tokens = ngx_http_dsv4_cached_tokens(ctx);
        u.completion_tokens = ctx->completion_tokens;

        for (i = 0; i < ctx->nchoices; i++) {
            u.reasoning_tokens += ctx->choices[i].reasoning_tokens;
        }
    }

    ngx_http_dsv4_limit_end(lim, &u,
                            ngx_http_dsv4_counted(lim->zone, u.prompt_tokens,
                                                  u.completion_tokens));
}


/* The request's pool is going away (ngx_http_dsv4_cleanup). */

void
ngx_http_dsv4_limit_release(ngx_http_dsv4_ctx_t *ctx)
{
    ngx_http_dsv4_lim_t  *lim;

    lim = ctx->lim;

    if (lim == NULL) {
        return;
    }

    ngx_http_dsv4_limit_finish(ctx);

    ctx->lim = NULL;
    lim->ctx = NULL;
    lim->request = NULL;

    ngx_http_dsv4_lim_put(lim);
}


/* ---------------------------------------------------------------------- */
/* process hooks                                                           */


void
ngx_http_dsv4_limit_init_process(ngx_cycle_t *cycle)
{
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dsv4_module);

    if (dmcf != NULL && dmcf->redis != NULL) {
        ngx_http_dsv4_redis_start(dmcf->redis, cycle->log);
    }
}


void
ngx_http_dsv4_limit_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dsv4_module);

    if (dmcf != NULL && dmcf->redis != NULL) {
        ngx_http_dsv4_redis_stop(dmcf->redis);
    }
}
