/*
 * DeepSeek-V4 chat encoding; see chat.h for the request mapping.
 *
 * The official encoder works in four passes and so does this file, because
 * each pass changes what the next one sees: (1) tool messages are merged
 * into user turns (and consecutive user messages into one), (2) tool results
 * are re-ordered to the order of the preceding assistant's calls, (3) in
 * thinking mode, reasoning before the last user turn is dropped (and
 * developer turns there with it), (4) each message is rendered, with a
 * transition token chosen by what follows it.  Python truthiness in the
 * official code ("if tools:", "content or ''") is kept: an empty list or
 * string behaves like a missing one.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "pyjson.h"
#include "strbuf.h"

#define REASONING_EFFORT_MAX \
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n" \
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n" \
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"

#define TOOLS_TEMPLATE_HEAD \
    "## Tools\n\n" \
    "You have access to a set of tools to help answer the user's question. You can invoke tools by writing a \"<" DSV4_DSML "tool_calls>\" block like the following:\n\n" \
    "<" DSV4_DSML "tool_calls>\n" \
    "<" DSV4_DSML "invoke name=\"$TOOL_NAME\">\n" \
    "<" DSV4_DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSV4_DSML "parameter>\n" \
    "...\n" \
    "</" DSV4_DSML "invoke>\n" \
    "<" DSV4_DSML "invoke name=\"$TOOL_NAME2\">\n" \
    "...\n" \
    "</" DSV4_DSML "invoke>\n" \
    "</" DSV4_DSML "tool_calls>\n\n" \
    "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n" \
    "If thinking_mode is enabled (triggered by " DSV4_THINK "), you MUST output your complete reasoning inside " DSV4_THINK "..." DSV4_THINK_END " BEFORE any tool calls or final response.\n\n" \
    "Otherwise, output directly after " DSV4_THINK_END " with tool calls or final response.\n\n" \
    "### Available Tool Schemas\n\n"

#define TOOLS_TEMPLATE_TAIL \
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"

#define RESPONSE_FORMAT_HEAD \
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_DEVELOPER, ROLE_REMINDER, ROLE_TOOL };

static const char *const task_names[] = {"action", "query", "authority", "domain", "title", "read_url"};
static const char *const task_tokens[] = {
    "<\xef\xbd\x9c" "action\xef\xbd\x9c>", "<\xef\xbd\x9c" "query\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "authority\xef\xbd\x9c>", "<\xef\xbd\x9c" "domain\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "title\xef\xbd\x9c>", "<\xef\xbd\x9c" "read_url\xef\xbd\x9c>",
};
#define TASK_ACTION 0

typedef struct {
    int         tool_result;    /* 0: text block */
    const char *text;
    size_t      len;
    const char *tool_use_id;    /* tool results: the call id, "" if none */
} block;

typedef struct {
    int         role;
    const char *content;        /* flattened; NULL = None */
    size_t      content_len;
    const char *reasoning;      /* assistant; NULL = None */
    size_t      reasoning_len;
    json_t     *tools;          /* borrowed, non-empty array or NULL */
    json_t     *response_format;/* borrowed, non-empty object or NULL */
    json_t     *tool_calls;     /* borrowed, non-empty array or NULL */
    const char *tool_call_id;   /* role tool */
    int         wo_eos;
    int         task;           /* -1 none */
    block      *blocks;         /* user turns after merging */
    size_t      nblocks, capblocks;
} msg;

typedef struct {
    char        *err;
    size_t       errlen;
    int          nomem;
    void       **owned;         /* strings and arrays freed at the end */
    size_t       nowned, capowned;
} ctx;


