/*
 * Output parser tests: reasoning/content split, DSML tool calls, stop tokens
 * and stop strings, degradation of malformed DSML, and split invariance --
 * every completion is fed whole, cut at every byte (2 pieces), cut at every
 * pair of bytes (3 pieces, short texts), byte by byte and token by token,
 * and every way must give the same result.
 */
#include <string.h>

#include "../test.h"
#include "chat.h"
#include "parse.h"
#include "strbuf.h"
#include "tokenizer_fixture.h"
#include "utf8.h"

/*
 * Allocation counter: the test binary interposes glibc's allocator so the
 * steady-state claim ("no allocation per token once buffers have grown")
 * is checked, not assumed.
 */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DSV4_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define DSV4_UNDER_ASAN 1
#endif
/* ASan brings its own allocator: the counter runs in the plain build only */
#if defined(__GLIBC__) && !defined(DSV4_UNDER_ASAN)
#define DSV4_COUNT_ALLOCS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void  __libc_free(void *);
static int   counting;
static long  allocs;

void *malloc(size_t n) { allocs += counting; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { allocs += counting; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { allocs += counting; return __libc_realloc(p, n); }
void  free(void *p) { __libc_free(p); }
#endif

static const dsv4_tokenizer *tok;
static int32_t               eos;

typedef struct {
    dsv4_strbuf reasoning, content, calls;
    int         ncalls, stopped, stop_reason, stop_index, bad;
    int32_t     stop_token;
} result;


static void
result_init(result *r)
{
    memset(r, 0, sizeof(*r));
}


static void
result_free(result *r)
{
    dsv4_strbuf_free(&r->reasoning);
    dsv4_strbuf_free(&r->content);
    dsv4_strbuf_free(&r->calls);
}


static void
collect(result *r, const dsv4_event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const dsv4_event *e = &ev[i];

        if (r->stopped) r->bad = 1;                     /* nothing after a stop */
        if (e->type == DSV4_EV_REASONING || e->type == DSV4_EV_CONTENT) {
            if (e->len == 0 || dsv4_utf8_valid_prefix(e->text, e->len) != e->len) r->bad = 1;
            dsv4_strbuf_append(e->type == DSV4_EV_REASONING ? &r->reasoning : &r->content,
                               e->text, e->len);
        } else if (e->type == DSV4_EV_TOOL_CALL) {
            if (e->index != r->ncalls) r->bad = 1;
            r->ncalls++;
            dsv4_strbuf_append(&r->calls, e->name, e->name_len);
            dsv4_strbuf_putc(&r->calls, '|');
            dsv4_strbuf_append(&r->calls, e->text, e->len);
            dsv4_strbuf_putc(&r->calls, '\n');
        } else if (e->type == DSV4_EV_STOP) {
            r->stopped = 1;
            r->stop_reason = e->stop_reason;
            r->stop_index = e->index;
            r->stop_token = e->stop_token;
        } else {
            r->bad = 1;
        }
    }
}


static const char *
S(const dsv4_strbuf *b)
{
    return b->data ? b->data : "";
}


static int
same(const result *a, const result *b)
{
    return strcmp(S(&a->reasoning), S(&b->reasoning)) == 0
           && strcmp(S(&a->content), S(&b->content)) == 0
           && strcmp(S(&a->calls), S(&b->calls)) == 0
           && a->ncalls == b->ncalls && a->stopped == b->stopped
           && a->stop_reason == b->stop_reason && a->stop_index == b->stop_index
           && a->stop_token == b->stop_token && !a->bad && !b->bad;
}


/* Feeds text cut at cuts[0..ncuts) (increasing), then EOS (or finish). */
static void
run_cuts(dsv4_parser *p, const dsv4_parser_options *opt, const char *text, const size_t *cuts,
         int ncuts, int with_eos, result *r)
{
    const dsv4_event *ev;
    size_t            nev, prev = 0, len = strlen(text);

    dsv4_parser_reset(p, opt);
    result_init(r);
    for (int i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;

        if (dsv4_parser_feed_text(p, text + prev, end - prev, &ev, &nev) != 0) r->bad = 1;
        collect(r, ev, nev);
        prev = end;
    }
    if (with_eos) {
        dsv4_parser_feed(p, eos, &ev, &nev);
    } else {
        dsv4_parser_finish(p, &ev, &nev);
    }
    collect(r, ev, nev);
}


static void
run_ids(dsv4_parser *p, const dsv4_parser_options *opt, const char *text, int with_eos, result *r)
{
    const dsv4_event *ev;
    size_t            nev, n;
    int32_t          *ids;

    dsv4_parser_reset(p, opt);
    result_init(r);
    if (dsv4_tokenizer_encode_alloc(tok, text, strlen(text), &ids, &n) != 0) {
        r->bad = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        dsv4_parser_feed(p, ids[i], &ev, &nev);
        collect(r, ev, nev);
    }
    free(ids);
    if (with_eos) {
        dsv4_parser_feed(p, eos, &ev, &nev);
    } else {
        dsv4_parser_finish(p, &ev, &nev);
    }
    collect(r, ev, nev);
}


/* Runs text every way and checks all ways agree; returns the whole-text
 * result in *out (caller frees). */
static void
check_split_invariance(const char *name, const dsv4_parser_options *opt, const char *text,
                       int with_eos, result *out)
{
    dsv4_parser *p = dsv4_parser_new(tok, opt);
    size_t       len = strlen(text), cuts[2];
    result       r;
    int          bad2 = 0, bad3 = 0, n3 = 0;

    run_cuts(p, opt, text, NULL, 0, with_eos, out);
    TEST_CHECK(!out->bad, "%s: whole-text run produced a bad event", name);

    for (size_t i = 1; i < len; i++) {
        cuts[0] = i;
        run_cuts(p, opt, text, cuts, 1, with_eos, &r);
        if (!same(&r, out)) {
            if (bad2++ == 0) {
                fprintf(stderr, "  %s: cut at %zu: reasoning [%s] content [%s] calls [%s]\n",
                        name, i, S(&r.reasoning), S(&r.content), S(&r.calls));
            }
        }
        result_free(&r);
    }
    TEST_CHECK(bad2 == 0, "%s: %d of %zu two-piece splits differ", name, bad2, len - 1);

    if (len <= 400) {
        for (size_t i = 1; i < len; i++) {
            for (size_t j = i + 1; j < len; j += (len > 200 ? 3 : 1)) {
                cuts[0] = i;
                cuts[1] = j;
                run_cuts(p, opt, text, cuts, 2, with_eos, &r);
                bad3 += !same(&r, out);
                n3++;
                result_free(&r);
            }
        }
        TEST_CHECK(bad3 == 0, "%s: %d of %d three-piece splits differ", name, bad3, n3);
    }

    {
        size_t *all = malloc(len * sizeof(*all));

        for (size_t i = 0; i + 1 < len; i++) all[i] = i + 1;
        run_cuts(p, opt, text, all, len > 1 ? (int) len - 1 : 0, with_eos, &r);
        TEST_CHECK(same(&r, out), "%s: byte-by-byte differs: content [%s]", name, S(&r.content));
        result_free(&r);
        free(all);
    }
    run_ids(p, opt, text, with_eos, &r);
    TEST_CHECK(same(&r, out), "%s: token-by-token differs: reasoning [%s] content [%s] calls [%s]",
               name, S(&r.reasoning), S(&r.content), S(&r.calls));
    result_free(&r);
    dsv4_parser_free(p);
}


#define INV(name, params) "<" DSV4_DSML "invoke name=\"" name "\">\n" params "</" DSV4_DSML "invoke>\n"
#define PAR(k, s, v) "<" DSV4_DSML "parameter name=\"" k "\" string=\"" s "\">" v "</" DSV4_DSML "parameter>\n"
#define CALLS(x) "\n\n<" DSV4_DSML "tool_calls>\n" x "</" DSV4_DSML "tool_calls>"

static void
test_cases(void)
{
    dsv4_parser_options think = {DSV4_PARSE_REASONING, 1, NULL, 0};
    dsv4_parser_options chat = {DSV4_PARSE_CHAT, 1, NULL, 0};
    result              r;

    /* the official example: reasoning, no content, one call */
    check_split_invariance("weather", &think,
        "The user wants to know the weather in Beijing. I should use the get_weather tool.</think>"
        CALLS(INV("get_weather", PAR("location", "true", "Beijing") PAR("unit", "true", "celsius"))),
        1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "The user wants to know the weather in Beijing. I should "
                      "use the get_weather tool.") == 0, "weather reasoning [%s]", S(&r.reasoning));
    TEST_CHECK(strcmp(S(&r.content), "") == 0, "weather content [%s]", S(&r.content));
    TEST_CHECK(strcmp(S(&r.calls), "get_weather|{\"location\": \"Beijing\", \"unit\": \"celsius\"}\n") == 0,
               "weather calls [%s]", S(&r.calls));
    TEST_CHECK(r.stopped && r.stop_reason == DSV4_STOP_TOKEN && r.stop_token == eos, "weather stop");
    result_free(&r);

    /* content first, two invokes, JSON values, awkward strings */
    check_split_invariance("two calls", &think,
        "Plan: call both.</think>Let me check <b>both</b>."
        CALLS(INV("f", PAR("n", "false", "42") PAR("list", "false", "[1, 2.5, \"x\"]")
                       PAR("obj", "false", "{\"a\": {\"b\": null}}"))
              INV("g", PAR("code", "true", "if (a < b && c > \"d\") {\n  return '中文 🎉';\n}")
                       PAR("bad", "false", "not json") PAR("empty", "true", ""))),
        1, &r);
    TEST_CHECK(strcmp(S(&r.content), "Let me check <b>both</b>.") == 0, "two calls content [%s]", S(&r.content));
    TEST_CHECK(strcmp(S(&r.calls),
        "f|{\"n\": 42, \"list\": [1, 2.5, \"x\"], \"obj\": {\"a\": {\"b\": null}}}\n"
        "g|{\"code\": \"if (a < b && c > \\\"d\\\") {\\n  return '中文 🎉';\\n}\", "
        "\"bad\": \"not json\", \"empty\": \"\"}\n") == 0, "two calls [%s]", S(&r.calls));
    result_free(&r);

    /* no parameters; no "\n\n" before the block; text after the block */
    check_split_invariance("no params", &chat,
        "ok<" DSV4_DSML "tool_calls>\n" INV("now", "") "</" DSV4_DSML "tool_calls>\ntrailing", 1, &r);
    TEST_CHECK(strcmp(S(&r.content), "ok\ntrailing") == 0, "no params content [%s]", S(&r.content));
    TEST_CHECK(strcmp(S(&r.calls), "now|{}\n") == 0, "no params calls [%s]", S(&r.calls));
    result_free(&r);

    /* malformed first invoke: the whole block is content, nothing lost */
    {
        const char *body = "Hi." CALLS("<" DSV4_DSML "invoke nam=\"x\">\n</" DSV4_DSML "invoke>\n");

        check_split_invariance("malformed", &chat, body, 1, &r);
        TEST_CHECK(strcmp(S(&r.content), body) == 0, "malformed content [%s]", S(&r.content));
        TEST_CHECK(r.ncalls == 0, "malformed: %d calls", r.ncalls);
        result_free(&r);
    }
    /* malformed second invoke: the first one stands, the rest is content */
    check_split_invariance("malformed second", &chat,
        CALLS(INV("a", PAR("k", "true", "v")) "<" DSV4_DSML "invoke name=\"b\">\n"
              "<" DSV4_DSML "parameter name=\"k\" string=\"maybe\">v</" DSV4_DSML "parameter>\n"
              "</" DSV4_DSML "invoke>\n"), 1, &r);
    TEST_CHECK(strcmp(S(&r.calls), "a|{\"k\": \"v\"}\n") == 0, "malformed second calls [%s]", S(&r.calls));
    TEST_CHECK(strcmp(S(&r.content), "<" DSV4_DSML "invoke name=\"b\">\n<" DSV4_DSML "parameter name=\"k\" "
                      "string=\"maybe\">v</" DSV4_DSML "parameter>\n</" DSV4_DSML "invoke>\n</"
                      DSV4_DSML "tool_calls>") == 0, "malformed second content [%s]", S(&r.content));
    result_free(&r);

    /* duplicate parameter names are malformed */
    check_split_invariance("duplicate", &chat,
        CALLS(INV("a", PAR("k", "true", "1") PAR("k", "true", "2"))), 1, &r);
    TEST_CHECK(r.ncalls == 0 && strstr(S(&r.content), "tool_calls>") != NULL, "duplicate param degrades");
    result_free(&r);

    /* a block cut off by EOS degrades; so does one cut by the length limit */
    {
        const char *body = "x" CALLS(INV("a", PAR("k", "true", "v"))) ;
        char        cut[512];

        /* cut inside the closing tags, at a character boundary */
        snprintf(cut, sizeof(cut), "%.*s", (int) dsv4_utf8_valid_prefix(body, strlen(body) - 40), body);
        check_split_invariance("cut by eos", &chat, cut, 1, &r);
        TEST_CHECK(strcmp(S(&r.content), cut) == 0 && r.ncalls == 0, "cut by eos content [%s]", S(&r.content));
        result_free(&r);
        check_split_invariance("cut by length", &chat, cut, 0, &r);
        TEST_CHECK(strcmp(S(&r.content), cut) == 0 && !r.stopped, "cut by length content [%s]", S(&r.content));
        result_free(&r);
    }

    /* thinking output that never closes is all reasoning */
    check_split_invariance("no think end", &think, "still thinking </thin and <｜DSML｜tool", 1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "still thinking </thin and <｜DSML｜tool") == 0
               && strcmp(S(&r.content), "") == 0, "no think end [%s]", S(&r.reasoning));
    result_free(&r);

    /* DSML-looking text inside reasoning stays reasoning */
    check_split_invariance("dsml in reasoning", &think,
        "maybe" CALLS(INV("a", "")) "</think>done", 1, &r);
    TEST_CHECK(r.ncalls == 0 && strcmp(S(&r.content), "done") == 0, "dsml in reasoning");
    result_free(&r);

    /* raw mode: no think split, no DSML */
    {
        dsv4_parser_options raw = {DSV4_PARSE_RAW, 1, NULL, 0};
        const char         *body = "a</think>b" CALLS(INV("a", ""));

        check_split_invariance("raw", &raw, body, 1, &r);
        TEST_CHECK(strcmp(S(&r.content), body) == 0 && r.ncalls == 0, "raw content [%s]", S(&r.content));
        result_free(&r);
    }
    /* multi-byte characters and emoji survive every split */
    check_split_invariance("utf8", &think, "思考🤔中…</think>答案：日本語テキスト、👨‍👩‍👧‍👦 done", 1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "思考🤔中…") == 0
               && strcmp(S(&r.content), "答案：日本語テキスト、👨‍👩‍👧‍👦 done") == 0, "utf8 content [%s]", S(&r.content));
    result_free(&r);
}


