
/*
 * Anthropic Messages API: POST /v1/messages.
 *
 * The request is translated into the OpenAI chat shape the V4 chat encoder
 * reads (system, user / assistant turns, tool_use -> tool_calls,
 * tool_result -> tool messages, thinking blocks -> reasoning_content); the
 * output parser's events become content blocks: "thinking", "text" and
 * "tool_use".  Streaming sends Anthropic's event sequence: message_start,
 * ping, content_block_start / _delta / _stop per block, message_delta with
 * the stop reason and usage, message_stop.
 */


#include "ngx_http_dsv4_module.h"

#include <stdio.h>
#include <string.h>


#define NGX_HTTP_DSV4_BLOCK_NONE      0
#define NGX_HTTP_DSV4_BLOCK_THINKING  1
#define NGX_HTTP_DSV4_BLOCK_TEXT      2
#define NGX_HTTP_DSV4_BLOCK_TOOL      3


static json_t *
ngx_http_dsv4_fail_null(char *err, size_t errlen, const char **param,
    const char *p, const char *msg, size_t i)
{
    snprintf(err, errlen, msg, i);
    *param = p;

    return NULL;
}


/* Text of a content value: a string, or the text blocks of an array. */

static int
ngx_http_dsv4_text_of(json_t *content, dsv4_strbuf *b)
{
    size_t       i;
    json_t      *blk;
    const char  *type;

    if (json_is_string(content)) {
        return dsv4_strbuf_append(b, json_string_value(content),
                                  json_string_length(content));
    }

    json_array_foreach(content, i, blk) {
        type = json_string_value(json_object_get(blk, "type"));

        if (type != NULL && ngx_strcmp(type, "text") == 0
            && json_is_string(json_object_get(blk, "text")))
        {
            if (b->len && dsv4_strbuf_append(b, "\n\n", 2) != 0) {
                return -1;
            }

            if (dsv4_strbuf_append(b,
                    json_string_value(json_object_get(blk, "text")),
                    json_string_length(json_object_get(blk, "text")))
                != 0)
            {
                return -1;
            }
        }
    }

    return 0;
}


static int
ngx_http_dsv4_push_text(json_t *msgs, const char *role, dsv4_strbuf *b)
{
    json_t  *m;

    m = json_pack("{s:s,s:s%}", "role", role, "content",
                  b->data ? b->data : "", b->len);

    dsv4_strbuf_reset(b);

    return (m == NULL) ? -1 : json_array_append_new(msgs, m);
}


static int
ngx_http_dsv4_user_turn(json_t *msgs, json_t *content, size_t mi,
    char *err, size_t errlen, const char **param)
{
    int          rc;
    size_t       i;
    json_t      *blk, *m, *id;
    const char  *type;
    dsv4_strbuf  text = DSV4_STRBUF_INIT;
    dsv4_strbuf  res = DSV4_STRBUF_INIT;

    if (json_is_string(content)) {
        m = json_pack("{s:s,s:O}", "role", "user", "content", content);
        return (m == NULL) ? -1 : json_array_append_new(msgs, m);
    }

    rc = 0;

    json_array_foreach(content, i, blk) {
        type = json_string_value(json_object_get(blk, "type"));

        if (type == NULL) {
            snprintf(err, errlen, "messages[%zu].content[%zu] has no "
                     "\"type\"", mi, i);
            *param = "messages";
            rc = -2;
            break;
        }

        if (ngx_strcmp(type, "text") == 0) {
            if (!json_is_string(json_object_get(blk, "text"))) {
                snprintf(err, errlen, "messages[%zu].content[%zu].text must "
                         "be a string", mi, i);
                *param = "messages";
                rc = -2;
                break;
            }

            if (text.len && dsv4_strbuf_append(&text, "\n\n", 2) != 0) {
                rc = -1;
                break;
            }

            if (dsv4_strbuf_append(&text,
                    json_string_value(json_object_get(blk, "text")),
                    json_string_length(json_object_get(blk, "text")))
                != 0)
            {
                rc = -1;
                break;
            }

            continue;
        }

        if (ngx_strcmp(type, "tool_result") == 0) {
            id = json_object_get(blk, "tool_use_id");

            if (ngx_http_dsv4_text_of(json_object_get(blk, "content"), &res)
                != 0)
            {
                rc = -1;
                break;
            }

            m = json_pack("{s:s,s:s,s:s%}", "role", "tool", "tool_call_id",
                          json_is_string(id) ? json_string_value(id) : "",
                          "content", res.data ? res.data : "", res.len);
            dsv4_strbuf_reset(&res);

            if (m == NULL || json_array_append_new(msgs, m) != 0) {
                rc = -1;
                break;
            }

            continue;
        }

        snprintf(err, errlen, "messages[%zu].content[%zu]: block type "
                 "\"%.64s\" is not supported", mi, i, type);
        *param = "messages";
        rc = -2;
        break;
    }

    if (rc == 0 && (text.len || json_array_size(content) == 0)) {
        rc = ngx_http_dsv4_push_text(msgs, "user", &text);
    }

    dsv4_strbuf_free(&text);
    dsv4_strbuf_free(&res);

    return rc;
}


