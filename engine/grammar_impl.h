/*
 * The grammar's representation, shared by its builder (grammar.c) and its
 * matcher (constrain.c); not part of the engine's API.
 *
 * A grammar is a small tree of nodes in one array; literal bytes live in
 * one buffer and node children in one int array, so a grammar is three
 * allocations however large the schema.
 */
#ifndef DSV4_GRAMMAR_IMPL_H
#define DSV4_GRAMMAR_IMPL_H

#include <stdatomic.h>

#include "constrain.h"
#include "strbuf.h"

#define DSV4_GRAMMAR_MAX_ALTS   64      /* alternatives of one choice (a mask bit each) */

enum { N_LIT, N_SEQ, N_CHOICE, N_STR, N_NUM, N_JVAL, N_OBJ, N_ARR };

typedef struct {
    int kind;
    int off, len;       /* LIT: bytes; SEQ: kids; CHOICE: (literal, next) pairs */
    int flag;           /* STR: quoted JSON string; NUM: integer only */
    int max;            /* STR: bytes; JVAL / OBJ / ARR: depth */
    int item;           /* ARR: item node; OBJ: member value node */
} node;

struct dsv4_grammar {
    atomic_int  refs;
    node       *nodes;
    int         nnodes, cap;
    int        *kids;
    int         nkids, kcap;
    dsv4_strbuf bytes;
    int         oom;
    int         root;
    int         jval[DSV4_GRAMMAR_MAX_DEPTH + 1];
    int         jobj[DSV4_GRAMMAR_MAX_DEPTH + 1];   /* generic, depth >= 1 */
    int         jarr[DSV4_GRAMMAR_MAX_DEPTH + 1];
    int         jstr, jnum, jint, jlit, jbool;
};

#endif
