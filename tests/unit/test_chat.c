/*
 * Chat encoding tests: the official encoder's gold vectors byte for byte
 * (tests/tokenizer/chat/, see its README), the request-field mapping, each
 * rule of the official encoder on small cases, Python json.dumps
 * compatibility, and bad requests failing with a message naming the field.
 */
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "chat.h"
#include "pyjson.h"
#include "strbuf.h"

static char *
slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *b;
    long  len;

    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    b = malloc((size_t) len + 1);
    if (b == NULL || fread(b, 1, (size_t) len, f) != (size_t) len) {
        fclose(f);
        free(b);
        return NULL;
    }
    b[len] = '\0';
    *n = (size_t) len;
    fclose(f);
    return b;
}


/* The official tests pass a message list (cases 2-4) or {tools, messages}
 * with the tools put on the system message (case 1, which is what a
 * request-level "tools" does here). */
static void
test_gold(int n, int thinking)
{
    char              in[128], out[128], err[256] = "";
    size_t            ni, no;
    char             *body, *want;
    json_t           *j;
    dsv4_chat_options o;
    dsv4_chat_prompt  p;

    snprintf(in, sizeof(in), "tests/tokenizer/chat/case%d_input.json", n);
    snprintf(out, sizeof(out), "tests/tokenizer/chat/case%d_output.txt", n);
    body = slurp(in, &ni);
    want = slurp(out, &no);
    TEST_CHECK(body && want, "case %d files are readable", n);
    if (!body || !want) return;
    j = json_loadb(body, ni, 0, NULL);
    if (json_is_array(j)) {
        json_t *o2 = json_object();

        json_object_set_new(o2, "messages", j);
        j = o2;
    }
    dsv4_chat_options_default(&o);
    o.thinking = thinking;
    TEST_CHECK(dsv4_chat_encode(j, &o, &p, err, sizeof(err)) == 0, "case %d encodes: %s", n, err);
    TEST_CHECK(p.text && p.len == no && memcmp(p.text, want, no) == 0,
               "case %d is byte-identical to the official output (%zu vs %zu bytes)", n, p.len, no);
    TEST_CHECK(p.thinking == thinking, "case %d mode", n);
    dsv4_chat_prompt_free(&p);
    json_decref(j);
    free(body);
    free(want);
}


static char *
enc(const char *body, int thinking, char *err, size_t errlen, dsv4_chat_prompt *meta)
{
    dsv4_chat_options o;
    dsv4_chat_prompt  p;

    dsv4_chat_options_default(&o);
    o.thinking = thinking;
    if (dsv4_chat_encode_json(body, strlen(body), &o, &p, err, errlen) != 0) {
        return NULL;
    }
    if (meta) *meta = p;
    return p.text;
}

#define B  DSV4_BOS
#define E  DSV4_EOS
#define U  DSV4_USER
#define A  DSV4_ASSISTANT
#define T  DSV4_THINK
#define TE DSV4_THINK_END

#define EXPECT(body, thinking, want) \
    do { \
        char  err_[256] = ""; \
        char *got_ = enc(body, thinking, err_, sizeof(err_), NULL); \
        TEST_CHECK(got_ && strcmp(got_, want) == 0, "%s\n   got:  %s\n   want: %s %s", body, \
                   got_ ? got_ : "(error)", want, err_); \
        free(got_); \
    } while (0)

#define EXPECT_ERR(body, needle) \
    do { \
        char  err_[256] = ""; \
        char *got_ = enc(body, 0, err_, sizeof(err_), NULL); \
        TEST_CHECK(got_ == NULL && strstr(err_, needle) != NULL, "%s: error \"%s\" should mention \"%s\"", \
                   body, err_, needle); \
        free(got_); \
    } while (0)

#define MAX_PREFIX "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"


