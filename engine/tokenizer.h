/*
 * Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json.
 *
 * What is implemented is exactly what DeepSeek's tokenizer.json uses, and
 * anything else in a tokenizer.json is refused at load with a message naming
 * it (never silently mis-tokenized):
 *
 *   added_tokens   matched in the raw text before anything else, leftmost
 *                  longest, in two passes like the reference tokenizers:
 *                  first the tokens with normalized=false, then, inside the
 *                  text between those, the ones with normalized=true;
 *   normalizer     none, or an empty Sequence;
 *   pre_tokenizer  a Sequence of Split(Regex, "Isolated") steps followed by
 *                  ByteLevel(use_regex=false); the regexes run on PCRE2 with
 *                  UTF and UCP (Unicode properties), JIT-compiled;
 *   model          BPE by merge rank, leftmost first among equal ranks;
 *   decoder        ByteLevel; added tokens decode to their content.
 *
 * Encoding never adds BOS/EOS: the chat encoding writes them as text.
 * Text must be valid UTF-8 (DSV4_TOK_EINVAL otherwise; callers that take
 * JSON get that for free, jansson validates it).  Decoding replaces invalid
 * UTF-8 with U+FFFD (WHATWG rule, same as the reference).
 *
 * Thread safety: a loaded tokenizer is read-only; encode may be called from
 * any number of threads at once.  Each thread keeps its own scratch space
 * and word cache (bounded, about 8 MiB), created on its first encode and
 * freed when the thread exits or the tokenizer is freed.
 */
#ifndef DSV4_TOKENIZER_H
#define DSV4_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "utf8.h"

enum {
    DSV4_TOK_OK     = 0,
    DSV4_TOK_EINVAL = -1,   /* invalid UTF-8 input, or an id with no token */
    DSV4_TOK_ENOSPC = -2,   /* output larger than the caller's capacity */
    DSV4_TOK_ENOMEM = -3,
    DSV4_TOK_EREGEX = -4    /* the regex engine gave up (resource limit) */
};

typedef struct dsv4_tokenizer dsv4_tokenizer;

/* Loads DIR/tokenizer.json (required) and DIR/tokenizer_config.json
 * (optional: bos_token / eos_token names).  On failure returns -1, *out is
 * NULL and err holds a one-line reason naming the file and field. */
int dsv4_tokenizer_load(const char *dir, dsv4_tokenizer **out,
                        char *err, size_t errlen);

/* Same, from explicit paths; config_path may be NULL. */
int dsv4_tokenizer_load_files(const char *json_path, const char *config_path,
                              dsv4_tokenizer **out, char *err, size_t errlen);

/* Frees everything, including every thread's cache.  No thread may be
 * using tok (or exiting after having used it) during the call. */
void dsv4_tokenizer_free(dsv4_tokenizer *tok);

/* Encodes text[0..len) (no BOS added).  Writes at most cap ids to ids and
 * always sets *n to the full count, so a short buffer returns
 * DSV4_TOK_ENOSPC with the size to retry with (cap 0 just counts).
 * Returns DSV4_TOK_OK, EINVAL (invalid UTF-8), ENOSPC, ENOMEM or EREGEX. */
int dsv4_tokenizer_encode(const dsv4_tokenizer *tok, const char *text,
                          size_t len, int32_t *ids, size_t cap, size_t *n);

/* Same, into a malloc'd array the caller frees (*ids is NULL on error;
 * an empty text gives a valid zero-length allocation). */
int dsv4_tokenizer_encode_alloc(const dsv4_tokenizer *tok, const char *text,
                                size_t len, int32_t **ids, size_t *n);

/* Decodes ids into a malloc'd, NUL-terminated, valid UTF-8 string the
 * caller frees.  DSV4_TOK_EINVAL if an id has no token (ids in the padded
 * tail of the embedding, or gaps in the id space). */
int dsv4_tokenizer_decode(const dsv4_tokenizer *tok, const int32_t *ids,
                          size_t n, char **text, size_t *len);

/* One past the largest id that has a token. */
int32_t dsv4_tokenizer_n_ids(const dsv4_tokenizer *tok);

/* Id of the token whose text is exactly s[0..len) (an added token's content
 * or a vocabulary entry), or -1. */
int32_t dsv4_tokenizer_token_id(const dsv4_tokenizer *tok, const char *s,
                                size_t len);

/* The bytes id decodes to (not NUL-terminated, may be a fragment of a UTF-8
 * character), or NULL if id has no token.  Borrowed from tok. */
const char *dsv4_tokenizer_token_bytes(const dsv4_tokenizer *tok, int32_t id,
                                       size_t *len);

/* 1 if id is an added token (matched whole in text, decoded verbatim). */
int dsv4_tokenizer_is_added(const dsv4_tokenizer *tok, int32_t id);

/* BOS / EOS ids from tokenizer_config.json (DeepSeek's names by default);
 * -1 if the vocabulary lacks them. */
int32_t dsv4_tokenizer_bos_id(const dsv4_tokenizer *tok);
int32_t dsv4_tokenizer_eos_id(const dsv4_tokenizer *tok);

/*
 * Streaming decoder: token ids in, valid UTF-8 out, for SSE.  A token that
 * ends inside a character is held back until the character completes; an
 * added token first flushes such a pending fragment (as U+FFFD), as the
 * reference decoder does.  The concatenated output of push... + flush equals
 * dsv4_tokenizer_decode of the same ids.  No allocation: the struct lives
 * wherever the caller puts it (e.g. in the request context).
 */
typedef struct {
    const dsv4_tokenizer *tok;
    dsv4_utf8_stream      utf8;
} dsv4_decoder;

void dsv4_decoder_init(dsv4_decoder *d, const dsv4_tokenizer *tok);

/* The most bytes one push or flush can write. */
size_t dsv4_decoder_bound(const dsv4_tokenizer *tok);

/* Decodes one id into out (cap >= dsv4_decoder_bound()); *outlen may be 0
 * when the bytes are held back.  DSV4_TOK_EINVAL (nothing written, state
 * unchanged) for an id with no token. */
int dsv4_decoder_push(dsv4_decoder *d, int32_t id, char *out, size_t cap,
                      size_t *outlen);

/* Ends the stream (an incomplete character becomes U+FFFD); returns the
 * bytes written to out (at most 3).  The decoder can then be reused. */
size_t dsv4_decoder_flush(dsv4_decoder *d, char *out);

#endif
