
/*
 * The read side of limits and metering: GET /v1/usage (the caller's
 * tenant) and the admin view (every tenant), the $dsv4_* variables for
 * access logs, and the per-tenant counters in /metrics.
 */


#include "ngx_http_dsv4_module.h"


static ngx_str_t  ngx_http_dsv4_limit_status_names[] = {
    ngx_null_string,
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("FAILED_OPEN")
};


/* ---------------------------------------------------------------------- */
/* GET /v1/usage (the caller's tenant), the admin view (every tenant)      */


static json_t *
ngx_http_dsv4_usage_json(const dsv4_usage *u)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I}",
                     dsv4_usage_fields[0], (json_int_t) u->requests,
                     dsv4_usage_fields[1], (json_int_t) u->prompt_tokens,
                     dsv4_usage_fields[2], (json_int_t) u->cached_tokens,
                     dsv4_usage_fields[3], (json_int_t) u->completion_tokens,
                     dsv4_usage_fields[4], (json_int_t) u->reasoning_tokens);
}


static json_t *
ngx_http_dsv4_usage_entry(const dsv4_tenant_usage *tu)
{
    return json_pack("{s:s,s:o,s:o}", "tenant", tu->tenant,
                     "today", ngx_http_dsv4_usage_json(&tu->today),
                     "this_month", ngx_http_dsv4_usage_json(&tu->this_month));
}


/* {"object": "usage", "tenant", "day", "month", "today", "this_month"} or
 * {"object": "list", "day", "month", "data": [...]} */

static ngx_int_t
ngx_http_dsv4_usage_send(ngx_http_request_t *r, ngx_uint_t admin,
    int64_t day, int64_t month, const dsv4_tenant_usage *tu, ngx_uint_t n)
{
    char         dbuf[16], mbuf[16];
    json_t      *body, *data, *e;
    ngx_uint_t   i;

    ngx_snprintf((u_char *) dbuf, sizeof(dbuf), "%04L-%02L-%02L%Z",
                 day / 10000, day / 100 % 100, day % 100);
    ngx_snprintf((u_char *) mbuf, sizeof(mbuf), "%04L-%02L%Z",
                 month / 100, month % 100);

    if (!admin) {
        body = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o}", "object", "usage",
                         "tenant", tu->tenant, "day", dbuf, "month", mbuf,
                         "today", ngx_http_dsv4_usage_json(&tu->today),
                         "this_month",
                         ngx_http_dsv4_usage_json(&tu->this_month));

    } else {
        data = json_array();

        for (i = 0; data && i < n; i++) {
            e = ngx_http_dsv4_usage_entry(&tu[i]);

            if (e == NULL || json_array_append_new(data, e) != 0) {
                json_decref(data);
                data = NULL;
            }
        }

        body = data ? json_pack("{s:s,s:s,s:s,s:o}", "object", "list",
                                "day", dbuf, "month", mbuf, "data", data)
                    : NULL;
    }

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dsv4_send_json(r, NGX_HTTP_OK, body);
}


/* One tenant with nothing metered yet still gets its (zero) usage. */

static ngx_int_t
ngx_http_dsv4_usage_answer(ngx_http_request_t *r, ngx_http_dsv4_lim_t *lim,
    const dsv4_tenant_usage *tu, ngx_uint_t n)
{
    int64_t            now;
    dsv4_tenant_usage  none;

    now = ngx_http_dsv4_now_ms();

    if (n == 0) {
        ngx_memzero(&none, sizeof(dsv4_tenant_usage));
        ngx_cpystrn((u_char *) none.tenant, (u_char *) lim->key.tenant,
                    sizeof(none.tenant));
        none.day = dsv4_limit_day(now);
        none.month = dsv4_limit_month(now);

        return ngx_http_dsv4_usage_send(r, lim->admin, none.day, none.month,
                                        &none, lim->admin ? 0 : 1);
    }

    return ngx_http_dsv4_usage_send(r, lim->admin, tu[0].day, tu[0].month,
                                    tu, n);
}