static int
fail(ctx *c, const char *fmt, ...)
{
    va_list ap;

    if (c->err != NULL && c->errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}


static int
nomem(ctx *c)
{
    c->nomem = 1;
    return fail(c, "out of memory");
}


static void *
own(ctx *c, void *p)
{
    if (p == NULL) {
        return NULL;
    }
    if (c->nowned == c->capowned) {
        size_t cap = c->capowned ? c->capowned * 2 : 16;
        void **n = realloc(c->owned, cap * sizeof(*n));

        if (n == NULL) {
            free(p);
            return NULL;
        }
        c->owned = n;
        c->capowned = cap;
    }
    c->owned[c->nowned++] = p;
    return p;
}


static int
add_block(ctx *c, msg *m, block b)
{
    if (m->nblocks == m->capblocks) {
        size_t cap = m->capblocks ? m->capblocks * 2 : 4;
        block *n = malloc(cap * sizeof(*n));

        if (n == NULL || own(c, n) == NULL) {
            return nomem(c);
        }
        if (m->nblocks) {
            memcpy(n, m->blocks, m->nblocks * sizeof(*n));
        }
        m->blocks = n;
        m->capblocks = cap;
    }
    m->blocks[m->nblocks++] = b;
    return 0;
}


/* ---- reading the request ------------------------------------------------ */

/* content: string, null, or an array of parts.  For tool results the
 * official encoder joins text parts with "\n\n" and names other parts; for
 * every other message text parts are concatenated and others rejected. */
static int
flatten_content(ctx *c, json_t *v, int tool, size_t mi, const char **s, size_t *n)
{
    dsv4_strbuf b = DSV4_STRBUF_INIT;
    json_t     *part;
    size_t      i;

    *s = NULL;
    *n = 0;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (json_is_string(v)) {
        *s = json_string_value(v);
        *n = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v)) {
        if (!tool) {
            return fail(c, "messages[%zu].content must be a string or an array of parts", mi);
        }
        /* a tool result given as JSON: put it in the prompt as JSON */
        if (dsv4_pyjson_dump(&b, v) != 0 || own(c, b.data) == NULL) {
            dsv4_strbuf_free(&b);
            return nomem(c);
        }
        *s = b.data;
        *n = b.len;
        return 0;
    }
    json_array_foreach(v, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t     *text = json_object_get(part, "text");
        int         rc = 0;

        if (type != NULL && strcmp(type, "text") == 0 && (text == NULL || json_is_string(text))) {
            if (tool && i > 0) rc = dsv4_strbuf_append(&b, "\n\n", 2);
            if (rc == 0 && text) rc = dsv4_strbuf_append(&b, json_string_value(text), json_string_length(text));
        } else if (tool) {
            if (i > 0) rc = dsv4_strbuf_append(&b, "\n\n", 2);
            if (rc == 0) rc = dsv4_strbuf_puts(&b, "[Unsupported ");
            if (rc == 0) rc = dsv4_strbuf_puts(&b, type ? type : "None");
            if (rc == 0) rc = dsv4_strbuf_putc(&b, ']');
        } else {
            dsv4_strbuf_free(&b);
            return fail(c, "messages[%zu].content[%zu]: part type \"%s\" is not supported",
                        mi, i, type ? type : "?");
        }
        if (rc != 0) {
            dsv4_strbuf_free(&b);
            return nomem(c);
        }
    }
    if (dsv4_strbuf_reserve(&b, 0) != 0 || own(c, b.data) == NULL) {
        dsv4_strbuf_free(&b);
        return nomem(c);
    }
    *s = b.data;
    *n = b.len;
    return 0;
}


static int
check_tools(ctx *c, json_t *tools, const char *where)
{
    json_t *t;
    size_t  i;

    if (!json_is_array(tools)) {
        return fail(c, "%s must be an array", where);
    }
    json_array_foreach(tools, i, t) {
        if (!json_is_object(json_object_get(t, "function"))) {
            return fail(c, "%s[%zu] has no \"function\" object", where, i);
        }
    }
    return 0;
}


static int
check_tool_calls(ctx *c, json_t *calls, size_t mi)
{
    json_t *tc;
    size_t  i;

    if (!json_is_array(calls)) {
        return fail(c, "messages[%zu].tool_calls must be an array", mi);
    }
    json_array_foreach(calls, i, tc) {
        json_t *f = json_object_get(tc, "function");
        json_t *args = json_object_get(f, "arguments");

        if (!json_is_string(json_object_get(f, "name"))) {
            return fail(c, "messages[%zu].tool_calls[%zu].function.name must be a string", mi, i);
        }
        if (args != NULL && !json_is_string(args) && !json_is_object(args) && !json_is_null(args)) {
            return fail(c, "messages[%zu].tool_calls[%zu].function.arguments must be a "
                        "JSON string", mi, i);
        }
    }
    return 0;
}


