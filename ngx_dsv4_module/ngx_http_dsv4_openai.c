
/*
 * OpenAI-compatible generation: POST /v1/chat/completions and
 * POST /v1/completions, streaming (SSE) and not.
 *
 * Streaming follows OpenAI's framing exactly: one "data: {chunk}\n\n" per
 * delta, the first chat chunk of each choice carries the role, the last one
 * the finish_reason with an empty delta, an optional usage chunk with
 * "choices": [] (stream_options.include_usage; every earlier chunk then has
 * "usage": null), and "data: [DONE]\n\n".
 */


#include "ngx_http_dsv4_module.h"

#include <math.h>


static const char *ngx_http_dsv4_finish_names[] = {
    "stop", "length", "tool_calls", "abort", "error"
};


static ngx_uint_t
ngx_http_dsv4_is_chat(ngx_http_dsv4_ctx_t *ctx)
{
    return ctx->api == NGX_HTTP_DSV4_API_CHAT;
}


/* "data: {"id":...,"choices":[" -- the constant head of every chunk */

/*
 * Starts an SSE chunk: "data: {id, object, created, model, "choices":[".
 * The prefix is the same for every chunk of a request, so it is formatted
 * once and copied after that (it opens every streamed token).
 */

static int
ngx_http_dsv4_chunk_begin(ngx_http_dsv4_ctx_t *ctx)
{
    size_t        off;
    dsv4_strbuf  *b;

    b = &ctx->out;

    if (ctx->chunk_head.len) {
        return dsv4_strbuf_append(b, (char *) ctx->chunk_head.data,
                                  ctx->chunk_head.len);
    }

    off = b->len;

    if (ngx_http_dsv4_strbuf_printf(b, "data: {\"id\":\"%.*s\",\"object\":"
                                    "\"%s\",\"created\":%ld,\"model\":",
                                    (int) ctx->id_len, ctx->id,
                                    ngx_http_dsv4_is_chat(ctx)
                                    ? "chat.completion.chunk"
                                    : "text_completion",
                                    (long) ctx->created)
        != 0
        || ngx_http_dsv4_json_str(b, ctx->prep->model_name,
                                  ngx_strlen(ctx->prep->model_name))
           != 0
        || dsv4_strbuf_puts(b, ",\"choices\":[") != 0)
    {
        return -1;
    }

    ctx->chunk_head.data = ngx_pnalloc(ctx->request->pool, b->len - off);
    if (ctx->chunk_head.data == NULL) {
        return -1;
    }

    ctx->chunk_head.len = b->len - off;
    ngx_memcpy(ctx->chunk_head.data, b->data + off, ctx->chunk_head.len);

    return 0;
}


static int
ngx_http_dsv4_chunk_end(ngx_http_dsv4_ctx_t *ctx)
{
    return dsv4_strbuf_puts(&ctx->out, ctx->prep->include_usage
                                       ? "],\"usage\":null}\n\n"
                                       : "]}\n\n");
}


static int
ngx_http_dsv4_chunk_choice(ngx_http_dsv4_ctx_t *ctx, json_t *choice)
{
    int  rc;

    if (choice == NULL) {
        return -1;
    }

    rc = ngx_http_dsv4_chunk_begin(ctx);

    if (rc == 0) {
        rc = ngx_http_dsv4_dump(&ctx->out, choice);
    }

    json_decref(choice);

    if (rc == 0) {
        rc = ngx_http_dsv4_chunk_end(ctx);
    }

    return rc;
}


static json_t *
ngx_http_dsv4_real(double v)
{
    /* JSON has no infinities: OpenAI reports them as -9999.0 */

    return json_real(isfinite(v) ? v : -9999.0);
}


/* The chat "logprobs": {"content": [...]} entries for tokens lp[0..n). */

