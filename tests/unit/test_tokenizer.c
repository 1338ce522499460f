/*
 * Tokenizer tests: the reference vectors from TOOLCHAIN.md and V4-MODEL.md
 * §6.1, added-token matching, BPE rank order and tie-breaks on a hand-made
 * tokenizer, invalid input, capacity handling, decoding (WHATWG replacement,
 * unknown ids), the streaming decoder against batch decoding, concurrent
 * encoding from several threads, and load errors naming the field.
 * (The 20,000-string comparison with the reference tokenizer is
 * tests/scripts/test_tokenizer_reference.)
 */
#include <pthread.h>
#include <string.h>

#include "../test.h"
#include "chat.h"
#include "strbuf.h"
#include "tokenizer_fixture.h"

static int
encode_is(const dsv4_tokenizer *t, const char *text, const int32_t *want, size_t nwant)
{
    int32_t ids[256];
    size_t  n;

    if (dsv4_tokenizer_encode(t, text, strlen(text), ids, 256, &n) != DSV4_TOK_OK || n != nwant) {
        fprintf(stderr, "  encode(\"%s\") gave %zu ids:", text, n);
        for (size_t i = 0; i < n && i < 20; i++) fprintf(stderr, " %d", ids[i]);
        fputc('\n', stderr);
        return 0;
    }
    return memcmp(ids, want, n * sizeof(*ids)) == 0;
}

#define ENC(t, text, ...) \
    do { \
        static const int32_t w_[] = {__VA_ARGS__}; \
        TEST_CHECK(encode_is(t, text, w_, sizeof(w_) / sizeof(w_[0])), "encode \"%s\"", text); \
    } while (0)


static int
roundtrip(const dsv4_tokenizer *t, const char *text, size_t len)
{
    int32_t *ids;
    size_t   n, dl;
    char    *dec;
    int      ok;

    if (dsv4_tokenizer_encode_alloc(t, text, len, &ids, &n) != DSV4_TOK_OK) return 0;
    ok = dsv4_tokenizer_decode(t, ids, n, &dec, &dl) == DSV4_TOK_OK && dl == len
         && memcmp(dec, text, len) == 0;
    free(ids);
    free(dec);
    return ok;
}


static void
test_reference_vectors(const dsv4_tokenizer *v3, const dsv4_tokenizer *v4)
{
    /* TOOLCHAIN.md §8: agreed by three reference implementations */
    ENC(v3, "Hello, 世界! 123", 19923, 14, 223, 3427, 3, 223, 6895);
    ENC(v3, "Hello world", 19923, 2058);
    ENC(v3, "1234567 ab\n\n  x", 6895, 18009, 25, 639, 271, 223, 1527);
    ENC(v3, "<｜User｜>hi", 128803, 6366);
    ENC(v3, DSV4_BOS "Be brief." DSV4_USER "Hi" DSV4_ASSISTANT, 0, 7153, 9708, 16, 128803, 23166, 128804);
    TEST_CHECK(dsv4_tokenizer_bos_id(v3) == 0 && dsv4_tokenizer_eos_id(v3) == 1, "V3 BOS/EOS ids");
    TEST_CHECK(dsv4_tokenizer_n_ids(v3) == 128815, "V3 id space %d", dsv4_tokenizer_n_ids(v3));

    /* V4-MODEL.md §6.1, a third-party test on the real V4 tokenizer */
    ENC(v4, "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>",
        128803, 30594, 128804, 128821, 36101, 128822, 7624, 1);
    ENC(v4, DSV4_DSML, 128825);
    ENC(v4, DSV4_REMINDER, 128828);
    ENC(v4, "<｜action｜>", 128829);
    ENC(v4, "<｜title｜>", 128836);
    ENC(v4, "<｜read_url｜>", 128845);
    ENC(v4, "<｜begin▁of▁sentence｜>S<｜User｜>hi<｜Assistant｜><think>", 0, 53, 128803, 6366, 128804, 128821);
    {
        int32_t ids[16];
        size_t  n;

        dsv4_tokenizer_encode(v4, "<tool_result>", 13, ids, 16, &n);
        TEST_CHECK(n > 1, "<tool_result> is plain text, not a token");
        /* "<｜DSML｜invoke": "<", then the DSML token, then text */
        dsv4_tokenizer_encode(v4, "<" DSV4_DSML "invoke", strlen("<" DSV4_DSML "invoke"), ids, 16, &n);
        TEST_CHECK(n >= 3 && ids[1] == 128825, "DSML inside a tag is one token");
    }
    /* added tokens glued to text and to each other; cut-off ones are text */
    TEST_CHECK(roundtrip(v4, "a<think></think>b<｜User｜<｜User｜>｜DSML｜｜DSML｜", 55), "glued tokens round-trip");
    {
        int32_t ids[64];
        size_t  n;
        int     count = 0;

        dsv4_tokenizer_encode(v4, "x<think><think", 14, ids, 64, &n);
        for (size_t i = 0; i < n; i++) count += ids[i] == 128821;
        TEST_CHECK(count == 1, "a cut-off <think is text (%d think tokens)", count);
    }
}


