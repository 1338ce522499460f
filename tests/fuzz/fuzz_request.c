/*
 * libFuzzer target: the request front end, through the code the module
 * runs on every body -- ngx_http_dsv4_prepare() (parameters, the Anthropic
 * translation, chat encoding, tokenization, grammars), without nginx: the
 * step runs on malloc'd memory in a thread pool, so it needs no event loop.
 *
 * The first input byte picks the API (chat completions, completions,
 * messages, tokenize, detokenize), the rest is the body.  A body is either
 * refused -- a 4xx/5xx status with a NUL-terminated message and a code --
 * or prepared: prompts of ids inside the vocabulary that fit the context,
 * max_tokens within its limit, n within max_n.  Everything is freed
 * (LeakSanitizer).  abort() = a finding.
 *
 * DSV4_FUZZ_TOKENIZER: a V4 tokenizer directory (make_v4_tokenizer.py).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_dsv4_module.h"

#define FUZZ_VOCAB   129280     /* V4's embedding rows */
#define FUZZ_CTX     4096

static ngx_http_dsv4_model_t      fuzz_model;
static ngx_http_dsv4_main_conf_t  fuzz_dmcf;

static const ngx_uint_t fuzz_apis[] = {
    NGX_HTTP_DSV4_API_CHAT, NGX_HTTP_DSV4_API_COMPLETIONS, NGX_HTTP_DSV4_API_MESSAGES,
    NGX_HTTP_DSV4_API_TOKENIZE, NGX_HTTP_DSV4_API_DETOKENIZE
};

static void
fuzz_check(int cond, const char *what, const ngx_http_dsv4_prep_t *prep)
{
    if (!cond) {
        fprintf(stderr, "fuzz_request: %s (status %lu: %s)\n", what,
                (unsigned long) prep->status, prep->err);
        abort();
    }
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("DSV4_FUZZ_TOKENIZER");
    char        err[512];

    (void) argc;
    (void) argv;
    if (dir == NULL || dsv4_tokenizer_load(dir, &fuzz_model.tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_request: set DSV4_FUZZ_TOKENIZER to a tokenizer dir\n");
        abort();
    }
    /* the model as the loader leaves it (ngx_http_dsv4_engine.c) */
    ngx_str_set(&fuzz_model.name, "demo");
    fuzz_model.state = NGX_HTTP_DSV4_READY;
    fuzz_model.temperature = NAN;
    fuzz_model.top_p = NAN;
    fuzz_model.min_p = NAN;
    fuzz_model.top_k = -2;
    fuzz_model.vocab = FUZZ_VOCAB;
    fuzz_model.ctx_len = FUZZ_CTX;
    fuzz_model.vocab_index = dsv4_vocab_index_new(fuzz_model.tok, FUZZ_VOCAB);
    if (fuzz_model.vocab_index == NULL) {
        abort();
    }
    fuzz_model.stop_ids[fuzz_model.n_stop_ids++] = dsv4_tokenizer_eos_id(fuzz_model.tok);
    fuzz_dmcf.models.elts = &fuzz_model;
    fuzz_dmcf.models.nelts = 1;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_http_dsv4_prep_t *prep;
    int                   generating;

    if (size == 0) {
        return 0;
    }
    prep = calloc(1, sizeof(*prep));
    if (prep == NULL) {
        abort();
    }
    prep->api = fuzz_apis[data[0] % (sizeof(fuzz_apis) / sizeof(fuzz_apis[0]))];
    prep->body = data + 1;
    prep->len = size - 1;
    prep->dmcf = &fuzz_dmcf;
    prep->max_prompt_tokens = 0;
    prep->max_tokens_limit = 16384;
    prep->max_n = 16;

    ngx_http_dsv4_prepare(prep);

    generating = prep->api == NGX_HTTP_DSV4_API_CHAT
                 || prep->api == NGX_HTTP_DSV4_API_COMPLETIONS
                 || prep->api == NGX_HTTP_DSV4_API_MESSAGES;
    if (prep->status != 0) {
        fuzz_check(prep->status >= 400 && prep->status <= 599, "an error status outside 4xx/5xx",
                   prep);
        fuzz_check(memchr(prep->err, '\0', sizeof(prep->err)) != NULL && prep->err[0] != '\0',
                   "an error without a message", prep);
    } else if (generating) {
        int longest = 0;

        fuzz_check(prep->nprompts >= 1 && prep->prompts != NULL, "prepared without a prompt",
                   prep);
        for (ngx_uint_t i = 0; i < prep->nprompts; i++) {
            fuzz_check(prep->nids[i] >= 1 && prep->nids[i] < FUZZ_CTX,
                       "a prompt as long as the context", prep);
            longest = prep->nids[i] > longest ? prep->nids[i] : longest;
            for (int k = 0; k < prep->nids[i]; k++) {
                fuzz_check(prep->prompts[i][k] >= 0 && prep->prompts[i][k] < FUZZ_VOCAB,
                           "a prompt id outside the vocabulary", prep);
            }
        }
        fuzz_check(prep->max_tokens >= 1 && prep->max_tokens <= prep->max_tokens_limit
                   && longest + prep->max_tokens <= FUZZ_CTX,
                   "max_tokens beyond its limit or the context", prep);
        fuzz_check(prep->n >= 1 && prep->n <= (ngx_uint_t) prep->max_n, "n beyond max_n", prep);
    }
    ngx_http_dsv4_prep_free(prep);      /* frees prep too */
    return 0;
}