static json_t *
ngx_http_dsv4_chat_logprobs(ngx_http_dsv4_choice_t *ch,
    ngx_http_dsv4_lp_t *lp, ngx_uint_t n)
{
    int                     k, cnt;
    float                   lps[NGX_HTTP_DSV4_MAX_LOGPROBS];
    json_t                 *arr, *e, *top, *t;
    int32_t                 ids[NGX_HTTP_DSV4_MAX_LOGPROBS];
    ngx_uint_t              i;
    const dsv4_tokenizer   *tok;

    tok = ch->ctx->model->tok;

    arr = json_array();
    if (arr == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        e = ngx_http_dsv4_json_token(tok, lp[i].id);
        top = json_array();

        if (e == NULL || top == NULL
            || json_object_set_new(e, "logprob",
                                   ngx_http_dsv4_real(lp[i].logprob))
               != 0)
        {
            goto failed;
        }

        cnt = 0;

        if (ch->ctx->prep->logprobs > 0) {
            cnt = dsv4_request_top_logprobs(ch->req, (int) lp[i].k, ids, lps);
        }

        for (k = 0; k < cnt && k < ch->ctx->prep->logprobs; k++) {
            t = ngx_http_dsv4_json_token(tok, ids[k]);

            if (t == NULL
                || json_object_set_new(t, "logprob",
                                       ngx_http_dsv4_real(lps[k]))
                   != 0
                || json_array_append_new(top, t) != 0)
            {
                goto failed;
            }
        }

        if (json_object_set_new(e, "top_logprobs", top) != 0) {
            top = NULL;
            goto failed;
        }

        top = NULL;

        if (json_array_append_new(arr, e) != 0) {
            e = NULL;
            goto failed;
        }
    }

    return arr;

failed:

    json_decref(e);
    json_decref(top);
    json_decref(arr);

    return NULL;
}


/*
 * The legacy completions shape: {"tokens", "token_logprobs",
 * "top_logprobs": [{token: logprob}], "text_offset"} from chat entries,
 * each of which carries its text offset as "_off".
 */

static json_t *
ngx_http_dsv4_legacy_logprobs(json_t *entries)
{
    size_t   i, k;
    json_t  *o, *tokens, *lps, *tops, *offs, *e, *top, *t, *m;

    o = json_object();
    tokens = json_array();
    lps = json_array();
    tops = json_array();
    offs = json_array();

    if (o == NULL || tokens == NULL || lps == NULL || tops == NULL
        || offs == NULL)
    {
        goto failed;
    }

    json_array_foreach(entries, i, e) {

        if (json_array_append(tokens, json_object_get(e, "token")) != 0
            || json_array_append(lps, json_object_get(e, "logprob")) != 0
            || json_array_append(offs, json_object_get(e, "_off")) != 0)
        {
            goto failed;
        }

        top = json_object_get(e, "top_logprobs");

        if (json_array_size(top) == 0) {
            if (json_array_append_new(tops, json_null()) != 0) {
                goto failed;
            }

            continue;
        }

        m = json_object();
        if (m == NULL) {
            goto failed;
        }

        json_array_foreach(top, k, t) {
            if (json_object_set(m, json_string_value(json_object_get(t,
                                                                 "token")),
                                json_object_get(t, "logprob"))
                != 0)
            {
                json_decref(m);
                goto failed;
            }
        }

        if (json_array_append_new(tops, m) != 0) {
            goto failed;
        }
    }

    if (json_object_set_new(o, "tokens", tokens) != 0) {
        tokens = NULL;
        goto failed;
    }

    tokens = NULL;

    if (json_object_set_new(o, "token_logprobs", lps) != 0) {
        lps = NULL;
        goto failed;
    }

    lps = NULL;

    if (json_object_set_new(o, "top_logprobs", tops) != 0) {
        tops = NULL;
        goto failed;
    }

    tops = NULL;

    if (json_object_set_new(o, "text_offset", offs) != 0) {
        offs = NULL;
        goto failed;
    }

    return o;

failed:

    json_decref(o);
    json_decref(tokens);
    json_decref(lps);
    json_decref(tops);
    json_decref(offs);

    return NULL;
}