static int
read_message(ctx *c, json_t *jm, size_t mi, msg *m)
{
    const char *role = json_string_value(json_object_get(jm, "role"));
    json_t     *v;

    memset(m, 0, sizeof(*m));
    m->task = -1;
    if (!json_is_object(jm) || role == NULL) {
        return fail(c, "messages[%zu] must be an object with a \"role\"", mi);
    }
    if (strcmp(role, "system") == 0) m->role = ROLE_SYSTEM;
    else if (strcmp(role, "user") == 0) m->role = ROLE_USER;
    else if (strcmp(role, "assistant") == 0) m->role = ROLE_ASSISTANT;
    else if (strcmp(role, "developer") == 0) m->role = ROLE_DEVELOPER;
    else if (strcmp(role, "latest_reminder") == 0) m->role = ROLE_REMINDER;
    else if (strcmp(role, "tool") == 0) m->role = ROLE_TOOL;
    else return fail(c, "messages[%zu].role \"%s\" is not supported", mi, role);

    if (flatten_content(c, json_object_get(jm, "content"), m->role == ROLE_TOOL, mi,
                        &m->content, &m->content_len) != 0)
    {
        return -1;
    }
    if (m->role == ROLE_DEVELOPER && m->content_len == 0) {
        return fail(c, "messages[%zu]: a developer message needs content", mi);
    }

    v = json_object_get(jm, "tools");
    if (v != NULL && !json_is_null(v)) {
        if (check_tools(c, v, "tools") != 0) return -1;
        if (json_array_size(v) > 0) m->tools = v;
    }
    v = json_object_get(jm, "response_format");
    if (json_is_object(v) && json_object_size(v) > 0) m->response_format = v;

    if (m->role == ROLE_ASSISTANT) {
        v = json_object_get(jm, "reasoning_content");
        if (v == NULL || json_is_null(v)) v = json_object_get(jm, "reasoning");
        if (v != NULL && !json_is_null(v)) {
            if (!json_is_string(v)) {
                return fail(c, "messages[%zu].reasoning_content must be a string", mi);
            }
            m->reasoning = json_string_value(v);
            m->reasoning_len = json_string_length(v);
        }
        v = json_object_get(jm, "tool_calls");
        if (v != NULL && !json_is_null(v)) {
            if (check_tool_calls(c, v, mi) != 0) return -1;
            if (json_array_size(v) > 0) m->tool_calls = v;
        }
    }
    if (m->role == ROLE_TOOL) {
        v = json_object_get(jm, "tool_call_id");
        m->tool_call_id = json_is_string(v) ? json_string_value(v) : "";
    }

    m->wo_eos = json_is_true(json_object_get(jm, "wo_eos"))
                || json_is_true(json_object_get(jm, "prefix"));
    v = json_object_get(jm, "task");
    if (v != NULL && !json_is_null(v)) {
        const char *t = json_string_value(v);

        for (int k = 0; t != NULL && k < 6; k++) {
            if (strcmp(t, task_names[k]) == 0) m->task = k;
        }
        if (m->task < 0) {
            return fail(c, "messages[%zu].task is not one of action, query, authority, "
                        "domain, title, read_url", mi);
        }
    }
    return 0;
}


/* thinking / reasoning_effort -> mode and whether the max prefix is used */
static int
read_mode(ctx *c, const json_t *req, const dsv4_chat_options *opt, int *thinking, int *effort_max)
{
    json_t     *th = json_object_get(req, "thinking");
    json_t     *kw = json_object_get(req, "chat_template_kwargs");
    json_t     *re = json_object_get(req, "reasoning_effort");
    int         explicit_off = 0, set = 0;
    const char *e;

    *thinking = opt->thinking;
    *effort_max = 0;
    if (th == NULL || json_is_null(th)) {
        th = json_object_get(kw, "thinking");
        if (th == NULL || json_is_null(th)) th = json_object_get(kw, "enable_thinking");
    }
    if (json_is_boolean(th)) {
        *thinking = json_is_true(th);
        set = 1;
    } else if (json_is_object(th)) {
        const char *type = json_string_value(json_object_get(th, "type"));

        if (type != NULL && strcmp(type, "enabled") == 0) *thinking = 1;
        else if (type != NULL && strcmp(type, "disabled") == 0) *thinking = 0;
        else return fail(c, "thinking.type must be \"enabled\" or \"disabled\"");
        set = 1;
    } else if (th != NULL && !json_is_null(th)) {
        return fail(c, "thinking must be a boolean or {\"type\": \"enabled\"|\"disabled\"}");
    }
    explicit_off = set && !*thinking;

    if (re == NULL || json_is_null(re)) {
        return 0;
    }
    e = json_string_value(re);
    if (e == NULL) {
        return fail(c, "reasoning_effort must be a string");
    }
    if (strcmp(e, "none") == 0) {
        *thinking = 0;
        return 0;
    }
    if (strcmp(e, "max") != 0 && strcmp(e, "high") != 0 && strcmp(e, "medium") != 0
        && strcmp(e, "low") != 0 && strcmp(e, "minimal") != 0)
    {
        return fail(c, "reasoning_effort \"%s\" is not one of none, minimal, low, "
                    "medium, high, max", e);
    }
    if (!explicit_off) {
        *thinking = 1;
        *effort_max = strcmp(e, "max") == 0;
    }
    return 0;
}


