
/*
 * Request body -> validated parameters and prompt tokens.
 *
 * Everything here works on malloc'd memory and read-only worker state (the
 * loaded models), never on nginx pools or the event loop, so that it can run
 * in a thread pool (dsv4_thread_pool): tokenizing a long prompt takes
 * milliseconds that the event loop must not spend.  The outcome is either
 * prep->status != 0 with a message naming the offending parameter, or a
 * request ready to submit.
 */


#include "ngx_http_dsv4_module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static ngx_int_t ngx_http_dsv4_prep_grammar(ngx_http_dsv4_prep_t *prep,
    json_t *req);
static ngx_int_t ngx_http_dsv4_fail(ngx_http_dsv4_prep_t *prep,
    ngx_uint_t status, const char *param, const char *code,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static ngx_int_t ngx_http_dsv4_prep_model(ngx_http_dsv4_prep_t *prep);
static ngx_int_t ngx_http_dsv4_prep_sampling(ngx_http_dsv4_prep_t *prep);
static ngx_int_t ngx_http_dsv4_prep_chat(ngx_http_dsv4_prep_t *prep,
    json_t *req);
static ngx_int_t ngx_http_dsv4_prep_completions(ngx_http_dsv4_prep_t *prep);
static ngx_int_t ngx_http_dsv4_prep_tokenize(ngx_http_dsv4_prep_t *prep);
static ngx_int_t ngx_http_dsv4_prep_detokenize(ngx_http_dsv4_prep_t *prep);
static ngx_int_t ngx_http_dsv4_prep_lengths(ngx_http_dsv4_prep_t *prep);


static const char *
ngx_http_dsv4_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}


static ngx_int_t
ngx_http_dsv4_fail(ngx_http_dsv4_prep_t *prep, ngx_uint_t status,
    const char *param, const char *code, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    vsnprintf(prep->err, sizeof(prep->err), fmt, args);
    va_end(args);

    prep->status = status;
    prep->param = param;
    prep->code = code;

    return NGX_ERROR;
}


/* A present, non-null member, or NULL. */

static json_t *
ngx_http_dsv4_get(json_t *obj, const char *key)
{
    json_t  *v;

    v = json_object_get(obj, key);

    return (v == NULL || json_is_null(v)) ? NULL : v;
}


static ngx_int_t
ngx_http_dsv4_get_number(ngx_http_dsv4_prep_t *prep, const char *key,
    double lo, double hi, double *out)
{
    json_t  *v;
    double   d;

    v = ngx_http_dsv4_get(prep->root, key);
    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (!json_is_number(v)) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                  "'%s' must be a number, got %s", key,
                                  ngx_http_dsv4_type_name(v));
    }

    d = json_number_value(v);

    if (!(d >= lo && d <= hi)) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_value",
                                  "'%s' must be in [%g, %g], got %g",
                                  key, lo, hi, d);
    }

    *out = d;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_int_value(ngx_http_dsv4_prep_t *prep, json_t *v,
    const char *key, json_int_t lo, json_int_t hi, json_int_t *out)
{
    double      d;
    json_int_t  n;

    if (json_is_integer(v)) {
        n = json_integer_value(v);

    } else if (json_is_real(v)) {
        d = json_real_value(v);

        if (d != floor(d) || !(d >= -9e18 && d <= 9e18)) {
            return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                      "'%s' must be an integer, got %g",
                                      key, d);
        }

        n = (json_int_t) d;

    } else {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                  "'%s' must be an integer, got %s", key,
                                  ngx_http_dsv4_type_name(v));
    }

    if (n < lo || n > hi) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_value",
                                  "'%s' must be in [%" JSON_INTEGER_FORMAT
                                  ", %" JSON_INTEGER_FORMAT "], got %"
                                  JSON_INTEGER_FORMAT, key, lo, hi, n);
    }

    *out = n;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_get_int(ngx_http_dsv4_prep_t *prep, const char *key,
    json_int_t lo, json_int_t hi, json_int_t *out)
{
    json_t  *v;

    v = ngx_http_dsv4_get(prep->root, key);
    if (v == NULL) {
        return NGX_DECLINED;
    }

    return ngx_http_dsv4_int_value(prep, v, key, lo, hi, out);
}


static ngx_int_t
ngx_http_dsv4_get_bool(ngx_http_dsv4_prep_t *prep, json_t *obj,
    const char *key, ngx_uint_t *out)
{
    json_t  *v;

    v = ngx_http_dsv4_get(obj, key);
    if (v == NULL) {
        return NGX_DECLINED;
    }

    if (!json_is_boolean(v)) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                  "'%s' must be a boolean, got %s", key,
                                  ngx_http_dsv4_type_name(v));
    }

    *out = json_is_true(v);

    return NGX_OK;
}


/* The model a request names: by name or alias (the alias's reasoning mode) */

