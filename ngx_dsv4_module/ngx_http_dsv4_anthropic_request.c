
/*
 * Anthropic Messages API, the request: a /v1/messages body translated into
 * the OpenAI chat shape the V4 chat encoder reads (system, user / assistant
 * turns, tool_use -> tool_calls, tool_result -> tool messages, thinking
 * blocks -> reasoning_content).  No nginx runtime here: it runs in the
 * prepare step (a thread pool) and in tests/fuzz/fuzz_request.c.
 */


#include "ngx_http_dsv4_module.h"

#include <stdio.h>
#include <string.h>


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