static void
test_stop_strings(void)
{
    const char         *stops[] = {"STOP", "\n\n", "ab", "abc", "中文"};
    dsv4_parser_options opt = {DSV4_PARSE_REASONING, 1, stops, 5};
    result              r;

    check_split_invariance("stop string", &opt, "think STOP here</think>Hello STOP world", 1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "think STOP here") == 0, "stop strings do not apply to reasoning");
    TEST_CHECK(strcmp(S(&r.content), "Hello ") == 0, "stop content [%s]", S(&r.content));
    TEST_CHECK(r.stopped && r.stop_reason == DSV4_STOP_STRING && r.stop_index == 0, "stop index %d", r.stop_index);
    result_free(&r);

    /* earliest start wins; at the same start the shorter one */
    check_split_invariance("stop earliest", &opt, "</think>xxabcd", 0, &r);
    TEST_CHECK(strcmp(S(&r.content), "xx") == 0 && r.stop_index == 2, "stop earliest [%s] %d",
               S(&r.content), r.stop_index);
    result_free(&r);
    /* "\n\n" before a DSML block: the stop string is shorter and wins */
    check_split_invariance("stop vs dsml", &opt, "</think>text" CALLS(INV("a", "")), 1, &r);
    TEST_CHECK(strcmp(S(&r.content), "text") == 0 && r.stop_index == 1 && r.ncalls == 0, "stop vs dsml");
    result_free(&r);
    check_split_invariance("stop cjk", &opt, "</think>这是中文。", 1, &r);
    TEST_CHECK(strcmp(S(&r.content), "这是") == 0 && r.stop_index == 4, "stop cjk [%s]", S(&r.content));
    result_free(&r);
    /* a stop string that never completes is flushed as content */
    check_split_invariance("stop partial", &opt, "</think>end with ST", 1, &r);
    TEST_CHECK(strcmp(S(&r.content), "end with ST") == 0 && r.stop_reason == DSV4_STOP_TOKEN,
               "stop partial [%s]", S(&r.content));
    result_free(&r);
}


