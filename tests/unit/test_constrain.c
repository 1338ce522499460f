/*
 * Constrained decoding: every grammar is driven to completion by a
 * "random model" (seeded random logits, greedy pick after the mask), the
 * way random weights drive it in the server, and the output must be what
 * the request asked for: a DSML tool call the output parser turns into a
 * TOOL_CALL with arguments of the declared types, or a JSON object.  Also:
 * explicit byte strings accepted / rejected, forced literals, termination
 * within a bound, and the mask cost on the V4 vocabulary (printed).
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../test.h"
#include "chat.h"
#include "constrain.h"
#include "parse.h"
#include "strbuf.h"
#include "tokenizer_fixture.h"

#define MAX_STEPS 2000

static const dsv4_tokenizer *tok;
static dsv4_vocab_index     *vi;
static int                   vocab;
static int32_t               eos;
static double                mask_s;
static long                  masks;
static uint64_t              nseeds = 12;   /* argv[1]: fewer under valgrind */

static const char *tools_json =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
    "{\"type\":\"object\",\"properties\":{"
    "\"city\":{\"type\":\"string\"},"
    "\"days\":{\"type\":\"integer\"},"
    "\"unit\":{\"type\":\"string\",\"enum\":[\"celsius\",\"fahrenheit\"]},"
    "\"hourly\":{\"type\":\"boolean\"},"
    "\"note\":{\"type\":\"string\"}},"
    "\"required\":[\"city\",\"days\",\"unit\",\"hourly\"]}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":"
    "{\"type\":\"object\",\"properties\":{\"zone\":{\"type\":\"string\"},"
    "\"extra\":{}}}}}]";

static uint64_t
rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* Decodes under c with random logits until eos; the text into out.
 * Returns the tokens used, or -1 on a grammar failure. */
static int
drive(dsv4_constraint *c, uint64_t seed, dsv4_strbuf *out)
{
    float *lg = malloc((size_t) vocab * sizeof(*lg));
    int    steps;

    dsv4_strbuf_reset(out);
    for (steps = 0; steps < MAX_STEPS; steps++) {
        struct timespec t0, t1;
        int32_t         best = -1;

        for (int i = 0; i < vocab; i++) lg[i] = (float) (rnd(&seed) % 100000) / 1000.0f;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int n = dsv4_constraint_mask(c, lg);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        mask_s += (double) (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        masks++;
        if (n <= 0) break;
        for (int i = 0; i < vocab; i++) {
            if (isfinite(lg[i]) && (best < 0 || lg[i] > lg[best])) best = i;
        }
        if (best < 0 || dsv4_constraint_accept(c, best) != 0) break;
        if (best == eos) {
            free(lg);
            return steps + 1;
        }
        size_t      len;
        const char *s = dsv4_tokenizer_token_bytes(tok, best, &len);
        dsv4_strbuf_append(out, s, len);
    }
    free(lg);
    return -1;
}

/* Parses text as a chat completion; the tool calls in calls (name|args\n). */
static int
parse_calls(const char *text, size_t len, dsv4_parse_start start, json_t **args,
            char *name, size_t namecap, int *ncontent)
{
    dsv4_parser_options opt = { start, 1, NULL, 0 };
    dsv4_parser        *p = dsv4_parser_new(tok, &opt);
    const dsv4_event   *ev;
    size_t              nev;
    int                 ncalls = 0;

    *ncontent = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) dsv4_parser_feed_text(p, text, len, &ev, &nev);
        else dsv4_parser_finish(p, &ev, &nev);
        for (size_t i = 0; i < nev; i++) {
            if (ev[i].type == DSV4_EV_TOOL_CALL) {
                ncalls++;
                snprintf(name, namecap, "%.*s", (int) ev[i].name_len, ev[i].name);
                *args = json_loadb(ev[i].text, ev[i].len, 0, NULL);
            } else if (ev[i].type == DSV4_EV_CONTENT && ev[i].len > 0) {
                (*ncontent)++;
            }
        }
    }
    dsv4_parser_free(p);
    return ncalls;
}

