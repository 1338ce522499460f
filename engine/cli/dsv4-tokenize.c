/*
 * dsv4-tokenize: the tokenizer and chat encoding from the command line.
 *
 *   dsv4-tokenize -t DIR                 stdin (one UTF-8 text) -> ids "1,2,3"
 *   dsv4-tokenize -t DIR --decode        stdin ids "1,2,3" -> text
 *   dsv4-tokenize [-t DIR] --chat F.json [--thinking] [--ids]
 *                                        request body -> prompt text (or ids)
 *   dsv4-tokenize -t DIR --jsonl [--decode]
 *                                        one JSON string per line -> one id
 *                                        line per line (or ids -> JSON strings)
 *
 * No BOS is added by encoding (the chat encoding writes it).  On bad input
 * it prints one line "dsv4-tokenize: ..." to stderr and exits 1 (2 for
 * usage errors).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "strbuf.h"
#include "tokenizer.h"

static void
usage(void)
{
    fprintf(stderr,
            "usage: dsv4-tokenize -t DIR [--decode]\n"
            "       dsv4-tokenize [-t DIR] --chat FILE.json [--thinking] [--ids]\n"
            "       dsv4-tokenize -t DIR --jsonl [--decode]\n");
    exit(2);
}


static int
die(const char *fmt, const char *arg)
{
    fprintf(stderr, "dsv4-tokenize: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 1;
}


static int
read_all(FILE *f, dsv4_strbuf *b)
{
    char   buf[65536];
    size_t n;

    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (dsv4_strbuf_append(b, buf, n) != 0) return -1;
    }
    return ferror(f) ? -1 : dsv4_strbuf_reserve(b, 0);
}


static const char *
tok_error(int rc)
{
    switch (rc) {
    case DSV4_TOK_EINVAL: return "input is not valid UTF-8";
    case DSV4_TOK_ENOMEM: return "out of memory";
    case DSV4_TOK_EREGEX: return "the pre-tokenizer regex hit a resource limit";
    default:              return "encoding failed";
    }
}


static int
print_ids(const dsv4_tokenizer *tok, const char *text, size_t len)
{
    int32_t *ids;
    size_t   n;
    int      rc = dsv4_tokenizer_encode_alloc(tok, text, len, &ids, &n);

    if (rc != DSV4_TOK_OK) {
        return die("%s", tok_error(rc));
    }
    for (size_t i = 0; i < n; i++) {
        printf(i ? ",%d" : "%d", ids[i]);
    }
    putchar('\n');
    free(ids);
    return 0;
}


/* Parses "1, 2,3\n" into ids; -1 with a message on anything else. */
static int
parse_ids(const char *s, int32_t **out, size_t *n)
{
    size_t   cap = 64;
    int32_t *ids = malloc(cap * sizeof(*ids));

    *n = 0;
    if (ids == NULL) return -1;
    for (;;) {
        char *end;
        long  v;

        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
        if (*s == '\0') break;
        errno = 0;
        v = strtol(s, &end, 10);
        if (end == s || errno != 0 || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (*n == cap) {
            int32_t *p = realloc(ids, 2 * cap * sizeof(*ids));

            if (p == NULL) {
                free(ids);
                return -1;
            }
            ids = p;
            cap *= 2;
        }
        ids[(*n)++] = (int32_t) v;
        s = end;
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
        if (*s == ',') {
            s++;
        } else if (*s != '\0') {
            free(ids);
            return -1;
        }
    }
    *out = ids;
    return 0;
}


static int
decode_ids(const dsv4_tokenizer *tok, const char *line, char **text, size_t *len)
{
    int32_t *ids;
    size_t   n;
    int      rc;

    if (parse_ids(line, &ids, &n) != 0) {
        return die("%s", "expected comma-separated token ids");
    }
    rc = dsv4_tokenizer_decode(tok, ids, n, text, len);
    free(ids);
    if (rc == DSV4_TOK_EINVAL) {
        return die("%s", "an id has no token in this tokenizer");
    }
    if (rc != DSV4_TOK_OK) {
        return die("%s", tok_error(rc));
    }
    return 0;
}


/* --jsonl: one record per line, for the reference comparison. */
static int
run_jsonl(const dsv4_tokenizer *tok, int decode)
{
    char   *line = NULL;
    size_t  cap = 0, lineno = 0;
    ssize_t len;
    int     rc = 0;

    while ((len = getline(&line, &cap, stdin)) > 0) {
        lineno++;
        if (decode) {
            char   *text;
            size_t  tlen;
            json_t *s;

            if (decode_ids(tok, line, &text, &tlen) != 0) {
                rc = 1;
                break;
            }
            s = json_stringn(text, tlen);
            free(text);
            if (s == NULL || json_dumpf(s, stdout, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) != 0) {
                json_decref(s);
                rc = die("%s", "cannot write the decoded text");
                break;
            }
            json_decref(s);
            putchar('\n');
        } else {
            json_error_t jerr;
            json_t      *s = json_loadb(line, (size_t) len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);

            if (!json_is_string(s)) {
                json_decref(s);
                fprintf(stderr, "dsv4-tokenize: line %zu is not a JSON string\n", lineno);
                rc = 1;
                break;
            }
            rc = print_ids(tok, json_string_value(s), json_string_length(s));
            json_decref(s);
            if (rc != 0) break;
        }
    }
    free(line);
    return rc;
}


int
main(int argc, char **argv)
{
    const char       *dir = NULL, *chat = NULL;
    int               decode = 0, ids = 0, jsonl = 0, thinking = 0, rc;
    dsv4_tokenizer   *tok = NULL;
    dsv4_strbuf       in = DSV4_STRBUF_INIT;
    char              err[512];

    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-t") == 0 || strcmp(argv[i], "--tokenizer") == 0) && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--chat") == 0 && i + 1 < argc) {
            chat = argv[++i];
        } else if (strcmp(argv[i], "--decode") == 0) {
            decode = 1;
        } else if (strcmp(argv[i], "--ids") == 0) {
            ids = 1;
        } else if (strcmp(argv[i], "--jsonl") == 0) {
            jsonl = 1;
        } else if (strcmp(argv[i], "--thinking") == 0) {
            thinking = 1;
        } else {
            usage();
        }
    }
    if ((chat == NULL && dir == NULL) || (chat != NULL && (decode || jsonl))
        || (ids && chat == NULL) || (chat != NULL && ids && dir == NULL))
    {
        usage();
    }

    if (dir != NULL && dsv4_tokenizer_load(dir, &tok, err, sizeof(err)) != 0) {
        return die("%s", err);
    }

    if (jsonl) {
        rc = run_jsonl(tok, decode);
    } else if (chat != NULL) {
        FILE             *f = fopen(chat, "rb");
        dsv4_chat_options opt;
        dsv4_chat_prompt  p;

        if (f == NULL || read_all(f, &in) != 0) {
            if (f) fclose(f);
            dsv4_tokenizer_free(tok);
            return die("cannot read %s", chat);
        }
        fclose(f);
        dsv4_chat_options_default(&opt);
        opt.thinking = thinking;
        rc = dsv4_chat_encode_json(in.data, in.len, &opt, &p, err, sizeof(err));
        if (rc != 0) {
            rc = die("%s", err);
        } else if (ids) {
            rc = print_ids(tok, p.text, p.len);
        } else {
            rc = fwrite(p.text, 1, p.len, stdout) == p.len ? 0 : 1;
        }
        dsv4_chat_prompt_free(&p);
    } else {
        if (read_all(stdin, &in) != 0) {
            rc = die("%s", "cannot read stdin");
        } else if (decode) {
            char  *text;
            size_t len;

            rc = decode_ids(tok, in.data, &text, &len);
            if (rc == 0) {
                rc = fwrite(text, 1, len, stdout) == len ? 0 : 1;
                free(text);
            }
        } else {
            rc = print_ids(tok, in.data, in.len);
        }
    }
    dsv4_strbuf_free(&in);
    dsv4_tokenizer_free(tok);
    if (fflush(stdout) != 0) {
        return 1;
    }
    return rc;
}