static json_t *
ngx_http_dsv4_logprobs(ngx_http_dsv4_choice_t *ch, ngx_http_dsv4_lp_t *lp,
    ngx_uint_t nlp, size_t off)
{
    size_t   i;
    json_t  *entries, *e, *o;

    entries = ngx_http_dsv4_chat_logprobs(ch, lp, nlp);
    if (entries == NULL) {
        return NULL;
    }

    if (ngx_http_dsv4_is_chat(ch->ctx)) {
        o = json_pack("{s:o}", "content", entries);
        return o;
    }

    json_array_foreach(entries, i, e) {
        json_object_set_new(e, "_off", json_integer((json_int_t) off));
    }

    o = ngx_http_dsv4_legacy_logprobs(entries);
    json_decref(entries);

    return o;
}


ngx_int_t
ngx_http_dsv4_openai_start(ngx_http_dsv4_ctx_t *ctx)
{
    int                      rc;
    ngx_uint_t               i;
    const char              *text;
    ngx_http_dsv4_choice_t  *ch;

    for (i = 0; i < ctx->nchoices; i++) {
        ch = &ctx->choices[i];

        if (ngx_http_dsv4_is_chat(ctx)) {
            rc = ngx_http_dsv4_chunk_begin(ctx);

            if (rc == 0) {
                rc = ngx_http_dsv4_strbuf_printf(&ctx->out,
                         "{\"index\":%u,\"delta\":{\"role\":\"assistant\","
                         "\"content\":\"\"},\"logprobs\":null,"
                         "\"finish_reason\":null}", (unsigned) ch->index);
            }

            if (rc == 0) {
                rc = ngx_http_dsv4_chunk_end(ctx);
            }

            if (rc != 0) {
                return NGX_ERROR;
            }

            ch->started = 1;
            continue;
        }

        text = ctx->prep->prompt_texts[ch->prompt];

        if (ctx->prep->echo && text != NULL) {
            rc = ngx_http_dsv4_chunk_choice(ctx,
                     json_pack("{s:i,s:s,s:n,s:n}", "index", (int) ch->index,
                               "text", text, "logprobs", "finish_reason"));
            if (rc != 0) {
                return NGX_ERROR;
            }

            ch->text_off = ngx_strlen(text);
        }

        ch->started = 1;
    }

    return NGX_OK;
}


/*
 * One parser event (ev may be NULL: logprobs of tokens that produced no
 * text), with the logprobs of the tokens that produced it.
 */

