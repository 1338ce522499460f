
/*
 * Anthropic Messages API, the response: the output parser's events become
 * content blocks, "thinking", "text" and "tool_use".  Streaming sends
 * Anthropic's event sequence: message_start, ping, content_block_start /
 * _delta / _stop per block, message_delta with the stop reason and usage,
 * message_stop.  The request side is ngx_http_dsv4_anthropic_request.c.
 */


#include "ngx_http_dsv4_module.h"

#include <stdio.h>
#include <string.h>


#define NGX_HTTP_DSV4_BLOCK_NONE      0
#define NGX_HTTP_DSV4_BLOCK_THINKING  1
#define NGX_HTTP_DSV4_BLOCK_TEXT      2
#define NGX_HTTP_DSV4_BLOCK_TOOL      3


static int
ngx_http_dsv4_sse_event(ngx_http_dsv4_ctx_t *ctx, const char *name,
    json_t *data)
{
    int  rc;

    if (data == NULL) {
        return -1;
    }

    rc = ngx_http_dsv4_strbuf_printf(&ctx->out, "event: %s\ndata: ", name);

    if (rc == 0) {
        rc = ngx_http_dsv4_dump(&ctx->out, data);
    }

    if (rc == 0) {
        rc = dsv4_strbuf_puts(&ctx->out, "\n\n");
    }

    json_decref(data);

    return rc;
}


