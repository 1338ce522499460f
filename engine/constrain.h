/*
 * Constrained decoding: a per-request grammar that masks the logits before
 * each sampling step, so the completion can only be a forced DSML tool call
 * (tool_choice "required" or a named function) or a JSON value
 * (response_format json_object / json_schema).
 *
 * The grammar works on bytes.  A token is allowed when the grammar accepts
 * every byte of its text from the current state; the check walks the
 * vocabulary in byte order (dsv4_vocab_index) so tokens sharing a prefix
 * share its work.  Where the grammar has a fixed literal ahead, only the
 * longest token matching it is allowed: structural text is forced.  Once
 * the grammar is complete only the end-of-sequence token is allowed.
 *
 * Supported JSON-schema subset (docs/api.md): type string (with enum),
 * integer, number, boolean, null, array (items), object (properties; the
 * required ones in declared order, or all when none is required); any other
 * schema accepts a generic JSON value.  Everything is bounded (string bytes,
 * digits, members, depth) so that random weights terminate.
 *
 * A grammar is immutable and reference counted (one per HTTP request, shared
 * by its choices); a constraint is one sequence's state and belongs to the
 * engine thread that samples it.  The mask depends on that sequence alone:
 * batch invariance holds.
 */
#ifndef DSV4_CONSTRAIN_H
#define DSV4_CONSTRAIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct dsv4_vocab_index dsv4_vocab_index;
typedef struct dsv4_grammar     dsv4_grammar;
typedef struct dsv4_constraint  dsv4_constraint;

/* Bounds of the generated values. */
#define DSV4_GRAMMAR_MAX_STR     24     /* bytes of a free string */
#define DSV4_GRAMMAR_MAX_DIGITS  6      /* integer digits; 4 more in a fraction */
#define DSV4_GRAMMAR_MAX_ITEMS   4      /* array items, generic object members */
#define DSV4_GRAMMAR_MAX_DEPTH   3      /* nesting of generic JSON values */

/* The vocabulary sorted by bytes, for the mask walk.  Added (special)
 * tokens are left out: constrained text never contains them.  vocab is the
 * model's logit count (>= the tokenizer's ids).  NULL on ENOMEM. */
dsv4_vocab_index *dsv4_vocab_index_new(const dsv4_tokenizer *tok, int vocab);
void dsv4_vocab_index_free(dsv4_vocab_index *vi);

/* A DSML tool-call block calling one of tools (an OpenAI "tools" array), or
 * only the function named name when name != NULL.  think_close: the
 * completion starts inside <think> (thinking mode): "</think>" is forced
 * first.  NULL with err set on a bad tools array / unknown name / ENOMEM. */
dsv4_grammar *dsv4_grammar_tool_call(json_t *tools, const char *name, int think_close,
                                     char *err, size_t errlen);

/* A JSON object: generic when schema is NULL, else following schema (its
 * top level must describe an object, or be generic). */
dsv4_grammar *dsv4_grammar_json(json_t *schema, int think_close, char *err, size_t errlen);

dsv4_grammar *dsv4_grammar_ref(dsv4_grammar *g);
void dsv4_grammar_unref(dsv4_grammar *g);       /* NULL is a no-op */

/* One sequence's state over g (a new ref) and vi (borrowed); eos is the
 * token allowed once the grammar is complete.  NULL on ENOMEM. */
dsv4_constraint *dsv4_constraint_new(dsv4_grammar *g, const dsv4_vocab_index *vi,
                                     int32_t eos);
void dsv4_constraint_free(dsv4_constraint *c);  /* NULL is a no-op */

/* Sets every disallowed logit in logits[vocab] to -inf.  Returns the number
 * of tokens left allowed (0 only on a grammar bug: the caller fails). */
int dsv4_constraint_mask(dsv4_constraint *c, float *logits);

/* Advances over the sampled token.  0, or -1 if the grammar rejects it. */
int dsv4_constraint_accept(dsv4_constraint *c, int32_t id);

/* Advances over raw bytes (tests).  0 or -1. */
int dsv4_constraint_feed(dsv4_constraint *c, const char *s, size_t n);

/* 1 once the grammar is complete (only eos is allowed). */
int dsv4_constraint_done(const dsv4_constraint *c);

#endif