static void
test_ids(void)
{
    dsv4_parser_options opt = {DSV4_PARSE_CHAT, 1, NULL, 0};
    dsv4_parser        *p = dsv4_parser_new(tok, &opt);
    const dsv4_event   *ev;
    size_t              nev;
    result              r;
    int32_t             user = dsv4_tokenizer_token_id(tok, DSV4_USER, strlen(DSV4_USER));
    int32_t             e4 = dsv4_tokenizer_token_id(tok, "\xe4", 1);   /* the single-byte token */

    /* unknown ids are ignored and counted */
    result_init(&r);
    dsv4_parser_feed(p, 128900, &ev, &nev);
    collect(&r, ev, nev);
    dsv4_parser_feed(p, -5, &ev, &nev);
    collect(&r, ev, nev);
    TEST_CHECK(nev == 0 && dsv4_parser_unknown_ids(p) == 2, "unknown ids counted: %zu",
               dsv4_parser_unknown_ids(p));

    /* a lone lead byte is held, then replaced when <｜User｜> stops the output */
    TEST_CHECK(e4 >= 0, "byte token for 0xE4");
    dsv4_parser_feed(p, e4, &ev, &nev);
    TEST_CHECK(nev == 0, "a partial character is held back");
    dsv4_parser_feed(p, user, &ev, &nev);
    collect(&r, ev, nev);
    TEST_CHECK(strcmp(S(&r.content), DSV4_UTF8_FFFD) == 0, "held byte becomes U+FFFD [%s]", S(&r.content));
    TEST_CHECK(r.stopped && r.stop_token == user && dsv4_parser_stopped(p), "<｜User｜> stops");
    dsv4_parser_feed(p, e4, &ev, &nev);
    TEST_CHECK(nev == 0, "nothing after a stop");
    result_free(&r);

    /* invalid bytes in feed_text become U+FFFD, valid text is untouched */
    dsv4_parser_reset(p, &opt);
    result_init(&r);
    dsv4_parser_feed_text(p, "a\xff" "b\xe4\xb8", 5, &ev, &nev);
    collect(&r, ev, nev);
    dsv4_parser_feed_text(p, "\xad" "c\xed\xa0\x80", 5, &ev, &nev);
    collect(&r, ev, nev);
    dsv4_parser_finish(p, &ev, &nev);
    collect(&r, ev, nev);
    TEST_CHECK(strcmp(S(&r.content), "a" DSV4_UTF8_FFFD "b\xe4\xb8\xad" "c" DSV4_UTF8_FFFD DSV4_UTF8_FFFD
                      DSV4_UTF8_FFFD) == 0, "sanitized [%s]", S(&r.content));
    TEST_CHECK(!r.bad && !r.stopped, "finish is not a stop");
    result_free(&r);

    /* a bad stop string (not UTF-8) is refused */
    {
        const char         *bad[] = {"\xff"};
        dsv4_parser_options o2 = {DSV4_PARSE_CHAT, 1, bad, 1};

        TEST_CHECK(dsv4_parser_new(tok, &o2) == NULL, "invalid stop string refused");
        TEST_CHECK(dsv4_parser_reset(p, &o2) != 0, "invalid stop string refused on reset");
    }
    dsv4_parser_free(p);
}