void
ngx_http_dsv4_openai_event(ngx_http_dsv4_choice_t *ch, const dsv4_event *ev,
    ngx_http_dsv4_lp_t *lp, ngx_uint_t nlp)
{
    int                   rc;
    u_char               *p;
    json_t               *choice, *delta, *call, *lps, *e;
    size_t                i;
    u_char                id[40], head[64];
    const char           *field;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;
    lps = NULL;
    rc = 0;

    if (!ctx->stream) {

        /* accumulate for the final response */

        if (ev != NULL && ev->type == DSV4_EV_TOOL_CALL) {
            if (ch->tool_calls == NULL) {
                ch->tool_calls = json_array();
            }

            ngx_http_dsv4_random_id(id, "call_", 24);

            call = json_pack("{s:s,s:s,s:{s:s%,s:s%}}", "id", (char *) id,
                             "type", "function", "function",
                             "name", ev->name, ev->name_len,
                             "arguments", ev->text, ev->len);

            if (ch->tool_calls == NULL || call == NULL
                || json_array_append_new(ch->tool_calls, call) != 0)
            {
                ctx->error = 1;
            }

        } else if (ev != NULL) {
            rc = dsv4_strbuf_append(ev->type == DSV4_EV_REASONING
                                    ? &ch->reasoning : &ch->content,
                                    ev->text, ev->len);
            if (rc != 0) {
                ctx->error = 1;
            }
        }

        if (nlp && ctx->prep->logprobs >= 0) {

            /* per-token entries; completions keep their text offsets */

            lps = ngx_http_dsv4_chat_logprobs(ch, lp, nlp);

            if (ch->logprobs == NULL) {
                ch->logprobs = json_array();
            }

            if (lps == NULL || ch->logprobs == NULL) {
                ctx->error = 1;

            } else {
                if (!ngx_http_dsv4_is_chat(ctx)) {
                    json_array_foreach(lps, i, e) {
                        json_object_set_new(e, "_off",
                                            json_integer((json_int_t)
                                                         ch->text_off));
                    }
                }

                json_array_extend(ch->logprobs, lps);
            }

            json_decref(lps);
        }

        if (ev != NULL && ev->type == DSV4_EV_CONTENT) {
            ch->text_off += ev->len;
        }

        return;
    }

    if (nlp && ctx->prep->logprobs >= 0) {
        lps = ngx_http_dsv4_logprobs(ch, lp, nlp, ch->text_off);
        if (lps == NULL) {
            ctx->error = 1;
            return;
        }
    }

    /* streaming: the hot path is a plain text delta without logprobs */

    if (lps == NULL && ev != NULL && ev->type != DSV4_EV_TOOL_CALL) {

        if (ev->len == 0) {
            return;
        }

        field = (ev->type == DSV4_EV_REASONING) ? "reasoning_content"
                                                : "content";

        rc = ngx_http_dsv4_chunk_begin(ctx);

        if (rc == 0) {
            p = ngx_http_dsv4_is_chat(ctx)
                ? ngx_sprintf(head, "{\"index\":%ui,\"delta\":{\"%s\":",
                              ch->index, field)
                : ngx_sprintf(head, "{\"index\":%ui,\"text\":", ch->index);

            rc = dsv4_strbuf_append(&ctx->out, (char *) head, p - head);
        }

        if (rc == 0) {
            rc = ngx_http_dsv4_json_str(&ctx->out, ev->text, ev->len);
        }

        if (rc == 0) {
            rc = dsv4_strbuf_puts(&ctx->out, ngx_http_dsv4_is_chat(ctx)
                                  ? "},\"logprobs\":null,"
                                    "\"finish_reason\":null}"
                                  : ",\"logprobs\":null,"
                                    "\"finish_reason\":null}");
        }

        if (rc == 0) {
            rc = ngx_http_dsv4_chunk_end(ctx);
        }

        if (rc != 0) {
            ctx->error = 1;
        }

        if (ev->type == DSV4_EV_CONTENT) {
            ch->text_off += ev->len;
        }

        return;
    }

    if (ngx_http_dsv4_is_chat(ctx)) {
        delta = json_object();

        if (delta != NULL && ev != NULL) {
            if (ev->type == DSV4_EV_TOOL_CALL) {
                ngx_http_dsv4_random_id(id, "call_", 24);

                call = json_pack("[{s:i,s:s,s:s,s:{s:s%,s:s%}}]",
                                 "index", ev->index, "id", (char *) id,
                                 "type", "function", "function",
                                 "name", ev->name, ev->name_len,
                                 "arguments", ev->text, ev->len);

                rc = json_object_set_new(delta, "tool_calls", call);

            } else {
                rc = json_object_set_new(delta,
                                         ev->type == DSV4_EV_REASONING
                                         ? "reasoning_content" : "content",
                                         json_stringn(ev->text, ev->len));
            }
        }

        if (delta == NULL || rc != 0) {
            json_decref(delta);
            json_decref(lps);
            ctx->error = 1;
            return;
        }

        choice = json_pack("{s:i,s:o,s:o,s:n}", "index", (int) ch->index,
                           "delta", delta,
                           "logprobs", lps ? lps : json_null(),
                           "finish_reason");

    } else {
        choice = json_pack("{s:i,s:s%,s:o,s:n}", "index", (int) ch->index,
                           "text", ev ? ev->text : "",
                           ev ? ev->len : (size_t) 0,
                           "logprobs", lps ? lps : json_null(),
                           "finish_reason");
    }

    if (ngx_http_dsv4_chunk_choice(ctx, choice) != 0) {
        ctx->error = 1;
    }

    if (ev != NULL && ev->type == DSV4_EV_CONTENT) {
        ch->text_off += ev->len;
    }
}