/* ---- the official preprocessing passes ---------------------------------- */

/* merge_tool_messages: tool results become tool_result blocks of a user
 * turn; consecutive user messages join the same turn (unless it has a
 * task). */
static int
merge_tools(ctx *c, msg *in, size_t n, msg *out, size_t *nout)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        msg  *last = k ? &out[k - 1] : NULL;
        block b;

        if (in[i].role == ROLE_TOOL) {
            b = (block) {1, in[i].content ? in[i].content : "", in[i].content_len,
                         in[i].tool_call_id};
            if (last && last->role == ROLE_USER && last->nblocks > 0) {
                if (add_block(c, last, b) != 0) return -1;
            } else {
                memset(&out[k], 0, sizeof(msg));
                out[k].role = ROLE_USER;
                out[k].task = -1;
                if (add_block(c, &out[k], b) != 0) return -1;
                k++;
            }
        } else if (in[i].role == ROLE_USER) {
            b = (block) {0, in[i].content ? in[i].content : "", in[i].content_len, ""};
            if (last && last->role == ROLE_USER && last->nblocks > 0 && last->task < 0) {
                if (add_block(c, last, b) != 0) return -1;
            } else {
                out[k] = in[i];
                /* only content, blocks, task and wo_eos survive the merge */
                out[k].tools = NULL;
                out[k].response_format = NULL;
                out[k].blocks = NULL;
                out[k].nblocks = out[k].capblocks = 0;
                if (add_block(c, &out[k], b) != 0) return -1;
                k++;
            }
        } else {
            out[k++] = in[i];
        }
    }
    *nout = k;
    return 0;
}


static const char *
call_id(json_t *tc)
{
    const char *id = json_string_value(json_object_get(tc, "id"));

    if (id == NULL || *id == '\0') {
        id = json_string_value(json_object_get(json_object_get(tc, "function"), "id"));
    }
    return id ? id : "";
}


/* sort_tool_results_by_call_order: the tool_result blocks of a user turn
 * are stably sorted by the position of their call id in the last assistant
 * turn that made calls (an unknown id sorts as position 0). */
static int
sort_tool_results(ctx *c, msg *m, size_t n)
{
    json_t *calls = NULL;

    for (size_t i = 0; i < n; i++) {
        size_t  nt = 0, j, k;
        block  *tb;

        if (m[i].role == ROLE_ASSISTANT && m[i].tool_calls) {
            calls = m[i].tool_calls;
            continue;
        }
        if (m[i].role != ROLE_USER || calls == NULL) {
            continue;
        }
        for (j = 0; j < m[i].nblocks; j++) nt += m[i].blocks[j].tool_result;
        if (nt < 2) {
            continue;
        }
        /* the order map: a later duplicate id takes the later position */
        int any = 0;
        for (j = 0; j < json_array_size(calls); j++) any |= *call_id(json_array_get(calls, j)) != '\0';
        if (!any) {
            continue;
        }
        tb = own(c, malloc(nt * sizeof(*tb)));
        if (tb == NULL) {
            return nomem(c);
        }
        int *key = own(c, malloc(nt * sizeof(*key)));
        if (key == NULL) {
            return nomem(c);
        }
        for (j = 0, k = 0; j < m[i].nblocks; j++) {
            if (!m[i].blocks[j].tool_result) continue;
            tb[k] = m[i].blocks[j];
            key[k] = 0;
            for (size_t q = 0; q < json_array_size(calls); q++) {
                const char *id = call_id(json_array_get(calls, q));

                if (*id != '\0' && strcmp(id, tb[k].tool_use_id) == 0) key[k] = (int) q;
            }
            k++;
        }
        /* insertion sort: stable, and n is small */
        for (j = 1; j < nt; j++) {
            block b = tb[j];
            int   kv = key[j];

            for (k = j; k > 0 && key[k - 1] > kv; k--) {
                tb[k] = tb[k - 1];
                key[k] = key[k - 1];
            }
            tb[k] = b;
            key[k] = kv;
        }
        for (j = 0, k = 0; j < m[i].nblocks; j++) {
            if (m[i].blocks[j].tool_result) m[i].blocks[j] = tb[k++];
        }
    }
    return 0;
}


