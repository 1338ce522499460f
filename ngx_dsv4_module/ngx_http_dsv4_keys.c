
/*
 * API keys (docs/limits.md): who is calling.  A request in a location with
 * dsv4_keys carries its key as "Authorization: Bearer KEY" (OpenAI) or
 * "x-api-key: KEY" (Anthropic); only the key's SHA-256 is ever compared,
 * stored or sent to Redis, and logs name the tenant, never the key.
 *
 * Keys come from a file parsed at configuration time (so `nginx -s reload`
 * picks up revocations, and `nginx -t` rejects a bad line), or from Redis
 * hashes looked up per request without blocking the event loop.
 */


#include "ngx_http_dsv4_module.h"


static ngx_http_dsv4_keys_t  ngx_http_dsv4_keys_redis = {
    NGX_HTTP_DSV4_KEYS_REDIS, ngx_null_string, NULL, 0
};

static ngx_http_dsv4_keys_t  ngx_http_dsv4_keys_off = {
    NGX_HTTP_DSV4_KEYS_OFF, ngx_null_string, NULL, 0
};


static int
ngx_http_dsv4_key_cmp(const void *a, const void *b)
{
    return memcmp(((const dsv4_key *) a)->digest,
                  ((const dsv4_key *) b)->digest, 32);
}


/* Reads and parses a key file; the table lives in cf->pool. */

static ngx_http_dsv4_keys_t *
ngx_http_dsv4_keys_load(ngx_conf_t *cf, ngx_str_t *name)
{
    int                     nkeys, line;
    char                    err[256], *rest;
    u_char                 *text;
    ssize_t                 n;
    dsv4_key               *keys;
    ngx_fd_t                fd;
    ngx_file_info_t         fi;
    ngx_http_dsv4_keys_t   *kf;

    fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", name);
        return NULL;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 64 * 1024 * 1024)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "key file \"%V\" cannot be read or is larger "
                           "than 64M", name);
        (void) ngx_close_file(fd);
        return NULL;
    }

    text = ngx_pnalloc(cf->temp_pool, (size_t) ngx_file_size(&fi) + 1);
    if (text == NULL) {
        (void) ngx_close_file(fd);
        return NULL;
    }

    n = ngx_read_fd(fd, text, (size_t) ngx_file_size(&fi));

    (void) ngx_close_file(fd);

    if (n != (ssize_t) ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%V\" failed", name);
        return NULL;
    }

    if (dsv4_keys_parse((const char *) text, (size_t) n, &keys, &nkeys, err,
                        sizeof(err))
        != 0)
    {
        /* "line N: what" reads as "FILE:N: what", like compilers say it */

        line = 0;
        rest = err;

        if (sscanf(err, "line %d: ", &line) == 1) {
            rest = strstr(err, ": ") + 2;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V:%d: %s", name, line,
                           rest);
        return NULL;
    }

    kf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dsv4_keys_t));
    if (kf == NULL) {
        free(keys);
        return NULL;
    }

    kf->source = NGX_HTTP_DSV4_KEYS_FILE;
    kf->file = *name;
    kf->nkeys = (ngx_uint_t) nkeys;

    if (nkeys) {
        kf->keys = ngx_palloc(cf->pool, nkeys * sizeof(dsv4_key));
        if (kf->keys == NULL) {
            free(keys);
            return NULL;
        }

        ngx_memcpy(kf->keys, keys, nkeys * sizeof(dsv4_key));
        ngx_qsort(kf->keys, nkeys, sizeof(dsv4_key), ngx_http_dsv4_key_cmp);
    }

    free(keys);

    return kf;
}


/* dsv4_keys FILE | redis | off; */