static void
test_tool_calls(void)
{
    json_t      *tools = json_loads(tools_json, 0, NULL);
    dsv4_strbuf  out = DSV4_STRBUF_INIT;
    char         err[256];
    int          seen_time = 0, seen_weather = 0;

    for (int think = 0; think < 2; think++) {
        for (uint64_t seed = 1; seed <= nseeds; seed++) {
            const char      *only = seed % 3 == 0 ? "get_weather" : NULL;
            dsv4_grammar    *g = dsv4_grammar_tool_call(tools, only, think, err, sizeof(err));
            dsv4_constraint *c = g ? dsv4_constraint_new(g, vi, eos) : NULL;
            json_t          *args = NULL;
            char             name[64] = "";
            int              ncontent, steps, ncalls;

            TEST_CHECK(g != NULL && c != NULL, "grammar: %s", err);
            dsv4_grammar_unref(g);
            if (c == NULL) continue;
            steps = drive(c, seed, &out);
            TEST_CHECK(steps > 0 && steps < 400, "seed %d: terminated in %d tokens", (int) seed,
                       steps);
            ncalls = parse_calls(out.data ? out.data : "", out.len,
                                 think ? DSV4_PARSE_REASONING : DSV4_PARSE_CHAT, &args, name,
                                 sizeof(name), &ncontent);
            TEST_CHECK(ncalls == 1 && ncontent == 0 && json_is_object(args),
                       "seed %d: one tool call, no content: %d calls, %d content, output %s",
                       (int) seed, ncalls, ncontent, out.data ? out.data : "");
            if (strcmp(name, "get_weather") == 0) {
                const char *unit = json_string_value(json_object_get(args, "unit"));

                seen_weather++;
                TEST_CHECK(json_is_string(json_object_get(args, "city"))
                           && json_is_integer(json_object_get(args, "days"))
                           && json_is_boolean(json_object_get(args, "hourly"))
                           && unit != NULL
                           && (strcmp(unit, "celsius") == 0 || strcmp(unit, "fahrenheit") == 0)
                           && json_object_get(args, "note") == NULL
                           && json_object_size(args) == 4,
                           "seed %d: typed required arguments: %s", (int) seed, out.data);
                TEST_CHECK(strlen(json_string_value(json_object_get(args, "city")))
                           <= DSV4_GRAMMAR_MAX_STR + 3, "bounded string");
            } else {
                seen_time++;
                TEST_CHECK(only == NULL && strcmp(name, "get_time") == 0
                           && json_is_string(json_object_get(args, "zone"))
                           && json_object_get(args, "extra") != NULL,
                           "seed %d: no required list: every property: %s %s", (int) seed,
                           name, out.data);
            }
            json_decref(args);
            dsv4_constraint_free(c);
        }
    }
    TEST_CHECK(seen_weather > 0 && (seen_time > 0 || nseeds < 12), "both functions chosen: %d %d",
               seen_time, seen_weather);

    TEST_CHECK(dsv4_grammar_tool_call(tools, "nope", 0, err, sizeof(err)) == NULL
               && strstr(err, "nope") != NULL, "unknown function named: %s", err);
    TEST_CHECK(dsv4_grammar_tool_call(NULL, NULL, 0, err, sizeof(err)) == NULL,
               "no tools refused");
    json_decref(tools);
    dsv4_strbuf_free(&out);
}