static void
ngx_http_dsv4_usage_done(ngx_http_dsv4_lim_t *lim, redisReply *reply)
{
    int                  n;
    char                 err[128];
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;
    dsv4_tenant_usage   *tu;

    r = lim->request;

    if (r == NULL) {
        ngx_http_dsv4_lim_put(lim);
        return;
    }

    c = r->connection;
    tu = NULL;
    n = 0;

    if (reply == NULL
        || dsv4_limit_reply_usage(reply, &tu, &n, err, sizeof(err)) != 0)
    {
        ngx_http_dsv4_limit_failure(lim, "usage",
                                    reply ? err : "no answer");
        rc = ngx_http_dsv4_send_error(r, lim->ctx->api,
                                      NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "usage cannot be read now, retry later",
                                      NULL, "overloaded");
        goto done;
    }

    rc = ngx_http_dsv4_usage_answer(r, lim, tu, (ngx_uint_t) n);

    free(tu);

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* The zone's tenants (shm mode), as of now; malloc'd (free() it). */

static dsv4_tenant_usage *
ngx_http_dsv4_usage_shm(ngx_http_dsv4_limit_zone_t *z, const char *tenant,
    int64_t now, ngx_uint_t *n)
{
    size_t                   cap;
    ngx_rbtree_node_t       *node, *root, *sentinel;
    dsv4_tenant_usage       *tu, *more;
    ngx_http_dsv4_tenant_t  *t;

    cap = 16;
    *n = 0;

    tu = malloc(cap * sizeof(dsv4_tenant_usage));
    if (tu == NULL) {
        return NULL;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    root = z->sh->rbtree.root;
    sentinel = z->sh->rbtree.sentinel;

    for (node = root == sentinel ? NULL : ngx_rbtree_min(root, sentinel);
         node != NULL;
         node = ngx_rbtree_next(&z->sh->rbtree, node))
    {
        t = (ngx_http_dsv4_tenant_t *) node;

        if (tenant != NULL
            && (t->sn.str.len != ngx_strlen(tenant)
                || ngx_strncmp(t->tenant, tenant, t->sn.str.len) != 0))
        {
            continue;
        }

        if (*n == cap) {
            more = realloc(tu, 2 * cap * sizeof(dsv4_tenant_usage));
            if (more == NULL) {
                break;
            }

            tu = more;
            cap *= 2;
        }

        ngx_memzero(&tu[*n], sizeof(dsv4_tenant_usage));
        ngx_memcpy(tu[*n].tenant, t->tenant, t->sn.str.len);
        tu[*n].day = dsv4_limit_day(now);
        tu[*n].month = dsv4_limit_month(now);
        dsv4_meter_read(&t->meter, now, &tu[*n].today, &tu[*n].this_month);
        (*n)++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return tu;
}


ngx_int_t
ngx_http_dsv4_usage_handler(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_uint_t                   n;
    dsv4_tenant_usage           *tu;
    ngx_http_dsv4_lim_t         *lim;
    ngx_http_dsv4_limit_zone_t  *z;

    lim = ctx->lim;
    z = lim->zone;

    if (ctx->api == NGX_HTTP_DSV4_API_USAGE_ADMIN) {
        if (!ngx_http_dsv4_admin(r)) {
            return ngx_http_dsv4_send_error(r, ctx->api,
                                            NGX_HTTP_UNAUTHORIZED,
                                            "the admin key is missing or "
                                            "incorrect", NULL,
                                            "invalid_api_key");
        }

        lim->admin = 1;
    }

    if (z->redis) {
        if (dsv4_limit_cmd_usage(&lim->cmd,
                                 ngx_http_dsv4_redis_sha(lim->redis,
                                                 NGX_HTTP_DSV4_SCRIPT_USAGE),
                                 (const char *) lim->redis->prefix.data,
                                 lim->admin ? NULL : lim->key.tenant, -1)
                != 0
            || ngx_http_dsv4_lim_send(lim, NGX_HTTP_DSV4_SCRIPT_USAGE,
                                      ngx_http_dsv4_usage_done)
               != NGX_OK)
        {
            ngx_http_dsv4_limit_failure(lim, "usage", "not connected");
            return ngx_http_dsv4_send_error(r, ctx->api,
                                            NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "usage cannot be read now, "
                                            "retry later", NULL,
                                            "overloaded");
        }

        r->main->count++;

        return NGX_DONE;
    }

    tu = ngx_http_dsv4_usage_shm(z, lim->admin ? NULL : lim->key.tenant,
                                 ngx_http_dsv4_now_ms(), &n);
    if (tu == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_dsv4_usage_answer(r, lim, tu, n);

    free(tu);

    return rc;
}


/* ---------------------------------------------------------------------- */
/* $dsv4_* variables, for access logs                                      */


#define NGX_HTTP_DSV4_VAR_TENANT       0
#define NGX_HTTP_DSV4_VAR_STATUS       1
#define NGX_HTTP_DSV4_VAR_PROMPT       2
#define NGX_HTTP_DSV4_VAR_COMPLETION   3
#define NGX_HTTP_DSV4_VAR_CACHED       4
#define NGX_HTTP_DSV4_VAR_REASONING    5


static ngx_int_t
ngx_http_dsv4_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char               *p;
    size_t                len;
    ngx_uint_t            i, n;
    ngx_http_dsv4_ctx_t  *ctx;
    ngx_http_dsv4_lim_t  *lim;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    lim = ctx->lim;

    switch (data) {

    case NGX_HTTP_DSV4_VAR_TENANT:
        if (lim == NULL || lim->key.tenant[0] == '\0') {
            v->not_found = 1;
            return NGX_OK;
        }

        p = (u_char *) lim->key.tenant;
        len = ngx_strlen(p);
        goto found;

    case NGX_HTTP_DSV4_VAR_STATUS:
        if (lim == NULL || lim->status == NGX_HTTP_DSV4_LIMIT_NONE) {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_http_dsv4_limit_status_names[lim->status].data;
        len = ngx_http_dsv4_limit_status_names[lim->status].len;
        goto found;

    case NGX_HTTP_DSV4_VAR_PROMPT:
        n = ctx->prompt_tokens;
        break;

    case NGX_HTTP_DSV4_VAR_COMPLETION:
        n = ctx->completion_tokens;
        break;

    case NGX_HTTP_DSV4_VAR_CACHED:
        n = ngx_http_dsv4_cached_tokens(ctx);
        break;

    default: /* NGX_HTTP_DSV4_VAR_REASONING */
        n = 0;

        for (i = 0; i < ctx->nchoices; i++) {
            n += ctx->choices[i].reasoning_tokens;
        }

        break;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    len = ngx_sprintf(p, "%ui", n) - p;

found:

    v->data = p;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_http_variable_t  ngx_http_dsv4_vars[] = {

    { ngx_string("dsv4_tenant"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_TENANT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dsv4_limit_status"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dsv4_prompt_tokens"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_PROMPT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dsv4_completion_tokens"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_COMPLETION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dsv4_cached_tokens"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_CACHED, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dsv4_reasoning_tokens"), NULL, ngx_http_dsv4_variable,
      NGX_HTTP_DSV4_VAR_REASONING, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_dsv4_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_dsv4_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* ---------------------------------------------------------------------- */
/* /metrics: this host's per-tenant counters                               */


#define ngx_http_dsv4_emit(b, ...)                                            \
    if (ngx_http_dsv4_strbuf_printf(b, __VA_ARGS__) != 0) goto failed


static const struct {
    const char  *name;
    const char  *help;
    size_t       offset;            /* in dsv4_usage */
} ngx_http_dsv4_tenant_counters[] = {
    { "tenant_requests_total", "Requests handed to the engine, by tenant.",
      offsetof(dsv4_usage, requests) },
    { "tenant_prompt_tokens_total", "Prompt tokens, by tenant.",
      offsetof(dsv4_usage, prompt_tokens) },
    { "tenant_cached_tokens_total",
      "Prompt tokens read from the prefix cache, by tenant.",
      offsetof(dsv4_usage, cached_tokens) },
    { "tenant_completion_tokens_total", "Completion tokens, by tenant.",
      offsetof(dsv4_usage, completion_tokens) },
    { "tenant_reasoning_tokens_total",
      "Reasoning tokens (part of completion tokens), by tenant.",
      offsetof(dsv4_usage, reasoning_tokens) }
};


/*
 * The samples of one family for every tenant of every zone: the usage
 * counter at `offset` in dsv4_usage, or (offset -1) the rejections by
 * limit.  Printed under each zone's mutex: memory only, no I/O.
 */

static int
ngx_http_dsv4_emit_tenants(dsv4_strbuf *b, ngx_http_dsv4_main_conf_t *dmcf,
    const char *name, size_t offset)
{
    int                           rc, reason;
    ngx_uint_t                    i;
    ngx_rbtree_node_t            *node, *root, *sentinel;
    ngx_http_dsv4_tenant_t       *t;
    ngx_http_dsv4_limit_zone_t  **zp, *z;

    zp = dmcf->limit_zones.elts;
    rc = 0;

    for (i = 0; i < dmcf->limit_zones.nelts && rc == 0; i++) {
        z = zp[i];

        if (z->sh == NULL) {
            continue;
        }

        ngx_shmtx_lock(&z->shpool->mutex);

        root = z->sh->rbtree.root;
        sentinel = z->sh->rbtree.sentinel;

        for (node = root == sentinel ? NULL : ngx_rbtree_min(root, sentinel);
             node != NULL && rc == 0;
             node = ngx_rbtree_next(&z->sh->rbtree, node))
        {
            t = (ngx_http_dsv4_tenant_t *) node;

            if (offset != (size_t) -1) {
                rc = ngx_http_dsv4_strbuf_printf(b,
                         "dsv4:%s{tenant=\"%.*s\",zone=\"%.*s\"} %lld\n",
                         name, (int) t->sn.str.len, t->tenant,
                         (int) z->name.len, z->name.data,
                         (long long) *(int64_t *) ((char *) &t->meter.total
                                                   + offset));
                continue;
            }

            for (reason = 1; reason < DSV4_LIMIT_REASONS && rc == 0;
                 reason++)
            {
                rc = ngx_http_dsv4_strbuf_printf(b,
                         "dsv4:%s{tenant=\"%.*s\",zone=\"%.*s\","
                         "reason=\"%s\"} %llu\n",
                         name, (int) t->sn.str.len, t->tenant,
                         (int) z->name.len, z->name.data,
                         dsv4_limit_reason_name(reason),
                         (unsigned long long) t->rejected[reason]);
            }
        }

        ngx_shmtx_unlock(&z->shpool->mutex);
    }

    return rc;
}


ngx_int_t
ngx_http_dsv4_limit_metrics(dsv4_strbuf *b, ngx_http_dsv4_main_conf_t *dmcf)
{
    ngx_uint_t                    i, k;
    ngx_http_dsv4_limit_zone_t  **zp, *z;

    if (dmcf->limit_zones.nelts == 0) {
        return 0;
    }

    for (k = 0; k < sizeof(ngx_http_dsv4_tenant_counters)
                    / sizeof(ngx_http_dsv4_tenant_counters[0]); k++)
    {
        ngx_http_dsv4_emit(b, "# HELP dsv4:%s %s (this host)\n"
                              "# TYPE dsv4:%s counter\n",
                           ngx_http_dsv4_tenant_counters[k].name,
                           ngx_http_dsv4_tenant_counters[k].help,
                           ngx_http_dsv4_tenant_counters[k].name);

        if (ngx_http_dsv4_emit_tenants(b, dmcf,
                                       ngx_http_dsv4_tenant_counters[k].name,
                                       ngx_http_dsv4_tenant_counters[k].offset)
            != 0)
        {
            return -1;
        }
    }

    ngx_http_dsv4_emit(b, "# HELP dsv4:tenant_rejected_total Requests "
                          "refused by a limit, by tenant and limit "
                          "(this host)\n"
                          "# TYPE dsv4:tenant_rejected_total counter\n");

    if (ngx_http_dsv4_emit_tenants(b, dmcf, "tenant_rejected_total",
                                   (size_t) -1)
        != 0)
    {
        return -1;
    }

    zp = dmcf->limit_zones.elts;

    for (k = 0; k < 2; k++) {
        ngx_http_dsv4_emit(b, "# HELP dsv4:%s %s\n# TYPE dsv4:%s counter\n",
                           k ? "limit_zone_full_total"
                             : "limit_redis_failures_total",
                           k ? "Requests of tenants that found no room in "
                               "the zone (fail open or closed applied)"
                             : "Limit, metering and usage commands Redis "
                               "did not answer (fail open or closed "
                               "applied)",
                           k ? "limit_zone_full_total"
                             : "limit_redis_failures_total");

        for (i = 0; i < dmcf->limit_zones.nelts; i++) {
            z = zp[i];

            ngx_http_dsv4_emit(b, "dsv4:%s{zone=\"%.*s\"} %lu\n",
                               k ? "limit_zone_full_total"
                                 : "limit_redis_failures_total",
                               (int) z->name.len, z->name.data,
                               z->sh == NULL ? 0UL
                               : (unsigned long) (k ? z->sh->zone_full
                                                    : z->sh->redis_failures));
        }
    }

    return 0;

failed:

    return -1;
}
