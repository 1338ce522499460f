/*
 * nginx's own error responses on dsv4's servers, in the API's JSON shape.
 *
 * nginx answers some requests before or instead of the module: a body over
 * client_max_body_size (checked when the location is found), a request
 * line or header it cannot parse or that is too large (before any location
 * is known), a URI too long, an unmatched path.  Its pages are HTML, which
 * the OpenAI and Anthropic SDKs cannot read as an error.  A header and a
 * body filter replace those pages -- only nginx's built-in ones
 * (r->err_status set, no error_page of the operator's applied) -- on dsv4
 * locations (in the location's API shape) and on the server level of
 * servers that hold one (in the shape both SDKs read).  The status, the
 * connection handling and nginx's own log line are left as they are.
 *
 * A body that stops arriving (client_body_timeout) makes nginx close the
 * connection without an answer; on dsv4 locations the client gets a 408 in
 * the API's shape first.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dsv4_module.h"


typedef struct {
    ngx_uint_t                  status;
    const char                 *code;
    const char                 *message;
} ngx_http_dsv4_nginx_error_t;


static ngx_int_t ngx_http_dsv4_error_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_dsv4_error_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_dsv4_nginx_error_body(ngx_http_request_t *r,
    ngx_str_t *text);
static void ngx_http_dsv4_body_timeout_handler(ngx_http_request_t *r);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

/*
 * The content type the header filter sets: the address of its bytes marks
 * the request for the body filter (an array of its own, unlike a literal,
 * which the compiler may share with other "application/json"s).
 */
static u_char     ngx_http_dsv4_error_type_data[] = "application/json";
static ngx_str_t  ngx_http_dsv4_error_type_json = {
    sizeof(ngx_http_dsv4_error_type_data) - 1, ngx_http_dsv4_error_type_data
};


/* what nginx's statuses mean to an API client; others: the status alone */

static ngx_http_dsv4_nginx_error_t  ngx_http_dsv4_nginx_errors[] = {
    { NGX_HTTP_BAD_REQUEST, "bad_request",
      "the server could not parse the request: a malformed request line or "
      "header, or headers larger than the server accepts" },
    { NGX_HTTP_FORBIDDEN, "forbidden", "access to this path is forbidden" },
    { NGX_HTTP_NOT_FOUND, "not_found", "no API is served at this path" },
    { NGX_HTTP_NOT_ALLOWED, "method_not_allowed",
      "this method is not allowed here" },
    { NGX_HTTP_LENGTH_REQUIRED, "length_required",
      "the request body needs a Content-Length or chunked encoding" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "request_too_large",
      "the request body is larger than the server accepts" },
    { NGX_HTTP_REQUEST_URI_TOO_LARGE, "uri_too_long",
      "the request URI is longer than the server accepts" },
    { NGX_HTTP_TOO_MANY_REQUESTS, "rate_limit_exceeded",
      "too many requests" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "internal_error",
      "internal server error" },
    { NGX_HTTP_BAD_GATEWAY, "bad_gateway", "bad gateway" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "service_unavailable",
      "the service is temporarily unavailable" },
    { NGX_HTTP_GATEWAY_TIME_OUT, "gateway_timeout", "gateway timeout" },
    { 0, NULL, "the server could not answer this request" }
};


ngx_int_t
ngx_http_dsv4_errors_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_dsv4_error_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_dsv4_error_body_filter;

    return NGX_OK;
}


/* The API whose shape nginx's error page takes here, or NGX_DECLINED. */

static ngx_int_t
ngx_http_dsv4_nginx_error_api(ngx_http_request_t *r)
{
    ngx_http_dsv4_loc_conf_t  *dlcf;

    if (r != r->main || r->err_status < NGX_HTTP_BAD_REQUEST
        || r->error_page)
    {
        return NGX_DECLINED;
    }

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dsv4_module);

    if (dlcf == NULL) {
        return NGX_DECLINED;
    }

    if (dlcf->api != NGX_HTTP_DSV4_API_NONE) {
        return dlcf->api;
    }

    return dlcf->json_errors ? NGX_HTTP_DSV4_API_NONE : NGX_DECLINED;
}