static void
test_json(void)
{
    const char *schema_txt =
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
        "\"age\":{\"type\":\"integer\"},\"score\":{\"type\":\"number\"},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
        "\"pet\":{\"type\":\"object\",\"properties\":{\"kind\":{\"enum\":[\"cat\",\"dog\",1]}},"
        "\"required\":[\"kind\"]},\"none\":{\"type\":\"null\"}},"
        "\"required\":[\"name\",\"age\",\"score\",\"tags\",\"pet\",\"none\"]}";
    json_t      *schema = json_loads(schema_txt, 0, NULL);
    dsv4_strbuf  out = DSV4_STRBUF_INIT;
    char         err[256];

    for (uint64_t seed = 1; seed <= nseeds + 4; seed++) {
        int              typed = seed % 2 == 0;
        dsv4_grammar    *g = dsv4_grammar_json(typed ? schema : NULL, seed % 4 == 1, err,
                                               sizeof(err));
        dsv4_constraint *c = g ? dsv4_constraint_new(g, vi, eos) : NULL;
        const char      *text;
        json_t          *v;
        int              steps;

        dsv4_grammar_unref(g);
        TEST_CHECK(c != NULL, "json grammar: %s", err);
        if (c == NULL) continue;
        steps = drive(c, seed * 7919, &out);
        text = out.data ? out.data : "";
        if (seed % 4 == 1) {
            TEST_CHECK(strncmp(text, "</think>", 8) == 0, "thinking closed first: %s", text);
            text += strlen(text) >= 8 ? 8 : 0;
        }
        v = json_loads(text, 0, NULL);
        TEST_CHECK(steps > 0 && steps < 600 && json_is_object(v),
                   "seed %d: a JSON object in %d tokens: %s", (int) seed, steps, text);
        if (typed && v != NULL) {
            json_t     *pet = json_object_get(v, "pet"), *kind = json_object_get(pet, "kind");
            const char *ks = json_string_value(kind);

            TEST_CHECK(json_is_string(json_object_get(v, "name"))
                       && json_is_integer(json_object_get(v, "age"))
                       && json_is_number(json_object_get(v, "score"))
                       && json_is_array(json_object_get(v, "tags"))
                       && json_is_null(json_object_get(v, "none"))
                       && (json_integer_value(kind) == 1
                           || (ks && (strcmp(ks, "cat") == 0 || strcmp(ks, "dog") == 0))),
                       "seed %d: schema types: %s", (int) seed, text);
        }
        json_decref(v);
        dsv4_constraint_free(c);
    }
    json_decref(schema);

    /* a schema nested deeper than any bound still gives a JSON object */
    json_t *deep = json_pack("{s:s}", "type", "string");
    for (int k = 0; k < 40; k++) {
        deep = json_pack("{s:s,s:{s:o},s:[s]}", "type", "object", "properties", "a", deep,
                         "required", "a");
    }
    dsv4_grammar    *g = dsv4_grammar_json(deep, 0, err, sizeof(err));
    dsv4_constraint *c = g ? dsv4_constraint_new(g, vi, eos) : NULL;
    int              steps = c != NULL ? drive(c, 5, &out) : -1;
    json_t          *v = json_loads(out.data ? out.data : "", 0, NULL);

    dsv4_grammar_unref(g);
    TEST_CHECK(steps > 0 && json_is_object(v), "40 nested levels: a JSON object: %s",
               out.data ? out.data : "");
    json_decref(v);
    json_decref(deep);
    dsv4_constraint_free(c);
    dsv4_strbuf_free(&out);
}