char *
ngx_http_dsv4_keys_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_loc_conf_t *dlcf = conf;

    ngx_str_t                   *value, name;
    ngx_uint_t                   i;
    ngx_http_dsv4_keys_t       **kfp, *kf;
    ngx_http_dsv4_main_conf_t   *dmcf;

    if (dlcf->keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        dlcf->keys = &ngx_http_dsv4_keys_off;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "redis") == 0) {
        dlcf->keys = &ngx_http_dsv4_keys_redis;
        return NGX_CONF_OK;
    }

    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* one table per file, however many locations name it */

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dsv4_module);
    kfp = dmcf->key_files.elts;

    for (i = 0; i < dmcf->key_files.nelts; i++) {
        if (kfp[i]->file.len == name.len
            && ngx_strncmp(kfp[i]->file.data, name.data, name.len) == 0)
        {
            dlcf->keys = kfp[i];
            return NGX_CONF_OK;
        }
    }

    kf = ngx_http_dsv4_keys_load(cf, &name);
    if (kf == NULL) {
        return NGX_CONF_ERROR;
    }

    kfp = ngx_array_push(&dmcf->key_files);
    if (kfp == NULL) {
        return NGX_CONF_ERROR;
    }

    *kfp = kf;
    dlcf->keys = kf;

    return NGX_CONF_OK;
}


/* dsv4_admin_key SHA256HEX; */

char *
ngx_http_dsv4_admin_key_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->admin_key != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    dlcf->admin_key = ngx_palloc(cf->pool, 32);
    if (dlcf->admin_key == NULL) {
        return NGX_CONF_ERROR;
    }

    if (dsv4_key_from_hex((const char *) value[1].data, value[1].len,
                          dlcf->admin_key)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_admin_key\" takes the key's SHA-256 as "
                           "64 hex digits (build/dsv4-key hash), "
                           "not \"%*s...\"",
                           ngx_min(value[1].len, 8), value[1].data);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* The token of "Authorization: Bearer TOKEN": NGX_OK, or NGX_DECLINED. */

ngx_int_t
ngx_http_dsv4_bearer(ngx_http_request_t *r, ngx_str_t *token)
{
    if (r->headers_in.authorization == NULL) {
        return NGX_DECLINED;
    }

    *token = r->headers_in.authorization->value;

    if (token->len <= 7
        || ngx_strncasecmp(token->data, (u_char *) "Bearer ", 7) != 0)
    {
        return NGX_DECLINED;
    }

    token->data += 7;
    token->len -= 7;

    while (token->len && token->data[0] == ' ') {
        token->data++;
        token->len--;
    }

    return NGX_OK;
}


/* The raw key the client sent, or an empty string. */

static ngx_str_t
ngx_http_dsv4_request_key(ngx_http_request_t *r)
{
    ngx_str_t         key;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (ngx_http_dsv4_bearer(r, &key) == NGX_OK) {
        return key;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 9
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-api-key", 9) == 0)
        {
            return h[i].value;
        }
    }

    ngx_str_null(&key);

    return key;
}


static ngx_int_t
ngx_http_dsv4_auth_fail(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx,
    ngx_uint_t missing)
{
    ngx_int_t  rc;

    /* the body is not read yet: drop it, or keep-alive would parse it */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    /* the answer names the problem; WWW-Authenticate as RFC 6750 asks */

    rc = ngx_http_dsv4_add_header(r, "WWW-Authenticate",
                                  (u_char *) "Bearer", 6);
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dsv4_send_error(r, ctx->api, NGX_HTTP_UNAUTHORIZED,
                                    missing
                                    ? "no API key: send it as "
                                      "\"Authorization: Bearer KEY\" or "
                                      "\"x-api-key: KEY\""
                                    : "incorrect API key provided",
                                    NULL,
                                    missing ? "missing_api_key"
                                            : "invalid_api_key");
}