static long
last_user_index(const msg *m, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        if (m[i].role == ROLE_USER || m[i].role == ROLE_DEVELOPER) {
            return (long) i;
        }
    }
    return -1;
}


/* _drop_thinking_messages: before the last user turn, assistant turns
 * lose their reasoning and developer turns are dropped. */
static size_t
drop_thinking(msg *m, size_t n)
{
    long   last = last_user_index(m, n);
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        if (m[i].role == ROLE_SYSTEM || m[i].role == ROLE_USER || m[i].role == ROLE_REMINDER
            || (long) i >= last)
        {
            m[k++] = m[i];
        } else if (m[i].role == ROLE_ASSISTANT) {
            m[k] = m[i];
            m[k].reasoning = NULL;
            m[k].reasoning_len = 0;
            k++;
        }
    }
    return k;
}


/* ---- rendering ------------------------------------------------------------ */

#define PUT(s)        do { if (dsv4_strbuf_puts(b, (s)) != 0) return -1; } while (0)
#define PUTN(s, n)    do { if (dsv4_strbuf_append(b, (s), (n)) != 0) return -1; } while (0)

static int
render_tools(dsv4_strbuf *b, json_t *tools)
{
    json_t *t;
    size_t  i;

    PUT(TOOLS_TEMPLATE_HEAD);
    json_array_foreach(tools, i, t) {
        if (i > 0) PUT("\n");
        if (dsv4_pyjson_dump(b, json_object_get(t, "function")) != 0) return -1;
    }
    PUT(TOOLS_TEMPLATE_TAIL);
    return 0;
}


static int
render_system_extras(dsv4_strbuf *b, const msg *m)
{
    if (m->tools) {
        PUT("\n\n");
        if (render_tools(b, m->tools) != 0) return -1;
    }
    if (m->response_format) {
        PUT("\n\n" RESPONSE_FORMAT_HEAD);
        if (dsv4_pyjson_dump(b, m->response_format) != 0) return -1;
    }
    return 0;
}


/* encode_arguments_to_dsml: the arguments JSON object becomes one parameter
 * per key; strings raw with string="true", anything else as JSON.
 * Arguments that are not a JSON object become one "arguments" string. */
static int
render_arguments(dsv4_strbuf *b, json_t *args)
{
    json_t     *obj = NULL, *val;
    const char *key;
    int         first = 1, rc = 0;

    if (json_is_object(args)) {
        obj = json_incref(args);
    } else if (json_is_string(args)) {
        obj = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
        if (!json_is_object(obj)) {
            json_decref(obj);
            obj = json_pack("{sO}", "arguments", args);
        }
    } else {
        obj = json_object();
    }
    if (obj == NULL) {
        return -1;
    }
    json_object_foreach(obj, key, val) {
        if (!first) rc |= dsv4_strbuf_putc(b, '\n');
        first = 0;
        rc |= dsv4_strbuf_puts(b, "<" DSV4_DSML "parameter name=\"");
        rc |= dsv4_strbuf_puts(b, key);
        rc |= dsv4_strbuf_puts(b, json_is_string(val) ? "\" string=\"true\">" : "\" string=\"false\">");
        if (json_is_string(val)) {
            rc |= dsv4_strbuf_append(b, json_string_value(val), json_string_length(val));
        } else {
            rc |= dsv4_pyjson_dump(b, val);
        }
        rc |= dsv4_strbuf_puts(b, "</" DSV4_DSML "parameter>");
        if (rc) break;
    }
    json_decref(obj);
    return rc ? -1 : 0;
}