/* Byte strings: what a grammar accepts, rejects, and when it is complete. */
static void
test_bytes(void)
{
    char             err[256];
    dsv4_grammar    *g = dsv4_grammar_json(NULL, 0, err, sizeof(err));
    dsv4_constraint *c;
    static const struct { const char *s; int ok, done; } cases[] = {
        { "{}", 1, 1 },
        { "{\"a\":1}", 1, 1 },
        { "{\"a\":-0.25,\"b\":[true,null,\"x\"]}", 1, 1 },
        { "{\"a\":{\"b\":{\"c\":1}}}", 1, 1 },
        { "{\"a\":{\"b\":{\"c\":{\"d\":1}}}}", 0, 0 },     /* deeper than the bound */
        { "{\"a\":01}", 0, 0 },
        { "{\"a\":\"x\\n\"}", 0, 0 },                      /* no escapes generated */
        { "{\"a\":\"\xc3\xa9\"}", 1, 1 },
        { "{\"a\":\"\xc3\"}", 0, 0 },                      /* broken UTF-8 */
        { "{\"a\":\"\xed\xa0\x80\"}", 0, 0 },              /* a surrogate */
        { "{\"a\":1", 1, 0 },
        { "{\"a\":1}x", 0, 0 },
        { "[1]", 0, 0 },
        { "{ \"a\":1}", 0, 0 },
        { "{\"a\":1,\"b\":2,\"c\":3,\"d\":4}", 1, 1 },
        { "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5}", 0, 0 },
        { "{\"a\":1234567}", 0, 0 },
        { "{\"a\":\"<\"}", 0, 0 },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        c = dsv4_constraint_new(g, vi, eos);
        int rc = dsv4_constraint_feed(c, cases[i].s, strlen(cases[i].s));
        TEST_CHECK((rc == 0) == cases[i].ok
                   && (rc != 0 || dsv4_constraint_done(c) == cases[i].done),
                   "json %s: rc %d done %d", cases[i].s, rc, dsv4_constraint_done(c));
        dsv4_constraint_free(c);
    }
    dsv4_grammar_unref(g);

    /* the official DSML text of a call is accepted as the forced grammar */
    json_t *tools = json_loads(tools_json, 0, NULL);
    const char *call =
        "<" DSV4_DSML "tool_calls>\n<" DSV4_DSML "invoke name=\"get_weather\">\n"
        "<" DSV4_DSML "parameter name=\"city\" string=\"true\">Paris</" DSV4_DSML "parameter>\n"
        "<" DSV4_DSML "parameter name=\"days\" string=\"false\">3</" DSV4_DSML "parameter>\n"
        "<" DSV4_DSML "parameter name=\"unit\" string=\"true\">celsius</" DSV4_DSML "parameter>\n"
        "<" DSV4_DSML "parameter name=\"hourly\" string=\"false\">false</" DSV4_DSML "parameter>\n"
        "</" DSV4_DSML "invoke>\n</" DSV4_DSML "tool_calls>";
    g = dsv4_grammar_tool_call(tools, NULL, 0, err, sizeof(err));
    c = dsv4_constraint_new(g, vi, eos);
    TEST_CHECK(dsv4_constraint_feed(c, call, strlen(call)) == 0 && dsv4_constraint_done(c),
               "the official DSML form is the grammar's");
    TEST_CHECK(dsv4_constraint_accept(c, eos) == 0, "eos once complete");
    dsv4_constraint_free(c);

    c = dsv4_constraint_new(g, vi, eos);
    TEST_CHECK(dsv4_constraint_accept(c, eos) != 0, "eos refused before the end");
    {
        float *lg = calloc((size_t) vocab, sizeof(*lg));
        int    n = dsv4_constraint_mask(c, lg), k = -1;

        size_t      len = 0, want = 0;
        const char *s;

        for (int i = 0; i < vocab; i++) {
            if (isfinite(lg[i])) k = i;
            s = dsv4_tokenizer_token_bytes(tok, i, &len);
            if (s != NULL && len > want && len <= strlen(call) && memcmp(call, s, len) == 0) {
                want = len;
            }
        }
        s = k >= 0 ? dsv4_tokenizer_token_bytes(tok, k, &len) : "";
        TEST_CHECK(n == 1 && len == want && memcmp(call, s, len) == 0,
                   "structural text is forced: one token, the longest prefix (%d, %zu, %zu)",
                   n, len, want);
        free(lg);
    }
    dsv4_constraint_free(c);
    dsv4_grammar_unref(g);
    json_decref(tools);
}

int
main(int argc, char **argv)
{
    dsv4_tokenizer *t = fixture_v4();

    if (argc > 1) nseeds = (uint64_t) strtoul(argv[1], NULL, 10);

    tok = t;
    vocab = dsv4_tokenizer_n_ids(t) + 7;        /* padded like a model's embedding */
    eos = dsv4_tokenizer_eos_id(t);
    vi = dsv4_vocab_index_new(t, vocab);
    TEST_CHECK(vi != NULL && eos >= 0, "vocabulary index");

    test_bytes();
    test_tool_calls();
    test_json();

    printf("mask: %.3f ms per step over %d ids (%ld steps)\n",
           masks ? mask_s * 1e3 / (double) masks : 0.0, vocab, masks);
    dsv4_vocab_index_free(vi);
    dsv4_tokenizer_free(t);
    return TEST_REPORT();
}
