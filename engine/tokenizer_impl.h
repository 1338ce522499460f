/*
 * Private to tokenizer*.c: the loaded tokenizer's layout.  Everything here
 * is immutable after dsv4_tokenizer_load() except `threads`, the list of
 * per-thread encode states (see tokenizer_encode.c for who frees them).
 */
#ifndef DSV4_TOKENIZER_IMPL_H
#define DSV4_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#include "tokenizer.h"

#define TOK_EXISTS   0x01
#define TOK_ADDED    0x02
#define TOK_SPECIAL  0x04

#define TOK_MAX_SPLITS 8

/* A byte trie over added-token contents: first-child / next-sibling lists,
 * since nearly every node has one child. */
typedef struct {
    uint8_t  byte;
    int32_t  child;     /* first child node, -1 if none */
    int32_t  sibling;   /* next sibling node, -1 if none */
    int32_t  id;        /* token ending here, -1 if none */
} tok_trie_node;

typedef struct {
    tok_trie_node *nodes;     /* nodes[0] is the root */
    int32_t        n, cap;
    uint8_t        first[256];  /* 1 if some token starts with this byte */
} tok_trie;

/* Open-addressing map from a pair of ids to the merge that joins them. */
typedef struct {
    uint64_t  key;      /* (uint64)(left + 1) << 32 | right; 0 = empty slot */
    int32_t   rank;
    int32_t   id;       /* the merged token */
} tok_merge;

/* Open-addressing map from token bytes to id. */
typedef struct {
    uint32_t  hash;
    int32_t   id;       /* -1 = empty slot */
} tok_vslot;

struct tok_thread;

struct dsv4_tokenizer {
    int32_t      n_ids;        /* one past the largest id */
    uint32_t    *off;          /* [n_ids] offset of each token's bytes */
    uint32_t    *len;          /* [n_ids] */
    uint8_t     *flags;        /* [n_ids] TOK_* */
    char        *bytes;        /* all token bytes, back to back */
    size_t       max_len;      /* longest token, in bytes */

    int32_t      byte_id[256]; /* the single-byte tokens (-1 if absent) */

    tok_merge   *merges;       /* [merge_mask + 1] */
    uint64_t     merge_mask;

    tok_vslot   *vocab;        /* [vocab_mask + 1], keyed by token bytes */
    uint32_t     vocab_mask;

    tok_trie     added_raw;    /* added tokens with normalized=false */
    tok_trie     added_norm;   /* added tokens with normalized=true */

    pcre2_code  *split[TOK_MAX_SPLITS];
    int          split_jit[TOK_MAX_SPLITS];
    int          n_split;
    int          ignore_merges;

    int32_t      bos_id, eos_id;

    /* per-thread encode state */
    struct tok_thread *threads;
};

uint32_t dsv4_tok_hash(const char *s, size_t n);
void     dsv4_tok_threads_free(struct dsv4_tokenizer *t);

#endif