static void
test_rules(void)
{
    dsv4_chat_prompt meta;
    char             err[256];
    char            *s;

    /* the two modes, and the generation prompt */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2+2?\"}]}", 0, B U "What is 2+2?" A TE);
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2+2?\"}]}", 1, B U "What is 2+2?" A T);
    s = enc("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 1, err, sizeof(err), &meta);
    TEST_CHECK(s && meta.reasoning_open && meta.thinking && !meta.has_tools, "thinking prompt metadata");
    free(s);

    /* request switches */
    EXPECT("{\"thinking\":{\"type\":\"enabled\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0, B U "x" A T);
    EXPECT("{\"thinking\":{\"type\":\"disabled\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 1, B U "x" A TE);
    EXPECT("{\"thinking\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0, B U "x" A T);
    EXPECT("{\"chat_template_kwargs\":{\"thinking\":true},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0, B U "x" A T);
    EXPECT("{\"reasoning_effort\":\"high\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0, B U "x" A T);
    EXPECT("{\"reasoning_effort\":\"none\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 1, B U "x" A TE);
    EXPECT("{\"reasoning_effort\":\"max\",\"thinking\":false,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0,
           B U "x" A TE);
    /* max: the prefix goes before message 0, whatever its role */
    s = enc("{\"reasoning_effort\":\"max\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
            "{\"role\":\"user\",\"content\":\"x\"}]}", 0, err, sizeof(err), NULL);
    TEST_CHECK(s && strncmp(s, B MAX_PREFIX, strlen(B MAX_PREFIX)) == 0
               && strstr(s, "left unchecked.\n\nS" U "x" A T) != NULL, "max effort prefix: %s", s ? s : err);
    free(s);
    s = enc("{\"reasoning_effort\":\"max\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0, err, sizeof(err), NULL);
    TEST_CHECK(s && strstr(s, "unchecked.\n\n" U "x" A T) != NULL, "max prefix before a first user turn");
    free(s);

    /* multi-turn thinking: earlier reasoning dropped, earlier turns get </think> */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
           "{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"content\":\"b\"},"
           "{\"role\":\"user\",\"content\":\"c\"}]}", 1, B U "a" A TE "b" E U "c" A T);
    /* chat mode never renders reasoning */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
           "{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"content\":\"b\"}]}", 0, B U "a" A TE "b" E);
    /* developer turns before the last user turn are dropped in thinking mode */
    EXPECT("{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"},{\"role\":\"assistant\",\"content\":\"b\"},"
           "{\"role\":\"user\",\"content\":\"c\"}]}", 1, B "b" E U "c" A T);
    EXPECT("{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"},{\"role\":\"assistant\",\"content\":\"b\"},"
           "{\"role\":\"user\",\"content\":\"c\"}]}", 0, B U "d" A TE "b" E U "c" A TE);

    /* consecutive user messages join one turn with a blank line */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]}", 0,
           B U "a\n\nb" A TE);
    /* content parts are concatenated */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
           "{\"type\":\"text\",\"text\":\"b\"}]}]}", 0, B U "ab" A TE);

    /* tool results: merged, re-ordered to the call order, unknown ids first */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
           "{\"role\":\"assistant\",\"tool_calls\":["
           "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},"
           "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"n\\\": 1.50, \\\"s\\\": \\\"x\\\"}\"}}]},"
           "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":\"R2\"},"
           "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":[{\"type\":\"text\",\"text\":\"R1\"},{\"type\":\"image\"}]},"
           "{\"role\":\"user\",\"content\":\"thanks\"}]}", 0,
           B U "q" A TE "\n\n<" DSV4_DSML "tool_calls>\n<" DSV4_DSML "invoke name=\"f\">\n\n</" DSV4_DSML "invoke>\n"
           "<" DSV4_DSML "invoke name=\"g\">\n<" DSV4_DSML "parameter name=\"n\" string=\"false\">1.5</" DSV4_DSML
           "parameter>\n<" DSV4_DSML "parameter name=\"s\" string=\"true\">x</" DSV4_DSML "parameter>\n</" DSV4_DSML
           "invoke>\n</" DSV4_DSML "tool_calls>" E
           U "<tool_result>R1\n\n[Unsupported image]</tool_result>\n\n<tool_result>R2</tool_result>\n\nthanks" A TE);
    /* arguments that are not a JSON object become one "arguments" string;
     * an object given directly is used as is */
    EXPECT("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":["
           "{\"function\":{\"name\":\"f\",\"arguments\":\"not json\"}},"
           "{\"function\":{\"name\":\"g\",\"arguments\":{\"k\":[1,{\"a\":\"é\"}]}}}]}]}", 0,
           B "\n\n<" DSV4_DSML "tool_calls>\n<" DSV4_DSML "invoke name=\"f\">\n<" DSV4_DSML
           "parameter name=\"arguments\" string=\"true\">not json</" DSV4_DSML "parameter>\n</" DSV4_DSML "invoke>\n"
           "<" DSV4_DSML "invoke name=\"g\">\n<" DSV4_DSML "parameter name=\"k\" string=\"false\">[1, {\"a\": \"é\"}]</"
           DSV4_DSML "parameter>\n</" DSV4_DSML "invoke>\n</" DSV4_DSML "tool_calls>" E);

    /* request-level tools: onto the system message, or a new empty one */
    s = enc("{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"x\":1.0}}}],"
            "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 1, err, sizeof(err), &meta);
    TEST_CHECK(s && strncmp(s, B "\n\n## Tools\n\nYou have access", strlen(B "\n\n## Tools\n\nYou have access")) == 0
               && strstr(s, "### Available Tool Schemas\n\n{\"name\": \"f\", \"parameters\": {\"x\": 1.0}}\n\n"
                            "You MUST strictly follow") != NULL && meta.has_tools,
               "tools on an inserted system message: %s", s ? s : err);
    free(s);
    /* tools keep earlier reasoning (drop_thinking is off) */
    s = enc("{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"messages\":["
            "{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"a\"},"
            "{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"content\":\"b\"},"
            "{\"role\":\"user\",\"content\":\"c\"}]}", 1, err, sizeof(err), NULL);
    TEST_CHECK(s && strncmp(s, B "S\n\n## Tools", strlen(B "S\n\n## Tools")) == 0
               && strstr(s, U "a" A T "r1" TE "b" E U "c" A T) != NULL, "tools keep reasoning: %s", s ? s : err);
    free(s);
    /* response_format */
    EXPECT("{\"response_format\":{\"type\":\"json_object\"},\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
           "{\"role\":\"user\",\"content\":\"x\"}]}", 0,
           B "S\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
           "{\"type\": \"json_object\"}" U "x" A TE);
    EXPECT("{\"response_format\":{\"type\":\"text\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 0,
           B U "x" A TE);
    /* prefix completion: the last assistant turn stays open */
    s = enc("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"Sure\","
            "\"prefix\":true}]}", 1, err, sizeof(err), &meta);
    TEST_CHECK(s && strcmp(s, B U "x" A T TE "Sure") == 0 && !meta.reasoning_open, "prefix: %s", s ? s : err);
    free(s);
    /* latest_reminder, and a system message with null content */
    EXPECT("{\"messages\":[{\"role\":\"system\",\"content\":null},{\"role\":\"latest_reminder\",\"content\":\"L\"},"
           "{\"role\":\"user\",\"content\":\"x\"}]}", 0, B DSV4_REMINDER "L" U "x" A TE);
    /* tasks */
    EXPECT("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"task\":\"query\"}]}", 0,
           B U "x<\xef\xbd\x9cquery\xef\xbd\x9c>");
}


static void
test_errors(void)
{
    EXPECT_ERR("[1]", "JSON object");
    EXPECT_ERR("{\"messages\":[]}", "messages");
    EXPECT_ERR("{\"messages\":{}}", "messages");
    EXPECT_ERR("{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role");
    EXPECT_ERR("{\"messages\":[{\"content\":\"x\"}]}", "messages[0]");
    EXPECT_ERR("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"developer\",\"content\":\"\"}]}",
               "messages[1]");
    EXPECT_ERR("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "image_url");
    EXPECT_ERR("{\"messages\":[{\"role\":\"user\",\"content\":42}]}", "messages[0].content");
    EXPECT_ERR("{\"thinking\":{\"type\":\"sometimes\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "thinking");
    EXPECT_ERR("{\"reasoning_effort\":\"extreme\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
               "reasoning_effort");
    EXPECT_ERR("{\"tools\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "tools");
    EXPECT_ERR("{\"tools\":[{\"type\":\"function\"}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "tools[0]");
    EXPECT_ERR("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}",
               "messages[0].tool_calls[0].function.name");
    EXPECT_ERR("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"task\":\"dance\"}]}", "task");
    EXPECT_ERR("{\"messages\": [", "invalid JSON");
}


static void
test_pyjson(void)
{
    const char *in = "[1.0, 1e-05, 1e16, 0.1, -0.0, 123456789.123, 1e22, 1.5e300, 2.5e-7, 100.0, 0.0001, "
                     "1234567890123456.7, 12345678901234567.0, 5e-324, 1.7976931348623157e308, 3, -17, "
                     "\"a\\u0001b\\u001f\\u007f\\t\\n\\\\\\\"/\", \"\\u00e9\xe4\xb8\xad\\ud83d\\ude00\", {}, [], "
                     "{\"k\": null, \"t\": true, \"f\": false}]";
    /* Python 3: json.dumps(json.loads(in), ensure_ascii=False) */
    const char *want = "[1.0, 1e-05, 1e+16, 0.1, -0.0, 123456789.123, 1e+22, 1.5e+300, 2.5e-07, 100.0, 0.0001, "
                       "1234567890123456.8, 1.2345678901234568e+16, 5e-324, 1.7976931348623157e+308, 3, -17, "
                       "\"a\\u0001b\\u001f\x7f\\t\\n\\\\\\\"/\", \"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\", {}, [], "
                       "{\"k\": null, \"t\": true, \"f\": false}]";
    json_t     *v = json_loads(in, 0, NULL);
    dsv4_strbuf b = DSV4_STRBUF_INIT;

    TEST_CHECK(v != NULL, "pyjson input parses");
    TEST_CHECK(v && dsv4_pyjson_dump(&b, v) == 0 && strcmp(b.data, want) == 0,
               "Python json.dumps compatible:\n   got:  %s\n   want: %s", b.data, want);
    json_decref(v);
    dsv4_strbuf_free(&b);
}


int
main(void)
{
    test_gold(1, 1);
    test_gold(2, 1);
    test_gold(3, 1);
    test_gold(4, 0);
    test_rules();
    test_errors();
    test_pyjson();
    return TEST_REPORT();
}