ngx_http_dsv4_model_t *
ngx_http_dsv4_find_model(ngx_http_dsv4_main_conf_t *dmcf, const char *name,
    size_t len, ngx_int_t *thinking)
{
    ngx_uint_t              i, j;
    ngx_http_dsv4_alias_t  *alias;
    ngx_http_dsv4_model_t  *m;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {

        if (m[i].name.len == len
            && ngx_strncmp(m[i].name.data, name, len) == 0)
        {
            *thinking = m[i].thinking;
            return &m[i];
        }

        alias = m[i].aliases.elts;

        for (j = 0; j < m[i].aliases.nelts; j++) {
            if (alias[j].name.len == len
                && ngx_strncmp(alias[j].name.data, name, len) == 0)
            {
                *thinking = alias[j].thinking >= 0 ? alias[j].thinking
                                                   : m[i].thinking;
                return &m[i];
            }
        }
    }

    return NULL;
}


void
ngx_http_dsv4_prepare(ngx_http_dsv4_prep_t *prep)
{
    json_t        *req;
    json_error_t   je;

    prep->logprobs = -1;
    prep->n = 1;

    if (prep->len == 0) {
        ngx_http_dsv4_fail(prep, 400, NULL, "invalid_json",
                           "the request body is empty; a JSON object is "
                           "expected");
        return;
    }

    prep->root = json_loadb((const char *) prep->body, prep->len, 0, &je);

    if (prep->root == NULL) {
        ngx_http_dsv4_fail(prep, 400, NULL, "invalid_json",
                           "invalid JSON body at line %d column %d: %s",
                           je.line, je.column, je.text);
        return;
    }

    if (!json_is_object(prep->root)) {
        ngx_http_dsv4_fail(prep, 400, NULL, "invalid_json",
                           "the request body must be a JSON object, got %s",
                           ngx_http_dsv4_type_name(prep->root));
        return;
    }

    if (ngx_http_dsv4_prep_model(prep) != NGX_OK) {
        return;
    }

    switch (prep->api) {

    case NGX_HTTP_DSV4_API_TOKENIZE:
        (void) ngx_http_dsv4_prep_tokenize(prep);
        return;

    case NGX_HTTP_DSV4_API_DETOKENIZE:
        (void) ngx_http_dsv4_prep_detokenize(prep);
        return;

    case NGX_HTTP_DSV4_API_CHAT:
        if (ngx_http_dsv4_prep_sampling(prep) != NGX_OK
            || ngx_http_dsv4_prep_chat(prep, prep->root) != NGX_OK)
        {
            return;
        }

        break;

    case NGX_HTTP_DSV4_API_COMPLETIONS:
        if (ngx_http_dsv4_prep_sampling(prep) != NGX_OK
            || ngx_http_dsv4_prep_completions(prep) != NGX_OK)
        {
            return;
        }

        break;

    case NGX_HTTP_DSV4_API_MESSAGES:
        if (ngx_http_dsv4_prep_sampling(prep) != NGX_OK) {
            return;
        }

        req = ngx_http_dsv4_anthropic_to_openai(prep->root, prep->err,
                                                sizeof(prep->err),
                                                &prep->param);
        if (req == NULL) {
            prep->status = prep->err[0] ? 400 : 500;
            prep->code = "invalid_request_error";
            return;
        }

        if (ngx_http_dsv4_prep_chat(prep, req) != NGX_OK) {
            json_decref(req);
            return;
        }

        json_decref(req);
        break;

    default:
        ngx_http_dsv4_fail(prep, 500, NULL, NULL, "unknown API");
        return;
    }

    (void) ngx_http_dsv4_prep_lengths(prep);
}


