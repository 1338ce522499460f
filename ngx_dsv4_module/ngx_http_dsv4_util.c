
/*
 * The small APIs: GET /v1/models, GET /health, POST /tokenize and
 * POST /detokenize (vLLM's shapes).
 */


#include "ngx_http_dsv4_module.h"


static json_t *
ngx_http_dsv4_model_entry(ngx_str_t *id, ngx_http_dsv4_model_t *m,
    time_t created)
{
    json_t  *o;

    o = json_pack("{s:s%,s:s,s:I,s:s,s:s%,s:s%}",
                  "id", (char *) id->data, id->len,
                  "object", "model",
                  "created", (json_int_t) created,
                  "owned_by", "dsv4",
                  "root", (char *) m->name.data, m->name.len,
                  "parent", (char *) m->name.data, m->name.len);
    if (o == NULL) {
        return NULL;
    }

    if (m->ctx_len
        && json_object_set_new(o, "max_model_len",
                               json_integer((json_int_t) m->ctx_len))
           != 0)
    {
        json_decref(o);
        return NULL;
    }

    return o;
}


static ngx_str_t  ngx_http_dsv4_json_ct = ngx_string("application/json");


/* Every declared model and alias (aliases name their model as "root").  The
 * list only changes with the configuration, and "created" with the clock,
 * so the body is rendered once per second and copied from there. */

ngx_int_t
ngx_http_dsv4_models_handler(ngx_http_request_t *r)
{
    u_char                     *p;
    size_t                      len;
    json_t                     *data, *e, *body;
    ngx_uint_t                  i, j;
    ngx_http_dsv4_alias_t      *alias;
    ngx_http_dsv4_model_t      *m;
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dsv4_module);

    if (dmcf->models_body.data == NULL || dmcf->models_time != ngx_time()) {

        data = json_array();
        if (data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        m = dmcf->models.elts;

        for (i = 0; i < dmcf->models.nelts; i++) {

            e = ngx_http_dsv4_model_entry(&m[i].name, &m[i], ngx_time());
            if (e == NULL || json_array_append_new(data, e) != 0) {
                json_decref(data);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            alias = m[i].aliases.elts;

            for (j = 0; j < m[i].aliases.nelts; j++) {
                e = ngx_http_dsv4_model_entry(&alias[j].name, &m[i],
                                              ngx_time());
                if (e == NULL || json_array_append_new(data, e) != 0) {
                    json_decref(data);
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }
        }

        body = json_pack("{s:s,s:o}", "object", "list", "data", data);
        p = body ? (u_char *) json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);

        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        free(dmcf->models_body.data);
        dmcf->models_body.data = p;
        dmcf->models_body.len = ngx_strlen(p);
        dmcf->models_time = ngx_time();
    }

    /* the response gets its own copy: the cache may be re-rendered while a
     * slow client is still being sent this one */
    len = dmcf->models_body.len;

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, dmcf->models_body.data, len);
    p[len++] = '\n';

    return ngx_http_dsv4_send_text(r, NGX_HTTP_OK, &ngx_http_dsv4_json_ct, p,
                                   len);
}


/* 200 once every model is loaded in this worker; 503 with the reason. */

ngx_int_t
ngx_http_dsv4_health_handler(ngx_http_request_t *r)
{
    json_t                     *models, *e;
    ngx_uint_t                  i, ready;
    const char                 *state;
    ngx_http_dsv4_model_t      *m;
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_http_get_module_main_conf(r, ngx_http_dsv4_module);

    models = json_object();
    if (models == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    m = dmcf->models.elts;
    ready = 1;

    for (i = 0; i < dmcf->models.nelts; i++) {

        if (m[i].notify != NULL) {
            state = "ready";

        } else {
            ready = 0;
            state = (m[i].settled && m[i].state == NGX_HTTP_DSV4_FAILED)
                    ? "failed" : "loading";
        }

        if (m[i].settled && m[i].state == NGX_HTTP_DSV4_FAILED) {
            e = json_pack("{s:s,s:s}", "state", state, "error", m[i].error);

        } else {
            e = json_pack("{s:s}", "state", state);
        }

        if (e == NULL
            || json_object_setn_new(models, (char *) m[i].name.data,
                                    m[i].name.len, e)
               != 0)
        {
            json_decref(models);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ready) {
        return ngx_http_dsv4_send_json(r, NGX_HTTP_OK,
                                       json_pack("{s:s,s:o}", "status", "ok",
                                                 "models", models));
    }

    /* 503 in the error shape, with every model's state */

    if (ngx_http_dsv4_retry_after(r) != NGX_OK) {
        json_decref(models);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "dsv4: 503 a model is not loaded");

    return ngx_http_dsv4_send_json(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               json_pack("{s:s,s:o,s:{s:s,s:s,s:n,s:s}}",
                         "status", "unavailable", "models", models,
                         "error", "message", "a model is not loaded",
                         "type", "service_unavailable_error", "param",
                         "code", "model_loading"));
}


ngx_int_t
ngx_http_dsv4_tokenize(ngx_http_request_t *r, ngx_http_dsv4_prep_t *prep)
{
    int       i;
    json_t   *body, *tokens, *strs, *t;

    tokens = json_array();
    strs = prep->return_strs ? json_array() : NULL;

    if (tokens == NULL || (prep->return_strs && strs == NULL)) {
        json_decref(tokens);
        json_decref(strs);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < prep->nids[0]; i++) {
        if (json_array_append_new(tokens, json_integer(prep->prompts[0][i]))
            != 0)
        {
            goto failed;
        }

        if (strs) {
            t = ngx_http_dsv4_json_token(prep->model->tok,
                                         prep->prompts[0][i]);

            if (t == NULL
                || json_array_append(strs, json_object_get(t, "token")) != 0)
            {
                json_decref(t);
                goto failed;
            }

            json_decref(t);
        }
    }

    body = json_pack("{s:i,s:I,s:o}", "count", prep->nids[0],
                     "max_model_len", (json_int_t) prep->model->ctx_len,
                     "tokens", tokens);
    tokens = NULL;

    if (body == NULL) {
        goto failed;
    }

    if (strs && json_object_set_new(body, "token_strs", strs) != 0) {
        strs = NULL;
        json_decref(body);
        goto failed;
    }

    return ngx_http_dsv4_send_json(r, NGX_HTTP_OK, body);

failed:

    json_decref(tokens);
    json_decref(strs);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


ngx_int_t
ngx_http_dsv4_detokenize(ngx_http_request_t *r, ngx_http_dsv4_prep_t *prep)
{
    return ngx_http_dsv4_send_json(r, NGX_HTTP_OK,
                                   json_pack("{s:s}", "prompt",
                                             prep->prompt_texts[0]));
}