static int
ngx_http_dsv4_assistant_turn(json_t *msgs, json_t *content, size_t mi,
    char *err, size_t errlen, const char **param)
{
    int          rc;
    size_t       i;
    json_t      *blk, *m, *calls, *call, *input, *name, *id;
    const char  *type;
    dsv4_strbuf  text = DSV4_STRBUF_INIT;
    dsv4_strbuf  think = DSV4_STRBUF_INIT;

    if (json_is_string(content)) {
        m = json_pack("{s:s,s:O}", "role", "assistant", "content", content);
        return (m == NULL) ? -1 : json_array_append_new(msgs, m);
    }

    calls = json_array();
    if (calls == NULL) {
        return -1;
    }

    rc = 0;

    json_array_foreach(content, i, blk) {
        type = json_string_value(json_object_get(blk, "type"));

        if (type == NULL) {
            snprintf(err, errlen, "messages[%zu].content[%zu] has no "
                     "\"type\"", mi, i);
            *param = "messages";
            rc = -2;
            break;
        }

        if (ngx_strcmp(type, "text") == 0) {
            if (json_is_string(json_object_get(blk, "text"))
                && dsv4_strbuf_append(&text,
                       json_string_value(json_object_get(blk, "text")),
                       json_string_length(json_object_get(blk, "text")))
                   != 0)
            {
                rc = -1;
                break;
            }

            continue;
        }

        if (ngx_strcmp(type, "thinking") == 0) {
            if (json_is_string(json_object_get(blk, "thinking"))
                && dsv4_strbuf_append(&think,
                       json_string_value(json_object_get(blk, "thinking")),
                       json_string_length(json_object_get(blk, "thinking")))
                   != 0)
            {
                rc = -1;
                break;
            }

            continue;
        }

        if (ngx_strcmp(type, "redacted_thinking") == 0) {
            continue;
        }

        if (ngx_strcmp(type, "tool_use") == 0) {
            name = json_object_get(blk, "name");
            id = json_object_get(blk, "id");
            input = json_object_get(blk, "input");

            if (!json_is_string(name)) {
                snprintf(err, errlen, "messages[%zu].content[%zu].name must "
                         "be a string", mi, i);
                *param = "messages";
                rc = -2;
                break;
            }

            call = json_pack("{s:s,s:s,s:{s:O,s:o}}",
                             "id", json_is_string(id)
                                   ? json_string_value(id) : "",
                             "type", "function", "function",
                             "name", name,
                             "arguments", json_is_object(input)
                                          ? json_incref(input)
                                          : json_object());

            if (call == NULL || json_array_append_new(calls, call) != 0) {
                rc = -1;
                break;
            }

            continue;
        }

        snprintf(err, errlen, "messages[%zu].content[%zu]: block type "
                 "\"%.64s\" is not supported", mi, i, type);
        *param = "messages";
        rc = -2;
        break;
    }

    if (rc == 0) {
        m = json_pack("{s:s,s:s%}", "role", "assistant", "content",
                      text.data ? text.data : "", text.len);

        if (m == NULL) {
            rc = -1;

        } else {
            if (think.len) {
                json_object_set_new(m, "reasoning_content",
                                    json_stringn(think.data, think.len));
            }

            if (json_array_size(calls)) {
                json_object_set(m, "tool_calls", calls);
            }

            rc = json_array_append_new(msgs, m);
        }
    }

    json_decref(calls);
    dsv4_strbuf_free(&text);
    dsv4_strbuf_free(&think);

    return rc;
}