static ngx_int_t
ngx_http_dsv4_prep_model(ngx_http_dsv4_prep_t *prep)
{
    json_t                 *v;
    ngx_int_t               thinking;
    const char             *name;
    ngx_http_dsv4_model_t  *m;

    v = ngx_http_dsv4_get(prep->root, "model");

    if (v == NULL) {
        if (prep->dmcf->models.nelts == 0) {
            return ngx_http_dsv4_fail(prep, 404, "model", "model_not_found",
                                      "no model is configured");
        }

        m = prep->dmcf->models.elts;
        name = (const char *) m->name.data;
        thinking = m->thinking;

    } else {
        if (!json_is_string(v)) {
            return ngx_http_dsv4_fail(prep, 400, "model", "invalid_type",
                                      "'model' must be a string, got %s",
                                      ngx_http_dsv4_type_name(v));
        }

        name = json_string_value(v);

        m = ngx_http_dsv4_find_model(prep->dmcf, name, json_string_length(v),
                                     &thinking);
        if (m == NULL) {
            return ngx_http_dsv4_fail(prep, 404, "model", "model_not_found",
                                      "The model '%.256s' does not exist",
                                      name);
        }
    }

    if (m->state != NGX_HTTP_DSV4_READY) {
        return ngx_http_dsv4_fail(prep, 503, "model", "model_loading",
                                  "the model '%.256s' is %s", name,
                                  m->state == NGX_HTTP_DSV4_LOADING
                                  ? "still loading" : "not available");
    }

    ngx_memory_barrier();

    prep->model = m;
    prep->thinking_mode = thinking;

    prep->model_name = strdup(name);
    if (prep->model_name == NULL) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_prep_stop(ngx_http_dsv4_prep_t *prep, const char *key)
{
    json_t  *v, *s;
    size_t   i;

    v = ngx_http_dsv4_get(prep->root, key);
    if (v == NULL) {
        return NGX_OK;
    }

    if (json_is_string(v)) {
        if (json_string_length(v) == 0) {
            return NGX_OK;
        }

        prep->stop[0] = strdup(json_string_value(v));
        if (prep->stop[0] == NULL) {
            return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
        }

        prep->nstop = 1;
        return NGX_OK;
    }

    if (!json_is_array(v)) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                  "'%s' must be a string or an array of "
                                  "strings, got %s", key,
                                  ngx_http_dsv4_type_name(v));
    }

    if (json_array_size(v) > NGX_HTTP_DSV4_MAX_STOP) {
        return ngx_http_dsv4_fail(prep, 400, key, "invalid_value",
                                  "'%s' has %zu entries, at most %d are "
                                  "allowed", key, json_array_size(v),
                                  NGX_HTTP_DSV4_MAX_STOP);
    }

    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) {
            return ngx_http_dsv4_fail(prep, 400, key, "invalid_type",
                                      "'%s[%zu]' must be a string, got %s",
                                      key, i, ngx_http_dsv4_type_name(s));
        }

        /* strings with a NUL byte are refused by the JSON parser */

        if (json_string_length(s) == 0) {
            continue;
        }

        prep->stop[prep->nstop] = strdup(json_string_value(s));
        if (prep->stop[prep->nstop] == NULL) {
            return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
        }

        prep->nstop++;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_prep_bias(ngx_http_dsv4_prep_t *prep)
{
    char        *end;
    long         id;
    json_t      *v, *b;
    double       d;
    size_t       n;
    const char  *key;

    v = ngx_http_dsv4_get(prep->root, "logit_bias");
    if (v == NULL) {
        return NGX_OK;
    }

    if (!json_is_object(v)) {
        return ngx_http_dsv4_fail(prep, 400, "logit_bias", "invalid_type",
                                  "'logit_bias' must be an object, got %s",
                                  ngx_http_dsv4_type_name(v));
    }

    n = json_object_size(v);
    if (n == 0) {
        return NGX_OK;
    }

    if (n > 1024) {
        return ngx_http_dsv4_fail(prep, 400, "logit_bias", "invalid_value",
                                  "'logit_bias' has %zu entries, at most "
                                  "1024 are allowed", n);
    }

    prep->bias_ids = malloc(n * sizeof(int32_t));
    prep->bias_values = malloc(n * sizeof(float));

    if (prep->bias_ids == NULL || prep->bias_values == NULL) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    n = 0;

    json_object_foreach(v, key, b) {
        id = strtol(key, &end, 10);

        if (*key == '\0' || *end != '\0' || id < 0
            || id >= prep->model->vocab)
        {
            return ngx_http_dsv4_fail(prep, 400, "logit_bias",
                                      "invalid_value",
                                      "'logit_bias' key \"%.64s\" is not a "
                                      "token id in [0, %d)", key,
                                      (int) prep->model->vocab);
        }

        if (!json_is_number(b)) {
            return ngx_http_dsv4_fail(prep, 400, "logit_bias",
                                      "invalid_type",
                                      "'logit_bias' value for %ld must be a "
                                      "number, got %s", id,
                                      ngx_http_dsv4_type_name(b));
        }

        d = json_number_value(b);

        if (!(d >= -DSV4_SAMPLE_MAX_BIAS && d <= DSV4_SAMPLE_MAX_BIAS)) {
            return ngx_http_dsv4_fail(prep, 400, "logit_bias",
                                      "invalid_value",
                                      "'logit_bias' value for %ld must be "
                                      "in [-100, 100], got %g", id, d);
        }

        prep->bias_ids[n] = (int32_t) id;
        prep->bias_values[n] = (float) d;
        n++;
    }

    prep->sample.bias_ids = prep->bias_ids;
    prep->sample.bias_values = prep->bias_values;
    prep->sample.n_bias = (int) n;

    return NGX_OK;
}


/*
 * Sampling and output parameters shared by the generating APIs.  Names
 * follow OpenAI (and vLLM for top_k, min_p, repetition_penalty); the
 * Anthropic names are read too (top_k, stop_sequences).
 */