static void
ngx_http_dsv4_auth_redis_done(redisReply *reply, void *data)
{
    char                  err[128];
    ngx_int_t             rc;
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dsv4_ctx_t  *ctx;
    ngx_http_dsv4_lim_t  *lim = data;

    lim->pending = 0;
    r = lim->request;

    if (r == NULL) {
        ngx_http_dsv4_lim_put(lim);     /* the client left meanwhile */
        return;
    }

    c = r->connection;
    ctx = lim->ctx;

    if (reply != NULL
        && dsv4_key_from_redis(reply, lim->key.digest, &lim->key, err,
                               sizeof(err)) == 1)
    {
        lim->has_key = 1;
        rc = ngx_http_dsv4_start(r);
        goto done;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        goto done;
    }

    if (reply == NULL) {
        rc = ngx_http_dsv4_send_error(r, ctx->api,
                                      NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "API keys cannot be checked now "
                                      "(their store does not answer), "
                                      "retry later", NULL, "overloaded");
        goto done;
    }

    if (dsv4_key_from_redis(reply, lim->key.digest, &lim->key, err,
                            sizeof(err)) == 0)
    {
        rc = ngx_http_dsv4_auth_fail(r, ctx, 0);

    } else {
        ngx_http_dsv4_log_fault(NGX_LOG_ERR, c->log, "keys malformed record",
                                "dsv4: key record in redis is malformed: %s",
                                err);
        rc = ngx_http_dsv4_send_error(r, ctx->api,
                                      NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "the API key's record is malformed",
                                      NULL, NULL);
    }

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/*
 * Finds the caller's key.  Returns NGX_DECLINED (ctx->lim has the tenant,
 * or keys are off here), NGX_DONE (Redis is asked; ngx_http_dsv4_start runs
 * when it answers), or what the handler returns for a refusal already sent.
 */

ngx_int_t
ngx_http_dsv4_auth(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx)
{
    char                        hex[65];
    const char                 *argv[2];
    size_t                      argvlen[2];
    u_char                     *p;
    ngx_int_t                   rc;
    ngx_str_t                   raw;
    dsv4_key                   *found;
    ngx_http_dsv4_lim_t        *lim;
    ngx_http_dsv4_keys_t       *kf;
    ngx_http_dsv4_loc_conf_t   *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);
    kf = dlcf->keys;
    lim = ctx->lim;

    if (kf == NULL || kf->source == NGX_HTTP_DSV4_KEYS_OFF || lim == NULL) {
        return NGX_DECLINED;
    }

    raw = ngx_http_dsv4_request_key(r);

    if (raw.len == 0) {
        return ngx_http_dsv4_auth_fail(r, ctx, 1);
    }

    dsv4_key_digest(raw.data, raw.len, lim->key.digest);

    if (kf->source == NGX_HTTP_DSV4_KEYS_FILE) {
        found = bsearch(&lim->key, kf->keys, kf->nkeys, sizeof(dsv4_key),
                        ngx_http_dsv4_key_cmp);

        if (found == NULL) {
            return ngx_http_dsv4_auth_fail(r, ctx, 0);
        }

        lim->key = *found;
        lim->has_key = 1;

        return NGX_DECLINED;
    }

    /* HGETALL <prefix>key:<hex> */

    p = ngx_pnalloc(r->pool, lim->redis->prefix.len + 4 + 64);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    dsv4_key_hex(lim->key.digest, hex);

    argv[0] = "HGETALL";
    argvlen[0] = 7;
    argv[1] = (const char *) p;
    argvlen[1] = ngx_sprintf(p, "%Vkey:%*s", &lim->redis->prefix,
                             (size_t) 64, hex) - p;

    rc = ngx_http_dsv4_redis_send(lim->redis, 2, argv, argvlen,
                                  ngx_http_dsv4_auth_redis_done, lim);

    if (rc != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_dsv4_send_error(r, ctx->api,
                                        NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "API keys cannot be checked now "
                                        "(their store is not connected), "
                                        "retry later", NULL, "overloaded");
    }

    lim->pending = 1;
    r->main->count++;

    return NGX_DONE;
}


/* Whether the caller holds the admin key of this location. */

ngx_uint_t
ngx_http_dsv4_admin(ngx_http_request_t *r)
{
    u_char                     digest[32];
    ngx_str_t                  raw;
    ngx_http_dsv4_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    if (dlcf->admin_key == NULL) {
        return 0;
    }

    raw = ngx_http_dsv4_request_key(r);

    if (raw.len == 0) {
        return 0;
    }

    dsv4_key_digest(raw.data, raw.len, digest);

    return ngx_memcmp(digest, dlcf->admin_key, 32) == 0;
}


/* A key's models= may name a model or any of its aliases. */

ngx_uint_t
ngx_http_dsv4_key_allows(ngx_http_dsv4_ctx_t *ctx, ngx_http_dsv4_prep_t *prep)
{
    ngx_http_dsv4_lim_t  *lim = ctx->lim;

    if (lim == NULL || !lim->has_key || prep->model_name == NULL) {
        return 1;
    }

    return dsv4_key_allows(&lim->key, prep->model_name,
                           ngx_strlen(prep->model_name))
           || (prep->model != NULL
               && dsv4_key_allows(&lim->key,
                                  (const char *) prep->model->name.data,
                                  prep->model->name.len));
}