json_t *
ngx_http_dsv4_anthropic_to_openai(json_t *in, char *err, size_t errlen,
    const char **param)
{
    int          rc;
    size_t       i;
    json_t      *out, *msgs, *m, *content, *sys, *tools, *t, *ot, *v;
    const char  *role;
    dsv4_strbuf  b = DSV4_STRBUF_INIT;

    err[0] = '\0';

    msgs = json_object_get(in, "messages");

    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        return ngx_http_dsv4_fail_null(err, errlen, param, "messages",
                                       "'messages' must be a non-empty "
                                       "array%.0zu", 0);
    }

    out = json_object();
    msgs = json_array();

    if (out == NULL || msgs == NULL
        || json_object_set_new(out, "messages", msgs) != 0)
    {
        json_decref(out);
        return NULL;
    }

    /* system: a string or text blocks */

    sys = json_object_get(in, "system");

    if (sys != NULL && !json_is_null(sys)) {
        if (!json_is_string(sys) && !json_is_array(sys)) {
            json_decref(out);
            return ngx_http_dsv4_fail_null(err, errlen, param, "system",
                                           "'system' must be a string or an "
                                           "array of text blocks%.0zu", 0);
        }

        if (ngx_http_dsv4_text_of(sys, &b) != 0
            || ngx_http_dsv4_push_text(msgs, "system", &b) != 0)
        {
            dsv4_strbuf_free(&b);
            json_decref(out);
            return NULL;
        }
    }

    dsv4_strbuf_free(&b);

    json_array_foreach(json_object_get(in, "messages"), i, m) {
        role = json_string_value(json_object_get(m, "role"));
        content = json_object_get(m, "content");

        if (role == NULL
            || (!json_is_string(content) && !json_is_array(content)))
        {
            json_decref(out);
            return ngx_http_dsv4_fail_null(err, errlen, param, "messages",
                                           "messages[%zu] must have a "
                                           "\"role\" and a string or array "
                                           "\"content\"", i);
        }

        if (ngx_strcmp(role, "user") == 0) {
            rc = ngx_http_dsv4_user_turn(msgs, content, i, err, errlen,
                                         param);

        } else if (ngx_strcmp(role, "assistant") == 0) {
            rc = ngx_http_dsv4_assistant_turn(msgs, content, i, err, errlen,
                                              param);

        } else {
            json_decref(out);
            return ngx_http_dsv4_fail_null(err, errlen, param, "messages",
                                           "messages[%zu].role must be "
                                           "\"user\" or \"assistant\"", i);
        }

        if (rc != 0) {
            json_decref(out);
            return NULL;
        }
    }

    /* tools: {name, description, input_schema} -> OpenAI functions */

    tools = json_object_get(in, "tools");

    if (tools != NULL && !json_is_null(tools)) {
        if (!json_is_array(tools)) {
            json_decref(out);
            return ngx_http_dsv4_fail_null(err, errlen, param, "tools",
                                           "'tools' must be an array%.0zu",
                                           0);
        }

        ot = json_array();
        if (ot == NULL || json_object_set_new(out, "tools", ot) != 0) {
            json_decref(out);
            return NULL;
        }

        json_array_foreach(tools, i, t) {
            if (!json_is_string(json_object_get(t, "name"))) {
                json_decref(out);
                return ngx_http_dsv4_fail_null(err, errlen, param, "tools",
                                               "tools[%zu].name must be a "
                                               "string", i);
            }

            v = json_pack("{s:s,s:{s:O}}", "type", "function", "function",
                          "name", json_object_get(t, "name"));

            if (v == NULL || json_array_append_new(ot, v) != 0) {
                json_decref(out);
                return NULL;
            }

            v = json_object_get(v, "function");

            if (json_is_string(json_object_get(t, "description"))) {
                json_object_set(v, "description",
                                json_object_get(t, "description"));
            }

            json_object_set_new(v, "parameters",
                                json_is_object(json_object_get(t,
                                                               "input_schema"))
                                ? json_incref(json_object_get(t,
                                                              "input_schema"))
                                : json_object());
        }
    }

    /* tool_choice {"type": "any"} / {"type": "tool", "name": N} force a
     * call: OpenAI's "required" / named function (the output grammar) */

    v = json_object_get(in, "tool_choice");
    t = json_object_get(v, "type");

    if (json_is_string(t)) {
        ot = NULL;

        if (ngx_strcmp(json_string_value(t), "any") == 0) {
            ot = json_string("required");

        } else if (ngx_strcmp(json_string_value(t), "none") == 0) {
            ot = json_string("none");

        } else if (ngx_strcmp(json_string_value(t), "tool") == 0) {
            if (!json_is_string(json_object_get(v, "name"))) {
                json_decref(out);
                return ngx_http_dsv4_fail_null(err, errlen, param,
                                               "tool_choice",
                                               "tool_choice.name must be a "
                                               "string%.0zu", 0);
            }

            ot = json_pack("{s:s,s:{s:O}}", "type", "function", "function",
                           "name", json_object_get(v, "name"));
        }

        if (ot != NULL && json_object_set_new(out, "tool_choice", ot) != 0) {
            json_decref(out);
            return NULL;
        }
    }

    v = json_object_get(in, "thinking");

    if (v != NULL && !json_is_null(v)) {
        if (json_is_object(v)
            && json_is_string(json_object_get(v, "type"))
            && ngx_strcmp(json_string_value(json_object_get(v, "type")),
                          "adaptive") == 0)
        {
            json_object_set_new(out, "thinking",
                                json_pack("{s:s}", "type", "enabled"));

        } else {
            json_object_set(out, "thinking", v);
        }
    }

    return out;
}


/* ---------------------------------------------------------------------- */


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