static ngx_int_t
ngx_http_dsv4_prep_sampling(ngx_http_dsv4_prep_t *prep)
{
    json_t                 *v;
    double                  d;
    ngx_int_t               rc;
    json_int_t              n;
    ngx_uint_t              flag;
    ngx_http_dsv4_model_t  *m;

    m = prep->model;

    dsv4_sample_params_default(&prep->sample);

    if (!isnan(m->temperature)) {
        prep->sample.temperature = m->temperature;
    }

    if (!isnan(m->top_p)) {
        prep->sample.top_p = m->top_p;
    }

    if (!isnan(m->min_p)) {
        prep->sample.min_p = m->min_p;
    }

    if (m->top_k >= 0) {
        prep->sample.top_k = (int) m->top_k;
    }

    rc = ngx_http_dsv4_get_number(prep, "temperature", 0,
                                  DSV4_SAMPLE_MAX_TEMPERATURE, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        prep->sample.temperature = (float) d;
    }

    rc = ngx_http_dsv4_get_number(prep, "top_p", 0, 1, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        if (d <= 0) {
            return ngx_http_dsv4_fail(prep, 400, "top_p", "invalid_value",
                                      "'top_p' must be in (0, 1], got %g", d);
        }

        prep->sample.top_p = (float) d;
    }

    rc = ngx_http_dsv4_get_number(prep, "min_p", 0, 1, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        prep->sample.min_p = (float) d;
    }

    rc = ngx_http_dsv4_get_int(prep, "top_k", -1, 1000000000, &n);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        prep->sample.top_k = (int) n;
    }

    rc = ngx_http_dsv4_get_number(prep, "frequency_penalty",
                                  -DSV4_SAMPLE_MAX_PENALTY,
                                  DSV4_SAMPLE_MAX_PENALTY, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        prep->sample.frequency_penalty = (float) d;
    }

    rc = ngx_http_dsv4_get_number(prep, "presence_penalty",
                                  -DSV4_SAMPLE_MAX_PENALTY,
                                  DSV4_SAMPLE_MAX_PENALTY, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        prep->sample.presence_penalty = (float) d;
    }

    rc = ngx_http_dsv4_get_number(prep, "repetition_penalty", 0, 100, &d);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        if (d <= 0) {
            return ngx_http_dsv4_fail(prep, 400, "repetition_penalty",
                                      "invalid_value",
                                      "'repetition_penalty' must be > 0, "
                                      "got %g", d);
        }

        prep->sample.repetition_penalty = (float) d;
    }

    v = ngx_http_dsv4_get(prep->root, "seed");

    if (v != NULL) {
        if (ngx_http_dsv4_int_value(prep, v, "seed", INT64_MIN, INT64_MAX, &n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        prep->sample.seed = (uint64_t) n;
        prep->seed_given = 1;
    }

    if (ngx_http_dsv4_prep_bias(prep) != NGX_OK) {
        return NGX_ERROR;
    }

    /* n */

    rc = ngx_http_dsv4_get_int(prep, "n", 1, prep->max_n, &n);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    prep->n = (rc == NGX_OK) ? (ngx_uint_t) n : 1;

    if (prep->api == NGX_HTTP_DSV4_API_MESSAGES) {
        prep->n = 1;
    }

    /* max_tokens: the completion budget, checked against the context later */

    prep->max_tokens = 0;

    rc = ngx_http_dsv4_get_int(prep, "max_completion_tokens", 1,
                               prep->max_tokens_limit, &n);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_DECLINED) {
        rc = ngx_http_dsv4_get_int(prep, "max_tokens", 1,
                                   prep->max_tokens_limit, &n);
        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    if (rc == NGX_OK) {
        prep->max_tokens = (ngx_int_t) n;

    } else if (prep->api == NGX_HTTP_DSV4_API_MESSAGES) {
        return ngx_http_dsv4_fail(prep, 400, "max_tokens", "missing_required",
                                  "'max_tokens' is required");
    }

    /* streaming */

    if (ngx_http_dsv4_get_bool(prep, prep->root, "stream", &prep->stream)
        == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    v = ngx_http_dsv4_get(prep->root, "stream_options");

    if (v != NULL) {
        if (!json_is_object(v)) {
            return ngx_http_dsv4_fail(prep, 400, "stream_options",
                                      "invalid_type",
                                      "'stream_options' must be an object, "
                                      "got %s", ngx_http_dsv4_type_name(v));
        }

        if (ngx_http_dsv4_get_bool(prep, v, "include_usage",
                                   &prep->include_usage)
            == NGX_ERROR)
        {
            prep->param = "stream_options.include_usage";
            return NGX_ERROR;
        }
    }

    /* logprobs */

    if (prep->api == NGX_HTTP_DSV4_API_CHAT) {

        flag = 0;

        if (ngx_http_dsv4_get_bool(prep, prep->root, "logprobs", &flag)
            == NGX_ERROR)
        {
            return NGX_ERROR;
        }

        rc = ngx_http_dsv4_get_int(prep, "top_logprobs", 0,
                                   NGX_HTTP_DSV4_MAX_LOGPROBS, &n);
        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_OK && !flag) {
            return ngx_http_dsv4_fail(prep, 400, "top_logprobs",
                                      "invalid_value",
                                      "'top_logprobs' requires 'logprobs' "
                                      "to be true");
        }

        if (flag) {
            prep->logprobs = (rc == NGX_OK) ? (ngx_int_t) n : 0;
        }

    } else if (prep->api == NGX_HTTP_DSV4_API_COMPLETIONS) {

        rc = ngx_http_dsv4_get_int(prep, "logprobs", 0,
                                   NGX_HTTP_DSV4_MAX_LOGPROBS, &n);
        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_OK) {
            prep->logprobs = (ngx_int_t) n;
        }

        if (ngx_http_dsv4_get_bool(prep, prep->root, "echo", &prep->echo)
            == NGX_ERROR)
        {
            return NGX_ERROR;
        }
    }

    /* stop strings */

    if (ngx_http_dsv4_prep_stop(prep,
                                prep->api == NGX_HTTP_DSV4_API_MESSAGES
                                ? "stop_sequences" : "stop")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    v = ngx_http_dsv4_get(prep->root, "tool_choice");

    if (v != NULL) {
        if (json_is_string(v)
            && ngx_strcmp(json_string_value(v), "none") == 0)
        {
            prep->tool_choice_none = 1;

        } else if (json_is_object(v)) {
            v = ngx_http_dsv4_get(v, "type");

            if (json_is_string(v)
                && ngx_strcmp(json_string_value(v), "none") == 0)
            {
                prep->tool_choice_none = 1;
            }

        } else if (!json_is_string(v)) {
            return ngx_http_dsv4_fail(prep, 400, "tool_choice",
                                      "invalid_type",
                                      "'tool_choice' must be a string or an "
                                      "object, got %s",
                                      ngx_http_dsv4_type_name(v));
        }
    }

    if (dsv4_sample_params_check(&prep->sample, (int) prep->model->vocab,
                                 prep->err, sizeof(prep->err))
        != 0)
    {
        prep->status = 400;
        prep->code = "invalid_value";
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_alloc_prompts(ngx_http_dsv4_prep_t *prep, ngx_uint_t n)
{
    prep->prompts = calloc(n, sizeof(int32_t *));
    prep->nids = calloc(n, sizeof(int));
    prep->prompt_texts = calloc(n, sizeof(char *));

    if (prep->prompts == NULL || prep->nids == NULL
        || prep->prompt_texts == NULL)
    {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    prep->nprompts = n;

    return NGX_OK;
}


/*
 * Tokenizes text into prompt i; with bos, prepends BOS unless the text
 * already starts with it.
 */

static ngx_int_t
ngx_http_dsv4_encode(ngx_http_dsv4_prep_t *prep, ngx_uint_t i,
    const char *text, size_t len, ngx_uint_t bos, const char *param)
{
    int       rc;
    size_t    n;
    int32_t  *ids, *p, bos_id;

    if (prep->model->tok == NULL) {
        return ngx_http_dsv4_fail(prep, 400, param, "no_tokenizer",
                                  "the model '%s' has no tokenizer: send "
                                  "token ids", prep->model_name);
    }

    rc = dsv4_tokenizer_encode_alloc(prep->model->tok, text, len, &ids, &n);

    if (rc == DSV4_TOK_EINVAL) {
        return ngx_http_dsv4_fail(prep, 400, param, "invalid_value",
                                  "'%s' is not valid UTF-8", param);
    }

    if (rc != DSV4_TOK_OK) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL,
                                  "tokenizer error %d", rc);
    }

    bos_id = dsv4_tokenizer_bos_id(prep->model->tok);

    if (bos && bos_id >= 0 && (n == 0 || ids[0] != bos_id)) {
        p = malloc((n + 1) * sizeof(int32_t));
        if (p == NULL) {
            free(ids);
            return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
        }

        p[0] = bos_id;
        ngx_memcpy(p + 1, ids, n * sizeof(int32_t));
        free(ids);
        ids = p;
        n++;
    }

    if (n > 0x7fffffff) {
        free(ids);
        return ngx_http_dsv4_fail(prep, 400, param, "context_length_exceeded",
                                  "the prompt is too long");
    }

    prep->prompts[i] = ids;
    prep->nids[i] = (int) n;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_prep_chat(ngx_http_dsv4_prep_t *prep, json_t *req)
{
    int                rc;
    json_t            *msgs;
    dsv4_chat_prompt   prompt;
    dsv4_chat_options  opt;

    msgs = json_object_get(req, "messages");

    if (msgs == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "messages", "missing_required",
                                  "'messages' is required");
    }

    if (!json_is_array(msgs)) {
        return ngx_http_dsv4_fail(prep, 400, "messages", "invalid_type",
                                  "'messages' must be an array, got %s",
                                  ngx_http_dsv4_type_name(msgs));
    }

    if (json_array_size(msgs) == 0) {
        return ngx_http_dsv4_fail(prep, 400, "messages", "invalid_value",
                                  "'messages' must not be empty");
    }

    dsv4_chat_options_default(&opt);
    opt.thinking = (int) prep->thinking_mode;

    rc = dsv4_chat_encode(req, &opt, &prompt, prep->err, sizeof(prep->err));

    if (rc == -2) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    if (rc != 0) {
        prep->status = 400;
        prep->param = "messages";
        prep->code = "invalid_value";
        return NGX_ERROR;
    }

    prep->thinking_mode = prompt.thinking;
    prep->thinking = prompt.reasoning_open;
    prep->tools = prompt.has_tools && !prep->tool_choice_none;

    if (ngx_http_dsv4_alloc_prompts(prep, 1) != NGX_OK
        || ngx_http_dsv4_encode(prep, 0, prompt.text, prompt.len, 0,
                                "messages")
           != NGX_OK)
    {
        dsv4_chat_prompt_free(&prompt);
        return NGX_ERROR;
    }

    dsv4_chat_prompt_free(&prompt);

    return ngx_http_dsv4_prep_grammar(prep, req);
}


/*
 * The output grammar (engine/constrain.h) of a chat request: a forced tool
 * call for tool_choice "required" or a named function, else a JSON object
 * for response_format json_object / json_schema; none otherwise.
 */

static ngx_int_t
ngx_http_dsv4_prep_grammar(ngx_http_dsv4_prep_t *prep, json_t *req)
{
    json_t      *tc, *rf, *v;
    const char  *type, *name;

    tc = ngx_http_dsv4_get(req, "tool_choice");
    name = NULL;

    if (json_is_object(tc)) {
        name = json_string_value(json_object_get(json_object_get(tc,
                                                                 "function"),
                                                 "name"));
        if (name == NULL) {
            return ngx_http_dsv4_fail(prep, 400, "tool_choice",
                                      "invalid_value",
                                      "'tool_choice' must name a function: "
                                      "{\"type\": \"function\", "
                                      "\"function\": {\"name\": ...}}");
        }
    }

    if (name != NULL
        || (json_is_string(tc)
            && ngx_strcmp(json_string_value(tc), "required") == 0))
    {
        prep->grammar = dsv4_grammar_tool_call(ngx_http_dsv4_get(req, "tools"),
                                               name, (int) prep->thinking,
                                               prep->err, sizeof(prep->err));
        if (prep->grammar == NULL) {
            prep->status = 400;
            prep->param = "tool_choice";
            prep->code = "invalid_value";
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    rf = ngx_http_dsv4_get(req, "response_format");
    type = json_string_value(json_object_get(rf, "type"));

    if (type == NULL || ngx_strcmp(type, "text") == 0) {
        return NGX_OK;
    }

    if (ngx_strcmp(type, "json_object") == 0) {
        v = NULL;

    } else if (ngx_strcmp(type, "json_schema") == 0) {
        v = json_object_get(json_object_get(rf, "json_schema"), "schema");

        if (!json_is_object(v)) {
            return ngx_http_dsv4_fail(prep, 400, "response_format",
                                      "invalid_value",
                                      "'response_format.json_schema.schema' "
                                      "must be an object");
        }

    } else {
        return ngx_http_dsv4_fail(prep, 400, "response_format",
                                  "invalid_value",
                                  "'response_format.type' must be \"text\", "
                                  "\"json_object\" or \"json_schema\", "
                                  "got \"%s\"", type);
    }

    prep->grammar = dsv4_grammar_json(v, (int) prep->thinking, prep->err,
                                      sizeof(prep->err));
    if (prep->grammar == NULL) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    return NGX_OK;
}


/* A prompt given as token ids: [int, ...]. */

static ngx_int_t
ngx_http_dsv4_prompt_ids(ngx_http_dsv4_prep_t *prep, ngx_uint_t i,
    json_t *arr, const char *param)
{
    size_t      k, n;
    json_t     *v;
    int32_t    *ids;
    json_int_t  id;

    n = json_array_size(arr);

    if (n == 0) {
        return ngx_http_dsv4_fail(prep, 400, param, "invalid_value",
                                  "'%s' must not be empty", param);
    }

    if (n > 0x7fffffff) {
        return ngx_http_dsv4_fail(prep, 400, param, "context_length_exceeded",
                                  "the prompt is too long");
    }

    ids = malloc(n * sizeof(int32_t));
    if (ids == NULL) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    prep->prompts[i] = ids;

    json_array_foreach(arr, k, v) {
        if (!json_is_integer(v)) {
            return ngx_http_dsv4_fail(prep, 400, param, "invalid_type",
                                      "'%s' token %zu must be an integer, "
                                      "got %s", param, k,
                                      ngx_http_dsv4_type_name(v));
        }

        id = json_integer_value(v);

        if (id < 0 || id >= prep->model->vocab) {
            return ngx_http_dsv4_fail(prep, 400, param, "invalid_value",
                                      "'%s' token %zu is %" JSON_INTEGER_FORMAT
                                      ", outside the vocabulary [0, %d)",
                                      param, k, id, (int) prep->model->vocab);
        }

        ids[k] = (int32_t) id;
    }

    prep->nids[i] = (int) n;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_prep_completions(ngx_http_dsv4_prep_t *prep)
{
    json_t      *p, *v;
    size_t       i, n;

    p = ngx_http_dsv4_get(prep->root, "prompt");

    if (p == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "prompt", "missing_required",
                                  "'prompt' is required");
    }

    if (json_is_string(p)) {
        if (ngx_http_dsv4_alloc_prompts(prep, 1) != NGX_OK) {
            return NGX_ERROR;
        }

        prep->prompt_texts[0] = strdup(json_string_value(p));
        if (prep->prompt_texts[0] == NULL) {
            return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
        }

        return ngx_http_dsv4_encode(prep, 0, json_string_value(p),
                                    json_string_length(p), 1, "prompt");
    }

    if (!json_is_array(p) || json_array_size(p) == 0) {
        return ngx_http_dsv4_fail(prep, 400, "prompt", "invalid_type",
                                  "'prompt' must be a string, an array of "
                                  "strings, an array of token ids or an "
                                  "array of such arrays");
    }

    v = json_array_get(p, 0);

    if (json_is_integer(v)) {
        if (ngx_http_dsv4_alloc_prompts(prep, 1) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_dsv4_prompt_ids(prep, 0, p, "prompt");
    }

    n = json_array_size(p);

    if (n * prep->n > (size_t) prep->max_n) {
        return ngx_http_dsv4_fail(prep, 400, "prompt", "invalid_value",
                                  "%zu prompts with n=%d make more than %d "
                                  "completions", n, (int) prep->n,
                                  (int) prep->max_n);
    }

    if (ngx_http_dsv4_alloc_prompts(prep, n) != NGX_OK) {
        return NGX_ERROR;
    }

    json_array_foreach(p, i, v) {

        if (json_is_string(v)) {
            prep->prompt_texts[i] = strdup(json_string_value(v));
            if (prep->prompt_texts[i] == NULL) {
                return ngx_http_dsv4_fail(prep, 500, NULL, NULL,
                                          "out of memory");
            }

            if (ngx_http_dsv4_encode(prep, i, json_string_value(v),
                                     json_string_length(v), 1, "prompt")
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        if (json_is_array(v)) {
            if (ngx_http_dsv4_prompt_ids(prep, i, v, "prompt") != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        return ngx_http_dsv4_fail(prep, 400, "prompt", "invalid_type",
                                  "'prompt[%zu]' must be a string or an "
                                  "array of token ids, got %s", i,
                                  ngx_http_dsv4_type_name(v));
    }

    return NGX_OK;
}


/*
 * Prompt lengths against the limits; resolves max_tokens when the request
 * gave none (the model's default, else what the context leaves).
 */

static ngx_int_t
ngx_http_dsv4_prep_lengths(ngx_http_dsv4_prep_t *prep)
{
    ngx_int_t               ctx, longest, room, want;
    ngx_uint_t              i;
    ngx_http_dsv4_model_t  *m;

    m = prep->model;
    ctx = m->ctx_len;
    longest = 0;

    for (i = 0; i < prep->nprompts; i++) {
        if (prep->nids[i] == 0) {
            return ngx_http_dsv4_fail(prep, 400, "prompt", "invalid_value",
                                      "the prompt is empty");
        }

        if (prep->nids[i] > longest) {
            longest = prep->nids[i];
        }
    }

    if (prep->max_prompt_tokens && longest > prep->max_prompt_tokens) {
        return ngx_http_dsv4_fail(prep, 400,
                                  prep->api == NGX_HTTP_DSV4_API_COMPLETIONS
                                  ? "prompt" : "messages",
                                  "context_length_exceeded",
                                  "the prompt has %d tokens, more than the "
                                  "limit of %d", (int) longest,
                                  (int) prep->max_prompt_tokens);
    }

    if (longest >= ctx) {
        return ngx_http_dsv4_fail(prep, 400,
                                  prep->api == NGX_HTTP_DSV4_API_COMPLETIONS
                                  ? "prompt" : "messages",
                                  "context_length_exceeded",
                                  "This model's maximum context length is %d "
                                  "tokens. However, your prompt has %d "
                                  "tokens", (int) ctx, (int) longest);
    }

    room = ctx - longest;

    if (prep->max_tokens) {
        if (prep->max_tokens > room) {
            return ngx_http_dsv4_fail(prep, 400, "max_tokens",
                                      "context_length_exceeded",
                                      "This model's maximum context length "
                                      "is %d tokens. However, you requested "
                                      "%d tokens (%d in the prompt, %d for "
                                      "the completion)", (int) ctx,
                                      (int) (longest + prep->max_tokens),
                                      (int) longest, (int) prep->max_tokens);
        }

        return NGX_OK;
    }

    want = m->max_tokens ? m->max_tokens : room;

    if (want > room) {
        want = room;
    }

    if (want > prep->max_tokens_limit) {
        want = prep->max_tokens_limit;
    }

    prep->max_tokens = want;

    return NGX_OK;
}


static ngx_int_t
ngx_http_dsv4_prep_tokenize(ngx_http_dsv4_prep_t *prep)
{
    json_t            *p;
    ngx_uint_t         add;
    dsv4_chat_prompt   prompt;
    dsv4_chat_options  opt;
    int                rc;

    if (prep->model->tok == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "model", "no_tokenizer",
                                  "the model '%s' has no tokenizer",
                                  prep->model_name);
    }

    add = 1;

    if (ngx_http_dsv4_get_bool(prep, prep->root, "add_special_tokens", &add)
        == NGX_ERROR
        || ngx_http_dsv4_get_bool(prep, prep->root, "return_token_strs",
                                  &prep->return_strs)
           == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    prep->add_special = add;

    if (ngx_http_dsv4_alloc_prompts(prep, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    p = ngx_http_dsv4_get(prep->root, "prompt");

    if (p != NULL) {
        if (!json_is_string(p)) {
            return ngx_http_dsv4_fail(prep, 400, "prompt", "invalid_type",
                                      "'prompt' must be a string, got %s",
                                      ngx_http_dsv4_type_name(p));
        }

        return ngx_http_dsv4_encode(prep, 0, json_string_value(p),
                                    json_string_length(p), add, "prompt");
    }

    p = ngx_http_dsv4_get(prep->root, "messages");

    if (p == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "prompt", "missing_required",
                                  "'prompt' or 'messages' is required");
    }

    dsv4_chat_options_default(&opt);
    opt.thinking = (int) prep->thinking_mode;
    opt.add_bos = (int) add;

    rc = dsv4_chat_encode(prep->root, &opt, &prompt, prep->err,
                          sizeof(prep->err));
    if (rc == -2) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL, "out of memory");
    }

    if (rc != 0) {
        prep->status = 400;
        prep->param = "messages";
        prep->code = "invalid_value";
        return NGX_ERROR;
    }

    rc = ngx_http_dsv4_encode(prep, 0, prompt.text, prompt.len, 0,
                              "messages");

    dsv4_chat_prompt_free(&prompt);

    return rc;
}


static ngx_int_t
ngx_http_dsv4_prep_detokenize(ngx_http_dsv4_prep_t *prep)
{
    int      rc;
    char    *text;
    size_t   len;
    json_t  *t;

    if (prep->model->tok == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "model", "no_tokenizer",
                                  "the model '%s' has no tokenizer",
                                  prep->model_name);
    }

    t = ngx_http_dsv4_get(prep->root, "tokens");

    if (t == NULL) {
        return ngx_http_dsv4_fail(prep, 400, "tokens", "missing_required",
                                  "'tokens' is required");
    }

    if (!json_is_array(t)) {
        return ngx_http_dsv4_fail(prep, 400, "tokens", "invalid_type",
                                  "'tokens' must be an array of token ids, "
                                  "got %s", ngx_http_dsv4_type_name(t));
    }

    if (ngx_http_dsv4_alloc_prompts(prep, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    if (json_array_size(t) > 0
        && ngx_http_dsv4_prompt_ids(prep, 0, t, "tokens") != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = dsv4_tokenizer_decode(prep->model->tok, prep->prompts[0],
                               (size_t) prep->nids[0], &text, &len);

    if (rc == DSV4_TOK_EINVAL) {
        return ngx_http_dsv4_fail(prep, 400, "tokens", "invalid_value",
                                  "'tokens' contains an id with no token");
    }

    if (rc != DSV4_TOK_OK) {
        return ngx_http_dsv4_fail(prep, 500, NULL, NULL,
                                  "tokenizer error %d", rc);
    }

    prep->prompt_texts[0] = text;

    return NGX_OK;
}


/* Prompt tokens of the request: each prompt once, whatever n is. */

ngx_uint_t
ngx_http_dsv4_prep_prompt_tokens(ngx_http_dsv4_prep_t *prep)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < prep->nprompts; i++) {
        n += prep->nids[i];
    }

    return n;
}


void
ngx_http_dsv4_prep_free(ngx_http_dsv4_prep_t *prep)
{
    ngx_uint_t  i;

    if (prep == NULL) {
        return;
    }

    if (prep->root) {
        json_decref(prep->root);
    }

    for (i = 0; i < prep->nprompts; i++) {
        free(prep->prompts[i]);
        free(prep->prompt_texts[i]);
    }

    free(prep->prompts);
    free(prep->nids);
    free(prep->prompt_texts);
    free(prep->bias_ids);
    free(prep->bias_values);
    free(prep->model_name);
    dsv4_grammar_unref(prep->grammar);

    for (i = 0; i < prep->nstop; i++) {
        free(prep->stop[i]);
    }

    free(prep);
}