void
ngx_http_dsv4_openai_choice_done(ngx_http_dsv4_choice_t *ch)
{
    json_t               *choice;
    ngx_http_dsv4_ctx_t  *ctx;

    ctx = ch->ctx;

    if (!ctx->stream) {
        return;
    }

    if (ch->finish == NGX_HTTP_DSV4_FINISH_ERROR) {
        ngx_http_dsv4_stream_error(ctx, ch->req
                                        ? dsv4_request_error(ch->req)
                                        : "engine error");
        return;
    }

    if (ngx_http_dsv4_is_chat(ctx)) {
        choice = json_pack("{s:i,s:{},s:n,s:s}", "index", (int) ch->index,
                           "delta", "logprobs", "finish_reason",
                           ngx_http_dsv4_finish_names[ch->finish]);

    } else {
        choice = json_pack("{s:i,s:s,s:n,s:s}", "index", (int) ch->index,
                           "text", "", "logprobs", "finish_reason",
                           ngx_http_dsv4_finish_names[ch->finish]);
    }

    if (ngx_http_dsv4_chunk_choice(ctx, choice) != 0) {
        ctx->error = 1;
    }
}


/* An error inside a stream whose status line is already sent. */

void
ngx_http_dsv4_stream_error(ngx_http_dsv4_ctx_t *ctx, const char *msg)
{
    json_t  *e;

    if (ctx->api == NGX_HTTP_DSV4_API_MESSAGES) {
        e = json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error",
                      "type", "api_error", "message", msg);

        if (e == NULL
            || dsv4_strbuf_puts(&ctx->out, "event: error\ndata: ") != 0
            || ngx_http_dsv4_dump(&ctx->out, e) != 0
            || dsv4_strbuf_puts(&ctx->out, "\n\n") != 0)
        {
            ctx->error = 1;
        }

        json_decref(e);
        return;
    }

    e = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", msg,
                  "type", "server_error", "param", "code", "engine_error");

    if (e == NULL
        || dsv4_strbuf_puts(&ctx->out, "data: ") != 0
        || ngx_http_dsv4_dump(&ctx->out, e) != 0
        || dsv4_strbuf_puts(&ctx->out, "\n\n") != 0)
    {
        ctx->error = 1;
    }

    json_decref(e);
}


static json_t *
ngx_http_dsv4_usage(ngx_http_dsv4_ctx_t *ctx)
{
    ngx_uint_t  i, reasoning;

    reasoning = 0;

    for (i = 0; i < ctx->nchoices; i++) {
        reasoning += ctx->choices[i].reasoning_tokens;
    }

    if (ctx->api == NGX_HTTP_DSV4_API_COMPLETIONS) {
        return json_pack("{s:I,s:I,s:I,s:{s:I}}",
                         "prompt_tokens", (json_int_t) ctx->prompt_tokens,
                         "completion_tokens",
                         (json_int_t) ctx->completion_tokens,
                         "total_tokens",
                         (json_int_t) (ctx->prompt_tokens
                                       + ctx->completion_tokens),
                         "prompt_tokens_details", "cached_tokens",
                         (json_int_t) ngx_http_dsv4_cached_tokens(ctx));
    }

    return json_pack("{s:I,s:I,s:I,s:{s:I},s:{s:I}}",
                     "prompt_tokens", (json_int_t) ctx->prompt_tokens,
                     "completion_tokens", (json_int_t) ctx->completion_tokens,
                     "total_tokens",
                     (json_int_t) (ctx->prompt_tokens
                                   + ctx->completion_tokens),
                     "prompt_tokens_details", "cached_tokens",
                     (json_int_t) ngx_http_dsv4_cached_tokens(ctx),
                     "completion_tokens_details", "reasoning_tokens",
                     (json_int_t) reasoning);
}