/* A hand-made tokenizer: checks BPE order and the added-token passes on a
 * case small enough to work out by hand. */
static const char *tiny_json =
    "{\"version\":\"1.0\",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+|\\\\S+\"},\"behavior\":\"Isolated\",\"invert\":false},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"added_tokens\":["
    "{\"id\":20,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
    "{\"id\":21,\"content\":\"<s>x\",\"special\":false,\"normalized\":true},"
    "{\"id\":22,\"content\":\"ca\",\"special\":false,\"normalized\":true}],"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"x\":4,\"<\":5,"
    "\"s\":6,\">\":7,\"ab\":8,\"bc\":9,\"abc\":10,\"aa\":11,\"\\u0120a\":12,\"aaaa\":13},"
    "\"merges\":[\"b c\",\"a b\",\"a a\",\"\\u0120 a\",\"ab c\",\"aa aa\"]}}";


static dsv4_tokenizer *
load_json(const char *json, char *err, size_t errlen)
{
    char            dir[1024], path[1100];
    dsv4_tokenizer *t = NULL;
    FILE           *f;
    const char     *tmp = getenv("DSV4_TEST_TMP");

    snprintf(dir, sizeof(dir), "%s/tok-json-%d", tmp && *tmp ? tmp : "/tmp", (int) getpid());
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    f = fopen(path, "w");
    if (f == NULL) return NULL;
    fputs(json, f);
    fclose(f);
    if (dsv4_tokenizer_load(dir, &t, err, errlen) != 0) t = NULL;
    unlink(path);
    rmdir(dir);
    return t;
}


static void
test_tiny(void)
{
    char            err[512] = "";
    dsv4_tokenizer *t = load_json(tiny_json, err, sizeof(err));

    TEST_CHECK(t != NULL, "tiny tokenizer loads: %s", err);
    if (t == NULL) return;
    /* "b c" (rank 0) beats "a b" (rank 1): a + bc, and "a bc" is no merge */
    ENC(t, "abc", 0, 9);
    /* equal ranks: leftmost first -> aa a, never a aa; then aa+aa */
    ENC(t, "aaa", 11, 0);
    ENC(t, "aaaa", 13);
    ENC(t, "aaaaa", 13, 0);
    /* whitespace is its own piece; "Ġa" is not formed across the split */
    ENC(t, "a a", 0, 3, 0);
    /* added tokens: the normalized=false pass runs first, so "<s>" wins
     * over the longer normalized "<s>x" */
    ENC(t, "<s>x", 20, 4);
    ENC(t, "zca", 22);     /* "z" is not in the vocab: dropped, like the reference */
    ENC(t, "<s", 5, 6);
    {
        char  *txt;
        size_t n;
        int32_t ids[] = {20, 0, 9, 3};

        TEST_CHECK(dsv4_tokenizer_decode(t, ids, 4, &txt, &n) == 0 && strcmp(txt, "<s>abc ") == 0,
                   "tiny decode");
        free(txt);
        TEST_CHECK(dsv4_tokenizer_token_id(t, "bc", 2) == 9 && dsv4_tokenizer_token_id(t, "<s>", 3) == 20
                   && dsv4_tokenizer_token_id(t, "zz", 2) == -1, "token_id lookups");
        TEST_CHECK(dsv4_tokenizer_is_added(t, 20) && !dsv4_tokenizer_is_added(t, 9), "is_added");
    }
    dsv4_tokenizer_free(t);
}