/* The official test's round trip: slice the assistant turns out of the gold
 * prompt of case 1 and parse them. */
static void
test_official_roundtrip(void)
{
    FILE               *f = fopen("tests/tokenizer/chat/case1_output.txt", "rb");
    dsv4_strbuf         gold = DSV4_STRBUF_INIT;
    char                buf[4096];
    size_t              k;
    const char         *marker = DSV4_ASSISTANT DSV4_THINK, *a, *b, *c;
    dsv4_parser_options opt = {DSV4_PARSE_REASONING, 1, NULL, 0};
    char               *turn;
    result              r;

    TEST_CHECK(f != NULL, "case1_output.txt is readable");
    if (f == NULL) return;
    while ((k = fread(buf, 1, sizeof(buf), f)) > 0) dsv4_strbuf_append(&gold, buf, k);
    fclose(f);

    /* each turn ends in EOS, which the model emits as the id */
    a = strstr(gold.data, marker) + strlen(marker);
    b = strstr(a, DSV4_EOS);
    turn = strndup(a, (size_t) (b - a));
    check_split_invariance("official turn 1", &opt, turn, 1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "The user wants to know the weather in Beijing. I should use "
                      "the get_weather tool.") == 0, "turn 1 reasoning");
    TEST_CHECK(strcmp(S(&r.content), "") == 0, "turn 1 content [%s]", S(&r.content));
    TEST_CHECK(strcmp(S(&r.calls), "get_weather|{\"location\": \"Beijing\", \"unit\": \"celsius\"}\n") == 0,
               "turn 1 calls [%s]", S(&r.calls));
    TEST_CHECK(r.stopped && r.stop_token == eos, "turn 1 ends at EOS");
    result_free(&r);
    free(turn);

    for (c = a; (c = strstr(c, marker)) != NULL; c += strlen(marker)) a = c + strlen(marker);
    turn = strndup(a, (size_t) (strstr(a, DSV4_EOS) - a));
    check_split_invariance("official turn 2", &opt, turn, 1, &r);
    TEST_CHECK(strcmp(S(&r.reasoning), "Got the weather data. Let me format a nice response.") == 0,
               "turn 2 reasoning");
    TEST_CHECK(strstr(S(&r.content), "22°C") != NULL && r.ncalls == 0, "turn 2 content [%s]", S(&r.content));
    result_free(&r);
    free(turn);
    dsv4_strbuf_free(&gold);
}