static json_t *
ngx_http_dsv4_final_choice(ngx_http_dsv4_ctx_t *ctx, ngx_http_dsv4_choice_t *ch)
{
    json_t      *msg, *lps, *text;
    const char  *echo;

    lps = json_null();

    if (ch->logprobs != NULL) {
        if (ngx_http_dsv4_is_chat(ctx)) {
            lps = json_pack("{s:O}", "content", ch->logprobs);

        } else {
            lps = ngx_http_dsv4_legacy_logprobs(ch->logprobs);
        }

        if (lps == NULL) {
            return NULL;
        }
    }

    if (!ngx_http_dsv4_is_chat(ctx)) {
        echo = ctx->prep->echo ? ctx->prep->prompt_texts[ch->prompt] : NULL;

        if (echo != NULL) {
            text = json_sprintf("%s%s", echo,
                                ch->content.data ? ch->content.data : "");
        } else {
            text = json_stringn(ch->content.data ? ch->content.data : "",
                                ch->content.len);
        }

        return json_pack("{s:i,s:o,s:o,s:s}", "index", (int) ch->index,
                         "text", text, "logprobs", lps, "finish_reason",
                         ngx_http_dsv4_finish_names[ch->finish]);
    }

    msg = json_pack("{s:s,s:o}", "role", "assistant", "content",
                    (ch->content.len == 0 && ch->tool_calls)
                    ? json_null()
                    : json_stringn(ch->content.data ? ch->content.data : "",
                                   ch->content.len));
    if (msg == NULL) {
        json_decref(lps);
        return NULL;
    }

    if (ctx->prep->thinking_mode
        && json_object_set_new(msg, "reasoning_content",
                               json_stringn(ch->reasoning.data
                                            ? ch->reasoning.data : "",
                                            ch->reasoning.len))
           != 0)
    {
        json_decref(msg);
        json_decref(lps);
        return NULL;
    }

    if (ch->tool_calls
        && json_object_set(msg, "tool_calls", ch->tool_calls) != 0)
    {
        json_decref(msg);
        json_decref(lps);
        return NULL;
    }

    return json_pack("{s:i,s:o,s:o,s:s}", "index", (int) ch->index,
                     "message", msg, "logprobs", lps, "finish_reason",
                     ngx_http_dsv4_finish_names[ch->finish]);
}


/* Every choice has finished: the usage chunk and [DONE], or the response. */

ngx_int_t
ngx_http_dsv4_openai_done(ngx_http_dsv4_ctx_t *ctx)
{
    json_t              *body, *choices, *c, *usage;
    ngx_uint_t           i;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (ctx->stream) {
        if (ctx->prep->include_usage && !ctx->error) {
            usage = ngx_http_dsv4_usage(ctx);

            body = json_pack("{s:s%,s:s,s:I,s:s,s:[],s:o}",
                             "id", ctx->id, ctx->id_len,
                             "object", ngx_http_dsv4_is_chat(ctx)
                                       ? "chat.completion.chunk"
                                       : "text_completion",
                             "created", (json_int_t) ctx->created,
                             "model", ctx->prep->model_name,
                             "choices", "usage", usage);

            if (body == NULL
                || dsv4_strbuf_puts(&ctx->out, "data: ") != 0
                || ngx_http_dsv4_dump(&ctx->out, body) != 0
                || dsv4_strbuf_puts(&ctx->out, "\n\n") != 0)
            {
                json_decref(body);
                return NGX_ERROR;
            }

            json_decref(body);
        }

        if (dsv4_strbuf_puts(&ctx->out, "data: [DONE]\n\n") != 0) {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ctx->error) {
        return ngx_http_dsv4_send_error(r, ctx->api,
                                        NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "the engine failed to generate the "
                                        "completion", NULL, "engine_error");
    }

    choices = json_array();
    if (choices == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ctx->nchoices; i++) {
        c = ngx_http_dsv4_final_choice(ctx, &ctx->choices[i]);

        if (c == NULL || json_array_append_new(choices, c) != 0) {
            json_decref(choices);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    usage = ngx_http_dsv4_usage(ctx);

    body = json_pack("{s:s%,s:s,s:I,s:s,s:o,s:o}",
                     "id", ctx->id, ctx->id_len,
                     "object", ngx_http_dsv4_is_chat(ctx)
                               ? "chat.completion" : "text_completion",
                     "created", (json_int_t) ctx->created,
                     "model", ctx->prep->model_name,
                     "choices", choices, "usage", usage);

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_dsv4_send_json(r, NGX_HTTP_OK, body);
}