static void
test_load_errors(void)
{
    static const struct { const char *from, *to, *needle; } cases[] = {
        {"\"normalizers\":[]}", "\"normalizers\":[{\"type\":\"NFC\"}]}", "normalizer"},
        {"{\"type\":\"Split\"", "{\"type\":\"Whitespace\"", "Whitespace"},
        {"\"behavior\":\"Isolated\"", "\"behavior\":\"Removed\"", "Isolated"},
        {"\"\\\\s+|\\\\S+\"", "\"(\"", "regex"},
        {"\"use_regex\":false", "\"use_regex\":true", "use_regex"},
        {"\"aa aa\"", "\"aa zz\"", "merges[5]"},
        {"\"normalized\":false}", "\"normalized\":false,\"lstrip\":true}", "lstrip"},
        {"\"type\":\"BPE\"", "\"type\":\"WordPiece\"", "BPE"},
        {"\"decoder\":{\"type\":\"ByteLevel\"}", "\"decoder\":{\"type\":\"Metaspace\"}", "decoder"},
        {"{\"version\"", "[{\"version\"", "tokenizer.json"},
    };
    char            err[512];
    dsv4_tokenizer *t;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char       *json = malloc(strlen(tiny_json) + 256);
        const char *at = strstr(tiny_json, cases[i].from);

        if (at == NULL) {
            TEST_CHECK(0, "load error case %zu: pattern not found", i);
            free(json);
            continue;
        }
        sprintf(json, "%.*s%s%s", (int) (at - tiny_json), tiny_json, cases[i].to, at + strlen(cases[i].from));
        err[0] = '\0';
        t = load_json(json, err, sizeof(err));
        TEST_CHECK(t == NULL && strstr(err, cases[i].needle) != NULL,
                   "load error case %zu: \"%s\" should mention \"%s\"", i, err, cases[i].needle);
        dsv4_tokenizer_free(t);
        free(json);
    }
    TEST_CHECK(dsv4_tokenizer_load("/nonexistent", &t, err, sizeof(err)) != 0
               && strstr(err, "/nonexistent/tokenizer.json") != NULL && t == NULL,
               "missing directory: %s", err);
}


static void
test_invalid_and_capacity(const dsv4_tokenizer *t)
{
    static const char *bad[] = {"\x80", "a\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                "\xe4\xb8", "ok\xf0\x9f\x98"};
    int32_t            ids[8];
    size_t             n, full;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        TEST_CHECK(dsv4_tokenizer_encode(t, bad[i], strlen(bad[i]), ids, 8, &n) == DSV4_TOK_EINVAL && n == 0,
                   "invalid UTF-8 case %zu is refused", i);
    }
    TEST_CHECK(dsv4_tokenizer_encode(t, "", 0, ids, 8, &n) == DSV4_TOK_OK && n == 0, "empty text");
    TEST_CHECK(dsv4_tokenizer_encode(t, "a\0b", 3, ids, 8, &n) == DSV4_TOK_OK && n >= 2, "NUL is text");
    TEST_CHECK(roundtrip(t, "a\0b", 3), "NUL round-trips");

    /* counting and ENOSPC */
    dsv4_tokenizer_encode(t, "one two three four five six seven", 33, NULL, 0, &full);
    TEST_CHECK(full == 7, "count-only encode: %zu", full);
    TEST_CHECK(dsv4_tokenizer_encode(t, "one two three four five six seven", 33, ids, 3, &n) == DSV4_TOK_ENOSPC
               && n == full, "ENOSPC reports the full count");
    TEST_CHECK(dsv4_tokenizer_encode(t, "one two three four five six seven", 33, ids, 7, &n) == DSV4_TOK_OK,
               "exact capacity is enough");
}


