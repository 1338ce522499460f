/*
 * libFuzzer target: tokenizer, streaming decoder and chat encoding.
 *
 * Properties checked (abort = a finding):
 *   mode 0  valid UTF-8 text encodes, and decode(encode(text)) == text;
 *           invalid UTF-8 is refused with DSV4_TOK_EINVAL, nothing else
 *   mode 1  any id sequence: streaming decode == batch decode, both valid
 *           UTF-8; ids with no token are refused, never read out of bounds
 *   mode 2  any bytes as a chat request body: an error or a prompt, and the
 *           prompt tokenizes
 * The tokenizer comes from $DSV4_FUZZ_TOKENIZER (tests/scripts/test_tokenizer_fuzz
 * points it at the V4 test tokenizer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "strbuf.h"
#include "tokenizer.h"

static dsv4_tokenizer *tok;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("DSV4_FUZZ_TOKENIZER");
    char        err[512];

    (void) argc;
    (void) argv;
    if (dir == NULL || dsv4_tokenizer_load(dir, &tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_tokenizer: set DSV4_FUZZ_TOKENIZER to a tokenizer dir (%s)\n",
                dir ? err : "unset");
        abort();
    }
    return 0;
}


static void
check_text(const char *s, size_t n)
{
    int32_t *ids;
    size_t   k, dl;
    char    *dec;
    int      rc = dsv4_tokenizer_encode_alloc(tok, s, n, &ids, &k);

    if (dsv4_utf8_valid_prefix(s, n) != n) {
        if (rc != DSV4_TOK_EINVAL) abort();
        return;
    }
    if (rc != DSV4_TOK_OK) abort();
    if (dsv4_tokenizer_decode(tok, ids, k, &dec, &dl) != DSV4_TOK_OK) abort();
    if (dl != n || memcmp(dec, s, n) != 0) abort();
    free(dec);
    free(ids);
}


static void
check_ids(const uint8_t *d, size_t n)
{
    int32_t      ids[512];
    size_t       k = 0, len, bound = dsv4_decoder_bound(tok), o;
    char        *batch, *piece = malloc(bound);
    dsv4_strbuf  s = DSV4_STRBUF_INIT;
    dsv4_decoder dec;
    int          rc, bad = 0;

    for (size_t i = 0; i + 2 < n && k < 512; i += 3) {
        /* mostly byte tokens and low ids, sometimes anything */
        uint32_t v = (uint32_t) d[i] | (uint32_t) d[i + 1] << 8 | (uint32_t) d[i + 2] << 16;

        ids[k++] = (d[i] & 1) ? (int32_t) (v % 300) : (int32_t) (v % (uint32_t) (dsv4_tokenizer_n_ids(tok) + 500));
    }
    rc = dsv4_tokenizer_decode(tok, ids, k, &batch, &len);
    dsv4_decoder_init(&dec, tok);
    for (size_t i = 0; i < k; i++) {
        size_t tl;

        if (dsv4_tokenizer_token_bytes(tok, ids[i], &tl) == NULL) {
            bad = 1;
            if (dsv4_decoder_push(&dec, ids[i], piece, bound, &o) != DSV4_TOK_EINVAL || o != 0) abort();
            continue;
        }
        if (dsv4_decoder_push(&dec, ids[i], piece, bound, &o) != DSV4_TOK_OK) abort();
        if (dsv4_utf8_valid_prefix(piece, o) != o) abort();
        dsv4_strbuf_append(&s, piece, o);
    }
    o = dsv4_decoder_flush(&dec, piece);
    dsv4_strbuf_append(&s, piece, o);
    if (bad) {
        if (rc != DSV4_TOK_EINVAL) abort();
    } else {
        if (rc != DSV4_TOK_OK || len != s.len || memcmp(batch, s.data, len) != 0) abort();
        if (dsv4_utf8_valid_prefix(batch, len) != len) abort();
        free(batch);
    }
    dsv4_strbuf_free(&s);
    free(piece);
}


static void
check_chat(const char *s, size_t n)
{
    dsv4_chat_options o;
    dsv4_chat_prompt  p;
    char              err[256];

    dsv4_chat_options_default(&o);
    o.thinking = n & 1;
    if (dsv4_chat_encode_json(s, n, &o, &p, err, sizeof(err)) == 0) {
        size_t k;

        if (p.text == NULL || strlen(p.text) > p.len) abort();
        if (dsv4_tokenizer_encode(tok, p.text, p.len, NULL, 0, &k) == DSV4_TOK_EINVAL) abort();
        dsv4_chat_prompt_free(&p);
    } else if (p.text != NULL || err[0] == '\0') {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    switch (data[0] % 3) {
    case 0: check_text((const char *) data + 1, size - 1); break;
    case 1: check_ids(data + 1, size - 1); break;
    case 2: check_chat((const char *) data + 1, size - 1); break;
    }
    return 0;
}