/* Once warm, feeding reasoning, content and stop-string-laden text token by
 * token allocates nothing. */
static void
test_no_steady_state_alloc(void)
{
#ifdef DSV4_COUNT_ALLOCS
    const char         *stops[] = {"never appears", "\n\nX"};
    dsv4_parser_options opt = {DSV4_PARSE_REASONING, 1, stops, 2};
    dsv4_parser        *p = dsv4_parser_new(tok, &opt);
    const char         *text = "Some reasoning, 中文 and emoji 🎉 <b>tags</b> </thi\n\n.";
    int32_t            *ids, think_end = dsv4_tokenizer_token_id(tok, DSV4_THINK_END, 8);
    size_t              n, nev;
    const dsv4_event   *ev;

    dsv4_tokenizer_encode_alloc(tok, text, strlen(text), &ids, &n);
    for (int round = 0; round < 200; round++) {
        if (round == 100) {
            dsv4_parser_feed(p, think_end, &ev, &nev);
        }
        if (round == 150) {
            counting = 1;   /* warm: buffers have reached their working size */
        }
        for (size_t i = 0; i < n; i++) {
            dsv4_parser_feed(p, ids[i], &ev, &nev);
        }
    }
    counting = 0;
    TEST_CHECK(allocs == 0, "%ld allocations in 50 warm rounds of %zu tokens", allocs, n);
    free(ids);
    dsv4_parser_free(p);
#endif
}


int
main(void)
{
    dsv4_tokenizer *t = fixture_v4();

    tok = t;
    eos = dsv4_tokenizer_eos_id(tok);
    TEST_CHECK(eos == 1, "EOS id %d", eos);
    test_cases();
    test_stop_strings();
    test_ids();
    test_official_roundtrip();
    test_no_steady_state_alloc();
    dsv4_tokenizer_free(t);
    return TEST_REPORT();
}