static void
test_decode(const dsv4_tokenizer *t)
{
    int32_t     e4 = dsv4_tokenizer_token_id(t, "\xe4", 1), b8 = dsv4_tokenizer_token_id(t, "\xb8", 1);
    int32_t     ad = dsv4_tokenizer_token_id(t, "\xad", 1), a = dsv4_tokenizer_token_id(t, "a", 1);
    int32_t     user = dsv4_tokenizer_token_id(t, DSV4_USER, strlen(DSV4_USER));
    char       *txt, out[1024];
    size_t      n, k;
    dsv4_decoder d;

    TEST_CHECK(e4 >= 0 && b8 >= 0 && ad >= 0 && a >= 0 && user >= 0, "byte tokens exist");
    {
        int32_t ids[] = {e4, b8, ad};   /* 中 split over three tokens */

        TEST_CHECK(dsv4_tokenizer_decode(t, ids, 3, &txt, &n) == 0 && strcmp(txt, "中") == 0, "split char");
        free(txt);
    }
    {
        int32_t ids[] = {e4, b8, a, e4, user, b8};   /* truncated, then cut by an added token */

        TEST_CHECK(dsv4_tokenizer_decode(t, ids, 6, &txt, &n) == 0
                   && strcmp(txt, DSV4_UTF8_FFFD "a" DSV4_UTF8_FFFD DSV4_USER DSV4_UTF8_FFFD) == 0,
                   "replacement [%s]", txt);
        free(txt);
    }
    {
        int32_t ids[] = {a, 128900};

        TEST_CHECK(dsv4_tokenizer_decode(t, ids, 2, &txt, &n) == DSV4_TOK_EINVAL && txt == NULL,
                   "id without a token is EINVAL");
        ids[1] = -1;
        TEST_CHECK(dsv4_tokenizer_decode(t, ids, 2, &txt, &n) == DSV4_TOK_EINVAL, "negative id is EINVAL");
    }

    /* streaming: held back, then released */
    dsv4_decoder_init(&d, t);
    TEST_CHECK(dsv4_decoder_push(&d, e4, out, sizeof(out), &k) == 0 && k == 0, "first byte held");
    TEST_CHECK(dsv4_decoder_push(&d, b8, out, sizeof(out), &k) == 0 && k == 0, "second byte held");
    TEST_CHECK(dsv4_decoder_push(&d, ad, out, sizeof(out), &k) == 0 && k == 3 && memcmp(out, "中", 3) == 0,
               "character released");
    TEST_CHECK(dsv4_decoder_push(&d, 128900, out, sizeof(out), &k) == DSV4_TOK_EINVAL && k == 0, "unknown id");
    TEST_CHECK(dsv4_decoder_push(&d, a, out, 4, &k) == DSV4_TOK_ENOSPC, "small buffer refused");
    TEST_CHECK(dsv4_decoder_flush(&d, out) == 0, "nothing pending");

    /* streaming == batch on random id sequences over the whole vocabulary,
     * biased to byte tokens so characters get split and broken */
    {
        unsigned seed = 7;
        int      bad = 0, invalid = 0;
        int32_t  nid = dsv4_tokenizer_n_ids(t);
        size_t   bound = dsv4_decoder_bound(t);
        char    *piece = malloc(bound);

        for (int trial = 0; trial < 3000; trial++) {
            int32_t     ids[40];
            size_t      nids = 0, len;
            dsv4_strbuf s = DSV4_STRBUF_INIT;

            while (nids < 40) {
                seed = seed * 1103515245u + 12345u;
                int32_t id = (seed >> 8) % 3 == 0 ? (int32_t) ((seed >> 4) % (unsigned) nid)
                                                  : (int32_t) (((seed >> 12) % 256) + 0);
                size_t  tl;

                if ((seed >> 8) % 3 != 0) {
                    char byte = (char) ((seed >> 12) & 0xFF);

                    id = dsv4_tokenizer_token_id(t, &byte, 1);
                }
                if (dsv4_tokenizer_token_bytes(t, id, &tl) != NULL) ids[nids++] = id;
            }
            dsv4_tokenizer_decode(t, ids, nids, &txt, &len);
            dsv4_decoder_init(&d, t);
            for (size_t i = 0; i < nids; i++) {
                dsv4_decoder_push(&d, ids[i], piece, bound, &k);
                invalid += dsv4_utf8_valid_prefix(piece, k) != k;
                dsv4_strbuf_append(&s, piece, k);
            }
            k = dsv4_decoder_flush(&d, piece);
            dsv4_strbuf_append(&s, piece, k);
            bad += s.len != len || memcmp(s.data, txt, len) != 0;
            invalid += dsv4_utf8_valid_prefix(txt, len) != len;
            free(txt);
            dsv4_strbuf_free(&s);
        }
        free(piece);
        TEST_CHECK(bad == 0, "%d random sequences: streaming != batch", bad);
        TEST_CHECK(invalid == 0, "%d decoded pieces were not valid UTF-8", invalid);
    }
}