static int
render_tool_calls(dsv4_strbuf *b, json_t *calls)
{
    json_t *tc;
    size_t  i;

    PUT("\n\n<" DSV4_DSML "tool_calls>\n");
    json_array_foreach(calls, i, tc) {
        json_t *f = json_object_get(tc, "function");

        if (i > 0) PUT("\n");
        PUT("<" DSV4_DSML "invoke name=\"");
        PUT(json_string_value(json_object_get(f, "name")));
        PUT("\">\n");
        if (render_arguments(b, json_object_get(f, "arguments")) != 0) return -1;
        PUT("\n</" DSV4_DSML "invoke>");
    }
    PUT("\n</" DSV4_DSML "tool_calls>");
    return 0;
}


static int
render_message(dsv4_strbuf *b, const msg *m, size_t n, size_t i, int thinking,
               int drop, int effort_max)
{
    const msg *cur = &m[i];
    long       last_user = last_user_index(m, n);

    if (i == 0 && thinking && effort_max) {
        PUT(REASONING_EFFORT_MAX);
    }
    switch (cur->role) {
    case ROLE_SYSTEM:
        if (cur->content) PUTN(cur->content, cur->content_len);
        if (render_system_extras(b, cur) != 0) return -1;
        break;
    case ROLE_DEVELOPER:
        PUT(DSV4_USER);
        PUTN(cur->content, cur->content_len);
        if (render_system_extras(b, cur) != 0) return -1;
        break;
    case ROLE_USER:
        PUT(DSV4_USER);
        for (size_t k = 0; k < cur->nblocks; k++) {
            if (k > 0) PUT("\n\n");
            if (cur->blocks[k].tool_result) PUT("<tool_result>");
            PUTN(cur->blocks[k].text, cur->blocks[k].len);
            if (cur->blocks[k].tool_result) PUT("</tool_result>");
        }
        break;
    case ROLE_REMINDER:
        PUT(DSV4_REMINDER);
        if (cur->content) PUTN(cur->content, cur->content_len);
        break;
    case ROLE_ASSISTANT: {
        int prev_task = i > 0 && m[i - 1].task >= 0;

        if (thinking && !prev_task && (!drop || (long) i > last_user)) {
            if (cur->reasoning) PUTN(cur->reasoning, cur->reasoning_len);
            PUT(DSV4_THINK_END);
        }
        if (cur->content) PUTN(cur->content, cur->content_len);
        if (cur->tool_calls && render_tool_calls(b, cur->tool_calls) != 0) return -1;
        if (!cur->wo_eos) PUT(DSV4_EOS);
        break;
    }
    }

    /* the transition, decided by what follows */
    if (i + 1 < n && m[i + 1].role != ROLE_ASSISTANT && m[i + 1].role != ROLE_REMINDER) {
        return 0;
    }
    if (cur->task >= 0) {
        if (cur->task != TASK_ACTION) {
            PUT(task_tokens[cur->task]);
        } else {
            PUT(DSV4_ASSISTANT);
            PUT(thinking ? DSV4_THINK : DSV4_THINK_END);
            PUT(task_tokens[cur->task]);
        }
    } else if (cur->role == ROLE_USER || cur->role == ROLE_DEVELOPER) {
        PUT(DSV4_ASSISTANT);
        if (thinking && (!drop || (long) i >= last_user)) {
            PUT(DSV4_THINK);
        } else {
            PUT(DSV4_THINK_END);
        }
    }
    return 0;
}


/* ---- entry points ----------------------------------------------------------- */

void
dsv4_chat_options_default(dsv4_chat_options *o)
{
    o->thinking = 0;
    o->drop_thinking = 1;
    o->add_bos = 1;
}


static int
attach_request_extras(ctx *c, const json_t *req, msg *m, size_t *n, int *inserted)
{
    json_t *tools = json_object_get(req, "tools");
    json_t *rf = json_object_get(req, "response_format");
    int     has_tools, has_rf;

    *inserted = 0;
    if (tools != NULL && !json_is_null(tools) && check_tools(c, tools, "tools") != 0) {
        return -1;
    }
    if (rf != NULL && !json_is_null(rf) && !json_is_object(rf)) {
        return fail(c, "response_format must be an object");
    }
    has_tools = json_array_size(tools) > 0;
    has_rf = json_is_object(rf) && json_object_size(rf) > 0
             && !(json_is_string(json_object_get(rf, "type"))
                  && strcmp(json_string_value(json_object_get(rf, "type")), "text") == 0);
    if (!has_tools && !has_rf) {
        return 0;
    }
    if (*n == 0 || (m[0].role != ROLE_SYSTEM && m[0].role != ROLE_DEVELOPER)) {
        memmove(m + 1, m, *n * sizeof(*m));
        memset(&m[0], 0, sizeof(*m));
        m[0].role = ROLE_SYSTEM;
        m[0].task = -1;
        (*n)++;
        *inserted = 1;
    }
    /* request-level values replace what the message carried, so the block
     * is never rendered twice */
    if (has_tools) m[0].tools = tools;
    if (has_rf) m[0].response_format = rf;
    return 0;
}


