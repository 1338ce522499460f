/*
 * dsv4-key: API keys for a dsv4 key file (limits/limit.h has the format).
 *
 *   dsv4-key new TENANT [rpm=N] [tpm=N] [concurrency=N] [daily=N]
 *                [monthly=N] [models=a,b]
 *       a fresh key, "sk-dsv4-" and 43 base62 characters (256 bits from
 *       /dev/urandom): "key: sk-dsv4-..." on stderr, to hand to the tenant
 *       (it is stored nowhere), and the key file line "<sha256> TENANT
 *       [options]" on stdout, to append to the key file
 *   dsv4-key hash
 *       stdin (one raw key; one final newline is dropped) -> its SHA-256,
 *       64 lowercase hex digits
 *
 * On bad input: one line "dsv4-key: ..." on stderr, exit 1 (2 for usage).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits/limit.h"

#define KEY_PREFIX      "sk-dsv4-"
#define KEY_CHARS       43              /* 43 * log2(62) > 256 bits */
#define KEY_MAX         4096            /* longest raw key hash accepts */

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static void
usage(void)
{
    fprintf(stderr, "usage: dsv4-key new TENANT [rpm=N] [tpm=N] [concurrency=N] [daily=N]"
            " [monthly=N] [models=a,b]\n"
            "       dsv4-key hash < raw-key\n");
}

static int
die(const char *what)
{
    fprintf(stderr, "dsv4-key: %s\n", what);
    return 1;
}

/* key[KEY_CHARS] uniform over base62: bytes >= 248 (4 * 62) are dropped so
 * that byte % 62 is unbiased */
static int
random_key(char *key)
{
    FILE         *f = fopen("/dev/urandom", "rb");
    unsigned char b[64];
    int           n = 0;

    if (f == NULL) {
        return -1;
    }
    while (n < KEY_CHARS && fread(b, 1, sizeof(b), f) == sizeof(b)) {
        for (size_t i = 0; i < sizeof(b) && n < KEY_CHARS; i++) {
            if (b[i] < 248) {
                key[n++] = base62[b[i] % 62];
            }
        }
    }
    fclose(f);
    return n == KEY_CHARS ? 0 : -1;
}

static int
cmd_new(int argc, char **argv)
{
    char      key[sizeof(KEY_PREFIX) + KEY_CHARS], hex[65], line[2048], err[256];
    uint8_t   digest[32];
    dsv4_key *keys;
    size_t    len;
    int       n;

    memcpy(key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    if (random_key(key + sizeof(KEY_PREFIX) - 1) != 0) {
        return die("cannot read /dev/urandom");
    }
    key[sizeof(key) - 1] = '\0';
    dsv4_key_digest(key, strlen(key), digest);
    dsv4_key_hex(digest, hex);
    len = (size_t) snprintf(line, sizeof(line), "%s", hex);
    for (int i = 0; i < argc && len < sizeof(line); i++) {
        len += (size_t) snprintf(line + len, sizeof(line) - len, " %s", argv[i]);
    }
    if (len >= sizeof(line)) {
        return die("arguments too long");
    }
    /* the key file's own parser judges the line */
    if (dsv4_keys_parse(line, len, &keys, &n, err, sizeof(err)) != 0) {
        return die(strncmp(err, "line 1: ", 8) == 0 ? err + 8 : err);
    }
    free(keys);
    fprintf(stderr, "key: %s\n", key);
    printf("%s\n", line);
    return fflush(stdout) == 0 ? 0 : die("cannot write the key file line");
}

static int
cmd_hash(void)
{
    char    key[KEY_MAX + 3], hex[65];
    uint8_t digest[32];
    size_t  n = fread(key, 1, sizeof(key), stdin);

    if (ferror(stdin)) {
        return die("cannot read stdin");
    }
    if (n > 0 && key[n - 1] == '\n') {
        n -= 1 + (n > 1 && key[n - 2] == '\r');
    }
    if (n == 0) {
        return die("no key on stdin");
    }
    if (n > KEY_MAX) {
        return die("key longer than 4096 bytes");
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char) key[i] <= ' ' || key[i] == 0x7f) {
            return die("the key holds blanks or control characters (one key, one line)");
        }
    }
    dsv4_key_digest(key, n, digest);
    dsv4_key_hex(digest, hex);
    printf("%s\n", hex);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "new") == 0) {
        return cmd_new(argc - 2, argv + 2);
    }
    if (argc == 2 && strcmp(argv[1], "hash") == 0) {
        return cmd_hash();
    }
    usage();
    return 2;
}