/* several threads encode the same texts at once; all get the same ids */
typedef struct {
    const dsv4_tokenizer *t;
    int                   mismatches;
} thread_arg;

static const char *mt_texts[] = {
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "中文文本和日本語のテキスト、それから English words.",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
    "<｜User｜>Hi<｜Assistant｜></think>Hello! 👋🏽 How can I help?",
};

static void *
mt_worker(void *p)
{
    thread_arg *a = p;
    int32_t     want[4][128], got[128];
    size_t      nw[4], n;

    for (int i = 0; i < 4; i++) {
        dsv4_tokenizer_encode(a->t, mt_texts[i], strlen(mt_texts[i]), want[i], 128, &nw[i]);
    }
    for (int r = 0; r < 2000; r++) {
        int i = r % 4;

        if (dsv4_tokenizer_encode(a->t, mt_texts[i], strlen(mt_texts[i]), got, 128, &n) != 0
            || n != nw[i] || memcmp(got, want[i], n * sizeof(*got)) != 0)
        {
            a->mismatches++;
        }
    }
    return NULL;
}


static void
test_threads(const dsv4_tokenizer *t)
{
    pthread_t  th[4];
    thread_arg args[4];
    int32_t    ref[128];
    size_t     n;
    int        bad = 0;

    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg) {t, 0};
        pthread_create(&th[i], NULL, mt_worker, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += args[i].mismatches;
    }
    TEST_CHECK(bad == 0, "%d concurrent encodes differ", bad);
    dsv4_tokenizer_encode(t, mt_texts[3], strlen(mt_texts[3]), ref, 128, &n);
    TEST_CHECK(n > 10 && ref[0] == 128803, "main thread still encodes after workers exited");
}


/* Threads that end while their tokenizer is freed (nginx's thread pool
 * ends just before the module frees its models): every state is freed once,
 * by its thread or with the tokenizer, never by both.  Run under valgrind
 * (tests/scripts/test_valgrind) a double free or a use after free shows. */
typedef struct {
    dsv4_tokenizer    *t;
    pthread_barrier_t *bar;
} exit_arg;

static void *
exit_worker(void *p)
{
    exit_arg *a = p;
    int32_t   ids[64];
    size_t    n;

    dsv4_tokenizer_encode(a->t, "aaaa abc", 8, ids, 64, &n);
    pthread_barrier_wait(a->bar);       /* then exits while main frees t */
    return NULL;
}

static void
test_exit_while_freeing(void)
{
    char err[512] = "";
    int  loaded = 0;

    for (int round = 0; round < 200; round++) {
        dsv4_tokenizer   *t = load_json(tiny_json, err, sizeof(err));
        pthread_barrier_t bar;
        pthread_t         th[3];
        exit_arg          a;
        int32_t           ids[64];
        size_t            n;

        if (t == NULL) {
            break;
        }
        loaded++;
        pthread_barrier_init(&bar, NULL, 4);
        a = (exit_arg) { t, &bar };
        for (int i = 0; i < 3; i++) {
            pthread_create(&th[i], NULL, exit_worker, &a);
        }
        dsv4_tokenizer_encode(t, "abc", 3, ids, 64, &n);     /* main's own state too */
        pthread_barrier_wait(&bar);
        dsv4_tokenizer_free(t);
        for (int i = 0; i < 3; i++) {
            pthread_join(th[i], NULL);
        }
        pthread_barrier_destroy(&bar);
    }
    TEST_CHECK(loaded == 200, "tokenizer freed while its threads exit: %d of 200 rounds (%s)",
               loaded, err);
}


int
main(void)
{
    dsv4_tokenizer *v3 = fixture_v3();
    dsv4_tokenizer *v4 = fixture_v4();

    test_reference_vectors(v3, v4);
    test_tiny();
    test_load_errors();
    test_invalid_and_capacity(v3);
    test_decode(v4);
    test_threads(v4);
    test_exit_while_freeing();
    dsv4_tokenizer_free(v3);
    dsv4_tokenizer_free(v4);
    return TEST_REPORT();
}