int
dsv4_chat_encode(const json_t *req, const dsv4_chat_options *opt, dsv4_chat_prompt *out,
                 char *err, size_t errlen)
{
    ctx          c = {err, errlen, 0, NULL, 0, 0};
    json_t      *jmsgs = json_object_get(req, "messages");
    msg         *in = NULL, *m = NULL;
    size_t       n, nm = 0;
    int          thinking, effort_max, drop, inserted, rc = -1;
    dsv4_strbuf  b = DSV4_STRBUF_INIT;

    memset(out, 0, sizeof(*out));
    if (err && errlen) err[0] = '\0';
    if (!json_is_object(req)) {
        return fail(&c, "the request body must be a JSON object");
    }
    if (!json_is_array(jmsgs) || json_array_size(jmsgs) == 0) {
        return fail(&c, "messages must be a non-empty array");
    }
    if (read_mode(&c, req, opt, &thinking, &effort_max) != 0) {
        return -1;
    }
    n = json_array_size(jmsgs);
    in = calloc(n + 1, sizeof(*in));
    m = calloc(n + 1, sizeof(*m));
    if (in == NULL || m == NULL) {
        nomem(&c);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (read_message(&c, json_array_get(jmsgs, i), i, &in[i]) != 0) {
            goto done;
        }
    }
    if (attach_request_extras(&c, req, in, &n, &inserted) != 0
        || merge_tools(&c, in, n, m, &nm) != 0
        || sort_tool_results(&c, m, nm) != 0)
    {
        goto done;
    }

    drop = opt->drop_thinking;
    for (size_t i = 0; i < nm; i++) {
        if (m[i].tools) drop = 0;    /* tools keep every turn's reasoning */
    }
    if (thinking && drop) {
        nm = drop_thinking(m, nm);
    }

    if (opt->add_bos && dsv4_strbuf_puts(&b, DSV4_BOS) != 0) {
        nomem(&c);
        goto done;
    }
    for (size_t i = 0; i < nm; i++) {
        if (render_message(&b, m, nm, i, thinking, drop, effort_max) != 0) {
            nomem(&c);
            goto done;
        }
        if (m[i].tools) out->has_tools = 1;
    }

    out->thinking = thinking;
    out->reasoning_open = b.len >= strlen(DSV4_THINK)
        && memcmp(b.data + b.len - strlen(DSV4_THINK), DSV4_THINK, strlen(DSV4_THINK)) == 0;
    out->text = dsv4_strbuf_take(&b, &out->len);
    if (out->text == NULL) {
        nomem(&c);
        goto done;
    }
    rc = 0;

done:
    if (rc != 0 && c.nomem) rc = -2;
    dsv4_strbuf_free(&b);
    for (size_t i = 0; i < c.nowned; i++) free(c.owned[i]);
    free(c.owned);
    free(in);
    free(m);
    return rc;
}


int
dsv4_chat_encode_json(const char *body, size_t len, const dsv4_chat_options *opt,
                      dsv4_chat_prompt *out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t      *req;
    int          rc;

    memset(out, 0, sizeof(*out));
    req = json_loadb(body, len, 0, &jerr);
    if (req == NULL) {
        if (err && errlen) {
            snprintf(err, errlen, "invalid JSON at line %d column %d: %s",
                     jerr.line, jerr.column, jerr.text);
        }
        return -1;
    }
    rc = dsv4_chat_encode(req, opt, out, err, errlen);
    json_decref(req);
    return rc;
}


void
dsv4_chat_prompt_free(dsv4_chat_prompt *p)
{
    free(p->text);
    p->text = NULL;
    p->len = 0;
}