ngx_int_t
ngx_http_dsv4_anthropic_start(ngx_http_dsv4_ctx_t *ctx)
{
    json_t  *msg;

    msg = json_pack("{s:s,s:{s:s%,s:s,s:s,s:s,s:[],s:n,s:n,s:{s:I,s:i}}}",
                    "type", "message_start", "message",
                    "id", (char *) ctx->id, ctx->id_len,
                    "type", "message", "role", "assistant",
                    "model", ctx->prep->model_name,
                    "content", "stop_reason", "stop_sequence",
                    "usage", "input_tokens",
                    (json_int_t) ctx->prompt_tokens,
                    "output_tokens", 0);

    if (ngx_http_dsv4_sse_event(ctx, "message_start", msg) != 0
        || ngx_http_dsv4_sse_event(ctx, "ping",
                                   json_pack("{s:s}", "type", "ping"))
           != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static int
ngx_http_dsv4_block_stop(ngx_http_dsv4_choice_t *ch)
{
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;

    if (!ch->block_open) {
        return 0;
    }

    ch->block_open = 0;
    ch->block_type = NGX_HTTP_DSV4_BLOCK_NONE;

    return ngx_http_dsv4_sse_event(ctx, "content_block_stop",
                                   json_pack("{s:s,s:i}", "type",
                                             "content_block_stop", "index",
                                             (int) ch->nblocks - 1));
}


static json_t *
ngx_http_dsv4_tool_input(const dsv4_event *ev)
{
    json_t  *input;

    input = json_loadb(ev->text, ev->len, 0, NULL);

    if (input == NULL || !json_is_object(input)) {
        json_decref(input);
        input = json_object();
    }

    return input;
}


void
ngx_http_dsv4_anthropic_event(ngx_http_dsv4_choice_t *ch,
    const dsv4_event *ev)
{
    int                   rc;
    u_char                id[40];
    json_t               *blk, *delta;
    ngx_int_t             type;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;

    if (!ctx->stream) {
        if (ev->type == DSV4_EV_TOOL_CALL) {
            if (ch->tool_calls == NULL) {
                ch->tool_calls = json_array();
            }

            ngx_http_dsv4_random_id(id, "toolu_", 24);

            blk = json_pack("{s:s,s:s,s:s%,s:o}", "type", "tool_use",
                            "id", (char *) id, "name", ev->name,
                            ev->name_len, "input",
                            ngx_http_dsv4_tool_input(ev));

            if (ch->tool_calls == NULL || blk == NULL
                || json_array_append_new(ch->tool_calls, blk) != 0)
            {
                ctx->error = 1;
            }

            return;
        }

        if (dsv4_strbuf_append(ev->type == DSV4_EV_REASONING
                               ? &ch->reasoning : &ch->content,
                               ev->text, ev->len)
            != 0)
        {
            ctx->error = 1;
        }

        return;
    }

    if (ev->type != DSV4_EV_TOOL_CALL && ev->len == 0) {
        return;
    }

    type = (ev->type == DSV4_EV_REASONING) ? NGX_HTTP_DSV4_BLOCK_THINKING
           : (ev->type == DSV4_EV_CONTENT) ? NGX_HTTP_DSV4_BLOCK_TEXT
           : NGX_HTTP_DSV4_BLOCK_TOOL;

    rc = 0;

    if (!ch->block_open || ch->block_type != type
        || type == NGX_HTTP_DSV4_BLOCK_TOOL)
    {
        rc = ngx_http_dsv4_block_stop(ch);

        if (type == NGX_HTTP_DSV4_BLOCK_THINKING) {
            blk = json_pack("{s:s,s:s,s:s}", "type", "thinking",
                            "thinking", "", "signature", "");

        } else if (type == NGX_HTTP_DSV4_BLOCK_TEXT) {
            blk = json_pack("{s:s,s:s}", "type", "text", "text", "");

        } else {
            ngx_http_dsv4_random_id(id, "toolu_", 24);
            blk = json_pack("{s:s,s:s,s:s%,s:{}}", "type", "tool_use",
                            "id", (char *) id, "name", ev->name,
                            ev->name_len, "input");
        }

        if (rc == 0) {
            rc = ngx_http_dsv4_sse_event(ctx, "content_block_start",
                     json_pack("{s:s,s:i,s:o}", "type",
                               "content_block_start", "index",
                               (int) ch->nblocks, "content_block", blk));
        }

        ch->block_open = 1;
        ch->block_type = type;
        ch->nblocks++;
    }

    if (type == NGX_HTTP_DSV4_BLOCK_THINKING) {
        delta = json_pack("{s:s,s:s%}", "type", "thinking_delta",
                          "thinking", ev->text, ev->len);

    } else if (type == NGX_HTTP_DSV4_BLOCK_TEXT) {
        delta = json_pack("{s:s,s:s%}", "type", "text_delta",
                          "text", ev->text, ev->len);

    } else {
        delta = json_pack("{s:s,s:s%}", "type", "input_json_delta",
                          "partial_json", ev->text, ev->len);
    }

    if (rc == 0) {
        rc = ngx_http_dsv4_sse_event(ctx, "content_block_delta",
                 json_pack("{s:s,s:i,s:o}", "type", "content_block_delta",
                           "index", (int) ch->nblocks - 1, "delta", delta));
    } else {
        json_decref(delta);
    }

    if (rc != 0) {
        ctx->error = 1;
    }
}


void
ngx_http_dsv4_anthropic_choice_done(ngx_http_dsv4_choice_t *ch)
{
    if (ch->ctx->stream && ngx_http_dsv4_block_stop(ch) != 0) {
        ch->ctx->error = 1;
    }
}


static const char *
ngx_http_dsv4_stop_reason(ngx_http_dsv4_choice_t *ch)
{
    switch (ch->finish) {
    case NGX_HTTP_DSV4_FINISH_LENGTH:
        return "max_tokens";
    case NGX_HTTP_DSV4_FINISH_TOOL_CALLS:
        return "tool_use";
    default:
        return ch->stop_index >= 0 ? "stop_sequence" : "end_turn";
    }
}


ngx_int_t
ngx_http_dsv4_anthropic_done(ngx_http_dsv4_ctx_t *ctx)
{
    json_t                  *content, *body, *seq, *b;
    ngx_uint_t               cached;
    ngx_http_dsv4_choice_t  *ch;

    ch = &ctx->choices[0];
    cached = ngx_http_dsv4_cached_tokens(ctx);

    seq = (ch->stop_index >= 0
           && (ngx_uint_t) ch->stop_index < ctx->prep->nstop)
          ? json_string(ctx->prep->stop[ch->stop_index]) : json_null();

    if (ctx->stream) {
        if (ctx->error || ch->finish == NGX_HTTP_DSV4_FINISH_ERROR) {
            json_decref(seq);
            ngx_http_dsv4_stream_error(ctx, "the engine failed to generate "
                                            "the message");
            return NGX_OK;
        }

        if (ngx_http_dsv4_sse_event(ctx, "message_delta",
                json_pack("{s:s,s:{s:s,s:o},s:{s:I,s:I,s:I}}", "type",
                          "message_delta", "delta", "stop_reason",
                          ngx_http_dsv4_stop_reason(ch), "stop_sequence",
                          seq, "usage", "output_tokens",
                          (json_int_t) ctx->completion_tokens,
                          "input_tokens",
                          (json_int_t) (ctx->prompt_tokens - cached),
                          "cache_read_input_tokens", (json_int_t) cached))
            != 0
            || ngx_http_dsv4_sse_event(ctx, "message_stop",
                   json_pack("{s:s}", "type", "message_stop"))
               != 0)
        {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ctx->error || ch->finish == NGX_HTTP_DSV4_FINISH_ERROR) {
        json_decref(seq);
        return ngx_http_dsv4_send_error(ctx->request, ctx->api,
                                        NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "the engine failed to generate the "
                                        "message", NULL, NULL);
    }

    content = json_array();
    if (content == NULL) {
        json_decref(seq);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ch->reasoning.len) {
        b = json_pack("{s:s,s:s%,s:s}", "type", "thinking", "thinking",
                      ch->reasoning.data, ch->reasoning.len,
                      "signature", "");
        json_array_append_new(content, b);
    }

    if (ch->content.len || (ch->reasoning.len == 0 && !ch->tool_calls)) {
        b = json_pack("{s:s,s:s%}", "type", "text", "text",
                      ch->content.data ? ch->content.data : "",
                      ch->content.len);
        json_array_append_new(content, b);
    }

    if (ch->tool_calls) {
        json_array_extend(content, ch->tool_calls);
    }

    /* Anthropic's input_tokens excludes the tokens read from the cache */

    body = json_pack("{s:s%,s:s,s:s,s:s,s:o,s:s,s:o,s:{s:I,s:I,s:i,s:I}}",
                     "id", (char *) ctx->id, ctx->id_len,
                     "type", "message", "role", "assistant",
                     "model", ctx->prep->model_name,
                     "content", content,
                     "stop_reason", ngx_http_dsv4_stop_reason(ch),
                     "stop_sequence", seq,
                     "usage", "input_tokens",
                     (json_int_t) (ctx->prompt_tokens - cached),
                     "output_tokens", (json_int_t) ctx->completion_tokens,
                     "cache_creation_input_tokens", 0,
                     "cache_read_input_tokens", (json_int_t) cached);

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dsv4_send_json(ctx->request, NGX_HTTP_OK, body);
}
