/*
 * Tokenizer throughput: encodes every string of a JSON-lines corpus, single
 * thread, and prints MB/s of UTF-8 input.  Driven by bench/tokenizer, which
 * runs the reference tokenizer on the same corpus in the same run.
 *
 *   build/bench/tokenizer_bench DIR corpus.jsonl [ROUNDS]
 *
 * The first pass runs with an empty word cache and is timed on its own
 * ("cold"); then ROUNDS timed rounds (default 3) with the cache warm.  Prints
 *   dsv4_bytes N seconds S mb_per_s X tokens T cold_mb_per_s C
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}


int
main(int argc, char **argv)
{
    dsv4_tokenizer *tok;
    char            err[512], *line = NULL;
    size_t          cap = 0, n = 0, ncap = 1024, bytes = 0, tokens = 0, idcap = 1 << 16;
    ssize_t         len;
    FILE           *f;
    char          **texts;
    size_t         *lens;
    int32_t        *ids;
    int             rounds = argc > 3 ? atoi(argv[3]) : 3;
    double          t0 = 0, sec, cold = 0;

    if (argc < 3 || rounds < 1) {
        fprintf(stderr, "usage: tokenizer_bench DIR corpus.jsonl [ROUNDS]\n");
        return 2;
    }
    if (dsv4_tokenizer_load(argv[1], &tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "tokenizer_bench: %s\n", err);
        return 1;
    }
    f = fopen(argv[2], "r");
    texts = malloc(ncap * sizeof(*texts));
    lens = malloc(ncap * sizeof(*lens));
    ids = malloc(idcap * sizeof(*ids));
    if (f == NULL || texts == NULL || lens == NULL || ids == NULL) {
        fprintf(stderr, "tokenizer_bench: cannot read %s\n", argv[2]);
        return 1;
    }
    while ((len = getline(&line, &cap, f)) > 0) {
        json_t *s = json_loadb(line, (size_t) len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

        if (!json_is_string(s)) {
            fprintf(stderr, "tokenizer_bench: line %zu is not a JSON string\n", n + 1);
            return 1;
        }
        if (n == ncap) {
            ncap *= 2;
            texts = realloc(texts, ncap * sizeof(*texts));
            lens = realloc(lens, ncap * sizeof(*lens));
            if (texts == NULL || lens == NULL) return 1;
        }
        lens[n] = json_string_length(s);
        texts[n] = malloc(lens[n] + 1);
        if (texts[n] == NULL) return 1;
        memcpy(texts[n], json_string_value(s), lens[n] + 1);
        bytes += lens[n];
        n++;
        json_decref(s);
    }
    fclose(f);
    free(line);

    for (int r = -1; r < rounds; r++) {
        if (r == -1) {
            cold = now();
        }
        if (r == 0) {
            t0 = now();
            cold = t0 - cold;
            tokens = 0;
        }
        for (size_t i = 0; i < n; i++) {
            size_t k;
            int    rc = dsv4_tokenizer_encode(tok, texts[i], lens[i], ids, idcap, &k);

            if (rc != DSV4_TOK_OK) {
                fprintf(stderr, "tokenizer_bench: encode failed (%d) on line %zu\n", rc, i + 1);
                return 1;
            }
            tokens += k;
        }
    }
    sec = now() - t0;
    printf("dsv4_bytes %zu seconds %.3f mb_per_s %.3f tokens %zu cold_mb_per_s %.3f\n",
           bytes * (size_t) rounds, sec, (double) bytes * rounds / sec / 1e6, tokens,
           (double) bytes / cold / 1e6);
    for (size_t i = 0; i < n; i++) free(texts[i]);
    free(texts);
    free(lens);
    free(ids);
    dsv4_tokenizer_free(tok);
    return 0;
}