static ngx_int_t
ngx_http_dsv4_error_header_filter(ngx_http_request_t *r)
{
    ngx_int_t  api;
    ngx_str_t  text;

    api = ngx_http_dsv4_nginx_error_api(r);

    if (api == NGX_DECLINED) {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_dsv4_nginx_error_body(r, &text) != NGX_OK) {
        return NGX_ERROR;
    }

    if (api != NGX_HTTP_DSV4_API_NONE) {
        ngx_http_dsv4_metrics_status(api, r->err_status);
    }

    r->headers_out.content_type = ngx_http_dsv4_error_type_json;
    r->headers_out.content_type_len = ngx_http_dsv4_error_type_json.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;
    r->headers_out.content_length_n = text.len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * nginx's page is dropped and the JSON sent in its place when its last
 * buffer passes (nginx writes the page in one call).
 */

static ngx_int_t
ngx_http_dsv4_error_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t    *b;
    ngx_str_t     text;
    ngx_uint_t    last;
    ngx_chain_t  *cl, out;

    if (r->headers_out.content_type.data
        != ngx_http_dsv4_error_type_json.data)
    {
        return ngx_http_next_body_filter(r, in);
    }

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
        last |= cl->buf->last_buf;
    }

    if (!last) {
        return NGX_OK;
    }

    if (ngx_http_dsv4_nginx_error_body(r, &text) != NGX_OK) {
        return NGX_ERROR;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = text.data;
    b->last = text.data + text.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


/* the JSON for r->err_status in the shape of its place (same each call) */

static ngx_int_t
ngx_http_dsv4_nginx_error_body(ngx_http_request_t *r, ngx_str_t *text)
{
    u_char                       *p;
    json_t                       *body;
    ngx_int_t                     api;
    ngx_uint_t                    i;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_dsv4_nginx_error_t  *e;
    u_char                        msg[256];

    api = ngx_http_dsv4_nginx_error_api(r);

    for (i = 0; ngx_http_dsv4_nginx_errors[i].status != 0; i++) {
        if (ngx_http_dsv4_nginx_errors[i].status == r->err_status) {
            break;
        }
    }

    e = &ngx_http_dsv4_nginx_errors[i];

    p = ngx_snprintf(msg, sizeof(msg) - 1, "%s", e->message);

    /* the one limit a client can act on: say it */

    if (r->err_status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (clcf->client_max_body_size > 0) {
            p = ngx_snprintf(p, msg + sizeof(msg) - 1 - p, " (%O bytes)",
                             clcf->client_max_body_size);
        }
    }

    *p = '\0';

    body = ngx_http_dsv4_error_json(api, r->err_status, NULL, (char *) msg,
                                    NULL, e->code);
    if (body == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_dsv4_json_text(r->pool, body, text);
}


/*
 * While the body arrives, nginx's read handler runs on every read event;
 * when the read timer fires it would close the connection silently.  The
 * watcher answers 408 in the API's shape first, then lets the request end.
 */

void
ngx_http_dsv4_watch_body_timeout(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx)
{
    ctx->body_read_handler = r->read_event_handler;
    r->read_event_handler = ngx_http_dsv4_body_timeout_handler;
}


static void
ngx_http_dsv4_body_timeout_handler(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dsv4_module);

    if (!r->connection->read->timedout || ctx->body_read) {
        ctx->body_read_handler(r);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                  "client timed out sending the request body");

    r->connection->read->timedout = 0;
    r->keepalive = 0;
    r->lingering_close = 0;

    rc = ngx_http_dsv4_send_error(r, ctx->api, NGX_HTTP_REQUEST_TIME_OUT,
                                  "the request body did not arrive in time",
                                  NULL, "request_timeout");

    ngx_http_finalize_request(r, rc);
}
